"""ROAD (Rong et al., 2022): remove pixels by the map, impute them linearly with noise, re-classify."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .common import TargetLike, check_images, check_maps, check_unit_interval, clean_logits, resolve_target, target_probs
from .maps import pixel_ranks, rank_pixels

# ROAD's noisy linear imputation: a removed pixel equals the weighted mean of its
# 8 neighbours, direct neighbours weight 1/6 and diagonal ones 1/12 (sum 1).
ROAD_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12),
)

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
    for dr, dc, wt in ROAD_NEIGHBOURS:
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
    check_images(x)
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
    check_images(x)
    maps = check_maps(maps, x.shape[0]).to(x.device)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    pcts = [float(p) for p in percentages]
    for p in pcts:
        check_unit_interval("each percentage", p, upper_open=True)
    b, c, h, w = x.shape
    t = resolve_target(target, clean_logits(model, x, batch_size))
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
    probs = target_probs(model, stream(), targets, batch_size).view(b, len(pcts))
    return RoadResult(probs=probs, mean=probs.mean(1),
                      percentages=torch.tensor(pcts), target=t, order=order)
