"""Run explainers x layers x metrics over a data set; tabulate as the paper does.

Command line (``python -m fgcam_lib.evaluation --help``)::

    python -m fgcam_lib.evaluation --model bundled --data benchmark:test --n 500 \\
        --methods grad_cam,fg_grad_cam,lrp --layers 33,23,13,input \\
        --metrics adai,insdel,proportion --out results/bench.parquet

Python::

    >>> df = run_evaluation(model, preprocess, SyntheticScenes("test", 100, size=96),
    ...                     ["grad_cam", "fg_grad_cam"], [33, "input"], ["adai", "insdel"])
    >>> format_table(summarize(df, table=1))       # the paper's Table 1 layout

Rows are tidy: one per (image, method, layer, metric) with columns ``data``,
``image_id``, ``index``, ``label``, ``target``, ``method``, ``layer``, ``metric``,
``value``. Metric options and the rows they write:

- ``adai``: ``average_drop``, ``average_increase`` (percent, per image; their means are
  the paper's A.D. and A.I.). Maps marked signed at that layer (LRP family and FG-CAM at
  the input, see :mod:`fgcam_lib.methods`) use the Table 4 rule.
- ``insdel``: ``insertion``, ``deletion``, ``overall`` (areas under the curves, blurred
  baseline, ``ceil(H W / 112)`` pixels per step: 448 at 224 x 224).
- ``proportion``: ``proportion`` (boxes, the paper's Table 3/6), ``proportion_mask``
  (exact masks, when the data has them), ``pointing_game`` (masks, else boxes). The
  region is the objects of the target class; if none is of that class, those of the
  label; an image without boxes gets NaN.
- ``road``: ``road_morf``, ``road_lerf`` (mean target probability over the removal
  percentages; slow: one sparse solve per image and percentage).

Per batch of images the clean logits are computed once (the metrics get them from a
cache instead of re-running the model), the blurred baseline once, and each method's
maps at all requested layers in one explainer call. Results are appended per batch
(``.csv``: one file; ``.parquet``: a folder of part files, read back with
``pandas.read_parquet(folder)``), and a rerun with the same arguments skips the images
whose rows are all there: an interrupted run resumes, a larger ``n`` only adds images,
a new method or metric only adds its rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics as M
from ..methods.registry import (
    METHODS, PAPER_CAM_METHODS, PAPER_INPUT_METHODS, is_input_layer, is_signed, label, make_explainer, supports,
)
from .stats import mean_ci
from .store import COLUMNS, DTYPES, ResultStore, empty_rows, layer_key, model_fingerprint, read_results, typed_rows

if TYPE_CHECKING:  # pandas is imported lazily, inside the functions that tabulate
    import pandas as pd

__all__ = [
    "METRIC_GROUPS", "METRIC_LABELS", "COLUMNS", "PAPER_LAYERS", "TABLES",
    "run_evaluation", "summarize", "format_table", "throughput_table", "read_results", "main",
]

#: metric option -> the metric rows it writes (the first is the one checked on resume)
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "adai": ("average_drop", "average_increase"),
    "insdel": ("insertion", "deletion", "overall"),
    "proportion": ("proportion", "proportion_mask", "pointing_game"),
    "road": ("road_morf", "road_lerf"),
}
FAITHFULNESS_GROUPS: tuple[str, ...] = ("adai", "insdel", "road")
LOCALIZATION_GROUPS: tuple[str, ...] = ("proportion",)

#: metric row name -> the paper's label
METRIC_LABELS: dict[str, str] = {
    "average_drop": "A.D.", "average_increase": "A.I.",
    "insertion": "Insertion", "deletion": "Deletion", "overall": "Over-all",
    "proportion": "Proportion", "proportion_mask": "Proportion (mask)", "pointing_game": "Pointing game",
    "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF",
}

#: the paper's Layer33, Layer23, Layer13 (the 4th, 3rd and 2nd max-pool of VGG16-BN)
PAPER_LAYERS: tuple[str, ...] = ("33", "23", "13")

_GROUP_OF: dict[str, str] = {m: g for g, names in METRIC_GROUPS.items() for m in names}

Key = tuple[str, str, str, str]  # (image_id, method, layer, metric group)


# ------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """Images ready for the model, with their annotations.

    ``x``: B x 3 x S x S normalised; ``boxes[i]``: n_i x 4 (x0, y0, x1, y1) in ``x``'s
    pixels, or None; ``masks[i]``: n_i x S x S bool, or None; ``classes[i]``: n_i long.
    """

    x: Tensor
    ids: list[str]
    indices: list[int]
    labels: list[int]
    classes: list[Tensor | None]
    boxes: list[Tensor | None]
    masks: list[Tensor | None]


def dataset_image_ids(dataset: Any, indices: Sequence[int]) -> list[str]:
    """Stable ids of the images at ``indices``, known without loading them.

    File name for file-backed data sets (``ImageNetVal``, ``ImageFolderDataset``), the
    position in the data set otherwise (a scene's index).
    """
    records = getattr(dataset, "records", None)
    paths = getattr(dataset, "paths", None)
    if records is not None:
        return [Path(records[i].path).name for i in indices]
    if paths is not None:
        return [Path(paths[i]).name for i in indices]
    return [str(int(i)) for i in indices]


def _resize_annotations(item: Mapping[str, Any], hw: tuple[int, int]) -> tuple[Tensor | None, Tensor | None]:
    """An item's boxes (n x 4) and masks (n x H x W) rescaled from its image size to ``hw``."""
    h0, w0 = item["image"].shape[-2:]
    boxes, masks = item.get("boxes"), item.get("masks")
    if boxes is not None:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if (h0, w0) != hw:
            scale = torch.tensor([hw[1] / w0, hw[0] / h0, hw[1] / w0, hw[0] / h0])
            boxes = boxes * scale
    if masks is not None:
        masks = torch.as_tensor(masks).bool()
        if masks.shape[-2:] != hw and masks.numel():
            masks = torch.nn.functional.interpolate(masks[:, None].float(), size=hw, mode="nearest")[:, 0] > 0.5
        elif masks.shape[-2:] != hw:
            masks = masks.new_zeros((0, *hw))
    return boxes, masks


def load_batch(dataset: Any, indices: Sequence[int], ids: Sequence[str], preprocess: Any,
               device: torch.device) -> Batch:
    """Load and preprocess the items at ``indices`` (images B x 3 x S x S on ``device``)."""
    items = [dataset[int(i)] for i in indices]
    images = [it["image"] if it["image"].dim() == 4 else it["image"][None] for it in items]
    x = torch.cat([preprocess(im) if preprocess is not None else im for im in images]).to(device)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    boxes, masks = zip(*(_resize_annotations(it, hw) for it in items))
    classes = [torch.as_tensor(it["classes"]).long().reshape(-1) if "classes" in it else None for it in items]
    labels = [int(it.get("label", -1)) for it in items]
    return Batch(x, list(ids), [int(i) for i in indices], labels, classes, list(boxes), list(masks))


def _region(batch: Batch, j: int, target: int) -> tuple[Tensor | None, Tensor | None]:
    """Boxes (k x 4) and mask union (S x S) of image ``j``'s objects of the target class.

    Falls back to the objects of the label's class, then to every object. None when the
    image has no boxes (masks: when it has no masks).
    """
    boxes, masks, classes = batch.boxes[j], batch.masks[j], batch.classes[j]
    if boxes is None or boxes.shape[0] == 0:
        return None, None
    pick = torch.ones(boxes.shape[0], dtype=torch.bool)
    if classes is not None and classes.numel() == boxes.shape[0]:
        for wanted in (target, batch.labels[j]):
            hit = classes == wanted
            if bool(hit.any()):
                pick = hit
                break
    union = masks[pick].any(0) if masks is not None and masks.shape[0] == boxes.shape[0] else None
    return boxes[pick], union


# ------------------------------------------------------------------------- clean logits
class CleanLogitsCache(nn.Module):
    """The model, except that the clean batch ``x`` (or rows of it) is answered from cache.

    The metrics recompute the clean images' logits on every call; wrapping the model lets
    a batch's clean forward pass run once for all methods, layers and metrics. An input
    is answered from the cache when it holds exactly rows ``r..r+n`` of ``x``: a view of
    ``x`` (found from its storage offset) or a copy (found by comparing values; a
    perturbed image equal to a clean one has the clean one's logits anyway). Anything
    else runs the model; ``calls`` counts those runs.

    Shapes: ``x`` B x C x H x W, ``logits`` B x K; ``forward``: n x C x H x W -> n x K.
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


# ------------------------------------------------------------------------------ metrics
@dataclass
class MetricContext:
    """What every metric of one batch shares: cached model, images, targets, baseline."""

    model: nn.Module
    batch: Batch
    target: Tensor
    baseline: Tensor
    seed: int
    batch_size: int
    kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _adai(ctx: MetricContext, maps: Tensor, signed: bool) -> dict[str, Tensor]:
    r = M.average_drop_increase(ctx.model, ctx.batch.x, maps, ctx.target, signed=signed, baseline=ctx.baseline,
                                seed=ctx.seed, batch_size=ctx.batch_size, **ctx.kwargs.get("adai", {}))
    return {"average_drop": r.drop, "average_increase": r.increase}


def _insdel(ctx: MetricContext, maps: Tensor, signed: bool) -> dict[str, Tensor]:
    r = M.insertion_deletion(ctx.model, ctx.batch.x, maps, ctx.target, baseline=ctx.baseline, seed=ctx.seed,
                             batch_size=ctx.batch_size, **ctx.kwargs.get("insdel", {}))
    return {"insertion": r.insertion_auc, "deletion": r.deletion_auc, "overall": r.overall}


def _localization(ctx: MetricContext, maps: Tensor, signed: bool) -> dict[str, Tensor]:
    """Proportion (boxes), Proportion with masks and the pointing game; NaN where unannotated."""
    b, hw = ctx.batch, tuple(ctx.batch.x.shape[-2:])
    regions = [_region(b, j, int(ctx.target[j])) for j in range(len(b.ids))]
    has_box = torch.tensor([r[0] is not None for r in regions])
    has_mask = torch.tensor([r[1] is not None for r in regions])
    nan = torch.full((len(b.ids),), float("nan"))
    boxes = [r[0] if r[0] is not None else torch.zeros(0, 4) for r in regions]
    masks = torch.stack([r[1] if r[1] is not None else torch.zeros(hw, dtype=torch.bool) for r in regions])
    maps = maps.detach().float().cpu()
    kw = ctx.kwargs.get("proportion", {})
    out = {"proportion": torch.where(has_box, M.proportion(maps, boxes, hw, **kw), nan)}
    pg = dict(ctx.kwargs.get("pointing_game", {}))
    if bool(has_mask.any()):
        out["proportion_mask"] = torch.where(has_mask, M.proportion_mask(maps, masks, **kw), nan)
    if bool(has_mask.all()):
        out["pointing_game"] = M.pointing_game(maps, masks, seed=ctx.seed, **pg)
    else:
        out["pointing_game"] = torch.where(has_box, M.pointing_game(maps, boxes=boxes, image_size=hw,
                                                                    seed=ctx.seed, **pg), nan)
    return out


def _road(ctx: MetricContext, maps: Tensor, signed: bool) -> dict[str, Tensor]:
    kw = {"seed": ctx.seed, "batch_size": ctx.batch_size, **ctx.kwargs.get("road", {})}
    morf = M.road(ctx.model, ctx.batch.x, maps, ctx.target, order="morf", **kw)
    lerf = M.road(ctx.model, ctx.batch.x, maps, ctx.target, order="lerf", **kw)
    return {"road_morf": morf.mean, "road_lerf": lerf.mean}


_METRIC_FNS = {"adai": _adai, "insdel": _insdel, "proportion": _localization, "road": _road}


# ------------------------------------------------------------------------------- runner
@dataclass
class Throughput:
    """Seconds spent per method on maps and on metrics, and images processed."""

    explain_s: dict[str, float] = field(default_factory=dict)
    metrics_s: dict[str, float] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    def add(self, method: str, explain_s: float, metrics_s: float, images: int) -> None:
        self.explain_s[method] = self.explain_s.get(method, 0.0) + explain_s
        self.metrics_s[method] = self.metrics_s.get(method, 0.0) + metrics_s
        self.images[method] = self.images.get(method, 0) + images

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {m: {"images": self.images[m], "explain_s": self.explain_s[m], "metrics_s": self.metrics_s[m]}
                for m in self.images}


def _layer_name(layer: int | str) -> str:
    """The string a layer is stored under (``33`` -> ``"33"``; names kept as given)."""
    return "input" if is_input_layer(layer) else str(layer)


def _targets(rule: str, logits: Tensor, labels: Sequence[int]) -> Tensor:
    """Classes to explain, LongTensor[B]: top-1 of the clean logits, or the labels."""
    if rule in ("pred", "top1"):
        return logits.argmax(1)
    if rule in ("true", "label"):
        t = torch.tensor(list(labels), dtype=torch.long, device=logits.device)
        if bool((t < 0).any()):
            raise ValueError("target='true' needs labels, but some images have none (label -1)")
        return t
    raise ValueError(f"unknown target rule {rule!r}; use 'pred' or 'true'")


def _rows(ctx: MetricContext, method: str, layer: str, values: Mapping[str, Tensor],
          keep: Sequence[bool], data: str) -> dict[str, list]:
    """Columns of the tidy rows for the images where ``keep``."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    b = ctx.batch
    for metric, v in values.items():
        v = v.detach().double().cpu().tolist()
        for j, k in enumerate(keep):
            if not k:
                continue
            for c, val in zip(COLUMNS, (data, b.ids[j], b.indices[j], b.labels[j], int(ctx.target[j]),
                                        method, layer, metric, v[j])):
                cols[c].append(val)
    return cols


def _extend(acc: dict[str, list], cols: Mapping[str, list]) -> None:
    for c in COLUMNS:
        acc[c].extend(cols[c])


def _done_keys(df: "pd.DataFrame", data: str) -> set[Key]:
    """(image_id, method, layer, group) whose first metric row is stored for ``data``."""
    primary = {names[0] for names in METRIC_GROUPS.values()}
    sub = df[(df["data"] == data) & df["metric"].isin(primary)]
    return {(i, m, l, _GROUP_OF[k]) for i, m, l, k in zip(sub["image_id"], sub["method"], sub["layer"], sub["metric"])}


def run_evaluation(
    model: nn.Module,
    preprocess: Any,
    dataset: Any,
    methods: Sequence[str],
    layers: Sequence[int | str],
    metrics: Sequence[str] = ("adai", "insdel", "proportion"),
    n: int | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    *,
    target: str = "pred",
    data_name: str = "data",
    metric_batch_size: int = 64,
    explainer_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> "pd.DataFrame":
    """Evaluate ``methods`` at ``layers`` with ``metrics`` on the first ``n`` images.

    Args:
        model: eval-mode classifier; ``preprocess``: images in [0, 1] -> model input
            (a :class:`fgcam_lib.data.models.Preprocess`, or None when items are ready).
        dataset: items are dicts with ``image`` (3 x H x W in [0, 1]) and optionally
            ``label``, ``classes``, ``boxes``, ``masks`` (``SyntheticScenes``,
            ``ImageNetVal``, ``ImageFolderDataset``).
        methods: names from :data:`fgcam_lib.methods.METHODS`; layer combinations a
            method does not support (a CAM at the input) are skipped.
        metrics: options of :data:`METRIC_GROUPS`.
        out: ``.csv`` or ``.parquet`` path; rows are appended per batch and images whose
            rows are all present are skipped.
        target: ``"pred"`` (top-1 on the clean image) or ``"true"`` (the label).
        batch_size: images per explainer call; ``metric_batch_size``: perturbed images
            per forward pass inside the metrics.
        explainer_kwargs / metric_kwargs: per method / per metric option keyword
            arguments (e.g. ``{"insdel": {"step": 64}}``, ``{"pointing_game": {"tolerance": 8}}``).

    Returns:
        The rows of the evaluated images (stored and new), :data:`COLUMNS`;
        ``df.attrs["throughput"]``: per method images, explain_s, metrics_s (this run),
        ``df.attrs["computed_images"]``: images computed in this run.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    _validate(methods, metrics)
    torch.manual_seed(seed)
    np.random.seed(seed)
    device = next(model.parameters()).device
    model.eval()
    layer_names = {_layer_name(layer): layer for layer in layers}
    plan = {m: [name for name, spec in layer_names.items() if supports(m, spec, model)] for m in methods}
    groups = list(dict.fromkeys(metrics))
    store = ResultStore(out) if out is not None else None
    stored = store.read() if store is not None else empty_rows()
    if store is not None:

        # rows of another checkpoint must never be reused
        store.check_meta({"seed": seed, "target": target, "model": model_fingerprint(model)})
    done = _done_keys(stored, data_name)
    count = len(dataset) if n is None else min(int(n), len(dataset))
    indices = list(range(count))
    ids = dataset_image_ids(dataset, indices)
    explainers = {m: make_explainer(m, model, preprocess=preprocess, **dict((explainer_kwargs or {}).get(m, {})))
                  for m in methods if plan[m]}
    timing, new, computed = Throughput(), [], 0

    def missing(i: str, m: str, l: str, g: str) -> bool:
        return (i, m, l, g) not in done

    todo = [j for j in range(count) if any(missing(ids[j], m, l, g) for m in explainers for l in plan[m]
                                           for g in groups)]
    # the bar counts only images still to compute, so its rate and ETA hold on a resumed run
    bar = tqdm(total=len(todo), desc=f"evaluate {data_name} ({count - len(todo)} stored)", unit="img",
               disable=not progress)
    pending = set(todo)
    for s in range(0, count, batch_size):
        chunk = [j for j in range(s, min(s + batch_size, count)) if j in pending]
        if chunk:
            cols = _evaluate_batch(model, preprocess, dataset, chunk, [ids[j] for j in chunk], device, explainers,
                                   plan, groups, missing, target, seed, metric_batch_size, metric_kwargs or {},
                                   data_name, timing)
            rows = pd.DataFrame(cols).astype(DTYPES)
            if store is not None:
                store.append(rows)
            new.append(rows)
            done |= {(i, m, l, _GROUP_OF[k]) for i, m, l, k in zip(rows["image_id"], rows["method"], rows["layer"],
                                                                    rows["metric"])}
            computed += len(chunk)
            bar.update(len(chunk))
    bar.close()
    df = pd.concat([stored] + new, ignore_index=True) if new else stored
    wanted = {g2 for g in groups for g2 in METRIC_GROUPS[g]}
    df = df[(df["data"] == data_name) & df["image_id"].isin(set(ids)) & df["method"].isin(list(methods))
            & df["layer"].isin(list(layer_names)) & df["metric"].isin(wanted)].reset_index(drop=True)
    df = typed_rows(df)
    df.attrs["throughput"] = timing.as_dict()
    df.attrs["computed_images"] = computed
    return df


def _validate(methods: Sequence[str], metrics: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    bad = [m for m in metrics if m not in METRIC_GROUPS]
    if bad:
        raise ValueError(f"unknown metrics {bad}; valid: {', '.join(METRIC_GROUPS)}")


def _evaluate_batch(
    model: nn.Module,
    preprocess: Any,
    dataset: Any,
    indices: Sequence[int],
    ids: Sequence[str],
    device: torch.device,
    explainers: Mapping[str, Any],
    plan: Mapping[str, Sequence[str]],
    groups: Sequence[str],
    missing: Callable[[str, str, str, str], bool],
    target: str,
    seed: int,
    metric_batch_size: int,
    metric_kwargs: Mapping[str, Mapping[str, Any]],
    data_name: str,
    timing: Throughput,
) -> dict[str, list]:
    """Maps and metrics of one batch (B images), only for the (image, method, layer, group) still missing.

    One clean forward pass (B x K logits), one blurred baseline (B x 3 x S x S) and one
    explainer call per method (all its missing layers); returns tidy-row columns.
    """
    batch = load_batch(dataset, indices, ids, preprocess, device)
    with torch.no_grad():
        logits = model(batch.x)
    t = _targets(target, logits, batch.labels)
    ctx = MetricContext(CleanLogitsCache(model, batch.x, logits), batch, t, M.blur_baseline(batch.x), seed,
                        metric_batch_size, metric_kwargs)
    acc: dict[str, list] = {c: [] for c in COLUMNS}
    for method, explainer in explainers.items():
        todo = {l: [g for g in groups if any(missing(i, method, l, g) for i in ids)] for l in plan[method]}
        todo = {l: gs for l, gs in todo.items() if gs}
        if not todo:
            continue
        t0 = time.perf_counter()
        expl = explainer.explain(batch.x, t, list(todo))
        maps = {l: expl.map(l, signed=is_signed(method, l)).detach() for l in todo}
        t1 = time.perf_counter()
        for l, gs in todo.items():
            for g in gs:
                values = _METRIC_FNS[g](ctx, maps[l], is_signed(method, l))
                keep = [missing(i, method, l, g) for i in ids]
                _extend(acc, _rows(ctx, method, l, values, keep, data_name))
        timing.add(method, t1 - t0, time.perf_counter() - t1, len(ids))
    return acc


def throughput_table(timing: Mapping[str, Mapping[str, float]] | "pd.DataFrame") -> "pd.DataFrame":
    """Images per second per method: maps, metrics and both (from ``df.attrs["throughput"]``)."""
    import pandas as pd

    if isinstance(timing, pd.DataFrame):
        timing = timing.attrs.get("throughput", {})
    rows = []
    for m, t in timing.items():
        total = t["explain_s"] + t["metrics_s"]
        rows.append({"method": m, "images": int(t["images"]),
                     "maps img/s": t["images"] / t["explain_s"] if t["explain_s"] > 0 else float("nan"),
                     "metrics img/s": t["images"] / t["metrics_s"] if t["metrics_s"] > 0 else float("nan"),
                     "total img/s": t["images"] / total if total > 0 else float("nan")})
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


# ---------------------------------------------------------------------------- summaries
def _summary(df: "pd.DataFrame", confidence: float, n_resamples: int, seed: int) -> "pd.DataFrame":
    """method x layer x metric (x data when several) -> mean, ci_low, ci_high, n."""
    import pandas as pd

    df = df.assign(layer=df["layer"].map(layer_key))
    keys = (["data"] if df["data"].nunique() > 1 else []) + ["method", "layer", "metric"]
    out = []
    for key, g in df.groupby(keys, sort=False):
        out.append((*key, *mean_ci(g["value"].to_numpy(dtype=float), confidence=confidence,
                                    n_resamples=n_resamples, seed=seed)))
    return pd.DataFrame(out, columns=keys + ["mean", "ci_low", "ci_high", "n"]).set_index(keys)


_STATS = ("mean", "ci_low", "ci_high", "n")

#: table number -> (methods, layers, metrics) of the paper's Tables 1-6
TABLES: dict[int, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    1: (PAPER_CAM_METHODS, PAPER_LAYERS, ("average_drop", "average_increase")),
    2: (PAPER_CAM_METHODS, PAPER_LAYERS, ("insertion", "deletion", "overall")),
    3: (PAPER_CAM_METHODS, PAPER_LAYERS, ("proportion",)),
    4: (PAPER_INPUT_METHODS, ("input",), ("average_drop", "average_increase")),
    5: (PAPER_INPUT_METHODS, ("input",), ("insertion", "deletion", "overall")),
    6: (PAPER_INPUT_METHODS, ("input",), ("proportion",)),
}


def table_number(table: int | str) -> int:
    s = str(table).lower().replace("table", "").strip()
    if not s.isdigit() or int(s) not in TABLES:
        raise ValueError(f"unknown table {table!r}; use 1-6 (the paper's Tables 1-6)")
    return int(s)


def _cell(summary: "pd.DataFrame", method: str, layer: str, metric: str) -> list[float]:
    try:
        row = summary.loc[(method, layer, metric)]
    except KeyError:
        return [float("nan")] * 3 + [0]
    return [float(row[s]) for s in _STATS]


def _paper_table(summary: "pd.DataFrame", number: int) -> "pd.DataFrame":
    """One of the paper's tables; the last column level is the statistic."""
    import pandas as pd

    methods, layers, metrics = TABLES[number]
    names = {m: label(m) for m in methods}
    lay = {layer: f"Layer{layer}" for layer in layers}
    if number == 1:  # rows: methods; columns: layer x metric
        cols = pd.MultiIndex.from_tuples([(lay[l], METRIC_LABELS[k], s) for l in layers for k in metrics for s in _STATS],
                                         names=["layer", "metric", "stat"])
        data = [[v for l in layers for k in metrics for v in _cell(summary, m, l, k)] for m in methods]
        return pd.DataFrame(data, index=pd.Index([names[m] for m in methods], name="method"), columns=cols)
    cols = pd.MultiIndex.from_tuples([(names[m], s) for m in methods for s in _STATS], names=["method", "stat"])
    if number == 2:  # rows: layer x metric; columns: methods
        idx = pd.MultiIndex.from_tuples([(lay[l], METRIC_LABELS[k]) for l in layers for k in metrics],
                                        names=["layer", "metric"])
        data = [[v for m in methods for v in _cell(summary, m, l, k)] for l in layers for k in metrics]
    elif number == 3:  # rows: layers
        idx = pd.Index([lay[l] for l in layers], name="layer")
        data = [[v for m in methods for v in _cell(summary, m, l, metrics[0])] for l in layers]
    else:  # Tables 4-6: rows: metrics at the input
        idx = pd.Index([METRIC_LABELS[k] for k in metrics], name="metric")
        data = [[v for m in methods for v in _cell(summary, m, "input", k)] for k in metrics]
    return pd.DataFrame(data, index=idx, columns=cols)


def summarize(
    df: "pd.DataFrame",
    table: int | str | None = None,
    *,
    data: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> "pd.DataFrame":
    """Means over images with percentile-bootstrap confidence intervals.

    ``table=None``: index (method, layer, metric) (``data`` first when the rows hold
    several data sets), columns ``mean``, ``ci_low``, ``ci_high``, ``n`` (non-NaN images).
    ``table=1..6``: the paper's Table 1-6 layout (rows and columns named as in the
    paper: "Grad-CAM", "Layer33", "A.D.", "Over-all", ...), with a last column level
    ``stat`` in (mean, ci_low, ci_high, n); cells of methods or layers not evaluated are
    NaN. Render with :func:`format_table`. ``data`` keeps the rows of one data set.

    Example:
        >>> s = summarize(df)                               # one row per method, layer, metric
        >>> s.loc[("fg_grad_cam", "33", "average_drop")]      # a Series: mean, ci_low, ci_high, n
        >>> format_table(summarize(df, table=1))              # Table 1 as "mean ± half-width" text
    """
    if data is not None:
        df = df[df["data"] == data]
    if table is None:
        return _summary(df, confidence, n_resamples, seed)
    number = table_number(table)
    methods, layers, metrics = TABLES[number]
    sub = df[df["method"].isin(methods) & df["layer"].map(layer_key).isin(layers) & df["metric"].isin(metrics)]
    if sub["data"].nunique() > 1:
        raise ValueError(f"Table {number}'s rows come from several data sets {sorted(sub['data'].unique())}; "
                         "pass data=")
    return _paper_table(_summary(sub, confidence, n_resamples, seed), number)


#: metrics reported in percent (2 decimals); the others are fractions (4 decimals)
_PERCENT = frozenset({"average_drop", "average_increase", "A.D.", "A.I."})


def _digits(keys: Sequence[Any], digits: int | None) -> int:
    """Decimals for a cell whose row/column keys are ``keys``."""
    if digits is not None:
        return digits
    return 2 if any(str(k) in _PERCENT for k in keys) else 4


def _fmt(mean: float, lo: float, hi: float, d: int) -> str:
    """``"mean ± half-width"`` with ``d`` decimals; ``"n/a"`` for a missing cell."""
    if not np.isfinite(mean):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.{d}f}"
    return f"{mean:.{d}f} ± {(hi - lo) / 2:.{d}f}"


def _as_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def format_table(table: "pd.DataFrame", digits: int | None = None) -> "pd.DataFrame":
    """Strings ``"mean ± half-width of the CI"`` in place of the statistics.

    For a paper table (last column level ``stat``) the ``stat`` level is dropped; for a
    generic summary the result has columns ``value`` and ``n``. ``digits=None``: 2
    decimals for A.D. and A.I. (percent), 4 for the other metrics (fractions).

    Example:
        >>> print(format_table(summarize(df, table=4)).to_string())
        method          LRP          CLRP ...
        A.D.   25.48 ± 1.10  30.64 ± 1.31 ...
    """
    import pandas as pd

    if not isinstance(table.columns, pd.MultiIndex):
        vals = [_fmt(r["mean"], r["ci_low"], r["ci_high"], _digits(_as_tuple(k), digits)) for k, r in table.iterrows()]
        return pd.DataFrame({"value": vals, "n": table["n"].to_numpy()}, index=table.index)
    outer = list(dict.fromkeys(c[:-1] for c in table.columns))
    data = {
        c: [_fmt(r[(*c, "mean")], r[(*c, "ci_low")], r[(*c, "ci_high")], _digits(_as_tuple(k) + c, digits))
            for k, r in table.iterrows()]
        for c in outer
    }
    out = pd.DataFrame(data, index=table.index)
    if table.columns.nlevels > 2:
        out.columns = pd.MultiIndex.from_tuples(outer, names=table.columns.names[:-1])
    else:
        out.columns = pd.Index([c[0] for c in outer], name=table.columns.names[0])
    return out


# --------------------------------------------------------------------------- command line
def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    from ..data.scenes import SPLITS

    p = argparse.ArgumentParser(
        prog="python -m fgcam_lib.evaluation",
        description="Evaluate explanation methods (faithfulness, localization) as in the FG-CAM paper.",
    )
    p.add_argument("--model", default="bundled",
                   help="'bundled' or a torchvision CNN (vgg16_bn, resnet50, densenet121, efficientnet_b0, ...)")
    p.add_argument("--weights", default=None, help="checkpoint path, or 'random' for an untrained network")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="benchmark:test",
                   help=f"benchmark:<split> ({', '.join(SPLITS)}), imagenet:<val folder> "
                        "(empty folder: FGCAM_IMAGENET_* env vars), or a folder of images")
    p.add_argument("--boxes", default=None, help="ImageNet boxes: XML folder or LOC_val_solution.csv")
    p.add_argument("--synsets", default=None, help="ImageNet LOC_synset_mapping.txt")
    p.add_argument("--scene-seed", type=int, default=None, help="benchmark scene seed (default: the model card's)")
    p.add_argument("--protocol", choices=("custom", "paper"), default="custom",
                   help="paper: faithfulness metrics on 2000 random images, localization on 500 images "
                        "with one box covering <= 50%% of the image")
    p.add_argument("--n", type=int, default=None,
                   help="images (default 500; paper protocol: faithfulness images, default 2000). "
                        "With insdel, all methods and layers take hours on a CPU: try --n 8 first")
    p.add_argument("--n-loc", type=int, default=None, help="paper protocol: localization images (default 500)")
    p.add_argument("--methods", default=",".join(dict.fromkeys(PAPER_CAM_METHODS + PAPER_INPUT_METHODS)),
                   help=f"comma-separated, of {', '.join(METHODS)} (default: the paper's Tables 1-6)")
    p.add_argument("--layers", default=None,
                   help="comma-separated: indices into model.features, layer names or 'input'; "
                        "a method is skipped where it is not defined (a CAM at the input). Default: "
                        "33,23,13,input on VGG; elsewhere the layers at 1/16, 1/8, 1/4 of the input "
                        "(ResNet: layer3,layer2,layer1) and input")
    p.add_argument("--metrics", default="adai,insdel,proportion", help=f"of {', '.join(METRIC_GROUPS)}")
    p.add_argument("--target", choices=("pred", "true"), default="pred",
                   help="class explained: the clean image's top-1 (pred) or the label (true)")
    p.add_argument("--out", default=None, help="results file (.csv) or folder (.parquet); resumes if present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="images per explainer call")
    p.add_argument("--metric-batch-size", type=int, default=None,
                   help="perturbed images per forward pass (default: 64 up to 128 px, 16 above)")
    p.add_argument("--throughput", action="store_true", help="print images/s per method at the end")
    p.add_argument("--table", default=None, help="print the paper's tables 1-6, e.g. 1,2,3 (default: a summary)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    from ..data.models import load_model

    torch.manual_seed(args.seed)  # a "random" model is then the same on every (resumed) run
    return load_model(args.model, weights=args.weights, device=args.device)


def _datasets(args: argparse.Namespace, model: nn.Module, size: int) -> list[tuple[str, Any, int, list[str]]]:
    """(data name, dataset, n, metric options) for each evaluation the arguments ask for."""
    from ..data.images import ImageFolderDataset, ImageNetVal
    from ..data.scenes import SyntheticScenes

    metrics = _split_list(args.metrics)
    paper = args.protocol == "paper"
    n_faith = args.n if args.n is not None else (2000 if paper else 500)
    n_loc = args.n_loc if args.n_loc is not None else (500 if paper else n_faith)
    faith = [m for m in metrics if m not in LOCALIZATION_GROUPS] if paper else metrics
    loc = [m for m in metrics if m in LOCALIZATION_GROUPS] if paper else []
    kind, _, rest = args.data.partition(":")
    if kind == "benchmark":
        card = getattr(model, "card", {}) or {}
        seed = args.scene_seed if args.scene_seed is not None else int(card.get("scene_seed", 0))
        split = rest or "test"
        out = [(f"benchmark:{split}", SyntheticScenes(split, n_faith, seed=seed, size=size), n_faith, faith)]
        if loc:
            out.append(("benchmark:loc", SyntheticScenes("loc", n_loc, seed=seed, size=size), n_loc, loc))
    elif kind == "imagenet":
        boxes = args.boxes or os.environ.get("FGCAM_IMAGENET_BOXES")
        synsets = args.synsets or os.environ.get("FGCAM_IMAGENET_SYNSETS")
        ds = ImageNetVal(rest, boxes=boxes, synsets=synsets, size=size) if rest else ImageNetVal.from_env(size)
        name = f"imagenet:{Path(rest).name if rest else 'env'}"
        out = [(name, ds.random_subset(n_faith, args.seed) if paper else ds, n_faith, faith)]
        if loc:
            out.append((f"{name}:loc", ds.localization_subset().random_subset(n_loc, args.seed), n_loc, loc))
    else:
        ds = ImageFolderDataset(args.data, size=size)
        dropped = [m for m in metrics if m in LOCALIZATION_GROUPS]
        if dropped:
            print(f"note: {args.data} has no boxes; skipping {', '.join(dropped)}", file=sys.stderr)
        out = [(f"folder:{Path(args.data).name}", ds, n_faith, [m for m in faith if m not in LOCALIZATION_GROUPS])]
    return [o for o in out if o[3]]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    import pandas as pd

    from ..data.models import WeightsNotFoundError

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = _split_list(args.methods)
    try:
        _validate(methods, _split_list(args.metrics))
        tables = [table_number(t) for t in _split_list(args.table or "")]
        model, preprocess = _load_model(args)
        if args.layers is None:
            from ..methods.registry import paper_layers

            layers = [*paper_layers(model, int(getattr(preprocess, "size", 224))), "input"]
        else:
            layers = _split_list(args.layers)
        for layer in layers:  # a typo must stop the run, not skip the layer
            supports(methods[0], layer, model)
        size = int(getattr(preprocess, "size", 224))
        plan = _datasets(args, model, size)
    except (WeightsNotFoundError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped = [f"{m}@{l}" for m in methods for l in layers if not supports(m, l, model)]
    if skipped:
        print(f"note: not defined, skipped: {', '.join(skipped)}", file=sys.stderr)
    mbs = args.metric_batch_size or (64 if size <= 128 else 16)
    frames = []
    for name, ds, n, metrics in plan:
        try:
            frames.append(run_evaluation(model, preprocess, ds, methods, layers, metrics, n=n, out=args.out,
                                         seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                                         target=args.target, data_name=name, metric_batch_size=mbs))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    df = pd.concat(frames, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        if tables:
            for t in tables:
                print(f"\nTable {t}\n{format_table(summarize(df, table=t)).to_string()}")
        else:
            print(format_table(summarize(df)).to_string())
        if args.throughput:
            timing: dict[str, dict[str, float]] = {}
            for f in frames:
                for m, t in f.attrs.get("throughput", {}).items():
                    acc = timing.setdefault(m, {"images": 0, "explain_s": 0.0, "metrics_s": 0.0})
                    for k in acc:
                        acc[k] += t[k]
            print("\nThroughput (images/s; this run's computed images)\n" + throughput_table(timing).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
