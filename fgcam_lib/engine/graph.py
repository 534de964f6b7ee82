"""The model as a graph of tensor operations, traced once with ``torch.fx``.

A :class:`Graph` is a list of :class:`Node` in topological order; node ``i`` has id ``i``
and the input image has id ``INPUT`` (-1). Each node knows the op it runs (a module or a
function call, always out of place), the ids of the nodes it reads, its op *kind* (what a
preset maps to a rule: ``"conv"``, ``"add"``, ``"cat"``, ...) and its names.

Tracing uses a plain ``torch.fx.Tracer`` (torchvision's feature-extraction tracer would hide
conv -> BN pairs and squeeze-excitation gates inside ``torchvision.ops`` modules). The model
is traced in eval mode and never changed: no hooks, no attributes, no swapped modules; the
graph is cached per model (weakly). An ``nn.Sequential`` that fx cannot trace is walked as a
flat chain of its modules instead (:func:`chain_graph`); both give the same kind of graph.

Layer names:

- a leaf module's path (``"layer4.1.conv2"``, ``"features.13"``); a module called twice gets
  ``_1``, ``_2`` for the later calls (``"layer1.0.relu_1"``), as torchvision names them;
- a functional op: its scope and op name (``"layer1.0.add"``, ``"flatten"``);
- a container's path names its output (``"layer3"``, ``"features.denseblock3"``);
- ``"input"`` or ``-1``: the input image; on VGG-style models an int ``t`` is the paper's
  index, the output of ``model.features[t]``; on an ``nn.Sequential``, of its ``t``-th module.

    >>> g = graph_of(torchvision.models.resnet18())
    >>> g.name(g.position("layer4")), g.name(g.default_component_layer())
    ('layer4', 'layer4')
"""
from __future__ import annotations

import difflib
import logging
import operator
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .ops import (CallOp, ConstOp, ModuleOp, Slot, function_kind, is_vgg_style, kind_of, method_call, method_kind,
                  module_call, qualname)

__all__ = ["INPUT", "Node", "Graph", "graph_of", "fx_graph", "chain_graph", "LEAVES", "register_leaf"]

INPUT = -1
Tensor = torch.Tensor


# ----------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Node:
    """One op of the model: ``op(*values of inputs)``; ``kind`` selects its rule."""

    name: str
    kind: str | None
    op: Callable
    inputs: tuple[int, ...]
    module: nn.Module | None = None
    target: str = ""
    data: bool = True  # depends on the input image (constants do not)

    def describe(self) -> str:
        what = type(self.module).__name__ if self.module is not None else self.target
        return f"node {self.name!r} ({what})"


