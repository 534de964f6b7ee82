"""Figures, under one name: overlays, signed red/blue maps, the paper's grids, component strips,
and the helpers that save, keep and show a figure.

Where each part lives: arrays, colours, overlays and :func:`show_map` in :mod:`.overlays`;
:func:`grid` in :mod:`.grids`; component strips, the SVD spectrum and metric curves in
:mod:`.panels`; method and layer labels in :mod:`fgcam_lib.catalogue`. This module re-exports
them and adds :func:`save`, :func:`keep` and :func:`show`.

    >>> maps = {"fg_grad_cam": fg(x, layer=[33, 23, 13, "input"]),
    ...         "grad_cam": {33: cam(x, layer=33)}}
    >>> fig = grid(x_display, maps, layout="layers")          # Figure 1: methods x layers
    >>> save(fig, "figures/fig1.png")
    >>> show(x, fg(x, layer="input"), preprocess)             # each image with its map and a colourbar

Images passed here are display images, B x 3 x H x W (or 3 x H x W) in [0, 1]; use
``preprocess.denormalize`` on normalised inputs first (:func:`show` does it when given
``preprocess``). Maps are B x h x w or h x w tensors (or arrays) at any resolution; they
are upsampled to the image size.

matplotlib and seaborn are imported by the drawing modules only; ``import fgcam_lib`` never
loads them.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure, SubFigure

from .. import catalogue
from ..catalogue import layer_label, method_label
from .grids import MapTree, grid
from .overlays import (DIVERGING_CMAP, SEQUENTIAL_CMAP, ArrayLike, as_image, as_tensor, clean_axes, colorize,
                       new_figure, normalize_map, overlay, show_map, upsample)
from .panels import component_strip, metric_plot, singular_values_plot, top_channels

__all__ = [
    "SEQUENTIAL_CMAP", "DIVERGING_CMAP", "DPI", "METHOD_LABELS", "MapTree",
    "upsample", "normalize_map", "colorize", "overlay", "show_map", "grid", "component_strip",
    "singular_values_plot", "metric_plot", "save", "layer_label", "method_label", "as_image", "clean_axes",
    "top_channels", "light_png", "keep", "show",
]

#: resolution of saved figures
DPI = 120
#: display names of the method keys used across the workbench (the catalogue's)
METHOD_LABELS: dict[str, str] = catalogue.METHOD_LABELS


# ------------------------------------------------------------------ files ------------
def save(fig: Figure | SubFigure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as an image (PNG unless the suffix says otherwise), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = fig.figure if isinstance(fig, SubFigure) else fig
    root.savefig(path, dpi=dpi, facecolor="white")
    return path


def light_png(source: Figure | SubFigure | str | Path, width: int = 1000, colours: int = 256, dpi: int = DPI) -> bytes:
    """A small PNG of a figure or an image file: at most ``width`` px wide, ``colours`` colours.

    What notebooks embed, so that a notebook with a dozen figures stays a few MB at most.
    """
    from PIL import Image

    if isinstance(source, (str, Path)):
        im = Image.open(source)
    else:
        buf = io.BytesIO()
        root = source.figure if isinstance(source, SubFigure) else source
        root.savefig(buf, format="png", dpi=dpi, facecolor="white")
        buf.seek(0)
        im = Image.open(buf)
    with im:
        rgb = im.convert("RGB")
    rgb.thumbnail((width, 10 * width))
    out = io.BytesIO()
    rgb.quantize(colours).save(out, "PNG", optimize=True)
    return out.getvalue()


def keep(fig: Figure | SubFigure, path: str | Path, width: int = 1000) -> None:
    """Save ``fig`` under ``path`` (full resolution) and show a light copy of the file in the notebook.

    The copy (:func:`light_png`) is what the notebook stores, whatever the matplotlib backend;
    a pyplot figure is closed, so it is not shown twice. Outside IPython it only saves
    (:func:`save` returns the path).

        >>> keep(grid(x_display, maps), f"{FIG_DIR}/02_denoise_layers.png")
    """
    path = save(fig, path)
    root = fig.figure if isinstance(fig, SubFigure) else fig
    plt.close(root)
    try:
        from IPython.display import Image, display
    except ImportError:
        return
    display(Image(data=light_png(path, width)))


# ------------------------------------------------------------------ show ------------
def _display_images(x: Any, preprocess: Any) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] from display images, normalised inputs (with ``preprocess``) or files."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        if preprocess is None:
            raise TypeError("show() takes image tensors; pass preprocess= to show paths or PIL images")
        return preprocess.resize(preprocess.to_tensor(x)).clamp(0, 1)
    t = as_tensor(x)
    t = t[None] if t.dim() == 3 else t
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W or 3 x H x W, got shape {tuple(t.shape)}")
    if float(t.min()) < 0 or float(t.max()) > 1:
        if preprocess is None:
            raise ValueError(f"the images hold values in [{float(t.min()):.2g}, {float(t.max()):.2g}], not [0, 1]: "
                             "they look normalised; pass preprocess= to show them in their colours")
        t = preprocess.denormalize(t)
    return t.clamp(0, 1)


def _map_columns(maps: ArrayLike | Mapping[Any, ArrayLike], n: int) -> dict[Any, torch.Tensor]:
    """{column title key: n x h x w} from one batch of maps or a {layer: maps} mapping."""
    columns = dict(maps) if isinstance(maps, Mapping) else {None: maps}
    out = {}
    for key, m in columns.items():
        t = as_tensor(m)
        t = t[None] if t.dim() == 2 else t
        if t.dim() != 3 or t.shape[0] != n:
            raise ValueError(f"{n} image(s) need {n} x h x w maps, got shape {tuple(t.shape)}"
                             + (f" at {key!r}" if key is not None else ""))
        out[key] = t
    return out


def show(
    x: Any,
    maps: ArrayLike | Mapping[Any, ArrayLike],
    preprocess: Any = None,
    *,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    signed: bool | None = None,
    alpha: float = 0.8,
    cols: int = 4,
    panel_size: float = 2.6,
    clip: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Each image with its map over it and a colourbar in the map's own units.

    ``x``: the explainer's input (normalised: pass ``preprocess`` to show it in its colours),
    display images in [0, 1], or, with ``preprocess``, anything it takes (paths, PIL images).
    ``maps``: what the explainer returned, B x h x w at any resolution, or ``{layer: B x h x w}``
    (one column per layer). The map is drawn over the image with an opacity that grows with
    its value (up to ``alpha``), so the image stays readable where the map is zero.
    ``signed``: red/blue around zero; default: when a map has negative values. ``clip``: a
    quantile such as 0.995: each map's colour scale tops out at that quantile of its |values|
    (pixel-level maps have a few very strong pixels that would leave the rest invisible; the
    colourbar then reads "at least" at its top). ``path``: also save the figure there. Returns
    the (pyplot) figure.

        >>> maps = FGCAM(model)(preprocess(images), layer="input")
        >>> show(preprocess(images), maps, preprocess, title="FG-Grad-CAM at the input")
    """
    imgs = _display_images(x, preprocess)
    n = imgs.shape[0]
    columns = _map_columns(maps, n)
    if signed is None:
        signed = any(bool((m < 0).any()) for m in columns.values())
    per_layer = len(columns) > 1 or next(iter(columns)) is not None
    rows, ncols = (n, len(columns)) if per_layer else (-(-n // max(1, cols)), min(n, max(1, cols)))
    fig = new_figure((panel_size * 1.22 * ncols, panel_size * rows + (0.35 if title else 0.1)))
    axes = np.asarray(fig.subplots(rows, ncols, squeeze=False))
    cells = [(i, key) for i in range(n) for key in columns]
    for ax, (i, key) in zip(axes.reshape(-1), cells):
        name = titles[i] if titles is not None else f"image {i}"
        label = name if key is None else (layer_label(key) if i == 0 else None)
        # raw values, not min-max scaled: the colourbar reads in the explainer's units
        m = columns[key][i]
        top = None if clip is None else float(torch.quantile(torch.as_tensor(m).abs().flatten().float(), clip))
        mappable = show_map(ax, m, imgs[i], signed=bool(signed), title=label, alpha=alpha,
                            normalize=False, weighted=True, vmax=top or None)
        cb = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03, shrink=0.9,
                          extend="max" if top else "neither")
        cb.set_label("signed relevance" if signed else "relevance", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        if key is not None and list(columns).index(key) == 0:
            ax.set_ylabel(name, fontsize=9)
    for ax in axes.reshape(-1)[len(cells):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        save(fig, path)
    return fig
