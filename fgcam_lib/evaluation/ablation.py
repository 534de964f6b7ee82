"""Ablation sweeps: explainer variants -> maps -> per-image metrics -> tidy rows -> CIs.

A sweep scores many variants of one explanation (rules, SVD rank, layer depth) on the
same images. The pieces:

- :func:`fgcam_lib.evaluation.batch.load_batch` turns a data set into a
  :class:`~fgcam_lib.evaluation.batch.Batch` (normalised images, labels, boxes, masks);
- a *map source* turns images and targets into :class:`MapSet` s, one per (variant,
  layer): :func:`explainer_maps` for ready explainers, :func:`fgcam_maps` for FG-CAM
  variants that share their step-1 components (denoising ranks: the components and the
  forward pass are computed once, only the SVD truncation and the propagation repeat);
- :func:`sweep` scores every map set with the paper's metrics (A.D./A.I., insertion /
  deletion / Over-all, Proportion with boxes and with exact masks, the pointing game;
  :func:`fgcam_lib.evaluation.scoring.score_maps`, the runner's) and returns tidy rows
  with the columns of :mod:`fgcam_lib.evaluation.runner` plus one column per variant key;
- :func:`~fgcam_lib.evaluation.tables.summarize` and :func:`~fgcam_lib.evaluation.tables.format_summary`
  (the runner's), :func:`paired_difference` and :func:`spread` give means and percentile-bootstrap
  confidence intervals over images (:mod:`fgcam_lib.evaluation.stats`);
  the figures are :func:`fgcam_lib.ui.plots.forest_plot` and :func:`fgcam_lib.ui.plots.example_grid`.

    >>> batch = load_batch(SyntheticScenes("test", 64, size=96), preprocess)
    >>> fg = FGCAM(model)                                    # no denoising: ranks vary below
    >>> rows = sweep(model, batch, fgcam_maps(fg, ["input", 13], {"none": None, "r1": 1, "r4": 4}))
    >>> summarize(rows, by=["method", "layer"])              # mean, ci_low, ci_high, n per metric

Metric forward passes (thousands per image for insertion/deletion) run on
:func:`inference_copy`, a BatchNorm-folded, channels-last copy of the model that returns
the same logits up to float rounding and runs about twice as fast on CPU.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import metrics as M
from ..catalogue import is_input_layer, layer_key
from ..methods.base import Explainer
from ..methods.components import TopComponents
from ..methods.fgcam import FGCAM, denoise
from .batch import Batch
from .scoring import CleanLogitsCache, score_maps
from .stats import bootstrap_ci

if TYPE_CHECKING:  # pandas is imported lazily, inside the functions that tabulate
    import pandas as pd

__all__ = [
    "MapSet", "MapSource", "inference_copy",
    "max_rank", "rank_grid", "rank_fraction", "denoise_to_rank",
    "explainer_maps", "fgcam_maps", "sweep", "relevance_sums",
    "paired_difference", "spread",
]


# ------------------------------------------------------------------------ fast model
def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for metric forward passes: eval mode, no gradients, every
    BatchNorm2d that directly follows a Conv2d (in an ``nn.Sequential``) folded into it
    (the BN becomes ``nn.Identity``, so module paths and positions are unchanged), and
    channels-last weights. Same logits up to float rounding; the model is untouched.

    Explainers that read only activations and gradients at layers other than the folded
    convolutions (Grad-CAM, Score-CAM, Layer-CAM at pooling layers) give the same maps on
    it; FG-CAM's propagation must run on the original (its BN rule is pass-through).

        >>> fast = inference_copy(model)
        >>> torch.allclose(fast(x), model(x), atol=1e-4)
        True
    """
    fast = copy.deepcopy(model).eval()
    for seq in [m for m in fast.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------ SVD ranks
def max_rank(channels: int, height: int, width: int) -> int:
    """Largest number of singular values of the C x K component matrix: ``min(C, K)``, K = h w.

    (Row centring lowers the true rank to ``min(C, K - 1)`` when K <= C: the last
    singular value is then ~0 and the top two ranks give the same maps.)
    """
    return min(int(channels), int(height) * int(width))


def rank_grid(maximum: int, base: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)) -> list[int]:
    """Ranks to sweep: the values of ``base`` up to ``maximum``, and ``maximum`` itself.

        >>> rank_grid(9), rank_grid(16)
        ([1, 2, 3, 4, 6, 8, 9], [1, 2, 3, 4, 6, 8, 12, 16])
    """
    if maximum < 1:
        raise ValueError(f"maximum rank must be >= 1, got {maximum}")
    return sorted({r for r in base if r <= maximum} | {int(maximum)})


