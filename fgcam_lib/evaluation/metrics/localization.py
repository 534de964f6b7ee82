"""Localization: Proportion of the map inside boxes or masks (Tables 3 and 6) and the pointing game."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .common import check_maps
from .maps import rank_pixels, upsample_maps

BoxesLike = Tensor | Sequence[Tensor | Sequence[Sequence[float]] | Sequence[float]]


def _boxes_of_image(boxes: Tensor | Sequence, device: torch.device) -> Tensor:
    """One image's boxes as an ``n x 4`` float64 tensor (``n`` may be 0)."""
    t = torch.as_tensor(boxes, dtype=torch.float64, device=device)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"boxes must be (x0, y0, x1, y1) rows, got shape {tuple(t.shape)}")
    return t


def boxes_to_masks(boxes: BoxesLike, size: tuple[int, int],
                   device: torch.device | str | None = None) -> Tensor:
    """Union of each image's boxes as a boolean ``B x H x W`` mask.

    Boxes are ``(x0, y0, x1, y1)`` in pixel coordinates of the image, ``x`` the
    column and ``y`` the row; pixel ``(row i, col j)`` (covering ``[j, j+1) x
    [i, i+1)``) is inside when its centre is: ``x0 <= j + 0.5 <= x1`` and
    ``y0 <= i + 0.5 <= y1``. For integer boxes this is the slice
    ``mask[y0:y1, x0:x1]`` (end exclusive). Boxes are clipped to the image.
    ``boxes``: a ``B x 4`` or ``B x n x 4`` tensor, or a length-B sequence of
    per-image boxes (each ``n_i x 4``, a single box, or empty).

    Example:
        >>> m = boxes_to_masks([[(1, 0, 3, 2)]], (3, 4))
        >>> m[0].int().tolist()
        [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    h, w = int(size[0]), int(size[1])
    if isinstance(boxes, Tensor) and boxes.ndim == 2:
        per_image: Sequence = [bx[None] for bx in boxes]
    else:
        per_image = boxes
    dev = torch.device(device) if device is not None else (
        boxes.device if isinstance(boxes, Tensor) else torch.device("cpu"))
    centres_r = torch.arange(h, device=dev, dtype=torch.float64) + 0.5
    centres_c = torch.arange(w, device=dev, dtype=torch.float64) + 0.5
    masks = []
    for bx in per_image:
        t = _boxes_of_image(bx, dev)
        rows = (centres_r[None] >= t[:, 1:2]) & (centres_r[None] <= t[:, 3:4])  # n x H
        cols = (centres_c[None] >= t[:, 0:1]) & (centres_c[None] <= t[:, 2:3])  # n x W
        masks.append((rows[:, :, None] & cols[:, None, :]).any(0))
    if not masks:
        return torch.zeros(0, h, w, dtype=torch.bool, device=dev)
    return torch.stack(masks)


def _check_masks(masks: Tensor, batch: int) -> Tensor:
    """Validate ``B x H x W`` ground-truth masks; return them as booleans."""
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a B x H x W tensor, got {shape}")
    if masks.shape[0] != batch:
        raise ValueError(f"there are {masks.shape[0]} masks for {batch} maps")
    return masks if masks.dtype == torch.bool else masks != 0


def proportion_mask(
    maps: Tensor,
    masks: Tensor,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Share of each map's positive mass inside the object mask ('Proportion').

    ``P = sum_{p in M} L+_p / sum_p L+_p`` with ``L+ = max(L, 0)`` the map upsampled
    to the mask's ``H x W``. Shapes: ``maps`` B x h x w, ``masks`` B x H x W (bool or
    0/1) -> B. A map with no positive value gives NaN (the share is undefined; use
    ``nanmean`` or count them).

    Example:
        >>> m = torch.tensor([[[1., 3.], [0., -2.]]])
        >>> proportion_mask(m, torch.tensor([[[False, True], [True, True]]]))
        tensor([0.7500])
    """
    maps = check_maps(maps)
    masks = _check_masks(masks, maps.shape[0]).to(maps.device)
    pos = upsample_maps(maps, tuple(masks.shape[1:]), mode=mode,
                        align_corners=align_corners).clamp(min=0).double()
    total = pos.flatten(1).sum(1)
    inside = (pos * masks).flatten(1).sum(1)
    share = inside / total
    return torch.where(total > 0, share, torch.full_like(share, float("nan"))).to(maps.dtype)


