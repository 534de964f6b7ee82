"""The paper's figure grids: methods x layers for one image (Figure 1), images x methods at
one layer (Figures 3 and 4).

    >>> from fgcam_lib.ui.grids import grid
    >>> maps = {"fg_grad_cam": fg(x, layer=[33, 23, 13, "input"]), "grad_cam": {33: cam(x, layer=33)}}
    >>> fig = grid(x_display, maps, layout="layers")          # Figure 1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle

from ..catalogue import layer_label, method_label
from .overlays import ArrayLike, as_image, as_map, as_tensor, clean_axes, color_scale, colormap, new_figure, show_map

__all__ = ["MapTree", "grid"]

#: method -> maps (B x h x w), or method -> {layer: maps}
MapTree = Mapping[str, Union[ArrayLike, Mapping[Any, ArrayLike]]]


def _layers_of(tree: MapTree) -> list[Any]:
    """Union of the inner keys (layers), in first-seen order."""
    seen: list[Any] = []
    for value in tree.values():
        if isinstance(value, Mapping):
            seen.extend(k for k in value if k not in seen)
    return seen


def _pick_layer(value: ArrayLike | Mapping[Any, ArrayLike], layer: Any, method: str) -> ArrayLike | None:
    """The maps of one method at ``layer`` (``value`` may already be a tensor)."""
    if not isinstance(value, Mapping):
        return value
    if layer is None:
        if len(value) != 1:
            raise ValueError(f"{method!r} has maps at several layers {list(value)}; pass layer=")
        return next(iter(value.values()))
    for key in (layer, str(layer)):
        if key in value:
            return value[key]
    return None


def _add_colorbars(
    fig: Figure | SubFigure, axes_by_kind: Mapping[bool, list[Axes]], cmap: str | Colormap | None
) -> None:
    """One colorbar per colour scale used (sequential and/or diverging), at the figure's right edge."""
    panels = list(fig.axes)
    used = [signed for signed, axes in axes_by_kind.items() if axes]
    for signed in used:
        cb = fig.colorbar(ScalarMappable(norm=color_scale(signed), cmap=colormap(signed, cmap)), ax=panels,
                          shrink=0.8 if len(used) == 1 else 0.6, aspect=30, pad=0.01)
        # every panel is scaled on its own: the bar gives the scale of each map, not a shared one
        cb.set_label("signed relevance, each map / its max |R|" if signed else "relevance, each map min-max scaled",
                     fontsize=8)
        cb.ax.tick_params(labelsize=7)


def _image_batch(images: ArrayLike | None) -> torch.Tensor | None:
    if images is None:
        return None
    t = as_tensor(images)
    return t[None] if t.dim() == 3 else t


@dataclass(frozen=True)
class _GridStyle:
    """How every panel of a grid is drawn."""

    signed: bool | Mapping[str, bool] = False
    overlay: bool = False
    colorbar: bool = True
    cmap: str | Colormap | None = None
    mode: str = "bilinear"
    alpha: float = 0.5
    panel_size: float = 1.6

    def is_signed(self, method: str) -> bool:
        """Whether ``method``'s maps use the diverging colormap."""
        if isinstance(self.signed, Mapping):
            return bool(self.signed.get(method, False))
        return bool(self.signed)

    def figure(self, rows: int, cols: int) -> Figure:
        """A figure sized for ``rows`` x ``cols`` panels (+ room for the colorbars)."""
        width = self.panel_size * cols + (0.9 if self.colorbar else 0.2)
        return new_figure((width, self.panel_size * rows + 0.4))


def grid(
    images: ArrayLike | None,
    maps: MapTree,
    layout: str = "auto",
    *,
    image_index: int = 0,
    layer: Any = None,
    signed: bool | Mapping[str, bool] = False,
    overlay: bool = False,
    colorbar: bool = True,
    cmap: str | Colormap | None = None,
    mode: str = "bilinear",
    alpha: float = 0.5,
    panel_size: float = 1.6,
    image_titles: Sequence[str] | None = None,
    title: str | None = None,
    boxes: Sequence[Sequence[float] | None] | None = None,
) -> Figure:
    """The paper's figure grids.

    ``maps``: method -> maps, where maps are B x h x w tensors or a mapping layer ->
    B x h x w (what ``explainer(x, layer=[...])`` returns). ``images``: B x 3 x H x W in
    [0, 1] or None (no image column).

    - ``layout="layers"`` (Figure 1): image ``image_index`` on the left, methods as
      rows, layers as columns (a method missing a layer leaves that panel empty).
    - ``layout="images"`` (Figures 3 and 4): images as rows, methods as columns, at
      ``layer`` when the maps are per layer.
    - ``"auto"``: "layers" when the maps span several layers, else "images".

    ``signed``: True, or a method -> bool mapping; signed maps use the red/blue
    colormap. ``overlay`` blends maps over the image; otherwise maps are drawn alone
    (brightness = importance). One colorbar per colour scale used. ``boxes`` (``"images"``
    layout): per image an ``(x0, y0, x1, y1)`` box in its pixels, or None, outlined on its row.

        >>> fig = grid(x, {"fg_grad_cam": fg(x, layer=[33, 13, "input"])}, layout="layers")
    """
    if layout == "auto":
        layout = "layers" if len(_layers_of(maps)) > 1 else "images"
    if layout not in ("layers", "images"):
        raise ValueError(f"unknown layout {layout!r}; use 'layers', 'images' or 'auto'")
    if not maps:
        raise ValueError("maps is empty")
    style = _GridStyle(signed, overlay, colorbar, cmap, mode, alpha, panel_size)
    imgs = _image_batch(images)
    if layout == "layers":
        fig = _grid_layers(imgs, maps, image_index, style, image_titles)
    else:
        fig = _grid_images(imgs, maps, layer, style, image_titles, boxes)
        if title is None and layer is not None:
            title = f"at {layer_label(layer)}"
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _display_size(imgs: torch.Tensor | None, tensors: Iterable[ArrayLike | None]) -> tuple[int, int]:
    """Image size, else the largest map's size."""
    if imgs is not None:
        return int(imgs.shape[-2]), int(imgs.shape[-1])
    sizes = [tuple(as_tensor(t).shape[-2:]) for t in tensors if t is not None]
    return max(sizes, key=lambda s: s[0] * s[1])  # type: ignore[return-value]


