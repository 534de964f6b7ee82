"""Presets: which rule each op gets, as a map from op kinds or layer names to rules.

Keys are op kinds (see :data:`KINDS`), ``"input"`` for the weighted layers that read the
image, or layer names (``"features.3"``, ``"layer1.0.add"``) for single nodes. Lookup
order: node name, then ``"input"``, then the kind.

    >>> preset = paper()                                   # the authors' code
    >>> mixed = paper().with_rules(conv=Epsilon(0.25))     # an ablation's mix
    >>> canon = canonical(mean=(0.5,) * 3, std=(0.5,) * 3) # BN folded, box bounds
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .graph import INPUT, Graph
from .rules import Folded, Gate, Missing, Pass, PoolZ, Route, Rule, Split, Sum, ZBeta, ZPlus, channel_bounds, image_bounds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: op kind -> what it covers
KINDS: dict[str, str] = {
    "conv": "Conv2d (grouped and depthwise too)",
    "linear": "Linear",
    "maxpool": "max pools, module or functional",
    "avgpool": "average pools (adaptive too), x.mean over space",
    "bn": "BatchNorm2d",
    "relu": "ReLU, F.relu",
    "act": "ReLU6, Hardswish, SiLU, GELU, LeakyReLU, ELU, sigmoids",
    "norm": "LayerNorm (LayerNorm2d), GroupNorm",
    "add": "a + b (residual connections)",
    "mul": "x * s: squeeze-excitation gates, layer scale, constant factors",
    "cat": "torch.cat",
    "split": "chunk, split, unbind",
    "reshape": "flatten, view, reshape, permute, transpose, getitem",
    "other": "Dropout, Identity, StochasticDepth (identity in eval)",
}


@dataclass(frozen=True)
class Preset:
    """A named map from layer kinds/names to rules; ``merge_bn`` folds BN into its conv."""

    name: str
    rules: Mapping[str, Rule]
    merge_bn: bool = False
    keep_bias: bool = False
    notes: str = field(default="", compare=False)

    def with_rules(self, rules: Mapping[str, Rule] | None = None, **kw: Rule) -> "Preset":
        merged = {**self.rules, **(rules or {}), **kw}
        return replace(self, name=f"{self.name}+custom", rules=merged)

    def rule_for(self, graph: Graph, position: int, first: frozenset[int] = frozenset()) -> Rule:
        """The rule of node ``position``: by its name, ``"input"`` for a first weighted layer, its kind."""
        node = graph.nodes[position]
        for key in (node.name, graph.name(position)):
            if key in self.rules:
                return self.rules[key]
        if position in first and "input" in self.rules:
            return self.rules["input"]
        if node.kind in self.rules:
            return self.rules[node.kind]
        what = type(node.module).__name__ if node.module is not None else node.target
        if node.kind is None:
            return Missing(f"no rule for layer {node.name!r} ({what}): the engine does not know this op; "
                           f"give one by name with rules={{{node.name!r}: ...}}")
        return Missing(f"preset {self.name!r} has no rule for layer {node.name!r} ({what}); "
                       f"give one with .with_rules({node.kind}=...)")

    def check_keys(self, graph: Graph) -> None:
        """Raise on keys that are neither kinds, ``"input"`` nor layer names; and on values that are not rules."""
        known = set(KINDS) | {"input"}
        unknown = [k for k in self.rules if k not in known and not _is_name(graph, k)]
        if unknown:
            raise ValueError(f"unknown rule keys {unknown}; use kinds {sorted(KINDS) + ['input']} or layer names")
        for k, v in self.rules.items():
            if not isinstance(v, Rule):
                raise TypeError(f"rules[{k!r}] must be a Rule such as ZPlus(), not {v!r}{_rule_hint(v)}")


def _rule_hint(value: Any) -> str:
    """How to turn a rule given as a class or a name into a rule: ``" (use ZPlus())"``."""
    if isinstance(value, type):
        return f" (instantiate it: {value.__name__}())"
    if isinstance(value, str):
        from . import rules as _rules

        key = value.replace("_", "").replace("-", "").replace("+", "plus").lower()
        for name in dir(_rules):
            obj = getattr(_rules, name)
            if isinstance(obj, type) and issubclass(obj, Rule) and name.lower() == key:
                return f" (rules are objects, not names: use {name}() from fgcam_lib)"
        return " (rules are objects, not names: e.g. ZPlus(), Epsilon(0.25), ZBeta(); see fgcam_lib.engine.rules)"
    return ""


def _is_name(graph: Graph, key: str) -> bool:
    try:
        graph.position(key)
        return True
    except (ValueError, TypeError):
        return False


#: rules both presets share: activations, norms and dropout pass; the structural ops conserve
_SHARED: dict[str, Rule] = {
    "bn": Pass(), "relu": Pass(), "act": Pass(), "norm": Pass(), "other": Pass(),
    "add": Sum(), "mul": Gate(), "cat": Route(), "split": Split(), "reshape": Route(),
}


def paper() -> Preset:
    """The authors' public code: z+ (no bias) in hidden layers, z-beta with each image's
    min/max as bounds at the input, BN and ReLU pass relevance through unchanged. Beyond
    VGG: other activations, LayerNorm and dropout pass, residual adds split by each
    operand's share (:class:`~fgcam_lib.engine.rules.Sum`), gates are held constant."""
    return Preset(
        "paper",
        {
            "input": ZBeta(image_bounds),
            "conv": ZPlus(),
            "linear": ZPlus(),
            "maxpool": PoolZ(),
            "avgpool": PoolZ(),
            **_SHARED,
        },
    )


