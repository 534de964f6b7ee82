"""Token grids: a transformer layer's activation seen as a B x C x h x w feature map.

CAMs and FG-CAM read channels at spatial positions. On a CNN a layer's activation already is
B x C x h x w; on a transformer it is

- ``"tokens"``: B x T x C, ``T = prefix + h * w`` (ViT: one class token before the 14 x 14
  patches; the prefix is dropped and the rest reshaped to the patch grid);
- ``"bhwc"``: B x h x w x C, channels last (Swin's stages, ConvNeXt's inner MLP), permuted.

A :class:`Grid` turns such an activation into B x C x h x w (:meth:`Grid.to_grid`) and a
map of that shape back into the layer's own layout (:meth:`Grid.from_grid`, prefix tokens
get 0). Which 4-d tensors are channels-last is read from the graph's dataflow
(:func:`~fgcam_lib.engine.dag.layouts`): the image is channels-first, a ``permute`` moving channels last or first
flips the layout, every other op keeps its input's.

    >>> grid = grid_of(graph, graph.position("encoder.layers.encoder_layer_11.ln_1"), shapes, (224, 224))
    >>> grid.to_grid(act).shape            # B x 768 x 14 x 14 for vit_b_16
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .dag import Graph, layouts

__all__ = ["Grid", "grid_of", "layouts"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class Grid:
    """How a layer's activation holds its spatial positions (see the module docstring)."""

    layout: str  # "bchw", "bhwc" or "tokens"
    h: int
    w: int
    prefix: int = 0

    def to_grid(self, t: Tensor) -> Tensor:
        """The activation (or a tensor of its shape) as B x C x h x w."""
        if self.layout == "bchw":
            return t
        if self.layout == "bhwc":
            return t.permute(0, 3, 1, 2)
        B, _, C = t.shape
        return t[:, self.prefix:].transpose(1, 2).reshape(B, C, self.h, self.w)

    def from_grid(self, g: Tensor, shape: Any) -> Tensor:
        """B x C x h x w back into the layer's layout (``shape``); prefix tokens get 0."""
        if self.layout == "bchw":
            return g
        if self.layout == "bhwc":
            return g.permute(0, 2, 3, 1).contiguous()
        B, C = g.shape[:2]
        out = g.new_zeros(tuple(shape))
        out[:, self.prefix:] = g.reshape(B, C, self.h * self.w).transpose(1, 2)
        return out


def _token_grid(T: int, image_hw: tuple[int, int]) -> tuple[int, int, int] | None:
    """(prefix, h, w) with ``T = prefix + h * w`` and ``h / w`` the image's aspect; few prefix tokens."""
    H, W = image_hw
    for prefix in range(0, 9):
        n = T - prefix
        if n <= 0:
            break
        h = round(math.sqrt(n * H / W))
        if h > 0 and n % h == 0 and abs(h / (n // h) - H / W) < 1e-6 + 0.5 / max(h, 1):
            return prefix, h, n // h
    return None


def grid_of(graph: Graph, position: int, shapes: dict[int, Any], image_hw: tuple[int, int]) -> Grid | None:
    """The :class:`Grid` of the activation at ``position``; None when it has no spatial layout
    (a pooled vector, logits)."""
    s = shapes.get(position)
    if not isinstance(s, torch.Size):
        return None
    if len(s) == 4:
        layout = layouts(graph, shapes).get(position, "bchw")
        h, w = (s[1], s[2]) if layout == "bhwc" else (s[2], s[3])
        return Grid(layout, int(h), int(w))
    if len(s) == 3:
        found = _token_grid(int(s[1]), image_hw)
        if found is not None:
            prefix, h, w = found
            return Grid("tokens", h, w, prefix)
    return None
