"""Method registry, evaluation runner (rows, resume), summaries and the command line.

Everything runs on a random-init narrow BundledVGG at 64 x 64 (last feature map 2 x 2,
features.33 4 x 4) and a few synthetic scenes; insertion/deletion use 16 steps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fgcam_lib.evaluation import metrics as M
from fgcam_lib.evaluation.cli import main
from fgcam_lib.catalogue import METRIC_GROUPS
from fgcam_lib.evaluation.runner import run_evaluation
from fgcam_lib.evaluation.scoring import CleanLogitsCache
from fgcam_lib.evaluation.store import COLUMNS, read_results
from fgcam_lib.evaluation.tables import format_table, summarize, throughput_table
from fgcam_lib.methods import (
    METHODS, PAPER_CAM_METHODS, PAPER_INPUT_METHODS, is_signed, label, make_explainer, method_layers, supports,
)
from fgcam_lib.data.models import BundledVGG, Preprocess, scaled_cfg
from fgcam_lib.data.scenes import SyntheticScenes

SIZE = 64
FAST = {"insdel": {"step": 256}}  # 16 steps at 64 x 64
KEY = ["data", "image_id", "method", "layer", "metric"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return BundledVGG(scaled_cfg(16), n_classes=8).eval()


@pytest.fixture(scope="module")
def pre() -> Preprocess:
    return Preprocess(SIZE)


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes("pairs", 6, size=SIZE)


def _run(model, pre, scenes, **kw) -> pd.DataFrame:
    args = {"methods": ["grad_cam", "fg_grad_cam_denoise", "lrp"], "layers": [33, "input"],
            "metrics": ["adai", "insdel", "proportion"], "n": 4, "batch_size": 2, "progress": False,
            "metric_kwargs": FAST, **kw}
    return run_evaluation(model, pre, scenes, **args)


# ------------------------------------------------------------------------------ registry
def test_registry_names_labels_and_signs():
    assert set(METHODS) == {
        "grad_cam", "score_cam", "layer_cam", "grad_cam_pp", "xgrad_cam", "fg_grad_cam", "fg_grad_cam_denoise",
        "fg_score_cam", "fg_score_cam_denoise", "fg_grad_cam_pp", "fg_xgrad_cam", "lrp", "clrp", "sglrp", "cp_lrp",
        "attn_lrp"}
    assert [label(m) for m in PAPER_CAM_METHODS] == [
        "Grad-CAM", "FG-Grad-CAM", "FG-Grad-CAM (denoising)", "Score-CAM", "FG-Score-CAM",
        "FG-Score-CAM (denoising)", "Layer-CAM"]
    assert [label(m) for m in PAPER_INPUT_METHODS][:3] == ["LRP", "CLRP", "SGLRP"]
    assert is_signed("lrp", "input") and is_signed("fg_score_cam", -1) and is_signed("sglrp", "-1")
    assert not is_signed("fg_grad_cam", 33) and not is_signed("lrp", "features.13")
    assert not is_signed("grad_cam", "input")
    assert not supports("grad_cam", "input") and supports("fg_grad_cam", "input") and supports("lrp", "input")
    with pytest.raises(ValueError, match="unknown method"):
        make_explainer("nope", torch.nn.Sequential())


def test_registry_layers_and_settings(model):
    cam_layers = method_layers("grad_cam", model)
    assert "input" not in cam_layers and cam_layers[-1] == "features.43"
    assert method_layers("fg_grad_cam", model)[0] == "input"
    assert method_layers("fg_grad_cam", model)[-1] == "features.43"
    assert method_layers("lrp", model)[-1] == "classifier.1"
    assert not supports("grad_cam", "classifier.1", model) and supports("lrp", "classifier.1", model)
    with pytest.raises(ValueError, match="nonsense"):
        supports("fg_grad_cam", "nonsense", model)
    assert make_explainer("score_cam", model).variant == "paper"
    assert make_explainer("fg_score_cam", model).score_cam_variant == "paper"
    assert make_explainer("fg_grad_cam_denoise", model).denoise == 0.1
    assert make_explainer("fg_grad_cam", model, denoise=0.2).denoise == 0.2
    # the preprocess' mean/std set the canonical preset's pixel bounds
    e = make_explainer("lrp", model, preprocess=Preprocess(SIZE, (0.5,) * 3, (0.5,) * 3), rules="canonical")
    low, high = e.preset.rules["input"].bounds(torch.zeros(1, 3, 2, 2))
    assert torch.allclose(low, torch.tensor(-1.0)) and torch.allclose(high, torch.tensor(1.0))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_maps_at_its_layers(name, model):
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    explainer = make_explainer(name, model)
    layers = [layer for layer in (33, 13, "input") if supports(name, layer, model)]
    maps = explainer(x, layer=layers)
    expected = {33: (1, 4, 4), 13: (1, 16, 16), "input": (1, SIZE, SIZE)}
    assert {k: tuple(v.shape) for k, v in maps.items()} == {k: expected[k] for k in layers}
    assert all(torch.isfinite(v).all() for v in maps.values())
    if METHODS[name].family == "cam":
        assert layers == [33, 13]
        with pytest.raises(ValueError, match="not defined at the input"):
            explainer(x, layer="input")
    else:
        assert "input" in layers


def test_score_cam_and_fg_score_cam_share_weights(model):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    a = make_explainer("score_cam", model)(x, layer=43)
    b = make_explainer("fg_score_cam", model)(x, layer=43)
    torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------------- runner
def test_clean_logits_cache_answers_views_and_copies(model):
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        cache = CleanLogitsCache(model, x, logits)
        assert cache(x[1:]) is not None and cache.calls == 0
        torch.testing.assert_close(cache(x[1:]), logits[1:])
        torch.testing.assert_close(cache(x[:2].clone()), logits[:2])
        other = x.flip(-1)
        torch.testing.assert_close(cache(other), model(other))
        assert cache.calls == 1


def test_runner_rows_and_ranges(model, pre, scenes):
    df = _run(model, pre, scenes, data_name="pairs")
    assert list(df.columns) == list(COLUMNS)
    combos = {("grad_cam", "33"), ("fg_grad_cam_denoise", "33"), ("fg_grad_cam_denoise", "input"),
              ("lrp", "33"), ("lrp", "input")}
    metrics = {m for g in ("adai", "insdel", "proportion") for m in METRIC_GROUPS[g]}
    assert set(zip(df["method"], df["layer"])) == combos
    assert len(df) == len(combos) * len(metrics) * 4
    assert not df.duplicated(KEY).any()
    assert set(df["image_id"]) == {"0", "1", "2", "3"} and set(df["data"]) == {"pairs"}
    v = df.set_index("metric")["value"]
    assert v.loc["average_drop"].between(0, 100).all()
    assert v.loc["average_increase"].isin([0.0, 100.0]).all()
    for m in ("insertion", "deletion"):
        assert v.loc[m].between(0, 1).all()
    assert v.loc["overall"].between(-1, 1).all()
    for m in ("proportion", "proportion_mask", "pointing_game"):
        assert v.loc[m].dropna().between(0, 1).all()
    assert v.loc["proportion"].notna().sum() > 0
    # targets: the top-1 class on the clean image
    x = pre(torch.stack([scenes[i]["image"] for i in range(4)]))
    with torch.no_grad():
        top1 = model(x).argmax(1).tolist()
    first = df.drop_duplicates("image_id").sort_values("index")
    assert first["target"].tolist() == top1
    assert first["label"].tolist() == [scenes[i]["label"] for i in range(4)]
    assert set(df.attrs["throughput"]) == {"grad_cam", "fg_grad_cam_denoise", "lrp"}
    assert df.attrs["computed_images"] == 4
    assert list(throughput_table(df).columns) == ["images", "maps img/s", "metrics img/s", "total img/s"]


def test_runner_matches_the_metrics_with_the_signed_rule(model, pre, scenes, monkeypatch):
    seen = []
    real = M.average_drop_increase

    def spy(*args, **kw):
        seen.append(kw["signed"])
        return real(*args, **kw)

    monkeypatch.setattr(M, "average_drop_increase", spy)
    df = _run(model, pre, scenes, methods=["clrp"], layers=[33, "input"], metrics=["adai"], n=2)
    assert sorted(seen) == [False, True]  # signed at the input only
    x = pre(torch.stack([scenes[i]["image"] for i in range(2)]))
    maps = make_explainer("clrp", model, preprocess=pre)(x, layer="input", signed=True)
    assert (maps < 0).any()
    ref = real(model, x, maps, signed=True, seed=0)
    got = df[(df["metric"] == "average_drop") & (df["layer"] == "input")].sort_values("index")["value"]
    np.testing.assert_allclose(got.to_numpy(), ref.drop.double().numpy(), rtol=1e-5, atol=1e-6)


def test_resume_adds_only_missing_images_and_rows(model, pre, scenes, tmp_path):
    out = tmp_path / "res.parquet"
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = _run(model, pre, scenes, n=2, out=out)
        assert first.attrs["computed_images"] == 2
        second = _run(model, pre, scenes, n=4, out=out)
        assert second.attrs["computed_images"] == 2
        assert len(second) == 2 * len(first)
        calls.clear()
        third = _run(model, pre, scenes, n=4, out=out)
        assert third.attrs["computed_images"] == 0 and not calls
    finally:
        hook.remove()
    stored = read_results(out)
    assert len(stored) == len(third) and not stored.duplicated(KEY).any()
    # same values as one uninterrupted run (CSV this time)
    fresh = _run(model, pre, scenes, n=4, out=tmp_path / "res.csv")
    a = stored.sort_values(KEY).reset_index(drop=True)
    b = read_results(tmp_path / "res.csv").sort_values(KEY).reset_index(drop=True)
    assert len(b) == len(fresh) == len(a)
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-6, atol=1e-9, equal_nan=True)
    # a new method only adds its own rows
    more = _run(model, pre, scenes, n=4, out=out, methods=["grad_cam", "fg_grad_cam_denoise", "lrp", "layer_cam"])
    stored = read_results(out)
    assert not stored.duplicated(KEY).any()
    assert len(stored) - len(a) == (stored["method"] == "layer_cam").sum() == 4 * 8
    assert len(more) == len(stored)
    with pytest.raises(ValueError, match="other settings"):
        _run(model, pre, scenes, n=4, out=out, seed=1)


# ----------------------------------------------------------------------------- summaries
def _synthetic_rows(n: int = 30) -> pd.DataFrame:
    """Rows for the paper's methods at their layers and metrics, random per-image values."""
    rng = np.random.default_rng(0)
    combos = [(m, layer) for m in PAPER_CAM_METHODS for layer in ("33", "23", "13")]
    combos += [(m, "input") for m in PAPER_INPUT_METHODS]
    metrics = ("average_drop", "average_increase", "insertion", "deletion", "overall", "proportion")
    rows = [("d", str(i), i, 0, 0, method, layer, metric, (100.0 if metric.startswith("average") else 1.0) * rng.random())
            for method, layer in combos for metric in metrics for i in range(n)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_summary_means_and_intervals():
    df = _synthetic_rows()
    s = summarize(df, n_resamples=500)
    assert list(s.columns) == ["mean", "ci_low", "ci_high", "n"]
    assert s.index.names == ["method", "layer", "metric"]
    assert (s["ci_low"] <= s["mean"]).all() and (s["mean"] <= s["ci_high"]).all()
    assert (s["n"] == 30).all()
    g = df[(df.method == "lrp") & (df.layer == "input") & (df.metric == "insertion")]["value"]
    assert s.loc[("lrp", "input", "insertion"), "mean"] == pytest.approx(g.mean())
    pd.testing.assert_frame_equal(s, summarize(df, n_resamples=500))  # seeded
    formatted = format_table(s)
    assert list(formatted.columns) == ["value", "n"] and " ± " in formatted["value"].iloc[0]


def test_paper_table_layouts():
    df = _synthetic_rows()
    cam_labels = [label(m) for m in PAPER_CAM_METHODS]
    input_labels = ["LRP", "CLRP", "SGLRP", "FG-Grad-CAM", "FG-Grad-CAM (denoising)", "FG-Score-CAM",
                    "FG-Score-CAM (denoising)"]
    t1 = summarize(df, table=1)
    assert list(t1.index) == cam_labels
    f1 = format_table(t1)
    assert list(f1.columns) == [(f"Layer{l}", m) for l in (33, 23, 13) for m in ("A.D.", "A.I.")]
    t2 = format_table(summarize(df, table="table2"))
    assert list(t2.index) == [(f"Layer{l}", m) for l in (33, 23, 13) for m in ("Insertion", "Deletion", "Over-all")]
    assert list(t2.columns) == cam_labels
    t3 = format_table(summarize(df, table=3))
    assert list(t3.index) == ["Layer33", "Layer23", "Layer13"] and list(t3.columns) == cam_labels
    for number, rows in ((4, ["A.D.", "A.I."]), (5, ["Insertion", "Deletion", "Over-all"]), (6, ["Proportion"])):
        t = summarize(df, table=number)
        assert list(t.index) == rows
        f = format_table(t)
        assert list(f.columns) == input_labels
        assert all(" ± " in v for v in f.to_numpy().ravel())
    t4 = summarize(df, table=4)
    lrp = t4[("LRP", "mean")]["A.D."]
    assert t4[("LRP", "ci_low")]["A.D."] <= lrp <= t4[("LRP", "ci_high")]["A.D."]
    ad = format_table(t4).loc["A.D.", "LRP"]
    assert len(ad.split(" ± ")[0].split(".")[1]) == 2  # percent: 2 decimals
    # missing methods leave NaN cells, rendered n/a
    only = summarize(df[df.method == "lrp"], table=5)
    assert only[("CLRP", "mean")].isna().all()
    assert (format_table(only)["CLRP"] == "n/a").all()
    with pytest.raises(ValueError, match="unknown table"):
        summarize(df, table=7)



def test_styled_table_html():
    from fgcam_lib.evaluation.tables import styled

    f1 = format_table(summarize(_synthetic_rows(), table=1, n_resamples=200))
    st = styled(f1, caption="Table 1 (ours)")
    assert isinstance(st, pd.io.formats.style.Styler)
    html = st.to_html()
    assert "<caption>Table 1 (ours)</caption>" in html
    cell = f1.iloc[0, 0]
    assert " ± " in cell and f">{cell}</td>" in html  # text cells kept as they are
    assert 'colspan="2">Layer33</th>' in html and ">A.D.</th>" in html  # MultiIndex columns as spans
    assert ">method</th>" not in html  # no row of index names
    assert "text-align: right" in html and 'style="border-collapse' in html  # inline style survives sanitizers
    # the same table gives the same HTML (saved notebooks stay stable); the text form is the table
    assert styled(f1, caption="Table 1 (ours)").to_html() == html
    assert repr(st).startswith("Table 1 (ours)\n") and cell in repr(st) and " at 0x" not in repr(st)
    # floats by float_format, ints as ints, NaN as na_rep
    num = pd.DataFrame({"share": [0.123456, float("nan")], "n": [3, 4]}, index=["a", "b"])
    html = styled(num, float_format=".3f", na_rep="–").to_html()
    assert ">0.123</td>" in html and ">–</td>" in html and ">3</td>" in html
    assert "<caption>" not in html and styled(num).to_html() != styled(num, caption="x").to_html()


def test_tables_module_imports_pandas_lazily():
    import subprocess
    import sys

    code = "import sys, fgcam_lib.evaluation.tables; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------ command line
def test_cli_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    argv = ["--model", "bundled", "--weights", "random", "--data", "benchmark:test", "--n", "2",
            "--methods", "grad_cam,lrp", "--layers", "33,input", "--metrics", "adai,proportion",
            "--out", str(out), "--no-progress", "--throughput", "--batch-size", "2"]
    assert main(argv) == 0
    df = read_results(out)
    assert len(df) == 3 * 2 * 5 and set(df["data"]) == {"benchmark:test"}
    printed = capsys.readouterr()
    assert "Throughput" in printed.out and "grad_cam@input" in printed.err
    assert main(argv) == 0
    assert len(read_results(out)) == len(df)


def test_cli_paper_protocol_splits_metrics(tmp_path):
    out = tmp_path / "paper.parquet"
    argv = ["--weights", "random", "--protocol", "paper", "--n", "2", "--n-loc", "2", "--methods", "lrp",
            "--layers", "input", "--metrics", "adai,proportion", "--out", str(out), "--no-progress",
            "--table", "4,6"]
    assert main(argv) == 0
    df = read_results(out)
    assert set(df.groupby("data")["metric"].unique().map(frozenset)) == {
        frozenset({"average_drop", "average_increase"}),
        frozenset({"proportion", "proportion_mask", "pointing_game"})}
    assert set(df["data"]) == {"benchmark:test", "benchmark:loc"}


def test_cli_reports_missing_data(tmp_path, capsys):
    assert main(["--weights", "random", "--data", f"imagenet:{tmp_path / 'missing'}", "--no-progress"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--layers", "99"], "outside model.features"),
    (["--layers", "conv5"], "unknown layer 'conv5'"),
    (["--table", "7"], "unknown table"),
])
def test_cli_rejects_bad_arguments_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "r.csv"
    argv = ["--weights", "random", "--methods", "grad_cam", "--layers", "33", "--metrics", "adai", "--n", "2",
            "--out", str(out), "--no-progress"]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_runner_road_and_true_targets(model, pre, scenes):
    df = _run(model, pre, scenes, methods=["grad_cam"], layers=[33], metrics=["road"], n=2, target="true",
              metric_kwargs={"road": {"percentages": (0.3, 0.6)}})
    assert set(df["metric"]) == {"road_morf", "road_lerf"} and len(df) == 4
    assert df["value"].between(0, 1).all()
    assert (df["target"] == df["label"]).all()


def test_cli_plain_folder_skips_localization(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"im{k}.png")
    out = tmp_path / "photos.csv"
    argv = ["--weights", "random", "--data", str(folder), "--methods", "fg_grad_cam", "--layers", "input",
            "--metrics", "adai,proportion", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    df = read_results(out)
    assert set(df["metric"]) == {"average_drop", "average_increase"}
    assert set(df["image_id"]) == {"im0.png", "im1.png"} and (df["label"] == -1).all()
    assert "no boxes" in capsys.readouterr().err


def test_paper_layers_beyond_vgg():
    """The paper's Layer33/23/13 are the outputs at 1/16, 1/8, 1/4 of the input on any CNN."""
    import torchvision

    from fgcam_lib.methods import paper_layers

    assert paper_layers(BundledVGG(scaled_cfg(16), n_classes=8), 96) == ["33", "23", "13"]
    assert paper_layers(torchvision.models.resnet18(num_classes=4), 64) == ["layer3", "layer2", "layer1"]
    assert paper_layers(torchvision.models.vgg11(num_classes=4), 64) == ["features.15", "features.10", "features.5"]
