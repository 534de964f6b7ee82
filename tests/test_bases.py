"""CAM bases: the protocol, element-wise weights, HiResCAM, Finer-CAM and the pytorch-grad-cam adapter.

The comparisons with pytorch-grad-cam skip where it is not installed (``pip install fgcam-lib[gradcam]``).
"""
from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from fgcam_lib import FGCAM, GradCAM, LayerCAM
from fgcam_lib.methods import CAM, CAM_BASES, CamBase, FinerCAM, HiResCAM, HiResCAMBase, PytorchGradCamBase
from fgcam_lib.methods.base import resize_maps
from fgcam_lib.methods.bases import CamInputs
from fgcam_lib.methods.cam import GradCAMBase, GradCAMppBase, LayerCAMBase, ScoreCAMBase, XGradCAMBase

from conftest import randomize_bn

needs_pgc = pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None,
                               reason="pytorch-grad-cam is not installed (pip install fgcam-lib[gradcam])")
RTOL = 1e-4
SIZE = 112  # resnet18: layer3 7 x 7, layer4 4 x 4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over the reference's max magnitude."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max()) / float(b.abs().max())


def pgc_normalised(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Our maps as pytorch-grad-cam returns its own: ReLU'd, bilinear to the input, min-max to [0, 1]."""
    up = resize_maps(maps.clamp(min=0), (size, size))
    up = up - up.flatten(1).min(1).values[:, None, None]
    return up / (1e-7 + up.flatten(1).max(1).values[:, None, None])


@pytest.fixture(scope="module")
def resnet(one_thread):
    import torchvision

    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture(scope="module")
def x_resnet():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def pgc_maps(cls, model, layer: str, x, targets):
    """pytorch-grad-cam's raw (pre-ReLU, layer-resolution) and returned (normalised) maps."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model)  # it hooks the model
    cam = cls(model=model, target_layers=[model.get_submodule(layer)])
    tg = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    out = cam(input_tensor=x, targets=tg)
    inner = getattr(cam, "base_cam", cam)  # FinerCAM wraps a CAM
    acts = inner.activations_and_grads.activations[0].numpy()
    grads = inner.activations_and_grads.gradients[0].numpy()
    raw = inner.get_cam_image(x, None, tg, acts, grads, False)
    inner.activations_and_grads.release()
    return torch.from_numpy(np.asarray(raw)), torch.from_numpy(np.asarray(out))


# ------------------------------------------------------------------------------ protocol
@pytest.mark.parametrize("name,cls", [("grad_cam", GradCAMBase), ("grad_cam_pp", GradCAMppBase),
                                      ("xgrad_cam", XGradCAMBase), ("layer_cam", LayerCAMBase),
                                      ("score_cam", ScoreCAMBase), ("hires_cam", HiResCAMBase),
                                      ("finer_cam", FinerCAM)])
def test_registered_bases_follow_the_protocol(name, cls):
    assert CAM_BASES[name] is cls and isinstance(cls(), CamBase)


@pytest.mark.parametrize("name,obj", [("grad_cam", GradCAMBase()), ("grad_cam_pp", GradCAMppBase()),
                                      ("xgrad_cam", XGradCAMBase()), ("score_cam", ScoreCAMBase())])
def test_a_base_object_equals_its_name(name, obj, tiny_vgg, images):
    a = FGCAM(tiny_vgg, base=name).explain(images, layer=["input", 23])
    b = FGCAM(tiny_vgg, base=obj).explain(images, layer=["input", 23])
    assert torch.equal(a.weights, b.weights)
    assert all(torch.equal(a.components[k], b.components[k]) for k in a.components)


def test_any_object_with_weights_is_a_base(tiny_vgg, images):
    class Ones:  # needs no gradient: the forward records none
        needs_gradients = False

        def weights(self, inputs: CamInputs) -> torch.Tensor:
            assert not inputs.activations.requires_grad and inputs.layer == "features.43"
            return torch.ones(inputs.activations.shape[:2])

    fg = FGCAM(tiny_vgg, base=Ones())
    expl = fg.explain(images, layer=43)
    A = fg.components_at_top(images).trace.acts[fg.component_position]
    torch.testing.assert_close(expl.components[43], A)
    assert fg(images, layer="input").shape == (3, 64, 64)
    with pytest.raises(RuntimeError, match="kept no gradients"):
        CamInputs(A, expl.logits, expl.target, images, lambda z: z).gradients


def test_bad_bases_fail_with_one_line(tiny_vgg, images):
    with pytest.raises(ValueError, match="unknown base 'gradcam'"):
        FGCAM(tiny_vgg, base="gradcam")
    with pytest.raises(TypeError, match="instance, not the class"):
        FGCAM(tiny_vgg, base=HiResCAMBase)
    with pytest.raises(TypeError, match="weights\\(inputs\\)"):
        CAM(tiny_vgg, base=object())

    class Wrong:
        def weights(self, inputs):
            return inputs.gradients.mean(1)  # B x h x w

    with pytest.raises(ValueError, match="expected B x C"):
        FGCAM(tiny_vgg, base=Wrong())(images)


# ----------------------------------------------------------------------- element-wise
def test_element_wise_weights_flow_through_fgcam_and_cam(tiny_vgg, images):
    fg = FGCAM(tiny_vgg, base="layer_cam")
    top = fg.component_layer
    expl = fg.explain(images, layer=[top, "input"])
    A = fg.components_at_top(images).trace.acts[fg.component_position]
    assert expl.weights.shape == A.shape and bool((expl.weights >= 0).all())
    torch.testing.assert_close(expl.components[top], expl.weights * A)
    torch.testing.assert_close(expl.map(top, signed=True), LayerCAM(tiny_vgg)(images, layer=top, signed=True))
    assert torch.isfinite(expl.components["input"]).all()


# ---------------------------------------------------------------------------- HiResCAM
def test_hires_cam_is_gradient_times_activation(tiny_vgg, images):
    fg = FGCAM(tiny_vgg, base="hires_cam", component_layer=33)
    step = fg.components_at_top(images, target=2)
    A = step.trace.acts[fg.component_position].detach().requires_grad_(True)
    logits = tiny_vgg.classifier(torch.flatten(tiny_vgg.avgpool(tiny_vgg.features[34:](A)), 1))
    (G,) = torch.autograd.grad(logits[:, 2].sum(), A)
    torch.testing.assert_close(step.weights, G)
    torch.testing.assert_close(HiResCAM(tiny_vgg)(images, target=2, layer=33, signed=True), (G * A).sum(1).detach())


@needs_pgc
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_hires_cam_matches_pytorch_grad_cam(layer, resnet, x_resnet):
    import pytorch_grad_cam as pgc

    raw, out = pgc_maps(pgc.HiResCAM, resnet, layer, x_resnet, [3, 7])
    mine = HiResCAM(resnet)(x_resnet, target=[3, 7], layer=layer, signed=True)
    assert mine.shape == raw.shape
    assert rel_err(mine, raw) < RTOL  # measured: 3e-7 (layer3), 6e-7 (layer4)
    assert float((pgc_normalised(mine, SIZE) - out).abs().max()) < RTOL  # measured: 2e-6, 4e-6
    fg = FGCAM(resnet, base="hires_cam", component_layer=layer)
    assert rel_err(fg(x_resnet, target=[3, 7], layer=layer, signed=True), raw) < RTOL


# ---------------------------------------------------------------------------- Finer-CAM
class GapNet(nn.Module):
    """1x1 conv (identity on 3 channels) -> ReLU -> global average pool -> linear head ``W``."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU())
        self.features[0].weight.data = torch.eye(3)[:, :, None, None]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(W.shape[1], W.shape[0], bias=False)
        self.fc.weight.data = W.clone()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def test_finer_cam_known_answer_drops_what_the_similar_class_shares():
    # y0 = m0 + m1, y1 = m0, y2 = m2 with channel means m ~ (0.5, 0.5, 0.05): class 1 is nearest
    # class 0, so with k = 1 the explained score is y0 - y1 = m1: channel 0, shared, drops out.
    W = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    net = GapNet(W).eval()
    scale = torch.tensor([1.0, 1.0, 0.1])[:, None, None]
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * scale
    grad = FGCAM(net, base="grad_cam", component_layer="features.1").explain(x, target=0, layer="features.1")
    assert torch.allclose(grad.weights, torch.tensor([[1.0, 1.0, 0.0]] * 2) / 16)
    for weighting in ("softmax", "mean"):  # one reference: its softmax weight is 1
        finer = FinerCAM("grad_cam", k=1, weighting=weighting)
        assert finer.references(grad.logits, grad.target).tolist() == [[1], [1]]
        expl = FGCAM(net, base=finer, component_layer="features.1").explain(x, target=0, layer=["features.1", "input"])
        assert torch.allclose(expl.weights, torch.tensor([[0.0, 1.0, 0.0]] * 2) / 16)
        assert torch.allclose(expl.map("features.1", signed=True), x[:, 1] / 16)
        assert expl.target.tolist() == [0, 0]


def test_finer_cam_mean_weighting_is_w_t_minus_the_mean_of_the_similar_rows():
    W = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    net = GapNet(W).eval()
    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    k, gamma = 3, 0.6
    cam = CAM(net, base=FinerCAM("grad_cam", k=k, gamma=gamma, weighting="mean"))
    fg = FGCAM(net, base=FinerCAM("grad_cam", k=k, gamma=gamma, weighting="mean"), component_layer="features.1")
    expl = fg.explain(x, layer="features.1")
    logits, t = expl.logits, expl.target
    assert torch.equal(t, logits.argmax(1))
    for b in range(3):
        order = np.argsort(np.abs(logits[b].numpy() - logits[b, t[b]].item()), kind="stable")
        D = [int(c) for c in order if c != t[b]][:k]  # the runners-up of the predicted class
        assert sorted(D) == sorted(logits[b].topk(k + 1).indices[1:].tolist())
        expected = (W[t[b]] - gamma * W[D].mean(0)) / 25
        torch.testing.assert_close(expl.weights[b], expected)
    A = net.features(x)
    torch.testing.assert_close(cam(x, layer="features.1", signed=True), (expl.weights[:, :, None, None] * A).sum(1))


def test_finer_cam_differs_from_its_base_only_through_gamma(tiny_vgg, images):
    top = FGCAM(tiny_vgg).component_layer
    grad = GradCAM(tiny_vgg)(images, layer=top, signed=True)
    torch.testing.assert_close(CAM(tiny_vgg, base=FinerCAM(gamma=0.0))(images, layer=top, signed=True), grad)
    finer = CAM(tiny_vgg, base="finer_cam")(images, layer=top, signed=True)
    assert rel_err(finer, grad) > 0.1
    pp = FGCAM(tiny_vgg, base=FinerCAM("grad_cam_pp", k=2)).explain(images, layer=top)
    assert pp.weights.shape == (3, 32)
    with pytest.raises(ValueError, match="reads no gradient"):
        FinerCAM("score_cam")
    with pytest.raises(ValueError, match="weighting"):
        FinerCAM(weighting="max")


@needs_pgc
def test_finer_cam_matches_pytorch_grad_cam(resnet, x_resnet):
    import pytorch_grad_cam as pgc

    raw, _ = pgc_maps(pgc.FinerCAM, resnet, "layer4", x_resnet, None)  # its defaults: 3 classes, alpha 1
    mine = CAM(resnet, base=FinerCAM("grad_cam", k=3, gamma=1.0))(x_resnet, layer="layer4", signed=True)
    assert rel_err(mine, raw) < RTOL  # measured: 8e-7


# ----------------------------------------------------------------- pytorch-grad-cam adapter
@needs_pgc
@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM"])
def test_pytorch_grad_cam_weights_as_an_fgcam_base(name, resnet, x_resnet):
    import pytorch_grad_cam as pgc

    cls = getattr(pgc, name)
    raw, out = pgc_maps(cls, resnet, "layer4", x_resnet, [3, 7])
    fg = FGCAM(resnet, base=PytorchGradCamBase(cls))
    assert fg.component_layer == "layer4"
    expl = fg.explain(x_resnet, target=[3, 7], layer=["layer4", "input"])
    assert rel_err(expl.map("layer4", signed=True), raw) < RTOL  # measured: 6e-7, 4e-7, 7e-7
    assert float((pgc_normalised(expl.map("layer4"), SIZE) - out).abs().max()) < RTOL  # measured: 4e-6, 2e-6, 5e-6
    ours = {"GradCAM": "grad_cam", "GradCAMPlusPlus": "grad_cam_pp", "XGradCAM": "xgrad_cam"}[name]
    ref = FGCAM(resnet, base=ours).explain(x_resnet, target=[3, 7], layer="input").components["input"]
    assert rel_err(expl.components["input"], ref) < RTOL


@needs_pgc
def test_pytorch_grad_cam_adapter_takes_instances_and_refuses_map_only_cams(tiny_vgg, images):
    import pytorch_grad_cam as pgc

    model = copy.deepcopy(tiny_vgg)
    base = PytorchGradCamBase(pgc.XGradCAM(model=model, target_layers=[]))
    torch.testing.assert_close(CAM(model, base=base)(images, layer=33, signed=True),
                               CAM(tiny_vgg, base="xgrad_cam")(images, layer=33, signed=True))
    with pytest.raises(TypeError, match="no get_cam_weights"):
        PytorchGradCamBase(pgc.HiResCAM)