def rank_fraction(rank: int, channels: int, positions: int) -> float:
    """The denoising fraction that keeps exactly ``rank`` singular values
    (the inverse of :func:`fgcam_lib.methods.fgcam.denoise_rank`)."""
    m = min(int(channels), int(positions))
    if not 1 <= rank <= m:
        raise ValueError(f"rank must be in [1, {m}] for {channels} x {positions} components, got {rank}")
    return rank / m


def denoise_to_rank(components: Tensor, rank: int) -> Tensor:
    """:func:`fgcam_lib.methods.fgcam.denoise` keeping the top ``rank`` singular values (B x C x H x W)."""
    B, C, H, W = components.shape
    return denoise(components, rank_fraction(rank, C, H * W))


# ----------------------------------------------------------------------- map sources
@dataclass
class MapSet:
    """Maps of one variant at one layer for a batch.

    ``keys``: the variant's row labels, e.g. ``{"method": "fg_grad_cam", "layer": "13",
    "rank": 4}`` (``method`` and ``layer`` always present); ``maps``: B x h x w;
    ``signed``: whether negative values are kept (the Table 4 rule of Average Drop).
    """

    keys: dict[str, Any]
    maps: Tensor
    signed: bool = False


#: ``source(x, target) -> [MapSet, ...]``: maps of every variant at every layer for a batch
MapSource = Callable[[Tensor, Tensor], list[MapSet]]


def _signed_at_input(method: str, layer: int | str) -> bool:
    return is_input_layer(layer)


def explainer_maps(
    explainers: Mapping[str, Explainer],
    layers: Sequence[int | str] | Mapping[str, Sequence[int | str]],
    signed: Callable[[str, int | str], bool] = _signed_at_input,
    keys: Mapping[str, Mapping[str, Any]] | None = None,
) -> MapSource:
    """Map source of ready explainers: one ``explain`` call per explainer and batch.

    ``layers``: for every explainer, or per explainer name. ``signed(name, layer)``
    (default: at the input) keeps negative values, as the paper does for input-layer
    maps. ``keys[name]``: extra row labels of that variant.
    """

    def source(x: Tensor, target: Tensor) -> list[MapSet]:
        out = []
        for name, explainer in explainers.items():
            lay = list(layers[name] if isinstance(layers, Mapping) else layers)
            expl = explainer.explain(x, target, lay)
            for layer in lay:
                s = signed(name, layer)
                out.append(MapSet({"method": name, "layer": layer_key(layer), **dict((keys or {}).get(name, {}))},
                                  expl.map(layer, signed=s).detach(), s))
        return out

    return source


def fgcam_maps(
    fg: FGCAM,
    layers: Sequence[int | str],
    variants: Mapping[str, int | None],
    *,
    components: Callable[[Tensor, Tensor], Tensor] | None = None,
    signed: Callable[[str, int | str], bool] = _signed_at_input,
    keys: Mapping[str, Mapping[str, Any]] | None = None,
) -> MapSource:
    """Map source of FG-CAM variants that share step 1 (the components ``I_L``).

    Per batch: one forward pass (and for Grad-CAM weights one backward) gives ``I_L``;
    each variant truncates it to ``rank`` singular values (:func:`denoise_to_rank`; None:
    no denoising) and propagates it to all ``layers`` at once with ``fg``'s rules.
    ``fg`` must have ``denoise=None``. ``components(x, target) -> B x C x H x W``
    replaces step 1 (e.g. Score-CAM components computed on :func:`inference_copy`),
    and the forward pass then runs without gradients. Row keys: ``method`` = the
    variant name, ``layer``, ``rank`` (None for no denoising) and ``keys[name]``.
    """
    if fg.denoise is not None:
        raise ValueError("fgcam_maps needs an FGCAM without denoising (denoise=None); ranks are its variants")
    positions = [fg.graph.position(layer) for layer in layers]
    for layer, p in zip(layers, positions):
        fg._check_position(p, str(layer))

    def source(x: Tensor, target: Tensor) -> list[MapSet]:
        top = TopComponents(fg, x, target, lowest=list(layers), source=components)
        out = []
        for name, rank in variants.items():
            Ir = top.components if rank is None else denoise_to_rank(top.components, int(rank))
            R = top.propagate(Ir, layers)
            for layer in layers:
                s = signed(name, layer)
                m = R[layer].sum(1)
                out.append(MapSet({"method": name, "layer": layer_key(layer), "rank": rank,
                                   **dict((keys or {}).get(name, {}))}, m if s else m.clamp(min=0), s))
        return out

    return source


