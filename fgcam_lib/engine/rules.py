"""Relevance rules: how one op passes relevance from its output to its inputs.

A rule is a small object with one job, in one of two call shapes
(:mod:`~fgcam_lib.engine.rules_base`): a :class:`Rule` is called as ``rule(op, x, R)`` with
the op's input ``x`` (B x ...) and the relevance ``R`` at its output, and returns the
relevance at its input (the shape of ``x``); a :class:`MultiRule`, for ops with several inputs
(residual ``add``, ``cat``, a gating ``mul``, ``x @ A``), is called as ``rule(op, xs, R, data)``
and returns one relevance (or None) per input. Rules are linear in ``R`` for fixed inputs,
which is what lets CLRP/SGLRP and FG-CAM reuse them. A rule with ``reads_input = False``
needs only its inputs' shapes, so the forward keeps no activation for it; ``guarantee`` says
when the relevance summed over its inputs equals the relevance at its output (biases ignored).

This module gathers the families, each in its own module:

- :mod:`~fgcam_lib.engine.rules_weighted`: the z-rule family for weighted layers and pools,
  ``R_i = sum_j x_i w_ij / z_j * R_j`` (:class:`ZPlus`, :class:`AlphaBeta`, :class:`Epsilon`,
  :class:`Flat`, :class:`PoolZ`);
- :mod:`~fgcam_lib.engine.rules_input`: the layers that read the image (:class:`ZBeta`,
  :class:`WSquare`) and the pixels' bounds;
- :mod:`~fgcam_lib.engine.rules_structural`: adds, gates, index ops, sums, held products
  (:class:`Sum`, :class:`Gate`, :class:`Route`, :class:`Split`, :class:`Reduce`, :class:`HeldMatmul`);
- :mod:`~fgcam_lib.engine.rules_attention`: transformer ops (:class:`CPAttention`,
  :class:`AttnLRP`, :class:`HeldStd` for LayerNorm).

    >>> rule = ZPlus()
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> R_in = rule(conv, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 8))   # 1 x 3 x 8 x 8
"""
from __future__ import annotations

from .rules_attention import AttnLRP, CPAttention, HeldStd
from .rules_base import InputRelevance, Missing, MultiRule, Pass, Rule, safe_div
from .rules_input import Bounds, WSquare, ZBeta, channel_bounds, image_bounds
from .rules_structural import Gate, HeldMatmul, Reduce, Route, Split, Sum
from .rules_weighted import AlphaBeta, Epsilon, Flat, PoolZ, ZPlus

__all__ = [
    "Rule", "MultiRule", "InputRelevance", "Pass", "Missing", "safe_div",
    "ZPlus", "AlphaBeta", "Epsilon", "Flat", "PoolZ",
    "ZBeta", "WSquare", "Bounds", "image_bounds", "channel_bounds",
    "Sum", "Gate", "Route", "Split", "Reduce", "HeldMatmul", "CPAttention", "AttnLRP", "HeldStd",
]
