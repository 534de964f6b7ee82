"""Sanity checks (fgcam_lib.evaluation.sanity): randomisation groups and runs, class sensitivity, weight ablation."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from fgcam_lib import FGCAM
from fgcam_lib.evaluation import sanity as S


pytestmark = pytest.mark.usefixtures("one_thread")


def test_randomization_groups_top_down(tiny_vgg):
    groups = S.randomization_groups(tiny_vgg)
    assert groups[0] == ["classifier.1"]
    assert groups[1] == ["features.40", "features.41"]
    assert groups[-1] == ["features.0", "features.1"]
    assert len(groups) == 1 + 13
    stages = S.randomization_groups(tiny_vgg, by="stage")
    assert len(stages) == 1 + 5
    assert stages[1] == ["features.34", "features.35", "features.37", "features.38", "features.40", "features.41"]
    assert stages[-1] == ["features.0", "features.1", "features.3", "features.4"]
    with pytest.raises(ValueError):
        S.randomization_groups(tiny_vgg, by="block")


def test_cascading_rows_and_model_untouched(tiny_vgg, images):
    before = copy.deepcopy(tiny_vgg.state_dict())
    groups = S.randomization_groups(tiny_vgg)[:2]
    df = S.cascading(tiny_vgg, None, images, None, [("grad_cam", 13), ("lrp", "input")], groups)
    assert len(df) == 2 * (len(groups) + 1) * images.shape[0]
    step0 = df[df["step"] == 0]
    assert np.allclose(step0["spearman"], 1.0) and np.allclose(step0["ssim_abs"], 1.0)
    assert set(df["layer"]) == {"13", "input"}
    assert list(df.loc[df["step"] == 2, "randomized_layer"].unique()) == ["features.40, features.41"]
    after = tiny_vgg.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the same randomised networks for every method: LRP maps after step 1 differ from the original
    lrp1 = df[(df["method"] == "lrp") & (df["step"] == 1)]
    assert (lrp1["ssim"] < 1).all()


def test_cascading_signed_option(tiny_vgg, images):
    groups = S.randomization_groups(tiny_vgg)[:1]
    df = S.cascading(tiny_vgg, None, images, None, [("lrp", 13), ("grad_cam", 13)], groups,
                     signed={"lrp": True})
    assert df.groupby("method")["signed"].first().to_dict() == {"grad_cam": False, "lrp": True}
    lrp = df[df["method"] == "lrp"]
    assert np.isfinite(lrp["spearman_abs"]).all()  # signed maps are never all-zero after a ReLU
    both = S.cascading(tiny_vgg, None, images, None, [("grad_cam", 13)], groups, signed=True)
    assert both["signed"].all()


def test_randomized_copy_is_the_network_cascading_explains(tiny_vgg, images):
    from fgcam_lib.methods import make_explainer
    from fgcam_lib.evaluation.metrics import similarity

    groups = S.randomization_groups(tiny_vgg)[:3]
    df = S.cascading(tiny_vgg, None, images, None, [("fg_grad_cam", 13)], groups, seed=5)
    target = tiny_vgg(images).argmax(1)
    original = make_explainer("fg_grad_cam", tiny_vgg)(images, target, layer=13)
    for step in (1, 3):
        net = S.randomized_copy(tiny_vgg, groups, step, seed=5)
        maps = make_explainer("fg_grad_cam", net)(images, target, layer=13)
        expected = similarity(original, maps)["spearman"].numpy()
        got = df[df["step"] == step].sort_values("image")["spearman"].to_numpy()
        assert np.allclose(got, expected, equal_nan=True)
    assert all(torch.equal(a, b) for a, b in zip(S.randomized_copy(tiny_vgg, groups, 0).state_dict().values(),
                                                  tiny_vgg.state_dict().values()))
    with pytest.raises(ValueError):
        S.randomized_copy(tiny_vgg, groups, 4)


def test_summarize_values_and_verdict():
    rows = []
    for method, level in (("stays", 0.9), ("moves", 0.05), ("noisy", 0.5)):
        for step in (0, 1):
            for i in range(12):
                v = 1.0 if step == 0 else level + (0.4 if method == "noisy" else 0.02) * np.sin(i)
                rows.append({"method": method, "layer": "input", "step": step, "spearman_abs": v})
    summary = S.summarize_values(pd.DataFrame(rows), ["method", "layer", "step"], ["spearman_abs"], n_resamples=300)
    assert summary.loc[("stays", "input", 0), "spearman_abs"] == 1.0
    assert summary.loc[("stays", "input", 0), "spearman_abs_low"] == 1.0  # constant group: degenerate CI
    assert summary.loc[("stays", "input", 0), "spearman_abs_n"] == 12
    v = S.randomization_verdict(summary, step=1)["verdict"].to_dict()
    assert v[("stays", "input")] == "insensitive (fails)"
    assert v[("moves", "input")] == "sensitive (passes)"
    assert v[("noisy", "input")] == "unclear"
    with pytest.raises(ValueError, match="step 5"):
        S.randomization_verdict(summary, step=5)


class MaskExplainer:
    """Stub explainer: the map of class c is the mask of the object of class c (and -1 elsewhere)."""

    def __init__(self, classes, masks):
        self.classes, self.masks = classes, masks

    def __call__(self, x, target, layer=None, signed=False):
        pick = (self.classes == target[:, None]).float()           # B x 2
        m = (pick[:, :, None, None] * self.masks.float()).sum(1)    # B x H x W
        return m * 2 - 1 if signed else m


def test_class_sensitivity_on_a_perfect_explainer():
    B, H = 3, 16
    masks = torch.zeros(B, 2, H, H, dtype=torch.bool)
    masks[:, 0, :6, :6] = True
    masks[:, 1, 9:, 9:] = True
    classes = torch.tensor([[0, 1], [2, 5], [7, 3]])
    x = torch.zeros(B, 3, H, H)
    df = S.class_sensitivity(MaskExplainer(classes, masks), x, classes, masks, layer="input", signed=True)
    assert len(df) == B
    assert np.allclose(df["a_on_a"], 1) and np.allclose(df["b_on_b"], 1)
    assert np.allclose(df["a_on_b"], 0) and np.allclose(df["b_on_a"], 0)
    assert np.allclose(df["gap"], 1) and (df["spearman"] < 0).all()
    with pytest.raises(ValueError, match="B x 2"):
        S.class_sensitivity(MaskExplainer(classes, masks), x, classes[:, :1], masks, layer="input")


def test_ablate_weights():
    w = torch.tensor([[1.0, -2.0, 3.0, 4.0], [0.5, 0.5, -1.0, 2.0]])
    assert torch.equal(S.ablate_weights(w, "ones"), torch.ones_like(w))
    assert torch.allclose(S.ablate_weights(w, "mean"), w.mean(1, keepdim=True).expand_as(w))
    sh = S.ablate_weights(w, "shuffle", seed=3)
    assert torch.equal(sh.sort(1).values, w.sort(1).values)
    assert torch.equal(sh, S.ablate_weights(w, "shuffle", seed=3))
    with pytest.raises(ValueError):
        S.ablate_weights(w, "zeros")


def test_ablated_fgcam_is_linear_in_the_weights(tiny_vgg, images):
    """Rules are linear in the relevance: the 'mean' map is mean(w) times the 'ones' map."""
    layers = [13, "input"]
    ones = S.AblatedFGCAM(tiny_vgg, weights="ones").explain(images, None, layers)
    mean = S.AblatedFGCAM(tiny_vgg, weights="mean").explain(images, None, layers)
    real = FGCAM(tiny_vgg).explain(images, None, layers)
    wbar = real.weights.mean(1)
    assert torch.allclose(mean.weights, wbar[:, None].expand_as(mean.weights))
    for l in layers:
        expected = wbar[:, None, None] * ones.map(l, signed=True)
        assert torch.allclose(mean.map(l, signed=True), expected, rtol=1e-4, atol=1e-6 * expected.abs().max())
    # with 'ones' the components at the top are the activations themselves
    step = S.AblatedFGCAM(tiny_vgg, weights="ones").components_at_top(images)
    I, w = step.components, step.weights
    assert torch.equal(w, torch.ones_like(w)) and (I >= 0).all()


def test_ablated_fgcam_keeps_denoising(tiny_vgg, images):
    a = S.AblatedFGCAM(tiny_vgg, weights="ones", denoise=0.5)
    I = a.components_at_top(images).components
    C = I.shape[1]
    rank = torch.linalg.matrix_rank(I.reshape(I.shape[0], C, -1).double()[0], rtol=1e-6)
    assert int(rank) <= max(1, int(0.5 * min(C, I.shape[2] * I.shape[3])))
    with pytest.raises(ValueError):
        S.AblatedFGCAM(tiny_vgg, weights="zeros")


def test_weight_ablation_rows(tiny_vgg, images):
    df = S.weight_ablation(tiny_vgg, None, images, [33, "input"], modes=("ones", "mean"))
    assert set(df["variant"]) == {"ones", "mean", "runner-up class"}
    assert len(df) == 3 * 2 * images.shape[0]
    # 'mean' is 'ones' scaled by mean(w): identical ranking wherever mean(w) > 0
    w = FGCAM(tiny_vgg).explain(images, None, [33]).weights.mean(1)
    piv = df[df["layer"] == "33"].pivot(index="image", columns="variant", values="spearman_abs")
    pos = (w > 0).numpy()
    assert np.allclose(piv.loc[pos, "mean"], piv.loc[pos, "ones"], equal_nan=True)
    assert np.isfinite(df["ssim"]).all()


def test_stage_groups_are_the_convs_of_one_resolution():
    """ResNet: fc, then layer4, layer3, layer2, layer1, the stem; a traced "same"-padding conv
    (EfficientNet-Lite) is randomised through its module, and every stage shares one resolution."""
    tvm = pytest.importorskip("torchvision.models")
    from fgcam_lib.evaluation.sanity_report import stage_groups

    groups = stage_groups(tvm.resnet18(num_classes=10).eval(), 64)
    assert groups[0] == ["fc"]
    tops = [{name.split(".")[0] for name in g} for g in groups[1:]]
    assert tops == [{"layer4"}, {"layer3"}, {"layer2"}, {"layer1"}, {"conv1", "bn1"}]
    assert "layer4.0.downsample.0" in groups[1] and "layer4.0.bn1" in groups[1]

    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0").eval()
    groups = stage_groups(model, 64)
    assert groups[0] == ["_fc"] and groups[1][:2] == ["_conv_head", "_bn1"]
    assert groups[-1][-2:] == ["_conv_stem", "_bn0"] and len(groups) == 6   # fc + five resolutions, 1/32 .. 1/2
    assert "_blocks.0._depthwise_conv" in groups[-1]   # block 0 runs at the stem's resolution
    convs = [n for g in groups[1:] for n in g if isinstance(model.get_submodule(n), torch.nn.Conv2d)]
    assert len(convs) == len(set(convs)) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
