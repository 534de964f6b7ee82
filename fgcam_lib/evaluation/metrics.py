"""Faithfulness, localisation and sanity metrics for saliency maps.

Conventions shared by every function here:

* images ``x`` are ``B x C x H x W`` tensors, already normalised the way the model
  expects; ``model(x)`` returns logits ``B x K``. Put the model in ``eval()`` mode
  first (the metrics never change its mode; batch-norm in training mode would make
  the scores depend on the batch).
* maps are ``B x h x w`` tensors of any resolution (a 7 x 7 CAM or a full-resolution
  LRP map), possibly signed. They are upsampled to ``H x W`` by
  :func:`upsample_maps` (bilinear, ``align_corners=False`` by default).
* every metric returns per-image tensors (on the images' device); means are left to
  the caller, so that confidence intervals stay possible.
* perturbed images are built as tensors in chunks and pushed through the model in
  batches of ``batch_size`` under :func:`torch.no_grad`.

The faithfulness metrics follow the FG-CAM paper: Average Drop / Increase keeping the
most important 50% of the pixels and blurring the rest (Gaussian blur, kernel 51,
sigma 50, after Group-CAM); insertion / deletion with 448 pixels per step at
224 x 224 and the RISE area under the curve; Proportion of the map's positive mass
inside the ground-truth box. ROAD (Rong et al., 2022) and the pointing game (TorchRay)
are provided for comparison, and the cascading randomisation check of Adebayo et al.
(2018) for sanity.

Choices where the paper is silent are documented on each function; the most
important one: ties in a map (CAM maps have many exact zeros) are broken by a random
permutation drawn from ``seed``, never by raster order.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PAPER_STEP",
    "PAPER_N_STEPS",
    "PAPER_BLUR_KERNEL",
    "PAPER_BLUR_SIGMA",
    "DropIncrease",
    "InsertionDeletion",
    "RoadResult",
    "upsample_maps",
    "gaussian_kernel1d",
    "blur_baseline",
    "rank_pixels",
    "pixel_ranks",
    "keep_mask",
    "default_step",
    "average_drop_increase",
    "insertion_deletion",
    "boxes_to_masks",
    "proportion",
    "proportion_mask",
    "max_points",
    "pointing_game",
    "impute_linear",
    "road",
    "similarity",
    "cascading_randomization",
]

#: Pixels changed per insertion/deletion step at 224 x 224 (the paper).
PAPER_STEP = 448
#: Reference image area the paper's step refers to.
PAPER_AREA = 224 * 224
#: Number of insertion/deletion steps at 224 x 224: ceil(224 * 224 / 448).
PAPER_N_STEPS = 112
#: Gaussian blur of the removed pixels (Group-CAM's values, used by the paper).
PAPER_BLUR_KERNEL = 51
PAPER_BLUR_SIGMA = 50.0

TargetLike = int | Sequence[int] | Tensor | None
BaselineLike = Tensor | float | None

# ROAD's noisy linear imputation: a removed pixel equals the weighted mean of its
# 8 neighbours, direct neighbours weight 1/6 and diagonal ones 1/12 (sum 1).
_ROAD_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12),
)


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------


def _check_images(x: Tensor) -> Tensor:
    """Raise ``ValueError`` unless ``x`` is a floating ``B x C x H x W`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must be B x C x H x W (4-D), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"images must be floating point, got {x.dtype}")
    return x


def _check_maps(maps: Tensor, batch: int | None = None) -> Tensor:
    """Validate a ``B x h x w`` map batch; return it as a floating tensor.

    Raises ``ValueError`` for a wrong rank, a batch size different from ``batch`` or
    non-finite values (NaN / inf).
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(
            f"maps must be B x h x w (3-D), got shape {tuple(maps.shape)}; "
            "squeeze a channel axis of size 1 first"
        )
    if batch is not None and maps.shape[0] != batch:
        raise ValueError(
            f"maps hold {maps.shape[0]} maps but there are {batch} images"
        )
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps must not be empty, got shape {tuple(maps.shape)}")
    if not torch.is_floating_point(maps):
        maps = maps.float()
    bad = ~torch.isfinite(maps)
    if bool(bad.any()):
        which = torch.nonzero(bad.flatten(1).any(1)).flatten().tolist()
        raise ValueError(f"maps contain NaN or inf values (maps at batch index {which})")
    return maps


def _check_unit_interval(name: str, value: float, upper_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1`` (``< 1`` if ``upper_open``)."""
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must lie in {bound}, got {value}")


# ----------------------------------------------------------------------------------
# maps, blur, ranking
# ----------------------------------------------------------------------------------


def upsample_maps(
    maps: Tensor,
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Resize maps to ``size = (H, W)`` with ``F.interpolate``.

    ``B x h x w -> B x H x W``; a map already at ``size`` is returned unchanged.
    ``align_corners`` is ignored for modes that do not take it (``nearest``, ``area``).

    Example:
        >>> m = torch.rand(2, 7, 7)
        >>> upsample_maps(m, (224, 224)).shape
        torch.Size([2, 224, 224])
    """
    maps = _check_maps(maps)
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[1:]) == size:
        return maps
    takes_corners = mode in ("linear", "bilinear", "bicubic", "trilinear")
    out = F.interpolate(
        maps[:, None], size=size, mode=mode,
        align_corners=align_corners if takes_corners else None,
    )
    return out[:, 0]


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian ``g_i = exp(-t_i^2 / (2 sigma^2)) / sum_j g_j``.

    ``t = -(k-1)/2, ..., (k-1)/2`` (the grid of torchvision and kornia); shape ``(k,)``.

    Example:
        >>> g = gaussian_kernel1d(5, 1.0)
        >>> float(g.sum())
        1.0
    """
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _mirror_index(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices of the endlessly mirrored ('reflect', edge not repeated) extension.

    Returns ``n + 2 pad`` indices into ``range(n)``; works for ``pad >= n`` too.
    """
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _mirror_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with endless mirror padding (any image size)."""
    b, c, h, w = x.shape
    pad = kernel_size // 2
    g = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    xp = x[:, :, _mirror_index(h, pad, x.device)][:, :, :, _mirror_index(w, pad, x.device)]
    out = F.conv2d(xp, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def blur_baseline(x: Tensor, kernel_size: int = PAPER_BLUR_KERNEL,
                  sigma: float = PAPER_BLUR_SIGMA) -> Tensor:
    """Gaussian-blurred copy of the images, the 'removed pixel' value of the paper.

    ``x_blur = G_sigma * x`` per channel with a ``kernel_size x kernel_size`` kernel
    (:func:`gaussian_kernel1d` in both directions) and reflect padding: the values of
    kornia's ``gaussian_blur2d`` and torchvision's ``gaussian_blur`` (tested to float
    rounding), computed as two 1-D convolutions (about 4x faster on CPU than their
    2-D kernel). Images smaller than half the kernel, where a single reflection is
    undefined, are padded by repeated mirroring. ``B x C x H x W -> B x C x H x W``.

    Example:
        >>> x = torch.randn(2, 3, 128, 128)
        >>> xb = blur_baseline(x)
        >>> xb.shape == x.shape
        True
    """
    _check_images(x)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return _mirror_blur(x, kernel_size, float(sigma))


def _resolve_baseline(x: Tensor, baseline: BaselineLike) -> Tensor:
    """``None`` -> blurred images; a number -> constant image; a tensor -> broadcast."""
    if baseline is None:
        return blur_baseline(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be None, a number or a tensor, got {type(baseline)}")
    try:
        return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to the "
            f"images' shape {tuple(x.shape)}"
        ) from err


def _tie_permutation(n: int, seed: int, device: torch.device) -> Tensor:
    """A random permutation of ``range(n)`` drawn on the CPU from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen).to(device)


def rank_pixels(
    maps: Tensor,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> Tensor:
    """Order the pixels of each (upsampled) map by decreasing value.

    Returns ``order``, a ``B x (H*W)`` long tensor of flat pixel indices
    (``row * W + col``), most important first. Sorting is lexicographic on
    ``(value descending, random key)``: distinct values keep their exact order and
    equal values come in the order of one random permutation drawn from ``seed``
    (shared by the images of the batch, so a batch ranks as its images one by one).

    Example:
        >>> order = rank_pixels(torch.zeros(1, 4, 4), seed=1)
        >>> sorted(order[0].tolist()) == list(range(16))
        True
    """
    maps = _check_maps(maps)
    if size is not None:
        maps = upsample_maps(maps, size, mode=mode, align_corners=align_corners)
    flat = maps.flatten(1)
    perm = _tie_permutation(flat.shape[1], seed, flat.device)
    idx = torch.sort(flat[:, perm], dim=1, descending=True, stable=True).indices
    return perm[idx]


def pixel_ranks(order: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Invert an ``order`` (``B x N``): ``ranks[b, order[b, r]] = r``.

    Returns ``B x N`` (or ``B x H x W`` when ``size`` is given); rank 0 is the most
    important pixel.

    Example:
        >>> pixel_ranks(torch.tensor([[2, 0, 1]]))
        tensor([[1, 2, 0]])
    """
    ranks = torch.empty_like(order)
    src = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks.scatter_(1, order, src)
    return ranks if size is None else ranks.view(order.shape[0], *size)


# ----------------------------------------------------------------------------------
# model calls
# ----------------------------------------------------------------------------------


def _resolve_target(target: TargetLike, logits: Tensor) -> Tensor:
    """Per-image class indices: ``None`` -> top-1 of ``logits``; int / list / tensor."""
    b, k = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(target, device=logits.device).long().flatten()
    if t.numel() == 1:
        t = t.expand(b).clone()
    if t.numel() != b:
        raise ValueError(f"target has {t.numel()} entries but there are {b} images")
    if bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target classes must lie in [0, {k}), got {t.tolist()}")
    return t


def _widen(logits: Tensor) -> Tensor:
    """Logits in float32 at least (half / bfloat16 are widened, float64 kept)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _batches(images: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Regroup a stream of ``n_i x C x H x W`` tensors into batches of ``batch_size``."""
    buf: list[Tensor] = []
    n = 0
    for im in images:
        while im.shape[0] > 0:
            if n == 0 and im.shape[0] >= batch_size:  # whole batch: no copy
                yield im[:batch_size]
                im = im[batch_size:]
                continue
            take = min(batch_size - n, im.shape[0])
            buf.append(im[:take])
            n += take
            im = im[take:]
            if n == batch_size:
                yield torch.cat(buf)
                buf, n = [], 0
    if buf:
        yield torch.cat(buf)


@torch.no_grad()
def _target_probs(model: nn.Module, images: Iterable[Tensor], targets: Tensor,
                  batch_size: int) -> Tensor:
    """Softmax probability of ``targets[i]`` for the i-th image of the stream.

    ``images`` yields chunks whose rows line up with ``targets`` (length N); returns N.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out: list[Tensor] = []
    start = 0
    for batch in _batches(images, batch_size):
        probs = torch.softmax(_widen(model(batch)), dim=1)
        t = targets[start:start + batch.shape[0]]
        out.append(probs.gather(1, t[:, None])[:, 0])
        start += batch.shape[0]
    if start != targets.numel():
        raise RuntimeError("internal error: image stream and targets differ in length")
    return torch.cat(out) if out else targets.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def _clean_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Logits of the clean images, ``B x K``, in chunks of ``batch_size``."""
    return _widen(torch.cat([model(b) for b in _batches([x], batch_size)]))


# ----------------------------------------------------------------------------------
# Average Drop / Average Increase
# ----------------------------------------------------------------------------------


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
    _check_unit_interval("keep", keep)
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
    _check_images(x)
    maps = _check_maps(maps, x.shape[0]).to(x.device)
    base = _resolve_baseline(x, baseline)
    y_logits = _clean_logits(model, x, batch_size)
    t = _resolve_target(target, y_logits)
    y = torch.softmax(y_logits, dim=1).gather(1, t[:, None])[:, 0]
    mask = keep_mask(maps, tuple(x.shape[-2:]), keep, signed, seed,
                     mode=mode, align_corners=align_corners)
    chunks = (
        torch.where(mask[i:i + batch_size, None], x[i:i + batch_size], base[i:i + batch_size])
        for i in range(0, x.shape[0], batch_size)
    )
    o = _target_probs(model, chunks, t, batch_size)
    # y == 0 (softmax underflow) leaves nothing to drop: count it as 0
    drop = torch.where(y > 0, (y - o).clamp(min=0) / y.clamp(min=torch.finfo(y.dtype).tiny),
                       torch.zeros_like(y)) * 100.0
    increase = (o > y).to(drop.dtype) * 100.0
    return DropIncrease(drop=drop, increase=increase, prob_clean=y, prob_kept=o,
                        target=t, n_kept=mask.flatten(1).sum(1))


# ----------------------------------------------------------------------------------
# insertion / deletion
# ----------------------------------------------------------------------------------


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
    _check_images(x)
    maps = _check_maps(maps, x.shape[0]).to(x.device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    b, _, h, w = x.shape
    step = default_step(h, w) if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be a positive number of pixels, got {step}")
    n_steps = -(-h * w // step)
    base = _resolve_baseline(x, baseline)
    t = _resolve_target(target, _clean_logits(model, x, batch_size))
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
    dele = _target_probs(model, stream(False), targets, batch_size).view(b, n_steps + 1)
    ins = _target_probs(model, stream(True), targets, batch_size).view(b, n_steps + 1)
    ins_auc, del_auc = _curve_auc(ins), _curve_auc(dele)
    return InsertionDeletion(insertion_auc=ins_auc, deletion_auc=del_auc,
                             overall=ins_auc - del_auc, insertion_curve=ins,
                             deletion_curve=dele, target=t, step=step, n_steps=n_steps)


# ----------------------------------------------------------------------------------
# localisation
# ----------------------------------------------------------------------------------


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
    maps = _check_maps(maps)
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
    maps = _check_maps(maps)
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
    maps = _check_maps(maps)
    if size is not None:
        maps = upsample_maps(maps, size, mode=mode, align_corners=align_corners)
    top = rank_pixels(maps, seed=seed)[:, 0]
    w = maps.shape[2]
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
    maps = _check_maps(maps)
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


# ----------------------------------------------------------------------------------
# ROAD
# ----------------------------------------------------------------------------------


def _imputation_system(removed: np.ndarray):
    """Sparse system of ROAD's linear imputation for one ``H x W`` removal mask.

    Unknowns are the removed pixels (raster order). Equation of pixel i:
    ``sum_{n in N(i)} w_n x_n - (sum_{n in N(i)} w_n) x_i = 0`` over the neighbours
    inside the image. Returns ``(A, K, unknown)`` with ``A`` (m x m, csc) acting on
    the unknowns, ``K`` (m x H W, csr) on the known pixels (the right-hand side is
    ``-K @ img``) and ``unknown`` the flat indices of the removed pixels.
    """
    from scipy import sparse

    h, w = removed.shape
    flat = removed.ravel()
    unknown = np.flatnonzero(flat)
    m = unknown.size
    var_of = np.full(h * w, -1, dtype=np.int64)
    var_of[unknown] = np.arange(m)
    r, c = np.divmod(unknown, w)
    a_rows, a_cols, a_vals = [], [], []
    k_rows, k_cols, k_vals = [], [], []
    wsum = np.zeros(m)
    for dr, dc, wt in _ROAD_NEIGHBOURS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        eq = np.flatnonzero(inside)
        nb = rr[inside] * w + cc[inside]
        wsum[eq] += wt
        miss = flat[nb]
        a_rows.append(eq[miss])
        a_cols.append(var_of[nb[miss]])
        a_vals.append(np.full(int(miss.sum()), wt))
        k_rows.append(eq[~miss])
        k_cols.append(nb[~miss])
        k_vals.append(np.full(int((~miss).sum()), wt))
    diag = np.arange(m)
    a = sparse.coo_matrix(
        (np.concatenate(a_vals + [-wsum]),
         (np.concatenate(a_rows + [diag]), np.concatenate(a_cols + [diag]))),
        shape=(m, m)).tocsc()
    k = sparse.coo_matrix(
        (np.concatenate(k_vals), (np.concatenate(k_rows), np.concatenate(k_cols))),
        shape=(m, h * w)).tocsr()
    return a, k, unknown


def _impute_one(img: np.ndarray, removed: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Impute one ``C x H x W`` float64 image; ``noise`` is C x H x W (added where removed)."""
    from scipy.sparse.linalg import spsolve

    if not removed.any():
        return img.copy()
    if removed.all():
        raise ValueError("ROAD imputation needs at least one kept pixel per image")
    c = img.shape[0]
    flat = img.reshape(c, -1)
    a, k, unknown = _imputation_system(removed)
    rhs = -(k @ flat.T)  # m x C
    sol = np.asarray(spsolve(a, rhs)).reshape(unknown.size, c)
    out = flat.copy()
    out[:, unknown] = sol.T + noise.reshape(c, -1)[:, unknown]
    return out.reshape(img.shape)


def _noise_field(shape: tuple[int, int, int], noise: float | Sequence[float],
                 seed: int | Sequence[int]) -> np.ndarray:
    """Gaussian noise ``C x H x W`` with per-channel std ``noise`` from ``seed``."""
    std = np.broadcast_to(np.asarray(noise, dtype=np.float64).reshape(-1), (shape[0],))
    if not np.any(std):
        return np.zeros(shape)
    field = np.random.default_rng(seed).standard_normal(shape)
    return field * std[:, None, None]


def impute_linear(x: Tensor, removed: Tensor, noise: float | Sequence[float] = 0.01,
                  seed: int = 0) -> Tensor:
    """ROAD's noisy linear imputation of the removed pixels (Rong et al., 2022).

    Each removed pixel is the weighted mean of its in-image 8 neighbours (direct
    1/6, diagonal 1/12), known neighbours fixed: one sparse linear solve per image
    (``scipy.sparse.linalg.spsolve``, float64, CPU), all channels at once; then
    Gaussian noise of std ``noise`` (absolute, in the units of ``x``; a float or one
    per channel) is added to the imputed pixels. The noise field is drawn from
    ``seed`` and shared by the images of the batch. Shapes: ``x`` B x C x H x W,
    ``removed`` B x H x W bool -> B x C x H x W on ``x``'s device.

    Example:
        >>> removed = torch.zeros(1, 8, 8, dtype=torch.bool); removed[0, 3:5, 3:5] = True
        >>> out = impute_linear(torch.rand(1, 3, 8, 8), removed, noise=0.0)
        >>> out.shape
        torch.Size([1, 3, 8, 8])
    """
    _check_images(x)
    if removed.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"removed must be B x H x W = {(x.shape[0], *x.shape[2:])}, got {tuple(removed.shape)}")
    field = _noise_field(tuple(x.shape[1:]), noise, seed)
    xs = x.detach().cpu().double().numpy()
    rm = removed.detach().cpu().bool().numpy()
    out = np.stack([_impute_one(xs[i], rm[i], field) for i in range(x.shape[0])])
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


@dataclass
class RoadResult:
    """Per-image ROAD results: ``probs`` B x P (target probability at each
    percentage), ``mean`` B (mean over the percentages, the area-like summary),
    ``percentages`` P, ``target`` B, ``order`` 'morf' or 'lerf'."""

    probs: Tensor
    mean: Tensor
    percentages: Tensor
    target: Tensor
    order: str


def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: TargetLike = None,
    percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "morf",
    seed: int = 0,
    noise: float | Sequence[float] = 0.01,
    batch_size: int = 64,
    *,
    mode: str = "bilinear",
    align_corners: bool | None = False,
) -> RoadResult:
    """ROAD: remove and debias (Rong et al., 2022) with noisy linear imputation.

    For each fraction ``p``, ``n = round(p H W)`` pixels are removed: the ``n`` most
    relevant (``order='morf'``) or the ``n`` least relevant (``'lerf'``), ranked by
    :func:`rank_pixels`; they are imputed by :func:`impute_linear` (noise seed
    ``(seed, index of p)``) and the target's softmax probability is recorded. Low
    MoRF and high LeRF values are good. Shapes: ``x`` B x C x H x W, ``maps``
    B x h x w -> ``probs`` B x P, ``mean`` B.

    Example:
        >>> res = road(model, x, maps, order="morf")
        >>> res.probs.shape
        torch.Size([B, 9])
    """
    _check_images(x)
    maps = _check_maps(maps, x.shape[0]).to(x.device)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    pcts = [float(p) for p in percentages]
    for p in pcts:
        _check_unit_interval("each percentage", p, upper_open=True)
    b, c, h, w = x.shape
    t = _resolve_target(target, _clean_logits(model, x, batch_size))
    ranks = pixel_ranks(rank_pixels(maps, (h, w), seed, mode=mode,
                                    align_corners=align_corners), (h, w))
    n_rem = [int(math.floor(p * h * w + 0.5)) for p in pcts]
    fields = [_noise_field((c, h, w), noise, (int(seed), j)) for j in range(len(pcts))]
    xs = x.detach().cpu().double().numpy()
    rk = ranks.cpu().numpy()

    def stream() -> Iterator[Tensor]:
        for i in range(b):
            for j, n in enumerate(n_rem):
                removed = rk[i] < n if order == "morf" else rk[i] >= h * w - n
                img = _impute_one(xs[i], removed, fields[j])
                yield torch.from_numpy(img[None]).to(device=x.device, dtype=x.dtype)

    targets = t.repeat_interleave(len(pcts))
    probs = _target_probs(model, stream(), targets, batch_size).view(b, len(pcts))
    return RoadResult(probs=probs, mean=probs.mean(1),
                      percentages=torch.tensor(pcts), target=t, order=order)


# ----------------------------------------------------------------------------------
# sanity checks
# ----------------------------------------------------------------------------------


def _minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array becomes all zeros."""
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two min-max normalised maps (``data_range=1``, skimage defaults).

    The window is 7, or the largest odd size that fits a smaller map; maps under
    3 x 3 give NaN.
    """
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    if side < 3:
        return float("nan")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(_minmax(a), _minmax(b), data_range=1.0, win_size=win))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two flattened maps (NaN if one is constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a.ravel(), b.ravel()).statistic)


def similarity(map_a: Tensor, map_b: Tensor, absolute: bool = False) -> dict[str, Tensor]:
    """Per-image Spearman rank correlation and SSIM between two map batches.

    ``spearman = corr(rank(a), rank(b))`` over the pixels (``scipy.stats.spearmanr``;
    NaN when a map is constant); ``ssim`` on maps min-max normalised to [0, 1],
    ``data_range=1`` (``skimage.metrics.structural_similarity``). ``absolute=True``
    compares ``|a|`` and ``|b|``. Shapes: two ``B x h x w`` maps (same size) ->
    ``{"spearman": B, "ssim": B}`` float64 tensors.

    Example:
        >>> a = torch.rand(2, 8, 8)
        >>> similarity(a, a)["spearman"]
        tensor([1., 1.], dtype=torch.float64)
    """
    map_a, map_b = _check_maps(map_a), _check_maps(map_b)
    if map_a.shape != map_b.shape:
        raise ValueError(f"map shapes differ: {tuple(map_a.shape)} vs {tuple(map_b.shape)}")
    a = map_a.detach().cpu().double().numpy()
    b = map_b.detach().cpu().double().numpy()
    if absolute:
        a, b = np.abs(a), np.abs(b)
    rho = [_spearman(a[i], b[i]) for i in range(a.shape[0])]
    ssim = [_ssim(a[i], b[i]) for i in range(a.shape[0])]
    return {"spearman": torch.tensor(rho, dtype=torch.float64),
            "ssim": torch.tensor(ssim, dtype=torch.float64)}


def _reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialise a module in place with its own ``reset_parameters`` methods.

    The global RNG is forked (and seeded with ``seed``) so the caller's random state
    is untouched and the re-initialisation is reproducible.
    """
    resettable = [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resettable:
        if any(True for _ in module.parameters()):
            raise ValueError(
                f"{type(module).__name__} has parameters but no reset_parameters(); "
                "pass reinit= to cascading_randomization")
        return
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in resettable:
            m.reset_parameters()


def cascading_randomization(
    model: nn.Module,
    explain_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
    x: Tensor,
    target: TargetLike,
    layers_top_down: Sequence[str | Sequence[str]],
    *,
    seed: int = 0,
    reinit: Callable[[nn.Module, int], None] | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """Cascading model-parameter randomisation (Adebayo et al., 2018).

    Step 0 explains the original model; step s (1-based) explains a deep copy whose
    first s entries of ``layers_top_down`` (module paths such as ``"classifier.6"``,
    or groups of paths; classifier first, then features deep to shallow) are
    re-initialised, cumulatively. ``explain_fn(model, x, target) -> B x h x w`` is
    called with a fresh copy each step, so the caller's model is never changed;
    layer j is re-initialised with seed ``seed + j`` (the same values at every
    step; ``j`` counts module paths, groups flattened) by ``reinit(module, seed)``
    (default: the modules' ``reset_parameters`` under a forked RNG).
    ``target=None`` is resolved once to the original model's top-1 class, so every
    step explains the same class.
    Returns one record per (step, image): ``step``, ``layer`` (the layer randomised
    at that step, ``"original"`` for step 0), ``randomized`` (all randomised layers
    so far, joined by ``"; "``), ``image``, ``spearman``, ``ssim``, ``spearman_abs``,
    ``ssim_abs`` (see :func:`similarity`); ``pandas.DataFrame(records)`` tabulates it.

    Example:
        >>> recs = cascading_randomization(model, explain, x, None, ["classifier.6", "features.40"])
        >>> len(recs) == 3 * x.shape[0]
        True
    """
    _check_images(x)
    reinit = reinit or _reset_parameters
    groups = [[g] if isinstance(g, str) else list(g) for g in layers_top_down]
    names = [", ".join(g) for g in groups]
    base_copy = copy.deepcopy(model)
    t = _resolve_target(target, _clean_logits(base_copy, x, batch_size))
    original = _check_maps(explain_fn(base_copy, x, t), x.shape[0]).detach()
    del base_copy

    records: list[dict] = []

    def add(step: int, layer: str, randomized: str, maps: Tensor) -> None:
        sim = similarity(original, maps)
        sim_abs = similarity(original, maps, absolute=True)
        for i in range(x.shape[0]):
            records.append({
                "step": step, "layer": layer, "randomized": randomized, "image": i,
                "spearman": float(sim["spearman"][i]), "ssim": float(sim["ssim"][i]),
                "spearman_abs": float(sim_abs["spearman"][i]),
                "ssim_abs": float(sim_abs["ssim"][i]),
            })

    add(0, "original", "", original)
    for s in range(1, len(groups) + 1):
        randomised = copy.deepcopy(model)
        flat_names = [name for group in groups[:s] for name in group]
        for q, name in enumerate(flat_names):
            reinit(randomised.get_submodule(name), seed + q)
        maps = _check_maps(explain_fn(randomised, x, t), x.shape[0]).detach()
        add(s, names[s - 1], "; ".join(names[:s]), maps)
        del randomised
    return records
