"""Ops of a traced model: what kind each is (the key a preset maps to a rule) and how it runs.

A node runs a :class:`ModuleOp` (a module call; in-place activations run out of place), a
:class:`CallOp` (a function or method call whose tensor arguments are the node's inputs) or
a :class:`ConstOp` (a parameter read as a tensor). :func:`kind_of` and the tables below
give the op kinds of :data:`fgcam_lib.engine.presets.KINDS`.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kind_of", "is_vgg_style", "ModuleOp", "CallOp", "ConstOp", "function_kind", "method_kind", "channels_last_on_cpu",
           "fill", "map_slots", "qualname"]

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------
# Op kinds: what a preset maps to a rule
# ----------------------------------------------------------------------------------
_MODULE_KINDS: list[tuple[str, tuple[type, ...]]] = [
    ("conv", (nn.Conv1d, nn.Conv2d)),
    ("linear", (nn.Linear,)),
    ("maxpool", (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)),
    ("avgpool", (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)),
    ("bn", (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)),
    ("relu", (nn.ReLU,)),
    ("act", (nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardtanh,
             nn.Mish, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.Softmax, nn.SELU, nn.CELU, nn.Softplus)),
    ("norm", (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm2d, nn.RMSNorm)),
    ("pad", (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)),
    ("upsample", (nn.Upsample,)),
    ("reshape", (nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle)),
    ("other", (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity)),
]

_ACTIVATION_FUNCTIONS = {F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.elu, F.hardtanh,
                         F.mish, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.softmax, torch.softmax, F.selu,
                         F.celu, F.softplus, operator.pow, torch.pow, torch.square, torch.exp}


def _function_kinds() -> dict[Any, str]:
    kinds: dict[Any, str] = {}
    for fn in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub):
        kinds[fn] = "add"
    for fn in (operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div,
               torch.addcmul):
        kinds[fn] = "mul"
    for fn in (F.conv1d, F.conv2d):
        kinds[fn] = "conv"
    kinds[F.linear] = "linear"
    kinds[F.batch_norm] = "bn"
    kinds[F.pad] = "pad"
    kinds[F.interpolate] = "upsample"
    kinds[torch.sum] = "sum"
    for fn in (operator.matmul, torch.matmul, torch.bmm):
        kinds[fn] = "matmul"
    for fn in (F.relu, torch.relu):
        kinds[fn] = "relu"
    for fn in _ACTIVATION_FUNCTIONS:
        kinds[fn] = "act"
    for fn in (F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean):
        kinds[fn] = "avgpool"
    for fn in (F.max_pool2d, F.adaptive_max_pool2d):
        kinds[fn] = "maxpool"
    for fn in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
               operator.getitem, torch.channel_shuffle, F.pixel_shuffle, F.pixel_unshuffle, torch.roll,
               torch.swapaxes, torch.movedim):
        kinds[fn] = "reshape"
    kinds[torch.cat] = "cat"
    kinds[torch.concat] = "cat"
    kinds[torch.stack] = "cat"
    for fn in (torch.chunk, torch.split, torch.unbind):
        kinds[fn] = "split"
    for fn in (F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm, F.local_response_norm):
        kinds[fn] = "norm"
    for fn in (F.dropout, F.dropout2d):
        kinds[fn] = "other"
    return kinds


_FUNCTION_KINDS = _function_kinds()


def function_kind(fn: Any) -> str | None:
    """The op kind of a function such as ``torch.cat`` or ``operator.add``."""
    kind = _FUNCTION_KINDS.get(fn)
    # torchvision's stochastic depth (fx-wrapped), known by name so that importing the
    # engine does not import torchvision
    if kind is None and getattr(fn, "__name__", "") == "stochastic_depth" \
            and str(getattr(fn, "__module__", "")).startswith("torchvision."):
        return "other"
    return kind


def method_kind(name: str) -> str | None:
    """The op kind of a tensor method such as ``"view"``."""
    return _METHOD_KINDS.get(name)

_METHOD_KINDS = {
    "add": "add", "sub": "add", "mul": "mul", "div": "mul", "addcmul": "mul", "relu": "relu", "sigmoid": "act",
    "tanh": "act", "softmax": "act", "pow": "act", "square": "act", "exp": "act",
    "mean": "avgpool", "sum": "sum", "matmul": "matmul", "bmm": "matmul", "flatten": "reshape", "view": "reshape", "reshape": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape", "permute": "reshape", "transpose": "reshape",
    "contiguous": "reshape", "swapaxes": "reshape", "movedim": "reshape", "roll": "reshape", "expand": "reshape",
    "chunk": "split", "split": "split", "unbind": "split",
}


def kind_of(module: nn.Module) -> str | None:
    """The op kind of a module (``"conv"``, ``"bn"``, ...), or None when no preset knows it."""
    for kind, types in _MODULE_KINDS:
        if isinstance(module, types):
            return kind
    return None


def is_vgg_style(model: nn.Module) -> bool:
    """A flat ``features`` Sequential of leaf modules plus a ``classifier``: the paper's indices apply."""
    feats = getattr(model, "features", None)
    return (isinstance(feats, nn.Sequential) and hasattr(model, "classifier")
            and all(not list(c.children()) for c in feats))


