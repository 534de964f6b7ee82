"""Maps -> per-image metric rows: the one metric dispatch of the runner and the ablation sweeps.

:func:`score_maps` runs the metric options of :data:`fgcam_lib.catalogue.METRIC_GROUPS`
(``adai``, ``insdel``, ``proportion``, ``road``) on one batch of maps and returns every
row the options write. :class:`CleanLogitsCache` lets a batch's clean forward pass run
once for all methods, layers and metrics.

    >>> cached = CleanLogitsCache(model, batch.x, model(batch.x))
    >>> score_maps(cached, batch, maps, target, ["adai", "proportion"])
    {'average_drop': tensor([...]), 'average_increase': ..., 'proportion': ..., 'proportion_mask': ..., 'pointing_game': ...}
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import metrics as M
from ..catalogue import METRIC_GROUPS
from .batch import Batch

__all__ = ["CleanLogitsCache", "AtPrecision", "ChannelsLast", "PRECISIONS", "at_precision", "clean_pass", "score_maps",
           "check_metrics"]

#: ``--precision`` values: the autocast dtype of the metrics' forward passes (None: float32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

MetricKwargs = Mapping[str, Mapping[str, Any]]


class CleanLogitsCache(nn.Module):
    """The model, except that the clean batch ``x`` (or rows of it) is answered from cache.

    The metrics recompute the clean images' logits on every call; wrapping the model lets
    a batch's clean forward pass run once for all methods, layers and metrics. An input
    is answered from the cache when it holds exactly rows ``r..r+n`` of ``x``: a view of
    ``x`` (found from its storage offset) or a copy (found by comparing values; a
    perturbed image equal to a clean one has the clean one's logits anyway). Anything
    else runs the model; ``calls`` counts those runs.

    Shapes: ``x`` B x C x H x W, ``logits`` B x K; ``forward``: n x C x H x W -> n x K.

        >>> cache = CleanLogitsCache(model, x, model(x))
        >>> cache(x[1:3]) is not None and cache.calls == 0
        True
    """

    def __init__(self, model: nn.Module, x: Tensor, logits: Tensor) -> None:
        super().__init__()
        self.model, self.x, self.logits, self.calls = model, x, logits, 0

    def _view_rows(self, inp: Tensor) -> slice | None:
        """Rows of ``x`` that ``inp`` is a view of, if it is one."""
        x = self.x
        if inp.stride() != x.stride() or inp.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            return None
        row, rem = divmod((inp.data_ptr() - x.data_ptr()) // x.element_size(), x.stride(0))
        if rem or row < 0 or row + inp.shape[0] > x.shape[0]:
            return None
        return slice(row, row + inp.shape[0])

    def _equal_rows(self, inp: Tensor) -> slice | None:
        """Rows of ``x`` whose values ``inp`` holds, if any."""
        n = inp.shape[0]
        for r in range(self.x.shape[0] - n + 1):
            if torch.equal(inp[0], self.x[r]) and torch.equal(inp, self.x[r:r + n]):
                return slice(r, r + n)
        return None

    def forward(self, inp: Tensor) -> Tensor:
        x = self.x
        if inp.dtype == x.dtype and inp.device == x.device and inp.shape[1:] == x.shape[1:] \
                and 0 < inp.shape[0] <= x.shape[0]:
            rows = self._view_rows(inp) or self._equal_rows(inp)
            if rows is not None:
                return self.logits[rows]
        self.calls += 1
        return self.model(inp)


class AtPrecision(nn.Module):
    """The model under :func:`torch.autocast` to ``dtype``, its logits returned as float32.

    The metrics run hundreds of forward passes per map (insertion/deletion: 226); on a GPU
    bfloat16 / float16 autocast runs them on tensor cores. How far each metric moves
    against float32 is measured by ``benchmarks/bench_scale.py precision``. Explanations are not
    affected: the runner computes them in the model's own precision.

        >>> fast = AtPrecision(model, torch.bfloat16)
        >>> fast(x).dtype
        torch.float32
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, inp: Tensor) -> Tensor:
        with torch.autocast(inp.device.type, dtype=self.dtype):
            out = self.model(inp)
        return out.float()


class ChannelsLast(nn.Module):
    """A channels-last copy of the model, for the metrics' forward passes only.

    Depthwise convolutions (MobileNets, EfficientNets) run about twice as fast channels-last on
    a CPU (EfficientNet-Lite0 at 224 px, one thread: 85 against 173 ms per image); the logits
    agree with the model's to float32 rounding. Explanations keep the model itself, so no
    backward pass ever runs channels-last.

        >>> fast = ChannelsLast(model)
        >>> torch.allclose(fast(x), model(x), atol=1e-4)
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, inp: Tensor) -> Tensor:
        return self.model(inp.contiguous(memory_format=torch.channels_last))


def at_precision(model: nn.Module, precision: str = "fp32", channels_last: bool = False) -> nn.Module:
    """``model`` for the metrics' forward passes at ``precision`` (``fp32``: the model itself),
    on a channels-last copy with ``channels_last``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    model = ChannelsLast(model) if channels_last else model
    return model if dtype is None else AtPrecision(model, dtype)


