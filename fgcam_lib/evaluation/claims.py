"""The orderings the FG-CAM paper states (each backed by its own published table), and whether
they hold on our rows: one model (:func:`check_claims`), every pair of methods in a table
(:func:`pairwise_agreement`), several models side by side (:func:`check_orderings`,
:func:`orderings_table`).

    >>> from fgcam_lib.evaluation.claims import CLAIMS, check_claims, check_orderings, orderings_table
    >>> check_claims(df)                            # which of the paper's orderings hold here
    >>> check_claims(df, layers=["layer3", "layer2", "layer1"])   # the same on a ResNet's layers
    >>> orderings_table({"bundled": check_orderings(test_rows, loc_rows)})   # one column per model
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..catalogue import METRIC_LABELS, PAPER_LAYERS, layer_label, method_label
from .published import (LOWER_IS_BETTER, compare_table, paper_layer_map, published_value, result_cells,
                        to_paper_layers)
from .stats import bootstrap_ci

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Claim", "CLAIMS", "check_claims", "pairwise_agreement", "check_orderings", "orderings_table", "NOT_RUN"]


# --------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """An ordering the paper reports: ``a`` beats ``b`` on ``metric`` (per its numbers).

    ``a`` and ``b`` are ``(method, layer)``; which direction is "better" follows
    :data:`LOWER_IS_BETTER`. ``table``: the paper's table the numbers come from;
    ``text``: what the paper says.
    """

    table: int
    metric: str
    a: tuple[str, str]
    b: tuple[str, str]
    text: str

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def describe(self, layers: Mapping[str, str] | None = None) -> str:
        """``"FG-Grad-CAM@Layer13 < Grad-CAM@Layer13 on A.D."``; ``layers`` renames the paper's
        layer keys (``{"13": "layer1", ...}``: the layers that stand for them on another model)."""
        names = dict(layers or {})

        def side(ml: tuple[str, str]) -> str:
            m, l = ml
            return f"{method_label(m)}@{'input' if l == 'input' else layer_label(names.get(l, l))}"

        sign = "<" if self.lower_is_better else ">"
        return f"{side(self.a)} {sign} {side(self.b)} on {METRIC_LABELS.get(self.metric, self.metric)}"


def _claims() -> tuple[Claim, ...]:
    out: list[Claim] = []
    for layer in PAPER_LAYERS:  # "FG-CAM performs better than other methods in both shallow and intermediate layers"
        for fg, base in (("fg_grad_cam", "grad_cam"), ("fg_score_cam", "score_cam")):
            out.append(Claim(1, "average_drop", (fg, layer), (base, layer),
                             "Table 1: FG-CAM has a lower A.D. than its CAM base at every layer"))
            out.append(Claim(2, "overall", (fg, layer), (base, layer),
                             "Table 2: whether FG-CAM is used or not makes a huge difference (Over-all)"))
        out.append(Claim(2, "overall", ("fg_grad_cam", layer), ("layer_cam", layer),
                         "Table 2: FG-Grad-CAM achieves a higher Over-all than Layer-CAM"))
        out.append(Claim(3, "proportion", ("fg_grad_cam", layer), ("grad_cam", layer),
                         "Table 3: FG-CAM locates the object better than the CAM it extends"))
        out.append(Claim(3, "proportion", ("fg_grad_cam_denoise", layer), ("fg_grad_cam", layer),
                         "Table 3: FG-CAM with denoising performs significantly better than FG-CAM"))
    out.append(Claim(1, "average_drop", ("fg_grad_cam", "13"), ("layer_cam", "13"),
                     "Table 1: in Layer13 FG-Grad-CAM outperforms other methods by a large margin"))
    out.append(Claim(2, "overall", ("grad_cam", "33"), ("grad_cam", "13"),
                     "Table 2: Grad-CAM's Over-all decreases as the layer gets shallower"))
    out.append(Claim(2, "overall", ("score_cam", "33"), ("score_cam", "13"),
                     "Table 2: Score-CAM's Over-all decreases as the layer gets shallower"))
    for other in ("lrp", "clrp", "sglrp"):
        out.append(Claim(4, "average_drop", ("fg_grad_cam", "input"), (other, "input"),
                         "Table 4: FG-CAM is significantly better than LRP and its variants (A.D.)"))
        out.append(Claim(5, "overall", ("fg_grad_cam", "input"), (other, "input"),
                         "Table 5: FG-CAM outperforms LRP and its variants (Over-all)"))
    out.append(Claim(5, "overall", ("lrp", "input"), ("sglrp", "input"),
                     "Table 5: SGLRP's Over-all is the lowest; LRP is higher"))
    out.append(Claim(6, "proportion", ("fg_grad_cam", "input"), ("lrp", "input"),
                     "Table 6: FG-CAM is also better than LRP (Proportion)"))
    out.append(Claim(6, "proportion", ("fg_grad_cam_denoise", "input"), ("clrp", "input"),
                     "Table 6: the Proportion of FG-CAM with denoising is significantly higher than others"))
    return tuple(out)


#: the paper's headline orderings, each backed by its own table's numbers
CLAIMS: tuple[Claim, ...] = _claims()


def _paired_values(cells: "pd.DataFrame", claim: Claim) -> tuple[np.ndarray, np.ndarray]:
    """Per-image values of both sides on the images where both exist."""
    def side(ml: tuple[str, str]) -> "pd.Series":
        m, l = ml
        s = cells[(cells["method"] == m) & (cells["layer"] == l) & (cells["metric"] == claim.metric)]
        return s.groupby("image_id")["value"].mean()

    a, b = side(claim.a), side(claim.b)
    both = a.index.intersection(b.index)
    va, vb = a.loc[both].to_numpy(float), b.loc[both].to_numpy(float)
    ok = np.isfinite(va) & np.isfinite(vb)
    return va[ok], vb[ok]


def check_claims(
    df: "pd.DataFrame",
    claims: Iterable[Claim] = CLAIMS,
    *,
    layers: Sequence[str | int] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> "pd.DataFrame":
    """Which of the paper's orderings hold in our evaluation rows.

    For each claim, the per-image advantage of ``a`` over ``b`` (``a - b``, sign flipped
    where lower is better, so positive = the paper's direction) on the images both were
    evaluated on, its mean and a paired percentile-bootstrap CI. ``verdict``:
    ``"holds"`` (mean advantage > 0), ``"reversed"`` (< 0), ``"tie"``, or
    ``"not evaluated"``; ``clear``: the CI excludes 0. Columns: ``claim`` (with the model's
    layer names), ``paper_claim`` (with the paper's), ``table``, ``paper_a``, ``paper_b``,
    ``ours_a``, ``ours_b``, ``advantage``, ``ci_low``, ``ci_high``, ``n``, ``verdict``,
    ``clear``, ``text``.

    ``layers``: the model's three CAM layers standing for the paper's Layer33/23/13 (deepest
    first, e.g. ``paper_layers(resnet)`` = ``["layer3", "layer2", "layer1"]``); default the
    paper's own.

    Example:
        >>> check_claims(rows, layers=["layer3", "layer2", "layer1"]).loc[0, "claim"]
        'FG-Grad-CAM@layer3 < Grad-CAM@layer3 on A.D.'
    """
    import pandas as pd

    mapping = paper_layer_map(layers)
    names = {v: k for k, v in mapping.items()}
    cells = to_paper_layers(result_cells(df), layers)
    rows = []
    for c in claims:
        va, vb = _paired_values(cells, c)
        sign = -1.0 if c.lower_is_better else 1.0
        adv = sign * (va - vb)
        mean, lo, hi = bootstrap_ci(adv, confidence=confidence, n_resamples=n_resamples, seed=seed)
        if not adv.size:
            verdict = "not evaluated"
        elif mean > 0:
            verdict = "holds"
        elif mean < 0:
            verdict = "reversed"
        else:
            verdict = "tie"
        clear = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
        rows.append({
            "claim": c.describe(names), "paper_claim": c.describe(), "table": c.table,
            "paper_a": published_value(*c.a, c.metric), "paper_b": published_value(*c.b, c.metric),
            "ours_a": float(va.mean()) if va.size else float("nan"),
            "ours_b": float(vb.mean()) if vb.size else float("nan"),
            "advantage": mean, "ci_low": lo, "ci_high": hi, "n": int(adv.size),
            "verdict": verdict, "clear": clear, "text": c.text,
        })
    return pd.DataFrame(rows)


def pairwise_agreement(df: "pd.DataFrame", table: int | str) -> "pd.DataFrame":
    """For every pair of methods in a table cell row, does our ordering match the paper's?

    Per (layer, metric) of the table, all pairs of methods we evaluated are compared by
    mean; returns one row per (layer, metric): ``pairs``, ``agree`` (same ordering as the
    paper's numbers), ``share`` and Kendall's tau between the paper's and our method
    ranking (``scipy.stats.kendalltau``; NaN with fewer than 3 methods).
    """
    import pandas as pd
    from scipy.stats import kendalltau

    comp = compare_table(df, table, n_resamples=2)
    rows = []
    for (layer, metric), g in comp.groupby(level=["layer", "metric"], sort=False):
        g = g[np.isfinite(g["ours"])]
        p, o = g["paper"].to_numpy(), g["ours"].to_numpy()
        pairs = agree = 0
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if p[i] == p[j]:
                    continue
                pairs += 1
                agree += int(np.sign(p[i] - p[j]) == np.sign(o[i] - o[j]))
        tau = float(kendalltau(p, o).statistic) if len(g) >= 3 else float("nan")
        rows.append({"layer": layer, "metric": metric, "methods": len(g), "pairs": pairs, "agree": agree,
                     "share": agree / pairs if pairs else float("nan"), "kendall_tau": tau})
    return pd.DataFrame(rows).set_index(["layer", "metric"])


# ----------------------------------------------------------------- orderings on several models
#: what a claim's cell says when a metric has no stored rows for a model
NOT_RUN = "not run"
_LOC_TABLES = (3, 6)  # claims scored on the localization split; the others on the faithfulness split


def check_orderings(
    test_rows: "pd.DataFrame | None",
    loc_rows: "pd.DataFrame | None",
    layers: Sequence[str | int] | None = None,
    claims: Iterable[Claim] = CLAIMS,
    *,
    seed: int = 0,
    n_resamples: int = 2000,
) -> "pd.DataFrame":
    """:func:`check_claims` for one model: claims of Tables 1, 2, 4, 5 on ``test_rows`` (the
    faithfulness split), of Tables 3 and 6 on ``loc_rows`` (the localization split).

    Either may be None or empty (nothing stored): its claims come back ``"not evaluated"``
    with ``n`` 0, never scored on the other split's rows. ``layers``: the model's CAM layers
    (see :func:`check_claims`). Same columns as :func:`check_claims`, in ``claims``' order.

    Example:
        >>> check_orderings(read_results(test_path), None, ["layer3", "layer2", "layer1"])
    """
    import pandas as pd

    from .store import empty_rows

    claims = list(claims)
    parts = []
    for rows, in_loc in ((test_rows, False), (loc_rows, True)):
        mine = [c for c in claims if (c.table in _LOC_TABLES) == in_loc]
        if mine:
            rows = empty_rows() if rows is None else rows
            parts.append(check_claims(rows, mine, layers=layers, seed=seed, n_resamples=n_resamples))
    out = pd.concat(parts, ignore_index=True)
    order = {c.describe(): i for i, c in enumerate(claims)}
    return out.sort_values("paper_claim", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _verdict_cell(r: Any) -> str:
    """``"holds, clear: +57.27 (n=500)"``, ``"reversed: -0.0012 (n=100)"`` or :data:`NOT_RUN`."""
    if r.verdict == "not evaluated" or not r.n:
        return NOT_RUN
    return f"{r.verdict}{', clear' if r.clear else ''}: {r.advantage:+.4g} (n={r.n})"


def orderings_table(by_model: Mapping[str, "pd.DataFrame"]) -> "pd.DataFrame":
    """One row per claim (the paper's wording), one column per model, each cell the verdict,
    the mean per-image advantage in the paper's direction (A.D./A.I. in percentage points) and
    the number of images, or :data:`NOT_RUN` where the model has no stored rows for it.

    ``by_model``: model name -> :func:`check_orderings` (or :func:`check_claims`) result.

    Example:
        >>> orderings_table({"bundled": check_orderings(t, l), "bundled_resnet": check_orderings(t2, l2, lay)})
    """
    import pandas as pd

    cols = {}
    for name, checked in by_model.items():
        cols[name] = pd.Series([_verdict_cell(r) for r in checked.itertuples()],
                               index=pd.Index(checked["paper_claim"], name="claim (the paper's layers)"))
    table = pd.DataFrame(cols)
    first = next(iter(by_model.values()))
    table.insert(0, "table", first.set_index("paper_claim")["table"].reindex(table.index).to_numpy())
    return table
