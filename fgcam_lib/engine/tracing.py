"""Building a :class:`~fgcam_lib.engine.dag.Graph`: a ``torch.fx`` trace, or a flat chain.

Tracing uses a plain ``torch.fx.Tracer`` (torchvision's feature-extraction tracer would hide
conv -> BN pairs and squeeze-excitation gates inside ``torchvision.ops`` modules). The model
is traced in eval mode and never changed: no hooks, no attributes, no swapped modules; the
graph is cached per model (weakly). An ``nn.Sequential`` that fx cannot trace is walked as a
flat chain of its modules instead (:func:`chain_graph`); both give the same kind of graph.
Module classes in :data:`LEAVES` (:func:`register_leaf`) stay one node.

Layer names:

- a leaf module's path (``"layer4.1.conv2"``, ``"features.13"``); a module called twice gets
  ``_1``, ``_2`` for the later calls (``"layer1.0.relu_1"``), as torchvision names them;
- a functional op: its scope and op name (``"layer1.0.add"``, ``"flatten"``);
- a container's path names its output (``"layer3"``, ``"features.denseblock3"``);
- ``"input"`` or ``-1``: the input image; on VGG-style models an int ``t`` is the paper's
  index, the output of ``model.features[t]``; on an ``nn.Sequential``, of its ``t``-th module.
"""
from __future__ import annotations

import operator
import sys
import weakref
from typing import Any, Callable, Sequence

import torch.fx as fx
from torch import nn

from .dag import INPUT, Graph, Node
from .kinds import CONST, function_kind, kind_of, method_kind
from .ops import CallOp, ConstOp, ModuleOp, Slot, eval_mode, is_vgg_style, method_call, module_call, qualname

__all__ = ["LEAVES", "register_leaf", "fx_graph", "chain_graph", "graph_of"]


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return list(stack.keys())[-1].split("@")[0]


