"""Run explainers x layers x metrics over a data set, resumably; the rows the paper's tables read.

Command line (``python -m fgcam_lib.evaluation --help``, :mod:`.cli`)::

    python -m fgcam_lib.evaluation --model bundled --data benchmark:test --num-images 500 \\
        --methods grad_cam,fg_grad_cam,lrp --layers 33,23,13,input \\
        --metrics adai,insdel,proportion --out results/bench.parquet

Python::

    >>> df = run_evaluation(model, preprocess, SyntheticScenes("test", 100, size=96),
    ...                     ["grad_cam", "fg_grad_cam"], [33, "input"], ["adai", "insdel"])
    >>> format_table(summarize(df, table=1))       # the paper's Table 1 layout (:mod:`.tables`)

Rows are tidy: one per (image, method, layer, metric) with columns ``data``,
``image_id``, ``index``, ``label``, ``target``, ``method``, ``layer``, ``metric``,
``value``. Metric options and the rows they write (:data:`fgcam_lib.catalogue.METRIC_GROUPS`,
computed by :func:`fgcam_lib.evaluation.scoring.score_maps`):

- ``adai``: ``average_drop``, ``average_increase`` (percent, per image; their means are
  the paper's A.D. and A.I.). Maps marked signed at that layer (LRP family and FG-CAM at
  the input, see :mod:`fgcam_lib.methods`) use the Table 4 rule.
- ``insdel``: ``insertion``, ``deletion``, ``overall`` (areas under the curves, blurred
  baseline, ``ceil(H W / 112)`` pixels per step: 448 at 224 x 224).
- ``proportion``: ``proportion`` (boxes, the paper's Table 3/6), ``proportion_mask``
  (exact masks, when the data has them), ``pointing_game`` (masks, else boxes). The
  region is the objects of the target class; if none is of that class, those of the
  label (:meth:`fgcam_lib.evaluation.batch.Batch.region_of`); an image without boxes gets NaN.
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

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..catalogue import METRIC_GROUPS, layer_key
from ..data.fingerprint import model_fingerprint
from ..methods.registry import METHODS, is_signed, make_explainer, supports
from .batch import Batch, dataset_image_ids, load_batch
from .distributed import SINGLE, Ranks
from .scoring import at_precision, check_metrics, clean_pass, score_maps
from .store import COLUMNS, DTYPES, ResultStore, empty_rows, typed_rows

if TYPE_CHECKING:  # pandas is imported lazily, inside the functions that tabulate
    import pandas as pd

__all__ = ["run_evaluation", "check_request", "Throughput", "FAITHFULNESS_GROUPS", "LOCALIZATION_GROUPS"]

FAITHFULNESS_GROUPS: tuple[str, ...] = ("adai", "insdel", "road")
LOCALIZATION_GROUPS: tuple[str, ...] = ("proportion",)
_GROUP_OF: dict[str, str] = {m: g for g, names in METRIC_GROUPS.items() for m in names}

Key = tuple[str, str, str, str]  # (image_id, method, layer, metric group)


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


def _targets(rule: str, logits: Tensor, labels: Sequence[int] | Tensor) -> Tensor:
    """Classes to explain, LongTensor[B]: top-1 of the clean logits, or the labels."""
    if rule in ("pred", "top1"):
        return logits.argmax(1)
    if rule in ("true", "label"):
        t = torch.as_tensor(labels, dtype=torch.long).to(logits.device)
        if bool((t < 0).any()):
            raise ValueError("target='true' needs labels, but some images have none (label -1)")
        return t
    raise ValueError(f"unknown target rule {rule!r}; use 'pred' or 'true'")


def check_request(methods: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise ValueError naming any unknown method or metric option."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    check_metrics(metrics)


class _Plan:
    """What one run asks for, what its store already holds, and the rows it gathers.

    ``layers[method]``: the layer keys the method is defined at; ``done``: the (image,
    method, layer, group) whose first metric row is stored; ``todo``: positions of the
    images with anything missing. Under torchrun (``ranks``) every rank reads the whole
    store before any rank writes, and computes only its own windows.
    """

    def __init__(self, model: nn.Module, dataset: Any, methods: Sequence[str], layers: Sequence[int | str],
                 metrics: Sequence[str], n: int | None, out: Any, data: str, meta: Mapping[str, Any],
                 ranks: Ranks = SINGLE) -> None:
        check_request(methods, metrics)
        self.data, self.methods, self.ranks = data, list(methods), ranks
        self.specs = {layer_key(layer): layer for layer in layers}
        self.layers = {m: [k for k, spec in self.specs.items() if supports(m, spec, model)] for m in methods}
        self.groups = list(dict.fromkeys(metrics))
        self.store = ResultStore(out) if out is not None else None
        if self.store is not None and ranks.distributed and not self.store.parquet:
            raise ValueError("several ranks write one store: give a .parquet --out (a folder of parts), not .csv")
        if self.store is not None:  # rows of another checkpoint or setting must never be reused
            meta = {**meta, "model": model_fingerprint(model)}
            self.store.check_meta(meta, write=False)  # every rank fails alike on a mismatch
            ranks.barrier()
            if ranks.main:
                self.store.check_meta(meta)
            ranks.barrier()
        self.stored = self.store.read() if self.store is not None else empty_rows()
        ranks.barrier()  # nobody appends before every rank has read
        sub = self.stored[(self.stored["data"] == data) & self.stored["metric"].isin(
            [names[0] for names in METRIC_GROUPS.values()])]
        self.done: set[Key] = set()
        self._mark(sub)
        count = len(dataset) if n is None else min(int(n), len(dataset))
        self.ids = dataset_image_ids(dataset, range(count))
        self.new: list["pd.DataFrame"] = []
        self.todo = [j for j in range(count) if any(self.missing(self.ids[j], m, l, g) for m in self.methods
                                                     for l in self.layers[m] for g in self.groups)]

    def _mark(self, rows: "pd.DataFrame") -> None:
        self.done |= {(i, m, l, _GROUP_OF[k]) for i, m, l, k in
                      zip(rows["image_id"], rows["method"], rows["layer"], rows["metric"])}

    def missing(self, image_id: str, method: str, layer: str, group: str) -> bool:
        return (image_id, method, layer, group) not in self.done

    def batches(self, size: int) -> list[list[int]]:
        """This rank's images to compute, in windows of ``size`` positions (window ``k`` is rank
        ``k % world``'s; a resumed run keeps the windows)."""
        pending = set(self.todo)
        windows = ([j for j in range(s, s + size) if j in pending] for s in range(0, len(self.ids), size)
                   if self.ranks.owns(s // size))
        return [w for w in windows if w]

    def record(self, rows: "pd.DataFrame") -> None:
        if self.store is not None:
            self.store.append(rows, tag=f"rank{self.ranks.rank}" if self.ranks.distributed else "")
        self.new.append(rows)
        self._mark(rows)

    def result(self, new: Sequence["pd.DataFrame"] | None = None) -> "pd.DataFrame":
        """The stored and new rows this run asked for, :data:`COLUMNS` (``new``: every rank's, default this one's)."""
        import pandas as pd

        new = self.new if new is None else [f for f in new if len(f)]
        df = pd.concat([self.stored, *new], ignore_index=True) if new else self.stored
        wanted = {name for g in self.groups for name in METRIC_GROUPS[g]}
        keep = (df["data"] == self.data) & df["image_id"].isin(set(self.ids)) & df["method"].isin(self.methods) \
            & df["layer"].isin(list(self.specs)) & df["metric"].isin(wanted)
        return typed_rows(df[keep].reset_index(drop=True))


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
    precision: str = "fp32",
    metric_channels_last: bool = False,
    ranks: Ranks = SINGLE,
) -> "pd.DataFrame":
    """Evaluate ``methods`` at ``layers`` with ``metrics`` (options of :data:`METRIC_GROUPS`)
    on the first ``n`` items of ``dataset`` (dicts with ``image`` 3 x H x W in [0, 1] and
    optionally ``label``, ``classes``, ``boxes``, ``masks``); ``preprocess``: images ->
    model input, or None. Layer combinations a method does not support are skipped.

    ``out``: ``.csv`` or ``.parquet`` path; rows are appended per batch and images whose
    rows are all present are skipped. ``target``: ``"pred"`` (top-1 on the clean image)
    or ``"true"`` (the label). ``batch_size``: images per explainer call;
    ``metric_batch_size``: perturbed images per forward pass. ``explainer_kwargs`` /
    ``metric_kwargs``: per method / per metric option keyword arguments (e.g.
    ``{"insdel": {"step": 64}}``, ``{"pointing_game": {"tolerance": 8}}``). ``precision``:
    ``fp32``, ``bf16`` or ``fp16``, the autocast precision of the metrics' forward passes
    (the clean pass included; the target class always comes from the float32 logits).
    ``metric_channels_last``: run those forward passes on a channels-last copy of the model
    (:class:`~fgcam_lib.evaluation.scoring.ChannelsLast`: twice as fast for depthwise convs on a CPU).
    ``ranks``: this process's rank under torchrun (:func:`fgcam_lib.evaluation.distributed.from_env`);
    each rank computes its share of the batches and rank 0 returns every rank's rows.

    Returns the rows of the evaluated images (stored and new), :data:`COLUMNS`, with
    ``df.attrs["throughput"]`` (per method: images, explain_s, metrics_s of this run) and
    ``df.attrs["computed_images"]``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    np.random.seed(seed)
    model.eval()
    metric_model = at_precision(model, precision, channels_last=metric_channels_last)
    meta = {"seed": seed, "target": target, **({"precision": precision} if precision != "fp32" else {})}
    plan = _Plan(model, dataset, methods, layers, metrics, n, out, data_name, meta, ranks)
    explainers = {m: make_explainer(m, model, preprocess=preprocess, **dict((explainer_kwargs or {}).get(m, {})))
                  for m in methods if plan.layers[m]}
    device, timing, chunks = next(model.parameters()).device, Throughput(), plan.batches(batch_size)
    # one step per method and batch, so the bar moves (and its ETA forms) within the first batch; it counts
    # only what is still to compute, so rate and ETA hold on a resumed run
    mine = sum(map(len, chunks))
    desc = f"evaluate {data_name}" + (f" (rank 0 of {ranks.world})" if ranks.distributed else "")
    bar = tqdm(total=len(chunks) * len(explainers), desc=desc, unit="step", disable=not progress or not ranks.main,
               miniters=1, mininterval=0)
    bar.set_postfix_str(f"0/{mine} images ({len(plan.ids) - len(plan.todo)} stored)")
    for k, chunk in enumerate(chunks):
        batch = load_batch(dataset, preprocess, indices=chunk, ids=[plan.ids[j] for j in chunk], device=device)
        cols = _evaluate_batch(model, metric_model, batch, explainers, plan, target, seed, metric_batch_size,
                               metric_kwargs or {}, timing, step=lambda: bar.update(1))
        plan.record(pd.DataFrame(cols).astype(DTYPES))
        bar.set_postfix_str(f"{sum(map(len, chunks[:k + 1]))}/{mine} images", refresh=True)
    bar.close()
    if ranks.distributed:  # rank 0 merges every rank's rows and timings
        gathered = ranks.gather((plan.new, timing.as_dict()))
        df = plan.result([f for frames, _ in gathered for f in frames])
        for _, t in gathered[1:] if ranks.main else []:
            for m, v in t.items():
                timing.add(m, v["explain_s"], v["metrics_s"], int(v["images"]))
    else:
        df = plan.result()
    df.attrs["throughput"] = timing.as_dict()
    df.attrs["computed_images"] = len(plan.todo)
    return df


def _evaluate_batch(model: nn.Module, metric_model: nn.Module, batch: Batch, explainers: Mapping[str, Any],
                    plan: _Plan, target: str, seed: int, metric_batch_size: int,
                    metric_kwargs: Mapping[str, Mapping[str, Any]], timing: Throughput,
                    step: Callable[[], Any] = lambda: None) -> dict[str, list]:
    """Maps and metrics of one batch (B images), only for the (image, method, layer, group) still missing.

    One clean forward pass (B x K logits; a second one at the metrics' precision when that
    is not float32), one blurred baseline (B x 3 x S x S) and one explainer call per method
    (all its missing layers); returns tidy-row columns.
    """
    logits, cached, base = clean_pass(model, batch.x, metric_model)
    t = _targets(target, logits, batch.labels)
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for method, explainer in explainers.items():
        todo = {l: [g for g in plan.groups if any(plan.missing(i, method, l, g) for i in batch.ids)]
                for l in plan.layers[method]}
        todo = {l: gs for l, gs in todo.items() if gs}
        if not todo:
            step()
            continue
        t0 = time.perf_counter()
        expl = explainer.explain(batch.x, t, [plan.specs[l] for l in todo])
        maps = {l: expl.map(plan.specs[l], signed=is_signed(method, l)).detach() for l in todo}
        t1 = time.perf_counter()
        for l, gs in todo.items():
            for g in gs:
                values = score_maps(cached, batch, maps[l], t, [g], signed=is_signed(method, l), baseline=base,
                                    seed=seed, batch_size=metric_batch_size, metric_kwargs=metric_kwargs)
                keep = [plan.missing(i, method, l, g) for i in batch.ids]
                _add_rows(cols, batch, t, method, l, values, keep, plan.data)
        timing.add(method, t1 - t0, time.perf_counter() - t1, len(batch))
        step()
    return cols


def _add_rows(cols: dict[str, list], batch: Batch, target: Tensor, method: str, layer: str,
              values: Mapping[str, Tensor], keep: Sequence[bool], data: str) -> None:
    """Append the tidy rows of the images where ``keep`` to ``cols``."""
    for metric, v in values.items():
        v = v.tolist()
        for j, k in enumerate(keep):
            if k:
                for c, val in zip(COLUMNS, (data, batch.ids[j], batch.indices[j], int(batch.labels[j]),
                                            int(target[j]), method, layer, metric, v[j])):
                    cols[c].append(val)
