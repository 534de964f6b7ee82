"""Real photos shipped in the wheels the workbench installs (scikit-image, scikit-learn,
matplotlib; offline), each with its ImageNet-1k classes and a hand-drawn box round the object.

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

__all__ = ["SamplePhoto", "SAMPLE_PHOTOS", "DEFAULT_SAMPLE_PHOTOS", "sample_photos", "photo_boxes", "PhotoSet", "PhotoPairs"]


@dataclass(frozen=True)
class SamplePhoto:
    """A real photo shipped in a wheel the workbench installs, with its ImageNet-1k classes and a
    box around the object.

    Attributes:
        name: short name used by :func:`sample_photos`.
        loader: where it comes from: ``"skimage:chelsea"``, ``"sklearn:china.jpg"``,
            ``"matplotlib:grace_hopper.jpg"``.
        imagenet_class: the ImageNet-1k class index (0..999, torchvision order) it is labelled with.
        class_name: that class's name.
        note: why this class, alternatives, caveats.
        classes: every class that counts as correct (the label first).
        box: ``(x0, y0, x1, y1)`` around the object, in the original photo's pixels (x right, y
            down, x1 / y1 exclusive), drawn by hand: read off the photo drawn with a 50-pixel grid,
            to the nearest 5 pixels, around the object the classes name. None: no box.
        licence: the photo's licence, as its package states it.
    """

    name: str
    loader: str
    imagenet_class: int
    class_name: str
    note: str = ""
    classes: tuple[int, ...] = ()
    box: tuple[int, int, int, int] | None = None
    licence: str = ""

    @property
    def correct(self) -> tuple[int, ...]:
        """The classes that count as correct (at least the label)."""
        return self.classes or (self.imagenet_class,)


SAMPLE_PHOTOS: dict[str, SamplePhoto] = {
    p.name: p
    for p in (
        SamplePhoto("cat", "skimage:chelsea", 281, "tabby", "striped cat; 282 tiger cat and 285 Egyptian cat are close",
                    (281, 282, 285), (10, 0, 440, 300), "CC0 (Stefan van der Walt)"),
        SamplePhoto("coffee", "skimage:coffee", 967, "espresso", "cup of espresso on a saucer; 968 cup, 504 coffee mug",
                    (967, 968, 504), (170, 20, 400, 270), "CC0 (Rachel Michetti)"),
        SamplePhoto("astronaut", "skimage:astronaut", 812, "space shuttle",
                    "no 'astronaut' class; the shuttle model at the top right (small object); 518 crash helmet",
                    (812,), (355, 0, 465, 290), "public domain (NASA)"),
        SamplePhoto("rocket", "skimage:rocket", 657, "missile", "rocket on a launch pad; 744 projectile, 812 space shuttle",
                    (657, 744, 812), (300, 120, 350, 410), "public domain (SpaceX)"),
        SamplePhoto("motorcycle", "skimage:stereo_motorcycle", 665, "moped",
                    "no 'motorcycle' class; 670 motor scooter is the other candidate; left stereo view",
                    (665, 670), (95, 90, 685, 445), "Middlebury stereo data set (Scharstein et al. 2014), as scikit-image ships it"),
        SamplePhoto("china", "sklearn:china.jpg", 698, "palace",
                    "the Summer Palace's Tower of Buddhist Incense; no 'pagoda' class: 442 bell cote, 832 stupa, 663 monastery",
                    (698, 442, 832, 663), (60, 25, 370, 427), "CC BY 2.0 (danielbuechele, Flickr)"),
        SamplePhoto("flower", "sklearn:flower.jpg", 985, "daisy",
                    "a dahlia: no dahlia class, 985 daisy is the nearest flower; the box is the large bloom",
                    (985,), (170, 85, 450, 360), "CC BY 2.0 (vultilion, Flickr)"),
        SamplePhoto("grace_hopper", "matplotlib:grace_hopper.jpg", 652, "military uniform",
                    "Grace Hopper in uniform; the box is the uniform's jacket (a box round jacket and cap would be "
                    "nearly the whole photo)", (652,), (40, 280, 512, 600), "public domain (US Navy photograph)"),
        SamplePhoto("horse", "skimage:horse", 339, "sorrel", "binary silhouette, not a photo: black horse on white; opt-in only"),
    )
}
"""Every photo :func:`sample_photos` knows; all ship in wheels the workbench installs."""

DEFAULT_SAMPLE_PHOTOS: tuple[str, ...] = ("cat", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower",
                                          "grace_hopper")
"""The photos returned by default: every natural photo (the horse silhouette is left out)."""


def _load(spec: SamplePhoto) -> np.ndarray:
    """A photo as ``H x W x 3`` uint8, from the file inside its package's wheel."""
    package, _, item = spec.loader.partition(":")
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(item)
    elif package == "matplotlib":
        import matplotlib.image
        from matplotlib import cbook

        arr = matplotlib.image.imread(cbook.get_sample_data(item))
    else:
        import skimage.data

        arr = getattr(skimage.data, item)()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:  # horse: True = background
        arr = np.where(arr, 255, 0).astype(np.uint8)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def photo_boxes(size: Size = 224, names: Sequence[str] | None = None) -> list[tuple[float, float, float, float] | None]:
    """The hand-drawn boxes of :func:`sample_photos`' images, in their pixels (centre square,
    then resized to ``size``): ``(x0, y0, x1, y1)``, clipped to the image; None where a photo has
    no box or its box lies outside the square."""
    hw = as_hw(size)
    out: list[tuple[float, float, float, float] | None] = []
    for name in (DEFAULT_SAMPLE_PHOTOS if names is None else names):
        spec = SAMPLE_PHOTOS[name]
        if spec.box is None:
            out.append(None)
            continue
        h, w = _load(spec).shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x0, y0, x1, y1 = spec.box
        x0, x1 = max(x0 - left, 0), min(x1 - left, side)
        y0, y1 = max(y0 - top, 0), min(y1 - top, side)
        if x1 <= x0 or y1 <= y0:
            out.append(None)
            continue
        sy, sx = hw[0] / side, hw[1] / side
        out.append((x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    return out


def sample_photos(
    size: Size = 224,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, list[str], list[int]]:
    """Real photos shipped in installed wheels, centre-cropped square and resized.

    Works offline (the files are inside the scikit-image, scikit-learn and matplotlib wheels). Each photo is
    cropped to its centred square, then resized (bilinear, antialiased).

    Args:
        size: output size (int -> square, or ``(H, W)``).
        names: which photos, from :data:`SAMPLE_PHOTOS`; default
            :data:`DEFAULT_SAMPLE_PHOTOS` (every natural photo: cat, coffee, astronaut, rocket,
            motorcycle, china, flower, grace_hopper).

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
        arr = _load(SAMPLE_PHOTOS[name])
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        images.append(resize_image(center_square(x), hw))
    return torch.stack(images), chosen, [SAMPLE_PHOTOS[n].imagenet_class for n in chosen]


class PhotoSet:
    """The sample photos as an evaluation data set: items like a benchmark scene's.

    Item ``i`` is ``{"image": 3 x S x S in [0, 1], "label": the photo's ImageNet class,
    "classes": every class that counts as correct, "boxes": the hand-drawn box once per
    class}``, so the localization metrics score the box whichever correct class is explained.
    ``image_ids`` are the photos' names. Photos without a box inside the square are left out.

    Example:
        >>> ds = PhotoSet(224)
        >>> len(ds), ds.image_ids[:2], ds[0]["boxes"].shape
        (8, ['cat', 'coffee'], torch.Size([3, 4]))
    """

    def __init__(self, size: Size = 224, names: Sequence[str] | None = None) -> None:
        chosen = list(DEFAULT_SAMPLE_PHOTOS if names is None else names)
        boxes = photo_boxes(size, chosen)
        keep = [(n, b) for n, b in zip(chosen, boxes) if b is not None]
        if not keep:
            raise ValueError(f"none of the photos {chosen} has a box")
        self.image_ids: list[str] = [n for n, _ in keep]
        self.images, _, _ = sample_photos(size, self.image_ids)
        self._boxes = [b for _, b in keep]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        spec = SAMPLE_PHOTOS[self.image_ids[i]]
        classes = torch.tensor(spec.correct, dtype=torch.long)
        boxes = torch.tensor([self._boxes[i]] * len(classes), dtype=torch.float32)
        return {"image": self.images[i], "label": spec.imagenet_class, "classes": classes, "boxes": boxes}


class PhotoPairs:
    """Two real photos side by side, for class sensitivity on a real network: the two-object
    scenes of the benchmark, made of photos.

    Each item is a ``size`` x ``size`` grey canvas with photo ``a`` shrunk to half the side on
    the left and photo ``b`` on the right, both centred vertically; ``classes`` are the two
    photos' ImageNet labels, ``masks`` (2 x S x S) the two photos' squares and ``boxes`` the same
    squares. Pairs are every unordered pair of ``names`` (28 for the eight photos), in order.

    Example:
        >>> pairs = PhotoPairs(224)
        >>> len(pairs), pairs.image_ids[0], pairs[0]["classes"].tolist()
        (28, 'cat+coffee', [281, 967])
    """

    def __init__(self, size: int = 224, names: Sequence[str] | None = None, n: int | None = None) -> None:
        chosen = list(DEFAULT_SAMPLE_PHOTOS if names is None else names)
        if len(chosen) < 2:
            raise ValueError("PhotoPairs needs at least two photos")
        half = size // 2
        self.size, self._photos = size, dict(zip(chosen, sample_photos(half, chosen)[0]))
        pairs = [(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1:]]
        self.pairs: list[tuple[str, str]] = pairs[:n] if n is not None else pairs
        self.image_ids: list[str] = [f"{a}+{b}" for a, b in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        a, b = self.pairs[i]
        s, h = self.size, self.size // 2
        top = (s - h) // 2
        image = torch.full((3, s, s), 0.5)
        masks = torch.zeros(2, s, s, dtype=torch.bool)
        for k, name in enumerate((a, b)):
            image[:, top:top + h, k * h:(k + 1) * h] = self._photos[name]
            masks[k, top:top + h, k * h:(k + 1) * h] = True
        boxes = torch.tensor([[0, top, h, top + h], [h, top, 2 * h, top + h]], dtype=torch.float32)
        classes = torch.tensor([SAMPLE_PHOTOS[a].imagenet_class, SAMPLE_PHOTOS[b].imagenet_class])
        return {"image": image, "label": int(classes[0]), "classes": classes, "masks": masks, "boxes": boxes}
