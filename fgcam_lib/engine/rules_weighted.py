"""Rules of the z-rule family: weighted layers (Conv2d, Linear) and pools.

Weighted layers use ``R_i = sum_j x_i w_ij / z_j * R_j`` with a rule-specific choice of x,
w and z; pools the same formula with the pool's own weights (a max pool's: 1 for the winner).
Divisions by zero give zero (the authors' convention), so nothing is stabilised.

    >>> rule = ZPlus()
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> R_in = rule(conv, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 8))   # 1 x 3 x 8 x 8
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ops import channels_last_on_cpu
from .rules_base import Rule, negative_part, positive_part, safe_div, vjp
from .weighted import Weighted, weighted_of

__all__ = ["AlphaBeta", "ZPlus", "Epsilon", "Flat", "PoolZ", "flat_spread"]

Tensor = torch.Tensor


class AlphaBeta(Rule):
    """alpha-beta rule: positive and negative contributions normalised separately.

    ``R_i = sum_j (alpha * z+_ij / z+_j - beta * z-_ij / z-_j) R_j`` where ``z+_ij`` are
    the positive products ``x+ w+`` and ``x- w-`` and ``z-_ij`` the negative ones.
    ``bias=True`` adds the positive/negative parts of the bias to the denominators
    (relevance then leaks into the bias and is not conserved).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, bias: bool = False):
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must be 1 to conserve relevance, got {alpha} - {beta}")
        self.alpha, self.beta, self.bias = alpha, beta, bias

    def _part(self, lin: Weighted, x: Tensor, R: Tensor, positive: bool,
              with_z: bool = False) -> Any:
        """The positive (or negative) half's relevance, ``(relevance, z)`` when ``with_z``."""
        # after a ReLU the negative inputs are all zero: skip their convolutions; so are their
        # products with w- when no weight is negative (an attention map)
        has_neg = bool(x.min() < 0) and not (positive and getattr(lin, "nonnegative", False))
        xp = x.clamp(min=0) if has_neg else x
        w_pos_in = lin.part("+", positive_part) if positive else lin.part("-", negative_part)
        z = lin.forward(xp, w_pos_in)
        if has_neg:
            xn = x.clamp(max=0)
            w_neg_in = lin.part("-", negative_part) if positive else lin.part("+", positive_part)
            z.add_(lin.forward(xn, w_neg_in))
        if self.bias and lin.bias is not None:
            b = lin.bias_for(z)
            z.add_(b.clamp(min=0) if positive else b.clamp(max=0))
        s = safe_div(R, z) if with_z else torch.div(R, z, out=z).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        out = lin.transpose(s, w_pos_in, x.shape).mul_(xp)
        if has_neg:
            out.add_(lin.transpose(s, w_neg_in, x.shape).mul_(xn))
        return (out, z) if with_z else out

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        lin = weighted_of(module)
        out = self._part(lin, x, R, positive=True)
        if self.alpha != 1:
            out = self.alpha * out
        if self.beta:
            out = out - self.beta * self._part(lin, x, R, positive=False)
        return out


class ZPlus(AlphaBeta):
    """z+ rule (Eq. 5-6): ``R_i = sum_j (x+_i w+_ij + x-_i w-_ij) / z_j R_j``.

    With non-negative inputs (after a ReLU) this is the paper's Eq. 5; the ``x- w-`` term
    is the authors' code's handling of negative inputs, and zennit's ZPlus.

    An output with no positive contribution (``z_j = 0``) passes none of its relevance on.
    Relevance does arrive at such outputs in trained networks: an output whose window holds
    only zeros (after a ReLU) still has a value, the bias or the BatchNorm shift, and the
    layer above may give it relevance; signed activations (SiLU, Hardswish, a linear
    bottleneck) make ``z_j = 0`` happen with non-zero inputs too. Two ways to keep it:

    - ``flat=True`` (the canonical preset): such an output's relevance is spread flat over
      its window, as zennit's ``Flat`` rule (every input position weighs 1; zero padding
      does not count), so the rule conserves everywhere;
    - ``conservative=True``: it goes to the negative contributions,
      ``(x+ w- + x- w+) / z-_j``, so the rule conserves where any input contributes; with
      ``flat=True`` as well, the flat spread takes what is left.
    """

    def __init__(self, bias: bool = False, conservative: bool = False, flat: bool = False):
        super().__init__(alpha=1.0, beta=0.0, bias=bias)
        self.conservative, self.flat = conservative, flat

    @property
    def guarantee(self) -> str:
        if self.bias:
            return "no"
        if self.flat:
            return "always"
        return "where any input contributes" if self.conservative else "where an input contributes positively"

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        if not (self.conservative or self.flat):
            return super().__call__(module, x, R)
        lin = weighted_of(module)
        out, z = self._part(lin, x, R, positive=True, with_z=True)
        lost = torch.where(z == 0, R, torch.zeros_like(R))
        if not bool(lost.any()):
            return out
        if self.conservative:
            more, z = self._part(lin, x, lost, positive=False, with_z=True)
            out = out + more
            lost = torch.where(z == 0, lost, torch.zeros_like(lost))
            if not self.flat or not bool(lost.any()):
                return out
        return out + flat_spread(lin, x, lost)

    def __repr__(self) -> str:
        extra = (", conservative=True" if self.conservative else "") + (", flat=True" if self.flat else "")
        return f"ZPlus(bias={self.bias}{extra})"


