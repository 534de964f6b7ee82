"""Real photos bundled with scikit-image (offline), each with its closest ImageNet-1k class.

    >>> x, names, classes = sample_photos(224, names=["cat"])
    >>> x.shape, names, classes
    (torch.Size([1, 3, 224, 224]), ['cat'], [281])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .readers import Size, as_hw, center_square, resize_image

__all__ = ["SamplePhoto", "SAMPLE_PHOTOS", "DEFAULT_SAMPLE_PHOTOS", "sample_photos"]


@dataclass(frozen=True)
class SamplePhoto:
    """A photo bundled with scikit-image and its closest ImageNet-1k class.

    Attributes:
        name: short name used by :func:`sample_photos`.
        loader: function name in ``skimage.data``.
        imagenet_class: ImageNet-1k class index (0..999, torchvision order).
        class_name: that class's name.
        note: why this class, alternatives, caveats.
    """

    name: str
    loader: str
    imagenet_class: int
    class_name: str
    note: str = ""


SAMPLE_PHOTOS: dict[str, SamplePhoto] = {
    p.name: p
    for p in (
        SamplePhoto("cat", "chelsea", 281, "tabby", "striped cat; 282 tiger cat and 285 Egyptian cat are close"),
        SamplePhoto("coffee", "coffee", 967, "espresso", "cup of espresso on a saucer; 968 cup, 504 coffee mug"),
        SamplePhoto(
            "astronaut",
            "astronaut",
            812,
            "space shuttle",
            "no 'astronaut' class; the shuttle model at the top right (small object); 518 crash helmet",
        ),
        SamplePhoto("rocket", "rocket", 657, "missile", "rocket on a launch pad; 744 projectile, 812 space shuttle"),
        SamplePhoto(
            "motorcycle",
            "stereo_motorcycle",
            665,
            "moped",
            "no 'motorcycle' class; 670 motor scooter is the other candidate; left stereo view",
        ),
        SamplePhoto(
            "horse",
            "horse",
            339,
            "sorrel",
            "binary silhouette, not a photo: black horse on white; opt-in only",
        ),
    )
}
"""Every photo :func:`sample_photos` knows; all ship in the scikit-image wheel."""

DEFAULT_SAMPLE_PHOTOS: tuple[str, ...] = ("cat", "coffee", "astronaut", "rocket", "motorcycle")
"""The photos returned by default (the horse silhouette is left out: it is not a photo)."""


def _skimage_photo(spec: SamplePhoto) -> np.ndarray:
    """Load a photo as ``H x W x 3`` uint8 from ``skimage.data`` (bundled files only)."""
    import skimage.data

    arr = getattr(skimage.data, spec.loader)()
    if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:  # horse: True = background
        arr = np.where(arr, 255, 0).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def sample_photos(
    size: Size = 224,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, list[str], list[int]]:
    """Real photos shipped with scikit-image, centre-cropped square and resized.

    Works offline (the files are inside the scikit-image wheel). Each photo is
    cropped to its centred square, then resized (bilinear, antialiased).

    Args:
        size: output size (int -> square, or ``(H, W)``).
        names: which photos, from :data:`SAMPLE_PHOTOS`; default
            :data:`DEFAULT_SAMPLE_PHOTOS` (cat, coffee, astronaut, rocket, motorcycle).

    Returns:
        ``(images, names, imagenet_classes)``: ``images`` is ``[B, 3, H, W]`` float32 in
        [0, 1]; ``imagenet_classes[i]`` is the ImageNet-1k index closest to photo ``i``
        (``SAMPLE_PHOTOS[name].class_name`` gives its name).

    Example::

        >>> x, names, classes = sample_photos(224, names=["cat", "coffee"])
        >>> x.shape, names, classes
        (torch.Size([2, 3, 224, 224]), ['cat', 'coffee'], [281, 967])
    """
    hw = as_hw(size)
    chosen = list(DEFAULT_SAMPLE_PHOTOS if names is None else names)
    unknown = [n for n in chosen if n not in SAMPLE_PHOTOS]
    if unknown:
        raise KeyError(f"unknown sample photo(s) {unknown}; available: {sorted(SAMPLE_PHOTOS)}")
    images = []
    for name in chosen:
        arr = _skimage_photo(SAMPLE_PHOTOS[name])
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        images.append(resize_image(center_square(x), hw))
    return torch.stack(images), chosen, [SAMPLE_PHOTOS[n].imagenet_class for n in chosen]
