"""The graph engine: known answers on hand-built graphs, float64 references for the
multi-input rules, properties of random graphs, conservation on real architectures,
flat chain vs fx graph, model state, names, errors and the coverage table."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fgcam_lib import FGCAM, LRP, GradCAM, LayerCAM, PoolZ, ZPlus, paper
from fgcam_lib.engine import INPUT, Route, Rule, Sum, chain_graph, coverage, forward, fx_graph, graph_of
from fgcam_lib.evaluation.zoo import trained_like_bn

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """Small graphs on a shared 2-core machine: one intra-op thread for the whole module."""
    yield


def _set(module: nn.Module, weight, bias=None) -> nn.Module:
    module.weight.data = torch.tensor(weight, dtype=torch.float32).reshape(module.weight.shape)
    if bias is not None:
        module.bias.data = torch.tensor(bias, dtype=torch.float32)
    return module


def close(got: torch.Tensor, want, atol: float = 1e-6) -> bool:
    return torch.allclose(got.flatten().double(), torch.as_tensor(want, dtype=torch.float64).flatten(), atol=atol)


# One row of three pixels: image_bounds gives l = -1, h = 2.
ROW = torch.tensor([[[[-1.0, 1.0, 2.0]]]])
SIG = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731


# ----------------------------------------------------------------------------------
# 1. Known answers on hand-built graphs
# ----------------------------------------------------------------------------------
class HandResidual(nn.Module):
    """s = relu(stem(x)) (1x1, w=1); y = relu(conv(s)) + s (1x3, w=[1,-1,2], pad 1); logits = W flatten(y)."""

    def __init__(self):
        super().__init__()
        self.stem = _set(nn.Conv2d(1, 1, 1, bias=False), [1.0])
        self.conv = _set(nn.Conv2d(1, 1, (1, 3), padding=(0, 1), bias=False), [1.0, -1.0, 2.0])
        self.head = _set(nn.Linear(3, 2, bias=False), [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(self.conv(s)) + s
        return self.head(torch.flatten(y, 1))


RES_X = torch.tensor([[[[2.0, -1.0, 1.0]]]])  # l = -1, h = 2


def test_residual_add_lrp_known_answer():
    # s = [2, 0, 1]; conv(s) = [0*1 + 2*-1 + 0*2, 2*1 + 0 + 1*2, 0 + 1*-1 + 0] = [-2, 4, -1] -> h = [0, 4, 0];
    # y = h + s = [2, 4, 1]; logits = [2 + 4, 4 + 1] = [6, 5]; R(logit 0) = 6.
    # head z+: contributions y * w0 = [2, 4, 0] (z = 6) -> R_y = [2, 4, 0].
    # Sum (sign): pixel 0 (h=0, s=2): all 2 to s; pixel 1 (h=4, s=0): all 4 to h.
    # conv z+ at output pixel 1: positive contributions s0*1 = 2, s2*2 = 2 -> R_s(conv) = [2, 0, 2].
    # s collects skip + conv: [2 + 2, 0, 0 + 2] = [4, 0, 2]; the 1x1 stem (z-beta, z = x + 1 = [3, 0, 2])
    # hands each pixel its own relevance: R_input = [4, 0, 2], summing to the logit 6.
    net = HandResidual()
    e = LRP(net).explain(RES_X, target=0, layer=["input", "relu", "relu_1", "add"])
    assert close(e.logits, [6.0, 5.0])
    assert close(e.components["add"], [2, 4, 0])
    assert close(e.components["relu_1"], [0, 4, 0])
    assert close(e.components["relu"], [4, 0, 2])
    assert close(e.components["input"], [4, 0, 2])


def test_residual_add_fgcam_known_answer():
    # Component layer: y (the add feeding flatten). Grad-CAM weight: mean(dlogit0/dy) = mean([1, 1, 0]) = 2/3;
    # I = 2/3 * [2, 4, 1]. Sum: pixel 0 and 2 go to the skip (h = 0), pixel 1 to h; conv z+ splits pixel 1's
    # 8/3 as [4/3, 0, 4/3]; R_s = [4/3 + 4/3, 0, 2/3 + 4/3] = [8/3, 0, 2]; the stem passes it on.
    fg = FGCAM(HandResidual())
    assert fg.component_layer == "add"
    e = fg.explain(RES_X, target=0, layer=["input", "relu", "add"])
    assert close(e.weights, [2 / 3])
    assert close(e.components["add"], [4 / 3, 8 / 3, 2 / 3])
    assert close(e.components["relu"], [8 / 3, 0, 2])
    assert close(e.components["input"], [8 / 3, 0, 2])


class HandCat(nn.Module):
    """s = relu(stem(x)); c = cat(relu(conv_a(s)), relu(conv_b(s))) (1 + 2 channels); global mean; linear."""

    def __init__(self):
        super().__init__()
        self.stem = _set(nn.Conv2d(1, 1, 1, bias=False), [1.0])
        self.conv_a = _set(nn.Conv2d(1, 1, 1, bias=False), [2.0])
        self.conv_b = _set(nn.Conv2d(1, 2, 1, bias=False), [1.0, -1.0])
        self.head = _set(nn.Linear(3, 2, bias=False), [[1.0, 3.0, 5.0], [-1.0, 1.0, 0.0]])

    def forward(self, x):
        s = F.relu(self.stem(x))
        c = torch.cat([F.relu(self.conv_a(s)), F.relu(self.conv_b(s))], 1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


def test_cat_of_two_branches_known_answer():
    # s = [0, 1, 2]; a = [0, 2, 4]; b = ch0 [0, 1, 2], ch1 [0, 0, 0]; means [2, 1, 0]; logits [2 + 3, -1] = [5, -1].
    # head z+: [2*1, 1*3, 0] -> R_pool = [2, 3, 0]. Average pool z: ch0 R = x/3 * 2/2 = [0, 2/3, 4/3],
    # ch1 R = x/3 * 3/1 = [0, 1, 2], ch2 nothing. cat routes ch0 to branch a, ch1-2 to branch b;
    # both 1x1 convs hand it to s: R_s = [0, 2/3 + 1, 4/3 + 2] = [0, 5/3, 10/3]; stem z-beta (z = x + 1) passes.
    net = HandCat()
    e = LRP(net).explain(ROW, target=0, layer=["input", "relu", "relu_1", "relu_2", "cat"])
    assert close(e.logits, [5.0, -1.0])
    assert close(e.components["cat"], [[0, 2 / 3, 4 / 3], [0, 1, 2], [0, 0, 0]])
    assert close(e.components["relu_1"], [0, 2 / 3, 4 / 3])  # branch a
    assert close(e.components["relu_2"], [[0, 1, 2], [0, 0, 0]])  # branch b
    assert close(e.components["relu"], [0, 5 / 3, 10 / 3])
    assert close(e.components["input"], [0, 5 / 3, 10 / 3])
    # FG-CAM: component layer is the cat (the global pool's input); Grad-CAM weights d logit0 / d c =
    # [1, 3, 5] / 3 per pixel -> channel means [1/3, 1, 5/3]; I = w * c equals the LRP relevance there.
    fg = FGCAM(net)
    assert fg.component_layer == "cat"
    f = fg.explain(ROW, target=0, layer=["input", "cat"])
    assert close(f.weights, [1 / 3, 1.0, 5 / 3])
    assert close(f.components["input"], [0, 5 / 3, 10 / 3])


class HandGate(nn.Module):
    """s = relu(stem(x)) (1 -> 2 channels, w = [1, 2]); y = s * sigmoid(fc(mean(s)))[:, :, None, None]."""

    def __init__(self):
        super().__init__()
        self.stem = _set(nn.Conv2d(1, 2, 1, bias=False), [1.0, 2.0])
        self.fc = _set(nn.Linear(2, 2), [[1.0, 0.0], [0.0, -1.0]], [0.5, 0.0])
        self.head = _set(nn.Linear(6, 2, bias=False), [[0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 0]])

    def forward(self, x):
        s = F.relu(self.stem(x))
        g = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(s, 1).flatten(1)))
        y = s * g[:, :, None, None]
        return self.head(torch.flatten(y, 1))


def test_gate_gives_all_relevance_to_the_signal():
    # s = ch0 [0, 1, 2], ch1 [0, 2, 4]; means [1, 2] -> fc [1.5, -2] -> gate g = [sig(1.5), sig(-2)].
    # logit0 = g0 * s0[1] + g1 * s1[2] = g0 + 4 g1; head z+ gives R_y = ch0 [0, g0, 0], ch1 [0, 0, 4 g1].
    # The gate is held constant: s gets R_y unchanged and the gate branch nothing. The stem (z-beta, w > 0,
    # z_o = w_o (x + 1)) gives each pixel the sum over its two channels: R_input = [0, g0, 4 g1].
    g0, g1 = SIG(1.5), SIG(-2.0)
    net = HandGate()
    e = LRP(net).explain(ROW, target=0, layer=["input", "relu", "mul", "fc", "adaptive_avg_pool2d"])
    assert close(e.logits, [g0 + 4 * g1, 2 * g1])
    assert close(e.components["mul"], [[0, g0, 0], [0, 0, 4 * g1]])
    assert close(e.components["relu"], [[0, g0, 0], [0, 0, 4 * g1]])
    assert close(e.components["input"], [0, g0, 4 * g1])
    assert not e.components["fc"].any() and not e.components["adaptive_avg_pool2d"].any()
    # FG-CAM: d logit0 / d y = ch0 [0, 1, 0], ch1 [0, 0, 1] -> weights [1/3, 1/3]; I = y / 3;
    # input: per pixel the channel sum, [0, (g0 + 2 g1) / 3, (2 g0 + 4 g1) / 3].
    f = FGCAM(net).explain(ROW, target=0, layer=["input", "relu"])
    assert close(f.weights, [1 / 3, 1 / 3])
    assert close(f.components["relu"], [[0, g0 / 3, 2 * g0 / 3], [0, 2 * g1 / 3, 4 * g1 / 3]])
    assert close(f.components["input"], [0, (g0 + 2 * g1) / 3, (2 * g0 + 4 * g1) / 3])


class HandBottleneck(nn.Module):
    """A linear bottleneck: s = relu(stem(x)); b = conv1(s) (w = -1, no activation); y = relu(conv2(b)) (w = -1)."""

    def __init__(self):
        super().__init__()
        self.stem = _set(nn.Conv2d(1, 1, 1, bias=False), [1.0])
        self.conv1 = _set(nn.Conv2d(1, 1, 1, bias=False), [-1.0])
        self.conv2 = _set(nn.Conv2d(1, 1, 1, bias=False), [-1.0])
        self.head = _set(nn.Linear(3, 1, bias=False), [[1.0, 1.0, 1.0]])

    def forward(self, x):
        return self.head(torch.flatten(F.relu(self.conv2(self.conv1(F.relu(self.stem(x))))), 1))


def test_zplus_loses_relevance_at_neurons_without_positive_contribution():
    # s = [0, 1, 2]; b = -s (signed, no activation); y = s; logit = 3. conv2's z+ uses x- w- = b * -1 > 0,
    # so b's neurons receive R = [0, 1, 2]; but each b neuron is s * -1: no positive contribution, z+ = 0,
    # and conv1 drops all of it (0/0 -> 0). The coverage table says where: conv1, ZPlus, ratio 0.
    net = HandBottleneck()
    e = LRP(net).explain(ROW, target=0, layer=["input", "conv1", "conv2"])
    assert close(e.logits, [3.0])
    assert close(e.components["conv2"], [0, 1, 2]) and close(e.components["conv1"], [0, 1, 2])
    assert close(e.components["input"], [0, 0, 0])
    table = coverage(net, x=ROW)
    leaking = table[table.reached & ~table.conserved]
    assert list(leaking.index) == ["conv1"]
    assert leaking.rule.iloc[0].startswith("ZPlus") and leaking.ratio.iloc[0] == 0


# ----------------------------------------------------------------------------------
# 2. Sum and Route against slow float64 references
# ----------------------------------------------------------------------------------
def _bcast(idx: tuple, shape: torch.Size) -> tuple:
    """The element of an operand of ``shape`` that output element ``idx`` reads (numpy broadcasting)."""
    tail = idx[len(idx) - len(shape):]
    return tuple(i if s > 1 else 0 for i, s in zip(tail, shape))


def reference_sum(xs, data, R, mode, eps=1e-9):
    """Explicit per-element loop: shares of the data operands' values (constants get none)."""
    xs = [x.double() for x in xs]
    R = R.double()
    live = [k for k in range(len(xs)) if data[k]]
    out = [torch.zeros(x.shape, dtype=torch.float64) if k in live else None for k, x in enumerate(xs)]
    for idx in itertools.product(*map(range, R.shape)):
        v = {k: float(xs[k][_bcast(idx, xs[k].shape)]) for k in live}
        r = float(R[idx])
        if len(live) == 1:
            share = {k: 1.0 for k in live}
        elif mode == "proportional":
            z = sum(v.values())
            z = z + eps * (1.0 if z >= 0 else -1.0)
            share = {k: v[k] / z for k in live}
        else:
            pos = sum(max(a, 0.0) for a in v.values())
            neg = sum(min(a, 0.0) for a in v.values())
            if pos + neg >= 0:
                share = {k: (max(v[k], 0.0) / pos if pos else 1 / len(live)) for k in live}
            else:
                share = {k: min(v[k], 0.0) / neg for k in live}
        for k in live:
            out[k][_bcast(idx, xs[k].shape)] += share[k] * r
    return out


