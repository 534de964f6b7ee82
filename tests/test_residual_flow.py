"""residual_flow and residual_roles: which operand of a residual add is the skip, and the share of
relevance each side gets (known answers on hand-built blocks, conservation on a torchvision ResNet)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgcam_lib import FGCAM
from fgcam_lib.engine import INPUT, Sum, graph_of, residual_flow, residual_roles
from fgcam_lib.engine.report import ResidualRoles
from fgcam_lib.methods.fgcam import LRP
from test_graph import HandResidual  # the hand-built identity block, shared with the graph tests

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    yield


def _set(module: nn.Module, weight) -> nn.Module:
    module.weight.data = torch.tensor(weight, dtype=torch.float32).reshape(module.weight.shape)
    return module


# s = relu(stem(x)) (1x1, w=1); y = relu(conv(s)) + s (1x3, w=[1,-1,2], pad 1); logits = W flatten(y)
IdentityBlock = HandResidual


class ProjectionBlock(nn.Module):
    """As IdentityBlock, but the skip is a 1x1 conv with weight -0.5 and the block comes second."""

    def __init__(self):
        super().__init__()
        self.stem = _set(nn.Conv2d(1, 1, 1, bias=False), [1.0])
        self.conv = _set(nn.Conv2d(1, 1, (1, 3), padding=(0, 1), bias=False), [1.0, -1.0, 2.0])
        self.proj = _set(nn.Conv2d(1, 1, 1, bias=False), [-0.5])
        self.head = _set(nn.Linear(3, 1, bias=False), [[1.0, 1.0, 1.0]])

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = self.proj(s) + F.relu(self.conv(s))
        return self.head(torch.flatten(y, 1))


def test_identity_skip_known_answer():
    # s = [2, 0, 1]; conv(s) = [-2, 4, -1] -> h = [0, 4, 0]; y = h + s = [2, 4, 1]; logit 0 = 6.
    # The head's z+ gives R_y = [2, 4, 0]. Sum (sign): pixel 0 (h = 0, s = 2) all to the skip,
    # pixel 1 (h = 4, s = 0) all to the block: skip 2/6, block 4/6.
    x = torch.tensor([[[[2.0, -1.0, 1.0]]]])
    flow = residual_flow(IdentityBlock(), x, target=0)
    assert len(flow) == 1
    row = flow.iloc[0]
    assert row["node"] == "add" and row["skip"] == "identity" and row["skip_via"] == "relu"
    assert row["relevance"] == pytest.approx(6.0)
    assert row["skip_share"] == pytest.approx(1 / 3) and row["block_share"] == pytest.approx(2 / 3)


def test_projection_skip_known_answer_sign_and_proportional():
    # s = [2, 1, 1]; conv(s) = [0, 3, 0] = h; proj(s) = [-1, -0.5, -0.5]; y = [-1, 2.5, -0.5]; logit = 1.
    # The head's z+ counts pixel 1 alone (the others are negative): R_y = [0, 1, 0].
    # sign: at pixel 1 the sum is positive and only h is: block 1, skip 0.
    # proportional: R_h = 3 / 2.5 = 1.2, R_proj = -0.5 / 2.5 = -0.2 (signed shares, still summing to 1).
    net = ProjectionBlock()
    x = torch.tensor([[[[2.0, 1.0, 1.0]]]])
    (role,) = residual_roles(graph_of(net))
    assert isinstance(role, ResidualRoles) and role.skip_kind == "projection" and not role.ambiguous
    assert (role.skip, role.block) == (0, 1)  # proj is the first operand here
    sign = residual_flow(net, x).iloc[0]
    assert sign["skip"] == "projection" and sign["skip_via"] == "proj"
    assert sign["relevance"] == pytest.approx(1.0)
    assert sign["skip_share"] == pytest.approx(0.0) and sign["block_share"] == pytest.approx(1.0)
    prop = residual_flow(net, x, rules={"add": Sum("proportional")}).iloc[0]
    assert prop["skip_share"] == pytest.approx(-0.2) and prop["block_share"] == pytest.approx(1.2)


def test_shares_are_what_the_sum_rule_gives(resnet18):
    # Independent of the walk's bookkeeping: take the relevance at each add's output from LRP and
    # the operands from a plain forward, apply the Sum rule by hand.
    graph = graph_of(resnet18)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    flow = residual_flow(resnet18, x, by_image=True)
    adds = [graph.nodes[r.node].name for r in residual_roles(graph)]
    e = LRP(resnet18).explain(x, layer=adds)
    acts: dict[int, torch.Tensor] = {INPUT: x}
    with torch.no_grad():
        for i, n in enumerate(graph.nodes):
            acts[i] = n.op(*(acts[j] for j in n.inputs))
    for role in residual_roles(graph):
        name = graph.nodes[role.node].name
        R = e.components[name]
        operands = [acts[j] for j in graph.nodes[role.node].inputs]
        rins = Sum()(None, operands, R)
        for b in range(2):
            row = flow[(flow.node == name) & (flow.image == b)].iloc[0]
            total = float(R[b].sum())
            assert row["relevance"] == pytest.approx(total, rel=1e-5)
            assert row["skip_share"] == pytest.approx(float(rins[role.skip][b].sum()) / total, rel=1e-4, abs=1e-6)
            assert row["block_share"] == pytest.approx(float(rins[role.block][b].sum()) / total, rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def resnet18():
    from conftest import randomize_bn

    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


def test_resnet18_roles_and_conservation(resnet18):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    flow = residual_flow(resnet18, x, by_image=True)
    assert len(flow) == 8 * 3  # eight BasicBlocks, three images
    per_node = flow.drop_duplicates("node").set_index("node")
    # identity skips everywhere except the first block of layer2..layer4 (downsample)
    projection = {"layer2.0.add", "layer3.0.add", "layer4.0.add"}
    assert set(per_node.index[per_node.skip == "projection"]) == projection
    assert set(per_node.skip_via[list(projection)]) == {"layer2.0.downsample", "layer3.0.downsample",
                                                        "layer4.0.downsample"}
    assert per_node.skip_via["layer1.0.add"] == "maxpool" and per_node.skip_via["layer3.1.add"] == "layer3.0"
    assert list(per_node.stage) == ["layer1"] * 2 + ["layer2"] * 2 + ["layer3"] * 2 + ["layer4"] * 2
    # sign mode: shares in [0, 1], summing to 1 at every add for every image
    assert ((flow.skip_share >= -1e-6) & (flow.skip_share <= 1 + 1e-6)).all()
    assert ((flow.skip_share + flow.block_share - 1).abs() < 1e-5).all()
    mean = residual_flow(resnet18, x)
    assert len(mean) == 8 and (mean.n_images == 3).all()
    want = flow.groupby("node", sort=False).skip_share.mean()
    assert torch.allclose(torch.tensor(mean.set_index("node").skip_share[want.index].to_numpy()),
                          torch.tensor(want.to_numpy()), atol=1e-12)


def test_proportional_mode_conserves_up_to_its_stabiliser(resnet18):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    flow = residual_flow(resnet18, x, rules={"add": Sum("proportional")}, by_image=True)
    assert ((flow.skip_share + flow.block_share - 1).abs() < 1e-4).all()


def test_from_fgcam_components_walks_only_below_start(resnet18):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fg = FGCAM(resnet18)
    step = fg.components_at_top(x)
    flow = residual_flow(resnet18, x, relevance=step.components, start=fg.component_layer, by_image=True)
    assert len(flow) == 16 and ((flow.skip_share + flow.block_share - 1).abs() < 1e-5).all()
    # the top add receives FG-CAM's components: its relevance is their sum (the final ReLU passes)
    top = flow[flow.node == "layer4.1.add"].sort_values("image")
    assert torch.allclose(torch.tensor(top.relevance.to_numpy()), step.components.flatten(1).sum(1).double(),
                          rtol=1e-5)
    # starting at layer3: the adds of layer4 are above it and get no rows
    R3 = LRP(resnet18).explain(x, layer="layer3").components["layer3"]
    low = residual_flow(resnet18, x, relevance=R3, start="layer3")
    assert set(low.stage) == {"layer1", "layer2", "layer3"} and len(low) == 6


def test_model_untouched_and_errors(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    resnet18.train()
    residual_flow(resnet18, x)
    assert resnet18.training  # eval mode only inside the call
    resnet18.eval()
    assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet18.modules())
    with pytest.raises(ValueError, match="together"):
        residual_flow(resnet18, x, relevance=torch.ones(1, 512, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        residual_flow(resnet18, x, relevance=torch.ones(1, 3, 2, 2), start="layer4")
    with pytest.raises(ValueError, match="target"):
        residual_flow(resnet18, x, target=[10])


class TwoBranches(nn.Module):
    """Two symmetric conv branches added (no skip), and a learned constant added: no residual rows."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = F.relu(self.a(x) + self.b(x))
        y = y + self.offset
        return self.head(y.mean((2, 3)))


def test_symmetric_branches_are_ambiguous_and_constants_left_out():
    torch.manual_seed(0)
    net = TwoBranches().eval()
    roles = residual_roles(graph_of(net))
    assert len(roles) == 1 and roles[0].ambiguous  # the constant add has one signal operand
    flow = residual_flow(net, torch.randn(2, 3, 8, 8))
    assert len(flow) == 0 and "skip_share" in flow.columns