# ----------------------------------------------------------------------------- sweep
def sweep(
    model: nn.Module,
    batch: Batch,
    sources: MapSource | Sequence[MapSource],
    metrics: Sequence[str] = ("adai", "insdel", "proportion"),
    *,
    metric_model: nn.Module | None = None,
    insdel_steps: int | None = None,
    seed: int = 0,
    chunk: int = 16,
    batch_size: int = 256,
    data: str = "data",
    dedupe: bool = True,
    progress: bool = False,
) -> "pd.DataFrame":
    """Score every map set of ``sources`` on ``batch``: tidy rows, one per (image, map set, metric).

    The explained class is each image's top-1 class. Images go through the sources
    ``chunk`` at a time; the clean logits and the blurred baseline are computed once
    per chunk. ``metric_model`` (default: :func:`inference_copy` of ``model``) runs the
    metrics' forward passes; targets come from it too.

    Columns: ``data``, ``image_id``, ``index``, ``label``, ``target`` (as
    :mod:`fgcam_lib.evaluation.runner`), the map sets' keys (``method``, ``layer``, ...),
    ``metric``, ``value``. ``df.attrs["seconds"]``: time spent on maps and on metrics.

    ``dedupe``: a map set whose maps equal an earlier one's (same ``signed``, every
    value within ``1e-5 * max|map|`` per image: the same maps up to float rounding, e.g.
    BN merged vs passed through with positive BN scales) reuses its metric values
    instead of recomputing them; ``df.attrs["duplicates"]`` lists such pairs of keys.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    sources = [sources] if callable(sources) else list(sources)
    fast = inference_copy(model) if metric_model is None else metric_model
    rows: list[dict[str, Any]] = []
    seconds = {"maps": 0.0, "metrics": 0.0}
    duplicates: dict[str, str] = {}
    chunks = range(0, len(batch), chunk)
    for s in tqdm(chunks, desc="sweep", disable=not progress, leave=False):
        part = batch.subset(slice(s, s + chunk))
        with torch.no_grad():
            logits = fast(part.x)
        target = logits.argmax(1)
        cached = CleanLogitsCache(fast, part.x, logits)
        base = M.blur_baseline(part.x)
        scored: list[tuple[MapSet, dict[str, Tensor]]] = []
        for source in sources:
            t0 = time.perf_counter()
            sets = source(part.x, target)
            t1 = time.perf_counter()
            for ms in sets:
                twin = _twin(ms, scored) if dedupe else None
                if twin is None:
                    values = score_maps(cached, part, ms.maps, target, metrics, signed=ms.signed, baseline=base,
                                        insdel_steps=insdel_steps, seed=seed, batch_size=batch_size)
                    scored.append((ms, values))
                else:
                    values = twin[1]
                    duplicates.setdefault(_key_text(ms.keys), _key_text(twin[0].keys))
                for metric, v in values.items():
                    for j in range(len(part)):
                        rows.append({"data": data, "image_id": part.ids[j], "index": part.indices[j],
                                     "label": int(part.labels[j]), "target": int(target[j]), **ms.keys,
                                     "metric": metric, "value": float(v[j])})
            seconds["maps"] += t1 - t0
            seconds["metrics"] += time.perf_counter() - t1
    df = pd.DataFrame(rows)
    first = ["data", "image_id", "index", "label", "target"]
    df = df[first + [c for c in df.columns if c not in first + ["metric", "value"]] + ["metric", "value"]]
    df.attrs["seconds"] = seconds
    df.attrs["duplicates"] = duplicates
    return df


def _key_text(keys: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items())


def _same_maps(a: Tensor, b: Tensor, rtol: float = 1e-5) -> bool:
    """Whether two B x h x w map batches agree within ``rtol * max|a|`` per image."""
    if a.shape != b.shape:
        return False
    scale = a.detach().abs().flatten(1).amax(1).clamp(min=torch.finfo(a.dtype).tiny)
    return bool(((a - b).detach().abs().flatten(1).amax(1) <= rtol * scale).all())


def _twin(ms: MapSet, scored: Sequence[tuple[MapSet, dict[str, Tensor]]]) -> tuple[MapSet, dict[str, Tensor]] | None:
    """An already scored map set with the same maps, if any."""
    for other in scored:
        if other[0].signed == ms.signed and _same_maps(other[0].maps, ms.maps):
            return other
    return None


# --------------------------------------------------------------------- conservation
def relevance_sums(fg: FGCAM, x: Tensor, layers: Sequence[int | str], target: Tensor | None = None) -> "pd.DataFrame":
    """How much relevance each layer holds, relative to the components ``I_L``.

    Rows (image, layer): ``ratio = sum(R_l) / sum(I_L)`` (signed sums over channels and
    positions; ``I_L`` after denoising, if any) and ``abs_ratio = sum|R_l| / sum|I_L|``.
    A conservative rule chain gives ``ratio = 1`` at every layer.
    """
    import pandas as pd

    top = fg.component_layer
    expl = fg.explain(x, target, [top] + [layer for layer in layers if layer_key(layer) != layer_key(top)])
    I = expl.components[top].detach().double()
    s0, a0 = I.sum((1, 2, 3)), I.abs().sum((1, 2, 3))
    rows = []
    for layer in layers:
        R = expl.components[layer if layer_key(layer) != layer_key(top) else top].detach().double()
        ratio, abs_ratio = R.sum((1, 2, 3)) / s0, R.abs().sum((1, 2, 3)) / a0
        for i in range(x.shape[0]):
            rows.append({"image": i, "layer": layer_key(layer), "ratio": float(ratio[i]),
                         "abs_ratio": float(abs_ratio[i])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries
def _wide(df: "pd.DataFrame", metric: str, column: str, where: Mapping[str, Any] | None) -> "pd.DataFrame":
    """Images x levels of ``column`` for one metric (rows with a NaN dropped)."""
    sub = df[df["metric"] == metric]
    for k, v in (where or {}).items():
        sub = sub[sub[k] == v]
    wide = sub.pivot_table(index=["data", "image_id"], columns=column, values="value", aggfunc="first", dropna=False)
    return wide.dropna()


def paired_difference(df: "pd.DataFrame", metric: str, column: str, a: Any, b: Any, *,
                      where: Mapping[str, Any] | None = None, confidence: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean per-image difference ``a - b`` of ``metric`` between two levels of ``column``
    (e.g. two methods) on the images both have, with a bootstrap CI.

    ``where``: fixed values of other columns (e.g. ``{"layer": "13"}``). Returns
    ``{"diff", "ci_low", "ci_high", "n"}``.
    """
    wide = _wide(df, metric, column, where)
    missing = [lv for lv in (a, b) if lv not in wide.columns]
    if missing:
        raise ValueError(f"{column} has no rows for {missing} (metric {metric!r}, {where or {}})")
    d = (wide[a] - wide[b]).to_numpy(dtype=float)
    est, lo, hi = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return {"diff": est, "ci_low": lo, "ci_high": hi, "n": int(d.size)}


