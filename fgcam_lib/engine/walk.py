"""The forward that keeps what relevance rules read, and the one backward walk.

Positions are node ids of a :class:`~fgcam_lib.engine.dag.Graph` (``INPUT`` = -1 for the
image). :func:`plan` lists the nodes a walk from ``start`` down to some ``stops`` passes and
the activations their rules read; :func:`forward` runs the model keeping exactly those (and
frees every other activation after its last reader); :func:`propagate` walks the nodes in
reverse topological order, adding up relevance where a tensor feeds several consumers, and
returns the relevance at every stop from that one walk.

    >>> bound = bind(paper(), graph)
    >>> walk = plan(graph, bound, start=graph.output, stops=[INPUT, 13])
    >>> trace = forward(graph, x, keep=walk.keep)
    >>> R = propagate(graph, bound, trace, R_logits, walk)
    >>> R[INPUT].shape   # B x 3 x H x W relevance at the input
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .dag import INPUT, Graph
from .ops import CallOp, eval_mode
from .presets import Bound
from .rules_base import Missing, MultiRule

Tensor = torch.Tensor

__all__ = ["Trace", "Walk", "plan", "forward", "propagate", "blank_shapes"]


@dataclass
class Trace:
    """A forward pass: kept activations, every tensor's shape, and the logits."""

    acts: dict[int, Any] = field(default_factory=dict)
    shapes: dict[int, Any] = field(default_factory=dict)
    out: Tensor | None = None


@dataclass(frozen=True)
class Walk:
    """What one propagation visits: ``nodes`` deepest first, the ``stops`` it reports, and the
    activations ``keep`` its rules read."""

    start: int
    stops: frozenset[int]
    nodes: tuple[int, ...]
    keep: frozenset[int]


def plan(graph: Graph, bound: Bound, start: int, stops: Iterable[int]) -> Walk:
    """The nodes between ``start`` and ``stops`` and the activations their rules read."""
    stops = frozenset(stops)
    if not all(graph.reaches(s, start) for s in stops):
        bad = [graph.name(s) for s in stops if not graph.reaches(s, start)]
        raise ValueError(f"relevance at {graph.name(start)!r} does not flow to {', '.join(bad)}")
    nodes = tuple(graph.between(start, stops))
    keep: set[int] = set()
    for i in nodes:
        if bound[i][1].reads_input:
            keep.update(graph.nodes[i].inputs)
    return Walk(start, stops, nodes, frozenset(keep))


def _shape(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.shape
    if isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v) and all(
            isinstance(t, torch.Tensor) or t is None for t in v):  # (output, None): attention without weights
        return tuple(t.shape if isinstance(t, torch.Tensor) else None for t in v)
    return None


def _detach(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, (tuple, list)):
        return type(v)(_detach(t) for t in v)
    return v


def forward(graph: Graph, x: Tensor, keep: Iterable[int] = (), grad_at: Iterable[int] = ()) -> Trace:
    """Run the model's graph on ``x``, out of place.

    Keeps the values of the nodes in ``keep`` (``INPUT`` for the image) and the shape of every
    tensor. Each node in ``grad_at`` becomes a leaf that requires grad, so gradients of the
    logits flow down to those nodes and no further; without ``grad_at`` nothing is recorded.
    Other activations are freed after their last reader.
    """
    keep, grad_at = set(keep), set(grad_at)
    trace = Trace()
    last = graph.last_use
    vals: dict[int, Any] = {}
    # autograd records only downstream of the leaves: the weights require grad, so ops below
    # them would otherwise save their inputs for a backward that never comes
    record = graph.downstream(grad_at) if grad_at else frozenset()
    with torch.no_grad():
        h = x.detach().requires_grad_(True) if INPUT in grad_at else x
        vals[INPUT] = h
        trace.shapes[INPUT] = h.shape
        if INPUT in keep:
            trace.acts[INPUT] = h
        for i, node in enumerate(graph.nodes):
            if i in record:
                with torch.enable_grad():
                    v = node.op(*(vals[j] for j in node.inputs))
            else:
                v = node.op(*(vals[j] for j in node.inputs))
            if i in grad_at:
                v = v.detach().requires_grad_(True)
            vals[i] = v
            s = _shape(v)
            if s is not None:
                trace.shapes[i] = s
            elif not isinstance(v, torch.Tensor):
                trace.acts[i] = v  # sizes and other small values: kept so ops can be re-run
            if i in keep:
                trace.acts[i] = v
            for j in set(node.inputs):
                if last.get(j) == i:
                    vals.pop(j, None)
    trace.out = vals[graph.output]
    if not isinstance(trace.out, torch.Tensor) or trace.out.dim() != 2:
        shape = tuple(trace.out.shape) if isinstance(trace.out, torch.Tensor) else type(trace.out).__name__
        raise TypeError(f"the model returns {shape}; explainers need B x classes logits")
    return trace


