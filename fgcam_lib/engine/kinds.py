"""Op kinds: the one table from an op kind to the ops it covers and the rule it takes.

A traced node gets a *kind* (``"conv"``, ``"add"``, ...), and a preset maps kinds to rules.
:data:`KINDS` is the only place a kind is defined. Each :class:`OpKind` says

- which ops it covers: module classes (``isinstance``; the first kind in table order that
  matches wins), functions (``torch.cat``, ``operator.add``), functions by qualified name
  (no import of their library needed) and tensor methods by name (``"view"``);
- the rule it takes by default: a factory such as ``ZPlus`` or ``Pass``, called once per
  preset; every built-in preset starts from these and lays its own choices over some of them.

To add an op kind, add one entry to :data:`KINDS`; tracing, presets, rule lookup and the
check of a preset's keys all read it from there (it also works at run time, before the
model is traced):

    >>> KINDS["erf"] = OpKind("torch.erf, x.erf()", Pass, functions=(torch.erf,), methods=("erf",))

Nodes that read a parameter get :data:`CONST` (they carry no relevance, so need no rule);
module classes that fx must not trace into are registered with
:func:`fgcam_lib.engine.register_leaf` together with one of these kinds.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import WINDOW_ATTENTION
from .rules_attention import CPAttention
from .rules_base import Pass, Rule
from .rules_structural import Gate, HeldMatmul, Reduce, Route, Split, Sum
from .rules_weighted import PoolZ, ZPlus

__all__ = ["OpKind", "KINDS", "CONST", "kind_of", "function_kind", "method_kind", "default_rules"]

#: the kind of a node that reads a parameter or buffer (``get_attr``)
CONST = "const"


@dataclass(frozen=True)
class OpKind:
    """One op kind: what it covers (for people and for matching) and its default rule."""

    covers: str
    rule: Callable[[], Rule] | None = None  # None: no default; presets or layer names give one
    modules: tuple[type, ...] = ()
    functions: tuple[Callable[..., Any], ...] = ()
    named: tuple[str, ...] = ()  # functions as "package.module.name"
    methods: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.covers


_ACTIVATIONS = (F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.elu, F.hardtanh, F.mish,
                torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.softmax, torch.softmax, F.selu, F.celu, F.softplus,
                operator.pow, torch.pow, torch.square, torch.exp)

#: op kind -> the ops it covers and the rule it takes by default
KINDS: dict[str, OpKind] = {
    "conv": OpKind(
        "Conv1d/Conv2d (grouped and depthwise too), F.conv2d with a parameter or computed weight, "
        "convs that pad themselves (TF 'same')",
        ZPlus, modules=(nn.Conv1d, nn.Conv2d), functions=(F.conv1d, F.conv2d)),
    "linear": OpKind("Linear, F.linear", ZPlus, modules=(nn.Linear,), functions=(F.linear,)),
    "maxpool": OpKind(
        "max pools, module or functional",
        PoolZ, modules=(nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d),
        functions=(F.max_pool2d, F.adaptive_max_pool2d)),
    "avgpool": OpKind(
        "average pools (adaptive too), x.mean over space",
        PoolZ, modules=(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
        functions=(F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean), methods=("mean",)),
    "bn": OpKind(
        "BatchNorm, F.batch_norm, timm's BatchNormAct2d",
        Pass, modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm), functions=(F.batch_norm,)),
    "relu": OpKind("ReLU, F.relu", Pass, modules=(nn.ReLU,), functions=(F.relu, torch.relu), methods=("relu",)),
    "act": OpKind(
        "ReLU6, Hardswish, SiLU, GELU, LeakyReLU, ELU, sigmoids, x ** 2, softmax (a gate's)",
        Pass, modules=(nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardtanh,
                       nn.Mish, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.Softmax, nn.SELU, nn.CELU, nn.Softplus),
        functions=_ACTIVATIONS, methods=("sigmoid", "tanh", "softmax", "pow", "square", "exp")),
    "norm": OpKind(
        "LayerNorm (LayerNorm2d), GroupNorm, InstanceNorm, RMSNorm, functional forms",
        Pass, modules=(nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm2d, nn.RMSNorm),
        functions=(F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm, F.local_response_norm)),
    "add": OpKind(
        "a + b, a - b (residual connections)",
        Sum, functions=(operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub),
        methods=("add", "sub")),
    "mul": OpKind(
        "x * s: squeeze-excitation gates, layer scale, constant factors, products of two signals",
        Gate, functions=(operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div,
                         torch.addcmul),
        methods=("mul", "div", "addcmul")),
    "sum": OpKind("x.sum(dim), torch.sum: a sum over channels or branches", Reduce, functions=(torch.sum,),
                  methods=("sum",)),
    "matmul": OpKind(
        "x @ A, einsum, with A an attention (a softmax) or gate computed from x (held constant), or a parameter",
        HeldMatmul, functions=(operator.matmul, torch.matmul, torch.bmm, torch.einsum), methods=("matmul", "bmm")),
    "attention": OpKind(
        "nn.MultiheadAttention, F.scaled_dot_product_attention, torchvision's (shifted) window attention of Swin "
        "and Swin V2",
        CPAttention, modules=(nn.MultiheadAttention,), functions=(F.scaled_dot_product_attention,),
        named=(WINDOW_ATTENTION,)),
    "pad": OpKind(
        "F.pad, ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d",
        Route, modules=(nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d), functions=(F.pad,)),
    "upsample": OpKind("F.interpolate, nn.Upsample (nearest, bilinear)", Route, modules=(nn.Upsample,),
                       functions=(F.interpolate,)),
    "cat": OpKind("torch.cat, torch.stack", Route, functions=(torch.cat, torch.concat, torch.stack)),
    "split": OpKind("chunk, split, unbind", Split, functions=(torch.chunk, torch.split, torch.unbind),
                    methods=("chunk", "split", "unbind")),
    "reshape": OpKind(
        "flatten, view, reshape, permute, transpose, getitem, roll, channel / pixel shuffles, Swin's patch-merging pad",
        Route, modules=(nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle),
        functions=(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                   operator.getitem, torch.channel_shuffle, F.pixel_shuffle, F.pixel_unshuffle, torch.roll,
                   torch.swapaxes, torch.movedim),
        methods=("flatten", "view", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "contiguous",
                 "swapaxes", "movedim", "roll", "expand"),
        # Swin's patch merging pads to an even size (fx-wrapped in torchvision)
        named=("torchvision.models.swin_transformer._patch_merging_pad",)),
    "other": OpKind(
        "Dropout, Identity, StochasticDepth (identity in eval)",
        Pass, modules=(nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity), functions=(F.dropout, F.dropout2d),
        # fx-wrapped in torchvision; by name, so importing the engine does not import torchvision
        named=("torchvision.ops.stochastic_depth.stochastic_depth",)),
}


def kind_of(module: nn.Module) -> str | None:
    """The op kind of a module (``"conv"``, ``"bn"``, ...), or None when no kind covers it."""
    for name, kind in KINDS.items():
        if kind.modules and isinstance(module, kind.modules):
            return name
    return None


def function_kind(fn: Any) -> str | None:
    """The op kind of a function such as ``torch.cat`` or ``operator.add``."""
    qualified = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}"
    for name, kind in KINDS.items():
        # by identity: builtins such as torch.cat do not compare by name
        if any(fn is f for f in kind.functions) or qualified in kind.named:
            return name
    return None


def method_kind(method: str) -> str | None:
    """The op kind of a tensor method such as ``"view"``."""
    for name, kind in KINDS.items():
        if method in kind.methods:
            return name
    return None


def default_rules() -> dict[str, Rule]:
    """Each kind's default rule, made afresh: what every built-in preset starts from."""
    return {name: kind.rule() for name, kind in KINDS.items() if kind.rule is not None}
