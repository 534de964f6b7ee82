"""Figures: overlays, signed red/blue maps, the paper's figure grids, component strips.

Non-negative maps use one sequential colormap (:data:`SEQUENTIAL_CMAP`, brighter = more
important, as in the paper's Figure 1); signed maps use a diverging one
(:data:`DIVERGING_CMAP`: red positive, white zero, blue negative, as in Figure 4).

    >>> maps = {"fg_grad_cam": fg(x, layer=[33, 23, 13, "input"]),
    ...         "grad_cam": {33: cam(x, layer=33)}}
    >>> fig = grid(x_display, maps, layout="layers")          # Figure 1: methods x layers
    >>> save(fig, "figures/fig1.png")

Images passed here are display images, B x 3 x H x W (or 3 x H x W) in [0, 1]; use
``preprocess.denormalize`` on normalised inputs first. Maps are B x h x w or h x w
tensors (or arrays) at any resolution; they are upsampled to the image size.

matplotlib and seaborn are imported here only; ``import fgcam_lib`` never loads them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure, SubFigure

__all__ = [
    "SEQUENTIAL_CMAP", "DIVERGING_CMAP", "DPI", "METHOD_LABELS",
    "upsample", "normalize_map", "colorize", "overlay", "show_map", "grid", "component_strip",
    "singular_values_plot", "metric_plot", "save", "layer_label", "method_label", "as_image", "clean_axes",
    "top_channels",
]

#: colormap of non-negative maps (perceptually uniform; brightness grows with importance)
SEQUENTIAL_CMAP = "inferno"
#: colormap of signed maps: red positive, white zero, blue negative (the paper's Figure 4)
DIVERGING_CMAP = "bwr"
#: resolution of saved figures
DPI = 120

ArrayLike = Union[torch.Tensor, np.ndarray]
Size = Union[int, Sequence[int]]
MapTree = Mapping[str, Union[ArrayLike, Mapping[Any, ArrayLike]]]

#: display names of the method keys used across the workbench
METHOD_LABELS: dict[str, str] = {
    "grad_cam": "Grad-CAM", "grad_cam_pp": "Grad-CAM++", "xgrad_cam": "XGrad-CAM",
    "score_cam": "Score-CAM", "layer_cam": "Layer-CAM",
    "fg_cam": "FG-CAM", "fg_grad_cam": "FG-Grad-CAM", "fg_score_cam": "FG-Score-CAM",
    "fg_grad_cam_pp": "FG-Grad-CAM++", "fg_xgrad_cam": "FG-XGrad-CAM",
    "fg_grad_cam_denoise": "FG-Grad-CAM (denoising)", "fg_score_cam_denoise": "FG-Score-CAM (denoising)",
    "lrp": "LRP", "clrp": "CLRP", "sglrp": "SGLRP",
}


# ------------------------------------------------------------------ labels ------------
def method_label(name: str) -> str:
    """Display name of a method key: ``"fg_grad_cam"`` -> ``"FG-Grad-CAM"``; unknown keys unchanged."""
    return METHOD_LABELS.get(name, name)


def layer_label(layer: Any) -> str:
    """The paper's layer names: ``13`` or ``"features.13"`` -> ``"Layer13"``, ``-1``/``"input"`` -> ``"Input"``."""
    if layer in (-1, "input", "-1"):
        return "Input"
    if isinstance(layer, int) and not isinstance(layer, bool):
        return f"Layer{layer}"
    match = re.fullmatch(r"(?:features\.)?(\d+)", str(layer))
    return f"Layer{match.group(1)}" if match else str(layer)


