"""Agreement with independent implementations: pytorch-grad-cam and zennit (test-only)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fgcam_lib import FGCAM, LRP, GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM

pgc = pytest.importorskip("pytorch_grad_cam")
zennit = pytest.importorskip("zennit")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import SpecialFirstLayerMapComposite  # noqa: E402
from zennit.rules import Norm, Pass, ZBox, ZPlus  # noqa: E402

RTOL = 1e-4


def rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    """Max abs difference within rtol of the reference's max magnitude."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


def pgc_raw_cam(cls, model, layer_module, x, targets, **kw):
    """pytorch-grad-cam's un-normalised, pre-ReLU map at feature resolution."""
    cam = cls(model=model, target_layers=[layer_module], **kw)
    tg = [ClassifierOutputTarget(t) for t in targets]
    cam(input_tensor=x, targets=tg)
    acts = cam.activations_and_grads.activations[0].cpu().numpy()
    grads = cam.activations_and_grads.gradients[0].cpu().numpy() if cam.activations_and_grads.gradients else None
    raw = cam.get_cam_image(x, layer_module, tg, acts, grads, False) if cls is not pgc.LayerCAM else None
    if cls is pgc.LayerCAM:
        raw = (np.maximum(grads, 0) * acts).sum(1)
    cam.activations_and_grads.release()
    return torch.from_numpy(np.asarray(raw))


@pytest.mark.parametrize(
    "ours,theirs",
    [(GradCAM, pgc.GradCAM), (GradCAMpp, pgc.GradCAMPlusPlus), (XGradCAM, pgc.XGradCAM), (LayerCAM, pgc.LayerCAM)],
)
@pytest.mark.parametrize("layer", [13, 33])
def test_gradient_cams_match_pytorch_grad_cam(ours, theirs, layer, vgg16_bn):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    targets = [3, 7]
    model = copy.deepcopy(vgg16_bn)
    ref = pgc_raw_cam(theirs, model, model.features[layer], x, targets)
    mine = ours(vgg16_bn)(x, target=targets, layer=layer, signed=True)
    assert rel_close(mine, ref)


def test_score_cam_common_variant_matches_pytorch_grad_cam(tiny_vgg):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    model = copy.deepcopy(tiny_vgg)
    ref = pgc_raw_cam(pgc.ScoreCAM, model, model.features[23], x, [1, 2])
    mine = ScoreCAM(tiny_vgg, variant="common", align_corners=True)(x, target=[1, 2], layer=23, signed=True)
    assert rel_close(mine, ref, 1e-3)  # their masks add 1e-8 to the min-max denominator


def zennit_composite(low, high, merge: bool):
    bias = ["bias"]
    layer_map = [
        (nn.Conv2d, ZPlus(stabilizer=1e-12, zero_params=bias)),
        (nn.Linear, ZPlus(stabilizer=1e-12, zero_params=bias)),
        (nn.ReLU, Pass()),
        (nn.AdaptiveAvgPool2d, Norm(stabilizer=1e-12)),
        (nn.Dropout, Pass()),
    ]
    if not merge:
        layer_map.append((nn.BatchNorm2d, Pass()))
    first = [(nn.Conv2d, ZBox(low, high, stabilizer=1e-12, zero_params=bias))]  # no stabiliser: the exact rules
    canon = [SequentialMergeBatchNorm()] if merge else []
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first, canonizers=canon)


def no_inplace(model):
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def test_fgcam_propagation_matches_zennit(tiny_vgg):
    """FG-CAM's components at features[43], seeded into zennit's ZPlus/ZBox walk."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    fg = FGCAM(tiny_vgg)
    expl = fg.explain(x, target=[0, 5], layer=["input", "features.43"])
    I = expl.components["features.43"]
    features = no_inplace(tiny_vgg).features
    lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1).expand_as(x)
    hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1).expand_as(x)
    with Gradient(model=features, composite=zennit_composite(lo, hi, merge=False)) as attributor:
        _, rel = attributor(x, I)
    assert rel_close(expl.components["input"], rel)


def test_canonical_lrp_matches_zennit_with_merged_bn(tiny_vgg):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    lo, hi = ((0 - m) / s).expand_as(x), ((1 - m) / s).expand_as(x)
    lrp = LRP(tiny_vgg, rules="canonical", mean=mean, std=std)
    expl = lrp.explain(x, target=[2, 9], layer="input")
    model = no_inplace(tiny_vgg)
    out0 = torch.zeros(2, 10)
    with torch.no_grad():
        logits = model(x)
    out0[0, 2], out0[1, 9] = logits[0, 2], logits[1, 9]
    with Gradient(model=model, composite=zennit_composite(lo, hi, merge=True)) as attributor:
        _, rel = attributor(x, out0)
    assert rel_close(expl.components["input"], rel)


def test_paper_lrp_matches_zennit_on_vgg16_bn(vgg16_bn):
    """Full torchvision VGG16-BN (random BN statistics), paper preset, from the logits."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    expl = LRP(vgg16_bn).explain(x, target=4, layer="input")
    model = no_inplace(vgg16_bn)
    with torch.no_grad():
        logits = model(x)
    out0 = torch.zeros_like(logits)
    out0[0, 4] = logits[0, 4]
    lo = x.min().expand_as(x)
    hi = x.max().expand_as(x)
    comp = zennit_composite(lo, hi, merge=False)
    comp.layer_map.append((nn.AdaptiveAvgPool2d, Norm()))
    with Gradient(model=model, composite=comp) as attributor:
        _, rel = attributor(x, out0)
    assert rel_close(expl.components["input"], rel)
