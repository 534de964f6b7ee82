"""The zoo: one small model per timm CNN family and torchvision's classification CNNs, random
init with BatchNorm statistics like a trained network's. Each runs FG-Grad-CAM, Grad-CAM and LRP
at two layers; Grad-CAM equals a forward hook + autograd reference; the canonical preset
conserves relevance from the component layer to the input to 1e-4 of the summed |components|;
the model is unchanged. What does not run is listed with its reason (also in the README)."""
from __future__ import annotations

import pytest
import torch

from fgcam_lib.engine.tokens import layouts
from fgcam_lib.engine.walk import forward

from fgcam_lib import FGCAM, GradCAM
from fgcam_lib.evaluation.zoo import SIZES, TIMM_FAMILIES, build, check_model, torchvision_cnns, zoo_input

#: models that do not run, and the start of the one-line error that says why
NOT_RUNNING = {
    "cpubone_nano": "no rule for layer 'stages.3.2.total.0.0.main.1' (ConvAttention)",  # an fx leaf of timm's
    "efficientnet_cc_b0_4e": "its weight depends on the input",  # CondConv: a dynamic convolution
}

#: models where FG-CAM and the CAMs run but LRP from the logits does not: the head above the
#: component layer holds an op without a rule
NO_LRP = {
    ("timm", "vgg11"): "no rule for layer 'pre_logits' (ConvMlp)",  # timm's VGG head: an fx leaf (shape-dependent pooling)
}

TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _gradcam_reference(model, x, layer, target, channels_last=False):
    """Grad-CAM from a forward hook on module ``layer`` and autograd (channels last: B x H x W x C)."""
    module = model.get_submodule(layer)
    acts = []
    handle = module.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            A = acts[-1]
            (G,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), A)
    finally:
        handle.remove()
    if channels_last:
        A, G = A.permute(0, 3, 1, 2), G.permute(0, 3, 1, 2)
    return (G.mean((2, 3), keepdim=True) * A).sum(1).clamp(min=0).detach()


def _check(model, name, source):
    x = zoo_input(model, SIZES.get(name, 64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if name in NOT_RUNNING:
        with pytest.raises(TypeError, match=NOT_RUNNING[name].replace("(", "\\(").replace(")", "\\)")):
            FGCAM(model, rules="canonical")(x, layer="input")
        return
    row = check_model(model, x, paper=False)  # the paper preset's loss is measured, not bounded: the zoo script
    assert row["error"] == "", row["error"]
    if (source, name) in NO_LRP:
        assert NO_LRP[source, name] in row["lrp_error"], row["lrp_error"]
    else:
        assert row["lrp_error"] == "", row["lrp_error"]
    assert row["lost_canonical"] <= TOLERANCE, row
    # the model is unchanged: parameters, buffers, modes, no hooks left
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    # Grad-CAM at the component layer against hooks + autograd, where the layer is a module
    layer = row["component_layer"]
    names = dict(model.named_modules())
    if layer in names:
        gc = GradCAM(model)
        e = gc.explain(x, layer=layer)
        shapes = forward(gc.graph, x).shapes  # MambaOut's stages are channels last
        last = layouts(gc.graph, shapes).get(gc.graph.position(layer)) == "bhwc"
        ref = _gradcam_reference(model, x, layer, e.target, channels_last=last)
        got = e.map(layer)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * (float(ref.abs().max()) + 1e-12)), name


@pytest.mark.parametrize("family, name", list(TIMM_FAMILIES.items()), ids=list(TIMM_FAMILIES.values()))
def test_timm_family(family, name):
    pytest.importorskip("timm")
    _check(build(name, "timm"), name, "timm")


@pytest.mark.parametrize("name", torchvision_cnns())
def test_torchvision_cnn(name):
    _check(build(name, "torchvision"), name, "torchvision")


def test_zoo_is_large_enough():
    timm = pytest.importorskip("timm")
    assert len(TIMM_FAMILIES) >= 40
    available = set(timm.list_models())
    assert set(TIMM_FAMILIES.values()) <= available
    assert len(torchvision_cnns()) >= 60

