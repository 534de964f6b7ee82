"""Presets: which rule each op gets, as a map from op kinds or layer names to rules.

Keys are op kinds (see :data:`~fgcam_lib.engine.kinds.KINDS`), ``"input"`` for the
weighted layers that read the image, or layer names (``"features.3"``, ``"layer1.0.add"``)
for single nodes. Lookup order: node name, then ``"input"``, then the kind. Named presets
live in :data:`PRESETS`, the table :func:`get_preset` reads.

    >>> preset = paper()                                   # the authors' code
    >>> mixed = paper().with_rules(conv=Epsilon(0.25))     # an ablation's mix
    >>> canon = canonical(mean=(0.5,) * 3, std=(0.5,) * 3) # BN folded, box bounds
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from . import rules as _rules
from .dag import INPUT, Graph
from .kinds import KINDS, default_rules
from .ops import CallOp, fill
from .rules_attention import AttnLRP, CPAttention, HeldStd
from .rules_base import Missing, Pass, Rule
from .rules_input import ZBeta, channel_bounds, image_bounds
from .rules_structural import HeldMatmul, Sum
from .rules_weighted import Epsilon, PoolZ, ZPlus
from .weighted import Weighted, bn_module_parts, bn_parts, fold_bn, functional_weighted, weighted_of

__all__ = ["Preset", "paper", "canonical", "cp_lrp", "attn_lrp", "PresetBuilder", "PRESETS", "get_preset", "bind", "Bound", "constants",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """A named map from layer kinds/names to rules; ``merge_bn`` folds BN into its conv."""

    name: str
    rules: Mapping[str, Rule]
    merge_bn: bool = False
    keep_bias: bool = False
    notes: str = field(default="", compare=False)

    def with_rules(self, rules: Mapping[str, Rule] | None = None, **kw: Rule) -> "Preset":
        """This preset with ``rules`` (and keyword rules) laid over its own."""
        merged = {**self.rules, **(rules or {}), **kw}
        return replace(self, name=f"{self.name}+custom", rules=merged)

    def rule_for(self, graph: Graph, position: int, first: frozenset[int] = frozenset()) -> Rule:
        """The rule of node ``position``: by its name, ``"input"`` for a first weighted layer, its kind."""
        node = graph.nodes[position]
        for key in (node.name, graph.name(position)):
            # a layer named like an op kind (ResNet's "maxpool") is keyed by its kind
            if key in self.rules and key not in KINDS and key != "input":
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
        key = value.replace("_", "").replace("-", "").replace("+", "plus").lower()
        for name in _rules.__all__:
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


def paper() -> Preset:
    """The authors' public code: z+ (no bias) in hidden layers, z-beta with each image's
    min/max as bounds at the input, BN and ReLU pass relevance through unchanged. Beyond
    VGG: other activations, LayerNorm and dropout pass, residual adds split by each
    operand's share (:class:`~fgcam_lib.engine.rules_structural.Sum`), gates are held
    constant. Every kind gets its default rule (:data:`~fgcam_lib.engine.kinds.KINDS`)."""
    return Preset("paper", {"input": ZBeta(image_bounds), **default_rules()})


def canonical(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, keep_bias: bool = False
) -> Preset:
    """BN folded into the conv that feeds it (found by dataflow; a BN without one, as in
    DenseNet's BN -> ReLU -> conv, passes), z+ in hidden layers, z-beta with the per-channel
    bounds of pixels in [0, 1] after normalisation. Outputs no input contributes to (their
    value is the bias or the BN shift alone) spread their relevance flat over their window
    (``ZPlus(flat=True)``, ``PoolZ(flat=True)``), so relevance is conserved at every layer.
    ``keep_bias=True`` keeps the (merged) biases in the denominators, as zennit does by
    default; relevance then leaks. Other kinds get their default rule."""
    return Preset(
        "canonical",
        {
            **default_rules(),
            "input": ZBeta(channel_bounds(mean, std), bias=keep_bias),
            "conv": ZPlus(bias=keep_bias, flat=True),
            "linear": ZPlus(bias=keep_bias, flat=True),
            "maxpool": PoolZ(flat=True),
            "avgpool": PoolZ(flat=True),
            "matmul": HeldMatmul(flat=True),
            "attention": CPAttention(ZPlus(flat=True)),
        },
        merge_bn=True,
        keep_bias=keep_bias,
    )


def cp_lrp(epsilon: float = 1e-9) -> Preset:
    """CP-LRP for transformers as LXT computes it (Ali et al. 2022; Achtibat et al. 2024's code):
    the epsilon rule with biases in every weighted layer, the input's included; LayerNorm
    with its standard deviation held (:class:`~fgcam_lib.engine.rules_attention.HeldStd`);
    GELU and other activations pass; residual and position-embedding adds share in proportion
    (the embedding absorbs its share); attention held constant. With a small ``epsilon`` this
    is gradient x input of the network with those parts held, which is how LXT computes it."""
    eps = Epsilon(epsilon, bias=True)
    return Preset("cp_lrp", {
        **default_rules(), "input": eps, "conv": eps, "linear": eps, "norm": HeldStd(epsilon),
        "add": Sum("proportional", epsilon, absorb=True), "attention": CPAttention(Epsilon(epsilon, bias=True))})


def attn_lrp(epsilon: float = 1e-9) -> Preset:
    """AttnLRP (Achtibat et al. 2024): :func:`cp_lrp`, with relevance also flowing through the
    attention weights (:class:`~fgcam_lib.engine.rules_attention.AttnLRP`)."""
    base = cp_lrp(epsilon)
    return Preset("attn_lrp", {**base.rules, "attention": AttnLRP(Epsilon(epsilon, bias=True), epsilon)})


class PresetBuilder(Protocol):
    """Builds a named preset; ``mean`` and ``std`` are the model's input normalisation."""

    def __call__(self, mean: Sequence[float], std: Sequence[float]) -> Preset: ...


def _paper(mean: Sequence[float], std: Sequence[float]) -> Preset:
    return paper()  # image bounds: the normalisation plays no part


def _canonical(mean: Sequence[float], std: Sequence[float]) -> Preset:
    return canonical(mean, std)


#: preset name -> its builder: the names :func:`get_preset` (and ``FGCAM(model, rules=name)``) knows
PRESETS: dict[str, PresetBuilder] = {"paper": _paper, "canonical": _canonical,
                                     "cp_lrp": lambda mean, std: cp_lrp(), "attn_lrp": lambda mean, std: attn_lrp()}


def get_preset(
    rules: str | Preset | Mapping[str, Rule],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Preset:
    """A name in :data:`PRESETS`, a :class:`Preset`, or a dict laid over the paper preset."""
    if isinstance(rules, Preset):
        return rules
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown rules {rules!r}; use one of {sorted(PRESETS)}, a Preset or a dict")
        return PRESETS[rules](mean, std)
    if isinstance(rules, Mapping):
        return paper().with_rules(dict(rules))
    raise TypeError(f"rules must be a name, a Preset or a dict, not {type(rules).__name__}")


#: per node: the op its rule is called with, and the rule
Bound = list[tuple[Any, Rule]]


def constants(graph: Graph, wanted: Sequence[int]) -> dict[int, Any]:
    """Values of the nodes in ``wanted`` that do not depend on the input (parameters, weights
    computed from parameters), computed now; nodes that depend on it are left out."""
    vals: dict[int, Any] = {}

    def value(i: int) -> Any:
        if i not in vals:
            node = graph.nodes[i]
            vals[i] = node.op(*(value(j) for j in node.inputs))
        return vals[i]

    out = {}
    with torch.no_grad():
        for i in wanted:
            if i != INPUT and INPUT not in graph.ancestors(i):
                out[i] = value(i)
    return out


def _call_values(graph: Graph, p: int, consts: dict[int, Any]) -> tuple[list, dict] | None:
    """A call's arguments with every input but the first (the signal) filled in with its
    constant value; None when one of them depends on the input."""
    node = graph.nodes[p]
    vals: list[Any] = []
    for k, j in enumerate(node.inputs):
        if k == 0:
            vals.append(None)
        elif j in consts:
            vals.append(consts[j])
        else:
            return None
    return list(fill(node.op.args, tuple(vals))), dict(fill(node.op.kwargs, tuple(vals)))


def _weighted(graph: Graph, p: int, consts: dict[int, Any]) -> Weighted | None:
    """The :class:`Weighted` of a conv/linear node: module, library conv leaf or functional call."""
    node = graph.nodes[p]
    if node.module is not None:
        return weighted_of(node.module)
    if isinstance(node.op, CallOp):
        filled = _call_values(graph, p, consts)
        if filled is None:
            raise TypeError("its weight depends on the input (a dynamic convolution): no rule for it")
        return functional_weighted(node.op.fn, *filled)
    return None


def _bn(graph: Graph, p: int, consts: dict[int, Any]) -> tuple[Any, Any] | None:
    """An eval-mode BatchNorm node as ``(scale, shift)``, or None (training mode, not constant)."""
    node = graph.nodes[p]
    m = node.module
    if m is not None:
        return bn_module_parts(m)
    filled = _call_values(graph, p, consts)
    if filled is None:
        return None
    args, kwargs = filled

    def arg(k: int, name: str, default: Any) -> Any:
        return kwargs[name] if name in kwargs else args[k] if k < len(args) else default

    mean, var = arg(1, "running_mean", None), arg(2, "running_var", None)
    if mean is None or var is None or arg(5, "training", False):
        return None
    return bn_parts(arg(3, "weight", None), arg(4, "bias", None), mean, var, arg(7, "eps", 1e-5))


def _zero_border(graph: Graph, p: int) -> tuple[int, ...] | None:
    """The pads of a pad node that adds a zero border (``F.pad`` order), else None."""
    node = graph.nodes[p]
    m = node.module
    if m is not None:
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)) and float(getattr(m, "value", 0.0)) == 0.0:
            return tuple(m.padding)
        return None
    if isinstance(node.op, CallOp):
        pads = node.op.arg(1, "pad")
        mode = node.op.arg(2, "mode", "constant")
        value = node.op.arg(3, "value", None)
        if mode == "constant" and (value is None or value == 0) and isinstance(pads, (tuple, list)) \
                and all(isinstance(v, int) for v in pads):
            return tuple(pads)
    return None


def bind(preset: Preset, graph: Graph) -> Bound:
    """The op and rule each node uses when relevance flows through it.

    Convolutions and linear layers are bound as :class:`~fgcam_lib.engine.weighted.Weighted`
    (modules, functional calls with their weights computed now, library convs that pad
    themselves). A conv fed by a zero pad read by nothing else knows the border is padding.
    With ``merge_bn`` a BatchNorm (module or ``F.batch_norm``, eval mode) whose input is a
    conv's output read by nothing else is folded into that conv (new tensors, the model
    untouched) and passes relevance through. Warns where a BN scale is <= 0: there folding
    and passing through give different maps.
    """
    preset.check_keys(graph)
    first = graph.weighted_first()
    out: Bound = []
    flipped = []
    wanted = [j for n in graph.nodes if n.kind in ("conv", "linear", "bn") for j in n.inputs]
    consts = constants(graph, wanted)
    for p, node in enumerate(graph.nodes):
        op = node.module if node.module is not None else node.op
        rule = preset.rule_for(graph, p, first)
        if node.kind in ("conv", "linear") and node.data:
            try:
                lin = _weighted(graph, p, consts)
            except TypeError as exc:
                lin, rule = None, Missing(f"{node.describe()}: {exc}")
            if lin is not None:
                src = node.inputs[0]
                if src != INPUT and graph.nodes[src].kind == "pad" and graph.users[src] == [p]:
                    border = _zero_border(graph, src)
                    if border is not None:
                        lin = lin.with_border(border)
                op = lin
        out.append((op, rule))
        if node.kind == "bn" and node.data:
            module = node.module
            parts = _bn(graph, p, consts)
            if parts is not None and bool((parts[0] <= 0).any()):
                flipped.append(node.name)
            if preset.merge_bn and parts is not None:
                src = node.inputs[0]
                if src != INPUT and graph.nodes[src].kind == "conv" and graph.users[src] == [p] \
                        and isinstance(out[src][0], Weighted):
                    out[src] = (fold_bn(out[src][0], parts), out[src][1])
                    out[p] = (module if module is not None else node.op, Pass())
    if flipped:
        shown = ", ".join(flipped[:4]) + (f" and {len(flipped) - 4} more" if len(flipped) > 4 else "")
        warnings.warn(
            f"BatchNorm scale(s) <= 0 in {shown}: BN merging and BN pass-through give different maps there",
            stacklevel=4,
        )
    return out
