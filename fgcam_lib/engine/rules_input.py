"""Rules for the layers that read the image, and the domains of its pixels.

An input layer's inputs are pixels, not ReLU outputs: z+ would drop every negative pixel,
so these rules take the pixels' domain into account (z-beta) or ignore the input (w^2).

    >>> rule = ZBeta(channel_bounds(IMAGENET_MEAN, IMAGENET_STD))
    >>> R_in = rule(conv, x, R)          # x: the normalised image
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .rules_base import Rule, negative_part, positive_part, safe_div
from .weighted import Weighted, weighted_of

__all__ = ["ZBeta", "WSquare", "Bounds", "image_bounds", "channel_bounds"]

Tensor = torch.Tensor


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

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        lin = weighted_of(module)
        low, high = self.bounds(x)
        if lin.border is not None and any(lin.border):
            # a fused zero border is no input: its value is fixed at 0, outside [l, h]
            mask = lin.ones(x, x)
            low, high = low * mask, high * mask
        w = lin.weight
        wp, wn = lin.part("+", positive_part), lin.part("-", negative_part)
        z = lin.forward(x, w) - self._bound_term(lin, low, high, wp, wn, x)
        if self.bias and lin.bias is not None:
            z = z + lin.bias_for(z)
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


class WSquare(Rule):
    """w^2 rule: relevance spread in proportion to the squared weights (x = 1),
    ``R_i = sum_j w_ij^2 / sum_k w_kj^2 R_j``."""

    reads_input = False

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        lin = weighted_of(module)
        w2 = lin.weight.pow(2)
        ones = lin.ones(x, R)
        z = lin.forward(ones, w2)
        return lin.transpose(safe_div(R, z), w2, x.shape).mul_(ones)
