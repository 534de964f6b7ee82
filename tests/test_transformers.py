"""Transformers: attention taken apart, its rules, token grids, oracles (LXT, pytorch-grad-cam)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fgcam_lib import FGCAM, LRP, GradCAM, LayerCAM
from fgcam_lib.data.transformers import BundledSwin, BundledViT
from fgcam_lib.engine import INPUT, bind, canonical, cp_lrp, attn_lrp, graph_of, paper
from fgcam_lib.engine.attention import attention_call
from fgcam_lib.engine.rules import CPAttention, Epsilon, ZPlus
from fgcam_lib.engine.walk import forward, plan, propagate

from test_oracles import pgc_raw_cam, rel_close


def _random_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """torchvision's ViT starts with a zero head (all logits 0): give it random weights."""
    heads = getattr(model, "heads", None)
    if heads is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            heads.head.weight.copy_(torch.randn(heads.head.weight.shape, generator=g) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _random_head(BundledViT())


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return BundledSwin().eval()


@pytest.fixture(scope="module")
def tv_models():
    """torchvision's vit_b_16 (head made random) and swin_t, random weights, built once."""
    torch.manual_seed(0)
    return {"vit_b_16": _random_head(torchvision.models.vit_b_16()), "swin_t": torchvision.models.swin_t().eval()}


def _attention_nodes(model):
    g = graph_of(model)
    return g, [i for i, n in enumerate(g.nodes) if n.kind == "attention"]


def _swin_v2():
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    return BundledSwin(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


@pytest.mark.parametrize("make", [BundledViT, BundledSwin, _swin_v2])
def test_attention_taken_apart_recomputes_the_op(make):
    """The pieces the rules read give the op's own output (MHA's fast path, shifted windows with
    their mask, Swin V2's cosine attention)."""
    torch.manual_seed(1)
    model = make().eval()
    g, att = _attention_nodes(model)
    x = torch.randn(2, 3, 96, 96)
    trace = forward(g, x, keep=set(att) | {j for i in att for j in g.nodes[i].inputs})
    assert att
    for i in att:
        node = g.nodes[i]
        xs = [trace.acts[j] for j in node.inputs if j in trace.shapes]
        call = attention_call(g.nodes[i].op, xs)
        iq, ik, iv = call.signals
        got = call(xs[iq], xs[ik], xs[iv])
        want = trace.acts[i]
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_one_block_known_answer():
    """One head, identity projections, no biases: out = A @ x. CP-LRP with z+ gives token j of
    x the share A_ij x_jd / sum_j' A_ij' x_j'd of each output (i, d), for x >= 0."""
    m = nn.MultiheadAttention(2, 1, bias=False, batch_first=True)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat([torch.eye(2)] * 3))
        m.out_proj.weight.copy_(torch.eye(2))
    x = torch.tensor([[[1.0, 2.0], [3.0, 0.5]]])
    R = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]])
    A = (x @ x.transpose(1, 2) / 2 ** 0.5).softmax(-1)[0]
    want = torch.zeros(2, 2)
    for i in range(2):
        for d in range(2):
            contrib = A[i] * x[0, :, d]
            want[:, d] += contrib / contrib.sum() * R[0, i, d]
    got = CPAttention(ZPlus())(m, [x, x, x], R)
    torch.testing.assert_close(got[2], want[None])
    assert got[0] is None and got[1] is None
    assert torch.isclose(got[2].sum(), R.sum())


def _conservation(model, x, preset):
    """(relevance at the component layer, at the input, taken by the class token) per image.

    The class token is a parameter: what attention passes to its position is relevance a
    parameter absorbs, as a bias does; it is read at the ``cat`` that prepends it."""
    fg = FGCAM(model, rules=preset)
    step = fg.components_at_top(x, keep_from=INPUT)
    L, graph, bound = fg.component_position, fg.graph, fg.bound_rules()
    R0 = fg.grid(step.trace.shapes, L).from_grid(step.components, step.trace.shapes[L])
    taken = torch.zeros(x.shape[0])

    def observe(i, r, rins):
        node = graph.nodes[i]
        if node.kind == "cat" and len(rins) == 2 and rins[0] is None:
            taken.add_(r[:, :1].sum((1, 2)))

    with torch.no_grad():
        R = propagate(graph, bound, step.trace, R0, plan(graph, bound, L, [INPUT]), observe=observe)
    return step.components.sum((1, 2, 3)), R[INPUT].sum((1, 2, 3)), taken


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_fgcam_conserves_from_the_component_layer_to_the_input(which, request):
    """With flat z+ (the canonical preset) nothing is lost between the token grid and the pixels
    but what the class token takes."""
    model = request.getfixturevalue(which)
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    top, bottom, cls = _conservation(model, x, "canonical")
    torch.testing.assert_close(bottom + cls, top, rtol=1e-4, atol=1e-6)
    if which == "swin":
        assert not cls.any()


