"""What every metric shares: the paper's constants, input checks and batched model calls.

Package-internal: the metric modules import these; users import :mod:`fgcam_lib.evaluation.metrics`.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

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



def check_images(x: Tensor) -> Tensor:
    """Raise ``ValueError`` unless ``x`` is a floating ``B x C x H x W`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must be B x C x H x W (4-D), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"images must be floating point, got {x.dtype}")
    return x


def check_maps(maps: Tensor, batch: int | None = None) -> Tensor:
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


def check_unit_interval(name: str, value: float, upper_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1`` (``< 1`` if ``upper_open``)."""
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must lie in {bound}, got {value}")


def resolve_target(target: TargetLike, logits: Tensor) -> Tensor:
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


@torch.inference_mode()
def target_probs(model: nn.Module, images: Iterable[Tensor], targets: Tensor,
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


@torch.inference_mode()
def clean_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Logits of the clean images, ``B x K``, in chunks of ``batch_size``."""
    return _widen(torch.cat([model(b) for b in _batches([x], batch_size)]))