@pytest.fixture()
def sum_case():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 3, 4, 4, generator=g)
    b = torch.randn(2, 3, 1, 1, generator=g)  # broadcast, as a gate or pooled branch
    c = torch.randn(4, generator=g)  # a constant (a bias over the width)
    a[0, 0, 0, :2] = 0.0
    b[0, 0] = 0.0  # two output elements where every data operand is 0: equal shares
    a[1, 2] = a[1, 2].abs()
    b[1, 2] = -a[1, 2].max() * 3  # a channel where the sum is negative everywhere
    R = torch.randn(2, 3, 4, 4, generator=g)
    return [a, b, c], R


@pytest.mark.parametrize("mode", ["sign", "proportional"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_matches_float64_reference(mode, dtype, sum_case):
    xs, R = sum_case
    xs = [x.to(dtype) for x in xs]
    data = [True, True, False]
    got = Sum(mode)(None, xs, R.to(dtype), data)
    ref = reference_sum(xs, data, R, mode)
    assert got[2] is None  # the constant gets no share
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for k in (0, 1):
        assert got[k].shape == xs[k].shape and got[k].dtype == dtype
        scale = float(ref[k].abs().max())
        assert torch.allclose(got[k].double(), ref[k], rtol=tol, atol=tol * scale), (mode, k)
    if mode == "sign":  # shares in [0, 1] summing to 1: conserved exactly, nothing amplified
        assert torch.allclose(got[0].sum() + got[1].sum(), R.to(dtype).sum(), rtol=tol * 10, atol=tol)


def test_sum_single_data_operand_and_three_operands():
    g = torch.Generator().manual_seed(6)
    a, b, c = (torch.randn(2, 2, 3, 3, generator=g) for _ in range(3))
    R = torch.rand(2, 2, 3, 3, generator=g)
    only = Sum()(None, [a, b[0, :, :1, :1]], R, [True, False])
    assert torch.equal(only[0], R) and only[1] is None  # one signal: all of it, whatever its sign
    for mode in ("sign", "proportional"):
        got = Sum(mode)(None, [a, b, c], R, [True, True, True])
        ref = reference_sum([a, b, c], [True] * 3, R, mode)
        for k in range(3):
            assert torch.allclose(got[k].double(), ref[k], rtol=1e-5, atol=1e-5 * float(ref[k].abs().max()))
    with pytest.raises(ValueError, match="unknown Sum mode"):
        Sum("max")


def reference_cat(shapes, R, dim):
    """Explicit loop: output element idx goes to the operand whose slice holds idx[dim]."""
    R = R.double()
    dim = dim % R.dim()
    out = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    offsets = list(itertools.accumulate([0] + [s[dim] for s in shapes]))
    for idx in itertools.product(*map(range, R.shape)):
        k = max(i for i in range(len(shapes)) if offsets[i] <= idx[dim])
        local = list(idx)
        local[dim] -= offsets[k]
        out[k][tuple(local)] += float(R[idx])
    return out


class _Cat1(nn.Module):
    def forward(self, x):
        return torch.cat([x, x, x], 1)


class _CatLast(nn.Module):
    def forward(self, x):
        return torch.cat((x, x, x), dim=-1)


class _Concat2(nn.Module):
    def forward(self, x):
        return torch.concat([x, x, x], dim=2)


@pytest.mark.parametrize("module, dim", [(_Cat1, 1), (_CatLast, -1), (_Concat2, 2)])
def test_route_on_cat_matches_float64_reference(module, dim):
    graph = fx_graph(module())
    (node,) = [n for n in graph.nodes if n.kind == "cat"]
    g = torch.Generator().manual_seed(7)
    base = [2, 3, 4, 5]
    shapes = []
    for size in (2, 1, 3):
        s = list(base)
        s[dim] = size
        shapes.append(torch.Size(s))
    xs = [torch.randn(s, generator=g) for s in shapes]
    out_shape = list(base)
    out_shape[dim] = 6
    R = torch.randn(out_shape, generator=g)
    ref = reference_cat(shapes, R, dim)
    got = Route()(node.op, xs, R, [True, False, True])  # operand 1 a constant
    assert len(got) == 3
    for k in (0, 2):
        assert got[k].shape == shapes[k]
        assert torch.equal(got[k].double(), ref[k]), k
    # the rule reads only shapes: meta tensors give the same routing
    meta = Route()(node.op, [torch.empty(s, device="meta") for s in shapes], R, [True, True, True])
    for k in range(3):
        assert torch.equal(meta[k].double(), ref[k])


# ----------------------------------------------------------------------------------
# 3. Properties of random graphs (hypothesis)
# ----------------------------------------------------------------------------------
def _init(module: nn.Module, g: torch.Generator) -> None:
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else p.numel()
        p.data = torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_in)


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)

    def forward(self, x):
        return F.relu(self.conv(x))