@dataclass(eq=False)
class Graph:
    """Nodes in topological order, their names and the id of the logits."""

    nodes: list[Node]
    output: int
    source: str  # "fx" or "chain"
    aliases: dict[str, int] = field(default_factory=dict)
    sequence: list[str] = field(default_factory=list)  # leaf names an int spec indexes (Sequentials)
    vgg_style: bool = False
    n_features: int = 0

    def __post_init__(self) -> None:
        self._by_name = {n.name: i for i, n in enumerate(self.nodes)}
        self._display: dict[int, str] = {}
        for alias, i in sorted(self.aliases.items(), key=lambda kv: (len(kv[0]), kv[0]), reverse=True):
            self._display[i] = alias  # the shortest alias wins
        if self.vgg_style:  # the paper's layout keeps its module paths (features.43, classifier.1)
            for i, n in enumerate(self.nodes):
                if n.module is not None:
                    self._display[i] = n.name
        self.users: list[list[int]] = [[] for _ in self.nodes]
        self.input_users: list[int] = []
        #: id -> the last node reading it (the forward frees a value after that read)
        self.last_use: dict[int, int] = {}
        for i, n in enumerate(self.nodes):
            for j in dict.fromkeys(n.inputs):
                (self.input_users if j == INPUT else self.users[j]).append(i)
                self.last_use[j] = i
        self.last_use.pop(self.output, None)
        self._anc: dict[int, frozenset[int]] = {}
        self._min_size: tuple[int, int] | None = None
        self._shapes: dict[int, dict[int, Any]] = {}
        self._first: frozenset[int] | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    # -- names ---------------------------------------------------------------------
    def name(self, position: int) -> str:
        """The display name of a position: a container alias where one names it."""
        if position == INPUT:
            return "input"
        return self._display.get(position, self.nodes[position].name)

    @property
    def names(self) -> list[str]:
        """Every valid layer name, ``"input"`` first, then in forward order."""
        out = ["input"]
        for i in range(len(self.nodes)):
            if self.nodes[i].data:
                out.append(self.nodes[i].name)
                out.extend(a for a, j in self.aliases.items() if j == i and a != self.nodes[i].name)
        return out

    def position(self, spec: int | str) -> int:
        """Position of a layer spec: ``INPUT`` for the input, a node id otherwise."""
        if isinstance(spec, bool):
            raise TypeError(f"layer must be an int or a str, not {spec!r}")
        if isinstance(spec, str):
            if spec == "input":
                return INPUT
            if spec in self._by_name:
                return self._by_name[spec]
            if spec in self.aliases:
                return self.aliases[spec]
            if spec.strip().lstrip("-").isdigit():
                return self.position(int(spec))
            close = difflib.get_close_matches(spec, self.names, n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown layer {spec!r}{hint} (explainer.layers lists all {len(self.names)} names)")
        if isinstance(spec, int):
            if spec == -1:
                return INPUT
            if self.vgg_style:
                t = spec + self.n_features if spec < -1 else spec
                if not 0 <= t < self.n_features:
                    raise ValueError(f"layer index {spec} is outside model.features (0..{self.n_features - 1}, "
                                     "or -1 for the input)")
                return self._by_name[f"features.{t}"]
            if self.sequence:
                t = spec + len(self.sequence) if spec < -1 else spec
                if not 0 <= t < len(self.sequence):
                    raise ValueError(f"layer index {spec} is outside the model (0..{len(self.sequence) - 1}, or -1)")
                return self.position(self.sequence[t])
            raise ValueError(f"layer {spec}: integer layers are the paper's indices on VGG-style models; "
                             "name the layer by its module path (explainer.layers lists them)")
        raise TypeError(f"layer must be an int or a str, not {type(spec).__name__}")

    # -- structure -----------------------------------------------------------------
    def ancestors(self, position: int) -> frozenset[int]:
        """Ids (``INPUT`` included) that ``position``'s value depends on, itself excluded."""
        if position == INPUT:
            return frozenset()
        if position not in self._anc:
            seen: set[int] = set()
            stack = list(self.nodes[position].inputs)
            while stack:
                j = stack.pop()
                if j in seen:
                    continue
                seen.add(j)
                if j != INPUT:
                    stack.extend(self.nodes[j].inputs)
            self._anc[position] = frozenset(seen)
        return self._anc[position]

    def downstream(self, sources: Iterable[int]) -> frozenset[int]:
        """Nodes that depend on any of ``sources`` (``INPUT`` allowed), the sources excluded."""
        seen: set[int] = set()
        stack = list(self.input_users if INPUT in set(sources) else [])
        stack += [u for s in sources if s != INPUT for u in self.users[s]]
        while stack:
            j = stack.pop()
            if j not in seen:
                seen.add(j)
                stack.extend(self.users[j])
        return frozenset(seen)

    def reaches(self, low: int, high: int) -> bool:
        """Whether relevance at ``high`` can flow down to ``low`` (``low`` is ``high`` or feeds it)."""
        return low == high or low in self.ancestors(high)

    def where(self, low: int, high: int) -> str:
        """``"above"`` when ``low`` is fed by ``high``, else ``"not at or below"`` (for messages)."""
        return "above" if self.reaches(high, low) else "not at or below"

    def between(self, start: int, stops: Iterable[int]) -> list[int]:
        """Nodes a walk from ``start`` down to ``stops`` passes, deepest first: the ancestors-or-self
        of ``start`` that depend on some stop other than themselves."""
        stops = set(stops)
        up = self.ancestors(start) | {start}
        return sorted((i for i in up if i != INPUT and (stops - {i}) & self.ancestors(i)), reverse=True)

    def weighted_first(self) -> frozenset[int]:
        """Conv/linear nodes with no conv/linear before them: the layers that read the image."""
        if self._first is None:
            self._first = frozenset(
                i for i, n in enumerate(self.nodes) if n.kind in ("conv", "linear") and not any(
                    j != INPUT and self.nodes[j].kind in ("conv", "linear") for j in self.ancestors(i)))
        return self._first

    @property
    def input_channels(self) -> int | None:
        """Channels of the image the model takes: the in-channels of the conv that reads it
        (through pads and dropouts); None when no conv reads it directly (a space-to-depth stem)."""
        stack = list(self.input_users)
        while stack:
            i = stack.pop(0)
            n = self.nodes[i]
            if isinstance(n.module, (nn.Conv1d, nn.Conv2d)):
                return n.module.in_channels
            if n.kind in ("pad", "other"):
                stack.extend(self.users[i])
        return None

    def shapes_at(self, size: int = 224) -> dict[int, Any]:
        """Every node's output shape (``INPUT`` too) for one ``size`` x ``size`` image, from a
        forward on fake tensors (no data, no compute), modules in eval mode; cached per size."""
        if size not in self._shapes:
            modules = {id(n.module): n.module for n in self.nodes if n.module is not None}
            flags = [(m, m.training) for m in modules.values()]
            shapes: dict[int, Any] = {}
            quiet = logging.getLogger("torch._subclasses.fake_tensor")
            level = quiet.level
            try:
                quiet.setLevel(logging.CRITICAL)  # an op fake tensors cannot run is an answer here, not an error
                for m in modules.values():
                    m.training = False
                with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
                    run_shapes(self, torch.empty(1, self.input_channels or 3, size, size), shapes)
            except Exception:  # an op fake tensors cannot run: the shapes found so far
                pass
            finally:
                quiet.setLevel(level)
                for m, flag in flags:
                    m.training = flag
            self._shapes[size] = shapes
        return self._shapes[size]

    def _dominates_output(self, c: int) -> bool:
        """Every path from the input to the logits passes through node ``c``."""
        seen, stack = {c}, [INPUT]
        while stack:
            j = stack.pop()
            if j == self.output:
                return False
            for u in (self.input_users if j == INPUT else self.users[j]):
                if u not in seen and self.nodes[u].data:  # a size read is no path for the image's values
                    seen.add(u)
                    stack.append(u)
        return True

    def default_component_layer(self) -> int:
        """The last spatial feature map before the classifier head: the data input of the first
        global pooling, flatten or linear node that every path to the logits passes through.

        VGG: ``features.43`` (the last max-pool, as in the authors' code); ResNet: ``layer4``;
        DenseNet: the final ReLU; MobileNet, EfficientNet, ConvNeXt: ``features``.
        """
        if self.vgg_style:
            return self._by_name[f"features.{self.n_features - 1}"]
        for i, n in enumerate(self.nodes):
            head = (n.kind == "linear" or isinstance(n.module, nn.Flatten) or _to_vector(n)
                    or (n.kind in ("avgpool", "maxpool") and _is_global_pool(n)))
            if head and n.data and self._dominates_output(i):
                data = [j for j in n.inputs if j == INPUT or self.nodes[j].data]
                if data and data[0] != INPUT:
                    return self._spatial_before(data[0])
                break
        raise ValueError("cannot find a feature map before the classifier head; pass component_layer")

    def _spatial_before(self, c: int) -> int:
        """``c``, or, where ``c`` is a 1 x 1 map at 224 px (a pool the size of the map, the
        dropout after it, timm VGG's conv head), the last map with spatial extent > 1 before it."""
        if self.nodes[c].kind not in ("avgpool", "maxpool", "other", None):
            return c  # a conv, norm, activation, add... keeps its input's extent: no need for shapes
        for size in (224, 299, 331, 448):  # ImageNet sizes: some heads pool a fixed window (PolyNet's at 331)
            shapes = self.shapes_at(size)
            if self.output in shapes:
                break
        while c != INPUT and c in shapes and len(shapes[c]) == 4 and shapes[c][2] * shapes[c][3] == 1:
            data = [j for j in self.nodes[c].inputs if j == INPUT or self.nodes[j].data]
            if len(data) != 1 or data[0] == INPUT or data[0] not in shapes:
                break
            c = data[0]
        return c

    def stages(self, shapes: dict[int, Any]) -> list[int]:
        """The layers a reader looks at, deepest first, from a forward's ``shapes``: on VGG-style
        models the pools (the paper's 43, 33, 23, 13, 6); otherwise, at each resolution below the
        component layer, the outermost container output (else the deepest module output) that
        every path to the logits passes (ResNet: layer4 ... layer1, then the stem)."""
        top = self.default_component_layer()
        if self.vgg_style:
            return [i for i in range(top, -1, -1) if isinstance(self.nodes[i].module, (nn.MaxPool2d, nn.AvgPool2d))]
        named = set(self.aliases.values())
        best: dict[tuple, int] = {}
        for i in range(top, -1, -1):
            s = shapes.get(i)
            if not isinstance(s, torch.Size) or len(s) != 4:
                continue
            if self.nodes[i].module is None and i not in named:
                continue  # functional ops inside a module (e.g. a channels-last layer norm)
            if self.nodes[i].kind == "pad":
                continue  # a padded copy of a map, larger than the map itself
            if not (self.reaches(i, top) and self._dominates_output(i)):
                continue
            key = tuple(s[2:])
            if key not in best or self.name(i).count(".") < self.name(best[key]).count("."):
                best[key] = i  # the outermost container at that resolution, else the deepest node
        if isinstance(shapes.get(top), torch.Size) and len(shapes[top]) == 4:
            best[tuple(shapes[top][2:])] = top  # the component layer stands for its resolution
        return sorted(best.values(), reverse=True)

    def min_size(self, like: Tensor) -> tuple[int, int]:
        """Smallest square input (H, W) the model runs on, found by trying small inputs like ``like``."""
        if self._min_size is None:
            def runs(s: int) -> bool:
                try:
                    with torch.no_grad():
                        run_shapes(self, like.new_zeros((1, like.shape[1], s, s)))
                    return True
                except (RuntimeError, ValueError, IndexError):
                    return False

            lo, hi = 1, 8
            while not runs(hi) and hi < 4096:
                lo, hi = hi, hi * 2
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if not runs(mid) else (lo, mid)
            self._min_size = (hi, hi)
        return self._min_size


def _is_global_pool(n: Node) -> bool:
    m = n.module
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return True
    if isinstance(n.op, CallOp):
        return n.op.fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean) or n.target == "mean"
    return False


