"""Maps as pictures: arrays, upsampling, normalisation, colours, overlays and one-panel maps.

Non-negative maps use one sequential colormap (:data:`SEQUENTIAL_CMAP`, brighter = more
important, as in the paper's Figure 1); signed maps use a diverging one
(:data:`DIVERGING_CMAP`: red positive, white zero, blue negative, as in Figure 4).

    >>> from fgcam_lib.ui.overlays import overlay, show_map
    >>> rgb = overlay(image, maps[0])                  # H x W x 3 in [0, 1]
    >>> show_map(ax, maps[0], image, colorbar=True)     # the same, drawn on an Axes

Images are display images, 3 x H x W (or H x W x 3) in [0, 1]; maps are h x w (or
B x h x w) tensors or arrays at any resolution, upsampled to the image size.
The grids (:mod:`.grids`) and the component panels (:mod:`.panels`) draw with these;
:mod:`.viz` gathers them all under one name.
"""
from __future__ import annotations

from typing import Sequence, Union

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

__all__ = [
    "SEQUENTIAL_CMAP", "DIVERGING_CMAP", "ArrayLike", "Size",
    "as_tensor", "as_array", "as_image", "as_map", "one_image", "upsample", "normalize_map", "colormap", "color_scale",
    "colorize", "overlay", "clean_axes", "show_map", "new_figure",
]

#: colormap of non-negative maps (perceptually uniform; brightness grows with importance)
SEQUENTIAL_CMAP = "inferno"
#: colormap of signed maps: red positive, white zero, blue negative (the paper's Figure 4)
DIVERGING_CMAP = "bwr"

ArrayLike = Union[torch.Tensor, np.ndarray]
Size = Union[int, Sequence[int]]


# ------------------------------------------------------------------ arrays ------------
def as_tensor(x: ArrayLike) -> torch.Tensor:
    """Detached float32 CPU tensor."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to("cpu", torch.float32)


def as_array(x: ArrayLike) -> np.ndarray:
    """float32 numpy array."""
    return as_tensor(x).numpy()


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
    a = as_array(image)
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
    t = as_tensor(map)
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
    t = torch.nan_to_num(as_tensor(m), nan=0.0, posinf=0.0, neginf=0.0)
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
def colormap(signed: bool, cmap: str | Colormap | None = None) -> Colormap:
    """The colormap to use: ``cmap`` if given, else the sequential or the diverging default."""
    if isinstance(cmap, Colormap):
        return cmap
    return matplotlib.colormaps[cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)]


def color_scale(signed: bool, vmax: float = 1.0, vmin: float | None = None) -> Normalize:
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
    a = as_array(normalize_map(m, signed) if normalize else m)
    unit = (a + 1.0) / 2.0 if signed else a
    return colormap(signed, cmap)(np.clip(unit, 0.0, 1.0))[..., :3].astype(np.float32)


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
    img = as_array(image)
    if img.ndim == 4 and img.shape[0] > 1:
        maps = as_tensor(map)
        if maps.dim() != 3 or maps.shape[0] != img.shape[0]:
            raise ValueError(f"{img.shape[0]} images need {img.shape[0]} x h x w maps, got {tuple(maps.shape)}")
        return np.stack([overlay(img[b], maps[b], alpha, cmap, signed, mode, normalize) for b in range(img.shape[0])])
    rgb = as_image(img)
    m = as_tensor(map)
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


def one_image(x: ArrayLike, dims: int, index: int = 0, what: str = "an h x w map") -> torch.Tensor:
    """``x`` with ``dims`` dimensions, picking image ``index`` when it has one more (a batch)."""
    t = as_tensor(x)
    if t.dim() == dims + 1:
        t = t[index]
    if t.dim() != dims:
        raise ValueError(f"expected {what} (or a batch of them with an index), got shape {tuple(t.shape)}")
    return t


def as_map(map: ArrayLike, index: int = 0) -> torch.Tensor:
    """An h x w map, from h x w or B x h x w (image ``index``)."""
    return one_image(map, 2, index)


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
    weighted: bool = False,
) -> ScalarMappable:
    """Draw one map on ``ax``: alone, or over ``image`` (blended with ``alpha``).

    The map (h x w, or 1 x h x w) is upsampled to the image size (or ``size``) with
    ``mode``; without either it is drawn at its own resolution (``mode`` picks the
    display interpolation). ``normalize``: scale to [0, 1] / [-1, 1]; otherwise the
    colour scale is ``[min, max]`` / ``[-vmax, vmax]`` of the data unless ``vmax`` is
    given. ``weighted``: the blend's opacity grows with ``sqrt |value|`` up to ``alpha``, so
    the image shows unchanged where the map is zero. Returns the mappable, for a shared colorbar.
    """
    raw = as_map(map)
    m = as_tensor(normalize_map(raw, signed)) if normalize else raw
    if vmax is None:
        vmax = 1.0 if normalize else float(m.abs().max() if signed else m.max())
    norm = color_scale(signed, vmax, None if (normalize or signed) else float(m.min()))
    colours = colormap(signed, cmap)
    if image is not None:
        rgb = as_image(image)
        scaled = np.clip(norm(as_array(upsample(m, rgb.shape[:2], mode))), 0.0, 1.0)
        # square root: weak evidence stays visible next to a few strong pixels
        a = alpha * np.sqrt(np.abs(2.0 * scaled - 1.0) if signed else scaled)[..., None] if weighted else alpha
        ax.imshow(np.clip((1.0 - a) * rgb + a * colours(scaled)[..., :3], 0.0, 1.0))
    else:
        shown = upsample(m, size, mode) if size is not None else m
        ax.imshow(as_array(shown), cmap=colours, norm=norm,
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


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure with constrained layout (small margins, labels never clipped)."""
    return plt.figure(figsize=figsize, layout="constrained")

