"""The paper's published numbers (Tables 1-6) as data, and helpers to set ours beside them.

Every number below is copied from the FG-CAM paper (Qiu, Jin, Zhang: "Empowering
CAM-based Methods with Capability to Generate Fine-Grained and High-Faithfulness
Explanations"), VGG16-BN on ILSVRC2012 val; the table each one comes from is named
where it is defined. Keys follow the rest of the library: method names of
:mod:`fgcam_lib.methods`, layers ``"33"``, ``"23"``, ``"13"``, ``"input"``, metric
rows of :mod:`fgcam_lib.evaluation.runner` (``average_drop`` ... ``proportion``). A.D. and A.I.
are in percent, as the paper prints them and as :func:`fgcam_lib.evaluation.runner.run_evaluation`
stores them.

    >>> from fgcam_lib.evaluation.published import published, compare_table
    >>> published(table=2).head()                  # tidy: table, method, layer, metric, value
    >>> compare_table(df, table=2)                  # paper vs ours (mean, CI, n) per cell

The orderings the paper states, and whether they hold on our rows, are in :mod:`.claims`.

pandas and scipy are imported inside the functions that need them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..catalogue import METRIC_LABELS, METRICS, PAPER_LAYERS, format_ci, layer_key, layer_label, method_label, metric_digits
from ..methods.registry import PAPER_CAM_METHODS, PAPER_INPUT_METHODS
from .tables import TABLES, summarize, table_number

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SOURCE", "PROTOCOL", "LOWER_IS_BETTER", "TABLE_SOURCES",
    "published", "published_value", "published_wide", "compare_table", "format_comparison",
    "paper_layer_map", "to_paper_layers", "result_cells",
]

SOURCE = ("Qiu, Jin, Zhang. Empowering CAM-based Methods with Capability to Generate Fine-Grained "
          "and High-Faithfulness Explanations (FG-CAM)")

#: the paper's experimental set-up ("Experiment" section)
PROTOCOL: dict[str, Any] = {
    "model": "VGG-16 with batch normalization (PyTorch model zoo)",
    "data": "ILSVRC2012 val",
    "input": "224 x 224 x 3, [0, 1], ImageNet mean/std",
    "faithfulness_images": 2000,           # Tables 1, 2, 4, 5: random val images
    "localization_images": 500,            # Tables 3, 6: one box, box <= 50% of the image
    "blur_kernel": 51,
    "blur_sigma": 50,
    "insdel_pixels_per_step": 448,
    "adai_kept_fraction": 0.5,
    "rules": "z-beta at the input layer, z+ elsewhere",
}

#: metrics where a lower value is better (every other one: higher is better; from the catalogue)
LOWER_IS_BETTER: frozenset[str] = frozenset(k for k, s in METRICS.items() if not s.higher_is_better)

_CAM = PAPER_CAM_METHODS     # grad_cam, fg_grad_cam, fg_grad_cam_denoise, score_cam, fg_score_cam,
                             # fg_score_cam_denoise, layer_cam: the column order of Tables 2 and 3
_INP = PAPER_INPUT_METHODS   # lrp, clrp, sglrp, fg_grad_cam, fg_grad_cam_denoise, fg_score_cam,
                             # fg_score_cam_denoise: the column order of Tables 4-6

# Table 1 of the paper: "The results of the faithfulness evaluation" (A.D., A.I. in percent);
# method -> layer -> (A.D., A.I.)
_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "grad_cam":             {"33": (44.53, 18.85), "23": (72.89, 5.10), "13": (83.80, 3.25)},
    "fg_grad_cam":          {"33": (18.69, 34.90), "23": (19.55, 33.45), "13": (19.65, 32.35)},
    "fg_grad_cam_denoise":  {"33": (18.00, 33.85), "23": (17.75, 33.55), "13": (17.90, 34.00)},
    "score_cam":            {"33": (32.63, 21.60), "23": (51.24, 13.80), "13": (57.06, 12.00)},
    "fg_score_cam":         {"33": (21.13, 29.15), "23": (22.63, 27.15), "13": (23.50, 25.85)},
    "fg_score_cam_denoise": {"33": (19.19, 31.70), "23": (18.99, 32.00), "13": (19.24, 30.50)},
    "layer_cam":            {"33": (24.25, 26.80), "23": (27.32, 24.50), "13": (30.76, 24.40)},
}

# Table 2 of the paper: "Results of deletion/insertion tests"; layer -> metric -> values in
# the column order of PAPER_CAM_METHODS
_TABLE2: dict[str, dict[str, tuple[float, ...]]] = {
    "33": {
        "insertion": (0.43920, 0.60214, 0.60247, 0.51428, 0.58202, 0.59716, 0.56566),
        "deletion":  (0.15392, 0.09640, 0.11108, 0.11988, 0.10196, 0.11198, 0.09997),
        "overall":   (0.28528, 0.50574, 0.49139, 0.39440, 0.48006, 0.48518, 0.46569),
    },
    "23": {
        "insertion": (0.30033, 0.59217, 0.60248, 0.39734, 0.57210, 0.59676, 0.54096),
        "deletion":  (0.19113, 0.09459, 0.11378, 0.14254, 0.09985, 0.11403, 0.09333),
        "overall":   (0.10920, 0.49758, 0.48870, 0.25480, 0.47225, 0.48273, 0.44763),
    },
    "13": {
        "insertion": (0.23266, 0.58630, 0.59976, 0.36485, 0.56570, 0.59341, 0.51348),
        "deletion":  (0.16850, 0.09256, 0.11421, 0.15037, 0.09774, 0.11435, 0.08469),
        "overall":   (0.06416, 0.49374, 0.48555, 0.21448, 0.46796, 0.47906, 0.42879),
    },
}

# Table 3 of the paper: "Comparative evaluation on localization ability" (Proportion);
# layer -> values in the column order of PAPER_CAM_METHODS
_TABLE3: dict[str, tuple[float, ...]] = {
    "33": (0.32417, 0.51458, 0.66736, 0.35646, 0.57161, 0.68256, 0.49272),
    "23": (0.31645, 0.50995, 0.65744, 0.28588, 0.56192, 0.67233, 0.49854),
    "13": (0.30760, 0.50861, 0.65472, 0.29219, 0.56001, 0.66959, 0.48238),
}

# Tables 4, 5, 6 of the paper (the input layer): metric -> values in the column order of
# PAPER_INPUT_METHODS
_TABLE4: dict[str, tuple[float, ...]] = {  # "faithfulness evaluation for LRP, CLRP, SGLRP and FG-CAM"
    "average_drop":     (25.48, 30.64, 40.62, 16.81, 16.13, 20.28, 16.84),
    "average_increase": (25.0, 24.15, 21.75, 36.45, 36.55, 30.15, 31.80),
}
_TABLE5: dict[str, tuple[float, ...]] = {  # "insertion and deletion tests for LRP, CLRP, SGLRP and FG-CAM"
    "insertion": (0.55344, 0.56740, 0.51655, 0.60757, 0.61386, 0.58608, 0.60566),
    "deletion":  (0.09975, 0.19168, 0.22315, 0.08668, 0.11271, 0.08980, 0.11143),
    "overall":   (0.45369, 0.37572, 0.29340, 0.52089, 0.50115, 0.49628, 0.49423),
}
_TABLE6: dict[str, tuple[float, ...]] = {  # "evaluation on localization for LRP, CLRP, SGLRP and FG-CAM"
    "proportion": (0.48385, 0.59515, 0.52136, 0.49503, 0.65496, 0.5400, 0.66983),
}

#: table number -> the paper's caption
TABLE_SOURCES: dict[int, str] = {
    1: "Table 1 of the paper: faithfulness (A.D. lower is better, A.I. higher), CAM methods, Layer33/23/13",
    2: "Table 2 of the paper: insertion/deletion AUC and Over-all, CAM methods, Layer33/23/13",
    3: "Table 3 of the paper: localization (Proportion in the box), CAM methods, Layer33/23/13",
    4: "Table 4 of the paper: faithfulness (A.D., A.I.) at the input, LRP family vs FG-CAM",
    5: "Table 5 of the paper: insertion/deletion at the input, LRP family vs FG-CAM",
    6: "Table 6 of the paper: localization (Proportion) at the input, LRP family vs FG-CAM",
}


def _records() -> list[tuple[int, str, str, str, float]]:
    """Every published cell as (table, method, layer, metric, value)."""
    out: list[tuple[int, str, str, str, float]] = []
    for m, by_layer in _TABLE1.items():
        for layer in PAPER_LAYERS:
            ad, ai = by_layer[layer]
            out += [(1, m, layer, "average_drop", ad), (1, m, layer, "average_increase", ai)]
    for layer in PAPER_LAYERS:
        for metric, values in _TABLE2[layer].items():
            out += [(2, m, layer, metric, v) for m, v in zip(_CAM, values)]
    for layer in PAPER_LAYERS:
        out += [(3, m, layer, "proportion", v) for m, v in zip(_CAM, _TABLE3[layer])]
    for number, table in ((4, _TABLE4), (5, _TABLE5), (6, _TABLE6)):
        for metric, values in table.items():
            out += [(number, m, "input", metric, v) for m, v in zip(_INP, values)]
    return out


_RECORDS = _records()
_BY_KEY: dict[tuple[str, str, str], tuple[int, float]] = {(m, l, k): (t, v) for t, m, l, k, v in _RECORDS}

# the table layouts are the evaluation tables' (fgcam_lib.evaluation.tables.TABLES: one definition for both)


def published_value(method: str, layer: str | int, metric: str) -> float:
    """One published number, e.g. ``published_value("fg_grad_cam", 13, "overall") == 0.49374``.

    Raises KeyError when the paper does not report that cell.
    """
    key = (method, layer_key(layer), metric)
    if key not in _BY_KEY:
        raise KeyError(f"the paper reports no value for {key}")
    return _BY_KEY[key][1]


def published(table: int | str | None = None) -> "pd.DataFrame":
    """The paper's numbers as tidy rows: ``table, method, label, layer, metric, value``.

    ``table``: 1-6 keeps one table. Values are the paper's (A.D./A.I. in percent).

    Example:
        >>> published(5).query("metric == 'overall'")["value"].max()
        0.52089
    """
    import pandas as pd

    df = pd.DataFrame(_RECORDS, columns=["table", "method", "layer", "metric", "value"])
    df.insert(2, "label", df["method"].map(method_label))
    if table is not None:
        df = df[df["table"] == table_number(table)].reset_index(drop=True)
    return df


# ----------------------------------------------------------------------------- other models
def paper_layer_map(layers: Sequence[str | int] | None) -> dict[str, str]:
    """The model's three CAM layers (deepest first, as :func:`fgcam_lib.methods.paper_layers` gives
    them) -> the paper's keys ``"33"``, ``"23"``, ``"13"`` (the layers at the same resolutions).

    Example:
        >>> paper_layer_map(["layer3", "layer2", "layer1"])
        {'layer3': '33', 'layer2': '23', 'layer1': '13'}
    """
    if layers is None:
        return {k: k for k in PAPER_LAYERS}
    keys = [layer_key(layer) for layer in layers]
    if len(keys) != len(PAPER_LAYERS) or len(set(keys)) != len(PAPER_LAYERS) or "input" in keys:
        raise ValueError(f"name the model's three CAM layers deepest first (as paper_layers gives them), not {keys}")
    return dict(zip(keys, PAPER_LAYERS))


def to_paper_layers(df: "pd.DataFrame", layers: Sequence[str | int] | None) -> "pd.DataFrame":
    """Rows with the model's CAM layers renamed to the paper's keys (``"layer1"`` -> ``"13"``), so
    :func:`compare_table`, :func:`check_claims` and the paper's table layouts apply to any model.

    ``layers``: the model's three CAM layers, deepest first; None: the paper's own (no change).
    A model whose rows already use the paper's keys for other layers is refused.

    Example:
        >>> to_paper_layers(resnet_rows, ["layer3", "layer2", "layer1"])["layer"].unique()
        array(['33', '23', '13', 'input'], dtype=object)
    """
    mapping = paper_layer_map(layers)
    stored = df["layer"].map(layer_key)
    if all(k == v for k, v in mapping.items()):
        return df.assign(layer=stored)
    clash = sorted(set(stored) & (set(PAPER_LAYERS) - set(mapping)))
    if clash:
        raise ValueError(f"rows already hold layers {clash}; they cannot also stand for {sorted(mapping)}")
    return df.assign(layer=stored.map(lambda k: mapping.get(k, k)))


# ----------------------------------------------------------------------------- comparison
def result_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    """Tidy evaluation rows with normalised layer keys (``"features.13"`` -> ``"13"``)."""
    need = {"image_id", "method", "layer", "metric", "value"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"evaluation rows lack columns {sorted(missing)} (use run_evaluation's output)")
    return df.assign(layer=df["layer"].map(layer_key))


def compare_table(
    df: "pd.DataFrame",
    table: int | str,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> "pd.DataFrame":
    """The paper's numbers and ours, cell by cell, for one of Tables 1-6.

    ``df``: tidy rows of :func:`fgcam_lib.evaluation.runner.run_evaluation` (one data set); our
    means and percentile-bootstrap CIs come from :func:`fgcam_lib.evaluation.tables.summarize`.
    Returns one row per cell of the paper's table, index ``(layer, metric, method)``,
    columns ``label``, ``paper``, ``ours`` (mean over images), ``ci_low``, ``ci_high``,
    ``n`` (images), ``better`` (``"lower"`` or ``"higher"``). Cells we did not evaluate
    have ``ours`` NaN and ``n`` 0.

    Example:
        >>> compare_table(df, 5).loc[("input", "overall", "fg_grad_cam"), ["paper", "ours"]]
        paper 0.52089  ours 0.47...
    """
    import pandas as pd

    number = table_number(table)
    methods, layers, metrics = TABLES[number]
    cells = result_cells(df)
    if "data" in cells.columns and cells["data"].nunique() > 1:
        raise ValueError(f"rows from several data sets {sorted(cells['data'].unique())}; pass one")
    cells = cells[cells["method"].isin(methods) & cells["layer"].isin(layers) & cells["metric"].isin(metrics)]
    summary = summarize(cells, confidence=confidence, n_resamples=n_resamples, seed=seed) if len(cells) else None
    rows = []
    for layer in layers:
        for metric in metrics:
            for m in methods:
                key = (m, layer, metric)
                hit = summary is not None and key in summary.index
                r = summary.loc[key] if hit else None
                rows.append({"layer": layer, "metric": metric, "method": m, "label": method_label(m),
                             "paper": published_value(m, layer, metric),
                             "ours": float(r["mean"]) if hit else float("nan"),
                             "ci_low": float(r["ci_low"]) if hit else float("nan"),
                             "ci_high": float(r["ci_high"]) if hit else float("nan"),
                             "n": int(r["n"]) if hit else 0,
                             "better": "lower" if metric in LOWER_IS_BETTER else "higher"})
    return pd.DataFrame(rows).set_index(["layer", "metric", "method"])


def published_wide(table: int | str) -> "pd.DataFrame":
    """One of the paper's Tables 1-6 as printed: rows ``(layer, metric)``, columns the methods.

    Example:
        >>> published_wide(4)          # A.D. / A.I. of LRP ... FG-Score-CAM (denoising)
    """
    df = published(table)
    df = df.assign(layer=df["layer"].map(layer_label), metric=df["metric"].map(lambda k: METRIC_LABELS.get(k, k)))
    wide = df.pivot_table(index=["layer", "metric"], columns="label", values="value", aggfunc="first", sort=False)
    wide = wide[list(dict.fromkeys(df["label"]))]
    wide.columns.name = None
    return wide


def format_comparison(comparison: "pd.DataFrame", digits: int | None = None) -> "pd.DataFrame":
    """A :func:`compare_table` result laid out like the paper's table.

    Rows ``(layer, metric)``, one column per method (the paper's labels); each cell
    ``"ours ± half-CI (paper)"``. ``digits``: decimals (default:
    :func:`~fgcam_lib.catalogue.metric_digits`, 2 for A.D./A.I., which are percent, 4 for
    the other metrics).
    """
    def cell(r: "pd.Series") -> str:
        d = metric_digits([r.name[1]], digits)
        return f"{format_ci(r['ours'], r['ci_low'], r['ci_high'], d)} ({r['paper']:.{d}f})"

    text = comparison.apply(cell, axis=1).rename("cell").reset_index()
    text["metric"] = text["metric"].map(lambda k: METRIC_LABELS.get(k, k))
    text["layer"] = text["layer"].map(layer_label)
    order = list(dict.fromkeys(method_label(m) for m in comparison.index.get_level_values("method")))
    text["method"] = text["method"].map(method_label)
    wide = text.pivot_table(index=["layer", "metric"], columns="method", values="cell", aggfunc="first", sort=False)
    wide = wide[order]
    wide.columns.name = "ours ± CI half-width (paper)"
    return wide
