"""Core engine: known answers, conservation, references, batching, state, errors."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgcam_lib import CLRP, FGCAM, LRP, SGLRP, GradCAM, GradCAMpp, LayerCAM, PoolZ, ScoreCAM, XGradCAM, denoise, paper
from fgcam_lib.methods.fgcam import denoise_rank
from fgcam_lib.engine.rules import AlphaBeta, Epsilon, Flat, ZBeta, ZPlus, channel_bounds, image_bounds

from conftest import TinyVGG, randomize_bn


# ----------------------------------------------------------------------------------
# Known answers on a hand-built network
# ----------------------------------------------------------------------------------
def hand_net() -> nn.Sequential:
    """x (1x1x1x4) -> conv(1x2, w=[1,-1]) -> ReLU -> conv1x1(w=[2,-1]) -> ReLU
    -> maxpool(1x3) -> flatten -> linear([[1,5],[2,-1]])."""
    conv1 = nn.Conv2d(1, 1, (1, 2), bias=False)
    conv1.weight.data = torch.tensor([[[[1.0, -1.0]]]])
    conv2 = nn.Conv2d(1, 2, 1, bias=False)
    conv2.weight.data = torch.tensor([[[[2.0]]], [[[-1.0]]]])
    lin = nn.Linear(2, 2, bias=False)
    lin.weight.data = torch.tensor([[1.0, 5.0], [2.0, -1.0]])
    return nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.MaxPool2d((1, 3)), nn.Flatten(), lin)


HAND_X = torch.tensor([[[[1.0, 3.0, 2.0, 0.0]]]])


def test_hand_net_lrp_known_answer():
    # logits = [4, 8]; R(logit 0) = 4 -> linear z+: [4, 0] -> pool winner (index 2) -> conv2 z+: 4 at
    # conv1's output index 2 -> z-beta with l=0, h=3 on pixels 2 and 3 (w = 1, -1):
    # z = 2 - 0 + 3 = 5, R = 4 * [2, 3] / 5 = [1.6, 2.4].
    net = hand_net()
    expl = LRP(net).explain(HAND_X, target=0, layer=["input", 1])
    assert torch.allclose(expl.logits, torch.tensor([[4.0, 8.0]]))
    assert torch.allclose(expl.components["input"], torch.tensor([[[[0.0, 0.0, 1.6, 2.4]]]]))
    assert torch.allclose(expl.components[1], torch.tensor([[[[0.0, 0.0, 4.0]]]]))


def test_hand_net_fgcam_known_answer():
    # Components at the max-pool output: Grad-CAM weights = dlogit0/dA = [1, 5], A = [4, 0] -> I = [4, 0].
    net = hand_net()
    expl = FGCAM(net).explain(HAND_X, target=0, layer=["input", 4])
    assert torch.allclose(expl.weights, torch.tensor([[1.0, 5.0]]))
    assert torch.allclose(expl.components[4].flatten(), torch.tensor([4.0, 0.0]))
    assert torch.allclose(expl.components["input"].flatten(), torch.tensor([0.0, 0.0, 1.6, 2.4]))


def test_hand_net_grad_cam_known_answer():
    # At conv2's ReLU: gradients ch0 = [0, 0, 1] (pool winner), ch1 = [5, 0, 0] (ties -> first);
    # weights = [1/3, 5/3]; A = ch0 [0, 2, 4], ch1 [0, 0, 0] -> map = [0, 2/3, 4/3].
    net = hand_net()
    m = GradCAM(net)(HAND_X, target=0, layer=3)
    assert torch.allclose(m, torch.tensor([[[0.0, 2 / 3, 4 / 3]]]))


# ----------------------------------------------------------------------------------
# Single rules against slow float64 references (unfold, explicit sums)
# ----------------------------------------------------------------------------------
def reference_rule(conv: nn.Conv2d, x: torch.Tensor, R: torch.Tensor, contrib) -> torch.Tensor:
    """R_i = fold(sum_o c_oi / sum_i c_oi * R_o) with contributions c from ``contrib``."""
    x, R = x.double(), R.double()
    w = conv.weight.double().flatten(1)  # O x I
    k = conv.kernel_size
    patches = F.unfold(x, k, padding=conv.padding, stride=conv.stride)  # B x I x L
    c = contrib(patches[:, None], w[None, :, :, None])  # B x O x I x L
    z = c.sum(2, keepdim=True)
    ratio = torch.where(z == 0, torch.zeros_like(c), c / torch.where(z == 0, torch.ones_like(z), z))
    Rp = (ratio * R.flatten(2)[:, :, None]).sum(1)
    return F.fold(Rp, x.shape[-2:], k, padding=conv.padding, stride=conv.stride)


@pytest.fixture()
def conv_case():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
    x = torch.randn(2, 4, 9, 9)
    R = torch.rand(2, 6, 5, 5)
    return conv, x, R


def test_zplus_matches_reference(conv_case):
    conv, x, R = conv_case
    ref = reference_rule(
        conv, x, R, lambda p, w: p.clamp(min=0) * w.clamp(min=0) + p.clamp(max=0) * w.clamp(max=0)
    )
    assert torch.allclose(ZPlus()(conv, x, R).double(), ref, rtol=1e-4, atol=1e-6)


def test_epsilon_matches_reference(conv_case):
    conv, x, R = conv_case
    eps = 0.3
    x64, R64 = x.double(), R.double()
    w = conv.weight.double().flatten(1)
    patches = F.unfold(x64, 3, padding=1, stride=2)
    z = torch.einsum("oi,bil->bol", w, patches)
    z = z + eps * torch.where(z >= 0, 1.0, -1.0).double()
    Rp = torch.einsum("oi,bil,bol->bil", w, patches, R64.flatten(2) / z)
    ref = F.fold(Rp, (9, 9), 3, padding=1, stride=2)
    assert torch.allclose(Epsilon(eps)(conv, x, R).double(), ref, rtol=1e-4, atol=1e-6)


def test_zbeta_matches_reference(conv_case):
    conv, x, R = conv_case
    lo, hi = image_bounds(x)
    x64 = x.double()
    w = conv.weight.double().flatten(1)
    pat = lambda t: F.unfold(t.double().expand_as(x64), 3, padding=1, stride=2)  # noqa: E731
    px, pl, ph = pat(x), pat(lo), pat(hi)
    c = px[:, None] * w[None, :, :, None] - pl[:, None] * w.clamp(min=0)[None, :, :, None] - ph[:, None] * w.clamp(max=0)[None, :, :, None]
    Rp = (c / c.sum(2, keepdim=True) * R.double().flatten(2)[:, :, None]).sum(1)
    ref = F.fold(Rp, (9, 9), 3, padding=1, stride=2)
    assert torch.allclose(ZBeta()(conv, x, R).double(), ref, rtol=1e-4, atol=1e-6)


def test_alpha_beta_and_flat_conserve(conv_case):
    conv, x, R = conv_case
    x = x.clamp(min=0) + 0.1  # all z+ and z- non-zero
    for rule in (AlphaBeta(2, 1), AlphaBeta(1, 0), Flat(), ZPlus()):
        out = rule(conv, x, R)
        assert torch.allclose(out.sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-4), rule
    with pytest.raises(ValueError, match="alpha - beta"):
        AlphaBeta(2, 2)


def test_channel_bounds_are_the_normalised_pixel_range():
    lo, hi = channel_bounds((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))(torch.zeros(1, 3, 2, 2))
    assert lo.flatten().tolist() == [-1.0, -1.0, 0.0]
    assert hi.flatten().tolist() == [1.0, 3.0, 1.0]


# ----------------------------------------------------------------------------------
# Conservation
# ----------------------------------------------------------------------------------
def test_conservation_through_every_layer(vgg16_bn):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fg = FGCAM(vgg16_bn)
    layers = ["input"] + [f"features.{i}" for i in range(44)]
    expl = fg.explain(x, layer=layers)
    total = expl.components["features.43"].sum((1, 2, 3))
    for name, R in expl.components.items():
        assert torch.allclose(R.sum((1, 2, 3)), total, rtol=1e-4), name


def test_lrp_conserves_the_logit(tiny_vgg, images):
    expl = LRP(tiny_vgg).explain(images, layer=["input", 13])
    yt = expl.logits.gather(1, expl.target[:, None]).squeeze(1)
    assert torch.allclose(expl.components["input"].sum((1, 2, 3)), yt, rtol=1e-4, atol=1e-5)
    # CLRP's contrastive output sums to zero; SGLRP's softmax gradient too
    for cls in (CLRP, SGLRP):
        r = cls(tiny_vgg).explain(images, layer="input").components["input"].sum((1, 2, 3))
        assert torch.allclose(r, torch.zeros_like(r), atol=1e-4)


def test_bias_in_denominator_leaks_relevance(tiny_vgg, images):
    from fgcam_lib import canonical

    kept = FGCAM(tiny_vgg, rules=canonical(keep_bias=True)).explain(images, layer=["input", "features.43"])
    plain = FGCAM(tiny_vgg, rules="canonical").explain(images, layer=["input", "features.43"])
    top = plain.components["features.43"].sum((1, 2, 3))
    assert torch.allclose(plain.components["input"].sum((1, 2, 3)), top, rtol=1e-4)
    assert not torch.allclose(kept.components["input"].sum((1, 2, 3)), top, rtol=1e-2)


# ----------------------------------------------------------------------------------
# Presets: BN merge vs pass-through
# ----------------------------------------------------------------------------------
def test_merge_equals_pass_through_with_positive_bn_scales(tiny_vgg, images):
    merged = dataclasses.replace(paper(), merge_bn=True)
    a = FGCAM(tiny_vgg, rules="paper")(images, layer=["input", 13, 23], signed=True)
    b = FGCAM(tiny_vgg, rules=merged)(images, layer=["input", 13, 23], signed=True)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_negative_bn_scale_warns_and_differs(images):
    torch.manual_seed(0)
    model = randomize_bn(TinyVGG(), positive_scale=False).eval()
    merged = dataclasses.replace(paper(), merge_bn=True)
    with pytest.warns(UserWarning, match="BatchNorm scale"):
        b = FGCAM(model, rules=merged)(images, layer=13, signed=True)
    with pytest.warns(UserWarning, match="BatchNorm scale"):  # pass-through is told too: the two differ
        a = FGCAM(model, rules="paper")(images, layer=13, signed=True)
    assert not torch.allclose(a, b, rtol=1e-3)


def test_rule_mix_and_unknown_keys(tiny_vgg, images):
    mixed = FGCAM(tiny_vgg, rules={"conv": Epsilon(0.25), "input": ZPlus()})
    assert mixed(images, layer="input").shape == (3, 64, 64)
    with pytest.raises(ValueError, match="unknown rule keys"):
        FGCAM(tiny_vgg, rules={"convolution": ZPlus()})


# ----------------------------------------------------------------------------------
# Batching, dtype, many layers, denoising
# ----------------------------------------------------------------------------------
EXPLAINERS = {
    "fg_grad_cam": lambda m: FGCAM(m),
    "fg_score_cam": lambda m: FGCAM(m, base="score_cam"),
    "fg_grad_cam_pp_denoise": lambda m: FGCAM(m, base="grad_cam_pp", denoise=0.5),
    "fg_xgrad_cam_canonical": lambda m: FGCAM(m, base="xgrad_cam", rules="canonical"),
    "lrp": LRP,
    "clrp": CLRP,
    "sglrp": SGLRP,
}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_batched_equals_one_by_one(name, tiny_vgg, images):
    ex = EXPLAINERS[name](tiny_vgg)
    target = [1, 4, 7]
    batched = ex(images, target=target, layer=["input", 13], signed=True)
    for i in range(len(images)):
        single = ex(images[i : i + 1], target=target[i], layer=["input", 13], signed=True)
        for k in batched:
            assert torch.allclose(batched[k][i], single[k][0], rtol=1e-4, atol=1e-6), (name, k)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM])
def test_cams_batched_equals_one_by_one(cls, tiny_vgg, images):
    ex = cls(tiny_vgg)
    batched = ex(images, layer=23)
    for i in range(len(images)):
        assert torch.allclose(batched[i], ex(images[i : i + 1], layer=23)[0], rtol=1e-4, atol=1e-6)


def test_float32_matches_float64(tiny_vgg, images):
    m64 = copy.deepcopy(tiny_vgg).double()
    for make in (lambda m: FGCAM(m), lambda m: FGCAM(m, rules="canonical", denoise=0.5), LRP):
        a = make(tiny_vgg)(images, target=2, layer=["input", 13], signed=True)
        b = make(m64)(images.double(), target=2, layer=["input", 13], signed=True)
        for k in a:
            scale = b[k].abs().max()
            assert torch.allclose(a[k].double(), b[k], atol=1e-4 * float(scale)), k


def test_many_layers_in_one_call_equal_separate_calls(tiny_vgg, images):
    fg = FGCAM(tiny_vgg, denoise=0.5)
    many = fg(images, layer=[-1, 13, 23, 33])
    for k, v in many.items():
        assert torch.allclose(v, fg(images, layer=k), rtol=1e-5, atol=1e-7), k
    cams = GradCAM(tiny_vgg)(images, layer=[13, 23, 33])
    for k, v in cams.items():
        assert torch.allclose(v, GradCAM(tiny_vgg)(images, layer=k), rtol=1e-5, atol=1e-7)


def test_fgcam_at_component_layer_is_signed_grad_cam(tiny_vgg, images):
    a = FGCAM(tiny_vgg)(images, layer=43)
    b = GradCAM(tiny_vgg)(images, layer=43)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_denoise_full_rank_is_row_centred_identity():
    I = torch.randn(2, 16, 5, 5)
    centred = I - I.flatten(2).mean(2)[:, :, None, None]
    assert torch.allclose(denoise(I, 1.0), centred, atol=1e-5)
    assert denoise_rank(0.1, 512, 49) == 4
    assert denoise_rank(0.1, 64, 16) == 1
    low = denoise(I, 0.2)
    assert torch.linalg.matrix_rank(low[0].flatten(1)) == denoise_rank(0.2, 16, 25)
    with pytest.raises(ValueError):
        denoise(I, 0.0)


# ----------------------------------------------------------------------------------
# Model state, hooks, independence, in-place ReLU
# ----------------------------------------------------------------------------------
def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_state_restored_after_success_and_error(images):
    torch.manual_seed(0)
    model = randomize_bn(TinyVGG())
    model.train()
    model.features[0].weight.requires_grad_(False)
    stats = model.features[1].running_mean.clone()
    before = _hooks(model)
    FGCAM(model)(images)
    with pytest.raises(ValueError, match="out of range"):
        FGCAM(model)(images, target=99)
    assert model.training and all(m.training for m in model.modules())
    assert not model.features[0].weight.requires_grad and model.features[3].weight.requires_grad
    assert torch.equal(model.features[1].running_mean, stats)
    assert _hooks(model) == before == 0
    assert all(p.grad is None for p in model.parameters())


def test_two_explainers_do_not_interfere(tiny_vgg, images):
    fg, cam = FGCAM(tiny_vgg), GradCAM(tiny_vgg)
    a1 = fg(images, layer=13)
    b1 = cam(images, layer=23)
    a2 = fg(images, layer=13)
    assert torch.equal(a1, a2)
    assert torch.equal(b1, GradCAM(tiny_vgg)(images, layer=23))


def test_inplace_relu_gives_same_result(tiny_vgg, images):
    no_inplace = copy.deepcopy(tiny_vgg)
    for m in no_inplace.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for make in (FGCAM, LayerCAM, LRP):
        assert torch.allclose(make(tiny_vgg)(images), make(no_inplace)(images))


# ----------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------
def test_clear_errors(tiny_vgg, images):
    fg = FGCAM(tiny_vgg)
    with pytest.raises(ValueError, match="unknown layer 'features.99'; closest: features.9, ") as err:
        fg(images, layer="features.99")
    assert "features.13" not in str(err.value)  # the closest names, not all 51
    with pytest.raises(ValueError, match="outside model.features"):
        fg(images, layer=50)
    with pytest.raises(ValueError, match="above the component layer"):
        fg(images, layer="classifier.1")
    with pytest.raises(ValueError, match="not defined at the input"):
        GradCAM(tiny_vgg)(images, layer="input")
    with pytest.raises(ValueError, match="out of range"):
        fg(images, target=10)
    with pytest.raises(ValueError, match="3 images"):
        fg(images, target=[1, 2])
    with pytest.raises(ValueError, match="unsqueeze"):
        fg(images[0])
    with pytest.raises(ValueError, match="channels"):
        fg(torch.randn(1, 1, 64, 64))
    side = 2 ** sum(isinstance(m, nn.MaxPool2d) for m in tiny_vgg.modules())  # 2 x 2 pools, padded 3 x 3 convs
    with pytest.raises(ValueError, match=f"at least {side} x {side}"):
        fg(torch.randn(1, 3, side - 1, 64))
    assert fg(torch.randn(1, 3, side, side)).shape == (1, side, side)
    with pytest.raises(ValueError, match="unknown base"):
        FGCAM(tiny_vgg, base="gradcam")
    with pytest.raises(ValueError, match="no spatial map"):
        LRP(tiny_vgg)(images, layer="classifier.1")
    assert LRP(tiny_vgg).explain(images, layer="classifier.1").components["classifier.1"].dim() == 2
    with pytest.raises(TypeError, match="CLASSES.index"):
        fg(images, target="disk")
    with pytest.raises(TypeError, match="whole class indices"):
        fg(images, target=2.7)
    assert torch.equal(fg(images, target=torch.tensor(2.0)), fg(images, target=2))
    with pytest.raises(TypeError, match="rank fraction"):
        FGCAM(tiny_vgg, denoise=True)
    with pytest.raises(ValueError, match="Score-CAM variant"):
        FGCAM(tiny_vgg, base="score_cam", score_cam_variant="x")
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax2d(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 2))
    with pytest.raises(TypeError, match="no rule for layer '1' \\(Softmax2d\\)"):
        FGCAM(bad)(torch.randn(1, 3, 5, 5))


def test_unsupported_rule_for_module_names_layer(images):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    preset = dataclasses.replace(paper(), rules={k: v for k, v in paper().rules.items() if k != "avgpool"})
    with pytest.raises(TypeError, match="no rule for layer '2' \\(AdaptiveAvgPool2d\\)"):
        LRP(net, rules=preset)(images)


def test_sequential_model_supported(images):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(8, 5),
    ).eval()
    fg = FGCAM(net)
    assert fg.component_layer == "6"
    expl = fg.explain(images, layer=["input", 3])
    top = fg.explain(images, layer=6).components[6].sum((1, 2, 3))
    assert torch.allclose(expl.components["input"].sum((1, 2, 3)), top, rtol=1e-4)


def test_score_cam_default_shares_fg_score_cam_weights(tiny_vgg, images):
    fg = FGCAM(tiny_vgg, base="score_cam")
    top = fg.component_layer
    assert torch.allclose(ScoreCAM(tiny_vgg)(images, layer=top), fg(images, layer=top), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------
# z+ where no contribution is positive: plain (leaks) and conservative
# ----------------------------------------------------------------------------------
def test_zplus_leaks_where_no_contribution_is_positive_and_the_conservative_variant_does_not():
    conv = nn.Conv2d(1, 1, (1, 2), bias=False)
    conv.weight.data = torch.tensor([[[[1.0, 2.0]]]])
    x = torch.tensor([[[[-1.0, -2.0, 3.0]]]])  # outputs: -5 (no positive contribution), 4
    R = torch.tensor([[[[1.0, 1.0]]]])
    plain = ZPlus()(conv, x, R)
    assert torch.allclose(plain, torch.tensor([[[[0.0, 0.0, 1.0]]]]))  # the first output's relevance is lost
    cons = ZPlus(conservative=True)(conv, x, R)
    # the first output's relevance goes to its negative contributions -1 and -4: shares 1/5 and 4/5
    assert torch.allclose(cons, torch.tensor([[[[0.2, 0.8, 1.0]]]]))
    assert ZPlus(conservative=True).guarantee == "where any input contributes"
    assert ZPlus().guarantee == "where an input contributes positively" and not ZPlus().conserves
    assert ZPlus(flat=True).conserves and ZPlus(bias=True, flat=True).guarantee == "no"


def test_zplus_flat_spreads_an_output_no_input_contributes_to():
    # the shift case: the first output's window holds only zeros (its value would be the BN shift
    # alone), the second's a zero and a 3
    conv = nn.Conv2d(1, 1, (1, 2), bias=False)
    conv.weight.data = torch.tensor([[[[1.0, 2.0]]]])
    x = torch.tensor([[[[0.0, 0.0, 3.0]]]])
    R = torch.tensor([[[[1.0, 2.0]]]])
    assert torch.allclose(ZPlus()(conv, x, R), torch.tensor([[[[0.0, 0.0, 2.0]]]]))
    # flat: the first output's 1 goes half and half over its window; the second's by z+
    assert torch.allclose(ZPlus(flat=True)(conv, x, R), torch.tensor([[[[0.5, 0.5, 2.0]]]]))
    # negative contributions first, then flat for what is left
    x2 = torch.tensor([[[[0.0, 0.0, -3.0]]]])  # outputs 0 (nothing), -6 (negative only)
    got = ZPlus(conservative=True, flat=True)(conv, x2, R)
    assert torch.allclose(got, torch.tensor([[[[0.5, 0.5, 2.0]]]]))


def test_zplus_flat_skips_zero_padding():
    # a 3-wide window over a padded border: the flat share goes to the two real positions only
    conv = nn.Conv2d(1, 1, (1, 3), padding=(0, 1), bias=False)
    conv.weight.data = torch.tensor([[[[1.0, 1.0, 1.0]]]])
    x = torch.zeros(1, 1, 1, 2)
    R = torch.tensor([[[[1.0, 0.0]]]])
    assert torch.allclose(ZPlus(flat=True)(conv, x, R), torch.tensor([[[[0.5, 0.5]]]]))


def test_conservative_pool_shares_all_negative_windows():
    pool = nn.AdaptiveAvgPool2d(1)
    x = torch.tensor([[[[-1.0, -3.0]], [[2.0, -2.0]]]])  # channel 0 has no positive input
    R = torch.tensor([[[[1.0]], [[1.0]]]])
    assert torch.allclose(PoolZ()(pool, x, R).sum((2, 3)), torch.tensor([[0.0, 1.0]]))
    out = PoolZ(conservative=True)(pool, x, R)
    assert torch.allclose(out, torch.tensor([[[[0.25, 0.75]], [[1.0, 0.0]]]]))


# ----------------------------------------------------------------------------------
# Known answers for the functional-level rules
# ----------------------------------------------------------------------------------
class _Up(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(16, 2, bias=False)

    def forward(self, x):
        return self.fc(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False if self.mode == "bilinear" else None).flatten(1))


def test_upsample_routes_relevance_back_by_its_adjoint():
    from fgcam_lib.engine.rules import Route

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    R = torch.arange(16.0).view(1, 1, 4, 4)
    near = Route()(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), [x], R, [True])[0]
    # each input pixel collects its 2 x 2 block of copies
    assert torch.equal(near, torch.tensor([[[[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]]]))
    bil = Route()(lambda t: F.interpolate(t, scale_factor=2, mode="bilinear"), [x], R, [True])[0]
    # bilinear weights: 1D pattern for 2 -> 4 (align_corners=False) is [1, 0], [.75, .25], [.25, .75], [0, 1]
    a = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    assert torch.allclose(bil[0, 0], a.t() @ R[0, 0] @ a)
    assert torch.allclose(bil.sum(), R.sum())  # conserves


def test_pad_rule_crops_and_a_fused_zero_border_takes_no_relevance():
    from fgcam_lib.engine import bind, canonical, graph_of

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 1, 3, 3))
            self.fc = nn.Linear(1, 2, bias=False)

        def forward(self, x):
            h = F.relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), self.w))
            return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))

    net = Net().eval()
    graph = graph_of(net)
    bound = bind(canonical(), graph)
    conv = next(op for (op, _), n in zip(bound, graph.nodes) if n.kind == "conv")
    assert conv.border == (1, 1, 1, 1) and conv.source is net.w
    # all-zero image: every conv output is 0, so the flat fallback spreads each output's relevance
    # over its window, the padding excepted: a corner output's 1 goes to its 4 real pixels
    x = torch.zeros(1, 1, 2, 2)
    xp = F.pad(x, (1, 1, 1, 1))
    R = torch.zeros(1, 1, 2, 2)
    R[0, 0, 0, 0] = 1.0
    out = ZPlus(flat=True)(conv, xp, R)
    assert torch.allclose(out[0, 0, 1:3, 1:3], torch.full((2, 2), 0.25)) and float(out.sum()) == pytest.approx(1.0)
    assert float(out[0, 0, 0].abs().sum() + out[0, 0, :, 0].abs().sum()) == 0.0


def test_functional_conv_uses_the_computed_weight():
    from fgcam_lib.engine import bind, paper, graph_of

    class StdConv(nn.Module):  # weight standardisation computed inside forward
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)))
            self.fc = nn.Linear(4, 2, bias=False)

        def std(self):
            w = self.weight
            return (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)

        def forward(self, x):
            h = F.relu(F.conv2d(x, self.std(), padding=1))
            return self.fc(h.mean((2, 3)))

    net = StdConv().eval()
    graph = graph_of(net)
    conv = next(op for (op, _), n in zip(bind(paper(), graph), graph.nodes) if n.kind == "conv")
    assert torch.allclose(conv.weight, net.std().detach()) and conv.source is None
    same = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    same.weight.data = net.std().detach()
    x = torch.rand(2, 3, 6, 6)
    R = torch.rand(2, 4, 6, 6)
    assert torch.allclose(ZPlus()(conv, x, R), ZPlus()(same, x, R))
    # and an explainer over it equals one over the module-conv twin
    twin = nn.Sequential(same, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    twin[4].weight.data = net.fc.weight.data
    assert torch.allclose(FGCAM(net)(x, layer="input", target=1), FGCAM(twin)(x, layer="input", target=1), atol=1e-6)


def test_reduce_sub_and_products_of_two_signals():
    from fgcam_lib.engine.rules import Gate, Reduce, Sum
    from fgcam_lib.engine.ops import CallOp, Slot

    # sum over dim 1: where the sum is >= 0 the positive summands share it, else the negative ones
    op = CallOp(torch.sum, (Slot(0),), {"dim": 1}, "sum")
    x = torch.tensor([[[1.0, -1.0, 0.0]], [[3.0, -4.0, 0.0]]]).permute(1, 0, 2)  # B=1, 2 summands, 3 positions
    R = torch.tensor([[2.0, 2.0, 3.0]])  # sums: 4, -5, 0
    got = Reduce()(op, x, R)
    assert torch.allclose(got, torch.tensor([[[0.5, 0.4, 1.5], [1.5, 1.6, 1.5]]]))  # -1, -4 share -5
    # a - b: shares of a and -b
    sub = CallOp(torch.sub, (Slot(0), Slot(1)), {}, "sub")
    ra, rb = Sum()(sub, [torch.tensor([3.0]), torch.tensor([-1.0])], torch.tensor([8.0]), [True, True])
    assert torch.allclose(ra, torch.tensor([6.0])) and torch.allclose(rb, torch.tensor([2.0]))
    # a product of two unrelated signals of one size: half each
    mul = CallOp(torch.mul, (Slot(0), Slot(1)), {}, "mul")
    r1, r2 = Gate()(mul, [torch.ones(2), torch.ones(2)], torch.tensor([1.0, 3.0]), [True, True])
    assert torch.equal(r1, torch.tensor([0.5, 1.5])) and torch.equal(r2, torch.tensor([0.5, 1.5]))


def test_held_matmul_known_answer_and_the_gate_found_through_reshapes():
    from fgcam_lib.engine.rules import HeldMatmul
    from fgcam_lib.engine.ops import CallOp, Slot

    mm = CallOp(torch.matmul, (Slot(0), Slot(1)), {}, "matmul")
    mm.gate = 1  # the second operand is computed from the first
    x = torch.tensor([[2.0, 4.0]])
    a = torch.tensor([[0.25], [0.75]])
    rx, ra = HeldMatmul()(mm, [x, a], torch.tensor([[7.0]]), [True, True])
    # z = 2 * 0.25 + 4 * 0.75 = 3.5: shares 0.5 / 3.5 and 3 / 3.5 of 7
    assert torch.allclose(rx, torch.tensor([[1.0, 6.0]])) and ra is None
    # no positive contribution: flat over the entries the output reads
    rx, _ = HeldMatmul(flat=True)(mm, [torch.zeros(1, 2), a], torch.tensor([[7.0]]), [True, True])
    assert torch.allclose(rx, torch.tensor([[3.5, 3.5]]))

    class GlobalContext(nn.Module):  # timm's GCNet attention: x.reshape(B, C, HW) @ softmax(conv(x))
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.attn = nn.Conv2d(4, 1, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = F.relu(self.conv(x))
            B, C, H, W = h.shape
            attn = F.softmax(self.attn(h).reshape(B, 1, H * W), dim=-1).unsqueeze(3)
            context = (h.reshape(B, C, H * W).unsqueeze(1) @ attn).view(B, C, 1, 1)
            return self.fc((h + context).mean((2, 3)))

    net = GlobalContext().eval()
    x = torch.rand(2, 3, 6, 6)
    fg = FGCAM(net, rules="canonical", mean=(0.5,) * 3, std=(0.5,) * 3)
    e = fg.explain(x, layer=["input", fg.component_layer])
    top = e.components[fg.component_layer].sum((1, 2, 3))
    assert torch.allclose(e.components["input"].sum((1, 2, 3)), top, rtol=1e-4, atol=1e-6)


def test_flat_and_wsquare_rules_read_only_shapes():
    # the walk hands shape-only rules meta tensors for x
    from fgcam_lib.engine.rules import WSquare

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(2, 3, 6, 6)
    for rule in (Flat(), WSquare()):
        maps = FGCAM(net.eval(), rules={"input": rule})(x, layer="input")
        assert maps.shape == (2, 6, 6) and bool(torch.isfinite(maps).all())