def blank_shapes(model: torch.nn.Module, graph: Graph, size: int) -> dict[int, Any]:
    """Every node's output shape (``graph`` traced from ``model``) for one blank ``size`` x ``size``
    image: a real forward (unlike :meth:`Graph.shapes_at`, which may stop at an op fake tensors
    cannot run), modules in eval mode."""
    x = torch.zeros(1, graph.input_channels or 3, size, size, device=next(model.parameters()).device)
    with torch.no_grad(), eval_mode(model):
        return forward(graph, x).shapes


def _meta(shape: Any) -> Any:
    if isinstance(shape, tuple) and shape and isinstance(shape[0], (torch.Size, type(None))):
        return tuple(None if s is None else torch.empty(s, device="meta") for s in shape)
    return torch.empty(shape, device="meta")


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if isinstance(a, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = out[k] + v if k in out else v
        return out
    return a + b


def propagate(
    graph: Graph,
    bound: Bound,
    trace: Trace,
    relevance: Tensor,
    walk: Walk,
    keep_all: bool = False,
    observe: Callable[[int, Tensor, list], None] | None = None,
) -> dict[int, Tensor]:
    """Walk ``relevance`` (the shape of the activation at ``walk.start``) down to each stop.

    Returns ``{position: relevance}`` for each stop (and every node passed when ``keep_all``).
    ``observe(node id, relevance at its output, relevances at its inputs)`` sees each step.
    """
    R: dict[int, Any] = {walk.start: relevance}
    out: dict[int, Tensor] = {}
    members = set(walk.nodes) | walk.stops
    if walk.start in walk.stops or keep_all:
        out[walk.start] = relevance
    for i in walk.nodes:
        r = R.pop(i, None)
        if (keep_all or i in walk.stops) and isinstance(r, torch.Tensor):
            out[i] = r
        if r is None:
            continue
        node = graph.nodes[i]
        op, rule = bound[i]
        tensor_inputs = [j for j in node.inputs if j in trace.shapes]
        xs = []
        for j in tensor_inputs:
            if not rule.reads_input:
                xs.append(_meta(trace.shapes[j]))
            elif j in trace.acts:
                xs.append(_detach(trace.acts[j]))
            else:
                raise RuntimeError(f"activation feeding {node.describe()} was not kept")
        data = [j == INPUT or graph.nodes[j].data for j in tensor_inputs]
        try:
            if isinstance(rule, Missing):  # no rule here: say why, whatever the inputs
                rule(op, xs[0] if xs else None, r)
            if isinstance(rule, MultiRule):  # the rule's class says which call it takes
                if isinstance(op, CallOp) and len(tensor_inputs) < len(node.inputs):
                    # sizes and other values the call reads: filled in, so the rule calls op(*xs)
                    op = op.bind({k: trace.acts.get(j) for k, j in enumerate(node.inputs) if j not in trace.shapes})
                rins = rule(op, xs, r, data)
            elif sum(data) == 1:  # one signal; other tensor inputs are parameters (a norm's weight)
                k = data.index(True)
                if isinstance(op, CallOp) and len(node.inputs) > 1:
                    # the rule calls op(x): every other input filled in with its value (or its shape)
                    given = dict(zip(tensor_inputs, xs))
                    signal = tensor_inputs[k]
                    op = op.bind({n: (given[j] if j in given else trace.acts.get(j))
                                  for n, j in enumerate(node.inputs) if j != signal})
                rins = [None] * len(xs)
                rins[k] = rule(op, xs[k], r)
            else:
                raise TypeError(f"it has {sum(data)} signal inputs; {rule!r} takes one")
        except TypeError as exc:  # say where, once
            if f"{node.name!r}" in str(exc):
                raise
            raise TypeError(f"{node.describe()}: {exc}") from None
        if observe is not None:
            observe(i, r, rins)
        for j, d, rin in zip(tensor_inputs, data, rins):
            if rin is not None and d and j in members:
                R[j] = _add(R.get(j), rin)
    for s in walk.stops:
        if s not in out:
            got = R.get(s)
            out[s] = got if got is not None else torch.zeros(trace.shapes[s], dtype=relevance.dtype,
                                                              device=relevance.device)
    return out