def flat_spread(lin: Weighted, x: Tensor, R: Tensor) -> Tensor:
    """``R`` spread over each output's window, every input position weighing 1."""
    ones = lin.ones(x, R)
    ones_w = torch.ones_like(lin.weight, dtype=R.dtype)
    z = lin.forward(ones, ones_w)
    return lin.transpose(safe_div(R, z), ones_w, x.shape).mul_(ones)


class Epsilon(Rule):
    """epsilon rule: ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j``, ``z_j = sum_i x_i w_ij``."""

    guarantee = "no"  # the stabiliser absorbs some relevance

    def __init__(self, epsilon: float = 0.25, bias: bool = False):
        self.epsilon, self.bias = epsilon, bias

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        lin = weighted_of(module)
        z = lin.forward(x, lin.weight)
        if self.bias and lin.bias is not None:
            z = z + lin.bias_for(z)
        z = z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)
        return x * lin.transpose(safe_div(R, z), lin.weight, x.shape)


class Flat(Rule):
    """flat rule: relevance spread uniformly over each output's receptive field (x = 1, w = 1),
    ``R_i = sum_j 1 / n_j R_j`` with ``n_j`` the inputs in output ``j``'s window (zero padding
    not counted)."""

    reads_input = False

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        return flat_spread(weighted_of(module), x, R)


def _is_max(module: Any) -> bool:
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return True
    return "max" in str(getattr(module, "label", "")) or "max" in getattr(getattr(module, "fn", None), "__name__", "")


class PoolZ(Rule):
    """Pools: relevance in proportion to each (ReLU-clamped) input's share of the output.

    Average pools (module or functional, adaptive too, ``x.mean((2, 3))``):
    ``R_i = x+_i sum_j a_ij R_j / z_j`` with the pool's weights ``a``, computed as a
    vector-Jacobian product so overlapping windows are handled. Max pools: all relevance of
    an output goes to its winning input (the same formula, since only the winner counts).

    An output whose window has no positive input (``z_j = 0``) passes nothing on, unless:
    ``conservative=True``: its relevance is shared among the negative inputs instead (signed
    features, as ConvNeXt's before its global pool); ``flat=True`` (the canonical preset):
    what is left goes to the max pool's winner (the largest input, though <= 0), or, for
    average pools, flat over the window.
    """

    def __init__(self, conservative: bool = False, flat: bool = False):
        self.conservative, self.flat = conservative, flat

    @property
    def guarantee(self) -> str:
        if self.flat:
            return "always"
        return "where any input is non-zero" if self.conservative else "where an input is positive"

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        xp = x.clamp(min=0)
        if type(module) is nn.MaxPool2d and not module.ceil_mode and module.dilation in (1, (1, 1)):
            z, idx = channels_last_on_cpu(lambda t: F.max_pool2d(
                t, module.kernel_size, module.stride, module.padding, return_indices=True), xp)
            out = torch.zeros(xp.shape, dtype=xp.dtype, device=xp.device).flatten(2)
            keep = (z != 0).to(R.dtype)  # 0/0 -> 0, as in the z-rule
            out.scatter_add_(2, idx.flatten(2), (R * keep).flatten(2))
            out = out.view_as(xp)
        elif callable(module):
            z = module(xp)
            out = xp * vjp(module, xp, safe_div(R, z))
        else:
            raise TypeError(f"PoolZ does not handle {type(module).__name__}")
        if not (self.conservative or self.flat):
            return out
        lost = torch.where(z == 0, R, torch.zeros_like(R))
        if not bool(lost.any()):
            return out
        if self.conservative:
            xn = x.clamp(max=0)
            zn = module(xn)
            out = out + xn * vjp(module, xn, safe_div(lost, zn))
            lost = torch.where(zn == 0, lost, torch.zeros_like(lost))
            if not self.flat or not bool(lost.any()):
                return out
        if _is_max(module):
            return out + vjp(module, x, lost)  # the max's own gradient: all to the winner
        ones = torch.ones(x.shape, dtype=R.dtype, device=R.device)
        return out + vjp(module, ones, safe_div(lost, module(ones)))

    def __repr__(self) -> str:
        extra = [k for k in ("conservative", "flat") if getattr(self, k)]
        return f"PoolZ({', '.join(f'{k}=True' for k in extra)})"
