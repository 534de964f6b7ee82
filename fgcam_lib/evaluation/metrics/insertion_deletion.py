"""Insertion / deletion curves and their areas (the paper's Tables 2 and 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from .common import BaselineLike, PAPER_N_STEPS, TargetLike, check_images, check_maps, clean_logits, resolve_target, target_probs
from .maps import pixel_ranks, rank_pixels, resolve_baseline

@dataclass
class InsertionDeletion:
    """Per-image insertion/deletion results.

    ``insertion_auc``, ``deletion_auc``, ``overall = insertion_auc - deletion_auc``
    and ``target`` have length B; the curves are ``B x (n_steps + 1)`` (point k:
    probability after k steps of ``step`` pixels, point 0 the start image).
    """

    insertion_auc: Tensor
    deletion_auc: Tensor
    overall: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    target: Tensor
    step: int
    n_steps: int


def default_step(height: int, width: int) -> int:
    """Pixels per step giving the paper's 112 steps at any image size.

    ``step = ceil(H * W / 112)``: 448 at 224 x 224 (the paper's value), 147 at
    128 x 128 (``ceil(16384 / 147) = 112`` steps; ``round(448 * area ratio) = 146``
    would give 113).

    Example:
        >>> default_step(224, 224), default_step(128, 128)
        (448, 147)
    """
    return max(1, -(-height * width // PAPER_N_STEPS))


def _curve_auc(curve: Tensor) -> Tensor:
    """RISE's area: trapezoid rule with the points spread evenly over ``[0, 1]``.

    ``auc = (sum_k c_k - c_0 / 2 - c_n / 2) / n`` for ``c`` of shape ``B x (n + 1)``.
    """
    n = curve.shape[1] - 1
    if n == 0:
        return curve[:, 0].clone()
    return (curve.sum(1) - 0.5 * curve[:, 0] - 0.5 * curve[:, -1]) / n


def insertion_deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    step: int | None = None,
    baseline: BaselineLike = None,
    seed: int = 0,
    batch_size: int = 64,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> InsertionDeletion:
    """Insertion and deletion curves and their areas (Petsiuk et al., RISE).

    Pixels change in map order, ``step`` per step (default :func:`default_step`,
    448 at 224 x 224), ``n = ceil(H W / step)`` steps. Deletion turns original pixels
    into ``baseline`` pixels (default: blurred), insertion turns baseline pixels into
    original ones. With ``f_k = 1[pixel rank // step < k]`` the step-k images are
    ``x (1 - f_k) + x_b f_k`` (deletion) and ``x_b (1 - f_k) + x f_k`` (insertion);
    the curves hold the target's softmax probability for ``k = 0..n`` and the AUC is
    the trapezoid rule over ``[0, 1]`` (:func:`_curve_auc`). ``overall = AUC(ins) -
    AUC(del)``. Shapes: ``x`` B x C x H x W, ``maps`` B x h x w; AUCs B, curves
    B x (n + 1).

    Example:
        >>> res = insertion_deletion(model, x, maps)
        >>> res.insertion_curve.shape
        torch.Size([B, 113])
    """
    check_images(x)
    maps = check_maps(maps, x.shape[0]).to(x.device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    b, _, h, w = x.shape
    step = default_step(h, w) if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be a positive number of pixels, got {step}")
    n_steps = -(-h * w // step)
    base = resolve_baseline(x, baseline)
    t = resolve_target(target, clean_logits(model, x, batch_size))
    ranks = pixel_ranks(rank_pixels(maps, (h, w), seed, mode=mode,
                                    align_corners=align_corners), (h, w))
    flip = torch.div(ranks, step, rounding_mode="floor") + 1  # step that changes the pixel

    n_pairs = b * (n_steps + 1)  # (image, step k) pairs, image-major
    pair_img = torch.arange(n_pairs, device=x.device) // (n_steps + 1)
    pair_k = torch.arange(n_pairs, device=x.device) % (n_steps + 1)

    def stream(insert: bool) -> Iterator[Tensor]:
        for s in range(0, n_pairs, batch_size):
            i, k = pair_img[s:s + batch_size], pair_k[s:s + batch_size]
            changed = (flip[i] <= k[:, None, None])[:, None]
            new, old = (x[i], base[i]) if insert else (base[i], x[i])
            yield torch.where(changed, new, old)

    targets = t[pair_img]
    dele = target_probs(model, stream(False), targets, batch_size).view(b, n_steps + 1)
    ins = target_probs(model, stream(True), targets, batch_size).view(b, n_steps + 1)
    ins_auc, del_auc = _curve_auc(ins), _curve_auc(dele)
    return InsertionDeletion(insertion_auc=ins_auc, deletion_auc=del_auc,
                             overall=ins_auc - del_auc, insertion_curve=ins,
                             deletion_curve=dele, target=t, step=step, n_steps=n_steps)
