"""Summaries of tidy metric rows: means with bootstrap CIs, the paper's table layouts, text cells.

The one summary of the workbench: :func:`summarize` (the runner's, the ablations', the
published-table comparison's), laid out as the paper's Tables 1-6 with ``table=``, and
written as ``"mean ± half-width"`` cells by :func:`format_table` (any summary) or
:func:`format_summary` (metrics as columns). Decimals follow
:func:`fgcam_lib.catalogue.metric_digits`: 2 for the percent metrics (A.D., A.I.), 4 for
the fractions.

    >>> s = summarize(rows)                                   # (method, layer, metric) -> mean, ci_low, ci_high, n
    >>> format_table(summarize(rows, table=1))                # the paper's Table 1 layout
    >>> format_summary(summarize(rows, by=["method"]), rows=["method"])   # one column per metric
    >>> display(styled(format_table(summarize(rows, table=1)), caption="Table 1"))   # HTML in a notebook

pandas is imported inside the functions.
"""
from __future__ import annotations

import functools
import hashlib
import numbers
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..catalogue import METRIC_LABELS, PAPER_LAYERS, format_ci, layer_key, layer_label, method_label, metric_digits
from ..methods.registry import PAPER_CAM_METHODS, PAPER_INPUT_METHODS
from .stats import mean_ci

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLES", "STATS", "table_number", "summarize", "group_ci", "format_table", "format_summary",
           "throughput_table", "styled", "TABLE_CSS"]

#: the statistics of a summary, in column order
STATS: tuple[str, ...] = ("mean", "ci_low", "ci_high", "n")

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
    """``1``, ``"3"``, ``"table2"`` -> the number of one of the paper's Tables 1-6."""
    s = str(table).lower().replace("table", "").strip()
    if not s.isdigit() or int(s) not in TABLES:
        raise ValueError(f"unknown table {table!r}; use 1-6 (the paper's Tables 1-6)")
    return int(s)