# ------------------------------------------------------------------ arrays ------------
def _to_tensor(x: ArrayLike) -> torch.Tensor:
    """Detached float32 CPU tensor."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to("cpu", torch.float32)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """float32 numpy array."""
    return _to_tensor(x).numpy()


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = tuple(size)[-2:]
    return int(h), int(w)


def as_image(image: ArrayLike) -> np.ndarray:
    """A display image as H x W x 3 float32 in [0, 1].

    Accepts 3 x H x W, 1 x 3 x H x W, H x W x 3 (channels last) or H x W (grey), as a
    tensor or an array; values are clipped to [0, 1].
    """
    a = _to_numpy(image)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"as_image takes one image, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[0] in (1, 3):  # channels first (the torch convention)
        a = a.transpose(1, 2, 0)
    elif a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image of shape 3 x H x W or H x W x 3, got {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {a.shape}")
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def upsample(map: ArrayLike, size: Size, mode: str = "bilinear") -> ArrayLike:
    """Resize maps (B x h x w or h x w) to ``size`` (an int or (H, W)).

    ``mode="bilinear"`` (align_corners=False) gives smooth display maps;
    ``mode="nearest"`` shows the true resolution as blocks. Returns the input's type
    (tensor or array).
    """
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"unknown mode {mode!r}; use 'bilinear', 'nearest' or 'bicubic'")
    t = _to_tensor(map)
    if t.dim() not in (2, 3):
        raise ValueError(f"maps must be h x w or B x h x w, got shape {tuple(t.shape)}")
    hw = _hw(size)
    batch = t if t.dim() == 3 else t[None]
    if tuple(batch.shape[-2:]) != hw:
        kw = {"align_corners": False} if mode != "nearest" else {}
        batch = F.interpolate(batch[:, None], size=hw, mode="nearest-exact" if mode == "nearest" else mode, **kw)[:, 0]
    out = batch if t.dim() == 3 else batch[0]
    return out if isinstance(map, torch.Tensor) else out.numpy()


def normalize_map(m: ArrayLike, signed: bool = False) -> ArrayLike:
    """Scale each map (over its last two dims) for display.

    Non-negative maps: min-max to [0, 1]; a constant map (all zero included) becomes
    all zero, never NaN. ``signed``: divide by ``max |m|`` to [-1, 1], so zero stays
    zero (the centre of the diverging colormap). NaN/inf become 0. Returns the input's
    type (tensor or array).

        >>> normalize_map(torch.tensor([[1.0, 3.0]]))              # [[0., 1.]]
        >>> normalize_map(torch.tensor([[-1.0, 2.0]]), signed=True) # [[-0.5, 1.]]
    """
    t = torch.nan_to_num(_to_tensor(m), nan=0.0, posinf=0.0, neginf=0.0)
    if t.dim() < 2:
        raise ValueError(f"maps must be at least 2-D (h x w), got shape {tuple(t.shape)}")
    if signed:
        scale = t.abs().amax((-2, -1), keepdim=True)
        out = torch.where(scale > 0, t / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(t))
    else:
        lo = t.amin((-2, -1), keepdim=True)
        span = t.amax((-2, -1), keepdim=True) - lo
        out = torch.where(span > 0, (t - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(t))
    return out if isinstance(m, torch.Tensor) else out.numpy()


# ------------------------------------------------------------------ colour ------------
def _cmap(signed: bool, cmap: str | Colormap | None = None) -> Colormap:
    """The colormap to use: ``cmap`` if given, else the sequential or the diverging default."""
    if isinstance(cmap, Colormap):
        return cmap
    return matplotlib.colormaps[cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)]


def _norm(signed: bool, vmax: float = 1.0, vmin: float | None = None) -> Normalize:
    """Colour scale: [-vmax, vmax] for signed maps, [vmin or 0, vmax] otherwise."""
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    return Normalize(-vmax, vmax) if signed else Normalize(0.0 if vmin is None else float(vmin), vmax)


def colorize(
    m: ArrayLike, signed: bool = False, cmap: str | Colormap | None = None, normalize: bool = True
) -> np.ndarray:
    """Map(s) h x w (or B x h x w) -> RGB h x w x 3 (or B x h x w x 3) float32 in [0, 1].

    With ``normalize`` the map is scaled by :func:`normalize_map` first; otherwise it
    must already lie in [0, 1] (or [-1, 1] when ``signed``).
    """
    a = _to_numpy(normalize_map(m, signed) if normalize else m)
    unit = (a + 1.0) / 2.0 if signed else a
    return _cmap(signed, cmap)(np.clip(unit, 0.0, 1.0))[..., :3].astype(np.float32)


def overlay(
    image: ArrayLike,
    map: ArrayLike,
    alpha: float = 0.5,
    cmap: str | Colormap | None = None,
    signed: bool = False,
    mode: str = "bilinear",
    normalize: bool = True,
) -> np.ndarray:
    """Blend a coloured map over an image: ``(1 - alpha) * image + alpha * cmap(map)``.

    ``image``: 3 x H x W / H x W x 3 in [0, 1] (or B x 3 x H x W with B x h x w maps);
    ``map``: h x w at any resolution, upsampled to H x W with ``mode``. Returns
    H x W x 3 (or B x H x W x 3) float32 in [0, 1]. ``signed`` uses the diverging
    red/blue colormap with zero in white.
    """
    img = _to_numpy(image)
    if img.ndim == 4 and img.shape[0] > 1:
        maps = _to_tensor(map)
        if maps.dim() != 3 or maps.shape[0] != img.shape[0]:
            raise ValueError(f"{img.shape[0]} images need {img.shape[0]} x h x w maps, got {tuple(maps.shape)}")
        return np.stack([overlay(img[b], maps[b], alpha, cmap, signed, mode, normalize) for b in range(img.shape[0])])
    rgb = as_image(img)
    m = _to_tensor(map)
    if m.dim() == 3 and m.shape[0] == 1:
        m = m[0]
    colour = colorize(upsample(m, rgb.shape[:2], mode), signed, cmap, normalize)
    return np.clip((1.0 - alpha) * rgb + alpha * colour, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ panels ------------
def clean_axes(ax: Axes) -> None:
    """No ticks, no frame; axis labels stay visible (row labels use the y label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _as_2d(map: ArrayLike, index: int = 0) -> torch.Tensor:
    t = _to_tensor(map)
    if t.dim() == 3:
        t = t[index]
    if t.dim() != 2:
        raise ValueError(f"expected an h x w map (or B x h x w with an index), got shape {tuple(t.shape)}")
    return t


def show_map(
    ax: Axes,
    map: ArrayLike,
    image: ArrayLike | None = None,
    signed: bool = False,
    title: str | None = None,
    colorbar: bool = False,
    *,
    cmap: str | Colormap | None = None,
    alpha: float = 0.5,
    mode: str = "bilinear",
    size: Size | None = None,
    normalize: bool = True,
    vmax: float | None = None,
) -> ScalarMappable:
    """Draw one map on ``ax``: alone, or over ``image`` (blended with ``alpha``).

    The map (h x w, or 1 x h x w) is upsampled to the image size (or ``size``) with
    ``mode``; without either it is drawn at its own resolution (``mode`` picks the
    display interpolation). ``normalize``: scale to [0, 1] / [-1, 1]; otherwise the
    colour scale is ``[min, max]`` / ``[-vmax, vmax]`` of the data unless ``vmax`` is
    given. Returns the mappable, for a shared colorbar.
    """
    raw = _as_2d(map)
    m = _to_tensor(normalize_map(raw, signed)) if normalize else raw
    if vmax is None:
        vmax = 1.0 if normalize else float(m.abs().max() if signed else m.max())
    norm = _norm(signed, vmax, None if (normalize or signed) else float(m.min()))
    colours = _cmap(signed, cmap)
    if image is not None:
        rgb = as_image(image)
        scaled = np.clip(norm(_to_numpy(upsample(m, rgb.shape[:2], mode))), 0.0, 1.0)
        ax.imshow(np.clip((1.0 - alpha) * rgb + alpha * colours(scaled)[..., :3], 0.0, 1.0))
    else:
        shown = upsample(m, size, mode) if size is not None else m
        ax.imshow(_to_numpy(shown), cmap=colours, norm=norm,
                  interpolation="nearest" if mode == "nearest" or size is not None else "bilinear")
    clean_axes(ax)
    if title:
        ax.set_title(title, fontsize=9)
    note = _flat_note(raw)
    if note:  # say so instead of leaving a blank panel unexplained
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.6")
    mappable = ScalarMappable(norm=norm, cmap=colours)
    if colorbar:
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03, shrink=0.9)
    return mappable


