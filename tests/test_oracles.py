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


def zplus_layer_map():
    """zennit rules matching our z+ preset: biases zeroed, ReLU passes, average pools by Norm."""
    bias = ["bias"]
    return [
        (nn.Conv2d, ZPlus(stabilizer=1e-12, zero_params=bias)),
        (nn.Linear, ZPlus(stabilizer=1e-12, zero_params=bias)),
        (nn.ReLU, Pass()),
        (nn.AdaptiveAvgPool2d, Norm(stabilizer=1e-12)),
    ]


def zennit_composite(low, high, merge: bool):
    layer_map = zplus_layer_map() + [(nn.Dropout, Pass())]
    if not merge:
        layer_map.append((nn.BatchNorm2d, Pass()))
    first = [(nn.Conv2d, ZBox(low, high, stabilizer=1e-12, zero_params=["bias"]))]  # no stabiliser: the exact rules
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


# --- torchvision ResNet / DenseNet / MobileNetV2 -------------------------------------------

import functools  # noqa: E402

import torchvision  # noqa: E402
from zennit.core import BasicHook, Stabilizer  # noqa: E402
from zennit.layer import Sum as ZennitSum  # noqa: E402
from zennit.rules import NoMod  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

from fgcam_lib.engine.presets import canonical  # noqa: E402
from fgcam_lib.engine.rules import Sum  # noqa: E402
from fgcam_lib.engine.rules import ZPlus as OurZPlus  # noqa: E402

from conftest import randomize_bn  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=None)
def torchvision_model(arch: str) -> nn.Module:
    """Random-init torchvision model, 10 classes, random BN statistics (built once per session)."""
    torch.manual_seed(0)
    return randomize_bn(getattr(torchvision.models, arch)(num_classes=10)).eval()


def bn_eps_zero(model: nn.Module) -> nn.Module:
    """A copy with BatchNorm eps = 0 and no in-place ReLUs.

    zennit's merge (``MergeBatchNorm.merge_batch_norm``) folds the BN into the conv and then
    resets the BN to running mean 0, var 1, weight 1, bias 0 but leaves its ``eps``: the
    merged BN still divides by sqrt(1 + eps), a factor 1 - 5e-6 for eps = 1e-5. Our
    ``fold_bn`` replaces the BN exactly. z+ is invariant to a common scale, but the residual
    adds see branches with different numbers of BNs, so the proportional split (and the fc's
    shares) shift: with stock eps the input maps differ by 4.5e-5 (ResNet-18) and 1.7e-4
    (ResNet-50) of the max, the same in float64. With eps = 0 (running_var >= 0.5 here) both
    sides fold the same function and agree to ~4e-7 in float32 (~1e-12 in float64).
    """
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


class ZennitSumZPlus(BasicHook):
    """z+ at zennit's canonizer ``Sum`` (all weights 1): operand i gets ``x+_i / sum_k x+_k``
    of the relevance. An independent form of our ``Sum(mode="sign")`` where the sum is > 0."""

    def __init__(self, stabilizer=1e-12):
        stab = Stabilizer.ensure(stabilizer)
        super().__init__(
            input_modifiers=[lambda input: input.clamp(min=0)],
            param_modifiers=[NoMod(param_keys=[])],
            output_modifiers=[lambda output: output],
            gradient_mapper=lambda out_grad, outputs: out_grad / stab(outputs[0]),
            reducer=lambda inputs, gradients: inputs[0] * gradients[0],
        )


def zennit_resnet_lrp(model, x, targets, first: str, sum_rule=None):
    """zennit's input relevance of ``model`` (ResNetCanonizer: BN merged, adds as ``Sum``),
    z+ with biases zeroed everywhere, ``first`` ("zplus" or "zbox", per-channel bounds) at conv1."""
    layer_map = zplus_layer_map() + [
        (ZennitSum, sum_rule if sum_rule is not None else Norm(stabilizer=1e-12)),
    ]  # MaxPool2d: zennit's default, the gradient (all to the winner), as our PoolZ
    if first == "zbox":
        m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        lo, hi = ((0 - m) / s).expand_as(x), ((1 - m) / s).expand_as(x)
        first_rule = ZBox(lo, hi, stabilizer=1e-12, zero_params=["bias"])
    else:
        first_rule = ZPlus(stabilizer=1e-12, zero_params=["bias"])
    comp = SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(nn.Conv2d, first_rule)],
                                         canonizers=[ResNetCanonizer()])
    model = copy.deepcopy(model)
    with torch.no_grad():
        logits = model(x)
    out0 = torch.zeros_like(logits)
    for i, t in enumerate(targets):
        out0[i, t] = logits[i, t]
    with Gradient(model=model, composite=comp) as attributor:
        _, rel = attributor(x, out0)
    return rel


