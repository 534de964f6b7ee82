"""How much of a table's mean is tie noise: the same maps scored under several tie-breaking seeds.

A.D./A.I. keep the top 50% of pixels and insertion/deletion change pixels in map order;
where a map is flat (CAM maps are ~40% exact zeros at layer 13 on the bundled model) the
order inside a tie comes from a seeded permutation (:mod:`fgcam_lib.evaluation.metrics.maps`).
:func:`tie_rows` computes every map once and scores it under each seed; :func:`tie_spread`
gives, per method, layer and metric, the mean over the images at each seed and the spread
(largest minus smallest mean), to set beside the bootstrap interval: a difference between
two methods smaller than their tie spreads is not one a reader should trust.

    >>> rows = tie_rows(model, pre, SyntheticScenes("test", 100, size=96), ["grad_cam", "fg_grad_cam"],
    ...                 ["13"], ["adai"], seeds=(0, 1, 2), out="results/ties_test.parquet")
    >>> tie_spread(rows)          # mean_seed0, mean_seed1, mean_seed2, spread, n per method/layer/metric
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from ..catalogue import layer_key
from ..data.fingerprint import model_fingerprint
from ..methods.registry import is_signed, make_explainer, supports
from .batch import dataset_image_ids, load_batch
from .scoring import check_metrics, clean_pass, score_maps
from .store import ResultStore, typed_rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["tie_rows", "tie_spread"]


def tie_rows(model: nn.Module, preprocess: Any, dataset: Any, methods: Sequence[str], layers: Sequence[int | str],
             metrics: Sequence[str] = ("adai",), seeds: Sequence[int] = (0, 1, 2), n: int | None = None,
             out: str | os.PathLike | None = None, batch_size: int = 8, metric_batch_size: int = 64,
             data_name: str = "data", progress: bool = True) -> "pd.DataFrame":
    """Rows (the runner's columns and ``seed``) of ``metrics`` for each map under each tie seed.

    The maps (target: the top-1 class) are computed once per batch; only the metrics see
    ``seeds``. ``out``: a ``.parquet`` folder, appended per batch; images already there are
    skipped, so an interrupted run resumes.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    check_metrics(metrics)
    specs = {layer_key(l): l for l in layers}
    pairs = [(m, k) for m in methods for k, spec in specs.items() if supports(m, spec, model)]
    store = ResultStore(out) if out is not None else None
    if store is not None:
        store.check_meta({"seeds": list(seeds), "target": "pred", "model": model_fingerprint(model)})
    stored = store.read() if store is not None else None
    done = set(stored["image_id"]) if stored is not None else set()
    count = len(dataset) if n is None else min(int(n), len(dataset))
    ids = dataset_image_ids(dataset, range(count))
    todo = [j for j in range(count) if ids[j] not in done]
    explainers = {m: make_explainer(m, model, preprocess=preprocess) for m in dict.fromkeys(m for m, _ in pairs)}
    device = next(model.parameters()).device
    frames = [] if stored is None else [stored]
    chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    for chunk in tqdm(chunks, desc="tie seeds", unit="batch", disable=not progress):
        batch = load_batch(dataset, preprocess, indices=chunk, ids=[ids[j] for j in chunk], device=device)
        logits, cached, base = clean_pass(model, batch.x)
        t = logits.argmax(1)
        rows = []
        for method, explainer in explainers.items():
            mine = [k for m, k in pairs if m == method]
            expl = explainer.explain(batch.x, t, [specs[k] for k in mine])
            for k in mine:
                signed = is_signed(method, k)
                maps = expl.map(specs[k], signed=signed).detach()
                for seed in seeds:
                    values = score_maps(cached, batch, maps, t, list(metrics), signed=signed, baseline=base,
                                        seed=seed, batch_size=metric_batch_size)
                    for metric, v in values.items():
                        rows.append(pd.DataFrame({
                            "data": data_name, "image_id": batch.ids, "index": batch.indices,
                            "label": batch.labels.tolist(), "target": t.tolist(), "method": method, "layer": k,
                            "metric": metric, "value": v.tolist(), "seed": seed}))
        part = typed_rows(pd.concat(rows, ignore_index=True))
        if store is not None:
            store.append(part)
        frames.append(part)
    return typed_rows(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()


def tie_spread(rows: "pd.DataFrame") -> "pd.DataFrame":
    """Per method, layer and metric: the mean over images at each seed, ``spread`` (max - min
    of those means), ``max_image`` (the largest change of one image's value between seeds) and
    ``n`` (images present at every seed)."""
    wide = rows.pivot_table(index=["method", "layer", "metric", "image_id"], columns="seed", values="value",
                            aggfunc="first").dropna()
    means = wide.groupby(level=["method", "layer", "metric"], sort=False).mean()
    means.columns = [f"mean_seed{int(s)}" for s in means.columns]
    per_image = (wide.max(axis=1) - wide.min(axis=1)).groupby(level=["method", "layer", "metric"], sort=False)
    out = means.assign(spread=means.max(axis=1) - means.min(axis=1), max_image=per_image.max(),
                       n=per_image.size())
    return out