def _flat_note(m: torch.Tensor) -> str:
    """"all zero" / "constant" for maps with nothing to show, else ""."""
    finite = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    if not bool((finite != 0).any()):
        return "all zero"
    return "constant" if float(finite.max() - finite.min()) == 0 else ""


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure with constrained layout (small margins, labels never clipped)."""
    return plt.figure(figsize=figsize, layout="constrained")


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
        cb = fig.colorbar(ScalarMappable(norm=_norm(signed), cmap=_cmap(signed, cmap)), ax=panels,
                          shrink=0.8 if len(used) == 1 else 0.6, aspect=30, pad=0.01)
        # every panel is scaled on its own: the bar gives the scale of each map, not a shared one
        cb.set_label("signed relevance, each map / its max |R|" if signed else "relevance, each map min-max scaled",
                     fontsize=8)
        cb.ax.tick_params(labelsize=7)


def _image_batch(images: ArrayLike | None) -> torch.Tensor | None:
    if images is None:
        return None
    t = _to_tensor(images)
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
        return _new_figure((width, self.panel_size * rows + 0.4))


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
    (brightness = importance). One colorbar per colour scale used.

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
        fig = _grid_images(imgs, maps, layer, style, image_titles)
        if title is None and layer is not None:
            title = f"at {layer_label(layer)}"
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _display_size(imgs: torch.Tensor | None, tensors: Iterable[ArrayLike | None]) -> tuple[int, int]:
    """Image size, else the largest map's size."""
    if imgs is not None:
        return int(imgs.shape[-2]), int(imgs.shape[-1])
    sizes = [tuple(_to_tensor(t).shape[-2:]) for t in tensors if t is not None]
    return max(sizes, key=lambda s: s[0] * s[1])  # type: ignore[return-value]


