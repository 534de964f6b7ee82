"""The one call shape every explainer shares.

    explainer(x, target=None, layer=...) -> Tensor[B, h, w]
    explainer(x, layer=[-1, 13, 23])     -> {layer: Tensor[B, h, w]}
    explainer.explain(x, target, layer)  -> Explanation (per-channel components, weights, logits)

``target``: None (each image's top-1 class), an int, or one class per image.
``layer``: a layer name, see :mod:`fgcam_lib.engine.graph` (``explainer.layers`` lists them). Maps are Eq. 8: the channel sum of the
components, ReLU applied unless ``signed=True``.
``upsample``: False (default) returns maps at the layer's own resolution; True resizes
them to the input's H x W, an int or an ``(H, W)`` pair to that size. Resizing is
bilinear with ``align_corners=False`` (as Score-CAM's masks and the figures), applied
after Eq. 8, so a ReLU'd map stays non-negative and a map already at that size is
returned unchanged.

Inputs: a float tensor B x C x H x W, normalised as the model expects (``preprocess(x)``);
float64 or half inputs are cast to the model's dtype and device; calls inside
``torch.no_grad()`` or ``torch.inference_mode()`` work. An empty batch, NaN/Inf values
and un-normalised pixels in [0, 255] stop the call with one line saying what to do.

    >>> maps = explainer(x, layer=13, upsample=True)     # B x H x W, bilinear from the layer
    >>> expl = explainer.explain(x, layer=[13, "input"])
    >>> expl                                             # layers, shapes, target, top classes
    Explanation(target=[3], top=[[3: 0.98, 1: 0.01, 6: 0.00]], components={13: 1x16x24x24, 'input': 1x3x96x96}, weights=1x64)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.graph import INPUT, Graph, graph_of
from ..engine.ops import eval_mode
from ..engine.presets import IMAGENET_MEAN, IMAGENET_STD
from ..engine.tokens import Grid, grid_of

__all__ = ["Explainer", "Explanation", "normalization", "resolve_target", "resize_maps", "PIXEL_RANGE_LIMIT", "NORMALISED_RANGE_LIMIT"]


def normalization(model: nn.Module | None = None, preprocess: object = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the model's inputs were normalised with.

    From ``preprocess.mean/.std`` if given, else the bundled model's card, else ImageNet's.
    """
    if preprocess is not None and hasattr(preprocess, "mean") and hasattr(preprocess, "std"):
        return tuple(preprocess.mean), tuple(preprocess.std)
    card = getattr(model, "card", None) or {}
    if "mean" in card and "std" in card:
        return tuple(card["mean"]), tuple(card["std"])
    return IMAGENET_MEAN, IMAGENET_STD

Tensor = torch.Tensor
LayerSpec = Union[int, str]
Target = Union[None, int, Sequence[int], Tensor]
Upsample = Union[bool, int, Sequence[int]]

#: a non-negative input whose maximum exceeds this is taken for un-normalised [0, 255] pixels:
#: normalised images have negative values and lie within about [-3, 3]
PIXEL_RANGE_LIMIT = 10.0
#: any input reaching this magnitude is taken for [0, 255] pixels that went through a
#: normalisation meant for [0, 1] (ImageNet's mean/std give values up to about 1110)
NORMALISED_RANGE_LIMIT = 50.0


def _check_signed(signed: object) -> None:
    # a truthy string such as "no" would silently keep the sign
    numpy_bool = type(signed).__module__ == "numpy" and type(signed).__name__ in ("bool", "bool_")
    if not (isinstance(signed, bool) or numpy_bool):
        raise TypeError(f"signed must be True or False, not {signed!r}")


def _target_size(upsample: Upsample, input_size: Sequence[int] | None) -> tuple[int, int] | None:
    """The (H, W) maps are resized to, or None to keep the layer's resolution."""
    if upsample is False or upsample is None:
        return None
    if upsample is True:
        if input_size is None:
            raise ValueError("upsample=True needs the input size; pass upsample=(H, W)")
        return int(input_size[0]), int(input_size[1])
    if isinstance(upsample, int) and not isinstance(upsample, bool) and upsample > 0:
        return upsample, upsample
    if isinstance(upsample, (tuple, list, torch.Size)) and len(upsample) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in upsample):
        return int(upsample[0]), int(upsample[1])
    raise TypeError(f"upsample must be True, False, a positive int or an (H, W) pair, not {upsample!r}")


