"""Average Drop / Average Increase (the paper's Tables 1 and 4): keep the top pixels, blur the rest."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import BaselineLike, TargetLike, check_images, check_maps, check_unit_interval, clean_logits, resolve_target, target_probs
from .maps import pixel_ranks, rank_pixels, resolve_baseline, upsample_maps

@dataclass
class DropIncrease:
    """Per-image Average Drop / Increase terms (all tensors of length B).

    ``drop = max(0, y - o) / y * 100`` and ``increase = 100 * [o > y]`` with ``y``
    the target probability on the clean image (``prob_clean``) and ``o`` on the image
    keeping only the ``n_kept`` most important pixels (``prob_kept``).
    """

    drop: Tensor
    increase: Tensor
    prob_clean: Tensor
    prob_kept: Tensor
    target: Tensor
    n_kept: Tensor

    @property
    def average_drop(self) -> float:
        """The paper's A.D. (percent): mean of ``drop``."""
        return float(self.drop.mean())

    @property
    def average_increase(self) -> float:
        """The paper's A.I. (percent): mean of ``increase``."""
        return float(self.increase.mean())


def keep_mask(
    maps: Tensor,
    size: tuple[int, int],
    keep: float = 0.5,
    signed: bool = False,
    seed: int = 0,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Boolean ``B x H x W`` mask of the pixels Average Drop keeps.

    ``n = round(keep * H * W)`` most important pixels (ties broken as in
    :func:`rank_pixels`). With ``signed=True`` (LRP family, FG-CAM at the input) the
    paper's Table 4 rule applies per image: if the positive pixels
    (``upsampled map > 0``) are at most ``n``, only the positive pixels are kept
    (none when the map has no positive pixel).

    Example:
        >>> m = torch.arange(16.).view(1, 4, 4)
        >>> keep_mask(m, (4, 4), keep=0.25)[0].nonzero().tolist()
        [[3, 0], [3, 1], [3, 2], [3, 3]]
    """
    check_unit_interval("keep", keep)
    up = upsample_maps(maps, size, mode=mode, align_corners=align_corners)
    n_pix = up.shape[1] * up.shape[2]
    n_keep = int(math.floor(keep * n_pix + 0.5))
    k = torch.full((up.shape[0],), n_keep, device=up.device, dtype=torch.long)
    if signed:
        n_pos = (up > 0).flatten(1).sum(1)
        k = torch.where(n_pos <= n_keep, n_pos, k)
    ranks = pixel_ranks(rank_pixels(up, seed=seed), tuple(up.shape[1:]))
    return ranks < k[:, None, None]


def average_drop_increase(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    keep: float = 0.5,
    signed: bool = False,
    baseline: BaselineLike = None,
    seed: int = 0,
    batch_size: int = 64,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> DropIncrease:
    """Average Drop / Average Increase (Chattopadhyay et al.; the paper's Table 1, 4).

    Keep the ``keep`` most important pixels of each image (mask from
    :func:`keep_mask`), replace the others by ``baseline`` (default: the blurred
    image), and compare the softmax probability of the target class:
    ``drop_i = max(0, y_i - o_i) / y_i * 100``, ``increase_i = 100 * [o_i > y_i]``.
    Shapes: ``x`` B x C x H x W, ``maps`` B x h x w; every field of the result is B.
    ``target``: ``None`` (top-1 on the clean image), an int, or one class per image.

    Example:
        >>> res = average_drop_increase(model, x, maps)
        >>> res.drop.shape, res.average_drop
        (torch.Size([B]), 23.4)
    """
    check_images(x)
    maps = check_maps(maps, x.shape[0]).to(x.device)
    base = resolve_baseline(x, baseline)
    y_logits = clean_logits(model, x, batch_size)
    t = resolve_target(target, y_logits)
    y = torch.softmax(y_logits, dim=1).gather(1, t[:, None])[:, 0]
    mask = keep_mask(maps, tuple(x.shape[-2:]), keep, signed, seed,
                     mode=mode, align_corners=align_corners)
    chunks = (
        torch.where(mask[i:i + batch_size, None], x[i:i + batch_size], base[i:i + batch_size])
        for i in range(0, x.shape[0], batch_size)
    )
    o = target_probs(model, chunks, t, batch_size)
    # y == 0 (softmax underflow) leaves nothing to drop: count it as 0
    drop = torch.where(y > 0, (y - o).clamp(min=0) / y.clamp(min=torch.finfo(y.dtype).tiny),
                       torch.zeros_like(y)) * 100.0
    increase = (o > y).to(drop.dtype) * 100.0
    return DropIncrease(drop=drop, increase=increase, prob_clean=y, prob_kept=o,
                        target=t, n_kept=mask.flatten(1).sum(1))
