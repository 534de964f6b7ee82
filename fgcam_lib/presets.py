"""Presets: which rule each layer gets, as a map from layer types or names to rules.

Keys are layer kinds (``"conv"``, ``"linear"``, ``"maxpool"``, ``"avgpool"``, ``"bn"``,
``"relu"``, ``"other"`` for Dropout/Flatten/Identity), ``"input"`` for the weighted
layer that reads the image, or module paths (``"features.3"``) for single layers.
Lookup order: module path, then ``"input"``, then the kind.

    >>> preset = paper()                                   # the authors' code
    >>> mixed = paper().with_rules(conv=Epsilon(0.25))     # an ablation's mix
    >>> canon = canonical(mean=(0.5,) * 3, std=(0.5,) * 3) # BN merged, box bounds
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers import Layer
from .rules import Pass, PoolZ, Rule, ZBeta, ZPlus, channel_bounds, image_bounds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KINDS: dict[str, tuple[type, ...]] = {
    "conv": (nn.Conv2d,),
    "linear": (nn.Linear,),
    "maxpool": (nn.MaxPool2d,),
    "avgpool": (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
    "bn": (nn.BatchNorm2d,),
    "relu": (nn.ReLU,),
    "other": (nn.Dropout, nn.Flatten, nn.Identity),
}


def kind_of(module: nn.Module) -> str | None:
    for kind, types in KINDS.items():
        if isinstance(module, types):
            return kind
    return None


@dataclass(frozen=True)
class Preset:
    """A named map from layer kinds/names to rules; ``merge_bn`` folds BN into its conv."""

    name: str
    rules: Mapping[str, Rule]
    merge_bn: bool = False
    keep_bias: bool = False
    notes: str = field(default="", compare=False)

    def with_rules(self, rules: Mapping[str, Rule] | None = None, **kw: Rule) -> "Preset":
        merged = {**self.rules, **(rules or {}), **kw}
        return replace(self, name=f"{self.name}+custom", rules=merged)

    def rule_for(self, layer: Layer, position: int) -> Rule:
        if layer.name in self.rules:
            return self.rules[layer.name]
        kind = kind_of(layer.module)
        if position == 0 and kind in ("conv", "linear") and "input" in self.rules:
            return self.rules["input"]
        if kind in self.rules:
            return self.rules[kind]
        raise TypeError(
            f"preset {self.name!r} has no rule for layer {layer.name!r} "
            f"({type(layer.module).__name__}); give one with .with_rules({kind or layer.name!r}=...)"
        )

    def check_keys(self, names: Sequence[str]) -> None:
        known = set(KINDS) | {"input"} | set(names)
        unknown = [k for k in self.rules if k not in known]
        if unknown:
            raise ValueError(
                f"unknown rule keys {unknown}; use kinds {sorted(KINDS) + ['input']} or module paths"
            )


def paper() -> Preset:
    """The authors' public code: z+ (no bias) in hidden layers, z-beta with each image's
    min/max as bounds at the input, BN and ReLU pass relevance through unchanged."""
    return Preset(
        "paper",
        {
            "input": ZBeta(image_bounds),
            "conv": ZPlus(),
            "linear": ZPlus(),
            "maxpool": PoolZ(),
            "avgpool": PoolZ(),
            "bn": Pass(),
            "relu": Pass(),
            "other": Pass(),
        },
    )


def canonical(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, keep_bias: bool = False
) -> Preset:
    """BN merged into the preceding conv, z+ in hidden layers, z-beta with the per-channel
    bounds of pixels in [0, 1] after normalisation. ``keep_bias=True`` keeps the (merged)
    biases in the denominators, as zennit does by default; relevance then leaks."""
    return Preset(
        "canonical",
        {
            "input": ZBeta(channel_bounds(mean, std), bias=keep_bias),
            "conv": ZPlus(bias=keep_bias),
            "linear": ZPlus(bias=keep_bias),
            "maxpool": PoolZ(),
            "avgpool": PoolZ(),
            "bn": Pass(),
            "relu": Pass(),
            "other": Pass(),
        },
        merge_bn=True,
        keep_bias=keep_bias,
    )


PRESETS = {"paper": paper, "canonical": canonical}


def get_preset(
    rules: str | Preset | Mapping[str, Rule],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Preset:
    """``"paper"``, ``"canonical"``, a :class:`Preset`, or a dict laid over the paper preset."""
    if isinstance(rules, Preset):
        return rules
    if isinstance(rules, str):
        if rules == "paper":
            return paper()
        if rules == "canonical":
            return canonical(mean, std)
        raise ValueError(f"unknown rules {rules!r}; use one of {sorted(PRESETS)}, a Preset or a dict")
    if isinstance(rules, Mapping):
        return paper().with_rules(dict(rules))
    raise TypeError(f"rules must be a name, a Preset or a dict, not {type(rules).__name__}")


def bind(preset: Preset, layers: list[Layer]) -> list[tuple[nn.Module, Rule]]:
    """The module and rule each layer uses when relevance flows through it.

    With ``merge_bn`` a conv followed by BatchNorm becomes one fused conv (a new module;
    the model is untouched) and the BN passes relevance through. Warns where a BN scale
    is <= 0: there merging and passing through give different maps.
    """
    preset.check_keys([layer.name for layer in layers])
    out: list[tuple[nn.Module, Rule]] = []
    flipped = []
    for p, layer in enumerate(layers):
        module = layer.module
        if isinstance(module, nn.BatchNorm2d):
            if module.weight is not None and bool((module.weight <= 0).any()):
                flipped.append(layer.name)
            if preset.merge_bn:
                if p == 0 or not isinstance(layers[p - 1].module, nn.Conv2d):
                    raise TypeError(f"{layer.name}: cannot merge BatchNorm that does not follow a Conv2d")
                conv_rule = out[p - 1][1]
                out[p - 1] = (fuse_conv_bn_eval(layers[p - 1].module, module), conv_rule)
                out.append((module, Pass()))
                continue
        out.append((module, preset.rule_for(layer, p)))
    if flipped:
        warnings.warn(
            f"BatchNorm scale(s) <= 0 in {', '.join(flipped)}: BN merging and BN pass-through "
            "give different maps there",
            stacklevel=4,
        )
    return out
