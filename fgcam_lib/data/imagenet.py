"""ILSVRC2012 val images with labels and boxes (PASCAL VOC XML or Kaggle's CSV).

    >>> ds = ImageNetVal("val/", boxes="LOC_val_solution.csv", synsets="LOC_synset_mapping.txt")
    >>> ds = ImageNetVal.from_env()        # the FGCAM_IMAGENET_* variables
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

import torch
from PIL import Image
from torch.utils.data import Dataset

from .readers import PathLike, Size, as_hw, resize_image, load_image

__all__ = ["IMAGENET_ENV_VARS", "ImageNetVal", "read_synset_mapping"]


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
        self.size = as_hw(size)
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
        image = resize_image(native, self.size)
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
