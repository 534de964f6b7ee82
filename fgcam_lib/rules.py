"""Relevance rules: how one layer passes relevance from its output to its input.

A rule is a small object with one job. It is called as ``rule(module, x, R)`` with the
layer's input ``x`` (B x ...) and the relevance ``R`` at its output (the shape of the
layer's output) and returns the relevance at its input (the shape of ``x``). Rules are
linear in ``R`` for a fixed ``x``, which is what lets CLRP/SGLRP and FG-CAM reuse them.

Weighted layers (Conv2d, Linear) use the z-rule family,
``R_i = sum_j x_i w_ij / z_j * R_j`` with a rule-specific choice of x, w and z.
Divisions by zero give zero (the authors' convention), so nothing is stabilised.

    >>> rule = ZPlus()
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> R_in = rule(conv, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 8))   # 1 x 3 x 8 x 8
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0``."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


class _Linear:
    """The layer as a linear map of (input, weight): forward and its transpose."""

    def __init__(self, module: nn.Module):
        self.module = module
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                raise TypeError(f"Conv2d with padding_mode={module.padding_mode!r} is not supported")
        elif not isinstance(module, nn.Linear):
            raise TypeError(f"{type(module).__name__} is not a weighted layer")
        # relevance is not differentiated: keep rules off the autograd graph
        self.weight = module.weight.detach()
        self.bias = module.bias.detach() if module.bias is not None else None

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w)

    def transpose(self, s: Tensor, w: Tensor, shape: torch.Size) -> Tensor:
        """``sum_j w_ij s_j``: the gradient of ``forward`` w.r.t. its input."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            return torch.nn.grad.conv2d_input(shape, w, s, m.stride, m.padding, m.dilation, m.groups)
        return s @ w


class Rule:
    """Base class: ``rule(module, x, R) -> R_in``."""

    def __call__(self, module: nn.Module, x: Tensor, R: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class Pass(Rule):
    """Relevance passes unchanged (ReLU, BatchNorm in the paper preset, Dropout, Flatten)."""

    def __call__(self, module, x, R):
        return R.reshape(x.shape)


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

    def _part(self, lin: _Linear, x: Tensor, R: Tensor, positive: bool) -> Tensor:
        w = lin.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        xp = x.clamp(min=0)
        # after a ReLU the negative inputs are all zero: skip their convolutions
        has_neg = bool((x < 0).any())
        xn = x.clamp(max=0) if has_neg else None
        w_pos_in, w_neg_in = (wp, wn) if positive else (wn, wp)
        z = lin.forward(xp, w_pos_in)
        if has_neg:
            z = z + lin.forward(xn, w_neg_in)
        if self.bias and lin.bias is not None:
            b = lin.bias.clamp(min=0) if positive else lin.bias.clamp(max=0)
            z = z + b.view(1, -1, *([1] * (z.dim() - 2)))
        s = safe_div(R, z)
        out = xp * lin.transpose(s, w_pos_in, x.shape)
        if has_neg:
            out = out + xn * lin.transpose(s, w_neg_in, x.shape)
        return out

    def __call__(self, module, x, R):
        lin = _Linear(module)
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
    """

    def __init__(self, bias: bool = False):
        super().__init__(alpha=1.0, beta=0.0, bias=bias)

    def __repr__(self) -> str:
        return f"ZPlus(bias={self.bias})"


class Epsilon(Rule):
    """epsilon rule: ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j``, ``z_j = sum_i x_i w_ij``."""

    def __init__(self, epsilon: float = 0.25, bias: bool = False):
        self.epsilon, self.bias = epsilon, bias

    def __call__(self, module, x, R):
        lin = _Linear(module)
        z = lin.forward(x, lin.weight)
        if self.bias and lin.bias is not None:
            z = z + lin.bias.view(1, -1, *([1] * (z.dim() - 2)))
        z = z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)
        return x * lin.transpose(safe_div(R, z), lin.weight, x.shape)


class Flat(Rule):
    """flat rule: relevance spread uniformly over each output's receptive field (x = 1, w = 1)."""

    def __call__(self, module, x, R):
        lin = _Linear(module)
        ones_w = torch.ones_like(lin.weight)
        z = lin.forward(torch.ones_like(x), ones_w)
        return lin.transpose(safe_div(R, z), ones_w, x.shape)


class WSquare(Rule):
    """w^2 rule: relevance spread in proportion to the squared weights (x = 1)."""

    def __call__(self, module, x, R):
        lin = _Linear(module)
        w2 = lin.weight.pow(2)
        z = lin.forward(torch.ones_like(x), w2)
        return lin.transpose(safe_div(R, z), w2, x.shape)


Bounds = Callable[[Tensor], tuple[Tensor, Tensor]]


def image_bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image scalar bounds: min and max over each whole image (the authors' code)."""
    flat = x.flatten(1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return flat.min(1).values.view(shape), flat.max(1).values.view(shape)


def channel_bounds(mean: Sequence[float], std: Sequence[float]) -> Bounds:
    """Per-channel bounds of pixels in [0, 1] after ``(p - mean) / std``."""

    def bounds(x: Tensor) -> tuple[Tensor, Tensor]:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (0 - m) / s, (1 - m) / s

    return bounds


class ZBeta(Rule):
    """z-beta (z-box) rule for the input layer (Eq. 7).

    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j`` with ``[l_i, h_i]`` the
    domain of input ``i``. ``bounds`` maps the input to ``(l, h)`` broadcastable to it:
    :func:`image_bounds` (paper preset) or :func:`channel_bounds` (canonical preset).
    """

    def __init__(self, bounds: Bounds = image_bounds, bias: bool = False):
        self.bounds, self.bias = bounds, bias

    def __call__(self, module, x, R):
        lin = _Linear(module)
        low, high = self.bounds(x)
        low, high = low.expand_as(x), high.expand_as(x)
        w = lin.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        z = lin.forward(x, w) - lin.forward(low, wp) - lin.forward(high, wn)
        if self.bias and lin.bias is not None:
            z = z + lin.bias.view(1, -1, *([1] * (z.dim() - 2)))
        s = safe_div(R, z)
        return x * lin.transpose(s, w, x.shape) - low * lin.transpose(s, wp, x.shape) - high * lin.transpose(s, wn, x.shape)


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xg), xg, s)
    return g


class PoolZ(Rule):
    """Pools: relevance in proportion to each (ReLU-clamped) input's share of the output.

    Average pools: ``R_i = x+_i sum_j a_ij R_j / z_j`` with the pool's weights ``a``.
    Max pools: all relevance of an output goes to its winning input (the same formula,
    since only the winner contributes to the max).
    """

    def __call__(self, module, x, R):
        xp = x.clamp(min=0)
        if isinstance(module, nn.MaxPool2d):
            if module.ceil_mode or module.dilation not in (1, (1, 1)):
                return xp * _vjp(module, xp, safe_div(R, module(xp)))
            z, idx = F.max_pool2d(xp, module.kernel_size, module.stride, module.padding, return_indices=True)
            out = torch.zeros_like(xp).flatten(2)
            keep = (z != 0).to(R.dtype)  # 0/0 -> 0, as in the z-rule
            out.scatter_add_(2, idx.flatten(2), (R * keep).flatten(2))
            return out.view_as(xp)
        if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return xp * _vjp(module, xp, safe_div(R, module(xp)))
        raise TypeError(f"PoolZ does not handle {type(module).__name__}")