def clean_pass(model: nn.Module, x: Tensor, metric_model: nn.Module | None = None) -> tuple[Tensor, CleanLogitsCache, Tensor]:
    """What every map of a batch shares: ``(logits, cache, baseline)``.

    ``logits``: the clean B x K logits (under ``no_grad``, not ``inference_mode``: targets taken
    from them index into the explainers' autograd graphs); ``cache``: ``metric_model`` (default
    ``model``; e.g. :func:`at_precision`'s) answering the clean batch from its own clean pass;
    ``baseline``: the blurred images.
    """
    with torch.no_grad():
        logits = model(x)
    if metric_model is None or metric_model is model:
        cache = CleanLogitsCache(model, x, logits)
    else:
        with torch.inference_mode():
            cache = CleanLogitsCache(metric_model, x, metric_model(x))
    return logits, cache, M.blur_baseline(x)


def check_metrics(metrics: Sequence[str]) -> None:
    """Raise ValueError naming any metric option not in :data:`METRIC_GROUPS`."""
    bad = [m for m in metrics if m not in METRIC_GROUPS]
    if bad:
        raise ValueError(f"unknown metrics {bad}; valid: {', '.join(METRIC_GROUPS)}")


def _localization(batch: Batch, maps: Tensor, target: Tensor, seed: int, kw: MetricKwargs) -> dict[str, Tensor]:
    """Proportion (boxes), Proportion with masks and the pointing game; NaN where unannotated."""
    hw = tuple(batch.x.shape[-2:])
    regions = batch.regions(target)
    has_box = torch.tensor([b is not None for b, _ in regions])
    has_mask = torch.tensor([m is not None for _, m in regions])
    nan = torch.full((len(batch),), float("nan"))
    boxes = [b if b is not None else torch.zeros(0, 4) for b, _ in regions]
    masks = torch.stack([m if m is not None else torch.zeros(hw, dtype=torch.bool) for _, m in regions])
    maps = maps.detach().float().cpu()
    prop = dict(kw.get("proportion", {}))
    pg = {"seed": seed, **kw.get("pointing_game", {})}
    out = {"proportion": torch.where(has_box, M.proportion(maps, boxes, hw, **prop), nan)}
    if bool(has_mask.any()):
        out["proportion_mask"] = torch.where(has_mask, M.proportion_mask(maps, masks, **prop), nan)
    if bool(has_mask.all()):
        out["pointing_game"] = M.pointing_game(maps, masks, **pg)
    else:
        out["pointing_game"] = torch.where(has_box, M.pointing_game(maps, boxes=boxes, image_size=hw, **pg), nan)
    return out


def score_maps(
    model: nn.Module,
    batch: Batch,
    maps: Tensor,
    target: Tensor,
    metrics: Sequence[str] = ("adai", "insdel", "proportion"),
    *,
    signed: bool = False,
    baseline: Tensor | None = None,
    insdel_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    metric_kwargs: MetricKwargs | None = None,
) -> dict[str, Tensor]:
    """Per-image metrics of one batch of maps (B x h x w): metric row name -> B float64 (CPU).

    ``metrics``: options of :data:`METRIC_GROUPS`. ``adai``: Average Drop / Increase
    (percent; ``signed`` applies the Table 4 rule); ``insdel``: insertion, deletion,
    Over-all (``insdel_steps`` steps, None: the paper's 448 pixels per step at 224 x 224);
    ``proportion``: share of the positive map inside the region's boxes (the paper's
    Proportion) and masks, and the pointing game (NaN without annotations); ``road``:
    ROAD MoRF / LeRF. ``baseline``: the blurred images (computed when None).
    ``metric_kwargs[option]``: keyword arguments of that option's metric function (also
    ``"pointing_game"``). ``model`` may be a :class:`CleanLogitsCache`.
    """
    check_metrics(metrics)
    kw: dict[str, Mapping[str, Any]] = dict(metric_kwargs or {})
    x = batch.x
    if insdel_steps is not None:
        step = max(1, math.ceil(x.shape[-2] * x.shape[-1] / int(insdel_steps)))
        kw["insdel"] = {"step": step, **kw.get("insdel", {})}
    base = M.blur_baseline(x) if baseline is None else baseline
    common = {"seed": seed, "batch_size": batch_size}
    out: dict[str, Tensor] = {}
    if "adai" in metrics:
        r = M.average_drop_increase(model, x, maps, target, signed=signed, baseline=base, **common,
                                    **kw.get("adai", {}))
        out.update(average_drop=r.drop, average_increase=r.increase)
    if "insdel" in metrics:
        r = M.insertion_deletion(model, x, maps, target, baseline=base, **common, **kw.get("insdel", {}))
        out.update(insertion=r.insertion_auc, deletion=r.deletion_auc, overall=r.overall)
    if "proportion" in metrics:
        out.update(_localization(batch, maps, target, seed, kw))
    if "road" in metrics:
        road = {**common, **kw.get("road", {})}
        out["road_morf"] = M.road(model, x, maps, target, order="morf", **road).mean
        out["road_lerf"] = M.road(model, x, maps, target, order="lerf", **road).mean
    return {k: v.detach().double().cpu() for k, v in out.items()}
