"""Ops of a traced model: how each node runs, always out of place.

A node runs a :class:`ModuleOp` (a module call; in-place activations run out of place), a
:class:`CallOp` (a function or method call whose tensor arguments are the node's inputs) or
a :class:`ConstOp` (a parameter read as a tensor). Which rule an op takes is decided by its
kind: :data:`fgcam_lib.engine.kinds.KINDS`.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["eval_mode", "is_vgg_style", "ModuleOp", "CallOp", "ConstOp", "Slot", "channels_last_on_cpu", "fill", "map_slots",
           "module_call", "method_call", "qualname"]

Tensor = torch.Tensor


@contextlib.contextmanager
def eval_mode(modules: nn.Module | Iterable[nn.Module]) -> Iterator[Any]:
    """Every module (of a model, or of an iterable) in eval mode; each module's own training
    flag restored afterwards, so a model that was half in train mode comes back as it was."""
    every = list(modules.modules()) if isinstance(modules, nn.Module) else list(modules)
    flags = [(m, m.training) for m in every]
    try:
        for m in every:
            m.training = False
        yield modules
    finally:
        for m, flag in flags:
            m.training = flag


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

    def __call__(self, *xs: Any, **kwargs: Any) -> Any:
        if self._fn is not None:
            return self._fn(self.module, xs[0])
        if getattr(self.module, "inplace", False):  # other in-place modules: keep the input intact
            return self.module(xs[0].clone(), *xs[1:], **kwargs)
        return self.module(*xs, **kwargs)


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
    """``op`` itself when the module reads the node's inputs in order, else a call that fills them in."""
    if not kwargs and all(isinstance(a, Slot) and a.i == k for k, a in enumerate(args)):
        return op
    return CallOp(op, args, kwargs, type(op.module).__name__)


def method_call(name: str) -> Callable:
    """A function calling tensor method ``name`` on its first argument."""

    def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, name)(*args, **kwargs)

    call.__name__ = name
    return call