def _to_vector(n: Node) -> bool:
    """``torch.flatten(x, 1)``, ``x.view(B, -1)`` or ``x.reshape(B, -1)``: features become a vector."""
    if not isinstance(n.op, CallOp) or n.target not in ("flatten", "view", "reshape"):
        return False
    if n.target == "flatten":
        return True
    dims = n.op.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return len(dims) == 2


def run_shapes(graph: Graph, x: Tensor, shapes: dict[int, Any] | None = None) -> dict[int, Any]:
    """Run the graph on ``x`` (meta or fake tensors serve) and record every tensor's shape,
    ``INPUT``'s too, into ``shapes`` (filled as it goes: a failing op leaves the shapes before it)."""
    shapes = {} if shapes is None else shapes
    vals: dict[int, Any] = {INPUT: x}
    shapes[INPUT] = x.shape
    for i, n in enumerate(graph.nodes):
        vals[i] = n.op(*(vals[j] for j in n.inputs))
        if isinstance(vals[i], torch.Tensor):
            shapes[i] = vals[i].shape
    return shapes


# ----------------------------------------------------------------------------------
# Building graphs
# ----------------------------------------------------------------------------------
def _eval_flags(model: nn.Module):
    return [(m, m.training) for m in model.modules()]


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
    (``"conv"``, ``"avgpool"``, ...; see ``fgcam_lib.engine.KINDS``), or, with no kind, the rule
    given by layer name (``rules={"head.pre_logits": ...}``). For a conv that computes its own
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
    flags = _eval_flags(model)
    try:
        model.eval()
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
    finally:
        for m, flag in flags:
            m.training = flag


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
            op, kind, target = ConstOp(model.get_submodule(owner_path), attr), "const", "parameter"
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