class ResBlock(nn.Module):
    def __init__(self, c, inplace):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.inplace = inplace

    def forward(self, x):
        out = self.relu(self.conv(x))
        if self.inplace:
            out += x
            return out
        return out + x


class CatBlock(nn.Module):
    def __init__(self, c, c_a, c_b):
        super().__init__()
        self.a = nn.Conv2d(c, c_a, 1, bias=False)
        self.b = nn.Conv2d(c, c_b, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)


class PoolBlock(nn.Module):
    def __init__(self, kind, functional):
        super().__init__()
        self.kind, self.functional = kind, functional
        self.pool = nn.MaxPool2d(2) if kind == "maxpool" else nn.AvgPool2d(2)

    def forward(self, x):
        if not self.functional:
            return self.pool(x)
        return F.max_pool2d(x, 2) if self.kind == "maxpool" else F.avg_pool2d(x, 2)


class SEBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)  # a bias in the gate: no relevance goes there

    def forward(self, x):
        g = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return x * g[:, :, None, None]


class RandomNet(nn.Module):
    """stem conv + ReLU, then blocks (every block keeps activations >= 0), then a bias-free linear head."""

    def __init__(self, blocks, width, head, seed, size):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = ConvBlock(3, width)
        mods, c = [], width
        for k, (name, flag) in enumerate(blocks):
            if name == "conv":
                mods.append(ConvBlock(c, c + 1))
                c += 1
            elif name == "res":
                mods.append(ResBlock(c, flag))
            elif name == "cat":
                mods.append(CatBlock(c, 1 + k % 2, 2))
                c = 1 + k % 2 + 2
            elif name in ("maxpool", "avgpool"):
                if size < 4:
                    continue
                mods.append(PoolBlock(name, flag))
                size //= 2
            elif name == "se":
                mods.append(SEBlock(c))
        self.blocks = nn.Sequential(*mods)
        self.head_kind = head
        self.fc = nn.Linear(c if head == "gap" else c * size * size, 10, bias=False)
        _init(self, g)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        if self.head_kind == "gap":
            h = F.adaptive_avg_pool2d(h, 1)
        return self.fc(torch.flatten(h, 1))


