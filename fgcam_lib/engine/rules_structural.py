"""Rules for the ops that route, add, gate or multiply signals: no weights of their own.

Residual ``add``, ``mul``, ``cat`` and ``x @ A`` read several inputs, so their rules are
:class:`~fgcam_lib.engine.rules_base.MultiRule`; sums over dimensions and splits read one.

    >>> Sum()(op, [a, b], R)             # [R_a, R_b] with R_a + R_b == R
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .rules_base import InputRelevance, MultiRule, Rule, safe_div, vjp

__all__ = ["Sum", "Gate", "Route", "HeldMatmul", "Reduce", "Split"]

Tensor = torch.Tensor


def _data_operands(xs: Sequence[Any], data: Sequence[bool] | None) -> list[int]:
    return [k for k, x in enumerate(xs) if isinstance(x, torch.Tensor) and (data is None or data[k])]


class Sum(MultiRule):
    """Residual ``add`` (``a + b + ...``): each operand gets its share of the sum.

    ``mode="sign"`` (default): where the sum ``z`` is >= 0 the shares are the positive parts,
    ``R_i = x+_i / sum_k x+_k R``; where ``z < 0`` the negative parts, ``x-_i / sum_k x-_k``.
    Each share lies in [0, 1], so nothing is amplified and relevance is conserved exactly
    (equal shares where every operand is 0). It is the z+ rule of the add (all weights 1),
    extended to negative sums: in a ResNet, where the add feeds a ReLU and z+ sits above it,
    relevance only arrives where ``z > 0`` and both coincide; MobileNetV2 and ConvNeXt add
    without a ReLU after, which the negative half covers.
    ``mode="proportional"``: ``R_i = x_i / (z + eps sign z) R`` (zennit's ``Sum`` + ``Norm``;
    signed shares, unstable where ``a ~ -b``). Constant operands (a bias) get no share, unless
    ``absorb=True`` (proportional mode): then a constant (a position embedding) keeps its share,
    as the epsilon rule's bias does and gradient x input implies.
    """

    def __init__(self, mode: str = "sign", epsilon: float = 1e-9, absorb: bool = False):
        if mode not in ("sign", "proportional"):
            raise ValueError(f"unknown Sum mode {mode!r}; use 'sign' or 'proportional'")
        self.mode, self.epsilon, self.absorb = mode, epsilon, absorb

    @property
    def guarantee(self) -> str:
        return "always" if self.mode == "sign" else "where the sum is not near 0"

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        live = _data_operands(xs, data)
        out: list[InputRelevance] = [None] * len(xs)
        # a - b is a + (-b): the subtracted operand's share is that of its negation
        signed = [-x if k == 1 and getattr(op, "label", "") == "sub" and isinstance(x, torch.Tensor) else x
                  for k, x in enumerate(xs)]
        if self.mode == "proportional" and (self.absorb or len(live) > 1):
            # absorb: every tensor operand counts in z, so a constant keeps its share
            z = sum(x for x in (signed if self.absorb else [signed[k] for k in live]) if isinstance(x, torch.Tensor))
            s = R / (z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z))
            for k in live:
                out[k] = (signed[k] * s).sum_to_size(xs[k].shape)
            return out
        if len(live) == 1:
            out[live[0]] = R.sum_to_size(xs[live[0]].shape)
            return out
        parts = [signed[k] for k in live]
        z = parts[0] + parts[1]
        for x in parts[2:]:
            z = z + x
        # +1 where the sum is >= 0, else -1, in one pass; a sum of -0 only arises where every
        # operand is 0, and those get equal shares whatever the sign
        sign = torch.copysign(R.new_ones(()), z).to(R.dtype)
        # twice the part of each operand with the sum's sign
        nums = [torch.addcmul(x, x.abs(), sign) for x in parts]
        den = nums[0] + nums[1]
        for num in nums[2:]:
            den = den + num
        # every operand 0 (den == 0): equal shares, set below, so the division needs no clean-up;
        # counting zeros is cheaper than a boolean mask
        spread = int(torch.count_nonzero(den)) < den.numel()
        even = den == 0 if spread else None
        s = torch.div(R, den, out=den)
        for k, x, num in zip(live, parts, nums):
            share = num.mul_(s) if num.shape == s.shape else num * s
            if spread:
                share = torch.where(even, R / len(parts), share)
            out[k] = share.sum_to_size(x.shape)
        return out


class Gate(MultiRule):
    """Multiplication: ``x * s`` with ``s`` a gate (squeeze-excitation) or a parameter (layer
    scale, a constant factor). The gate is held constant and all relevance goes to the
    gated signal, ``R_x = R``, ``R_s = 0`` (Pahde et al. 2022's "signal-only gate"). The gate is the operand computed
    from the other one (``x * sigmoid(f(x))``, found in the graph); failing that, the one
    with fewer elements; a division's divisor. Two signals of one size, neither computed from
    the other (StarNet's ``act(a) * b``, a gated MLP), share the relevance evenly: AttnLRP's
    uniform rule for products (Achtibat et al. 2024)."""

    reads_input = False

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        live = _data_operands(xs, data)
        out: list[InputRelevance] = [None] * len(xs)
        gate = getattr(op, "gate", None)
        if len(live) == 1:
            signal = live[0]
        elif getattr(op, "label", "") in ("truediv", "div"):
            signal = live[0]
        elif gate is not None and len(xs) == 2 and len(live) == 2:
            signal = 1 - gate
        else:
            sizes = [xs[k].numel() for k in live]
            if sizes.count(max(sizes)) > 1:
                for k in live:
                    out[k] = (R / len(live)).sum_to_size(xs[k].shape)
                return out
            signal = live[sizes.index(max(sizes))]
        out[signal] = R.sum_to_size(xs[signal].shape)
        return out


def _cat_dim(op: Any) -> int:
    dim = op.arg(1, "dim", 0) if hasattr(op, "arg") else 0
    return int(dim)


class Route(MultiRule):
    """Index ops (flatten, view, reshape, permute, transpose, getitem, cat, chunk, split):
    relevance goes back to the element it came from, ``R_in = T^T R`` with ``T`` the op's
    0/1 index map. Conserves."""

    reads_input = False

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        label = getattr(op, "label", "")
        if label in ("cat", "concat", "stack"):
            dim = _cat_dim(op)
            pieces = R.unbind(dim) if label == "stack" else R.split([x.shape[dim] for x in xs], dim)
            return [p if data is None or d else None for p, d in zip(pieces, data)]  # constants take none
        (x,) = xs  # index ops read one tensor (or one tuple of tensors)
        if isinstance(x, torch.Tensor) and (isinstance(op, nn.Flatten) or label in (
                "flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous", "Flatten", "Unflatten")):
            return [R.reshape(x.shape)]
        if isinstance(x, (tuple, list)):  # getitem on the output of chunk/split
            index = op.arg(1, "idx")
            return [{int(index): R}]
        return [_transpose(op, x, R)]


def _zeros_like(x: Any, ref: Tensor) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_zeros_like(v, ref) for v in x)
    return torch.zeros(x.shape, dtype=ref.dtype, device=ref.device, requires_grad=True)


def _transpose(op: Callable, x: Tensor, R: Any) -> Tensor:
    """``R`` pulled back through a linear index op (its vector-Jacobian product)."""
    ref = next(iter(R.values())) if isinstance(R, dict) else R
    with torch.enable_grad():
        z = _zeros_like(x, ref)
        y = op(z)
        if isinstance(R, dict):  # a tuple output with relevance at some of its items
            outs, grads = [y[k] for k in R], list(R.values())
        else:
            outs, grads = [y], [R]
        (g,) = torch.autograd.grad(outs, z, grads, allow_unused=True)
    return torch.zeros(x.shape, dtype=ref.dtype, device=ref.device) if g is None else g


class HeldMatmul(MultiRule):
    """``x @ A`` where ``A`` is computed from ``x`` (an attention map, a context gate) or is a
    parameter: ``A`` is held constant, so the product is a linear map of ``x`` with weights ``A``,
    and relevance goes to ``x`` by the z+ rule on it (CP-LRP's "attention held constant", Ali et
    al. 2022): ``R_i = sum_j (x+_i A+_ij + x-_i A-_ij) / z_j R_j``. ``flat=True``: an output with
    no positive contribution spreads its relevance over the entries of ``x`` it reads."""

    def __init__(self, flat: bool = False):
        self.flat = flat

    @property
    def guarantee(self) -> str:
        return "always" if self.flat else "where an input contributes positively"

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        live = _data_operands(xs, data)
        gate = getattr(op, "gate", None)
        if len(live) == 1:
            signal = live[0]
        elif gate is not None and len(xs) == 2:
            signal = 1 - gate
        else:
            raise TypeError("matmul of two signals, neither computed from the other: no default rule; "
                            "give this node a rule by name")
        x, A = xs[signal], xs[1 - signal]

        def f(t: Tensor, weights: Tensor) -> Tensor:
            return op(*[t if k == signal else weights for k in range(len(xs))])

        xp, Ap = x.clamp(min=0), A.clamp(min=0)
        has_neg = bool(x.min() < 0)  # after a ReLU: no negative half to compute
        z = f(xp, Ap)
        if has_neg:
            xn, An = x.clamp(max=0), A.clamp(max=0)
            z = z + f(xn, An)
        s = safe_div(R, z)
        out = xp * vjp(lambda t: f(t, Ap), xp, s)
        if has_neg:
            out = out + xn * vjp(lambda t: f(t, An), xn, s)
        if self.flat:
            lost = torch.where(z == 0, R, torch.zeros_like(R))
            if bool(lost.any()):
                reads = (A != 0).to(R.dtype)
                ones = torch.ones_like(x)
                out = out + vjp(lambda t: f(t, reads), ones, safe_div(lost, f(ones, reads)))
        result: list[InputRelevance] = [None] * len(xs)
        result[signal] = out
        return result


class Reduce(Rule):
    """A sum (or mean) over dimensions, ``x.sum(dim)``: each summand gets its share, the z-rule
    with all weights 1 as :class:`Sum` (``mode="sign"``): ``R_i = x+_i / sum_k x+_k R`` where
    the sum is >= 0, ``x-_i / sum_k x-_k R`` where it is < 0; equal shares where every
    summand is 0. Conserves."""

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        z = module(x)
        up = functools.partial(vjp, module, x)  # broadcast an output-shaped tensor back onto x
        positive = up(torch.where(z >= 0, 1.0, 0.0).to(R.dtype)) > 0
        num = torch.where(positive, x.clamp(min=0), x.clamp(max=0))
        den = module(num)
        even = torch.where(den == 0, safe_div(R, module(torch.ones_like(x))), torch.zeros_like(R))
        return num * up(safe_div(R, den)) + up(even)


class Split(Rule):
    """chunk / split / unbind: the relevance of each piece goes back to its slice,
    ``R_in = T^T R`` as in :class:`Route`."""

    reads_input = False

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        return _transpose(module, x, R)