@settings(max_examples=6, deadline=None)
@given(dim=st.sampled_from([8, 12]), heads=st.sampled_from([1, 2, 4]), layers=st.integers(1, 2),
       patch=st.sampled_from([8, 16]), seed=st.integers(0, 1000))
def test_attention_graphs_conserve(dim, heads, layers, patch, seed):
    """Any small ViT: relevance at the token grid reaches the pixels or the class token (flat z+)."""
    torch.manual_seed(seed)
    model = _random_head(BundledViT(hidden_dim=dim, num_heads=heads, num_layers=layers, mlp_dim=2 * dim,
                                    patch_size=patch, image_size=32), seed)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    top, bottom, cls = _conservation(model, x, "canonical")
    torch.testing.assert_close(bottom + cls, top, rtol=1e-4, atol=1e-6)


def test_batched_equals_one_by_one_and_model_untouched(vit):
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    before = copy.deepcopy(vit.state_dict())
    fg = FGCAM(vit)
    with torch.no_grad():  # explainers take their own gradients
        batched = fg(x, target=[0, 3, 5], layer=["input", "encoder.layers.encoder_layer_1.ln_1"])
    for k in range(3):
        one = fg(x[k:k + 1], target=[0, 3, 5][k], layer=["input", "encoder.layers.encoder_layer_1.ln_1"])
        for layer in one:
            torch.testing.assert_close(batched[layer][k:k + 1], one[layer], rtol=1e-4, atol=1e-6)
    after = vit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not vit.training


def test_token_grid_layers_have_the_patch_grid(vit, swin):
    fg = FGCAM(vit)
    assert fg.component_layer == "encoder.layers.encoder_layer_3.ln_1"
    maps = fg(torch.randn(1, 3, 96, 96), layer=["encoder.layers.encoder_layer_0.ln_1", "conv_proj", "input"])
    assert maps["encoder.layers.encoder_layer_0.ln_1"].shape == (1, 12, 12)
    assert maps["conv_proj"].shape == (1, 12, 12)
    assert maps["input"].shape == (1, 96, 96)
    fs = FGCAM(swin)
    assert fs.component_layer == "features"
    maps = fs(torch.randn(1, 3, 96, 96), layer=["features.3", "features.1", "features.0"])
    assert [tuple(m.shape) for m in maps.values()] == [(1, 12, 12), (1, 24, 24), (1, 24, 24)]


# ---------------------------------------------------------------- oracles ---------
def test_lrp_on_vit_b_16_matches_lxt(tv_models):
    """LRP with the cp_lrp preset equals LXT's CP-LRP (gradient x input with attention, the LN
    std and GELU handled by its patches) on torchvision's vit_b_16, random weights, float64."""
    pytest.importorskip("lxt")
    from fgcam_lib.evaluation.lxt_oracle import lxt_cp_lrp

    model = copy.deepcopy(tv_models["vit_b_16"]).double()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ex = LRP(model, rules=cp_lrp(1e-12)).explain(x, layer="input")
    ours = ex.components["input"]
    with lxt_cp_lrp():
        xr = x.clone().requires_grad_(True)
        copy.deepcopy(model)(xr)[0, ex.target[0]].backward()
    theirs = (xr * xr.grad).detach()
    assert rel_close(ours, theirs, 1e-4)