# ----------------------------------------------------------------------------------
# Ops: how a node computes its output, always out of place
# ----------------------------------------------------------------------------------
_OUT_OF_PLACE: dict[type, Callable[[nn.Module, Tensor], Tensor]] = {
    nn.ReLU: lambda m, x: torch.relu(x),
    nn.ReLU6: lambda m, x: F.relu6(x),
    nn.Hardswish: lambda m, x: F.hardswish(x),
    nn.Hardsigmoid: lambda m, x: F.hardsigmoid(x),
    nn.SiLU: lambda m, x: F.silu(x),
    nn.LeakyReLU: lambda m, x: F.leaky_relu(x, m.negative_slope),
    nn.ELU: lambda m, x: F.elu(x, m.alpha),
    nn.Hardtanh: lambda m, x: F.hardtanh(x, m.min_val, m.max_val),
    nn.Mish: lambda m, x: F.mish(x),
}


def channels_last_on_cpu(fn: Callable[[Tensor], Any], x: Tensor) -> Any:
    """``fn(x)`` for a contiguous CPU image batch run in channels-last, each output returned
    contiguous. For max pools (with or without indices): about 10x faster there, and a max
    moves no values, so outputs and indices are the same. Anything else: ``fn(x)``."""
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return fn(x)
    out = fn(x.contiguous(memory_format=torch.channels_last))
    return tuple(t.contiguous() for t in out) if isinstance(out, tuple) else out.contiguous()


def _max_pool(m: nn.MaxPool2d, x: Tensor) -> Tensor:
    return channels_last_on_cpu(m, x)


class ModuleOp:
    """Calls a module; activations that were built ``inplace=True`` run out of place."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._fn = _OUT_OF_PLACE.get(type(module)) if getattr(module, "inplace", False) else None
        if self._fn is None and isinstance(module, nn.MaxPool2d) and not module.return_indices:
            self._fn = _max_pool

    def __call__(self, *xs: Any) -> Any:
        if self._fn is not None:
            return self._fn(self.module, xs[0])
        if getattr(self.module, "inplace", False):  # other in-place modules: keep the input intact
            return self.module(xs[0].clone(), *xs[1:])
        return self.module(*xs)


class Slot:
    """Stands for the value of input ``i`` inside a call's arguments."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def map_slots(a: Any, f: Callable[["Slot"], Any]) -> Any:
    """``a`` (a call's arguments: nested tuples, lists, dicts, slices) with each :class:`Slot` ``s``
    replaced by ``f(s)``."""
    if isinstance(a, Slot):
        return f(a)
    if isinstance(a, (list, tuple)):
        return type(a)(map_slots(v, f) for v in a)
    if isinstance(a, dict):
        return {k: map_slots(v, f) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(map_slots(a.start, f), map_slots(a.stop, f), map_slots(a.step, f))
    return a


def fill(a: Any, vals: tuple) -> Any:
    """``a`` with each slot replaced by its input's value."""
    return map_slots(a, lambda slot: vals[slot.i])


def qualname(cls: type) -> str:
    """``"package.module.Class"``: how leaf and conv registries name a class without importing it."""
    return f"{cls.__module__}.{cls.__qualname__}"


class CallOp:
    """A function or method call whose tensor arguments are the node's inputs."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, label: str):
        self.fn, self.args, self.kwargs, self.label = fn, args, kwargs, label

    def __call__(self, *vals: Any) -> Any:
        return self.fn(*fill(self.args, vals), **fill(self.kwargs, vals))

    def bind(self, values: dict[int, Any]) -> "CallOp":
        """The same call with inputs ``values`` ({input index: value}) filled in; the other inputs
        become the new call's inputs, in order."""
        used: set[int] = set()
        map_slots((self.args, self.kwargs), lambda slot: used.add(slot.i))
        renumber = {i: Slot(n) for n, i in enumerate(sorted(used - set(values)))}

        def sub(slot: Slot) -> Any:
            return values[slot.i] if slot.i in values else renumber[slot.i]

        out = CallOp(self.fn, map_slots(self.args, sub), map_slots(self.kwargs, sub), self.label)
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("fn", "args", "kwargs", "label")})
        return out

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        """A literal argument, by position (after the tensor) or keyword."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if position < len(self.args) else default

    def __repr__(self) -> str:
        return self.label


class ConstOp:
    """A parameter or buffer read as a tensor (``get_attr``), fetched at each call."""

    def __init__(self, owner: nn.Module, attr: str):
        self.owner, self.attr = weakref.ref(owner), attr  # weak: the cached graph must not keep the model alive

    def __call__(self) -> Tensor:
        return getattr(self.owner(), self.attr)


def module_call(op: ModuleOp, args: tuple, kwargs: dict) -> Callable:
    if not kwargs and all(isinstance(a, Slot) and a.i == k for k, a in enumerate(args)):
        return op
    return CallOp(op, args, kwargs, type(op.module).__name__)


def method_call(name: str) -> Callable:
    def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, name)(*args, **kwargs)

    call.__name__ = name
    return call