def spread(df: "pd.DataFrame", metric: str, over: str = "layer", by: str = "method", *,
           levels: Sequence[Any] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
           seed: int = 0) -> "pd.DataFrame":
    """How much a metric's mean moves across the levels of ``over`` (e.g. layers), per ``by``.

    ``spread = max_level mean - min_level mean`` over the images that have every level,
    with a paired bootstrap CI (images resampled together across levels; the spread of
    noisy means is biased upwards, so read the CI, not just the estimate). Returns one row
    per ``by`` value: ``spread``, ``ci_low``, ``ci_high``, ``highest`` / ``lowest`` (the
    levels with the highest / lowest mean), ``n_levels``, ``n``.
    """
    import pandas as pd

    rows = []
    for name, g in df[df["metric"] == metric].groupby(by, sort=False):
        wide = _wide(g, metric, over, None)
        cols = [lv for lv in (levels if levels is not None else wide.columns) if lv in wide.columns]
        if len(cols) < 2:
            continue
        arrays = [wide[c].to_numpy(dtype=float) for c in cols]

        def stat(*a, axis=-1):
            means = np.stack([np.mean(v, axis=axis) for v in a])
            return means.max(0) - means.min(0)

        est, lo, hi = bootstrap_ci(arrays, stat, paired=True, confidence=confidence, n_resamples=n_resamples,
                                   seed=seed)
        means = [float(v.mean()) for v in arrays]
        rows.append({by: name, "spread": est, "ci_low": lo, "ci_high": hi,
                     "highest": cols[int(np.argmax(means))], "lowest": cols[int(np.argmin(means))],
                     "n_levels": len(cols), "n": int(arrays[0].size)})
    return pd.DataFrame(rows).set_index(by) if rows else pd.DataFrame()