def canonical(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, keep_bias: bool = False
) -> Preset:
    """BN folded into the conv that feeds it (found by dataflow; a BN without one, as in
    DenseNet's BN -> ReLU -> conv, passes), z+ in hidden layers, z-beta with the per-channel
    bounds of pixels in [0, 1] after normalisation. ``keep_bias=True`` keeps the (merged)
    biases in the denominators, as zennit does by default; relevance then leaks."""
    return Preset(
        "canonical",
        {
            "input": ZBeta(channel_bounds(mean, std), bias=keep_bias),
            "conv": ZPlus(bias=keep_bias),
            "linear": ZPlus(bias=keep_bias),
            "maxpool": PoolZ(),
            "avgpool": PoolZ(),
            **_SHARED,
        },
        merge_bn=True,
        keep_bias=keep_bias,
    )


PRESETS = {"paper": paper, "canonical": canonical}


def get_preset(
    rules: str | Preset | Mapping[str, Rule],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Preset:
    """``"paper"``, ``"canonical"``, a :class:`Preset`, or a dict laid over the paper preset."""
    if isinstance(rules, Preset):
        return rules
    if isinstance(rules, str):
        if rules == "paper":
            return paper()
        if rules == "canonical":
            return canonical(mean, std)
        raise ValueError(f"unknown rules {rules!r}; use one of {sorted(PRESETS)}, a Preset or a dict")
    if isinstance(rules, Mapping):
        return paper().with_rules(dict(rules))
    raise TypeError(f"rules must be a name, a Preset or a dict, not {type(rules).__name__}")


def fold_bn(conv: nn.Module, bn: nn.BatchNorm2d) -> Folded:
    """Conv followed by eval-mode BatchNorm as one conv: local tensors, the model untouched."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    w = conv.weight.detach() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    b = (conv.bias.detach() * scale if conv.bias is not None else 0) + shift
    return Folded(conv, w, b)


Bound = list[tuple[Any, Rule]]


def bind(preset: Preset, graph: Graph) -> Bound:
    """The op and rule each node uses when relevance flows through it.

    With ``merge_bn`` a BatchNorm whose input is a conv's output read by nothing else is
    folded into that conv (:func:`fold_bn`; new tensors, the model untouched) and passes
    relevance through. Warns where a BN scale is <= 0: there folding and passing through
    give different maps.
    """
    preset.check_keys(graph)
    first = graph.weighted_first()
    out: Bound = []
    flipped = []
    for p, node in enumerate(graph.nodes):
        op = node.module if node.module is not None else node.op
        out.append((op, preset.rule_for(graph, p, first)))
        module = node.module
        if isinstance(module, nn.BatchNorm2d):
            if module.weight is not None and bool((module.weight <= 0).any()):
                flipped.append(node.name)
            if preset.merge_bn:
                src = node.inputs[0]
                if src != INPUT and isinstance(graph.nodes[src].module, nn.Conv2d) and graph.users[src] == [p]:
                    out[src] = (fold_bn(graph.nodes[src].module, module), out[src][1])
                    out[p] = (module, Pass())
    if flipped:
        shown = ", ".join(flipped[:4]) + (f" and {len(flipped) - 4} more" if len(flipped) > 4 else "")
        warnings.warn(
            f"BatchNorm scale(s) <= 0 in {shown}: BN merging and BN pass-through give different maps there",
            stacklevel=4,
        )
    return out
