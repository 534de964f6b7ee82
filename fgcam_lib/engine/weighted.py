"""Weighted layers (convolutions, linear maps) as plain tensors and settings.

Relevance rules for weighted layers need the weight, the layer's geometry (stride, padding,
dilation, groups) and nothing else. A :class:`Weighted` holds exactly that, whatever the
layer came from: an ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` module, a functional
``F.conv2d(x, w, b, ...)`` call whose weight is a parameter or computed from parameters
(weight standardisation), a conv with the BatchNorm after it folded in, or a library conv that
pads itself per call (TensorFlow "same" padding). The model is never changed: folded and
computed weights are new tensors.

    >>> lin = weighted_of(torch.nn.Conv2d(3, 8, 3, padding=1))
    >>> lin.forward(x, lin.weight).shape == conv(x).shape   # bias-free forward
    >>> lin.transpose(s, lin.weight, x.shape)               # sum_j w_ij s_j, the input's shape
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import qualname

__all__ = ["Weighted", "weighted_of", "functional_weighted", "fold_bn", "bn_parts", "bn_module_parts", "same_padding", "register_conv_leaf",
           "clear_weight_cache"]

Tensor = torch.Tensor


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _sides(pads: Sequence[int], dims: int) -> list[tuple[int, int]]:
    """``F.pad``-order pads (last dimension first) as (before, after) per spatial dimension, in order."""
    return [(pads[2 * (dims - 1 - k)], pads[2 * (dims - 1 - k) + 1]) for k in range(dims)]


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> tuple[int, ...]:
    """TensorFlow's "same" padding for an input of spatial ``size``, in ``F.pad`` order (last
    dimension first, (left, right) pairs): ``pad = max((ceil(i / s) - 1) s + (k - 1) d + 1 - i, 0)``,
    the smaller half before."""
    out: list[int] = []
    for i, k, s, d in reversed(list(zip(size, kernel, stride, dilation))):
        total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


@dataclass(eq=False)
class Weighted:
    """A convolution (1-d or 2-d) or a linear layer, bias-free forward and its transpose.

    ``dims``: 0 for linear, else the number of spatial dimensions. ``pad``: zero padding the
    layer applies to its input before the convolution (``F.pad`` order), a fixed tuple or
    ``"same"`` (TensorFlow's, computed from each input's size). ``border``: the input itself
    carries a zero border of that size (a pad op fused in): those positions are not inputs.
    ``source``: the parameter the weight is (for the weight-part cache), None when computed.
    """

    weight: Tensor
    bias: Tensor | None
    dims: int
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    pad: tuple[int, ...] | str | None = None
    border: tuple[int, ...] | None = None
    source: Tensor | None = None

    # -- geometry ------------------------------------------------------------------
    def _pads(self, shape: Sequence[int]) -> tuple[int, ...] | None:
        if self.pad == "same":
            kernel = self.weight.shape[2:]
            pads = same_padding(shape[2:], kernel, self.stride, self.dilation)
            return pads if any(pads) else None
        return self.pad if self.pad and any(self.pad) else None

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """``sum_i x_i w_ij``: the layer without its bias, with ``w`` in place of its weight."""
        if self.dims == 0:
            return F.linear(x, w)
        pads = self._pads(x.shape)
        if pads is not None:
            x = F.pad(x, pads)
        conv = F.conv2d if self.dims == 2 else F.conv1d
        return conv(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s: Tensor, w: Tensor, shape: Sequence[int]) -> Tensor:
        """``sum_j w_ij s_j``: the gradient of :meth:`forward` w.r.t. its input (of ``shape``)."""
        if self.dims == 0:
            return s @ w
        pads = self._pads(shape)
        if pads is not None:
            sides = _sides(pads, len(shape) - 2)
            inner = list(shape[:2]) + [n + lo + hi for n, (lo, hi) in zip(shape[2:], sides)]
            g = self._transpose(s, w, torch.Size(inner))
            index = (slice(None), slice(None)) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(shape[2:], sides))
            return g[index]
        return self._transpose(s, w, torch.Size(shape))

    def _transpose(self, s: Tensor, w: Tensor, shape: torch.Size) -> Tensor:
        if self.dims == 2 and self.weight.shape[2:] == (1, 1) and self.padding == (0, 0) and self.groups == 1:
            # a 1x1 convolution's transpose is a matrix product (scattered onto the strided grid):
            # on CPU much faster than the generic backward-data kernel
            B, C = shape[0], shape[1]
            g = torch.matmul(w.reshape(w.shape[0], C).t(), s.reshape(B, s.shape[1], -1))
            if self.stride == (1, 1):
                return g.view(shape)
            out = s.new_zeros(shape)
            out[:, :, ::self.stride[0], ::self.stride[1]] = g.view(B, C, *s.shape[2:])
            return out
        # a real (uninitialised) input tensor: conv2d_input's expanded one is copied to contiguous
        return torch.ops.aten.convolution_backward(
            s, s.new_empty(shape), w, None, list(self.stride), list(self.padding), list(self.dilation), False,
            [0] * self.dims, self.groups, (True, False, False))[0]

    def bias_for(self, z: Tensor) -> Tensor:
        """The bias shaped to add to an output ``z``: on the last dimension for a linear layer (any
        leading dimensions, as tokens), on dimension 1 for a convolution."""
        assert self.bias is not None
        return self.bias if self.dims == 0 else self.bias.view(1, -1, *([1] * (z.dim() - 2)))

    def ones(self, x: Tensor, like: Tensor | None = None) -> Tensor:
        """1 at every input position of ``x`` (0 on a fused zero border): the flat rule's ``x``; with
        ``like``'s dtype and device (``x`` may be a meta tensor: only its shape is read)."""
        ref = x if like is None else like
        one = torch.ones(x.shape, dtype=ref.dtype, device=ref.device)
        if self.border is not None and any(self.border):
            index = (slice(None), slice(None)) + tuple(
                slice(lo, n - hi) for n, (lo, hi) in zip(x.shape[2:], _sides(self.border, x.dim() - 2)))
            mask = torch.zeros_like(one)
            mask[index] = 1
            return mask
        return one

    def with_border(self, border: tuple[int, ...]) -> "Weighted":
        return replace(self, border=border)

    def part(self, name: Hashable, make: Callable[[Tensor], Tensor]) -> Tensor:
        """A tensor made from the weight alone (its positive part, ...), cached per weight value
        when the weight is a parameter."""
        return _PARTS.get(self.source if self.source is not None else self.weight, name, make)