# ------------------------------------------------------------------------------ summary
def summarize(
    df: "pd.DataFrame",
    table: int | str | None = None,
    *,
    by: Sequence[str] | None = None,
    data: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> "pd.DataFrame":
    """Means over images with percentile-bootstrap confidence intervals, per ``by`` + metric.

    ``by`` (default: ``method``, ``layer``, with ``data`` first when the rows hold several
    data sets): the grouping columns, in first-seen order; layers are compared by
    :func:`~fgcam_lib.catalogue.layer_key` (``"features.13"`` = ``"13"``). Returns index
    ``by + ["metric"]``, columns ``mean``, ``ci_low``, ``ci_high``, ``n`` (images with a
    finite value: the Proportion of an all-zero map is NaN and left out).

    ``table=1..6``: the paper's Table 1-6 layout (rows and columns named as in the
    paper: "Grad-CAM", "Layer33", "A.D.", ...) with a last column level ``stat`` in
    (mean, ci_low, ci_high, n); cells not evaluated are NaN. ``data`` keeps the rows of
    one data set.

    Example:
        >>> s = summarize(df)                                 # one row per method, layer, metric
        >>> s.loc[("fg_grad_cam", "33", "average_drop")]        # a Series: mean, ci_low, ci_high, n
        >>> format_table(summarize(df, table=1))                # Table 1 as "mean ± half-width" text
    """
    if data is not None:
        df = df[df["data"] == data]
    if table is None:
        return _summary(df, by, confidence, n_resamples, seed)
    number = table_number(table)
    methods, layers, metrics = TABLES[number]
    sub = df[df["method"].isin(methods) & df["layer"].map(layer_key).isin(layers) & df["metric"].isin(metrics)]
    if "data" in sub.columns and sub["data"].nunique() > 1:
        raise ValueError(f"Table {number}'s rows come from several data sets {sorted(sub['data'].unique())}; "
                         "pass data=")
    return _paper_table(_summary(sub, ("method", "layer"), confidence, n_resamples, seed), number)


def _summary(df: "pd.DataFrame", by: Sequence[str] | None, confidence: float, n_resamples: int,
             seed: int) -> "pd.DataFrame":
    if by is None:
        by = (["data"] if "data" in df.columns and df["data"].nunique() > 1 else []) + ["method", "layer"]
    keys = list(by) + ["metric"]
    if "layer" in keys:
        df = df.assign(layer=df["layer"].map(layer_key))
    return group_ci(df, keys, confidence=confidence, n_resamples=n_resamples, seed=seed)


def group_ci(df: "pd.DataFrame", keys: Sequence[str], value: str = "value", *, confidence: float = 0.95,
             n_resamples: int = 2000, seed: int | np.random.Generator = 0) -> "pd.DataFrame":
    """Mean and percentile-bootstrap CI of column ``value`` per group of ``keys`` (first-seen order).

    Index ``keys``; columns ``mean``, ``ci_low``, ``ci_high``, ``n`` (finite values).
    ``seed``: an int (each group its own stream from it) or one Generator for all groups.

    Example:
        >>> group_ci(rows, ["method", "metric"]).loc[("lrp", "overall"), "mean"]
    """
    import pandas as pd

    keys = list(keys)
    out = [(*key, *mean_ci(g[value].to_numpy(dtype=float), confidence=confidence, n_resamples=n_resamples,
                           seed=seed))
           for key, g in df.groupby(keys, sort=False, dropna=False)]
    return pd.DataFrame(out, columns=keys + list(STATS)).set_index(keys)


def _cell(summary: "pd.DataFrame", method: str, layer: str, metric: str) -> list[float]:
    try:
        row = summary.loc[(method, layer, metric)]
    except KeyError:
        return [float("nan")] * 3 + [0]
    return [float(row[s]) for s in STATS]


def _paper_table(summary: "pd.DataFrame", number: int) -> "pd.DataFrame":
    """One of the paper's tables; the last column level is the statistic."""
    import pandas as pd

    methods, layers, metrics = TABLES[number]
    names = {m: method_label(m) for m in methods}
    lay = {layer: layer_label(layer) for layer in layers}
    lab = METRIC_LABELS
    if number == 1:  # rows: methods; columns: layer x metric
        cols = pd.MultiIndex.from_tuples([(lay[l], lab[k], s) for l in layers for k in metrics for s in STATS],
                                         names=["layer", "metric", "stat"])
        data = [[v for l in layers for k in metrics for v in _cell(summary, m, l, k)] for m in methods]
        return pd.DataFrame(data, index=pd.Index([names[m] for m in methods], name="method"), columns=cols)
    cols = pd.MultiIndex.from_tuples([(names[m], s) for m in methods for s in STATS], names=["method", "stat"])
    if number == 2:  # rows: layer x metric; columns: methods
        idx = pd.MultiIndex.from_tuples([(lay[l], lab[k]) for l in layers for k in metrics], names=["layer", "metric"])
        data = [[v for m in methods for v in _cell(summary, m, l, k)] for l in layers for k in metrics]
    elif number == 3:  # rows: layers
        idx = pd.Index([lay[l] for l in layers], name="layer")
        data = [[v for m in methods for v in _cell(summary, m, l, metrics[0])] for l in layers]
    else:  # Tables 4-6: rows: metrics at the input
        idx = pd.Index([lab[k] for k in metrics], name="metric")
        data = [[v for m in methods for v in _cell(summary, m, "input", k)] for k in metrics]
    return pd.DataFrame(data, index=idx, columns=cols)


# ------------------------------------------------------------------------------- text
def _as_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def format_table(table: "pd.DataFrame", digits: int | None = None) -> "pd.DataFrame":
    """Strings ``"mean ± half-width of the CI"`` in place of the statistics.

    For a paper table (last column level ``stat``) the ``stat`` level is dropped; for a
    :func:`summarize` frame the result has columns ``value`` and ``n``. ``digits=None``:
    :func:`~fgcam_lib.catalogue.metric_digits` (2 for A.D./A.I., 4 for fractions).

    Example:
        >>> print(format_table(summarize(df, table=4)).to_string())
        method          LRP          CLRP ...
        A.D.   25.48 ± 1.10  30.64 ± 1.31 ...
    """
    import pandas as pd

    if not isinstance(table.columns, pd.MultiIndex):
        vals = [format_ci(r["mean"], r["ci_low"], r["ci_high"], metric_digits(_as_tuple(k), digits))
                for k, r in table.iterrows()]
        return pd.DataFrame({"value": vals, "n": table["n"].to_numpy()}, index=table.index)
    outer = list(dict.fromkeys(c[:-1] for c in table.columns))
    data = {c: [format_ci(r[(*c, "mean")], r[(*c, "ci_low")], r[(*c, "ci_high")],
                          metric_digits(_as_tuple(k) + c, digits)) for k, r in table.iterrows()]
            for c in outer}
    out = pd.DataFrame(data, index=table.index)
    if table.columns.nlevels > 2:
        out.columns = pd.MultiIndex.from_tuples(outer, names=table.columns.names[:-1])
    else:
        out.columns = pd.Index([c[0] for c in outer], name=table.columns.names[0])
    return out


def format_summary(summary: "pd.DataFrame", rows: Sequence[str] = ("method", "layer"),
                   metrics: Sequence[str] | None = None, digits: int | None = None) -> "pd.DataFrame":
    """A :func:`summarize` frame as a table of ``"mean ± half-width of the CI"`` strings.

    Rows: the index levels ``rows`` (first-seen order); columns: ``metrics`` (default:
    all present), labelled as in the paper (A.D., Over-all, ...). ``digits=None``:
    :func:`~fgcam_lib.catalogue.metric_digits` (2 for A.D./A.I., 4 for fractions).

    Example:
        >>> format_summary(summarize(rows), metrics=["average_drop", "overall"])
                        A.D.             Over-all
        method layer
        fg_grad_cam 13  19.65 ± 1.02   0.4937 ± 0.0110
    """
    import pandas as pd

    s = summary.reset_index()
    metrics = list(dict.fromkeys(s["metric"])) if metrics is None else list(metrics)
    s = s[s["metric"].isin(metrics)]
    cells = [format_ci(r["mean"], r["ci_low"], r["ci_high"], metric_digits([r["metric"]], digits))
             for _, r in s.iterrows()]
    s = s.assign(cell=cells)
    table = s.pivot_table(index=list(rows), columns="metric", values="cell", aggfunc="first", sort=False)
    table = table[[m for m in metrics if m in table.columns]]
    table.columns = pd.Index([METRIC_LABELS.get(m, m) for m in table.columns], name=None)
    return table


def throughput_table(timing: Mapping[str, Mapping[str, float]] | "pd.DataFrame") -> "pd.DataFrame":
    """Images per second per method: maps, metrics and both (from ``df.attrs["throughput"]``).

    Example:
        >>> throughput_table(run_evaluation(...))["total img/s"]
    """
    import pandas as pd

    if isinstance(timing, pd.DataFrame):
        timing = timing.attrs.get("throughput", {})
    rows = []
    rate = lambda n, s: n / s if s > 0 else float("nan")  # noqa: E731
    for m, t in timing.items():
        rows.append({"method": m, "images": int(t["images"]), "maps img/s": rate(t["images"], t["explain_s"]),
                     "metrics img/s": rate(t["images"], t["metrics_s"]),
                     "total img/s": rate(t["images"], t["explain_s"] + t["metrics_s"])})
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


# ------------------------------------------------------------------------------- HTML
#: the compact look of :func:`styled` tables: (selector, CSS) pairs for ``Styler.set_table_styles``
TABLE_CSS: tuple[tuple[str, str], ...] = (
    ("", "border-collapse: collapse; font-size: 12px; margin: 0 0 1em 0"),
    ("caption", "caption-side: top; text-align: left; font-weight: bold; padding: 0 0 4px 0"),
    ("th, td", "padding: 2px 8px; white-space: nowrap; border: none"),
    ("thead th", "background: #f2f4f7; font-weight: 600; text-align: center; border-bottom: 1px solid #c8ccd2"),
    ("thead th.index_name", "text-align: left; font-weight: normal; color: #57606a"),
    ("th.row_heading", "text-align: left; font-weight: 600; background: #fafbfc"),
    ("td", "text-align: right; font-variant-numeric: tabular-nums"),
    ("tbody tr:nth-child(even) td", "background: #fafbfc"),
)


def _cell_text(v: Any, na_rep: str, float_format: str) -> str:
    """One cell as text: strings (``"25.48 ± 1.10"``) unchanged, ints as ints, floats by ``float_format``."""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)) or isinstance(v, numbers.Integral):
        return str(v)
    if isinstance(v, numbers.Real):
        return na_rep if np.isnan(v) else format(float(v), float_format)
    return na_rep if v is None else str(v)


