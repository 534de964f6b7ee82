"""Sanity checks across methods: parameter randomisation, class sensitivity, weight ablation.

Three questions about any explainer of the library, asked the same way for all:

- **Cascading model-parameter randomisation** (Adebayo et al. 2018): re-initialise the
  model top-down (classifier, then the conv layers from deep to shallow) and measure how
  similar each map stays to the original one. A map that barely changes while the
  network it explains is destroyed does not explain that network; z+ LRP is known to
  stay similar (Sixt et al. 2020). :func:`randomization_groups`, :func:`cascading`.
- **Class sensitivity** on two-object scenes: explain object 1's class, then object 2's;
  how similar are the two maps, and does each put its mass on its own object?
  :func:`class_sensitivity`.
- **Weight ablation** for FG-CAM: replace the CAM weights ``w`` of Eq. 2 by uniform (or
  shuffled) ones and propagate as usual. If the map hardly changes, its detail comes from
  the z+ propagation, not from the CAM. :class:`AblatedFGCAM`, :func:`weight_ablation`.

Similarities are :func:`fgcam_lib.evaluation.metrics.similarity` (Spearman, SSIM); the ``_abs``
columns compare absolute values, so a sign flip of a signed map is not counted as a change.

    >>> groups = randomization_groups(model)                      # [["classifier.1"], ["features.40", "features.41"], ...]
    >>> df = cascading(model, pre, x, None, [("fg_grad_cam", "input"), ("lrp", "input")], groups)
    >>> summary = summarize_values(df, ["method", "layer", "step"], ["spearman_abs", "ssim_abs"])

pandas and scipy are imported inside the functions that tabulate.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics as M
from ..methods.base import Target
from ..methods.fgcam import FGCAM, denoise
from ..engine.graph import graph_of
from ..methods.registry import is_signed, make_explainer

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ABLATIONS", "randomization_groups", "randomized_copy", "cascading", "summarize_values",
    "randomization_verdict",
    "class_sensitivity", "AblatedFGCAM", "ablate_weights", "weight_ablation", "runner_up",
]

MethodLayer = tuple[str, Any]


# ------------------------------------------------------------------------ randomisation
def randomization_groups(model: nn.Module, by: str = "conv") -> list[list[str]]:
    """Module paths to re-initialise, top-down, for :func:`cascading`.

    First every Linear layer (the last one first), then the convolutions from the deepest
    to the shallowest. ``by="conv"``: one group per convolution, holding the conv and the
    BatchNorm right after it; ``by="stage"``: one group per stage (the convs between two
    pooling layers, with their BatchNorms).

    Example:
        >>> randomization_groups(model)[:3]       # bundled model
        [['classifier.1'], ['features.40', 'features.41'], ['features.37', 'features.38']]
    """
    if by not in ("conv", "stage"):
        raise ValueError(f"unknown grouping {by!r}; use 'conv' or 'stage'")
    graph = graph_of(model)
    modules = dict(model.named_modules())
    linear = [[n.name] for n in graph.nodes if n.name in modules and isinstance(n.module, nn.Linear)]
    convs: list[list[str]] = []
    stages: list[list[str]] = [[]]
    for i, n in enumerate(graph.nodes):
        m = n.module
        conv = _conv_module(n, modules)
        if conv is not None:
            group = [conv]
            bns = [graph.nodes[u] for u in graph.users[i] if isinstance(graph.nodes[u].module, nn.BatchNorm2d)]
            if len(graph.users[i]) == 1 and bns:  # the BatchNorm right after it
                group.append(bns[0].name)
            convs.append(group)
            stages[-1].extend(group)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) and stages[-1]:
            stages.append([])
    stages = [s for s in stages if s]
    if not convs:
        raise ValueError("the model has no Conv2d layer to randomise")
    body = convs if by == "conv" else stages
    return linear[::-1] + body[::-1]


def _conv_module(node: Any, modules: Mapping[str, nn.Module]) -> str | None:
    """The path of the ``nn.Conv2d`` a graph node runs: the node's own module, or the module
    whose forward the trace went through (a "same"-padding conv traced to its ``F.conv2d``)."""
    if node.name in modules and isinstance(node.module, nn.Conv2d):
        return node.name
    owner = node.name.rpartition(".")[0]
    if node.kind == "conv" and node.module is None and isinstance(modules.get(owner), nn.Conv2d):
        return owner
    return None


def randomized_copy(model: nn.Module, groups: Sequence[Sequence[str]], step: int, seed: int = 0) -> nn.Module:
    """The network of step ``step`` of :func:`cascading`: a copy with ``groups[:step]`` re-initialised.

    Same re-initialisation as :func:`fgcam_lib.evaluation.metrics.cascading_randomization` (module
    ``q`` of the flattened groups with seed ``seed + q``), so maps drawn from this copy
    are the maps whose similarities :func:`cascading` reports. ``model`` is not changed.

    Example:
        >>> random_top = randomized_copy(model, randomization_groups(model), step=1)   # classifier only
    """
    if not 0 <= step <= len(groups):
        raise ValueError(f"step must be in 0..{len(groups)}, got {step}")
    out = copy.deepcopy(model)
    names = [name for group in groups[:step] for name in group]
    for q, name in enumerate(names):
        M.reset_parameters(out.get_submodule(name), seed + q)
    return out


def cascading(
    model: nn.Module,
    preprocess: Any,
    x: Tensor,
    target: Target,
    methods: Iterable[MethodLayer],
    groups: Sequence[Sequence[str]],
    *,
    seed: int = 0,
    signed: bool | Mapping[str, bool] | None = None,
    explainer_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> "pd.DataFrame":
    """Cascading randomisation of ``model`` for each ``(method, layer)``.

    Runs :func:`fgcam_lib.evaluation.metrics.cascading_randomization` once per pair: step 0 is the
    original model, step ``s`` has the first ``s`` groups re-initialised (same seeds for
    every method, so all methods see the same randomised networks). ``target=None``: each
    image's top-1 class on the original model, kept for every step.

    ``signed``: None keeps the sign where :func:`fgcam_lib.methods.is_signed` says so (the
    input), elsewhere maps are Eq. 8's ReLU; True / False for every method; or a method ->
    bool mapping (methods not in it: the default). Relevance maps of a randomised network
    often turn negative as a whole (the target's logit changed sign); their ReLU is then
    all zero and every similarity NaN, so compare such methods signed, with the ``_abs``
    columns.

    Returns one row per (method, layer, step, image): ``method``, ``layer``, ``signed``,
    ``step``, ``randomized_layer``, ``image``, ``spearman``, ``ssim``, ``spearman_abs``,
    ``ssim_abs``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    pairs = list(methods)
    frames = []
    for name, layer in tqdm(pairs, desc="cascading randomisation", disable=not progress):
        kw = dict((explainer_kwargs or {}).get(name, {}))
        if isinstance(signed, Mapping):
            keep_sign = bool(signed[name]) if name in signed else is_signed(name, layer)
        else:
            keep_sign = is_signed(name, layer) if signed is None else bool(signed)

        def explain(m: nn.Module, xx: Tensor, t: Tensor, name=name, layer=layer, kw=kw, keep_sign=keep_sign) -> Tensor:
            return make_explainer(name, m, preprocess=preprocess, **kw)(xx, t, layer=layer, signed=keep_sign)

        recs = M.cascading_randomization(model, explain, x, target, [list(g) for g in groups], seed=seed)
        df = pd.DataFrame(recs).rename(columns={"layer": "randomized_layer"})
        df.insert(0, "signed", keep_sign)
        df.insert(0, "layer", str(layer))
        df.insert(0, "method", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def summarize_values(
    df: "pd.DataFrame",
    by: Sequence[str],
    values: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> "pd.DataFrame":
    """Mean and percentile-bootstrap CI over rows (images) of each group, for several value columns.

    Returns index ``by``, columns ``<value>`` (mean), ``<value>_low``, ``<value>_high``,
    ``<value>_n`` (finite values) for each of ``values``, and ``n`` (rows in the group).
    NaNs are dropped per value. The wide form of :func:`fgcam_lib.evaluation.tables.group_ci`
    (one random stream from ``seed`` for all groups).

    Example:
        >>> summarize_values(cascading_rows, ["method", "layer", "step"], ["spearman_abs"]).loc[("lrp", "input", 1)]
    """
    import pandas as pd

    from .tables import group_ci

    rng = np.random.default_rng(seed)
    parts = [group_ci(df, list(by), v, confidence=confidence, n_resamples=n_resamples, seed=rng).set_axis(
        [v, f"{v}_low", f"{v}_high", f"{v}_n"], axis=1) for v in values]
    out = pd.concat(parts, axis=1)
    out["n"] = df.groupby(list(by), sort=False, dropna=False).size().reindex(out.index)
    return out


def randomization_verdict(
    summary: "pd.DataFrame",
    step: int,
    value: str = "spearman_abs",
    threshold: float = 0.5,
) -> "pd.DataFrame":
    """Per (method, layer): does the map survive randomising the top ``step`` groups?

    ``summary``: :func:`summarize_values` of :func:`cascading` rows by ``["method", "layer",
    "step"]``. At ``step``, ``"insensitive (fails)"`` when the CI of the mean ``value``
    lies above ``threshold`` (the map stays similar to the original although the layers
    above it are random), ``"sensitive (passes)"`` when it lies below, ``"unclear"``
    otherwise.
    """
    import pandas as pd

    rows = []
    for (method, layer), g in summary.groupby(level=["method", "layer"], sort=False):
        g = g.droplevel(["method", "layer"])
        if step not in g.index:
            raise ValueError(f"step {step} not in the summary (steps {list(g.index)})")
        r = g.loc[step]
        lo, hi, mean = r[f"{value}_low"], r[f"{value}_high"], r[value]
        if np.isfinite(lo) and lo > threshold:
            verdict = "insensitive (fails)"
        elif np.isfinite(hi) and hi < threshold:
            verdict = "sensitive (passes)"
        else:
            verdict = "unclear"
        rows.append({"method": method, "layer": layer, value: mean, "ci_low": lo, "ci_high": hi,
                     "verdict": verdict})
    return pd.DataFrame(rows).set_index(["method", "layer"])


# -------------------------------------------------------------------- class sensitivity
def class_sensitivity(
    explainer: Any,
    x: Tensor,
    classes: Tensor,
    masks: Tensor,
    layer: Any,
    signed: bool = False,
) -> "pd.DataFrame":
    """Maps for each of two objects' classes, compared with each other and with the masks.

    ``x``: B x 3 x H x W; ``classes``: B x 2 (class of object a, of object b); ``masks``:
    B x 2 x H x W bool (visible pixels of each object). ``map_a`` explains class a,
    ``map_b`` class b, both at ``layer``. Returns one row per image: ``spearman``,
    ``ssim`` (``map_a`` vs ``map_b``), ``a_on_a``, ``a_on_b``, ``b_on_a``, ``b_on_b``
    (share of each map's positive mass inside each object's mask,
    :func:`fgcam_lib.evaluation.metrics.proportion_mask`; NaN for a map without positive values),
    ``own`` (mean of ``a_on_a`` and ``b_on_b``), ``other`` (mean of ``a_on_b`` and
    ``b_on_a``) and ``gap = own - other``.
    """
    import pandas as pd

    classes = torch.as_tensor(classes).long()
    if classes.ndim != 2 or classes.shape[1] != 2 or classes.shape[0] != x.shape[0]:
        raise ValueError(f"classes must be B x 2 with B = {x.shape[0]}, got {tuple(classes.shape)}")
    if masks.ndim != 4 or masks.shape[:2] != (x.shape[0], 2):
        raise ValueError(f"masks must be B x 2 x H x W, got {tuple(masks.shape)}")
    maps = [explainer(x, classes[:, k], layer=layer, signed=signed).detach() for k in (0, 1)]
    sim = M.similarity(maps[0], maps[1])
    share = {f"{'ab'[i]}_on_{'ab'[j]}": M.proportion_mask(maps[i], masks[:, j]).double()
             for i in (0, 1) for j in (0, 1)}
    df = pd.DataFrame({"image": np.arange(x.shape[0]), "spearman": sim["spearman"].numpy(),
                       "ssim": sim["ssim"].numpy(), **{k: v.numpy() for k, v in share.items()}})
    df["own"] = (df["a_on_a"] + df["b_on_b"]) / 2
    df["other"] = (df["a_on_b"] + df["b_on_a"]) / 2
    df["gap"] = df["own"] - df["other"]
    return df


# ----------------------------------------------------------------------- weight ablation
#: ways of replacing FG-CAM's CAM weights
ABLATIONS: tuple[str, ...] = ("ones", "mean", "shuffle")


def ablate_weights(w: Tensor, mode: str, seed: int = 0) -> Tensor:
    """Replacement CAM weights, B x C.

    ``"ones"``: every channel weight 1 (``I_L = A_L``, the CAM plays no part);
    ``"mean"``: every channel gets the image's mean weight (same map as ``"ones"`` up
    to scale and, if the mean is negative, sign); ``"shuffle"``: the image's own weights
    randomly permuted over the channels (same values, wrong channels; from ``seed``).
    """
    if mode == "ones":
        return torch.ones_like(w)
    if mode == "mean":
        return w.mean(1, keepdim=True).expand_as(w).clone()
    if mode == "shuffle":
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.stack([torch.randperm(w.shape[1], generator=g) for _ in range(w.shape[0])]).to(w.device)
        return w.gather(1, perm)
    raise ValueError(f"unknown ablation {mode!r}; use one of {', '.join(ABLATIONS)}")


class AblatedFGCAM(FGCAM):
    """FG-CAM whose CAM weights are replaced before the propagation (see :func:`ablate_weights`).

    Everything else is FG-CAM's: the components are ``w' * A_L`` (denoised when
    ``denoise`` is set) and go down with the same rules. ``weights``: ``"ones"``,
    ``"mean"`` or ``"shuffle"``; other keyword arguments as :class:`FGCAM`.

        >>> flat = AblatedFGCAM(model, weights="ones")
        >>> flat(x, layer=[13, "input"])           # the z+ propagation of the raw activations
    """

    def __init__(self, model: nn.Module, weights: str = "ones", seed: int = 0, **kwargs: Any):
        super().__init__(model, **kwargs)
        if weights not in ABLATIONS:
            raise ValueError(f"unknown ablation {weights!r}; use one of {', '.join(ABLATIONS)}")
        self.ablation, self.seed = weights, seed

    def components_at_top(self, x: Tensor, target: Target = None, keep_from: int | None = None, bound=None):
        """Step 1 with replaced weights: ``w' * A_L`` (denoised when set) and ``w'``."""
        step = super().components_at_top(x, target, keep_from, bound)
        L = self.component_position
        A = self.grid(step.trace.shapes, L).to_grid(step.trace.acts[L].detach())  # tokens as a map
        w2 = ablate_weights(step.weights.detach(), self.ablation, self.seed)
        I = w2[:, :, None, None] * A
        if self.denoise is not None:
            I = denoise(I, self.denoise)
        return step._replace(components=I, weights=w2)


def runner_up(model: nn.Module, x: Tensor) -> Tensor:
    """Each image's second most likely class, LongTensor[B]."""
    with torch.no_grad():
        return model(x).topk(2, dim=1).indices[:, 1]


def weight_ablation(
    model: nn.Module,
    preprocess: Any,
    x: Tensor,
    layers: Sequence[Any],
    target: Target = None,
    *,
    base: str = "grad_cam",
    denoise_fraction: float | None = None,
    modes: Sequence[str] = ("ones", "shuffle"),
    reference: bool = True,
    signed: bool = True,
    seed: int = 0,
) -> "pd.DataFrame":
    """How much FG-CAM's map owes to its CAM weights, layer by layer.

    The real FG-CAM map (``base`` weights, optional denoising) is compared with the map
    of each ablation in ``modes`` (:class:`AblatedFGCAM`), and, with ``reference``, with
    the real FG-CAM map of each image's runner-up class (a genuine change of weights, as
    a yardstick). ``signed``: compare the channel sums before the ReLU (default; a
    variant whose map is negative everywhere would otherwise be all zero), else Eq. 8's
    maps. Returns one row per (variant, layer, image): ``variant``, ``layer``, ``image``, ``spearman``, ``ssim``,
    ``spearman_abs``, ``ssim_abs``.
    """
    import pandas as pd

    name = {"grad_cam": "fg_grad_cam", "score_cam": "fg_score_cam"}.get(base, f"fg_{base}")
    kw: dict[str, Any] = {"base": base, "denoise": denoise_fraction}
    if base == "score_cam":
        kw["score_cam_variant"] = "paper"
    real = make_explainer(name, model, preprocess=preprocess, **kw)
    layers = list(layers)
    expl = real.explain(x, target, layers)
    tgt = expl.target
    variants: dict[str, Mapping[Any, Tensor]] = {}
    for mode in modes:
        abl = AblatedFGCAM(model, weights=mode, seed=seed, **_fg_kwargs(real, kw))
        e = abl.explain(x, tgt, layers)
        variants[mode] = {l: e.map(l, signed=signed) for l in layers}
    if reference:
        e = real.explain(x, runner_up(model, x), layers)
        variants["runner-up class"] = {l: e.map(l, signed=signed) for l in layers}
    refs = {l: expl.map(l, signed=signed) for l in layers}
    frames = []
    for variant, maps in variants.items():
        for l in layers:
            s, sa = M.similarity(refs[l], maps[l]), M.similarity(refs[l], maps[l], absolute=True)
            frames.append(pd.DataFrame({
                "variant": variant, "layer": str(l), "image": np.arange(x.shape[0]),
                "spearman": s["spearman"].double().numpy(), "ssim": s["ssim"].double().numpy(),
                "spearman_abs": sa["spearman"].double().numpy(), "ssim_abs": sa["ssim"].double().numpy()}))
    return pd.concat(frames, ignore_index=True)


def _fg_kwargs(real: FGCAM, kw: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments that rebuild ``real``'s configuration (preset included)."""
    return {**kw, "rules": real.preset, "component_layer": real.component_layer,
            "batch_size": real.batch_size}