class _WeightParts:
    """Parts of a parameter (``w.clamp(min=0)``, ...) computed once per weight value.

    z-rules read the same positive/negative weight parts on every call; recomputing them
    costs a pass over every weight of the model. Entries are keyed by the parameter itself
    (held weakly: the cache never keeps a model alive and nothing is stored on the model) and
    stamped with its storage pointer, version counter, shape, strides, dtype and device, so
    an optimizer step, ``load_state_dict``, ``param.copy_`` under ``no_grad`` or
    ``param.data = ...`` gives fresh parts. Writes through ``param.data`` bypass the version
    counter: call :func:`clear_weight_cache` after them. Tensors that are not parameters
    (BN-folded weights, made afresh per call) are not cached.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, tuple, dict[Hashable, Tensor]]] = {}

    @staticmethod
    def _stamp(t: Tensor) -> tuple:
        return t.data_ptr(), t._version, t.shape, t.stride(), t.dtype, t.device

    def get(self, source: Tensor, part: Hashable, make: Callable[[Tensor], Tensor]) -> Tensor:
        """``make(source)`` (detached), from the cache while ``source`` is unchanged."""
        if not isinstance(source, nn.Parameter):
            return make(source.detach())
        key, stamp = id(source), self._stamp(source)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not source or entry[1] != stamp:
            ref = weakref.ref(source, lambda r, k=key: self._drop(k, r))
            entry = (ref, stamp, {})
            self._entries[key] = entry
        parts = entry[2]
        if part not in parts:
            parts[part] = make(source.detach())
        return parts[part]

    def _drop(self, key: int, ref: weakref.ref) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is ref:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


_PARTS = _WeightParts()


def clear_weight_cache() -> None:
    """Forget the cached weight parts (needed only after writes through ``param.data``)."""
    _PARTS.clear()


# ----------------------------------------------------------------------------------
# From modules and calls
# ----------------------------------------------------------------------------------
#: library convs that pad or transform their weight per call (fx leaves), by qualified class
#: name: a function ``module -> Weighted``. Filled by :func:`register_conv_leaf`.
_CONV_LEAVES: dict[str, Callable[[nn.Module], "Weighted"]] = {}


def register_conv_leaf(cls: type | str, make: Callable[[nn.Module], Weighted]) -> None:
    """Tell the engine how a conv module that is an fx leaf computes: ``make(module)`` returns
    its :class:`Weighted` (weight as used, padding, ...). ``cls``: the class or its qualified name."""
    _CONV_LEAVES[cls if isinstance(cls, str) else qualname(cls)] = make


def _conv(weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int,
          pad: Any = None, source: Tensor | None = None) -> Weighted:
    """A convolution's :class:`Weighted`; PyTorch's ``padding="same"`` becomes fixed pads (the
    smaller half before), ``"valid"`` none."""
    dims = weight.dim() - 2
    stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
    if isinstance(padding, str):
        if padding == "same":
            totals = [d * (k - 1) for k, d in zip(weight.shape[2:], dilation)]
            pad = tuple(v for t in reversed(totals) for v in (t // 2, t - t // 2))
        padding = 0
    return Weighted(weight.detach(), bias.detach() if bias is not None else None, dims, stride,
                    _tuple(padding, dims), dilation, int(groups), pad, None, source)


def _conv_module(module: nn.Module, weight: Tensor, pad: Any = None, source: Tensor | None = None) -> Weighted:
    mode = getattr(module, "padding_mode", "zeros")
    if mode != "zeros":
        raise TypeError(f"{type(module).__name__} with padding_mode={mode!r} is not supported")
    return _conv(weight, module.bias, module.stride, module.padding, module.dilation, module.groups, pad, source)


def _linear(weight: Tensor, bias: Tensor | None) -> Weighted:
    return Weighted(weight.detach(), bias.detach() if bias is not None else None, 0,
                    source=weight if isinstance(weight, nn.Parameter) else None)


def weighted_of(module: Any) -> Weighted:
    """The :class:`Weighted` of an ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` (subclasses that pad
    themselves need :func:`register_conv_leaf`), or a :class:`Weighted` as it is."""
    if isinstance(module, Weighted):
        return module
    make = _CONV_LEAVES.get(qualname(type(module))) if isinstance(module, nn.Module) else None
    if make is not None:
        return make(module)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if type(module).forward not in (nn.Conv1d.forward, nn.Conv2d.forward):
            raise TypeError(f"{type(module).__name__} subclasses {type(module).__mro__[1].__name__} with a forward "
                            "of its own: tell the engine what it computes with "
                            "fgcam_lib.engine.register_conv_leaf")
        return _conv_module(module, module.weight, source=module.weight)
    if isinstance(module, nn.Linear):
        return _linear(module.weight, module.bias)
    raise TypeError(f"{type(module).__name__} is not a weighted layer")


def functional_weighted(fn: Any, args: Sequence[Any], kwargs: dict) -> Weighted:
    """The :class:`Weighted` of ``F.conv1d/conv2d/linear(x, weight, bias, ...)`` with the argument
    values (the input's slot unused)."""
    def arg(k: int, name: str, default: Any) -> Any:
        return kwargs[name] if name in kwargs else args[k] if k < len(args) else default

    weight, bias = arg(1, "weight", None), arg(2, "bias", None)
    if fn is F.linear:
        return _linear(weight, bias)
    return _conv(weight, bias, arg(3, "stride", 1), arg(4, "padding", 0), arg(5, "dilation", 1), arg(6, "groups", 1),
                 source=weight if isinstance(weight, nn.Parameter) else None)


def bn_parts(weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor,
             eps: float) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``scale * x + shift`` per channel."""
    scale = 1 / torch.sqrt(var.detach() + eps)
    if weight is not None:
        scale = weight.detach() * scale
    shift = -mean.detach() * scale
    if bias is not None:
        shift = shift + bias.detach()
    return scale, shift


def bn_module_parts(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """An eval-mode BatchNorm module (or one like it: ``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``eps``) as ``(scale, shift)``; None without running statistics."""
    if getattr(bn, "running_mean", None) is None:
        return None
    affine = getattr(bn, "affine", True)
    return bn_parts(getattr(bn, "weight", None) if affine else None, getattr(bn, "bias", None) if affine else None,
                    bn.running_mean, bn.running_var, bn.eps)


def fold_bn(conv: Weighted | nn.Module, bn: nn.Module | tuple[Tensor, Tensor]) -> Weighted:
    """A conv followed by eval-mode BatchNorm as one conv: new tensors, the model untouched.

    ``bn``: a BatchNorm module (see :func:`bn_module_parts`) or its ``(scale, shift)``.
    """
    lin = weighted_of(conv)
    parts = bn if isinstance(bn, tuple) else bn_module_parts(bn)
    if parts is None:
        raise ValueError(f"{type(bn).__name__} keeps no running statistics: there is nothing to fold")
    scale, shift = parts
    w = lin.weight * scale.view(-1, *([1] * (lin.weight.dim() - 1)))
    b = (lin.bias * scale if lin.bias is not None else 0) + shift
    return replace(lin, weight=w, bias=b, source=None)


# ----------------------------------------------------------------------------------
# timm's convs that are fx leaves (known by name: importing the engine does not import timm)
# ----------------------------------------------------------------------------------
def _standardised(w: Tensor, eps: float, gain: Tensor | None = None) -> Tensor:
    """Weight standardisation: each output filter to zero mean and unit (biased) variance."""
    flat = w.reshape(w.shape[0], -1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    out = (flat - mean) / torch.sqrt(var + eps)
    if gain is not None:
        out = out * gain.reshape(-1, 1)
    return out.reshape_as(w)


def _timm_conv2d_same(m: nn.Module) -> Weighted:
    return _conv_module(m, m.weight, pad="same", source=m.weight)


def _timm_std_conv2d_same(m: nn.Module) -> Weighted:
    w = _standardised(m.weight.detach(), m.eps)
    return _conv_module(m, w, pad="same" if m.same_pad else None)


def _timm_scaled_std_conv2d_same(m: nn.Module) -> Weighted:
    w = _standardised(m.weight.detach(), m.eps, (m.gain * m.scale).detach())
    return _conv_module(m, w, pad="same" if m.same_pad else None)


register_conv_leaf("timm.layers.conv2d_same.Conv2dSame", _timm_conv2d_same)
register_conv_leaf("timm.layers.std_conv.StdConv2dSame", _timm_std_conv2d_same)
register_conv_leaf("timm.layers.std_conv.ScaledStdConv2dSame", _timm_scaled_std_conv2d_same)