@functools.cache
def _styler_class() -> type:
    """A ``Styler`` whose text form is the table as text (stable, unlike the default ``<... at 0x...>``).

    Built on first use so that importing this module does not import pandas.
    """
    from pandas.io.formats.style import Styler

    class StyledTable(Styler):
        """A Styler that prints as its (formatted) table: readable in a terminal, stable in saved notebooks."""

        text: str = ""

        def __repr__(self) -> str:
            return self.text

    return StyledTable


def styled(table: "pd.DataFrame", caption: str | None = None, *, na_rep: str = "NaN",
           float_format: str = ".5g") -> "pd.io.formats.style.Styler":
    """A table as a compact HTML ``Styler``: caption, light header, right-aligned cells.

    Cells that are text (``"mean ± half-width"`` from :func:`format_table`) stay as they
    are; floats are written with ``float_format`` (``".5g"``: round first for fewer
    digits), NaN as ``na_rep``. MultiIndex columns render as spanning headers; the row
    of index names is left out (the row labels say what they are). The HTML id comes
    from the caption and the cells, so saving the same table twice gives the same
    HTML, and the text form (``repr``) is the table as text.

    Example:
        >>> from IPython.display import display
        >>> display(styled(format_table(summarize(rows, table=4)), caption="Table 4 (ours)"))
        >>> html = styled(df.round(3)).to_html()
    """
    fmt = functools.partial(_cell_text, na_rep=na_rep, float_format=float_format)
    text_table = table.map(fmt)
    text = text_table.to_string()
    # a content-derived id: several tables in one notebook get different ids, a re-run the same
    key = hashlib.sha1(f"{caption}\n{text}\n{list(table.columns.names)}".encode()).hexdigest()[:10]
    st = _styler_class()(table, uuid=key, cell_ids=False)
    st.text = f"{caption}\n{text}" if caption else text
    st.format(fmt)
    st.hide(axis="index", names=True)
    st.set_table_styles([{"selector": sel, "props": css} for sel, css in TABLE_CSS])
    # inline too: JupyterLab drops <style> blocks from untrusted outputs but keeps style attributes
    st.set_table_attributes('style="border-collapse: collapse; font-size: 12px"')
    if caption:
        st.set_caption(caption)
    return st
