"""The engine: the model as a graph, per-op relevance rules, presets, the forward and the walk.

    >>> from fgcam_lib.engine import graph_of, coverage
    >>> graph_of(model).name(graph_of(model).default_component_layer())
    'layer4'
    >>> residual_flow(model, x)          # skip vs block share of relevance at every residual add
"""
from .dag import INPUT, Graph, Node
from .kinds import KINDS, OpKind, default_rules, kind_of
from .ops import is_vgg_style
from .presets import (IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preset, attn_lrp, bind, canonical, cp_lrp, get_preset,
                      paper)
from .rules import (AlphaBeta, AttnLRP, CPAttention, Epsilon, Flat, Gate, HeldMatmul, HeldStd, MultiRule, Pass, PoolZ,
                    Reduce, Route, Rule, Split, Sum, WSquare, ZBeta, ZPlus, channel_bounds, image_bounds)
from .tracing import LEAVES, chain_graph, fx_graph, graph_of, register_leaf
from .weighted import Weighted, fold_bn, register_conv_leaf, weighted_of
from .ops import eval_mode
from .walk import Trace, Walk, forward, plan, propagate

__all__ = [
    "INPUT", "Graph", "Node", "graph_of", "fx_graph", "chain_graph", "is_vgg_style", "kind_of",
    "LEAVES", "register_leaf", "Weighted", "weighted_of", "fold_bn", "register_conv_leaf",
    "Preset", "paper", "canonical", "cp_lrp", "attn_lrp", "get_preset", "PRESETS", "bind", "KINDS", "OpKind", "default_rules",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "Rule", "MultiRule", "ZPlus", "ZBeta", "Epsilon", "AlphaBeta", "Flat", "WSquare", "Pass", "PoolZ", "Sum", "Reduce",
    "Gate", "HeldMatmul", "Route", "Split", "CPAttention", "AttnLRP", "HeldStd", "channel_bounds", "image_bounds",
    "Trace", "Walk", "plan", "forward", "propagate", "eval_mode", "coverage",
    "residual_flow", "residual_roles",
]


def coverage(*args, **kwargs):
    """The coverage table, see :func:`fgcam_lib.engine.report.coverage` (imported lazily: pandas)."""
    from .report import coverage as _coverage

    return _coverage(*args, **kwargs)


def residual_flow(*args, **kwargs):
    """Skip and block shares at every residual add, see :func:`fgcam_lib.engine.report.residual_flow`
    (imported lazily: pandas)."""
    from .report import residual_flow as _residual_flow

    return _residual_flow(*args, **kwargs)


def residual_roles(*args, **kwargs):
    """Each add's skip and block operands, see :func:`fgcam_lib.engine.report.residual_roles`."""
    from .report import residual_roles as _residual_roles

    return _residual_roles(*args, **kwargs)
