"""Maps and baselines: upsampling to the image, the blurred baseline, pixel ranking with seeded ties."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from .common import BaselineLike, PAPER_BLUR_KERNEL, PAPER_BLUR_SIGMA, check_images, check_maps

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
    maps = check_maps(maps)
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
    check_images(x)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return _mirror_blur(x, kernel_size, float(sigma))


def resolve_baseline(x: Tensor, baseline: BaselineLike) -> Tensor:
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
    maps = check_maps(maps)
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
