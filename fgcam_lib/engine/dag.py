"""The graph of a traced model: nodes in topological order and what can be asked of them.

A :class:`Graph` is a list of :class:`Node` in topological order; node ``i`` has id ``i``
and the input image has id ``INPUT`` (-1). Each node knows the op it runs (a module or a
function call, always out of place), the ids of the nodes it reads, its op *kind* (what a
preset maps to a rule, see :data:`fgcam_lib.engine.kinds.KINDS`) and its names. Graphs are
built by :mod:`fgcam_lib.engine.tracing`.

    >>> g = graph_of(torchvision.models.resnet18())
    >>> g.name(g.position("layer4")), g.name(g.default_component_layer())
    ('layer4', 'layer4')
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .ops import CallOp, eval_mode

__all__ = ["INPUT", "Node", "Graph", "run_shapes", "layouts"]

INPUT = -1
Tensor = torch.Tensor


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
            shapes: dict[int, Any] = {}
            quiet = logging.getLogger("torch._subclasses.fake_tensor")
            level = quiet.level
            try:
                quiet.setLevel(logging.CRITICAL)  # an op fake tensors cannot run is an answer here, not an error
                with eval_mode(modules.values()), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
                    run_shapes(self, torch.empty(1, self.input_channels or 3, size, size), shapes)
            except Exception:  # an op fake tensors cannot run: the shapes found so far
                pass
            finally:
                quiet.setLevel(level)
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
        DenseNet: the final ReLU; MobileNet, EfficientNet, ConvNeXt: ``features``. Transformers:
        see :meth:`_token_component_layer`.
        """
        if self.vgg_style:
            return self._by_name[f"features.{self.n_features - 1}"]
        attention = [i for i, n in enumerate(self.nodes) if n.kind == "attention" and n.data]
        if attention:
            return self._token_component_layer(attention[-1])
        for i, n in enumerate(self.nodes):
            head = (n.kind == "linear" or isinstance(n.module, nn.Flatten) or _to_vector(n)
                    or (n.kind in ("avgpool", "maxpool") and _is_global_pool(n)))
            if head and n.data and self._dominates_output(i):
                data = [j for j in n.inputs if j == INPUT or self.nodes[j].data]
                if data and data[0] != INPUT:
                    return self._spatial_before(data[0])
                break
        raise ValueError("cannot find a feature map before the classifier head; pass component_layer")

    def _data_inputs(self, i: int) -> list[int]:
        return [j for j in self.nodes[i].inputs if j == INPUT or self.nodes[j].data]

    def _token_component_layer(self, last: int) -> int:
        """A transformer's token grid the CAM reads. With a class token (ViT: a parameter
        concatenated to the patch tokens), the input of the last attention (``ln_1`` of the last
        block): after it only the class token reaches the head. Without one (Swin), the input of
        the first norm after the last attention that every path to the logits passes: the last
        stage's output."""
        prefix = any(n.kind == "cat" and n.data and len(self._data_inputs(i)) < len(n.inputs)
                     for i, n in enumerate(self.nodes[:last]))
        if not prefix:
            for i in range(last + 1, len(self.nodes)):
                if self.nodes[i].kind == "norm" and self.nodes[i].data and self._dominates_output(i):
                    return self._data_inputs(i)[0]
        return self._data_inputs(last)[0]

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
        attention = [i for i, n in enumerate(self.nodes) if n.kind == "attention" and n.data]
        if attention and isinstance(shapes.get(top), torch.Size) and len(shapes[top]) == 3:
            # a plain ViT keeps one token grid throughout: its stages are the blocks (their attention's input)
            return sorted({self._data_inputs(i)[0] for i in attention if self.reaches(i, top) or i < top}
                          | {top}, reverse=True)
        layout = layouts(self, shapes)
        named = set(self.aliases.values())
        best: dict[tuple, int] = {}
        for i in range(top, -1, -1):
            s = shapes.get(i)
            if not isinstance(s, torch.Size) or len(s) != 4:
                continue
            s = torch.Size([s[0], s[3], s[1], s[2]]) if layout.get(i) == "bhwc" else s  # channels first
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
            s = shapes[top]
            best[tuple(s[1:3] if layout.get(top) == "bhwc" else s[2:])] = top  # it stands for its resolution
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


def _permute_dims(op: Any) -> list[int] | None:
    if not isinstance(op, CallOp) or op.label != "permute":
        return None
    dims: list[int] = []
    for a in list(op.args[1:]) + list(op.kwargs.values()):
        if isinstance(a, int):
            dims.append(a)
        elif isinstance(a, (list, tuple)) and all(isinstance(d, int) for d in a):
            dims.extend(a)
    return dims or None


def layouts(graph: Graph, shapes: dict[int, Any]) -> dict[int, str]:
    """``"bchw"`` or ``"bhwc"`` for every node whose output is 4-d (``shapes`` from a forward)."""
    out: dict[int, str] = {INPUT: "bchw"}
    for i, node in enumerate(graph.nodes):
        s = shapes.get(i)
        if not isinstance(s, torch.Size) or len(s) != 4:
            continue
        ins = [j for j in node.inputs if j in out and isinstance(shapes.get(j), torch.Size) and len(shapes[j]) == 4]
        dims = _permute_dims(node.op)
        if dims is not None and ins:
            dims = [d % 4 for d in dims]
            if dims == [0, 2, 3, 1]:
                out[i] = "bhwc" if out[ins[0]] == "bchw" else "bchw"
            elif dims == [0, 3, 1, 2]:
                out[i] = "bchw" if out[ins[0]] == "bhwc" else "bhwc"
            else:
                out[i] = out[ins[0]]
        elif ins:
            out[i] = out[ins[0]]
        else:  # tokens reshaped into a map: channels last when the last dim is the odd one out
            out[i] = "bhwc" if s[1] == s[2] and s[3] != s[1] else "bchw"
    return out


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
