"""Reading images into tensors: files, PIL images, arrays, tensors, lists of them.

Every image leaves this module as a float32 tensor in [0, 1], channels first
(``3 x H x W``, or ``B x 3 x H x W`` for a batch), *not* normalised: models apply
their own mean/std (see ``fgcam_lib.data.models``).

    >>> x = load_image("cat.jpg", size=224)                 # 3 x 224 x 224
    >>> batch = to_batch(["cat.jpg", grey_array], size=96)  # 2 x 3 x 96 x 96
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["PathLike", "ImageSource", "Size", "load_image", "load_images", "image_extensions", "to_batch",
           "as_hw", "open_pil", "pil_to_rgb_array", "resize_image", "center_square"]

PathLike = Union[str, os.PathLike]
ImageSource = Union[PathLike, Image.Image]
Size = Union[int, tuple[int, int], None]


def as_hw(size: Size) -> tuple[int, int] | None:
    """Normalise ``size`` (int -> square, ``(H, W)``, or None) and validate it."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        hw = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"size must be an int, a (height, width) pair or None, got {size!r}")
    if min(hw) <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def open_pil(path: PathLike) -> Image.Image:
    """Open and fully decode ``path``; FileNotFoundError / ValueError on failure."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is not a readable image: it is a directory")
    try:
        with Image.open(p) as im:
            im.load()  # decode now: truncated files fail here, not later
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{str(p)!r} is not a readable image: {err}") from err


def pil_to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 array ``H x W x 3`` in [0, 1].

    16-bit and 32-bit integer grey modes are scaled by 65535, float mode ``F`` is
    clipped to [0, 1]; palette images go through RGBA; alpha is dropped.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return rgb


def resize_image(x: Tensor, hw: tuple[int, int] | None) -> Tensor:
    """Bilinear, antialiased resize of ``[..., C, H, W]`` to ``hw``; clamped to [0, 1]."""
    if hw is None or tuple(x.shape[-2:]) == hw:
        return x
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batched, size=hw, mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp_(0.0, 1.0)
    return out if x.dim() == 4 else out[0]


def center_square(x: Tensor) -> Tensor:
    """Crop ``[..., H, W]`` to its centred ``s x s`` square, ``s = min(H, W)``."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def load_image(
    path_or_pil: ImageSource,
    size: Size = None,
    *,
    exif_transpose: bool = True,
) -> Tensor:
    """Load one image as a float32 RGB tensor in [0, 1].

    Grey, grey+alpha, RGBA, CMYK, palette and 16-bit grey images all become RGB (alpha
    is dropped). ``size``: None keeps the native size, an int gives ``size x size``, a
    pair gives ``(H, W)``; resizing is bilinear with antialiasing and does not keep
    the aspect ratio (as in the paper: the whole image goes to 224 x 224).

    Args:
        path_or_pil: a file path or a ``PIL.Image.Image``.
        size: target size, see above.
        exif_transpose: rotate according to the EXIF orientation tag (photos from
            phones); turn off when pixel coordinates (boxes) refer to the stored image.

    Returns:
        Tensor ``[3, H, W]``, float32, values in [0, 1].

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ValueError: the file exists but is not a readable image.

    Example::

        >>> x = load_image("cat.jpg", size=224)
        >>> x.shape, x.dtype
        (torch.Size([3, 224, 224]), torch.float32)
    """
    hw = as_hw(size)
    if isinstance(path_or_pil, Image.Image):
        im = path_or_pil
    elif isinstance(path_or_pil, (str, os.PathLike)):
        im = open_pil(path_or_pil)
    else:
        raise TypeError(f"expected a path or a PIL image, got {type(path_or_pil).__name__}")
    if exif_transpose:
        im = ImageOps.exif_transpose(im)
    arr = pil_to_rgb_array(im)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return resize_image(x, hw)


def load_images(paths: Iterable[ImageSource], size: Size = 224) -> Tensor:
    """Load several images into one batch ``[B, 3, H, W]`` in [0, 1].

    With ``size=None`` all images must already share one size.

    Example::

        >>> load_images(["a.jpg", "b.png"], size=(224, 224)).shape
        torch.Size([2, 3, 224, 224])
    """
    images = [load_image(p, size) for p in paths]
    if not images:
        raise ValueError("load_images got no paths")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size= to resize them")
    return torch.stack(images)


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) that the installed PIL can read."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


# --------------------------------------------------------------------------- anything -> a batch

ImageInput = Union[ImageSource, np.ndarray, Tensor, Sequence[Any]]

#: float pixels may overshoot [0, 1] by this much (bicubic resizing) and still count as [0, 1]
RANGE_TOLERANCE = 1e-2


def _layout(shape: tuple[int, ...], channels_first: bool) -> str:
    """``"first"`` or ``"last"``: where the channels of a 3-D image are (C in 1, 3, 4)."""
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first and last:  # tiny or ambiguous: the container's convention decides
        return "first" if channels_first else "last"
    if first or last:
        return "first" if first else "last"
    raise ValueError(f"an image array must be H x W, H x W x C or C x H x W with C = 1, 3 or 4 "
                     f"(grey, RGB, RGBA), got shape {shape}")


