"""Names and labels shared by the whole workbench: methods, metrics, layers, and how a
"mean ± half-width" cell is written.

Plain Python: importing it loads neither torch, matplotlib nor pandas, so the light
modules (the registry, the result store, the command line) and the drawing modules read
the same labels from here.

    >>> from fgcam_lib.catalogue import METRICS, method_label, layer_label, format_ci
    >>> method_label("fg_grad_cam_denoise"), layer_label("features.13"), METRICS["average_drop"].label
    ('FG-Grad-CAM (denoising)', 'Layer13', 'A.D.')
    >>> format_ci(25.4812, 24.4, 26.6, METRICS["average_drop"].digits)
    '25.48 ± 1.10'
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = [
    "METHOD_LABELS", "OTHER_LABELS", "method_label",
    "MetricSpec", "METRICS", "METRIC_GROUPS", "METRIC_LABELS", "HIGHER_IS_BETTER", "PERCENT_METRICS",
    "metric_spec", "metric_label", "metric_axis_label", "metric_digits", "group_of",
    "PAPER_LAYERS", "is_input_layer", "layer_key", "layer_label",
    "format_ci", "format_difference", "difference_verdict",
]

# ------------------------------------------------------------------------------ methods
#: registered method (:data:`fgcam_lib.methods.METHODS`) -> display label (the paper's), in the
#: order the paper introduces them; the one home of these labels: the registry, the explainer
#: classes and the figures read them from here
METHOD_LABELS: dict[str, str] = {
    "grad_cam": "Grad-CAM", "score_cam": "Score-CAM", "layer_cam": "Layer-CAM",
    "grad_cam_pp": "Grad-CAM++", "xgrad_cam": "XGrad-CAM",
    "fg_grad_cam": "FG-Grad-CAM", "fg_grad_cam_denoise": "FG-Grad-CAM (denoising)",
    "fg_score_cam": "FG-Score-CAM", "fg_score_cam_denoise": "FG-Score-CAM (denoising)",
    "fg_grad_cam_pp": "FG-Grad-CAM++", "fg_xgrad_cam": "FG-XGrad-CAM",
    "lrp": "LRP", "clrp": "CLRP", "sglrp": "SGLRP", "cp_lrp": "CP-LRP", "attn_lrp": "AttnLRP",
}
#: labels of the keys that name no registered method: FG-CAM on any base (the explorer's
#: ``"fg_cam"``) and the CAM bases FG-CAM takes by name that are no method of their own
#: (:data:`fgcam_lib.methods.bases.CAM_BASES`)
OTHER_LABELS: dict[str, str] = {
    "fg_cam": "FG-CAM", "hires_cam": "HiResCAM", "finer_cam": "Finer-CAM",
}


def method_label(name: str) -> str:
    """Display label of a method or base key: ``"fg_grad_cam"`` -> ``"FG-Grad-CAM"``; unknown keys unchanged."""
    return METHOD_LABELS.get(name) or OTHER_LABELS.get(name, name)


# ------------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class MetricSpec:
    """One per-image metric row.

    ``group``: the metric option that computes it (one pass computes the whole group, e.g.
    ``"insdel"`` gives insertion, deletion and over-all); ``percent``: stored in percent
    (A.D., A.I.), else a fraction; ``digits``: decimals in tables (2 for percent, 4 else,
    as the paper prints them).
    """

    name: str
    label: str
    group: str
    higher_is_better: bool
    percent: bool = False
    description: str = ""

    @property
    def digits(self) -> int:
        return 2 if self.percent else 4

    @property
    def axis_label(self) -> str:
        """The label with its unit: ``"A.D. (%)"``, ``"Over-all"``."""
        return f"{self.label} (%)" if self.percent else self.label

    @property
    def better(self) -> str:
        """``"higher"`` or ``"lower"``."""
        return "higher" if self.higher_is_better else "lower"


def _metrics() -> dict[str, MetricSpec]:
    specs = [
        MetricSpec("average_drop", "A.D.", "adai", False, True, "drop of the target's probability on the masked image (%)"),
        MetricSpec("average_increase", "A.I.", "adai", True, True, "images whose probability rises when masked (%)"),
        MetricSpec("insertion", "Insertion", "insdel", True, False, "area under the insertion curve"),
        MetricSpec("deletion", "Deletion", "insdel", False, False, "area under the deletion curve"),
        MetricSpec("overall", "Over-all", "insdel", True, False, "insertion minus deletion"),
        MetricSpec("proportion", "Proportion", "proportion", True, False, "share of the map's energy in the boxes"),
        MetricSpec("proportion_mask", "Proportion (mask)", "proportion", True, False,
                   "share of the map's energy in the object masks"),
        MetricSpec("pointing_game", "Pointing game", "proportion", True, False, "the map's maximum falls on the object"),
        MetricSpec("road_morf", "ROAD MoRF", "road", False, False, "accuracy as the most relevant pixels are imputed"),
        MetricSpec("road_lerf", "ROAD LeRF", "road", True, False, "accuracy as the least relevant pixels are imputed"),
    ]
    return {s.name: s for s in specs}


#: metric row -> :class:`MetricSpec`
METRICS: dict[str, MetricSpec] = _metrics()
#: metric option -> the metric rows it writes, in order (the first is the one checked on resume)
METRIC_GROUPS: dict[str, tuple[str, ...]] = {}
for _spec in METRICS.values():
    METRIC_GROUPS[_spec.group] = METRIC_GROUPS.get(_spec.group, ()) + (_spec.name,)
del _spec
#: metric row -> the paper's label
METRIC_LABELS: dict[str, str] = {k: s.label for k, s in METRICS.items()}
#: metric row -> whether larger values are better
HIGHER_IS_BETTER: dict[str, bool] = {k: s.higher_is_better for k, s in METRICS.items()}
#: metric rows stored in percent
PERCENT_METRICS: frozenset[str] = frozenset(k for k, s in METRICS.items() if s.percent)
_BY_LABEL: dict[str, MetricSpec] = {s.label: s for s in METRICS.values()}


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric row, by name (``"average_drop"``) or label (``"A.D."``)."""
    spec = METRICS.get(name) or _BY_LABEL.get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return spec


