"""Relevance rules: how one op passes relevance from its output to its inputs.

A rule is a small object with one job. It is called as ``rule(module, x, R)`` with the
op's input ``x`` (B x ...) and the relevance ``R`` at its output (the shape of the
op's output) and returns the relevance at its input (the shape of ``x``). Ops with several
inputs (residual ``add``, ``cat``, a gating ``mul``) have rules with ``multi = True``, called
as ``rule(op, xs, R, data)`` and returning one relevance (or None) per input. Rules are
linear in ``R`` for fixed inputs, which is what lets CLRP/SGLRP and FG-CAM reuse them.
A rule with ``reads_input = False`` needs only its inputs' shapes, so the forward keeps no
activation for it; ``conserves`` says whether the relevance summed over its inputs equals
the relevance at its output (biases ignored).

Weighted layers (Conv2d, Linear) use the z-rule family,
``R_i = sum_j x_i w_ij / z_j * R_j`` with a rule-specific choice of x, w and z.
Divisions by zero give zero (the authors' convention), so nothing is stabilised.

    >>> rule = ZPlus()
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> R_in = rule(conv, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 8))   # 1 x 3 x 8 x 8
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import channels_last_on_cpu
from .weighted import Weighted, weighted_of

Tensor = torch.Tensor


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0``."""
    # one division and one in-place pass: x/0 gives inf or nan, both set to 0
    return (num / den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _positive(w: Tensor) -> Tensor:
    return w.clamp(min=0)


def _negative(w: Tensor) -> Tensor:
    return w.clamp(max=0)


class Rule:
    """Base class: ``rule(module, x, R) -> R_in``."""

    #: called with all inputs at once: ``rule(op, xs, R, data) -> [R_in or None per input]``
    multi: bool = False
    #: reads the input's values (False: its shape only)
    reads_input: bool = True

    @property
    def guarantee(self) -> str:
        """What the rule promises about conservation (relevance summed over the inputs equals the
        output's, biases ignored): ``"always"``, a condition such as ``"where any input
        contributes"``, or ``"no"`` (a bias or a stabiliser takes a share)."""
        return "no" if getattr(self, "bias", False) else "always"

    @property
    def conserves(self) -> bool:
        """True when the rule conserves relevance everywhere (:attr:`guarantee` is ``"always"``)."""
        return self.guarantee == "always"

    def __call__(self, module: nn.Module, x: Tensor, R: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class Pass(Rule):
    """Relevance passes unchanged: activations (ReLU, ReLU6, SiLU, GELU, ...), BatchNorm in the
    paper preset, LayerNorm (its std held constant), Dropout and StochasticDepth in eval."""

    reads_input = False

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

    def _part(self, lin: Weighted, x: Tensor, R: Tensor, positive: bool, with_z: bool = False):
        # after a ReLU the negative inputs are all zero: skip their convolutions
        has_neg = bool(x.min() < 0)
        xp = x.clamp(min=0) if has_neg else x
        w_pos_in = lin.part("+", _positive) if positive else lin.part("-", _negative)
        z = lin.forward(xp, w_pos_in)
        if has_neg:
            xn = x.clamp(max=0)
            w_neg_in = lin.part("-", _negative) if positive else lin.part("+", _positive)
            z.add_(lin.forward(xn, w_neg_in))
        if self.bias and lin.bias is not None:
            b = lin.bias.clamp(min=0) if positive else lin.bias.clamp(max=0)
            z.add_(b.view(1, -1, *([1] * (z.dim() - 2))))
        s = safe_div(R, z) if with_z else torch.div(R, z, out=z).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        out = lin.transpose(s, w_pos_in, x.shape).mul_(xp)
        if has_neg:
            out.add_(lin.transpose(s, w_neg_in, x.shape).mul_(xn))
        return (out, z) if with_z else out

    def __call__(self, module, x, R):
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

    def __call__(self, module, x, R):
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
        return out + _flat(lin, x, lost)

    def __repr__(self) -> str:
        extra = (", conservative=True" if self.conservative else "") + (", flat=True" if self.flat else "")
        return f"ZPlus(bias={self.bias}{extra})"


def _flat(lin: Weighted, x: Tensor, R: Tensor) -> Tensor:
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

    def __call__(self, module, x, R):
        lin = weighted_of(module)
        z = lin.forward(x, lin.weight)
        if self.bias and lin.bias is not None:
            z = z + lin.bias.view(1, -1, *([1] * (z.dim() - 2)))
        z = z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)
        return x * lin.transpose(safe_div(R, z), lin.weight, x.shape)


class Flat(Rule):
    """flat rule: relevance spread uniformly over each output's receptive field (x = 1, w = 1)."""

    reads_input = False

    def __call__(self, module, x, R):
        return _flat(weighted_of(module), x, R)


class WSquare(Rule):
    """w^2 rule: relevance spread in proportion to the squared weights (x = 1)."""

    reads_input = False

    def __call__(self, module, x, R):
        lin = weighted_of(module)
        w2 = lin.weight.pow(2)
        ones = lin.ones(x, R)
        z = lin.forward(ones, w2)
        return lin.transpose(safe_div(R, z), w2, x.shape).mul_(ones)


Bounds = Callable[[Tensor], tuple[Tensor, Tensor]]


def image_bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image scalar bounds: min and max over each whole image (the authors' code)."""
    flat = x.flatten(1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return flat.min(1).values.view(shape), flat.max(1).values.view(shape)


def channel_bounds(mean: Sequence[float], std: Sequence[float]) -> Bounds:
    """Per-channel bounds of pixels in [0, 1] after ``(p - mean) / std``."""

    def bounds(x: Tensor) -> tuple[Tensor, Tensor]:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
        low, high = (0 - m) / s, (1 - m) / s
        if x.shape[1] != m.shape[1]:
            # pixels rearranged before the first weighted layer (a space-to-depth stem): the
            # box that holds every channel's range
            return low.amin(1, keepdim=True), high.amax(1, keepdim=True)
        return low, high

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
        lin = weighted_of(module)
        low, high = self.bounds(x)
        if lin.border is not None and any(lin.border):
            # a fused zero border is no input: its value is fixed at 0, outside [l, h]
            mask = lin.ones(x, x)
            low, high = low * mask, high * mask
        w = lin.weight
        wp, wn = lin.part("+", _positive), lin.part("-", _negative)
        z = lin.forward(x, w) - self._bound_term(lin, low, high, wp, wn, x)
        if self.bias and lin.bias is not None:
            z = z + lin.bias.view(1, -1, *([1] * (z.dim() - 2)))
        s = safe_div(R, z)
        if lin.dims == 2 and lin.groups == 1:
            # the three transposes as one: the weights stacked along the input channels
            c = x.shape[1]
            stacked = lin.part("w,+,-", lambda v: torch.cat([v, v.clamp(min=0), v.clamp(max=0)], 1))
            g = lin.transpose(s, stacked, (x.shape[0], 3 * c, *x.shape[2:]))
            gx, gl, gh = g.split(c, 1)
        else:
            gx, gl, gh = (lin.transpose(s, v, x.shape) for v in (w, wp, wn))
        return (gx * x).sub_(gl * low).sub_(gh * high)

    @staticmethod
    def _bound_term(lin: Weighted, low: Tensor, high: Tensor, wp: Tensor, wn: Tensor, x: Tensor) -> Tensor:
        """``l w+ + h w-`` summed over each output's inputs. Bounds that are one number per
        image (or the same for every image) are convolved once, on one image: a constant
        image still needs the convolution, since zero padding makes the borders differ."""
        one = (1, *x.shape[1:])
        per_image = all(n == 1 for n in low.shape[1:]) and all(n == 1 for n in high.shape[1:])
        if per_image and low.dim() == x.dim() and high.dim() == x.dim():
            # a function of the weight and the input's size alone: cached with the weight parts
            key = (tuple(one), x.dtype, x.device)
            lw = lin.part(("ones*w+", key), lambda v: lin.forward(x.new_ones(one), v.clamp(min=0)))
            hw = lin.part(("ones*w-", key), lambda v: lin.forward(x.new_ones(one), v.clamp(max=0)))
            pad = (1,) * (lw.dim() - 1)
            return lw * low.reshape(-1, *pad) + hw * high.reshape(-1, *pad)
        if low.dim() == x.dim() and high.dim() == x.dim() and low.shape[0] == 1 and high.shape[0] == 1:
            return lin.forward(low.expand(one), wp) + lin.forward(high.expand(one), wn)
        return lin.forward(low.expand_as(x), wp) + lin.forward(high.expand_as(x), wn)


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xg), xg, s)
    return g


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

    def __call__(self, module, x, R):
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
            out = xp * _vjp(module, xp, safe_div(R, z))
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
            out = out + xn * _vjp(module, xn, safe_div(lost, zn))
            lost = torch.where(zn == 0, lost, torch.zeros_like(lost))
            if not self.flat or not bool(lost.any()):
                return out
        if _is_max(module):
            return out + _vjp(module, x, lost)  # the max's own gradient: all to the winner
        ones = torch.ones(x.shape, dtype=R.dtype, device=R.device)
        return out + _vjp(module, ones, safe_div(lost, module(ones)))

    def __repr__(self) -> str:
        extra = [k for k in ("conservative", "flat") if getattr(self, k)]
        return f"PoolZ({', '.join(f'{k}=True' for k in extra)})"


def _data_operands(xs: Sequence[Any], data: Sequence[bool] | None) -> list[int]:
    return [k for k, x in enumerate(xs) if isinstance(x, torch.Tensor) and (data is None or data[k])]


class Sum(Rule):
    """Residual ``add`` (``a + b + ...``): each operand gets its share of the sum.

    ``mode="sign"`` (default): where the sum ``z`` is >= 0 the shares are the positive parts,
    ``R_i = x+_i / sum_k x+_k R``; where ``z < 0`` the negative parts, ``x-_i / sum_k x-_k``.
    Each share lies in [0, 1], so nothing is amplified and relevance is conserved exactly
    (equal shares where every operand is 0). It is the z+ rule of the add (all weights 1),
    extended to negative sums: in a ResNet, where the add feeds a ReLU and z+ sits above it,
    relevance only arrives where ``z > 0`` and both coincide; MobileNetV2 and ConvNeXt add
    without a ReLU after, which the negative half covers.
    ``mode="proportional"``: ``R_i = x_i / (z + eps sign z) R`` (zennit's ``Sum`` + ``Norm``;
    signed shares, unstable where ``a ~ -b``). Constant operands (a bias) get no share.
    """

    multi = True

    def __init__(self, mode: str = "sign", epsilon: float = 1e-9):
        if mode not in ("sign", "proportional"):
            raise ValueError(f"unknown Sum mode {mode!r}; use 'sign' or 'proportional'")
        self.mode, self.epsilon = mode, epsilon

    @property
    def guarantee(self) -> str:
        return "always" if self.mode == "sign" else "where the sum is not near 0"

    def __call__(self, op, xs, R, data=None):
        live = _data_operands(xs, data)
        out: list[Tensor | None] = [None] * len(xs)
        if len(live) == 1:
            out[live[0]] = R.sum_to_size(xs[live[0]].shape)
            return out
        # a - b is a + (-b): the subtracted operand's share is that of its negation
        parts = [-xs[k] if k == 1 and getattr(op, "label", "") == "sub" else xs[k] for k in live]
        if self.mode == "proportional":
            z = sum(parts)
            s = R / (z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z))
            for k, x in zip(live, parts):
                out[k] = (x * s).sum_to_size(x.shape)
            return out
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