def _as_chw(t: Tensor, channels_first: bool) -> Tensor:
    """2-D, 3-D or 4-D pixels -> ``B x C x H x W`` (channels detected, 1 and 4 kept for now)."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return (t if _layout(tuple(t.shape), channels_first) == "first" else t.permute(2, 0, 1))[None]
    if t.dim() == 4:
        if t.shape[0] == 0:
            raise ValueError(f"got an empty batch of images (shape {tuple(t.shape)}); pass at least one image")
        return t if _layout(tuple(t.shape[1:]), channels_first) == "first" else t.permute(0, 3, 1, 2)
    raise ValueError(f"expected an image (H x W, H x W x C, C x H x W) or a batch B x C x H x W, "
                     f"got shape {tuple(t.shape)}")


def _to_rgb(x: Tensor) -> Tensor:
    """``B x {1, 3, 4} x H x W`` -> ``B x 3 x H x W``: grey repeated, alpha dropped (as :func:`load_image`)."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    return x[:, :3] if x.shape[1] == 4 else x


def _unit_range(t: Tensor) -> Tensor:
    """Pixels of any dtype -> float32 in [0, 1]; one-line errors for values that cannot be pixels."""
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        t = t.to(torch.int64)  # torch has no min/max for uint16
        top = 65535.0 if int(t.max()) > 255 else 255.0  # 16-bit grey photos
        if int(t.min()) < 0 or int(t.max()) > top:
            raise ValueError(f"integer pixels must lie in [0, 255] (or [0, 65535]), got [{int(t.min())}, {int(t.max())}]")
        return t.float() / top
    t = t.float()
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        raise ValueError(f"the image has {t.numel() - int(finite.sum())} NaN or infinite value(s); "
                         "fix it (torch.nan_to_num) or reload the file")
    lo, hi = float(t.detach().min()), float(t.detach().max())
    if hi > 1 + RANGE_TOLERANCE and lo >= 0:
        raise ValueError(f"float pixels must lie in [0, 1], these reach {hi:.4g}: divide by 255 "
                         "(x / 255) or pass uint8 pixels")
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"float pixels must lie in [0, 1], these span [{lo:.3g}, {hi:.3g}]: if they are "
                         "already normalised, give them to the explainer directly, not to preprocess")
    return t


def _one(item: Any, size: Size) -> Tensor:
    """One path / PIL image / array / tensor (an image or a batch) -> ``B x 3 x H x W`` in [0, 1]."""
    hw = as_hw(size)
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return load_image(item, hw)[None]
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "US":
            raise TypeError("got an array of strings; pass the paths as a list")
        t, channels_first = torch.from_numpy(np.ascontiguousarray(item)), False  # numpy: H x W x C
    elif isinstance(item, Tensor):
        t, channels_first = item, True  # torch: C x H x W (gradients kept)
    else:
        raise TypeError(f"expected a path, a PIL image, an array or tensor, or a list of them, "
                        f"not {type(item).__name__}")
    if t.numel() == 0:
        raise ValueError(f"got an empty image or batch (shape {tuple(t.shape)}); pass at least one image")
    x = _to_rgb(_as_chw(t, channels_first))
    return resize_image(_unit_range(x), hw)


def to_batch(images: ImageInput, size: Size = None) -> Tensor:
    """Any image input -> a ``B x 3 x H x W`` float32 batch in [0, 1] (not normalised).

    Takes a path, a PIL image, a numpy array or a tensor, or a list of any of these:
    grey ``H x W``, ``H x W x C`` (numpy's layout) and ``C x H x W`` (torch's) with C = 1,
    3 or 4 (grey repeated, alpha dropped), and batches ``B x C x H x W`` / ``B x H x W x C``.
    The layout is read from which axis has 1, 3 or 4 entries; when both ends do, numpy
    arrays are taken as channels-last and tensors as channels-first. uint8 is scaled by
    1/255, float64 and half become float32. ``size`` (int or ``(H, W)``) resizes every
    image (bilinear, antialiased); without it a list's images must share one size.

    Raises a one-line ``ValueError`` / ``TypeError`` for: no images or an empty batch,
    a missing or unreadable file, NaN/Inf, float pixels outside [0, 1] (e.g. [0, 255]
    floats: divide by 255; or already normalised input).

    Example::

        >>> to_batch(["cat.jpg", "dog.png"], size=224).shape
        torch.Size([2, 3, 224, 224])
        >>> to_batch(np.zeros((3, 50, 60), np.float32)).shape      # C x H x W numpy array
        torch.Size([1, 3, 50, 60])
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images; pass at least one")
        parts = [_one(item, size) for item in images]
        shapes = sorted({tuple(p.shape[1:]) for p in parts})
        if len(shapes) > 1:
            raise ValueError(f"the images have different sizes {shapes}; pass size= (the model's preprocess "
                             "resizes them) or resize them first")
        return torch.cat(parts)
    return _one(images, size)
