"""The one call shape every explainer shares.

    explainer(x, target=None, layer=...) -> Tensor[B, h, w]
    explainer(x, layer=[-1, 13, 23])     -> {layer: Tensor[B, h, w]}
    explainer.explain(x, target, layer)  -> Explanation (per-channel components, weights, logits)

``target``: None (each image's top-1 class), an int, or one class per image.
``layer``: a layer name, see :mod:`fgcam_lib.engine.graph` (``explainer.layers`` lists them). Maps are Eq. 8: the channel sum of the
components, ReLU applied unless ``signed=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from torch import nn

from ..engine.graph import INPUT, Graph, graph_of
from ..engine.walk import eval_mode

Tensor = torch.Tensor
LayerSpec = Union[int, str]
Target = Union[None, int, Sequence[int], Tensor]


@dataclass
class Explanation:
    """What one explainer call computed.

    ``components[layer]``: B x c x h x w, the per-channel explanation components at that
    layer (for CAMs ``w * A``; for propagated methods the relevance of each neuron).
    ``weights``: B x C CAM weights at the component layer, when the method has them.
    """

    components: dict[LayerSpec, Tensor]
    target: Tensor
    logits: Tensor
    weights: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def map(self, layer: LayerSpec, signed: bool = False) -> Tensor:
        """Eq. 8: ``ReLU(sum_c I_c)``, B x h x w (no ReLU when ``signed``)."""
        comps = self.components[layer]
        if comps.dim() != 4:
            raise ValueError(f"layer {layer!r} has no spatial map: its relevance is {tuple(comps.shape)} "
                             f"(batch x units); read it from .components[{layer!r}]")
        m = comps.sum(1)
        return m if signed else m.clamp(min=0)


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Target classes as a LongTensor[B] on the logits' device."""
    B, K = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((B,), target, dtype=torch.long, device=logits.device)
    else:
        if isinstance(target, str):
            raise TypeError(f"target must be a class index, indices or None, not the string {target!r} "
                            "(for a benchmark class name use fgcam_lib.data.scenes.CLASSES.index(name))")
        raw = torch.as_tensor(target)
        if raw.dtype == torch.bool or (raw.is_floating_point() and not bool((raw == raw.round()).all())):
            raise TypeError(f"target must hold whole class indices, got {target!r}")
        t = raw.to(dtype=torch.long, device=logits.device).reshape(-1)
        if t.numel() == 1 and B != 1:
            t = t.expand(B)
        if t.numel() != B:
            raise ValueError(f"target has {t.numel()} classes for a batch of {B} images")
    bad = (t < 0) | (t >= K)
    if bool(bad.any()):
        raise ValueError(f"target {t[bad].tolist()} out of range for a model with {K} classes")
    return t


class Explainer:
    """Base class: input checks, layer resolution, model-state handling."""

    #: layer used when ``layer=None``
    default_layer: LayerSpec = "input"

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.graph: Graph = graph_of(model)
        first = [n.module for n in self.graph.nodes if isinstance(n.module, nn.Conv2d)]
        self.in_channels = first[0].in_channels if first else None

    @property
    def layers(self) -> list[str]:
        """Every valid layer name of the model, ``"input"`` first, in forward order."""
        return self.graph.names

    # -- subclasses implement ------------------------------------------------------
    def _explain(self, x: Tensor, target: Target, positions: list[int]) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None]:
        """Return (components per position, target, logits, weights)."""
        raise NotImplementedError

    def _check_position(self, position: int, name: str) -> None:
        """Raise ValueError if the method does not support this layer."""

    # -- shared --------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        C = self.in_channels if self.in_channels is not None else "C"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape B x {C} x H x W, not {type(x).__name__}")
        if x.dim() != 4:
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
            raise ValueError(f"x must have 4 dimensions B x C x H x W, got shape {tuple(x.shape)}{hint}")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels; the model's first conv expects {self.in_channels}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")

    def _too_small(self, x: Tensor) -> ValueError | None:
        """The error for an input smaller than the model's convolutions and poolings allow."""
        need = self.graph.min_size(x)
        if x.shape[-2] < need[0] or x.shape[-1] < need[1]:
            return ValueError(f"x is {x.shape[-2]} x {x.shape[-1]} pixels; this model's convolutions and poolings "
                              f"need at least {need[0]} x {need[1]} (resize the images, e.g. with the model's preprocess)")
        return None

    def _specs(self, layer: LayerSpec | Sequence[LayerSpec] | None) -> tuple[list[LayerSpec], bool]:
        if layer is None:
            return [self.default_layer], False
        if isinstance(layer, (list, tuple)):
            if not layer:
                raise ValueError("layer list is empty")
            return list(layer), True
        return [layer], False

    def explain(self, x: Tensor, target: Target = None, layer: LayerSpec | Sequence[LayerSpec] | None = None) -> Explanation:
        """Components at each requested layer plus the target, logits and CAM weights."""
        self._check_input(x)
        specs, _ = self._specs(layer)
        positions = [self.graph.position(s) for s in specs]
        for s, p in zip(specs, positions):
            self._check_position(p, str(s))
        # explainers take their own gradients: they work inside no_grad() and inference_mode()
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(self.model):
            if x.is_inference():
                x = x.clone()
            try:
                comps, tgt, logits, weights = self._explain(x, target, sorted(set(positions)))
            except RuntimeError as exc:
                small = self._too_small(x)
                if small is not None:
                    raise small from None
                raise exc
        by_pos = dict(zip(sorted(set(positions)), comps))
        return Explanation({s: by_pos[p] for s, p in zip(specs, positions)}, tgt, logits.detach(), weights)

    def __call__(
        self,
        x: Tensor,
        target: Target = None,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        signed: bool = False,
    ) -> Tensor | dict[LayerSpec, Tensor]:
        specs, many = self._specs(layer)
        expl = self.explain(x, target, specs)
        if many:
            return {s: expl.map(s, signed) for s in specs}
        return expl.map(specs[0], signed)

    def _feature_map_check(self, position: int, name: str, method: str) -> None:
        if position == INPUT:
            raise ValueError(f"{method} is not defined at the input; pick a feature layer such as "
                             f"{self.graph.name(self.graph.default_component_layer())!r}")
        top = self.graph.default_component_layer()
        if not self.graph.reaches(position, top):
            raise ValueError(
                f"layer {name!r} is {self.graph.where(position, top)} the last feature layer "
                f"{self.graph.name(top)!r}; {method} needs a B x C x H x W feature map"
            )
