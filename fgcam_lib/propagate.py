"""Forward passes that keep what relevance rules need, and the propagation walk.

Positions follow :mod:`fgcam_lib.layers`: ``-1`` is the input, ``p`` the output of
``layers[p]``. One walk from a start position down to the shallowest requested
position yields the relevance at every position on the way, so maps at many layers
cost one propagation.

    >>> trace = forward(index.layers, x, keep_from=-1)
    >>> R = propagate(bind(paper(), index.layers), trace, R_logits, start=len(index) - 1, stops=[-1, 13])
    >>> R[-1].shape   # B x 3 x H x W relevance at the input
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from .layers import INPUT, Layer
from .rules import Pass, Rule

Tensor = torch.Tensor


@dataclass
class Trace:
    """A forward pass: activations at kept positions and every position's shape."""

    acts: dict[int, Tensor] = field(default_factory=dict)
    shapes: dict[int, torch.Size] = field(default_factory=dict)
    out: Tensor | None = None


def _needs_input(module: nn.Module) -> bool:
    return not isinstance(module, (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Flatten, nn.Identity))


def forward(
    layers: list[Layer],
    x: Tensor,
    keep_from: int = INPUT,
    keep: Iterable[int] = (),
    grad_from: int | None = None,
    stop: int | None = None,
) -> Trace:
    """Run the layers on ``x`` up to position ``stop`` (default: the logits).

    Keeps the activations at positions ``>= keep_from`` that some layer's rule reads
    (the input of every weighted or pooling layer), plus the positions in ``keep``.
    Positions below ``grad_from`` run without autograd; the activation at ``grad_from``
    becomes a leaf that requires grad, so gradients stop there.
    """
    stop = len(layers) - 1 if stop is None else stop
    keep = set(keep)
    trace = Trace()
    h = x
    if grad_from == INPUT:
        h = h.detach().requires_grad_(True)
    for p in range(INPUT, stop + 1):
        if p >= 0:
            module = layers[p].module
            with torch.set_grad_enabled(grad_from is not None and p > grad_from):
                h = torch.relu(h) if isinstance(module, nn.ReLU) else module(h)
            if p == grad_from:
                h = h.detach().requires_grad_(True)
        trace.shapes[p] = h.shape
        reader_needs = p + 1 < len(layers) and _needs_input(layers[p + 1].module)
        if p in keep or (p >= keep_from and reader_needs):
            trace.acts[p] = h
    trace.out = h
    return trace


def propagate(
    bound: list[tuple[nn.Module, Rule]],
    trace: Trace,
    relevance: Tensor,
    start: int,
    stops: Iterable[int],
    keep_all: bool = False,
) -> dict[int, Tensor]:
    """Walk relevance from position ``start`` down to each position in ``stops``.

    ``relevance`` has the shape of the activation at ``start``. Returns ``{position:
    relevance}`` for each stop (every position passed when ``keep_all``).
    """
    stops = set(stops)
    lowest = min(stops)
    if lowest > start:
        raise ValueError(f"cannot propagate upwards from position {start} to {lowest}")
    out: dict[int, Tensor] = {}
    R = relevance
    if start in stops or keep_all:
        out[start] = R
    for p in range(start, lowest, -1):
        module, rule = bound[p]
        if p - 1 in trace.acts:
            x = trace.acts[p - 1]
        elif isinstance(rule, Pass):
            x = torch.empty(trace.shapes[p - 1], device="meta")  # Pass reads the shape only
        else:
            raise RuntimeError(f"activation at position {p - 1} was not kept")
        R = rule(module, x if x.is_meta else x.detach(), R)
        if p - 1 in stops or keep_all:
            out[p - 1] = R
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