def _containers(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [k.split("@")[0] for k in stack.keys()]


# ----------------------------------------------------------------------------------
# Leaf modules: traced as one node
# ----------------------------------------------------------------------------------
#: module classes traced as one node (by qualified name: registering needs no import of the
#: library), with the op kind their rule comes from (None: give a rule by layer name). The
#: built-in ones are library modules that compute their padding from each input's size, which
#: fx cannot trace: timm's TensorFlow-"same" convs and pools.
LEAVES: dict[str, str | None] = {
    "timm.layers.conv2d_same.Conv2dSame": "conv",
    "timm.layers.std_conv.StdConv2dSame": "conv",
    "timm.layers.std_conv.ScaledStdConv2dSame": "conv",
    "timm.layers.pool2d_same.AvgPool2dSame": "avgpool",
    "timm.layers.pool2d_same.MaxPool2dSame": "maxpool",
}


def register_leaf(cls: type | str, kind: str | None = None) -> None:
    """Trace modules of class ``cls`` as one node whose rule is the preset's rule for ``kind``
    (``"conv"``, ``"avgpool"``, ...; see :data:`fgcam_lib.engine.kinds.KINDS`), or, with no
    kind, the rule given by layer name (``rules={"head.pre_logits": ...}``). For a conv that computes its own
    padding or weight, also tell the engine what it computes:
    :func:`fgcam_lib.engine.weighted.register_conv_leaf`. Graphs traced before are not redone."""
    LEAVES[cls if isinstance(cls, str) else qualname(cls)] = kind


def _library_leaves(model: nn.Module) -> tuple[set[type], list[Any]]:
    """The leaf modules and functions the model's own library registers for fx (timm's registry)."""
    fx_registry = sys.modules.get("timm.layers._fx")
    if fx_registry is None or not type(model).__module__.startswith("timm."):
        return set(), []
    return set(fx_registry.get_notrace_modules()), list(fx_registry.get_notrace_functions())


class _Tracer(fx.Tracer):
    """A plain tracer that keeps :data:`LEAVES` (and, when asked, the model's library leaves) whole."""

    def __init__(self, extra: set[type] = frozenset(), autowrap: Sequence[Any] = ()):
        super().__init__(autowrap_functions=tuple(autowrap))
        self.extra = extra

    def is_leaf_module(self, m: nn.Module, path: str) -> bool:
        return (qualname(type(m)) in LEAVES or type(m) in self.extra) or super().is_leaf_module(m, path)


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """The innermost module of ``model`` whose forward was running when tracing failed."""
    names = {id(m): n for n, m in model.named_modules()}
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names and names[id(owner)]:
            found = f"{names[id(owner)]!r} ({type(owner).__name__})"
        tb = tb.tb_next
    return found


def _trace(model: nn.Module) -> fx.Graph:
    """Trace in eval mode (restored afterwards): the plain tracer with :data:`LEAVES`, then, if that
    fails, also with the leaves the model's library registers for fx."""
    with eval_mode(model):
        try:
            return _Tracer().trace(model)
        except Exception as exc:  # fx raises many types; the reason is what matters
            first = exc
        modules, functions = _library_leaves(model)
        if modules or functions:
            try:
                return _Tracer(modules, functions).trace(model)
            except Exception as exc:
                first = exc
        where = _failing_module(model, first)
        reason = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
        hint = (f" in module {where}: trace it as one node with fgcam_lib.engine.register_leaf and give it a rule"
                if where else "; explainers need a model fx can trace, or an nn.Sequential")
        raise TypeError(f"{type(model).__name__} cannot be traced by torch.fx ({type(first).__name__}: "
                        f"{reason}){hint}") from None


def fx_graph(model: nn.Module) -> Graph:
    """Trace ``model`` with a plain ``torch.fx.Tracer`` (in eval mode, restored afterwards);
    modules in :data:`LEAVES` stay one node."""
    traced = _trace(model)

    ids: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    counts: dict[str, int] = {}
    aliases: dict[str, int] = {}
    placeholders = [n for n in traced.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TypeError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; explainers need exactly one")
    output: int | None = None

    def unique(base: str) -> str:
        k = counts.get(base, 0)
        counts[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    for fn in traced.nodes:
        if fn.op == "placeholder":
            ids[fn] = INPUT
            continue
        if fn.op == "output":
            (out,) = fn.args
            if not isinstance(out, fx.Node):
                raise TypeError(f"{type(model).__name__} returns {type(out).__name__}; explainers need a "
                                "B x classes tensor of logits")
            output = ids[out]
            continue
        inputs: list[int] = []

        def slot(a: fx.Node) -> Slot:
            inputs.append(ids[a])
            return Slot(len(inputs) - 1)

        args = fx.node.map_arg(fn.args, slot)
        kwargs = dict(fx.node.map_arg(fn.kwargs, slot))
        module = None
        if fn.op == "call_module":
            module = model.get_submodule(fn.target)
            name = unique(fn.target)
            op: Callable = ModuleOp(module)
            kind = kind_of(module)
            leaf = qualname(type(module))
            if leaf in LEAVES:
                kind = LEAVES[leaf]
            target = type(module).__name__
            op = module_call(op, args, kwargs)
        elif fn.op == "get_attr":
            owner_path, _, attr = fn.target.rpartition(".")
            name = unique(fn.target)
            op, kind, target = ConstOp(model.get_submodule(owner_path), attr), CONST, "parameter"
        elif fn.op == "call_function":
            base = getattr(fn.target, "__name__", str(fn.target)).lstrip("_")
            scope = _scope(fn)
            name = unique(f"{scope}.{base}" if scope else base)
            target_fn = fn.target
            if target_fn in (operator.iadd, operator.imul, operator.itruediv):
                target_fn = {operator.iadd: operator.add, operator.imul: operator.mul,
                             operator.itruediv: operator.truediv}[target_fn]
            if kwargs.get("inplace"):
                kwargs["inplace"] = False
            kind = function_kind(fn.target)
            op = CallOp(target_fn, args, kwargs, base)
            target = base
        elif fn.op == "call_method":
            method = fn.target[:-1] if fn.target.endswith("_") and not fn.target.endswith("__") else fn.target
            scope = _scope(fn)
            name = unique(f"{scope}.{method}" if scope else method)
            kind = method_kind(method)
            op = CallOp(method_call(method), args, kwargs, method)
            target = method
        else:  # pragma: no cover
            raise TypeError(f"unexpected fx node op {fn.op!r}")
        node = Node(name, kind, op, tuple(inputs), module, target)
        # a shape, a size or a dimension count does not carry the image's values
        shape_read = target in ("size", "dim", "numel") or (
            fn.op == "call_function" and fn.target is getattr and len(fn.args) > 1 and fn.args[1] in (
                "shape", "dtype", "device", "ndim"))
        node.data = not shape_read and any(j == INPUT or nodes[j].data for j in inputs)
        if kind in ("mul", "matmul") and len(inputs) == 2 and isinstance(op, CallOp):
            a, b = inputs
            anc_a = _ancestors_of(nodes, a)
            anc_b = _ancestors_of(nodes, b)
            # the gate is computed from the signal: x * sigmoid(f(x)); the signal may be reshaped
            # first (a global-context attention: x.reshape(B, C, HW) @ softmax(conv(x)))
            a_gates_b = a in anc_b or _unshaped(nodes, a) in anc_b
            b_gates_a = b in anc_a or _unshaped(nodes, b) in anc_a
            op.gate = 1 if a_gates_b and not b_gates_a else 0 if b_gates_a and not a_gates_b else None
            if op.gate is None and kind == "matmul":  # attention written out: A @ v with A a softmax
                soft = [_is_softmax(nodes, j) for j in (a, b)]
                op.gate = soft.index(True) if soft.count(True) == 1 else None
        ids[fn] = len(nodes)
        nodes.append(node)
        for c in _containers(fn):
            if c and c != fn.target:
                aliases[c] = ids[fn]  # the last node inside a container is its output
    if output is None:  # pragma: no cover
        raise TypeError("the traced graph has no output")
    aliases = {a: i for a, i in aliases.items() if a not in {n.name for n in nodes}}
    vgg = is_vgg_style(model)
    return Graph(nodes, output, "fx", aliases, _sequence(model), vgg, len(model.features) if vgg else 0)


def _unshaped(nodes: list[Node], i: int) -> int:
    """The tensor ``i`` is a reshape (view, unsqueeze, permute, ...) of, through any number of them."""
    while i != INPUT and nodes[i].kind == "reshape" and len(nodes[i].inputs) >= 1:
        i = nodes[i].inputs[0]
    return i


def _is_softmax(nodes: list[Node], i: int) -> bool:
    """Whether tensor ``i`` is a softmax's output, through reshapes and dropout."""
    while i != INPUT and nodes[i].kind in ("reshape", "other") and nodes[i].inputs:
        i = nodes[i].inputs[0]
    if i == INPUT:
        return False
    node = nodes[i]
    return isinstance(node.module, nn.Softmax) or "softmax" in str(getattr(node.op, "label", ""))


def _ancestors_of(nodes: list[Node], i: int) -> set[int]:
    seen: set[int] = set()
    stack = [i]
    while stack:
        j = stack.pop()
        if j == INPUT or j in seen:
            continue
        seen.add(j)
        stack.extend(nodes[j].inputs)
    seen.discard(i)
    return seen


def _sequence(model: nn.Module) -> list[str]:
    """For an ``nn.Sequential``: its leaf module paths in order (nested Sequentials flattened)."""
    if not isinstance(model, nn.Sequential):
        return []

    def leaves(prefix: str, m: nn.Module) -> list[str]:
        if isinstance(m, nn.Sequential):
            return [p for name, c in m.named_children() for p in leaves(f"{prefix}.{name}" if prefix else name, c)]
        return [prefix]

    return leaves("", model)


def chain_graph(model: nn.Module) -> Graph:
    """The flat-chain walk: an ``nn.Sequential`` (nested ones flattened), or a VGG-style model
    (``features`` -> ``avgpool`` -> flatten -> ``classifier``), as a graph of one chain."""
    if isinstance(model, nn.Sequential):
        parts = [(p, model.get_submodule(p)) for p in _sequence(model)]
    elif is_vgg_style(model):
        parts = [(f"features.{k}", m) for k, m in enumerate(model.features)]
        if getattr(model, "avgpool", None) is not None:
            parts.append(("avgpool", model.avgpool))
        parts.append(("flatten", nn.Flatten()))
        cls = model.classifier
        parts += ([(f"classifier.{k}", m) for k, m in enumerate(cls)] if isinstance(cls, nn.Sequential)
                  else [("classifier", cls)])
    else:
        raise TypeError(f"{type(model).__name__} is not a chain: pass an nn.Sequential or a VGG-style model")
    nodes = []
    for k, (name, m) in enumerate(parts):
        if list(m.children()):
            raise TypeError(f"module {name!r} of type {type(m).__name__} is a container the flat chain cannot walk")
        nodes.append(Node(name, kind_of(m), ModuleOp(m), (k - 1,), m, type(m).__name__))
    vgg = is_vgg_style(model)
    return Graph(nodes, len(nodes) - 1, "chain", {}, _sequence(model), vgg, len(model.features) if vgg else 0)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, Graph]" = weakref.WeakKeyDictionary()


def graph_of(model: nn.Module) -> Graph:
    """The model's graph, traced once and cached weakly per model.

    fx first; an ``nn.Sequential`` that fx cannot trace falls back to the flat chain.
    """
    g = _CACHE.get(model)
    if g is None:
        try:
            g = fx_graph(model)
        except TypeError:
            if not isinstance(model, nn.Sequential):
                raise
            g = chain_graph(model)
        _CACHE[model] = g
    return g