def _one_map(m: ArrayLike | None, index: int) -> ArrayLike | None:
    """Map ``index`` of a B x h x w batch (an h x w map as it is)."""
    if m is None:
        return None
    return _as_2d(m, index) if _to_tensor(m).dim() == 3 else m


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
                 image_titles: Sequence[str] | None) -> Figure:
    """Figures 3 and 4: images as rows, methods as columns, one layer."""
    methods = list(maps)
    picked = {k: _pick_layer(v, layer, k) for k, v in maps.items()}
    present = [_to_tensor(v) for v in picked.values() if v is not None]
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
    if style.colorbar:
        _add_colorbars(fig, by_kind, style.cmap)
    return fig


# ------------------------------------------------------------------ components ------------
def _components_2d(components: ArrayLike, index: int = 0) -> torch.Tensor:
    """c x h x w components (picking image ``index`` from B x c x h x w)."""
    t = _to_tensor(components)
    if t.dim() == 4:
        t = t[index]
    if t.dim() != 3:
        raise ValueError(f"components must be c x h x w or B x c x h x w, got shape {tuple(t.shape)}")
    return t


def top_channels(components: ArrayLike, k: int = 8, weights: ArrayLike | None = None, index: int = 0) -> list[int]:
    """Indices of the ``k`` channels with the largest total ``|relevance|`` (or weight, when given)."""
    comps = _components_2d(components, index)
    if weights is not None:
        w = _to_tensor(weights)
        score = (w[index] if w.dim() == 2 else w).reshape(-1)
        if score.numel() != comps.shape[0]:
            raise ValueError(f"{score.numel()} weights for {comps.shape[0]} channels")
    else:
        score = comps.abs().sum((1, 2))
    k = max(1, min(int(k), comps.shape[0]))
    return torch.argsort(score, descending=True, stable=True)[:k].tolist()


def component_strip(
    components: ArrayLike,
    k: int = 8,
    image: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
    order: str = "relevance",
    index: int = 0,
    ncols: int | None = None,
    mode: str = "nearest",
    colorbar: bool = True,
    panel_size: float = 1.4,
    fig: Figure | SubFigure | None = None,
    title: str | None = None,
    channel_names: Sequence[str] | None = None,
) -> Figure | SubFigure:
    """Per-channel explanation components of the top-``k`` channels, on one signed scale.

    ``components``: c x h x w or B x c x h x w (image ``index``). Channels are ranked by
    total ``|relevance|`` (``order="relevance"``) or by CAM weight (``order="weight"``,
    needs ``weights``: c or B x c). Each panel is titled with the channel index, its
    sum and (when ``weights`` are given) its weight; all panels share ``[-v, v]`` with
    ``v`` the largest ``|I|`` shown, so channels are comparable. ``image`` adds a
    leading reference panel. Draws into ``fig`` (a figure or subfigure) when given.
    ``channel_names`` (one per channel, e.g. "RGB" at the input) replace "ch i".

        >>> expl = fg.explain(x, layer=13)
        >>> fig = component_strip(expl.components[13], k=8, image=x_display[0])
    """
    if order not in ("relevance", "weight"):
        raise ValueError(f"unknown order {order!r}; use 'relevance' or 'weight'")
    if order == "weight" and weights is None:
        raise ValueError("order='weight' needs weights")
    comps = _components_2d(components, index)
    chosen = top_channels(comps, k, weights if order == "weight" else None)
    w = None if weights is None else _to_tensor(weights)
    w = None if w is None else (w[index] if w.dim() == 2 else w).reshape(-1)
    if w is not None and w.numel() != comps.shape[0]:
        w = None  # weights of another layer: rank and title by relevance only
    lead = 1 if image is not None else 0
    n = len(chosen) + lead
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = -(-n // ncols)
    if fig is None:
        fig = _new_figure((panel_size * ncols + (0.8 if colorbar else 0.2), panel_size * nrows + 0.55))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    vmax = float(comps[chosen].abs().max()) or 1.0
    if image is not None:
        axes[0].imshow(as_image(image))
        clean_axes(axes[0])
        axes[0].set_title("image", fontsize=8)
    for ax, c in zip(axes[lead:], chosen):
        name = channel_names[c] if channel_names is not None else f"ch {c}"
        label = f"{name}\nΣ {float(comps[c].sum()):+.2g}"
        if w is not None:
            label += f"\nw {float(w[c]):+.2g}"
        show_map(ax, comps[c], signed=True, normalize=False, vmax=vmax, mode=mode, title=label)
        ax.title.set_fontsize(7.5)
    for ax in axes[n:]:
        ax.set_axis_off()
    if colorbar:
        cb = fig.colorbar(ScalarMappable(norm=_norm(True, vmax), cmap=_cmap(True)), ax=list(axes[lead:n]),
                          shrink=0.85, aspect=20, pad=0.01)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"top {len(chosen)} of {comps.shape[0]} channels by "
                 f"{'weight' if order == 'weight' else 'total |relevance|'}", fontsize=9)
    return fig