def resnet_preset(first: str, add_mode: str):
    """canonical (BN folded, biases ignored) with the residual adds in ``add_mode``; its input
    rule is z-beta with the same per-channel bounds as zennit's ZBox, or z+."""
    preset = canonical(MEAN, STD).with_rules(add=Sum(add_mode, epsilon=1e-12))
    return preset.with_rules(input=OurZPlus()) if first == "zplus" else preset


@pytest.mark.parametrize("first", ["zplus", "zbox"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_lrp_matches_zennit_canonizer(arch, first, one_thread):
    """z+ LRP on torchvision ResNets vs zennit's ResNetCanonizer (BN merge + Sum/Norm adds).

    Achieved: max error ~4e-7 of the max (float32) with BN eps = 0; see :func:`bn_eps_zero`
    for why stock eps gives 4.5e-5 / 1.7e-4 instead (a zennit merge artefact, not ours).
    """
    model = bn_eps_zero(torchvision_model(arch))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    targets = [2, 9]
    ref = zennit_resnet_lrp(model, x, targets, first)
    mine = LRP(model, rules=resnet_preset(first, "proportional")).explain(x, target=targets, layer="input")
    assert rel_close(mine.components["input"], ref, 1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_lrp_sign_sum_matches_zennit_zplus_sum(arch, one_thread):
    """Our default ``Sum(mode="sign")`` on a ResNet equals z+ at zennit's Sum module.

    It does NOT equal the proportional split (zennit's Norm): relevance reaches an add only
    where its sum is > 0 (a ReLU follows and everything above is z+), but the residual
    branch ends in a BN (and the downsample branch in conv+BN), so an operand is often
    negative where the sum is positive; there sign gives it 0 and the other ``x_i / sum x+``,
    proportional gives ``x_i / z`` to each (one share negative, the other > 1). Measured here
    on the input maps: the modes differ by ~10% (ResNet-50) to ~12% (ResNet-18) of the max,
    while both conserve the total. They coincide only where every operand is >= 0.
    """
    model = bn_eps_zero(torchvision_model(arch))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    targets = [2, 9]
    ref = zennit_resnet_lrp(model, x, targets, "zbox", sum_rule=ZennitSumZPlus())
    sign = LRP(model, rules=resnet_preset("zbox", "sign")).explain(x, target=targets, layer="input")
    assert rel_close(sign.components["input"], ref, 1e-5)
    prop = LRP(model, rules=resnet_preset("zbox", "proportional")).explain(x, target=targets, layer="input")
    a, b = sign.components["input"].double(), prop.components["input"].double()
    assert torch.allclose(a.sum((1, 2, 3)), b.sum((1, 2, 3)), rtol=1e-4)  # both conserve
    assert float((a - b).abs().max() / b.abs().max()) > 1e-2  # but split differently


def test_sum_sign_equals_proportional_only_for_nonnegative_operands():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1000, generator=g) * 2, torch.randn(1000, generator=g)
    R = torch.rand(1000, generator=g)
    keep = (a + b) > 0.1
    a, b, R = a[keep], b[keep], R[keep]
    sign = Sum("sign")(None, [a, b], R)
    prop = Sum("proportional", epsilon=0.0)(None, [a, b], R)
    nonneg = b >= 0
    for s, p in zip(sign, prop):
        assert torch.allclose(s[nonneg], p[nonneg], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(s[~nonneg], p[~nonneg], rtol=1e-2)
    assert torch.allclose(sign[1][~nonneg], torch.zeros(1))  # the negative operand gets nothing
    assert torch.allclose(sign[0] + sign[1], R) and torch.allclose(prop[0] + prop[1], R)


CAM_CASES = [  # (arch, our layer name, input size); the module is model.get_submodule(name)
    ("resnet50", "layer3", 96),
    ("resnet50", "layer4", 96),
    ("densenet121", "features.denseblock3", 64),
    ("mobilenet_v2", "features.7", 64),
]


def has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


@pytest.mark.parametrize("ours,theirs", [(GradCAM, pgc.GradCAM), (LayerCAM, pgc.LayerCAM)])
@pytest.mark.parametrize("arch,layer,size", CAM_CASES)
def test_cams_match_pytorch_grad_cam_on_torchvision(arch, layer, size, ours, theirs, one_thread):
    """Pre-ReLU, un-normalised maps; achieved ~1e-6 of the max (float32 noise)."""
    model = torchvision_model(arch)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(12))
    targets = [3, 7]
    theirs_model = copy.deepcopy(model)  # pytorch-grad-cam hooks it; DenseNet's ReLUs are in-place
    ref = pgc_raw_cam(theirs, theirs_model, theirs_model.get_submodule(layer), x, targets)
    mine = ours(model)(x, target=targets, layer=layer, signed=True)
    side = size // (32 if layer == "layer4" else 16)
    assert mine.shape == ref.shape == (2, side, side)
    assert rel_close(mine, ref)
    assert not has_hooks(model)