BLOCKS = ("conv", "res", "cat", "maxpool", "avgpool", "se")


@st.composite
def random_nets(draw):
    blocks = draw(st.lists(st.tuples(st.sampled_from(BLOCKS), st.booleans()), min_size=1, max_size=4))
    width = draw(st.integers(2, 4))
    head = draw(st.sampled_from(["flatten", "gap"]))
    seed = draw(st.integers(0, 2**20))
    return RandomNet(blocks, width, head, seed, size=8).eval(), seed


PROPERTY = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class ShiftedConvBN(nn.Module):
    """conv (plain, depthwise or grouped) -> BatchNorm with trained-like statistics and shift -> ReLU."""

    def __init__(self, c, kind):
        super().__init__()
        groups = {"dw": c, "group": 2 if c % 2 == 0 else 1}.get(kind, 1)
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class FunctionalBlock(nn.Module):
    """F.conv2d with a standardised (computed) weight, a functional norm, a pad op before a conv."""

    def __init__(self, c, kind):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3))
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("mean", torch.rand(c) * 0.4 - 0.2)
        self.register_buffer("var", torch.rand(c) + 0.5)

    def forward(self, x):
        w = self.weight
        if self.kind == "fconv":
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
            h = F.conv2d(x, w, self.bias, padding=1)
            h = F.batch_norm(h, self.mean, self.var, None, self.bias, False, 0.0, 1e-5)
        elif self.kind == "pad":
            h = F.conv2d(F.pad(x, (1, 1, 1, 1)), w, self.bias)
        elif self.kind == "reflect":
            h = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, self.bias)
        else:  # "gn": a functional group norm after the conv
            h = F.group_norm(F.conv2d(x, w, self.bias, padding=1), 1)
        return F.relu(h)


class UpBlock(nn.Module):
    """Upsampling by 2 (nearest or bilinear), a conv, then a 2 x 2 average pool back to the size."""

    def __init__(self, c, mode):
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = F.interpolate(x, scale_factor=2, mode=self.mode)
        return F.avg_pool2d(F.relu(self.conv(h)), 2)


class ShiftNet(nn.Module):
    """Blocks with BN shifts, biases, depthwise and grouped convs, functional convs and norms, pads
    and upsampling; a global-pool head. What a trained timm network has, small."""

    def __init__(self, blocks, width, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        mods = []
        for name in blocks:
            if name in ("dw", "group", "plain"):
                mods.append(ShiftedConvBN(width, name))
            elif name in ("fconv", "pad", "reflect", "gn"):
                mods.append(FunctionalBlock(width, name))
            else:
                mods.append(UpBlock(width, name))
        self.blocks = nn.Sequential(*mods)
        self.fc = nn.Linear(width, 10)
        _init(self, g)
        trained_like_bn(self, seed)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


SHIFT_BLOCKS = ("dw", "group", "plain", "fconv", "pad", "reflect", "gn", "nearest", "bilinear")


@st.composite
def shift_nets(draw):
    blocks = draw(st.lists(st.sampled_from(SHIFT_BLOCKS), min_size=1, max_size=4))
    width = draw(st.sampled_from([2, 4]))
    seed = draw(st.integers(0, 2**20))
    return ShiftNet(blocks, width, seed).eval(), seed


@PROPERTY
@given(shift_nets())
def test_shifted_graphs_conserve_with_the_canonical_preset(net_seed):
    # every cut between the component layer and the input carries the summed components, to
    # 1e-4 of the summed |components|, although BN shifts and biases give outputs no input feeds
    net, seed = net_seed
    x = _images(seed).clamp(-2, 2)
    fg = FGCAM(net, rules="canonical", mean=(0.5,) * 3, std=(0.5,) * 3)
    cuts = ["input", "stem"] + [f"blocks.{k}" for k in range(len(net.blocks))]
    f = fg.explain(x, layer=cuts + [fg.component_layer])
    top = f.components[fg.component_layer].double()
    scale = top.abs().sum((1, 2, 3)) + 1e-12
    for k in cuts:
        lost = (f.components[k].double().sum((1, 2, 3)) - top.sum((1, 2, 3))) / scale
        assert float(lost.abs().max()) < 1e-4, (k, lost.tolist())


def _images(seed, n=3, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))


def _below(graph, top):
    """Tensor layers relevance from ``top`` flows down to (the input, and nodes that feed ``top``)."""
    return ["input"] + [graph.name(p) for p in range(len(graph.nodes))
                        if graph.nodes[p].data and graph.reaches(p, top) and p != top]