def resize_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """B x h x w maps resized to ``size`` (H, W), bilinear with ``align_corners=False``.

    >>> resize_maps(torch.ones(2, 3, 3), (96, 96)).shape
    torch.Size([2, 96, 96])
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _shape(t: Tensor) -> str:
    return "x".join(str(s) for s in t.shape)


@dataclass
class Explanation:
    """What one explainer call computed.

    ``components[layer]``: B x c x h x w, the per-channel explanation components at that
    layer (for CAMs ``w * A``; for propagated methods the relevance of each neuron).
    ``weights``: the CAM weights at the component layer, when the method has them: B x C, or
    B x C x h x w for a base with element-wise weights (HiResCAM, Layer-CAM).
    """

    components: dict[LayerSpec, Tensor]
    target: Tensor
    logits: Tensor
    weights: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    #: (H, W) of the explained input, for ``map(..., upsample=True)``
    input_size: tuple[int, int] | None = None

    def map(self, layer: LayerSpec, signed: bool = False, upsample: Upsample = False) -> Tensor:
        """Eq. 8: ``ReLU(sum_c I_c)``, B x h x w (no ReLU when ``signed``).

        ``upsample``: see the module docstring (True: bilinear to the input's H x W).
        """
        _check_signed(signed)
        comps = self.components[layer]
        if comps.dim() != 4:
            raise ValueError(f"layer {layer!r} has no spatial map: its relevance is {tuple(comps.shape)} "
                             f"(batch x units); read it from .components[{layer!r}]")
        m = comps.sum(1)
        m = m if signed else m.clamp(min=0)
        size = _target_size(upsample, self.input_size)
        return m if size is None else resize_maps(m, size)

    def top_classes(self, k: int = 3) -> list[list[tuple[int, float]]]:
        """Per image, the ``k`` most probable classes as ``(class, softmax probability)``."""
        probs = self.logits.detach().float().softmax(1)
        p, idx = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(int(c), float(v)) for c, v in zip(ci, pi)] for ci, pi in zip(idx, p)]

    def __repr__(self) -> str:
        # a summary, not the tensors: printing an explanation must stay readable
        shown = 4
        tgt = self.target.tolist()
        more = f", ... ({len(tgt)} images)" if len(tgt) > shown else ""
        top = ", ".join("[" + ", ".join(f"{c}: {v:.2f}" for c, v in row) + "]"
                        for row in self.top_classes(3)[:shown])
        layers = list(self.components)
        comps = ", ".join(f"{k!r}: {_shape(self.components[k])}" for k in layers[:shown])
        if len(layers) > shown:
            comps += f", ... ({len(layers)} layers)"
        weights = f", weights={_shape(self.weights)}" if self.weights is not None else ""
        return (f"Explanation(target={tgt[:shown]}{more}, top=[{top}{', ...' if more else ''}], "
                f"components={{{comps}}}{weights})")


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
        self.in_channels = self.graph.input_channels

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
    #: refuse non-negative inputs above :data:`PIXEL_RANGE_LIMIT` (un-normalised [0, 255] pixels);
    #: set to False on an explainer whose model really takes such inputs
    check_pixel_range: bool = True

    def _check_input(self, x: Tensor) -> None:
        C = self.in_channels if self.in_channels is not None else "C"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape B x {C} x H x W, not {type(x).__name__} "
                            "(the model's preprocess turns paths, PIL images and arrays into one)")
        if x.dim() != 4:
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
            raise ValueError(f"x must have 4 dimensions B x C x H x W, got shape {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}); pass at least one image")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels; the model's first conv expects {self.in_channels}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype} (use the model's preprocess, "
                            "which scales uint8 pixels to [0, 1] and normalises them)")
        self._check_values(x)

    def _check_values(self, x: Tensor) -> None:
        """NaN/Inf, and un-normalised pixels in [0, 255]: both would give maps without a word."""
        with torch.no_grad():
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                bad = x.numel() - int(finite.sum())
                raise ValueError(f"x has {bad} NaN or infinite value(s); fix the input (torch.nan_to_num, "
                                 "or check the image loading) before explaining it")
            if not self.check_pixel_range:
                return
            lo, hi = float(x.min()), float(x.max())
            if lo >= 0 and hi > PIXEL_RANGE_LIMIT:
                raise ValueError(f"x looks like un-normalised pixels in [0, 255] (max {hi:.4g}): "
                                 "pass preprocess(x / 255) or preprocess(uint8 images); if the model really "
                                 "takes such inputs set explainer.check_pixel_range = False")
            if max(-lo, hi) > NORMALISED_RANGE_LIMIT:
                raise ValueError(f"x spans [{lo:.4g}, {hi:.4g}], far beyond normalised images (about [-3, 3]): "
                                 "were [0, 255] pixels normalised as [0, 1]? pass preprocess(x / 255); if the "
                                 "model really takes such inputs set explainer.check_pixel_range = False")

    def _as_model_input(self, x: Tensor) -> Tensor:
        """``x`` in the dtype and on the device of the model's parameters (float64, half, ...)."""
        p = next((t for t in self.model.parameters() if t.is_floating_point()), None)
        if p is None or (x.dtype == p.dtype and x.device == p.device):
            return x
        return x.to(dtype=p.dtype, device=p.device)

    def _too_small(self, x: Tensor) -> ValueError | None:
        """The error for an input smaller than the model's convolutions and poolings allow."""
        try:
            need = self.graph.min_size(x)
        except Exception:  # a model that checks its input size itself (a ViT) says so in its own error
            return None
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
        x = self._as_model_input(x)
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
        return Explanation({s: by_pos[p] for s, p in zip(specs, positions)}, tgt, logits.detach(), weights,
                           input_size=(int(x.shape[-2]), int(x.shape[-1])))

    def __call__(
        self,
        x: Tensor,
        target: Target = None,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        signed: bool = False,
        upsample: Upsample = False,
    ) -> Tensor | dict[LayerSpec, Tensor]:
        """Maps B x h x w (a dict of them for a list of layers); ``upsample=True``: at the input's H x W."""
        _check_signed(signed)
        _target_size(upsample, (1, 1))  # validate before the (slow) explanation
        specs, many = self._specs(layer)
        expl = self.explain(x, target, specs)
        if many:
            return {s: expl.map(s, signed, upsample) for s in specs}
        return expl.map(specs[0], signed, upsample)

    def grid(self, shapes: dict, position: int) -> Grid:
        """How the activation at ``position`` (``shapes`` from a forward) is a B x C x h x w map:
        as it is on a CNN, tokens or channels-last on a transformer."""
        g = grid_of(self.graph, position, shapes, tuple(shapes[INPUT][-2:]))
        if g is None:
            shape = shapes.get(position)
            raise ValueError(f"layer {self.graph.name(position)!r} gives {tuple(shape) if shape else shape}, not a "
                             "feature map or token grid; pick a layer with spatial positions")
        return g

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
