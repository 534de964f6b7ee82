"""Reports on one relevance walk: the coverage table (what the engine does at every node of a
model, before you trust a map) and the residual flow (how each residual add splits relevance
between its skip and its block).

    >>> table = coverage(torchvision.models.resnet50())
    >>> table[~table.conserved]          # where relevance is not conserved, and why
    >>> residual_flow(model, x)[["node", "stage", "skip_share", "block_share"]]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .dag import INPUT, Graph
from .presets import Preset, bind, get_preset
from .rules_base import Missing
from .tracing import graph_of
from .ops import eval_mode
from .tokens import grid_of
from .walk import forward, plan, propagate

__all__ = ["coverage", "residual_flow", "residual_roles", "ResidualRoles"]


def coverage(model: nn.Module, rules: str | Preset | dict = "paper", x: torch.Tensor | None = None,
             size: int = 224, seed: int = 0) -> Any:
    """One row per node: its name, op, kind, the rule the preset assigns and conservation.

    An LRP walk from the logits (the predicted class of ``x``; default: one random image of
    ``size`` x ``size``) measures, at every node relevance passes, ``ratio`` = relevance summed
    over its inputs / relevance at its output (biases are ignored, so 1 where a rule
    conserves) and ``lost`` = (relevance at its output - summed over its inputs) / the summed
    |relevance| the walk starts with: each node's share of what goes missing (negative where a
    node adds). ``conserved``: the ratio is 1 to 1e-4 (NaN ratios where nothing arrives count
    as conserved); ``reached``: relevance arrived there; ``rule_conserves``: what the rule
    guarantees (``"always"``, a condition such as ``"where an input contributes positively"``,
    or ``"no"``). A node without a rule shows the error its first call would raise.

    Returns a ``pandas.DataFrame`` indexed by node name with columns ``layer`` (the display
    name), ``op``, ``kind``, ``rule``, ``rule_conserves``, ``reached``, ``ratio``, ``lost``,
    ``conserved``.
    """
    import pandas as pd

    graph = graph_of(model)
    preset = get_preset(rules) if not isinstance(rules, Preset) else rules
    bound = bind(preset, graph)
    if x is None:
        x = torch.randn(1, graph.input_channels or 3, size, size, generator=torch.Generator().manual_seed(seed))
    ratios: dict[int, float] = {}
    losses: dict[int, float] = {}
    errors: dict[int, str] = {}

    def observe(i: int, r: torch.Tensor, rins: list) -> None:
        total_in = sum(float(t.double().sum()) for t in rins if isinstance(t, torch.Tensor))
        total_in += sum(float(v.double().sum()) for t in rins if isinstance(t, dict) for v in t.values())
        out = float(r.double().sum()) if isinstance(r, torch.Tensor) else sum(float(v.double().sum())
                                                                               for v in r.values())
        ratios[i] = total_in / out if out != 0 else float("nan")
        losses[i] = out - total_in

    with torch.no_grad(), eval_mode(model):
        walk = plan(graph, bound, graph.output, [INPUT])
        trace = forward(graph, x, keep=walk.keep)
        logits = trace.out
        t = logits.argmax(1)
        R = torch.zeros_like(logits).scatter_(1, t[:, None], logits.gather(1, t[:, None]))
        scale = float(R.abs().sum()) or 1.0
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
            "rule_conserves": rule.guarantee if tensor and node.data else "always",
            "reached": i in ratios,
            "ratio": ratio,
            "lost": losses.get(i, 0.0) / scale,
            "conserved": bool(ratio != ratio or abs(ratio - 1) <= 1e-4),
        })
    table = pd.DataFrame(rows).set_index("node")
    table.attrs["error"] = errors.get(-2, "")
    return table


# ----------------------------------------------------------------------------------
# The residual flow
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidualRoles:
    """Which operand of a two-signal ``add`` node is the skip and which the block, read off the graph.

    ``fork``: the latest node both operands depend on (the block's input; ``INPUT`` for the
    image). ``skip`` / ``block``: positions (0 or 1) among the add's tensor inputs.
    ``skip_kind``: ``"identity"`` when the skip operand is the fork itself, ``"projection"``
    when ops sit on the skip path (a strided 1x1 conv + BN, torchvision's ``downsample``);
    ``skip_path`` / ``block_path``: the ids of the nodes strictly between the fork and each
    operand, the operand included. ``ambiguous``: both paths hold as many weighted layers and
    as many nodes (two symmetric branches), so neither is a skip and no shares are reported.
    """

    node: int
    fork: int
    skip: int
    block: int
    skip_kind: str
    skip_path: tuple[int, ...]
    block_path: tuple[int, ...]
    ambiguous: bool = False


def _self_and_ancestors(graph: Graph, i: int) -> frozenset[int]:
    return graph.ancestors(i) | {i}


def residual_roles(graph: Graph, shapes: dict[int, Any] | None = None) -> list[ResidualRoles]:
    """Every ``add`` node of ``graph`` with two signal operands, with its skip and block told apart.

    The fork is the latest common ancestor of the two operands. Of the two paths from it,
    the skip is the one with fewer weighted layers (conv / linear), then fewer nodes: an
    identity skip has none, a projection skip one conv, a block two or more. Adds of a
    constant (a bias, a position embedding) or of three or more signals are left out.
    ``shapes`` (a forward's ``trace.shapes``) tells tensors from other values; without it
    every input counts as a tensor.

        >>> [(graph.name(r.node), r.skip_kind) for r in residual_roles(graph_of(resnet18))][:3]
        [('layer1.0.add', 'identity'), ('layer1.1.add', 'identity'), ('layer2.0.add', 'projection')]
    """
    out = []
    for i, node in enumerate(graph.nodes):
        if node.kind != "add" or not node.data:
            continue
        tensors = [j for j in node.inputs if shapes is None or j in shapes]
        signals = [k for k, j in enumerate(tensors) if j == INPUT or graph.nodes[j].data]
        if len(signals) != 2:
            continue
        a, b = (tensors[k] for k in signals)
        common = _self_and_ancestors(graph, a) & _self_and_ancestors(graph, b)
        fork = max(common) if common else INPUT
        below = _self_and_ancestors(graph, fork) if fork != INPUT else frozenset({INPUT})
        paths = [tuple(sorted(_self_and_ancestors(graph, j) - below)) if j != fork else () for j in (a, b)]
        weighted = [sum(graph.nodes[p].kind in ("conv", "linear") for p in path) for path in paths]
        keys = [(weighted[0], len(paths[0])), (weighted[1], len(paths[1]))]
        first_is_skip = keys[0] <= keys[1]
        s, k = (0, 1) if first_is_skip else (1, 0)
        out.append(ResidualRoles(
            node=i, fork=fork, skip=signals[s], block=signals[k],
            skip_kind="identity" if not paths[s] else "projection",
            skip_path=paths[s], block_path=paths[k], ambiguous=keys[0] == keys[1]))
    return out


def _stage_names(graph: Graph, shapes: dict[int, Any]) -> dict[tuple, str]:
    """Spatial size -> the name of the stage output at that size (ResNet: layer1..layer4)."""
    try:
        stages = graph.stages(shapes)
    except ValueError:  # no feature map before a head: name stages by their top-level module
        return {}
    return {tuple(shapes[p][2:]): graph.name(p) for p in stages}


def residual_flow(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    rules: str | Preset | dict = "paper",
    relevance: torch.Tensor | None = None,
    start: int | str | None = None,
    by_image: bool = False,
) -> Any:
    """The share of relevance each residual add passes to its skip and to its block.

    One relevance walk, LRP from the target logit (``target``: None = each image's top-1
    class, an int, or one class per image) with ``rules``; or, with ``relevance`` (the shape
    of the activation at layer ``start``), that relevance walked down from ``start``, e.g.
    FG-CAM's components at its component layer. At every ``add`` with two signal operands
    (see :func:`residual_roles` for how the skip is found) and for every image,

        skip_share = sum R_skip / sum R_out,    block_share = sum R_block / sum R_out,

    summed over channels and positions, ``R_out`` the relevance at the add's output. With
    the default ``Sum`` rule (sign mode) both lie in [0, 1] and add up to 1; with
    ``Sum("proportional")`` they may leave [0, 1]. Adds the walk does not pass (above
    ``start``) have no rows; adds whose output received no relevance have NaN shares.

    Returns a ``pandas.DataFrame`` with one row per add node (``by_image=False``: shares
    averaged over the images, ``n_images`` of them; ``by_image=True``: one row per add and
    image, with column ``image``) and columns ``node`` (the add's name), ``stage`` (the stage
    output at the add's resolution, ``"layer1"`` .. ``"layer4"`` on a ResNet), ``block`` (the
    module the add belongs to), ``resolution`` (``"h x w"``), ``skip`` (``"identity"`` or
    ``"projection"``), ``skip_via`` (the skip operand's layer name), ``relevance`` (sum R_out),
    ``skip_share``, ``block_share``, in forward order. The model is not changed.

        >>> flow = residual_flow(model, x)                       # LRP from each image's top class
        >>> flow.groupby("stage", sort=False)[["skip_share", "block_share"]].mean()
        >>> step = fg.components_at_top(x)                       # or FG-CAM's components
        >>> residual_flow(model, x, relevance=step.components, start=fg.component_layer)
    """
    import pandas as pd

    graph = graph_of(model)
    preset = get_preset(rules) if not isinstance(rules, Preset) else rules
    bound = bind(preset, graph)
    top = graph.output if start is None else graph.position(start)
    if (relevance is None) != (start is None):
        raise ValueError("pass relevance and start together (or neither, for LRP from the logits)")
    if top == INPUT:
        raise ValueError("start cannot be the input: nothing is walked below it")
    shares: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    roles: dict[int, ResidualRoles] = {}

    def observe(i: int, r: Any, rins: list) -> None:
        role = roles.get(i)
        if role is None or not isinstance(r, torch.Tensor):
            return
        total = r.flatten(1).sum(1).double()
        parts = [rins[k].flatten(1).sum(1).double() if isinstance(rins[k], torch.Tensor) else torch.zeros_like(total)
                 for k in (role.skip, role.block)]
        shares[i] = (total, parts[0], parts[1])

    with torch.no_grad(), eval_mode(model):
        walk = plan(graph, bound, top, [INPUT])
        trace = forward(graph, x, keep=walk.keep)
        roles = {r.node: r for r in residual_roles(graph, trace.shapes) if not r.ambiguous}
        if relevance is None:
            logits = trace.out
            t = _targets(target, logits)
            R = torch.zeros_like(logits).scatter_(1, t[:, None], logits.gather(1, t[:, None]))
        else:
            want = trace.shapes.get(top)
            grid = grid_of(graph, top, trace.shapes, tuple(x.shape[-2:])) if want is not None else None
            if grid is not None and tuple(relevance.shape) != tuple(want) and relevance.dim() == 4:
                relevance = grid.from_grid(relevance, want)  # given on the token grid (FG-CAM's components)
            if want is None or tuple(relevance.shape) != tuple(want):
                raise ValueError(f"relevance has shape {tuple(relevance.shape)}; the activation at "
                                 f"{graph.name(top)!r} has {tuple(want) if want is not None else 'no tensor'}")
            R = relevance.detach().to(trace.out)
        propagate(graph, bound, trace, R, walk, observe=observe)
    stage_of = _stage_names(graph, trace.shapes)
    rows = []
    for i, role in sorted(roles.items()):
        if i not in shares:
            continue
        total, skip, block = shares[i]
        shape = trace.shapes[i]
        spatial = tuple(shape[2:]) if len(shape) == 4 else ()
        name = graph.nodes[i].name
        for b in range(total.shape[0]):
            den = float(total[b])
            rows.append({
                "image": b,
                "node": name,
                "stage": stage_of.get(spatial, name.split(".")[0]),
                "block": name.rpartition(".")[0] or name,
                "resolution": " x ".join(map(str, spatial)) if spatial else "",
                "skip": role.skip_kind,
                "skip_via": graph.name(_tensor_inputs(graph, i, trace.shapes)[role.skip]),
                "relevance": den,
                "skip_share": float(skip[b]) / den if den != 0 else float("nan"),
                "block_share": float(block[b]) / den if den != 0 else float("nan"),
            })
    columns = ["image", "node", "stage", "block", "resolution", "skip", "skip_via", "relevance", "skip_share",
               "block_share"]
    table = pd.DataFrame(rows, columns=columns)
    if by_image:
        return table
    keys = ["node", "stage", "block", "resolution", "skip", "skip_via"]
    mean = table.groupby(keys, sort=False)[["relevance", "skip_share", "block_share"]].mean().reset_index()
    mean.insert(len(keys), "n_images", int(x.shape[0]))
    return mean


def _tensor_inputs(graph: Graph, i: int, shapes: dict[int, Any]) -> list[int]:
    """The inputs of node ``i`` the walk hands relevance to, in the order a rule sees them."""
    return [j for j in graph.nodes[i].inputs if j in shapes]


def _targets(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Classes explained, one per image: the top-1 class, or ``target`` broadcast to the batch."""
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(logits.shape[0])
    if t.numel() != logits.shape[0] or bool(((t < 0) | (t >= logits.shape[1])).any()):
        raise ValueError(f"target {t.tolist()} does not give one class in 0..{logits.shape[1] - 1} per image")
    return t