@PROPERTY
@given(random_nets())
def test_random_graphs_conserve(net_seed):
    net, seed = net_seed
    x = _images(seed)
    # LRP z+: the input relevance sums to the target logit (the top-1 logit; where it is > 0, z+ has a
    # positive contribution to put it on)
    e = LRP(net).explain(x, layer="input")
    yt = e.logits.gather(1, e.target[:, None]).squeeze(1)
    got = e.components["input"].sum((1, 2, 3))
    live = yt > 0
    assert torch.allclose(got[live], yt[live], rtol=1e-4, atol=1e-5 * float(yt.abs().max()) + 1e-12), (got, yt)
    # FG-CAM: the summed components at the component layer reach the input whole, and every cut of the
    # graph in between (the stem's and each block's output) carries the same total
    fg = FGCAM(net)
    cuts = ["input", "stem"] + [f"blocks.{k}" for k in range(len(net.blocks))]
    f = fg.explain(x, layer=cuts + [fg.component_layer])
    assert fg.graph.position(fg.component_layer) == fg.graph.position(cuts[-1])
    top = f.components[fg.component_layer].sum((1, 2, 3))
    scale = float(f.components[fg.component_layer].abs().sum((1, 2, 3)).max()) + 1e-12
    for k in cuts:
        assert torch.allclose(f.components[k].sum((1, 2, 3)), top, rtol=1e-4, atol=1e-5 * scale), k


@PROPERTY
@given(st.one_of(random_nets(), shift_nets()))
def test_random_graphs_batched_equals_one_by_one(net_seed):
    net, seed = net_seed
    x = _images(seed)
    target = [3, 0, 7]
    for ex in (FGCAM(net), LRP(net), FGCAM(net, rules="canonical"), LRP(net, rules="canonical")):
        layers = ["input", "stem"]
        batched = ex.explain(x, target=target, layer=layers)
        for i in range(len(x)):
            single = ex.explain(x[i : i + 1], target=target[i], layer=layers)
            for k in layers:
                b, s = batched.components[k][i], single.components[k][0]
                # z-beta's terms cancel at the input: round-off is relative to the terms, not the result
                scale = float(b.abs().max()) + 1e-12
                assert torch.allclose(b, s, rtol=1e-4, atol=1e-3 * scale), (type(ex).__name__, k, i)


@PROPERTY
@given(random_nets(), st.data())
def test_random_graphs_many_layers_equal_separate_calls(net_seed, data):
    net, seed = net_seed
    x = _images(seed, n=2)
    fg = FGCAM(net)
    names = _below(fg.graph, fg.component_position) + [fg.component_layer]
    pick = data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=5, unique=True))
    many = fg.explain(x, target=1, layer=pick)
    for k in pick:
        one = fg.explain(x, target=1, layer=k).components[k]
        assert torch.allclose(many.components[k], one, rtol=1e-5, atol=1e-6 * (float(one.abs().max()) + 1e-12)), k
    lrp = LRP(net)
    many = lrp.explain(x, target=2, layer=pick)
    for k in pick:
        one = lrp.explain(x, target=2, layer=k).components[k]
        assert torch.allclose(many.components[k], one, rtol=1e-5, atol=1e-6 * (float(one.abs().max()) + 1e-12)), k
    cams = [k for k in pick if k != "input" and _is_map(fg.graph, k, x)]
    if cams:
        got = GradCAM(net).explain(x, target=4, layer=cams)
        for k in cams:
            one = GradCAM(net).explain(x, target=4, layer=k).components[k]
            assert torch.allclose(got.components[k], one, rtol=1e-5, atol=1e-6 * (float(one.abs().max()) + 1e-12)), k


def _is_map(graph, name, x):
    p = graph.position(name)
    return len(forward(graph, x[:1], keep=[p]).shapes[p]) == 4


