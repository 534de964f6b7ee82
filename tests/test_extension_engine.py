"""The engine's extension surface: a user's rule (either call shape) in a preset, named
presets from one table, and a new op kind added in one place."""
from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch
from torch import nn

from fgcam_lib import FGCAM
from fgcam_lib.engine import graph_of
from fgcam_lib.engine.kinds import KINDS, OpKind
from fgcam_lib.engine.presets import PRESETS, Preset, canonical, get_preset, paper
from fgcam_lib.engine.rules import Gate, HeldMatmul, InputRelevance, MultiRule, Pass, Route, Rule, Sum, ZPlus

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class Scale(Rule):
    """``R_in = factor * R``: a pass-through that keeps a share of the relevance."""

    reads_input = False

    def __init__(self, factor: float):
        self.factor = factor

    @property
    def guarantee(self) -> str:
        return "always" if self.factor == 1 else "no"

    def __call__(self, module: Any, x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return self.factor * R.reshape(x.shape)


class EvenSplit(MultiRule):
    """``R_k = R / n`` for each of the ``n`` operands that depend on the image."""

    reads_input = False

    def __call__(self, op: Any, xs: Sequence[Any], R: torch.Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        live = [k for k in range(len(xs)) if data is None or data[k]]
        return [(R / len(live)).sum_to_size(x.shape) if k in live else None for k, x in enumerate(xs)]


class TinyResidual(nn.Module):
    """stem conv -> ReLU -> (h + conv(h)) -> ReLU -> global pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.stem(x))
        h = self.relu(h + self.body(h))
        return self.fc(self.pool(h).flatten(1))


def images() -> torch.Tensor:
    """Two normalised images whose pixels lie strictly inside [0, 1]."""
    pixels = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_built_in_rules_declare_their_call_shape():
    assert all(isinstance(r, MultiRule) for r in (Sum(), Gate(), Route(), HeldMatmul()))
    assert not any(isinstance(r, MultiRule) for r in (Pass(), ZPlus()))


def test_a_user_rule_mapped_to_one_kind_gives_the_known_answer():
    net = TinyResidual().eval()
    x = images()
    # both ReLUs lie on every path from the component layer down to the input, and rules are
    # linear in R: halving at each ReLU gives a quarter of the paper preset's relevance
    mine = paper().with_rules(relu=Scale(0.5))
    got = FGCAM(net, rules=mine).explain(x, layer="input", target=[0, 2]).components["input"]
    ref = FGCAM(net, rules="paper").explain(x, layer="input", target=[0, 2]).components["input"]
    assert float(ref.abs().sum()) > 0
    torch.testing.assert_close(got, 0.25 * ref)
    # a plain dict is laid over the paper preset
    got_dict = FGCAM(net, rules={"relu": Scale(0.5)}).explain(x, layer="input", target=[0, 2]).components["input"]
    torch.testing.assert_close(got_dict, got)


def test_a_user_multi_rule_conserves_relevance_end_to_end():
    net = TinyResidual().eval()
    x = images()
    preset = canonical(MEAN, STD).with_rules(add=EvenSplit())
    fg = FGCAM(net, rules=preset)
    top = fg.component_layer
    expl = fg.explain(x, layer=["input", top])
    # every rule on the way conserves (the add's splits evenly), so what the components hold
    # at the top arrives at the pixels, image by image
    torch.testing.assert_close(expl.components["input"].sum((1, 2, 3)), expl.components[top].sum((1, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    # the add's rule took part: with the default Sum the pixels get a different map
    default = FGCAM(net, rules=canonical(MEAN, STD)).explain(x, layer="input").components["input"]
    assert not torch.allclose(default, expl.components["input"])


def test_get_preset_takes_its_names_from_presets(monkeypatch):
    assert isinstance(get_preset("paper"), Preset) and get_preset("paper").name == "paper"
    assert get_preset("canonical", MEAN, STD).merge_bn

    def halved(mean: Sequence[float], std: Sequence[float]) -> Preset:
        return Preset("halved", {**canonical(mean, std).rules, "relu": Scale(0.5)}, merge_bn=True)

    monkeypatch.setitem(PRESETS, "halved", halved)
    assert get_preset("halved").name == "halved"
    net = TinyResidual().eval()
    maps = FGCAM(net, rules="halved", mean=MEAN, std=STD)(images(), layer="input")
    assert maps.shape == (2, 6, 6)
    names = r"\['attn_lrp', 'canonical', 'cp_lrp', 'halved', 'paper'\]"
    with pytest.raises(ValueError, match=rf"^unknown rules 'nope'; use one of {names}") as err:
        get_preset("nope")
    assert "\n" not in str(err.value)
    monkeypatch.delitem(PRESETS, "paper")  # the table is all get_preset knows
    with pytest.raises(ValueError, match="unknown rules 'paper'"):
        get_preset("paper")


class Erf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.erf(torch.relu(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def test_a_new_op_kind_is_one_entry_in_kinds(monkeypatch):
    assert graph_of(Erf()).nodes[2].kind is None  # torch.erf: no kind covers it
    assert "no rule for layer 'erf'" in get_preset("paper").rule_for(graph_of(Erf()), 2).reason
    monkeypatch.setitem(KINDS, "erf", OpKind("torch.erf", Pass, functions=(torch.erf,)))
    net = Erf().eval()  # a new model: traced anew
    graph = graph_of(net)
    assert graph.nodes[2].kind == "erf"
    assert isinstance(paper().rule_for(graph, 2), Pass)  # its default rule, in every preset
    assert isinstance(canonical().rule_for(graph, 2), Pass)
    maps = FGCAM(net, component_layer="erf")(images(), layer="input")
    assert maps.shape == (2, 6, 6) and bool(torch.isfinite(maps).all())
