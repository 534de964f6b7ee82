"""Images with their annotations, ready for the model: the one batch type of the evaluation.

The runner, the ablation sweeps and the notebooks load data set items (dicts with
``image`` 3 x H x W in [0, 1] and optionally ``label``, ``classes``, ``boxes``,
``masks``, as :class:`~fgcam_lib.data.scenes.SyntheticScenes`, ``ImageNetVal`` and
``ImageFolderDataset`` give them) into a :class:`Batch`, and ask it for the region a
localization metric scores: the objects of the explained class, else those of the label,
else every object.

    >>> batch = load_batch(SyntheticScenes("test", 8, size=96), preprocess)
    >>> batch.x.shape, batch.labels[:3]                  # B x 3 x S x S normalised, B labels
    >>> boxes, masks = batch.region(batch.labels)        # [k_i x 4], B x S x S
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Batch", "load_batch", "dataset_image_ids"]


@dataclass
class Batch:
    """Images ready for the model, with their annotations.

    ``x``: B x 3 x S x S normalised; ``images``: the same in [0, 1] (for display);
    ``labels``: B long (-1: unknown); ``classes[i]``: n_i object classes, or None;
    ``boxes[i]``: n_i x 4 (x0, y0, x1, y1) in pixels of ``x``, or None; ``masks[i]``:
    n_i x S x S bool, or None; ``indices``: positions in the data set; ``ids``: stable
    image ids (file names, else the position as text).
    """

    x: Tensor
    images: Tensor
    labels: Tensor
    classes: list[Tensor | None]
    boxes: list[Tensor | None]
    masks: list[Tensor | None]
    indices: list[int]
    ids: list[str]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows: Sequence[int] | slice) -> "Batch":
        """The images at ``rows`` (a slice or positions in this batch)."""
        idx = list(range(len(self)))[rows] if isinstance(rows, slice) else [int(r) for r in rows]
        sel = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return Batch(self.x[sel.to(self.x.device)], self.images[sel.to(self.images.device)], self.labels[sel],
                     pick(self.classes), pick(self.boxes), pick(self.masks), pick(self.indices), pick(self.ids))

    def region_of(self, j: int, target: int) -> tuple[Tensor | None, Tensor | None]:
        """Boxes (k x 4) and mask union (S x S) of image ``j``'s objects of class ``target``.

        Falls back to the objects of the label's class, then to every object. None when
        the image has no boxes (the mask: when it has no mask per box).
        """
        boxes, masks, classes = self.boxes[j], self.masks[j], self.classes[j]
        if boxes is None or boxes.shape[0] == 0:
            return None, None
        pick = torch.ones(boxes.shape[0], dtype=torch.bool)
        if classes is not None and classes.numel() == boxes.shape[0]:
            for wanted in (int(target), int(self.labels[j])):
                hit = classes == wanted
                if bool(hit.any()):
                    pick = hit
                    break
        union = masks[pick].any(0) if masks is not None and masks.shape[0] == boxes.shape[0] else None
        return boxes[pick], union

    def regions(self, target: Tensor | Sequence[int]) -> list[tuple[Tensor | None, Tensor | None]]:
        """:meth:`region_of` for every image (``target``: one class per image)."""
        return [self.region_of(j, int(target[j])) for j in range(len(self))]

    def region(self, target: Tensor | Sequence[int]) -> tuple[list[Tensor], Tensor]:
        """Boxes (list of k_i x 4) and mask unions (B x S x S bool) of every image's region;
        an image without boxes gets 0 boxes, one without masks an empty mask."""
        hw = tuple(self.x.shape[-2:])
        out = self.regions(target)
        boxes = [b if b is not None else torch.zeros(0, 4) for b, _ in out]
        masks = [m if m is not None else torch.zeros(hw, dtype=torch.bool) for _, m in out]
        return boxes, torch.stack(masks)


def dataset_image_ids(dataset: Any, indices: Sequence[int]) -> list[str]:
    """Stable ids of the images at ``indices``, known without loading them.

    File name for file-backed data sets (``ImageNetVal``, ``ImageFolderDataset``), the
    data set's own ``image_ids`` where it has them (``PhotoSet``: the photos' names), the
    position in the data set otherwise (a scene's index).
    """
    own = getattr(dataset, "image_ids", None)
    if own is not None:
        return [str(own[i]) for i in indices]
    records = getattr(dataset, "records", None)
    paths = getattr(dataset, "paths", None)
    if records is not None:
        return [Path(records[i].path).name for i in indices]
    if paths is not None:
        return [Path(paths[i]).name for i in indices]
    return [str(int(i)) for i in indices]


def _annotations(item: Mapping[str, Any], hw: tuple[int, int]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """An item's classes (n), boxes (n x 4) and masks (n x H x W) rescaled from its image size to ``hw``."""
    h0, w0 = item["image"].shape[-2:]
    boxes, masks = item.get("boxes"), item.get("masks")
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if (h0, w0) != hw:
            boxes = boxes * torch.tensor([hw[1] / w0, hw[0] / h0, hw[1] / w0, hw[0] / h0])
    if masks is not None:
        masks = torch.as_tensor(masks).bool()
        if not masks.numel():
            masks = masks.new_zeros((0, *hw))
        elif masks.shape[-2:] != hw:
            masks = F.interpolate(masks[:, None].float(), size=hw, mode="nearest")[:, 0] > 0.5
    classes = torch.as_tensor(item["classes"]).long().reshape(-1) if "classes" in item else None
    return classes, boxes, masks


def load_batch(
    dataset: Any,
    preprocess: Callable[[Tensor], Tensor] | None,
    n: int | None = None,
    indices: Sequence[int] | None = None,
    *,
    ids: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> Batch:
    """Load the first ``n`` items of ``dataset`` (all when None), or those at ``indices``.

    ``preprocess`` maps images in [0, 1] to the model's input (resize + normalise; None
    when the items are ready); boxes and masks are rescaled to its size. ``ids``: the
    images' ids (default :func:`dataset_image_ids`); ``device``: where ``x`` goes.

    Example:
        >>> b = load_batch(SyntheticScenes("loc", 4, size=96), Preprocess(96))
        >>> b.region_of(0, int(b.labels[0]))[0]          # the box of the object, 1 x 4
    """
    if indices is None:
        indices = range(len(dataset) if n is None else min(int(n), len(dataset)))
    indices = [int(i) for i in indices]
    items = [dataset[i] for i in indices]
    if not items:
        raise ValueError("no images to load")
    raw = [it["image"] if it["image"].dim() == 4 else it["image"][None] for it in items]
    x = torch.cat([preprocess(im) if preprocess is not None else im for im in raw])
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    # the display copy follows x's size (for ready items, x is the image itself)
    images = torch.cat([im if tuple(im.shape[-2:]) == hw else
                        F.interpolate(im.float(), size=hw, mode="bilinear", align_corners=False).clamp(0, 1)
                        for im in raw])
    classes, boxes, masks = (list(col) for col in zip(*(_annotations(it, hw) for it in items)))
    labels = torch.tensor([int(it.get("label", -1)) for it in items], dtype=torch.long)
    ids = list(ids) if ids is not None else dataset_image_ids(dataset, indices)
    if device is not None:
        x = x.to(device)
    return Batch(x, images, labels, classes, boxes, masks, indices, ids)
