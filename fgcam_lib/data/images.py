"""Images and data sets: files, folders, bundled photos, ImageNet val with boxes.

Every image leaves this module as a float32 tensor in [0, 1], channels first
(``3 x H x W``, or ``B x 3 x H x W`` for a batch), *not* normalised: models apply
their own mean/std (see ``fgcam_lib.data.models``).

Public API
----------
- :func:`load_image`, :func:`load_images`: files or PIL images -> tensors.
- :func:`sample_photos`: real photos bundled with scikit-image (offline), with their
  closest ImageNet-1k class; :data:`SAMPLE_PHOTOS` lists them.
- :class:`ImageNetVal`: ILSVRC2012 val images + boxes (PASCAL VOC XML folder or the
  Kaggle ``LOC_val_solution.csv``) + synset mapping; ``from_env()`` reads env vars.
- :class:`ImageFolderDataset`: any folder of images, no labels.
- :func:`collate`: a ``DataLoader`` collate function for all of the above and for
  ``SyntheticScenes`` (:mod:`fgcam_lib.data.scenes`).

Example::

    >>> from fgcam_lib.data import sample_photos, collate
    >>> x, names, classes = sample_photos(224)
    >>> x.shape, names[0], classes[0]
    (torch.Size([5, 3, 224, 224]), 'cat', 281)
"""

from __future__ import annotations

import csv
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGENET_ENV_VARS",
    "SAMPLE_PHOTOS",
    "DEFAULT_SAMPLE_PHOTOS",
    "ImageFolderDataset",
    "ImageNetVal",
    "SamplePhoto",
    "collate",
    "image_extensions",
    "load_image",
    "load_images",
    "read_synset_mapping",
    "sample_photos",
]

PathLike = Union[str, os.PathLike]
ImageSource = Union[PathLike, Image.Image]
Size = Union[int, tuple[int, int], None]


# --------------------------------------------------------------------------- single images


def _as_hw(size: Size) -> tuple[int, int] | None:
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


def _open_pil(path: PathLike) -> Image.Image:
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


def _pil_to_rgb_array(im: Image.Image) -> np.ndarray:
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


def _resize(x: Tensor, hw: tuple[int, int] | None) -> Tensor:
    """Bilinear, antialiased resize of ``[..., C, H, W]`` to ``hw``; clamped to [0, 1]."""
    if hw is None or tuple(x.shape[-2:]) == hw:
        return x
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batched, size=hw, mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp_(0.0, 1.0)
    return out if x.dim() == 4 else out[0]


def _center_square(x: Tensor) -> Tensor:
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
    hw = _as_hw(size)
    if isinstance(path_or_pil, Image.Image):
        im = path_or_pil
    elif isinstance(path_or_pil, (str, os.PathLike)):
        im = _open_pil(path_or_pil)
    else:
        raise TypeError(f"expected a path or a PIL image, got {type(path_or_pil).__name__}")
    if exif_transpose:
        im = ImageOps.exif_transpose(im)
    arr = _pil_to_rgb_array(im)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return _resize(x, hw)


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


# --------------------------------------------------------------------------- bundled photos


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
    hw = _as_hw(size)
    chosen = list(DEFAULT_SAMPLE_PHOTOS if names is None else names)
    unknown = [n for n in chosen if n not in SAMPLE_PHOTOS]
    if unknown:
        raise KeyError(f"unknown sample photo(s) {unknown}; available: {sorted(SAMPLE_PHOTOS)}")
    images = []
    for name in chosen:
        arr = _skimage_photo(SAMPLE_PHOTOS[name])
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        images.append(_resize(_center_square(x), hw))
    return torch.stack(images), chosen, [SAMPLE_PHOTOS[n].imagenet_class for n in chosen]


# --------------------------------------------------------------------------- ImageNet val

