"""Ablation sweeps: explainer variants -> maps -> per-image metrics -> tidy rows -> CIs.

A sweep scores many variants of one explanation (rules, SVD rank, layer depth) on the
same images. The pieces:

- :func:`load_scenes` turns a data set into a :class:`SceneBatch` (normalised images,
  labels, boxes, masks);
- a *map source* turns images and targets into :class:`MapSet` s, one per (variant,
  layer): :func:`explainer_maps` for ready explainers, :func:`fgcam_maps` for FG-CAM
  variants that share their step-1 components (denoising ranks: the components and the
  forward pass are computed once, only the SVD truncation and the propagation repeat);
- :func:`sweep` scores every map set with the paper's metrics (A.D./A.I., insertion /
  deletion / Over-all, Proportion with boxes and with exact masks) and returns tidy
  rows with the columns of :mod:`fgcam_lib.evaluation.runner` (so ``evaluate.summarize`` and
  ``evaluate.format_table`` read them) plus one column per variant key;
- :func:`summarize`, :func:`paired_difference` and :func:`spread` give means and
  percentile-bootstrap confidence intervals over images (:mod:`fgcam_lib.evaluation.stats`).

    >>> batch = load_scenes(SyntheticScenes("test", 64, size=96), preprocess)
    >>> fg = FGCAM(model)                                    # no denoising: ranks vary below
    >>> rows = sweep(model, batch, fgcam_maps(fg, ["input", 13], {"none": None, "r1": 1, "r4": 4}))
    >>> summarize(rows, by=["method", "layer"])              # mean, ci_low, ci_high, n per metric

Metric forward passes (thousands per image for insertion/deletion) run on
:func:`inference_copy`, a BatchNorm-folded, channels-last copy of the model that returns
the same logits up to float rounding and runs about twice as fast on CPU.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import metrics as M
from ..methods.base import Explainer
from ..methods.components import TopComponents
from ..methods.fgcam import FGCAM, denoise
from ..methods.registry import is_input_layer
from .stats import bootstrap_ci, mean_ci

if TYPE_CHECKING:  # pandas is imported lazily, inside the functions that tabulate
    import pandas as pd

__all__ = [
    "SceneBatch", "MapSet", "MapSource", "load_scenes", "inference_copy", "layer_key",
    "max_rank", "rank_grid", "rank_fraction", "denoise_to_rank",
    "explainer_maps", "fgcam_maps", "score_maps", "sweep", "relevance_sums",
    "bootstrap_ci", "summarize", "paired_difference", "spread", "format_summary", "forest_plot", "example_grid",
    "METRICS", "METRIC_LABELS", "HIGHER_IS_BETTER",
]

#: metric option -> the per-image metric rows it writes
METRICS: dict[str, tuple[str, ...]] = {
    "adai": ("average_drop", "average_increase"),
    "insdel": ("insertion", "deletion", "overall"),
    "proportion": ("proportion", "proportion_mask"),
}
#: metric row -> the paper's label
METRIC_LABELS: dict[str, str] = {
    "average_drop": "A.D.", "average_increase": "A.I.", "insertion": "Insertion", "deletion": "Deletion",
    "overall": "Over-all", "proportion": "Proportion", "proportion_mask": "Proportion (mask)",
}
#: metric row -> whether larger values are better
HIGHER_IS_BETTER: dict[str, bool] = {
    "average_drop": False, "average_increase": True, "insertion": True, "deletion": False, "overall": True,
    "proportion": True, "proportion_mask": True,
}


# ------------------------------------------------------------------------------ scenes
@dataclass
class SceneBatch:
    """Images ready for the model, with their annotations.

    ``x``: B x 3 x S x S normalised; ``images``: the same in [0, 1] (for display);
    ``labels``: B; ``classes[i]``: n_i object classes; ``boxes[i]``: n_i x 4
    (x0, y0, x1, y1) in pixels of ``x``; ``masks[i]``: n_i x S x S bool; ``indices``:
    positions in the data set.
    """

    x: Tensor
    images: Tensor
    labels: Tensor
    classes: list[Tensor]
    boxes: list[Tensor]
    masks: list[Tensor]
    indices: list[int]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows: Sequence[int] | slice) -> "SceneBatch":
        """The images at ``rows`` (a slice or positions in this batch)."""
        idx = list(range(len(self)))[rows] if isinstance(rows, slice) else list(rows)
        sel = torch.as_tensor(idx, dtype=torch.long)
        return SceneBatch(self.x[sel], self.images[sel], self.labels[sel], [self.classes[i] for i in idx],
                          [self.boxes[i] for i in idx], [self.masks[i] for i in idx], [self.indices[i] for i in idx])

    def region(self, target: Tensor) -> tuple[list[Tensor], Tensor]:
        """Boxes (list of k_i x 4) and mask union (B x S x S) of each image's objects of the
        target class; when none is of that class, those of the label, else all objects."""
        boxes, masks = [], []
        hw = tuple(self.x.shape[-2:])
        for i in range(len(self)):
            cls, bx, mk = self.classes[i], self.boxes[i], self.masks[i]
            pick = torch.ones(bx.shape[0], dtype=torch.bool)
            for wanted in (int(target[i]), int(self.labels[i])):
                hit = cls == wanted
                if bool(hit.any()):
                    pick = hit
                    break
            boxes.append(bx[pick])
            masks.append(mk[pick].any(0) if mk.shape[0] else torch.zeros(hw, dtype=torch.bool))
        return boxes, torch.stack(masks)


def load_scenes(dataset: Any, preprocess: Callable[[Tensor], Tensor], n: int | None = None,
                indices: Sequence[int] | None = None) -> SceneBatch:
    """Load items (dicts with ``image`` 3 x H x W in [0, 1], ``label``, ``classes``,
    ``boxes``, ``masks``, as :class:`~fgcam_lib.data.scenes.SyntheticScenes` gives) into a
    :class:`SceneBatch`: the first ``n`` items, or those at ``indices``.

    ``preprocess`` maps B x 3 x H x W in [0, 1] to the model's input (resize + normalise);
    boxes and masks are rescaled to its size.
    """
    if indices is None:
        indices = range(len(dataset) if n is None else min(int(n), len(dataset)))
    items = [dataset[int(i)] for i in indices]
    if not items:
        raise ValueError("no images to load")
    raw = torch.stack([it["image"] for it in items])
    x = preprocess(raw)
    hw = tuple(x.shape[-2:])
    images = raw if tuple(raw.shape[-2:]) == hw else torch.nn.functional.interpolate(
        raw, size=hw, mode="bilinear", align_corners=False).clamp(0, 1)
    sy, sx = hw[0] / raw.shape[-2], hw[1] / raw.shape[-1]
    boxes, masks, classes = [], [], []
    for it in items:
        bx = torch.as_tensor(it.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        boxes.append(bx * torch.tensor([sx, sy, sx, sy]))
        mk = torch.as_tensor(it.get("masks", torch.zeros(0, *raw.shape[-2:]))).bool()
        if mk.shape[0] and tuple(mk.shape[-2:]) != hw:
            mk = torch.nn.functional.interpolate(mk[:, None].float(), size=hw, mode="nearest")[:, 0] > 0.5
        masks.append(mk if mk.shape[0] else torch.zeros(0, *hw, dtype=torch.bool))
        classes.append(torch.as_tensor(it.get("classes", [it.get("label", -1)])).long().reshape(-1))
    labels = torch.tensor([int(it.get("label", -1)) for it in items])
    return SceneBatch(x, images, labels, classes, boxes, masks, [int(i) for i in indices])


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


def layer_key(layer: int | str) -> str:
    """How a layer is stored in the rows: ``"features.13"``/``13`` -> ``"13"``, the input -> ``"input"``."""
    if is_input_layer(layer):
        return "input"
    s = str(layer)
    return s[len("features."):] if s.startswith("features.") else s


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


# --------------------------------------------------------------------------- scoring
def _step_for(hw: tuple[int, int], steps: int | None) -> int | None:
    """Pixels per insertion/deletion step for ``steps`` steps (None: the paper's 112)."""
    return None if steps is None else max(1, math.ceil(hw[0] * hw[1] / int(steps)))


def score_maps(
    model: nn.Module,
    batch: SceneBatch,
    maps: Tensor,
    target: Tensor,
    metrics: Sequence[str] = ("adai", "insdel", "proportion"),
    *,
    signed: bool = False,
    baseline: Tensor | None = None,
    insdel_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Per-image metrics of one batch of maps (B x h x w): metric row name -> B float64.

    ``adai``: Average Drop / Increase (percent; ``signed`` applies the Table 4 rule);
    ``insdel``: insertion, deletion, Over-all with ``insdel_steps`` steps (None: 112 as
    the paper); ``proportion``: share of the positive map inside the target object's
    box(es) (the paper's Proportion) and inside its exact mask. ``baseline``: the
    blurred images (computed when None). ``model`` may be wrapped in
    :class:`fgcam_lib.evaluation.runner.CleanLogitsCache` to skip the clean forward passes.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; use {', '.join(METRICS)}")
    x = batch.x
    base = M.blur_baseline(x) if baseline is None else baseline
    out: dict[str, Tensor] = {}
    if "adai" in metrics:
        r = M.average_drop_increase(model, x, maps, target, signed=signed, baseline=base, seed=seed,
                                    batch_size=batch_size)
        out["average_drop"], out["average_increase"] = r.drop, r.increase
    if "insdel" in metrics:
        r = M.insertion_deletion(model, x, maps, target, step=_step_for(tuple(x.shape[-2:]), insdel_steps),
                                 baseline=base, seed=seed, batch_size=batch_size)
        out["insertion"], out["deletion"], out["overall"] = r.insertion_auc, r.deletion_auc, r.overall
    if "proportion" in metrics:
        boxes, masks = batch.region(target)
        m = maps.detach().float().cpu()
        out["proportion"] = M.proportion(m, boxes, tuple(x.shape[-2:]))
        out["proportion_mask"] = M.proportion_mask(m, masks)
    return {k: v.detach().double().cpu() for k, v in out.items()}


def sweep(
    model: nn.Module,
    batch: SceneBatch,
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

    from .runner import CleanLogitsCache

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
                        rows.append({"data": data, "image_id": str(part.indices[j]), "index": part.indices[j],
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
def summarize(df: "pd.DataFrame", by: Sequence[str] = ("method", "layer"), *, confidence: float = 0.95,
              n_resamples: int = 2000, seed: int = 0) -> "pd.DataFrame":
    """Mean over images with a bootstrap CI, per ``by`` + metric.

    Returns a frame indexed by ``by + ["metric"]`` (in first-seen order) with columns
    ``mean``, ``ci_low``, ``ci_high``, ``n`` (images with a value; NaN values, e.g. the
    Proportion of an all-zero map, are left out).
    """
    import pandas as pd

    keys = list(by) + ["metric"]
    out = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        out.append((*key, *mean_ci(g["value"].to_numpy(dtype=float), confidence=confidence,
                                    n_resamples=n_resamples, seed=seed)))
    return pd.DataFrame(out, columns=keys + ["mean", "ci_low", "ci_high", "n"]).set_index(keys)


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


#: metrics reported in percent (2 decimals); the others are fractions (3 decimals)
_PERCENT = frozenset({"average_drop", "average_increase"})


def format_summary(summary: "pd.DataFrame", rows: Sequence[str] = ("method", "layer"),
                   metrics: Sequence[str] | None = None, digits: int | None = None) -> "pd.DataFrame":
    """A :func:`summarize` frame as a table of ``"mean ± half-width of the CI"`` strings.

    Rows: the index levels ``rows`` (first-seen order); columns: ``metrics`` (default:
    all present), labelled as in the paper (A.D., Over-all, ...). ``digits=None``: 2
    decimals for A.D./A.I. (percent), 3 for fractions.
    """
    import pandas as pd

    s = summary.reset_index()
    metrics = list(dict.fromkeys(s["metric"])) if metrics is None else list(metrics)
    s = s[s["metric"].isin(metrics)]

    def cell(r) -> str:
        d = digits if digits is not None else (2 if r["metric"] in _PERCENT else 3)
        if not np.isfinite(r["mean"]):
            return "n/a"
        if not (np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])):
            return f"{r['mean']:.{d}f}"
        return f"{r['mean']:.{d}f} ± {(r['ci_high'] - r['ci_low']) / 2:.{d}f}"

    s = s.assign(cell=s.apply(cell, axis=1))
    table = s.pivot_table(index=list(rows), columns="metric", values="cell", aggfunc="first", sort=False)
    table = table[[m for m in metrics if m in table.columns]]
    table.columns = pd.Index([METRIC_LABELS.get(m, m) for m in table.columns], name=None)
    return table


def forest_plot(summary: "pd.DataFrame", metrics: Sequence[str], *, y: str = "method", hue: str | None = "layer",
                order: Sequence[Any] | None = None, labels: Mapping[Any, str] | None = None,
                title: str | None = None, panel_width: float = 3.0):
    """Means with confidence intervals as dots and whiskers: one panel per metric,
    one row per level of ``y`` (in ``order``), one colour per level of ``hue``.

    ``summary``: a :func:`summarize` frame. Panel titles carry the metric's label and
    whether higher or lower is better. Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    s = summary.reset_index()
    ys = list(order) if order is not None else list(dict.fromkeys(s[y]))
    hues = list(dict.fromkeys(s[hue])) if hue else [None]
    palette = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics) + 1.5, 0.38 * len(ys) + 1.4),
                             sharey=True, layout="constrained", squeeze=False)
    offsets = np.linspace(-0.2, 0.2, len(hues)) if len(hues) > 1 else [0.0]
    for ax, metric in zip(axes[0], metrics):
        part = s[s["metric"] == metric]
        for h, off in zip(hues, offsets):
            sub = part if h is None else part[part[hue] == h]
            sub = sub.set_index(y).reindex(ys)
            pos = np.arange(len(ys)) + off
            ok = sub["mean"].notna().to_numpy()
            err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])[:, ok]
            ax.errorbar(sub["mean"][ok], pos[ok], xerr=err, fmt="o", ms=4, capsize=2, color=palette[h],
                        label=None if h is None else str(h))
        arrow = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)}\n({arrow})", fontsize=9)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric) + (" (%)" if metric in _PERCENT else ""), fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_yticks(np.arange(len(ys)), [labels.get(v, str(v)) if labels else str(v) for v in ys])
    axes[0, 0].invert_yaxis()
    if hue and len(hues) > 1:
        axes[0, -1].legend(title=hue, fontsize=8, title_fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def example_grid(images: Tensor, maps: Mapping[str, Mapping[Any, Tensor]], columns: Sequence[tuple[int, Any]], *,
                 signed: Callable[[Any], bool] = is_input_layer, image_titles: Mapping[int, str] | None = None,
                 row_labels: Mapping[str, str] | None = None, column_label: Callable[[Any], str] | None = None,
                 quantile: float = 0.995, title: str | None = None, panel_size: float = 1.25):
    """Example maps of many variants: one row per variant, one column per (image, layer).

    ``images``: B x 3 x H x W in [0, 1]; ``maps[variant][layer]``: B x h x w;
    ``columns``: (image index, layer) pairs; the first row shows the images. Maps at
    layers where ``signed(layer)`` are drawn red (positive) / blue (negative) around a
    white zero, the others with the sequential colormap. Each map is divided by the
    ``quantile`` of its absolute values (clipped at 1), so a few extreme pixels do not
    wash out the rest; one colorbar per colour scale.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from ..ui import viz

    rows = list(maps)
    fig, axes = plt.subplots(len(rows) + 1, len(columns), layout="constrained", squeeze=False,
                             figsize=(panel_size * len(columns) + 2.6, panel_size * (len(rows) + 1) + 0.5))
    used = {False: False, True: False}
    for c, (i, layer) in enumerate(columns):
        ax = axes[0, c]
        ax.imshow(viz.as_image(images[i]))
        viz.clean_axes(ax)
        name = (image_titles or {}).get(i, f"image {i}")
        ax.set_title(f"{name}\n{column_label(layer) if column_label else viz.layer_label(layer)}", fontsize=8)
        for r, variant in enumerate(rows, start=1):
            ax = axes[r, c]
            m = maps[variant].get(layer)
            if m is None:
                viz.clean_axes(ax)
                continue
            s = bool(signed(layer))
            m = m[i].detach().float().cpu()
            scale = float(torch.quantile(m.abs().flatten(), quantile)) or float(m.abs().max()) or 1.0
            m = (m / scale).clamp(-1.0 if s else 0.0, 1.0)
            viz.show_map(ax, m, signed=s, normalize=False, vmax=1.0, size=tuple(images.shape[-2:]))
            used[s] = True
    for r, variant in enumerate(rows, start=1):
        axes[r, 0].set_ylabel((row_labels or {}).get(variant, variant), fontsize=8, rotation=0, ha="right",
                              va="center")
    axes[0, 0].set_ylabel("image", fontsize=8, rotation=0, ha="right", va="center")
    pct = f"{quantile * 100:g}th percentile"
    for s in (False, True):
        if used[s]:
            norm = Normalize(-1, 1) if s else Normalize(0, 1)
            cb = fig.colorbar(ScalarMappable(norm=norm, cmap=viz.DIVERGING_CMAP if s else viz.SEQUENTIAL_CMAP),
                              ax=axes.ravel().tolist(), shrink=0.35, aspect=25, pad=0.01)
            cb.set_label(f"signed relevance / {pct} of |R|" if s else f"relevance / {pct}", fontsize=8)
            cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