def proportion(
    maps: Tensor,
    boxes: BoxesLike,
    image_size: tuple[int, int],
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """The paper's localisation 'Proportion' with bounding boxes (Wang et al.).

    ``P = sum_{p in bbox} L+_p / sum_p L+_p``: the map is upsampled to
    ``image_size = (H, W)`` (the resize is then exact), negative values are dropped
    (``L+ = max(L, 0)``), and the region is the union of the image's boxes
    (:func:`boxes_to_masks` for the coordinate convention). Returns B values; NaN for
    a map without positive values.

    Example:
        >>> m = torch.zeros(1, 4, 4); m[0, :2, :2] = 1
        >>> proportion(m, [[(0, 0, 2, 2)]], (4, 4))
        tensor([1.])
    """
    maps = check_maps(maps)
    masks = boxes_to_masks(boxes, image_size, device=maps.device)
    return proportion_mask(maps, masks, mode=mode, align_corners=align_corners)


def max_points(
    maps: Tensor,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Position ``(row, col)`` of each map's maximum, ``B x 2`` long.

    The map is upsampled to ``size`` first; several maxima are resolved as ties in
    :func:`rank_pixels` (random, from ``seed``).

    Example:
        >>> m = torch.zeros(1, 3, 5); m[0, 2, 4] = 1
        >>> max_points(m).tolist()
        [[2, 4]]
    """
    maps = check_maps(maps)
    top = rank_pixels(maps, size, seed, mode=mode, align_corners=align_corners)[:, 0]
    w = maps.shape[2] if size is None else int(size[1])
    return torch.stack([top // w, top % w], dim=1)


def pointing_game(
    maps: Tensor,
    masks: Tensor | None = None,
    *,
    boxes: BoxesLike | None = None,
    image_size: tuple[int, int] | None = None,
    tolerance: float = 15,
    inclusive: bool = False,
    seed: int = 0,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Pointing game (Zhang et al.; TorchRay's definition): does the maximum hit?

    The map is upsampled to the region's ``H x W`` and its maximum ``p`` located
    (:func:`max_points`). Hit when the distance from ``p`` to the nearest object
    pixel ``q`` is below the tolerance: ``min_q |p - q|^2 < tolerance^2`` (TorchRay's
    strict test; ``inclusive=True`` uses ``<=``). The region is ``masks`` (B x H x W)
    or the union of ``boxes`` in an image of ``image_size``. Returns B floats: 1.0
    hit, 0.0 miss; a constant map (no maximum to point at) counts as a miss, an
    empty object region gives NaN.

    Example:
        >>> m = torch.zeros(1, 64, 64); m[0, 10, 10] = 1
        >>> pointing_game(m, boxes=[[(20, 20, 30, 30)]], image_size=(64, 64))
        tensor([1.])
    """
    maps = check_maps(maps)
    if (masks is None) == (boxes is None):
        raise ValueError("give exactly one of masks or boxes")
    if boxes is not None:
        if image_size is None:
            raise ValueError("boxes need image_size=(H, W)")
        masks = boxes_to_masks(boxes, image_size, device=maps.device)
    region = _check_masks(masks, maps.shape[0]).to(maps.device)
    h, w = region.shape[1:]
    up = upsample_maps(maps, (h, w), mode=mode, align_corners=align_corners)
    pts = max_points(up, seed=seed)
    rows = torch.arange(h, device=up.device, dtype=torch.float64)
    cols = torch.arange(w, device=up.device, dtype=torch.float64)
    d2 = (rows[None, :, None] - pts[:, 0, None, None]) ** 2 \
        + (cols[None, None, :] - pts[:, 1, None, None]) ** 2
    d2 = torch.where(region, d2, torch.full_like(d2, float("inf")))
    nearest = d2.flatten(1).min(1).values
    tol2 = float(tolerance) ** 2
    hit = nearest <= tol2 if inclusive else nearest < tol2
    flat = up.flatten(1)
    constant = flat.max(1).values == flat.min(1).values
    out = (hit & ~constant).to(torch.float32)
    empty = ~region.flatten(1).any(1)
    return torch.where(empty, torch.full_like(out, float("nan")), out)