IMAGENET_ENV_VARS: dict[str, str] = {
    "FGCAM_IMAGENET_VAL": "folder of ILSVRC2012_val_*.JPEG images (e.g. .../ILSVRC/Data/CLS-LOC/val)",
    "FGCAM_IMAGENET_BOXES": "folder of per-image XML boxes (.../ILSVRC/Annotations/CLS-LOC/val) or LOC_val_solution.csv",
    "FGCAM_IMAGENET_SYNSETS": "LOC_synset_mapping.txt (lines 'n01440764 tench, Tinca tinca' in class-index order)",
}
"""Environment variables read by :meth:`ImageNetVal.from_env` and what each holds."""

_VAL_NAME = re.compile(r"^ILSVRC2012_val_\d+\.(jpe?g)$", re.IGNORECASE)

SynsetSpec = Union[PathLike, Mapping[str, int], Sequence[str], None]


@dataclass(frozen=True)
class _Record:
    """One annotated val image in original pixel coordinates."""

    path: Path
    synsets: tuple[str, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    width: int | None = None
    height: int | None = None


def _env_help() -> str:
    lines = [f"  export {k}=...   # {v}" for k, v in IMAGENET_ENV_VARS.items()]
    return "\n".join(lines)


def read_synset_mapping(path: PathLike) -> tuple[dict[str, int], list[str]]:
    """Read ``LOC_synset_mapping.txt``: line ``i`` is ``"<synset> <names>"`` of class ``i``.

    Returns:
        ``(synset_to_index, class_names)``, e.g. ``{"n01440764": 0, ...}`` and
        ``["tench, Tinca tinca", ...]``.

    Example::

        >>> idx, names = read_synset_mapping("LOC_synset_mapping.txt")
        >>> idx["n01440764"], names[0]
        (0, 'tench, Tinca tinca')
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"synset mapping file not found: {str(p)!r}")
    mapping: dict[str, int] = {}
    names: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        synset, _, name = line.partition(" ")
        if synset in mapping:
            raise ValueError(f"{str(p)!r}: synset {synset} appears twice")
        mapping[synset] = len(names)
        names.append(name.strip() or synset)
    return mapping, names


def _synset_mapping(synsets: SynsetSpec, seen: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Resolve the ``synsets`` argument of :class:`ImageNetVal` to ``(index map, names)``."""
    if synsets is None:
        distinct = sorted(set(seen))
        if len(distinct) != 1000:
            raise ValueError(
                f"the annotations name {len(distinct)} synsets, not 1000, so the class index of each "
                "cannot be inferred; pass synsets= (LOC_synset_mapping.txt, a dict or a list)"
            )
        return {s: i for i, s in enumerate(distinct)}, list(distinct)
    if isinstance(synsets, (str, os.PathLike)):
        return read_synset_mapping(synsets)
    if isinstance(synsets, Mapping):
        mapping = {str(k): int(v) for k, v in synsets.items()}
        names = [""] * (max(mapping.values(), default=-1) + 1)
        for s, i in mapping.items():
            names[i] = s
        return mapping, names
    listed = [str(s) for s in synsets]
    return {s: i for i, s in enumerate(listed)}, listed


def _parse_xml(path: Path) -> tuple[list[str], list[tuple[float, float, float, float]], int | None, int | None]:
    """Read one PASCAL VOC style annotation: synsets, boxes ``(x0, y0, x1, y1)``, width, height."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{str(path)!r} is not a valid XML annotation: {err}") from err

    def _num(node: ET.Element | None, tag: str) -> float | None:
        text = node.findtext(tag) if node is not None else None
        return float(text) if text not in (None, "") else None

    size = root.find("size")
    w, h = _num(size, "width"), _num(size, "height")
    synsets, boxes = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        coords = [_num(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            raise ValueError(f"{str(path)!r}: an <object> lacks a complete <bndbox>")
        synsets.append((obj.findtext("name") or "").strip())
        boxes.append(tuple(coords))  # type: ignore[arg-type]
    return synsets, boxes, (int(w) if w else None), (int(h) if h else None)


def _parse_csv(path: Path) -> dict[str, tuple[list[str], list[tuple[float, float, float, float]]]]:
    """Read Kaggle ``LOC_val_solution.csv``: ``ImageId -> (synsets, boxes)``."""
    out: dict[str, tuple[list[str], list[tuple[float, float, float, float]]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValueError(f"{str(path)!r} needs columns ImageId and PredictionString, has {reader.fieldnames}")
        for row in reader:
            tokens = row["PredictionString"].split()
            if len(tokens) % 5:
                raise ValueError(f"{str(path)!r}: PredictionString of {row['ImageId']} is not groups of 5")
            groups = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
            synsets = [g[0] for g in groups]
            boxes = [tuple(float(v) for v in g[1:]) for g in groups]
            out[row["ImageId"].strip()] = (synsets, boxes)  # type: ignore[assignment]
    return out


class ImageNetVal(Dataset):
    """ILSVRC2012 validation images with labels and bounding boxes.

    Layout (either annotation format)::

        root/ILSVRC2012_val_00000001.JPEG ...       (sub-folders are searched too)
        boxes = folder of ILSVRC2012_val_00000001.xml ...  (PASCAL VOC style)
             or LOC_val_solution.csv (ImageId, PredictionString "n0... x0 y0 x1 y1 ...")
        synsets = LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca", line i = class i),
                  a dict {synset: index}, a list of synsets in index order, or None
                  (only if the annotations name all 1000 synsets: sorted order = the
                  standard torchvision index order)

    With ``boxes`` given, only images that have an annotation are kept; with
    ``boxes=None`` every image is kept, with label -1 and no boxes.

    Each item is a dict:

    - ``"image"``: ``[3, size, size]`` float32 in [0, 1] (the whole image resized,
      aspect ratio not kept, as in the paper; ``size=None`` keeps the native size);
    - ``"label"``: int, class index of the first object (-1 if unknown);
    - ``"classes"``: ``[N]`` int64, class index of each box;
    - ``"boxes"``: ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` in the resized image's pixel
      coordinates: ``x * size_w / W``, ``y * size_h / H`` (no +-1 shift);
    - ``"path"``: str; ``"index"``: position in this data set.

    Example::

        >>> ds = ImageNetVal("val/", boxes="LOC_val_solution.csv", synsets="LOC_synset_mapping.txt")
        >>> loc = ds.localization_subset().random_subset(500, seed=0)  # the paper's setting
        >>> item = loc[0]; item["image"].shape, item["boxes"].shape
        (torch.Size([3, 224, 224]), torch.Size([1, 4]))
    """

    def __init__(
        self,
        root: PathLike,
        boxes: PathLike | None = None,
        synsets: SynsetSpec = None,
        size: Size = 224,
    ) -> None:
        self.root = Path(root)
        self.size = _as_hw(size)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"ImageNet val folder not found: {str(self.root)!r}. Point it at the folder holding "
                "ILSVRC2012_val_*.JPEG (Kaggle: ILSVRC/Data/CLS-LOC/val)."
            )
        images = sorted(
            (p for p in self.root.rglob("ILSVRC2012_val_*") if _VAL_NAME.match(p.name) and p.is_file()),
            key=lambda p: p.name,
        )
        if not images:
            raise FileNotFoundError(f"no ILSVRC2012_val_*.JPEG files in {str(self.root)!r}")
        self.records: list[_Record] = self._annotate(images, None if boxes is None else Path(boxes))
        self.synset_to_index, self.class_names = (
            _synset_mapping(synsets, (s for r in self.records for s in r.synsets))
            if boxes is not None or synsets is not None
            else ({}, [])
        )
        missing = {s for r in self.records for s in r.synsets} - set(self.synset_to_index)
        if missing:
            raise ValueError(f"synsets missing from the class mapping: {sorted(missing)[:5]}...")

    # -- construction helpers

    @staticmethod
    def _annotate(images: list[Path], boxes: Path | None) -> list[_Record]:
        """Attach annotations (if any) to image paths; drop images without one."""
        if boxes is None:
            return [_Record(p) for p in images]
        if not boxes.exists():
            raise FileNotFoundError(
                f"ImageNet box annotations not found: {str(boxes)!r}. Give the folder of val XML "
                "files (ILSVRC/Annotations/CLS-LOC/val) or LOC_val_solution.csv."
            )
        records: list[_Record] = []
        if boxes.is_dir():
            for p in images:
                xml = boxes / f"{p.stem}.xml"
                if xml.is_file():
                    syn, bxs, w, h = _parse_xml(xml)
                    records.append(_Record(p, tuple(syn), tuple(bxs), w, h))
        else:
            table = _parse_csv(boxes)
            for p in images:
                if p.stem in table:
                    syn, bxs = table[p.stem]
                    records.append(_Record(p, tuple(syn), tuple(bxs)))
        if not records:
            raise ValueError(f"none of the {len(images)} images has an annotation in {str(boxes)!r}")
        return records

    @classmethod
    def from_env(cls, size: Size = 224) -> "ImageNetVal":
        """Build from ``FGCAM_IMAGENET_VAL``, ``FGCAM_IMAGENET_BOXES``, ``FGCAM_IMAGENET_SYNSETS``.

        Raises:
            FileNotFoundError: a variable is unset (the message says what to set) or a
                path it names does not exist. Notebooks can catch it and fall back to
                ``SyntheticScenes``.

        Example::

            >>> try:
            ...     ds = ImageNetVal.from_env()
            ... except FileNotFoundError as err:
            ...     print(err)  # explains the three variables
        """
        unset = [k for k in IMAGENET_ENV_VARS if not os.environ.get(k)]
        if unset:
            raise FileNotFoundError(
                f"ImageNet val is not configured: {', '.join(unset)} not set. Set:\n{_env_help()}"
            )
        return cls(
            os.environ["FGCAM_IMAGENET_VAL"],
            boxes=os.environ["FGCAM_IMAGENET_BOXES"],
            synsets=os.environ["FGCAM_IMAGENET_SYNSETS"],
            size=size,
        )

    def _with_records(self, records: list[_Record]) -> "ImageNetVal":
        """A shallow copy of this data set over other records (no disk access)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.records = records
        return new

    # -- subsets

    def random_subset(self, n: int, seed: int = 0) -> "ImageNetVal":
        """``n`` images drawn without replacement, deterministically from ``seed``.

        Kept in file order; ``n`` larger than the data set returns all of it.

        Example::

            >>> ds.random_subset(2000, seed=0)  # the paper's faithfulness set size
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        gen = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(len(self.records), generator=gen)[: min(n, len(self.records))]
        return self._with_records([self.records[i] for i in sorted(chosen.tolist())])

    def _image_size(self, rec: _Record) -> tuple[int, int]:
        """``(width, height)`` of the stored image: from the XML, else the file header."""
        if rec.width and rec.height:
            return rec.width, rec.height
        with Image.open(rec.path) as im:
            return im.size

    def localization_subset(self, max_box_fraction: float = 0.5) -> "ImageNetVal":
        """Images with exactly one box covering at most ``max_box_fraction`` of the image.

        The paper's localization filter (after Score-CAM): one bounding box, no more
        than 50% of the pixels inside it. Box area ``(x1 - x0) * (y1 - y0)`` over
        ``W * H`` (resizing keeps the fraction).

        Example::

            >>> ds.localization_subset().random_subset(500, seed=0)
        """
        kept = []
        for rec in self.records:
            if len(rec.boxes) != 1:
                continue
            x0, y0, x1, y1 = rec.boxes[0]
            w, h = self._image_size(rec)
            if (x1 - x0) * (y1 - y0) <= max_box_fraction * w * h:
                kept.append(rec)
        return self._with_records(kept)

    # -- Dataset protocol

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.records)
        rec = self.records[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's EXIF/ICC chatter on some val JPEGs
            native = load_image(rec.path, None, exif_transpose=False)
        h, w = native.shape[-2:]
        image = _resize(native, self.size)
        out_h, out_w = image.shape[-2:]
        boxes = torch.tensor(rec.boxes, dtype=torch.float64).reshape(-1, 4)
        scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h], dtype=torch.float64)
        classes = torch.tensor([self.synset_to_index[s] for s in rec.synsets], dtype=torch.long)
        return {
            "image": image,
            "label": int(classes[0]) if len(classes) else -1,
            "classes": classes,
            "boxes": (boxes * scale).float(),
            "path": str(rec.path),
            "index": index,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, n={len(self)}, size={self.size})"


# --------------------------------------------------------------------------- plain folders


class ImageFolderDataset(Dataset):
    """Every image file in a folder (any extension PIL reads), sorted by name; no labels.

    Items: ``{"image": [3, H, W] in [0, 1], "label": -1, "path": str, "index": int}``;
    ``size`` as in :func:`load_image` (224 -> 224 x 224; None keeps native sizes).

    Example::

        >>> ds = ImageFolderDataset("my_photos/", size=224)
        >>> batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
        >>> batch["image"].shape
        torch.Size([4, 3, 224, 224])
    """

    def __init__(self, folder: PathLike, size: Size = 224, recursive: bool = False) -> None:
        self.folder = Path(folder)
        self.size = _as_hw(size)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(self.folder)!r}")
        exts = image_extensions()
        pattern = "**/*" if recursive else "*"
        self.paths: list[Path] = sorted(
            p for p in self.folder.glob(pattern) if p.is_file() and p.suffix.lower() in exts
        )
        if not self.paths:
            raise FileNotFoundError(f"no image files in {str(self.folder)!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.paths)
        path = self.paths[index]
        return {"image": load_image(path, self.size), "label": -1, "path": str(path), "index": index}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, n={len(self)}, size={self.size})"


# --------------------------------------------------------------------------- batching

VARIABLE_KEYS: frozenset[str] = frozenset({"boxes", "classes", "masks"})
"""Item keys whose values differ in length between items: kept as lists by :func:`collate`."""


def _collate_values(key: str, values: list[Any]) -> Any:
    """Batch the values of one key (see :func:`collate`)."""
    first = values[0]
    if key in VARIABLE_KEYS:
        return list(values)
    if isinstance(first, Tensor) and all(isinstance(v, Tensor) and v.shape == first.shape for v in values):
        return torch.stack(values)
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch item dicts for a ``DataLoader`` (``collate_fn=collate``).

    Same-shaped tensors (``"image"``, a fixed-size ``"mask"``) are stacked to
    ``[B, ...]``; ints (``"label"``, ``"index"``) become an int64 ``[B]`` tensor, floats a
    float32 ``[B]`` tensor; the variable-length keys ``"boxes"`` (``N_i x 4``),
    ``"classes"`` (``N_i``) and ``"masks"`` (``N_i x H x W``) stay lists of length B, as
    does anything else (``"path"`` strings, tensors of differing shapes).

    Example::

        >>> batch = collate([ds[0], ds[1]])
        >>> batch["image"].shape, len(batch["boxes"]), batch["label"]
        (torch.Size([2, 3, 224, 224]), 2, tensor([65, 970]))
    """
    if not items:
        raise ValueError("collate got an empty batch")
    keys = list(items[0].keys())
    for i, item in enumerate(items[1:], start=1):
        if set(item.keys()) != set(keys):
            raise ValueError(f"item {i} has keys {sorted(item)}, item 0 has {sorted(keys)}")
    return {k: _collate_values(k, [item[k] for item in items]) for k in keys}