def metric_label(name: str) -> str:
    """The paper's label of a metric row; unknown names unchanged."""
    spec = METRICS.get(name)
    return spec.label if spec is not None else name


def metric_axis_label(name: str) -> str:
    """A metric row's label with its unit, for plot axes: ``"average_drop"`` -> ``"A.D. (%)"``; unknown names unchanged."""
    spec = METRICS.get(name)
    return spec.axis_label if spec is not None else name


def metric_digits(keys: Iterable[Any], digits: int | None = None) -> int:
    """Decimals of a table cell whose row/column keys are ``keys``: ``digits`` if given,
    else 2 when any key names a percent metric (by name or label), else 4."""
    if digits is not None:
        return digits
    for k in keys:
        spec = METRICS.get(str(k)) or _BY_LABEL.get(str(k))
        if spec is not None and spec.percent:
            return 2
    return 4


def group_of(name: str) -> str:
    """The metric option that computes the metric row ``name``."""
    return metric_spec(name).group


# ------------------------------------------------------------------------------- layers
#: the paper's Layer33, Layer23, Layer13 (VGG16-BN's 4th, 3rd and 2nd max-pool)
PAPER_LAYERS: tuple[str, ...] = ("33", "23", "13")


def is_input_layer(layer: Any) -> bool:
    """True for the layer specs that name the input image (``"input"``, ``-1``, ``"-1"``)."""
    if isinstance(layer, bool):
        return False
    return layer in ("input", -1, "-1")


def layer_key(layer: Any) -> str:
    """How a layer is stored in result rows: ``13`` / ``"features.13"`` -> ``"13"``, the input -> ``"input"``,
    other names (``"layer3"``) as given."""
    if is_input_layer(layer):
        return "input"
    s = str(layer)
    return s[len("features."):] if re.fullmatch(r"features\.\d+", s) else s


def layer_label(layer: Any) -> str:
    """The paper's layer names: ``13`` / ``"features.13"`` -> ``"Layer13"``, the input -> ``"Input"``;
    other names (``"layer3"``) as given."""
    key = layer_key(layer)
    if key == "input":
        return "Input"
    return f"Layer{key}" if key.isdigit() else key


# ------------------------------------------------------------------------------- cells
def format_ci(mean: float, low: float, high: float, digits: int = 4) -> str:
    """``"mean ± half-width"`` of a confidence interval; ``"mean"`` without one; ``"n/a"`` without a mean."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def format_difference(diff: float, low: float, high: float, digits: int = 3) -> str:
    """A paired difference with its interval, signed: ``"+0.012 [-0.003, +0.027]"``."""
    return f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def difference_verdict(low: float, high: float, higher_is_better: bool = True,
                       words: tuple[str, str, str] = ("better", "worse", "within noise")) -> str:
    """What a difference's interval says: ``words[0]`` when it excludes 0 on the better side
    (above 0 for a metric where higher is better), ``words[1]`` on the worse side, else ``words[2]``.

        >>> difference_verdict(0.01, 0.05), difference_verdict(0.01, 0.05, higher_is_better=False)
        ('better', 'worse')
    """
    if low <= 0 <= high:
        return words[2]
    return words[0] if (low > 0) == higher_is_better else words[1]
