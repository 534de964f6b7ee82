"""The paper's published numbers (fgcam_lib.evaluation.published) and the helpers that compare ours with them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fgcam_lib.evaluation.claims as C
import fgcam_lib.evaluation.published as P
from fgcam_lib.data.fingerprint import model_fingerprint
from fgcam_lib.evaluation.store import results_path, stored_prefix
from fgcam_lib.evaluation.store import COLUMNS, ResultStore
from fgcam_lib.methods import PAPER_CAM_METHODS, PAPER_INPUT_METHODS


# ------------------------------------------------------------------------ published data
def test_every_cell_of_every_table_is_there():
    df = P.published()
    sizes = df.groupby("table").size().to_dict()
    assert sizes == {1: 7 * 3 * 2, 2: 7 * 3 * 3, 3: 7 * 3, 4: 7 * 2, 5: 7 * 3, 6: 7}
    assert not df.duplicated(["table", "method", "layer", "metric"]).any()
    assert df["value"].notna().all()


def test_values_quoted_in_the_text():
    # "in Layer13, FG-Grad-CAM achieves 19.65 A.D. and 32.35 A.I." (Table 1)
    assert P.published_value("fg_grad_cam", 13, "average_drop") == 19.65
    assert P.published_value("fg_grad_cam", "features.13", "average_increase") == 32.35
    # "in Layer13, FG-Grad-CAM and FG-Score-CAM have Over-all scores 0.42958 and 0.25348 higher
    # than Grad-CAM and Score-CAM" (Table 2)
    v = lambda m, l, k: P.published_value(m, l, k)  # noqa: E731
    assert v("fg_grad_cam", "13", "overall") - v("grad_cam", "13", "overall") == pytest.approx(0.42958, abs=1e-9)
    assert v("fg_score_cam", "13", "overall") - v("score_cam", "13", "overall") == pytest.approx(0.25348, abs=1e-9)
    # "FG-Grad-CAM's Over-all score is 0.0672 higher than LRP and 0.22749 higher than SGLRP" (Table 5)
    assert v("fg_grad_cam", "input", "overall") - v("lrp", "input", "overall") == pytest.approx(0.0672, abs=1e-9)
    assert v("fg_grad_cam", "input", "overall") - v("sglrp", "input", "overall") == pytest.approx(0.22749, abs=1e-9)


def test_overall_is_insertion_minus_deletion_in_tables_2_and_5():
    df = P.published()
    for t in (2, 5):
        w = df[df["table"] == t].pivot_table(index=["method", "layer"], columns="metric", values="value")
        assert np.allclose(w["insertion"] - w["deletion"], w["overall"], atol=1.5e-5), t


def test_unknown_cells_and_tables_raise():
    with pytest.raises(KeyError):
        P.published_value("grad_cam", "input", "overall")  # Grad-CAM is not defined at the input
    with pytest.raises(ValueError, match="Tables 1-6"):
        P.published(7)


def test_published_wide_has_the_papers_layout():
    t2 = P.published_wide(2)
    assert list(t2.index.get_level_values(0).unique()) == ["Layer33", "Layer23", "Layer13"]
    assert list(t2.columns)[:3] == ["Grad-CAM", "FG-Grad-CAM", "FG-Grad-CAM (denoising)"]
    assert t2.loc[("Layer13", "Over-all"), "Layer-CAM"] == 0.42879
    t6 = P.published_wide("Table 6")
    assert t6.shape == (1, 7) and t6.iloc[0]["FG-Score-CAM (denoising)"] == 0.66983


def test_every_claim_is_backed_by_the_papers_own_numbers():
    for c in C.CLAIMS:
        a, b = P.published_value(*c.a, c.metric), P.published_value(*c.b, c.metric)
        assert (a < b) if c.lower_is_better else (a > b), c.describe()
        assert c.table in P.TABLE_SOURCES


# ---------------------------------------------------------------------------- our rows
def _rows(values: dict[tuple[str, str, str], list[float]], data: str = "benchmark:test") -> pd.DataFrame:
    """Tidy rows as run_evaluation writes them: one value per image for each (method, layer, metric)."""
    rows = []
    for (m, l, k), vs in values.items():
        for i, v in enumerate(vs):
            rows.append((data, str(i), i, 0, 0, m, l, k, v))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_compare_table_means_and_missing_cells():
    df = _rows({("fg_grad_cam", "input", "overall"): [0.5, 0.7, 0.6],
                ("lrp", "input", "overall"): [0.1, 0.2, float("nan")]})
    c = P.compare_table(df, 5, n_resamples=200)
    assert len(c) == 3 * 7
    r = c.loc[("input", "overall", "fg_grad_cam")]
    assert r["paper"] == 0.52089 and r["ours"] == pytest.approx(0.6) and r["n"] == 3
    assert r["ci_low"] <= 0.6 <= r["ci_high"]
    assert c.loc[("input", "overall", "lrp"), "n"] == 2  # NaN dropped
    missing = c.loc[("input", "insertion", "sglrp")]
    assert np.isnan(missing["ours"]) and missing["n"] == 0
    assert c.loc[("input", "deletion", "lrp"), "better"] == "lower"


def test_compare_table_rejects_mixed_data_sets():
    df = pd.concat([_rows({("lrp", "input", "overall"): [0.1]}, "a"), _rows({("lrp", "input", "overall"): [0.1]}, "b")])
    with pytest.raises(ValueError, match="several data sets"):
        P.compare_table(df, 5)


def test_format_comparison_cells():
    df = _rows({("fg_grad_cam", "13", "average_drop"): [10.0, 20.0, 30.0]})
    text = P.format_comparison(P.compare_table(df, 1, n_resamples=200))
    cell = text.loc[("Layer13", "A.D."), "FG-Grad-CAM"]
    assert cell.startswith("20.00 ± ") and cell.endswith("(19.65)")
    assert text.loc[("Layer13", "A.D."), "Grad-CAM"] == "n/a (83.80)"


def test_check_claims_verdicts_are_paired_and_directional():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.3, 20)
    df = _rows({
        ("fg_grad_cam", "13", "overall"): list(base + 0.3),     # clearly above Grad-CAM: holds
        ("grad_cam", "13", "overall"): list(base),
        ("fg_grad_cam", "13", "average_drop"): list(base * 100 + 5),  # higher A.D. is worse: reversed
        ("grad_cam", "13", "average_drop"): list(base * 100),
    })
    out = C.check_claims(df).set_index("claim")
    holds = out.loc["FG-Grad-CAM@Layer13 > Grad-CAM@Layer13 on Over-all"]
    assert holds["verdict"] == "holds" and holds["clear"] and holds["n"] == 20
    assert holds["advantage"] == pytest.approx(0.3)
    rev = out.loc["FG-Grad-CAM@Layer13 < Grad-CAM@Layer13 on A.D."]
    assert rev["verdict"] == "reversed" and rev["clear"] and rev["advantage"] == pytest.approx(-5.0)
    assert (out["verdict"] == "not evaluated").sum() == len(C.CLAIMS) - 2


def test_pairwise_agreement_is_perfect_on_the_papers_numbers():
    pub = P.published(2)
    df = _rows({(m, l, k): [v, v] for _, m, _, l, k, v in pub.itertuples(index=False)})
    agree = C.pairwise_agreement(df, 2)
    assert (agree["share"] == 1.0).all() and np.allclose(agree["kendall_tau"], 1.0)
    assert (agree["pairs"] == 21).all()


# ------------------------------------------------------------------------ result files
def test_model_fingerprint_tracks_the_weights(tiny_vgg):
    import copy

    other = copy.deepcopy(tiny_vgg)
    assert model_fingerprint(tiny_vgg) == model_fingerprint(other)
    with torch.no_grad():
        other.classifier[1].weight[0, 0] += 1e-3
    assert model_fingerprint(tiny_vgg) != model_fingerprint(other)
    path = results_path("benchmark:test", tiny_vgg, root="res")
    assert path.parent.name == "res" and path.name.startswith("bench_benchmark_test_") and path.suffix == ".parquet"


def test_stored_prefix_counts_complete_leading_images(tmp_path):
    out = tmp_path / "bench.parquet"
    assert stored_prefix(out, "d", ["grad_cam"], ["13"], ["overall"]) == 0
    full = {("grad_cam", "13", "overall"): [0.1] * 5, ("lrp", "input", "overall"): [0.2] * 5}
    rows = _rows(full, "d")
    rows = rows[~((rows["method"] == "lrp") & (rows["index"] == 3))]  # image 3 lacks LRP
    ResultStore(out).append(rows)
    assert stored_prefix(out, "d", ["grad_cam"], ["13"], ["overall"]) == 5
    assert stored_prefix(out, "d", ["lrp"], ["input"], ["overall"]) == 3
    # methods x layers, as run_evaluation computes them: LRP at layer 13 is wanted too, and absent
    assert stored_prefix(out, "d", ["grad_cam", "lrp"], ["13", "input"], ["overall"]) == 0
    # a CAM at the input is not required; an absent metric is
    assert stored_prefix(out, "d", ["grad_cam"], ["13", "input"], ["overall"]) == 5
    assert stored_prefix(out, "d", ["grad_cam"], ["13"], ["overall", "insertion"]) == 0
    assert stored_prefix(out, "other", ["grad_cam"], ["13"], ["overall"]) == 0


def test_tables_cover_the_registry_order():
    from fgcam_lib.evaluation.tables import TABLES

    assert P.TABLES[1][0] == PAPER_CAM_METHODS and P.TABLES[4][0] == PAPER_INPUT_METHODS
    assert P.TABLES == TABLES  # the same layouts as evaluate.summarize(table=k)




def test_another_models_layers_stand_for_the_papers():
    assert P.paper_layer_map(["layer3", "layer2", "layer1"]) == {"layer3": "33", "layer2": "23", "layer1": "13"}
    with pytest.raises(ValueError, match="three CAM layers"):
        P.paper_layer_map(["layer3", "input", "layer1"])
    rows = pd.DataFrame({"layer": ["layer1", "layer3", "input"], "value": [1.0, 2.0, 3.0]})
    assert list(P.to_paper_layers(rows, ["layer3", "layer2", "layer1"])["layer"]) == ["13", "33", "input"]
    clash = pd.DataFrame({"layer": ["layer1", "13"], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match="cannot also stand"):
        P.to_paper_layers(clash, ["layer3", "layer2", "layer1"])


def test_orderings_on_a_resnets_layers_and_per_split():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.3, 12)
    test_rows = _rows({("fg_grad_cam", "layer1", "overall"): list(base + 0.2),
                       ("grad_cam", "layer1", "overall"): list(base)})
    checked = C.check_orderings(test_rows, None, ["layer3", "layer2", "layer1"])
    row = checked.set_index("paper_claim").loc["FG-Grad-CAM@Layer13 > Grad-CAM@Layer13 on Over-all"]
    assert row["claim"] == "FG-Grad-CAM@layer1 > Grad-CAM@layer1 on Over-all"
    assert row["verdict"] == "holds" and row["clear"] and row["advantage"] == pytest.approx(0.2)
    loc = checked[checked["table"].isin([3, 6])]
    assert (loc["verdict"] == "not evaluated").all() and (loc["n"] == 0).all()  # no loc rows: never scored
    table = C.orderings_table({"resnet": checked})
    assert table.loc["FG-Grad-CAM@Layer13 > Grad-CAM@Layer13 on Over-all", "resnet"].startswith("holds, clear: +0.2")
    assert (table.loc[table["table"] == 3, "resnet"] == C.NOT_RUN).all()