def singular_values_plot(
    ax: Axes,
    components: ArrayLike,
    fraction: float | None = 0.1,
    *,
    index: int = 0,
    log: bool = True,
    title: str | None = None,
) -> Axes:
    """The SVD spectrum of the row-centred C x K component matrix (K = h w).

    The singular values kept by denoising with rank fraction ``fraction``
    (``floor(fraction * min(C, K))``, at least 1) are drawn in colour, the rest in
    grey, with the cut marked and the share of energy (sum of squares) kept.

        >>> I = TopComponents(fg, x).components
        >>> singular_values_plot(plt.gca(), I, fraction=0.1)
    """
    from ..methods.fgcam import denoise_rank

    comps = _components_2d(components, index).double()
    C = comps.shape[0]
    M = comps.reshape(C, -1)
    M = M - M.mean(1, keepdim=True)
    S = torch.linalg.svdvals(M).numpy()
    x = np.arange(1, len(S) + 1)
    rank = denoise_rank(fraction, C, M.shape[1]) if fraction is not None else len(S)
    energy = float((S[:rank] ** 2).sum() / max((S ** 2).sum(), 1e-300))
    nonzero = S > S.max(initial=0.0) * 1e-9  # centring makes the last value ~0 when K <= C
    zeros = int((~nonzero).sum())
    x, S_shown = x[nonzero], S[nonzero]
    ax.plot(x, S_shown, color="0.75", lw=1, zorder=1)
    kept = x <= rank
    ax.scatter(x[~kept], S_shown[~kept], s=12, color="0.6", zorder=2,
               label="dropped" + (f" (+{zeros} ~ 0 not shown)" if zeros else ""))
    ax.scatter(x[kept], S_shown[kept], s=18, color="C3", zorder=3, label=f"kept: {rank} ({energy:.0%} of energy)")
    if fraction is not None:
        ax.axvline(rank + 0.5, color="C3", ls="--", lw=1)
    if log and len(S_shown):
        ax.set_yscale("log")
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="best")
    frac = f", fraction {fraction:g}" if fraction is not None else ""
    ax.set_title(title or f"SVD of {C} x {M.shape[1]} components{frac}", fontsize=9)
    return ax


# ------------------------------------------------------------------ metrics ------------
def metric_plot(
    df: Any,
    x: str,
    y: str = "mean",
    hue: str | None = None,
    *,
    lower: str = "ci_low",
    upper: str = "ci_high",
    ax: Axes | None = None,
    logx: bool = False,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Metric curves (e.g. vs depth or rank fraction) with confidence bands.

    ``df``: a tidy DataFrame with columns ``x``, ``y`` (default ``"mean"``), optional
    ``hue`` and the band columns ``lower``/``upper`` (drawn when present).

        >>> metric_plot(df, x="fraction", hue="method", logx=True, ylabel="insertion AUC")
    """
    import seaborn as sns

    if ax is None:
        ax = _new_figure((5.0, 3.4)).subplots()
    levels = list(dict.fromkeys(df[hue])) if hue else [None]
    palette = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    data = df.sort_values(x)
    sns.lineplot(data=data, x=x, y=y, hue=hue, palette=palette if hue else None, marker="o", errorbar=None, ax=ax,
                 color=None if hue else palette[None])
    if lower in df.columns and upper in df.columns:
        for level in levels:
            part = data if level is None else data[data[hue] == level]
            ax.fill_between(part[x], part[lower], part[upper], color=palette[level], alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    if hue and ax.get_legend() is not None:
        ax.legend(title=hue, fontsize=8, frameon=False)
    return ax


def save(fig: Figure | SubFigure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as an image (PNG unless the suffix says otherwise), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = fig.figure if isinstance(fig, SubFigure) else fig
    root.savefig(path, dpi=dpi, facecolor="white")
    return path