class Gate(Rule):
    """Multiplication: ``x * s`` with ``s`` a gate (squeeze-excitation) or a parameter (layer
    scale, a constant factor). The gate is held constant and all relevance goes to the
    gated signal (Pahde et al. 2022's "signal-only gate"). The gate is the operand computed
    from the other one (``x * sigmoid(f(x))``, found in the graph); failing that, the one
    with fewer elements; a division's divisor. Two signals of one size, neither computed from
    the other (StarNet's ``act(a) * b``, a gated MLP), share the relevance evenly: AttnLRP's
    uniform rule for products (Achtibat et al. 2024)."""

    multi = True
    reads_input = False

    def __call__(self, op, xs, R, data=None):
        live = _data_operands(xs, data)
        out: list[Tensor | None] = [None] * len(xs)
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


class Route(Rule):
    """Index ops (flatten, view, reshape, permute, transpose, getitem, cat, chunk, split):
    relevance goes back to the element it came from, the op's transpose. Conserves."""

    multi = True
    reads_input = False

    def __call__(self, op, xs, R, data=None):
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


class HeldMatmul(Rule):
    """``x @ A`` where ``A`` is computed from ``x`` (an attention map, a context gate) or is a
    parameter: ``A`` is held constant, so the product is a linear map of ``x`` with weights ``A``,
    and relevance goes to ``x`` by the z+ rule on it (CP-LRP's "attention held constant", Ali et
    al. 2022): ``R_i = sum_j (x+_i A+_ij + x-_i A-_ij) / z_j R_j``. ``flat=True``: an output with
    no positive contribution spreads its relevance over the entries of ``x`` it reads."""

    multi = True

    def __init__(self, flat: bool = False):
        self.flat = flat

    @property
    def guarantee(self) -> str:
        return "always" if self.flat else "where an input contributes positively"

    def __call__(self, op, xs, R, data=None):
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
        out = xp * _vjp(lambda t: f(t, Ap), xp, s)
        if has_neg:
            out = out + xn * _vjp(lambda t: f(t, An), xn, s)
        if self.flat:
            lost = torch.where(z == 0, R, torch.zeros_like(R))
            if bool(lost.any()):
                reads = (A != 0).to(R.dtype)
                ones = torch.ones_like(x)
                out = out + _vjp(lambda t: f(t, reads), ones, safe_div(lost, f(ones, reads)))
        result: list[Tensor | None] = [None] * len(xs)
        result[signal] = out
        return result