def test_attn_lrp_matches_gradient_x_input_with_lxt_rules():
    """AttnLRP on one attention block equals gradient x input of the block written out with
    LXT's own primitives: q and k gradients divided by 4, v's by 2, the softmax as it is."""
    pytest.importorskip("lxt")
    from fgcam_lib.evaluation.lxt_oracle import lxt_cp_lrp

    with lxt_cp_lrp():  # loads LXT's modules without its package init
        from lxt.efficient.rules import divide_gradient

    torch.manual_seed(4)
    m = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    R = torch.randn(2, 5, 8, dtype=torch.float64)

    def block(t):
        E, h = 8, 2
        q, k, v = nn.functional.linear(t, m.in_proj_weight, m.in_proj_bias).chunk(3, -1)
        q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
        split = lambda z: z.reshape(2, 5, h, E // h).transpose(1, 2)  # noqa: E731
        A = (split(q) @ split(k).transpose(-2, -1) / (E // h) ** 0.5).softmax(-1)
        o = (A @ split(v)).transpose(1, 2).reshape(2, 5, E)
        return m.out_proj(o)

    xr = x.clone().requires_grad_(True)
    y = block(xr)
    (y * (R / y).detach()).sum().backward()  # relevance R at the output, as gradient x input
    theirs = (xr * xr.grad).detach()
    got = attn_lrp(1e-12).rules["attention"](m, [x, x, x], R)
    ours = sum(g for g in got if g is not None)
    assert rel_close(ours, theirs, 1e-6)


@pytest.mark.parametrize("ours,theirs", [(GradCAM, "GradCAM"), (LayerCAM, "LayerCAM")])
@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t"])
def test_token_cams_match_pytorch_grad_cam(ours, theirs, arch, tv_models):
    """Grad-CAM and Layer-CAM at the token grid equal pytorch-grad-cam with its reshape_transform."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = tv_models[arch]
    size = 224 if arch == "vit_b_16" else 128
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)  # pytorch-grad-cam hooks its model; ours stays untouched
    if arch == "vit_b_16":
        layer, module = "encoder.layers.encoder_layer_11.ln_1", twin.encoder.layers[-1].ln_1

        def reshape(t):
            return t[:, 1:, :].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)
    else:
        layer, module = "features", twin.features

        def reshape(t):
            return t.permute(0, 3, 1, 2)
    ref = pgc_raw_cam(getattr(pgc, theirs), twin, module, x, [3, 7], reshape_transform=reshape)
    mine = ours(model)(x, target=[3, 7], layer=layer, signed=True)
    assert rel_close(mine, ref)


@pytest.mark.parametrize("preset", ["paper", "canonical", "cp_lrp", "attn_lrp"])
def test_every_preset_runs_on_swin(preset, swin):
    ex = FGCAM(swin, rules=preset).explain(torch.randn(1, 3, 96, 96), layer=["input", "features.1"])
    assert torch.isfinite(ex.components["input"]).all() and ex.components["input"].abs().sum() > 0


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_every_registered_method_runs_on_the_bundled_transformers(which, request):
    from fgcam_lib.evaluation.zoo import check_methods

    runs = check_methods(request.getfixturevalue(which), torch.randn(1, 3, 96, 96))
    assert all(v == "runs" for v in runs.values()), {k: v for k, v in runs.items() if v != "runs"}


class _FusedAttention(nn.Module):
    """An embedding, then one attention layer written as timm writes it: a qkv linear and
    F.scaled_dot_product_attention."""

    def __init__(self, embed: nn.Linear, mha: nn.MultiheadAttention):
        super().__init__()
        self.embed = embed
        self.qkv = nn.Linear(mha.embed_dim, 3 * mha.embed_dim)
        self.proj = mha.out_proj
        self.heads = mha.num_heads
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            self.qkv.bias.copy_(mha.in_proj_bias)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C)).flatten(1)


class _LeafAttention(nn.Module):
    """The same with the attention as an nn.MultiheadAttention leaf."""

    def __init__(self, embed: nn.Linear, mha: nn.MultiheadAttention):
        super().__init__()
        self.embed, self.attn = embed, mha

    def forward(self, x):
        x = self.embed(x)
        return self.attn(x, x, x, need_weights=False)[0].flatten(1)


def test_fused_attention_is_held_like_multihead_attention():
    """One attention as an nn.MultiheadAttention leaf and as a traced qkv linear plus
    F.scaled_dot_product_attention: CP-LRP gives the same relevance at the input."""
    torch.manual_seed(5)
    embed, mha = nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    R = torch.rand(2, 40)
    got = []
    for model in (_LeafAttention(embed, mha).eval(), _FusedAttention(embed, mha).eval()):
        g = graph_of(model)
        bound = bind(paper(), g)
        trace = forward(g, x, keep=set(range(-1, len(g.nodes))))
        torch.testing.assert_close(trace.out, mha(embed(x), embed(x), embed(x))[0].flatten(1), atol=1e-5, rtol=1e-4)
        got.append(propagate(g, bound, trace, R, plan(g, bound, g.output, [INPUT]))[INPUT])
    torch.testing.assert_close(got[0], got[1], atol=1e-5, rtol=1e-4)