# ----------------------------------------------------------------------------------
# 4. Conservation on real architectures (random init, bias-free)
# ----------------------------------------------------------------------------------
def bias_free(model: nn.Module, seed: int = 0) -> nn.Module:
    """Zero every conv/linear/LayerNorm bias and BN mean and shift; random positive BN scales and variances."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.LayerNorm)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.zero_()
                m.bias.zero_()
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


CONSERVING = ["vgg11", "vgg13", "vgg16_bn", "vgg19_bn", "alexnet", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
              "densenet121", "convnext_tiny"]
#: with bias-free layers and zero BN shifts, the paper preset's z+ drops relevance only where a neuron
#: has no positive contribution, which signed activations feeding a conv (Hardswish, SiLU, a linear
#: bottleneck) make happen. Measured on ARCH_X, relevance lost / summed |components|, paper preset:
#: mobilenet_v2 3e-9, mobilenet_v3_small 8e-4, efficientnet_b0 5e-3. The canonical preset's flat
#: fallback closes it (round-off); so do ZPlus(conservative=True) and PoolZ(conservative=True).
LEAKING = ["mobilenet_v3_small", "efficientnet_b0"]
CONSERVATIVE = paper().with_rules(conv=ZPlus(conservative=True), linear=ZPlus(conservative=True),
                                  avgpool=PoolZ(conservative=True), maxpool=PoolZ(conservative=True))


def _arch(name, request):
    if name == "vgg16_bn":  # reuse the session's (its init is the slow part); never mutate it
        return bias_free(copy.deepcopy(request.getfixturevalue("vgg16_bn")))
    torch.manual_seed(0)
    return bias_free(getattr(torchvision.models, name)(num_classes=10))


ARCH_X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))


def _fgcam_leaks(model, presets=("paper", "canonical")):
    """Per preset: (input relevance sum - component sum) / summed |components|, per image."""
    out = {}
    for rules in presets:
        fg = FGCAM(model, rules=rules)
        e = fg.explain(ARCH_X, layer=["input", fg.component_layer])
        top = e.components[fg.component_layer].double()
        lost = e.components["input"].double().sum((1, 2, 3)) - top.sum((1, 2, 3))
        out[rules if isinstance(rules, str) else rules.name] = lost / top.abs().sum((1, 2, 3))
    return out, fg


@pytest.mark.parametrize("name", CONSERVING)
def test_bias_free_architecture_conserves(name, request):
    model = _arch(name, request)
    leaks, _ = _fgcam_leaks(model)
    for rules, r in leaks.items():
        assert float(r.abs().max()) < 1e-6, (name, rules, r.tolist())


@pytest.mark.parametrize("name", LEAKING)
def test_paper_preset_leaks_where_stated(name, request):
    model = _arch(name, request)
    leaks, fg = _fgcam_leaks(model)
    assert float(leaks["paper"].abs().max()) > 1e-6, leaks["paper"].tolist()  # a leak: round-off is ~1e-8
    assert float(leaks["canonical"].abs().max()) < 1e-6, leaks["canonical"].tolist()
    # where: an LRP walk with one sign of relevance throughout; below the component layer the only
    # nodes that lose relevance are z+ Conv2d/Linear nodes, and they lose (ratio < 1), never create
    worst = int(leaks["paper"].abs().argmax())
    table = coverage(model, "paper", x=ARCH_X[worst : worst + 1])
    graph = fg.graph
    below = [graph.reaches(p, fg.component_position) for p in range(len(graph.nodes))]
    table = table[below]
    bad = table[table.reached & ~table.conserved]
    assert len(bad) > 0
    assert set(bad.op) <= {"Conv2d", "Linear"}, bad[["op", "rule"]]
    assert all(r.startswith("ZPlus") for r in bad.rule)
    assert bool((bad.ratio < 1).all()), bad.ratio
    assert set(bad.rule_conserves) == {"where an input contributes positively"}
    # the conservative variants close the leak
    fixed, _ = _fgcam_leaks(model, [CONSERVATIVE])
    assert float(fixed[CONSERVATIVE.name].abs().max()) < 1e-6


# ----------------------------------------------------------------------------------
# 5. Flat chain vs fx graph (VGG16-BN)
# ----------------------------------------------------------------------------------
def test_chain_graph_matches_fx_graph(vgg16_bn):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    chain = chain_graph(vgg16_bn)
    assert chain.source == "chain" and graph_of(vgg16_bn).source == "fx"
    makers = {
        "fg_paper": (lambda m: FGCAM(m), ["input", 13, 23, 33, 43]),
        "fg_canonical": (lambda m: FGCAM(m, rules="canonical"), ["input", 6, 23, 43]),
        "lrp": (lambda m: LRP(m), ["input", 13, 33, "classifier.3"]),
        "grad_cam": (lambda m: GradCAM(m), [13, 23, 33, 43]),
    }
    for key, (make, layers) in makers.items():
        a, b = make(vgg16_bn), make(vgg16_bn)
        b.graph = chain
        if hasattr(b, "component_position"):  # the component layer is the same node in both graphs
            assert chain.position(b.component_layer) == b.component_position
        assert b.graph is chain and a.graph is graph_of(vgg16_bn)
        ea, eb = a.explain(x, layer=layers), b.explain(x, layer=layers)
        assert torch.equal(ea.target, eb.target)
        for k in layers:
            ca, cb = ea.components[k], eb.components[k]
            assert ca.shape == cb.shape
            assert float((ca - cb).abs().max()) <= 1e-6 * float(ca.abs().max()), (key, k)


# ----------------------------------------------------------------------------------
# 6. Model state
# ----------------------------------------------------------------------------------
def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "ptrs": [(n, p.data_ptr()) for n, p in model.named_parameters()],
        "types": [(n, type(m)) for n, m in model.named_modules()],
    }


def _hooks(model):
    per_module = sum(len(getattr(m, attr)) for m in model.modules() for attr in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
    from torch.nn.modules import module as mod

    return per_module + len(mod._global_forward_hooks) + len(mod._global_forward_pre_hooks) + len(
        mod._global_backward_hooks)


def _assert_unchanged(model, snap):
    now = _snapshot(model)
    assert now["training"] == snap["training"]
    assert now["requires_grad"] == snap["requires_grad"]
    assert now["ptrs"] == snap["ptrs"] and now["types"] == snap["types"]
    assert now["state"].keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), k
    assert _hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


class Boom(Rule):
    """Fails inside the walk."""

    def __call__(self, module, x, R):
        raise RuntimeError("boom in the walk")


def _state_model(name):
    torch.manual_seed(0)
    from conftest import randomize_bn

    return randomize_bn(getattr(torchvision.models, name)(num_classes=10))


STATE_X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("name, inner, conv", [
    ("resnet18", "layer2.0", "layer2.0.conv1"),
    ("densenet121", "features.denseblock2", "features.denseblock2.denselayer1.conv1"),
])
def test_state_unchanged_after_calls_and_errors(name, inner, conv):
    model = _state_model(name).train()
    list(model.children())[1].eval()  # mixed flags: each module's own flag comes back
    first_param = next(model.parameters())
    first_param.requires_grad_(False)  # a frozen layer stays frozen, the others trainable
    snap = _snapshot(model)
    assert {flag for _, flag in snap["training"]} == {True, False}
    x = STATE_X.clone()
    FGCAM(model)(x, layer=["input", inner])
    LRP(model)(x, layer=inner)
    GradCAM(model)(x, layer=inner)
    _assert_unchanged(model, snap)
    assert torch.equal(x, STATE_X)  # in-place ReLUs never touch the caller's tensor
    with pytest.raises(ValueError, match="out of range"):
        FGCAM(model)(x, target=10)  # raised after the forward
    with pytest.raises(RuntimeError, match="boom in the walk"):
        FGCAM(model, rules={conv: Boom()})(x, layer="input")  # raised in the middle of the walk
    with pytest.raises(ValueError, match="unknown layer"):
        GradCAM(model)(x, layer="nope")
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("name, inner", [("resnet18", "layer3"), ("densenet121", "features.transition2")])
def test_grad_modes_train_mode_and_independence(name, inner):
    model = _state_model(name).eval()
    x = STATE_X
    makers = [lambda m: FGCAM(m), lambda m: FGCAM(m, rules="canonical"), lambda m: LRP(m),
              lambda m: GradCAM(m), lambda m: LayerCAM(m)]
    layer_of = lambda ex: inner if isinstance(ex, (GradCAM, LayerCAM)) else ["input", inner]  # noqa: E731
    ref = [make(model)(x, layer=layer_of(make(model))) for make in makers]

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.allclose(a, b, rtol=1e-5, atol=1e-7 * (float(a.abs().max()) + 1e-12))

    for make, r in zip(makers, ref):
        ex = make(model)
        with torch.no_grad():
            assert same(ex(x, layer=layer_of(ex)), r)
        with torch.inference_mode():
            xi = x.clone()  # an inference tensor
            assert same(ex(xi, layer=layer_of(ex)), r)
    # two explainers on one model, calls interleaved
    fg, cam = makers[0](model), makers[3](model)
    a1, b1, a2, b2 = fg(x, layer=layer_of(fg)), cam(x, layer=inner), fg(x, layer=layer_of(fg)), cam(x, layer=inner)
    assert same(a1, ref[0]) and same(a2, ref[0]) and same(b1, ref[3]) and same(b2, ref[3])
    # train mode: the maps are the eval-mode maps (running statistics, no dropout); the mode is kept
    model.train()
    snap = _snapshot(model)
    for make, r in zip(makers, ref):
        ex = make(model)
        assert same(ex(x, layer=layer_of(ex)), r)
    assert model.training and all(m.training for m in model.modules())
    _assert_unchanged(model, snap)


# ----------------------------------------------------------------------------------
# 7. Names and errors
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    from conftest import randomize_bn

    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


def _value_at(graph, name, x):
    p = graph.position(name)
    return forward(graph, x, keep=[p]).acts[p]


def test_resnet_names_resolve_to_the_right_values(resnet18):
    m = resnet18
    fg = FGCAM(m)
    assert fg.component_layer == "layer4"
    g = fg.graph
    assert g.position("input") == INPUT == -1
    assert g.nodes[g.position("layer4.1.conv2")].module is m.layer4[1].conv2
    assert g.nodes[g.position("layer1.0.add")].kind == "add"
    for name in ("layer4.1.conv2", "layer1.0.add", "layer3", "input", "layer4"):
        assert name in fg.layers and g.name(g.position(name)) == name
    x = STATE_X[:1]
    with torch.no_grad():
        stem = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        blk = m.layer1[0]
        want_add = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(stem))))) + stem  # before the block's last ReLU
        want_l3 = m.layer3(m.layer2(m.layer1(stem)))
        assert torch.allclose(_value_at(g, "layer1.0.add", x), want_add, atol=1e-5)
        assert torch.allclose(_value_at(g, "layer3", x), want_l3, atol=1e-5)  # a container names its output
        # FG-CAM and Grad-CAM resolve the same names
        assert FGCAM(m)(x, layer="layer3").shape == want_l3.shape[:1] + want_l3.shape[2:]
        assert GradCAM(m)(x, layer="layer4.1.conv2").shape == (1, 1, 1)


def test_densenet_block_name_resolves():
    torch.manual_seed(0)
    m = torchvision.models.densenet121(num_classes=10).eval()
    fg = FGCAM(m)
    assert fg.component_layer == "relu"
    g = fg.graph
    x = STATE_X[:1]
    with torch.no_grad():
        h = x
        for child_name, child in m.features.named_children():
            h = child(h)
            if child_name == "denseblock3":
                break
        assert torch.allclose(_value_at(g, "features.denseblock3", x), h, atol=1e-5)
    assert fg(x, layer="features.denseblock3").shape == (1,) + h.shape[2:]


def test_unknown_name_lists_close_matches(resnet18):
    with pytest.raises(ValueError, match="unknown layer 'layer5'.*closest: .*layer4"):
        FGCAM(resnet18)(STATE_X[:1], layer="layer5")
    with pytest.raises(ValueError, match="layer4.1.conv2"):
        GradCAM(resnet18)(STATE_X[:1], layer="layer4.1.conv3")


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if h.sum() > 0:  # Python control flow on a value fx does not know
            h = h * 2
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_untraceable_model_raises_one_line_type_error():
    for make in (FGCAM, GradCAM, LRP):
        with pytest.raises(TypeError, match=r"DataDependent cannot be traced by torch.fx \(TraceError: .*control flow")\
                as err:
            make(DataDependent())
        assert "\n" not in str(err.value)


class SortNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.sort(F.relu(self.conv(x)), dim=-1)[0]
        h = F.relu(self.conv2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_op_without_rule_raises_where_relevance_reaches_it():
    torch.manual_seed(0)
    soft = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Softmax2d(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    x = torch.randn(1, 3, 4, 4)
    cases = [(soft, "2", "Softmax2d", "3"), (SortNet(), "sort", "sort", "conv2")]
    for net, node, what, above in cases:
        for make in (FGCAM, LRP):
            assert make(net)(x, layer=above).shape[-2:] == (x.shape[-2],) * 2
            with pytest.raises(TypeError, match=f"no rule for layer '{node}' \\({what}\\)"):
                make(net)(x, layer="input")
        assert GradCAM(net)(x, layer=above).dim() == 3  # CAMs need no rules
        table = coverage(net, x=x)
        assert "no rule" in table.loc[node, "rule"] and table.loc[node, "kind"] == "unknown"
        assert f"'{node}'" in table.attrs["error"]
        assert not table.drop(index=node).rule.str.contains("no rule").any()


class UserNet(nn.Module):
    """A user's model: a residual block with `+=`, a two-branch `torch.cat`, a global mean head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.body = nn.ModuleDict({
            "res": nn.Conv2d(6, 6, 3, padding=1, bias=False),
            "left": nn.Conv2d(6, 4, 1, bias=False),
            "right": nn.Conv2d(6, 4, 3, padding=1, bias=False),
        })
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        h = F.relu(self.stem(x))
        r = F.relu(self.body["res"](h))
        r += h
        h = self.pool(r)
        h = torch.cat([F.relu(self.body["left"](h)), F.relu(self.body["right"](h))], 1)
        return self.fc(h.mean((2, 3)))


