"""The coverage table: what the engine does at every node of a model, before you trust a map.

    >>> table = coverage(torchvision.models.resnet50())
    >>> table[~table.conserved]          # where relevance is not conserved, and why
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .graph import INPUT, graph_of
from .presets import Preset, bind, get_preset
from .rules import Missing
from .walk import eval_mode, forward, plan, propagate

__all__ = ["coverage"]


def coverage(model: nn.Module, rules: str | Preset | dict = "paper", x: torch.Tensor | None = None,
             size: int = 224, seed: int = 0) -> Any:
    """One row per node: its name, op, kind, the rule the preset assigns and conservation.

    An LRP walk from the logits (the predicted class of ``x``; default: one random image of
    ``size`` x ``size``) measures, at every node relevance passes, ``ratio`` = relevance summed
    over its inputs / relevance at its output (biases are ignored, so 1 where a rule
    conserves). ``conserved``: the ratio is 1 to 1e-4 (NaN ratios where nothing arrives
    count as conserved); ``reached``: relevance arrived there. A node without a rule shows
    the error its first call would raise.

    Returns a ``pandas.DataFrame`` indexed by node name with columns ``layer`` (the display
    name), ``op``, ``kind``, ``rule``, ``rule_conserves``, ``reached``, ``ratio``, ``conserved``.
    """
    import pandas as pd

    graph = graph_of(model)
    preset = get_preset(rules) if not isinstance(rules, Preset) else rules
    bound = bind(preset, graph)
    if x is None:
        conv = next((n.module for n in graph.nodes if isinstance(n.module, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else 3
        x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))
    ratios: dict[int, float] = {}
    errors: dict[int, str] = {}

    def observe(i: int, r: torch.Tensor, rins: list) -> None:
        total_in = sum(float(t.sum()) for t in rins if isinstance(t, torch.Tensor))
        total_in += sum(float(v.sum()) for t in rins if isinstance(t, dict) for v in t.values())
        out = float(r.sum()) if isinstance(r, torch.Tensor) else sum(float(v.sum()) for v in r.values())
        ratios[i] = total_in / out if out != 0 else float("nan")

    with torch.no_grad(), eval_mode(model):
        walk = plan(graph, bound, graph.output, [INPUT])
        trace = forward(graph, x, keep=walk.keep)
        logits = trace.out
        t = logits.argmax(1)
        R = torch.zeros_like(logits).scatter_(1, t[:, None], logits.gather(1, t[:, None]))
        try:
            propagate(graph, bound, trace, R, walk, observe=observe)
        except TypeError as exc:  # a node without a rule: the table says where
            errors[-2] = str(exc)
    rows = []
    for i, node in enumerate(graph.nodes):
        rule = bound[i][1]
        ratio = ratios.get(i, float("nan"))
        tensor = i in trace.shapes
        rows.append({
            "node": node.name,
            "layer": graph.name(i),
            "op": type(node.module).__name__ if node.module is not None else node.target,
            "kind": (node.kind or "unknown") if tensor else "value",
            "rule": (rule.reason if isinstance(rule, Missing) else repr(rule)) if tensor and node.data
            else "none: carries no relevance" + ("" if tensor else " (not a tensor)"),
            "rule_conserves": bool(rule.conserves) if tensor and node.data else True,
            "reached": i in ratios,
            "ratio": ratio,
            "conserved": bool(ratio != ratio or abs(ratio - 1) <= 1e-4),
        })
    table = pd.DataFrame(rows).set_index("node")
    table.attrs["error"] = errors.get(-2, "")
    return table
