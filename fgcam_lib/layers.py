"""Walk a CNN as a flat list of layers and resolve layer names.

The engine never hooks the model: it runs the model's modules itself, in order, so it
can keep the inputs of every layer and start gradients where it needs them. That needs
a model whose forward is a plain chain of modules:

- an ``nn.Sequential`` (nested Sequentials are flattened), or
- a torchvision-VGG-style model: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

Positions: position ``p >= 0`` is the output of ``layers[p]``; position ``-1`` is the
input image. Layer specs accepted everywhere:

- ``"input"`` or ``-1``: the input image;
- an int ``t``: the paper's index, the output of ``model.features[t]`` for VGG-style
  models (``t`` counts from the end when negative and not -1, e.g. ``-2``), or the
  output of the ``t``-th layer of a flat ``nn.Sequential``;
- a module path such as ``"features.13"`` or ``"classifier.1"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

INPUT = -1

SUPPORTED = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
)


@dataclass(frozen=True)
class Layer:
    """One step of the model's forward chain: its module path and module."""

    name: str
    module: nn.Module


def _leaves(prefix: str, module: nn.Module) -> list[Layer]:
    if isinstance(module, nn.Sequential):
        out: list[Layer] = []
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            out.extend(_leaves(path, child))
        return out
    if not isinstance(module, SUPPORTED):
        raise TypeError(
            f"module {prefix!r} of type {type(module).__name__} is not supported; "
            f"supported: {', '.join(t.__name__ for t in SUPPORTED)}"
        )
    return [Layer(prefix, module)]


def is_vgg_style(model: nn.Module) -> bool:
    return isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier")


def linearize(model: nn.Module) -> list[Layer]:
    """The model's forward as a flat list of layers (see the module docstring)."""
    if isinstance(model, nn.Sequential):
        return _leaves("", model)
    if is_vgg_style(model):
        layers = _leaves("features", model.features)
        avgpool = getattr(model, "avgpool", None)
        if avgpool is not None:
            layers += _leaves("avgpool", avgpool)
        layers.append(Layer("flatten", nn.Flatten()))
        layers += _leaves("classifier", model.classifier)
        return layers
    raise TypeError(
        f"{type(model).__name__} is not supported: pass an nn.Sequential CNN or a "
        "torchvision-VGG-style model (features -> avgpool -> flatten -> classifier)"
    )


class LayerIndex:
    """Resolves layer specs to positions in ``linearize(model)``."""

    def __init__(self, model: nn.Module):
        self.layers = linearize(model)
        self.vgg_style = is_vgg_style(model)
        self.n_features = len(model.features) if self.vgg_style else 0
        self._by_name = {layer.name: p for p, layer in enumerate(self.layers)}

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return ["input"] + [layer.name for layer in self.layers]

    def position(self, spec: int | str) -> int:
        """Position of a layer spec: -1 for the input, p for the output of layers[p]."""
        if isinstance(spec, bool):
            raise TypeError(f"layer must be an int or a str, not {spec!r}")
        if isinstance(spec, str):
            if spec == "input":
                return INPUT
            if spec in self._by_name:
                return self._by_name[spec]
            if spec.strip().lstrip("-").isdigit():
                return self.position(int(spec))
            ints = (f"an index into model.features (0..{self.n_features - 1})" if self.vgg_style
                    else f"a position (0..{len(self.layers) - 1})")
            raise ValueError(f"unknown layer {spec!r}; use 'input', {ints} or a module path: "
                             f"{', '.join(self.names)}")
        if isinstance(spec, int):
            if spec == -1:
                return INPUT
            if self.vgg_style:
                t = spec + self.n_features if spec < -1 else spec
                if not 0 <= t < self.n_features:
                    raise ValueError(
                        f"layer index {spec} is outside model.features (0..{self.n_features - 1}, "
                        "or -1 for the input)"
                    )
                return self._by_name[f"features.{t}"]
            t = spec + len(self.layers) if spec < -1 else spec
            if not 0 <= t < len(self.layers):
                raise ValueError(f"layer index {spec} is outside the model (0..{len(self.layers) - 1}, or -1)")
            return t
        raise TypeError(f"layer must be an int or a str, not {type(spec).__name__}")

    def name(self, position: int) -> str:
        return "input" if position == INPUT else self.layers[position].name

    def default_component_layer(self) -> int:
        """Where CAM components are taken: the last layer before the classifier head.

        For VGG-style models this is ``features[-1]`` (the last max-pool), as in the
        authors' code; for a Sequential, the layer before the first pooling-to-vector,
        Flatten or Linear module.
        """
        if self.vgg_style:
            return self._by_name[f"features.{self.n_features - 1}"]
        for p, layer in enumerate(self.layers):
            if isinstance(layer.module, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)):
                if p == 0:
                    break
                return p - 1
        raise ValueError("cannot find a feature-map layer before the classifier head; pass component_layer")

    def first_conv(self) -> nn.Conv2d:
        for layer in self.layers:
            if isinstance(layer.module, nn.Conv2d):
                return layer.module
        raise ValueError("the model has no Conv2d layer")


def run_layers(layers: list[Layer], x: torch.Tensor, start: int, stop: int, keep: bool) -> tuple[torch.Tensor, list]:
    """Run ``layers[start+1 .. stop]`` on ``x`` (the activation at position ``start``).

    Returns the activation at position ``stop`` and, when ``keep``, the list of the
    inputs of each layer run (``inputs[i]`` is the input of ``layers[start+1+i]``).
    ReLUs run out of place so kept activations are never overwritten.
    """
    inputs = []
    for p in range(start + 1, stop + 1):
        if keep:
            inputs.append(x)
        module = layers[p].module
        x = torch.relu(x) if isinstance(module, nn.ReLU) else module(x)
    return x, inputs