def _one_map(m: ArrayLike | None, index: int) -> ArrayLike | None:
    """Map ``index`` of a B x h x w batch (an h x w map as it is)."""
    if m is None:
        return None
    return as_map(m, index) if as_tensor(m).dim() == 3 else m


def _draw_cell(ax: Axes, m: ArrayLike | None, image: torch.Tensor | None, signed: bool, style: _GridStyle,
               size: tuple[int, int]) -> bool:
    """Draw one grid cell; returns False (and blanks the axes) when there is no map."""
    if m is None:
        ax.set_axis_off()
        return False
    show_map(ax, m, image if style.overlay else None, signed, cmap=style.cmap, mode=style.mode, alpha=style.alpha,
             size=size)
    return True


def _draw_image(ax: Axes, image: torch.Tensor) -> None:
    ax.imshow(as_image(image))
    clean_axes(ax)


def _grid_layers(imgs: torch.Tensor | None, maps: MapTree, image_index: int, style: _GridStyle,
                 image_titles: Sequence[str] | None) -> Figure:
    """Figure 1: methods as rows, layers as columns, one image."""
    layers = _layers_of(maps) or [None]
    methods = list(maps)
    lead = 1 if imgs is not None else 0
    size = _display_size(imgs, [_pick_layer(v, layers[0], k) for k, v in maps.items()])
    fig = style.figure(len(methods), len(layers) + lead)
    axes = fig.subplots(len(methods), len(layers) + lead, squeeze=False)
    image = imgs[image_index] if imgs is not None else None
    by_kind: dict[bool, list[Axes]] = {False: [], True: []}
    for r, method in enumerate(methods):
        if image is not None and r == 0:
            _draw_image(axes[0, 0], image)
            axes[0, 0].set_title(image_titles[image_index] if image_titles else "Image", fontsize=9)
        elif image is not None:
            axes[r, 0].set_axis_off()
        signed = style.is_signed(method)
        for c, lay in enumerate(layers):
            ax = axes[r, c + lead]
            if _draw_cell(ax, _one_map(_pick_layer(maps[method], lay, method), image_index), image, signed, style, size):
                by_kind[signed].append(ax)
            if r == 0 and lay is not None:
                ax.set_title(layer_label(lay), fontsize=9)
        first = axes[r, lead]
        if not first.axison:  # the first layer is missing for this method: label the row anyway
            first.set_axis_on()
            clean_axes(first)
        first.set_ylabel(method_label(method), fontsize=9)
    if style.colorbar:
        _add_colorbars(fig, by_kind, style.cmap)
    return fig


def _grid_images(imgs: torch.Tensor | None, maps: MapTree, layer: Any, style: _GridStyle,
                 image_titles: Sequence[str] | None, boxes: Sequence[Sequence[float] | None] | None = None) -> Figure:
    """Figures 3 and 4: images as rows, methods as columns, one layer."""
    methods = list(maps)
    picked = {k: _pick_layer(v, layer, k) for k, v in maps.items()}
    present = [as_tensor(v) for v in picked.values() if v is not None]
    if not present:
        raise ValueError(f"no method has maps at layer {layer!r}")
    n = imgs.shape[0] if imgs is not None else (present[0].shape[0] if present[0].dim() == 3 else 1)
    lead = 1 if imgs is not None else 0
    size = _display_size(imgs, present)
    fig = style.figure(n, len(methods) + lead)
    axes = fig.subplots(n, len(methods) + lead, squeeze=False)
    by_kind: dict[bool, list[Axes]] = {False: [], True: []}
    for i in range(n):
        image = imgs[i] if imgs is not None else None
        if image is not None:
            _draw_image(axes[i, 0], image)
            if image_titles:
                axes[i, 0].set_ylabel(image_titles[i], fontsize=9)
            if i == 0:
                axes[i, 0].set_title("Image", fontsize=9)
        for c, method in enumerate(methods):
            signed = style.is_signed(method)
            if _draw_cell(axes[i, c + lead], _one_map(picked[method], i), image, signed, style, size):
                by_kind[signed].append(axes[i, c + lead])
            if i == 0:
                axes[i, c + lead].set_title(method_label(method), fontsize=9)
        if boxes is not None and boxes[i] is not None:
            x0, y0, x1, y1 = boxes[i]
            for ax in axes[i]:
                if ax.axison or ax.images:  # the image and every drawn map share its pixel grid
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="#00e5ff", lw=1.2))
    if style.colorbar:
        _add_colorbars(fig, by_kind, style.cmap)
    return fig