class Reduce(Rule):
    """A sum (or mean) over dimensions, ``x.sum(dim)``: each summand gets its share, the z-rule
    with all weights 1 as :class:`Sum` (``mode="sign"``): where the sum is >= 0 the positive
    summands share it, else the negative ones; equal shares where every summand is 0. Conserves."""

    def __call__(self, module, x, R):
        z = module(x)
        up = functools.partial(_vjp, module, x)  # broadcast an output-shaped tensor back onto x
        positive = up(torch.where(z >= 0, 1.0, 0.0).to(R.dtype)) > 0
        num = torch.where(positive, x.clamp(min=0), x.clamp(max=0))
        den = module(num)
        even = torch.where(den == 0, safe_div(R, module(torch.ones_like(x))), torch.zeros_like(R))
        return num * up(safe_div(R, den)) + up(even)


class Split(Rule):
    """chunk / split / unbind: the relevance of each piece goes back to its slice."""

    reads_input = False

    def __call__(self, module, x, R):
        return _transpose(module, x, R)


class Missing(Rule):
    """Placeholder for an op no preset knows: raises when relevance reaches it."""

    reads_input = False

    def __init__(self, reason: str):
        self.reason = reason

    @property
    def conserves(self) -> bool:
        return False

    def __call__(self, module, x, R):
        raise TypeError(self.reason)
