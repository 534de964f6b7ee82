"""Image folders and batching: a folder of images as a data set, and the ``DataLoader`` collate
function for every data set of :mod:`fgcam_lib.data`.

Every image leaves :mod:`fgcam_lib.data` as a float32 tensor in [0, 1], channels first
(``3 x H x W``, or ``B x 3 x H x W`` for a batch), *not* normalised: models apply
their own mean/std (see ``fgcam_lib.data.models``). Reading files, PIL images and arrays
is :mod:`.readers`, the bundled photos :mod:`.photos`, ImageNet val with boxes :mod:`.imagenet`.

- :class:`ImageFolderDataset`: any folder of images, no labels.
- :func:`collate`: a ``DataLoader`` collate function for the folders, ``ImageNetVal``,
  ``PhotoSet`` and ``SyntheticScenes`` (:mod:`fgcam_lib.data.scenes`).

Example::

    >>> ds = ImageFolderDataset("my_photos/", size=224)
    >>> batch = collate([ds[0], ds[1]])
    >>> batch["image"].shape
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .readers import PathLike, Size, as_hw, image_extensions, load_image

__all__ = ["VARIABLE_KEYS", "ImageFolderDataset", "collate"]


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
        self.size = as_hw(size)
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