def test_user_module_with_add_and_cat(images):
    torch.manual_seed(3)
    net = UserNet().eval()
    fg = FGCAM(net)
    assert fg.component_layer == "cat"
    g = fg.graph
    assert {"add", "cat", "maxpool", "avgpool"} <= {n.kind for n in g.nodes}
    e = fg.explain(images, layer=["input", "pool", "add", "cat"])
    top = e.components["cat"].sum((1, 2, 3))
    for k in ("input", "pool", "add"):
        assert torch.allclose(e.components[k].sum((1, 2, 3)), top, rtol=1e-4, atol=1e-6), k
    l = LRP(net).explain(images, layer=["input", "add"])
    yt = l.logits.gather(1, l.target[:, None]).squeeze(1)
    assert torch.allclose(l.components["input"].sum((1, 2, 3)), yt, rtol=1e-4, atol=1e-6)
    assert GradCAM(net)(images, layer="add").shape == (3, 64, 64)
    assert GradCAM(net)(images).shape == (3, 32, 32)  # default layer: the component layer
    assert torch.allclose(fg(images, layer="cat"), GradCAM(net)(images, layer="cat"), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------
# 8. The coverage table
# ----------------------------------------------------------------------------------
def test_coverage_resnet18(resnet18):
    table = coverage(resnet18, x=STATE_X[:1])
    assert {"layer", "op", "kind", "rule", "rule_conserves", "reached", "ratio", "conserved"} <= set(table.columns)
    assert len(table) == len(graph_of(resnet18).nodes)
    reached = table[table.reached]
    assert len(reached) > 0.9 * len(table)
    assert bool(reached.conserved.all()), reached[~reached.conserved]
    assert bool(((reached.ratio - 1).abs() <= 1e-4).all())
    adds = table[table.kind == "add"]
    blocks = sum(isinstance(m, torchvision.models.resnet.BasicBlock) for m in resnet18.modules())
    assert len(adds) == blocks == 8
    assert all(r.startswith("Sum(") for r in adds.rule) and bool(adds.reached.all())


def test_coverage_mobilenet_v3_gates():
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    table = coverage(m, x=ARCH_X[:1])
    assert table.attrs["error"] == ""
    muls = table[table.kind == "mul"]
    se = [n for n, mod in m.named_modules() if type(mod).__name__ == "SqueezeExcitation"]
    assert len(muls) == len(se) > 0
    assert all(r.startswith("Gate(") for r in muls.rule)
    assert bool(muls.reached.all()) and bool(muls.conserved.all())
    # the gate branch (its pooling, 1x1 convs and hardsigmoid) gets no relevance
    in_se = table.index.map(lambda i: any(i.startswith(s + ".") for s in se)).to_numpy(bool)
    gate_branch = table[in_se & (table.kind != "mul").to_numpy()]
    assert len(gate_branch) > 0 and not gate_branch.reached.any()


# ----------------------------------------------------------------------------------
# Gates on 1 x 1 maps and constants expanded to the batch
# ----------------------------------------------------------------------------------
class TinySE(nn.Module):
    """A squeeze-excitation gate on a 1 x 1 feature map (MobileNetV3 / EfficientNet on 32 x 32 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        g = torch.sigmoid(self.fc(h.mean((2, 3))))
        return self.head(torch.flatten(h * g[:, :, None, None], 1))


def test_gate_on_a_one_by_one_map():
    """Gate and signal have one size here: the gate is found as the operand computed from the other."""
    torch.manual_seed(0)
    net = TinySE().eval()
    x = torch.randn(2, 3, 3, 3)
    fg = FGCAM(net)
    e = fg.explain(x, layer=["input", fg.component_layer])
    top = e.components[fg.component_layer].sum((1, 2, 3))
    assert torch.allclose(e.components["input"].sum((1, 2, 3)), top, rtol=1e-4, atol=1e-7)


class ClassToken(nn.Module):
    """A learned constant expanded to the batch and concatenated (ViT's class token pattern)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.token = nn.Parameter(torch.ones(1, 1, 4, 4))
        self.head = nn.Linear(3 * 16, 2, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        t = self.token.expand(x.shape[0], -1, -1, -1)
        return self.head(torch.cat([h, t], 1).flatten(1))


def test_constant_expanded_to_the_batch_is_a_constant():
    """Reading x.shape does not make a node depend on the image: the token stays a constant."""
    torch.manual_seed(0)
    net = ClassToken().eval()
    x = torch.randn(2, 3, 4, 4)
    e = LRP(net).explain(x, layer=["input", "cat"])
    # the image's relevance is what the cat routes to the conv branch; the token's slice is the constant's
    assert torch.allclose(e.components["input"].sum((1, 2, 3)), e.components["cat"][:, :2].sum((1, 2, 3)),
                          rtol=1e-4, atol=1e-7)


class FixedPoolHead(nn.Module):
    """pretrainedmodels' head layout: a pool the size of the last map (1 x 1 out at 224 px), a
    dropout, ``x.view(x.size(0), -1)``, a linear layer."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*[m for c in (3, 4, 4, 4, 4) for m in (nn.Conv2d(c, 4, 3, 2, 1), nn.ReLU())])
        self.avg_pool = nn.AvgPool2d(7)
        self.dropout = nn.Dropout(0.2)
        self.last_linear = nn.Linear(4, 10)

    def forward(self, x):
        x = self.dropout(self.avg_pool(self.features(x)))
        return self.last_linear(x.view(x.size(0), -1))


def test_component_layer_is_the_last_map_with_spatial_extent():
    net = FixedPoolHead().eval()
    fg = FGCAM(net)
    assert fg.component_layer == "features"
    assert fg(torch.randn(1, 3, 224, 224), layer=fg.component_layer).shape == (1, 7, 7)


class Branchy(nn.Module):
    """Control flow on the data: fx cannot trace through it."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class NetWithBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.branchy = Branchy()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.branchy(F.relu(self.conv(x))), 1).flatten(1))


def test_untraceable_module_is_named_and_can_be_marked_a_leaf(monkeypatch):
    from fgcam_lib.engine import Pass
    from fgcam_lib.engine.graph import LEAVES, register_leaf

    with pytest.raises(TypeError, match=r"in module 'branchy' \(Branchy\): trace it as one node with "
                                        r"fgcam_lib.engine.register_leaf"):
        FGCAM(NetWithBranchy())
    monkeypatch.setattr("fgcam_lib.engine.tracing.LEAVES", dict(LEAVES))
    register_leaf(Branchy)
    net = NetWithBranchy().eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"no rule for layer 'branchy' \(Branchy\)"):
        FGCAM(net)(x, layer="input")
    maps = FGCAM(net, rules={"branchy": Pass()})(x, layer="input")
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())
    register_leaf(Branchy, kind="act")  # or by kind: the preset's rule for activations
    assert torch.equal(FGCAM(copy.deepcopy(net))(x, layer="input", target=[0, 1]),  # a new model: traced anew
                       FGCAM(net, rules={"branchy": Pass()})(x, layer="input", target=[0, 1]))
