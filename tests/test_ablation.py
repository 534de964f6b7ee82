"""Ablation sweeps: fast model copy, SVD ranks, map sources, the sweep's rows, bootstrap summaries.

Models are the narrow random-init TinyVGG of conftest (random BN statistics) at 32 x 32,
and hand-built Sequentials where exact values are known.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TinyVGG, randomize_bn
from fgcam_lib import FGCAM, Epsilon, GradCAM, LayerCAM, ScoreCAM, canonical, denoise
from fgcam_lib.evaluation import metrics as M
from fgcam_lib.catalogue import METRIC_GROUPS, layer_key
from fgcam_lib.evaluation.ablation import (
    MapSet, denoise_to_rank, explainer_maps, fgcam_maps, inference_copy, max_rank, paired_difference,
    rank_fraction, rank_grid, relevance_sums, spread, sweep,
)
from fgcam_lib.evaluation.batch import Batch, load_batch
from fgcam_lib.evaluation.scoring import score_maps
from fgcam_lib.evaluation.stats import bootstrap_ci
from fgcam_lib.evaluation.tables import format_summary, summarize
from fgcam_lib.methods.fgcam import denoise_rank
from fgcam_lib.data.models import Preprocess
from fgcam_lib.data.scenes import SyntheticScenes

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyVGG(width=4, num_classes=5)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def batch() -> Batch:
    return load_batch(SyntheticScenes("test", 4, seed=1, size=48), Preprocess(SIZE))


# ------------------------------------------------------------------------ fast copy
def test_inference_copy_same_logits_model_untouched(model, x):
    fast = inference_copy(model)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert isinstance(model.features[1], nn.BatchNorm2d) and isinstance(fast.features[1], nn.Identity)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("cls", [GradCAM, LayerCAM, ScoreCAM])
def test_cams_at_pooling_layers_unchanged_on_the_copy(cls, model, x):
    layers = [13, 23, 33]
    a = cls(model)(x, layer=layers)
    b = cls(inference_copy(model))(x, layer=layers)
    for layer in layers:
        torch.testing.assert_close(b[layer], a[layer], rtol=1e-3, atol=1e-4 * float(a[layer].abs().max()))


# ---------------------------------------------------------------------------- ranks
def test_rank_grid_and_fraction():
    assert rank_grid(9) == [1, 2, 3, 4, 6, 8, 9]
    assert rank_grid(16) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert rank_grid(1) == [1]
    assert max_rank(64, 3, 3) == 9 and max_rank(4, 4, 4) == 4
    for C, K in [(512, 49), (64, 9), (8, 16)]:
        for r in range(1, min(C, K) + 1):
            assert denoise_rank(rank_fraction(r, C, K), C, K) == r
    with pytest.raises(ValueError):
        rank_fraction(0, 4, 4)
    with pytest.raises(ValueError):
        rank_grid(0)


def test_denoise_to_rank_keeps_that_many_singular_values():
    I = torch.randn(2, 12, 4, 4, generator=torch.Generator().manual_seed(0))
    for r in (1, 3, 7):
        out = denoise_to_rank(I, r)
        assert int(torch.linalg.matrix_rank(out[0].reshape(12, 16).double(), rtol=1e-6)) == r
        torch.testing.assert_close(out, denoise(I, rank_fraction(r, 12, 16)))


# ---------------------------------------------------------------------- map sources
def test_fgcam_maps_match_fgcam(model, x):
    fg = FGCAM(model)
    r = denoise_rank(0.1, 32, 1)  # features.43 is 32 x 1 x 1 at 32 px
    sets = fgcam_maps(fg, ["input", 13], {"plain": None, "dn": r})(x, None)
    got = {(s.keys["method"], s.keys["layer"]): s for s in sets}
    assert set(got) == {("plain", "input"), ("plain", "13"), ("dn", "input"), ("dn", "13")}
    assert got[("plain", "input")].signed and not got[("plain", "13")].signed
    assert got[("dn", "13")].keys["rank"] == r and got[("plain", "13")].keys["rank"] is None
    ref = fg(x, layer=["input", 13], signed=True)
    torch.testing.assert_close(got[("plain", "input")].maps, ref["input"])
    torch.testing.assert_close(got[("plain", "13")].maps, ref[13].clamp(min=0))
    ref_dn = FGCAM(model, denoise=0.1)(x, layer=["input", 13], signed=True)
    torch.testing.assert_close(got[("dn", "input")].maps, ref_dn["input"])
    torch.testing.assert_close(got[("dn", "13")].maps, ref_dn[13].clamp(min=0))


def test_fgcam_maps_with_score_cam_components_from_the_copy(model, x):
    fast = inference_copy(model)
    top = "features.43"
    comps = lambda xx, t: ScoreCAM(fast, variant="paper", batch_size=16).explain(xx, t, [top]).components[top]
    sets = fgcam_maps(FGCAM(model), [23, "input"], {"fg_score_cam": None}, components=comps)(x, None)
    ref = FGCAM(model, base="score_cam", score_cam_variant="paper")(x, layer=[23, "input"], signed=True)
    torch.testing.assert_close(sets[0].maps, ref[23].clamp(min=0), rtol=1e-3, atol=1e-4 * float(ref[23].abs().max()))
    torch.testing.assert_close(sets[1].maps, ref["input"], rtol=1e-3, atol=1e-4 * float(ref["input"].abs().max()))


def test_fgcam_maps_rejects_denoising_explainer(model):
    with pytest.raises(ValueError, match="denoise=None"):
        fgcam_maps(FGCAM(model, denoise=0.1), ["input"], {"a": 1})


def test_explainer_maps_keys_and_values(model, x):
    src = explainer_maps({"gc": GradCAM(model), "fg": FGCAM(model)}, {"gc": [33, 13], "fg": ["input"]},
                         keys={"fg": {"rule": "z+"}})
    sets = src(x, torch.tensor([0, 1, 2]))
    assert [(s.keys["method"], s.keys["layer"]) for s in sets] == [("gc", "33"), ("gc", "13"), ("fg", "input")]
    assert sets[2].keys["rule"] == "z+" and sets[2].signed
    torch.testing.assert_close(sets[0].maps, GradCAM(model)(x, target=[0, 1, 2], layer=33))
    assert layer_key("features.13") == "13" and layer_key(-1) == "input" and layer_key(13) == "13"


# ---------------------------------------------------------------------------- scenes
def test_load_batch_and_region(batch):
    assert batch.x.shape == (4, 3, SIZE, SIZE) and batch.images.shape == (4, 3, SIZE, SIZE)
    assert float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1
    assert len(batch) == 4 and batch.indices == [0, 1, 2, 3]
    boxes, masks = batch.region(batch.labels)
    assert masks.shape == (4, SIZE, SIZE) and masks.dtype == torch.bool
    for b, m in zip(boxes, masks):  # the box encloses the (rescaled) mask
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert b.shape == (1, 4)
        assert xs.min() >= b[0, 0] - 1 and xs.max() < b[0, 2] + 1 and ys.min() >= b[0, 1] - 1 and ys.max() < b[0, 3] + 1
    sub = batch.subset([2, 0])
    assert sub.indices == [2, 0] and torch.equal(sub.x[1], batch.x[0])


def test_region_falls_back_from_target_to_label_to_all_objects():
    boxes = torch.tensor([[0.0, 0, 2, 2], [2.0, 2, 4, 4]])
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2], masks[1, 2:, 2:] = True, True
    b = Batch(torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4, 4), torch.tensor([1, 7, 1]),
              [torch.tensor([1, 2]), torch.tensor([1, 2]), None], [boxes, boxes, None], [masks, masks, None],
              [0, 1, 2], ["0", "1", "2"])
    target = torch.tensor([2, 5, 1])
    assert torch.equal(b.region_of(0, 2)[0], boxes[1:])            # the target's object
    assert torch.equal(b.region_of(0, 5)[0], boxes[:1])            # none of the target: the label's
    assert torch.equal(b.region_of(1, 5)[0], boxes) and torch.equal(b.region_of(1, 5)[1], masks.any(0))  # neither: all
    assert b.region_of(2, 1) == (None, None)                        # no boxes at all
    out_boxes, out_masks = b.region(target)
    assert out_boxes[2].shape == (0, 4) and not out_masks[2].any() and out_masks.shape == (3, 4, 4)


# ----------------------------------------------------------------------------- sweep
def test_sweep_rows_match_direct_metrics_and_dedupe(model, batch):
    fg = FGCAM(model)
    twin = FGCAM(model, rules=canonical())  # BN scales are positive: the same maps at layer 13
    src = explainer_maps({"paper": fg, "canonical": twin}, [13])
    df = sweep(model, batch, src, insdel_steps=8, chunk=3, data="t")
    n_metrics = sum(len(METRIC_GROUPS[g]) for g in ("adai", "insdel", "proportion"))  # the sweep's default options
    assert len(df) == len(batch) * 2 * n_metrics
    assert list(df.columns[:5]) == ["data", "image_id", "index", "label", "target"]
    assert {"method", "layer", "metric", "value"} <= set(df.columns)
    assert df.attrs["duplicates"] == {"method=canonical, layer=13": "method=paper, layer=13"}
    a = df[df.method == "paper"].set_index(["image_id", "metric"])["value"]
    b = df[df.method == "canonical"].set_index(["image_id", "metric"])["value"]
    pd.testing.assert_series_equal(a, b, check_names=False)
    # the same numbers as the metrics called directly on the original model
    target = model(batch.x).argmax(1)
    maps = fg(batch.x, target=target, layer=13)
    ref = score_maps(model, batch, maps, target, insdel_steps=8)
    for metric, v in ref.items():
        got = df[(df.method == "paper") & (df.metric == metric)].sort_values("index")["value"].to_numpy()
        np.testing.assert_allclose(got, v.numpy(), rtol=1e-4, atol=1e-4, equal_nan=True)
    assert (df["target"].to_numpy() == target.numpy()[df["index"].to_numpy()]).all()


def test_sweep_insdel_steps_and_no_dedupe(model, batch):
    src = explainer_maps({"a": GradCAM(model), "b": GradCAM(model)}, [33])
    df = sweep(model, batch.subset([0, 1]), src, metrics=["adai"], dedupe=False)
    assert df.attrs["duplicates"] == {} and set(df.metric) == {"average_drop", "average_increase"}
    with pytest.raises(ValueError, match="unknown metrics"):
        score_maps(model, batch, torch.zeros(4, 2, 2), torch.zeros(4, dtype=torch.long), ["nope"])


# ---------------------------------------------------------------------- conservation
def _positive_net() -> nn.Sequential:
    """Conv -> ReLU -> MaxPool -> Conv -> ReLU -> Flatten -> Linear with positive weights, no bias."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.uniform_(0.1, 1.0)
    return net.eval()


def test_relevance_sums_conservative_and_not():
    net = _positive_net()
    x = torch.rand(2, 3, 8, 8) + 0.1
    df = relevance_sums(FGCAM(net), x, ["input", "2"])
    np.testing.assert_allclose(df["ratio"], 1.0, rtol=1e-5)
    eps = relevance_sums(FGCAM(net, rules={"conv": Epsilon(100.0)}), x, ["2"])
    assert (eps["ratio"] < 0.9).all()
    assert set(df["layer"]) == {"input", "2"} and len(df) == 4


# ------------------------------------------------------------------------ summaries
def _rows(values: dict[tuple[str, str], list[float]], metric: str = "overall") -> pd.DataFrame:
    rows = [{"data": "d", "image_id": str(i), "method": m, "layer": l, "metric": metric, "value": v}
            for (m, l), vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_bootstrap_ci_and_summarize():
    v = np.arange(20, dtype=float)
    est, lo, hi = bootstrap_ci(v, seed=0)
    assert est == pytest.approx(9.5) and lo < 9.5 < hi
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0, 1.0)
    assert np.isnan(bootstrap_ci(np.ones(1))[1])
    df = _rows({("a", "13"): [1.0, 2.0, np.nan, 3.0], ("b", "13"): [0.0, 0.0, 0.0, 0.0]})
    s = summarize(df)
    assert s.loc[("a", "13", "overall"), "mean"] == pytest.approx(2.0)
    assert s.loc[("a", "13", "overall"), "n"] == 3
    assert s.loc[("b", "13", "overall"), "ci_low"] == 0.0 == s.loc[("b", "13", "overall"), "ci_high"]
    assert list(s.index.names) == ["method", "layer", "metric"]


def test_paired_difference_and_spread():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    df = _rows({("a", "13"): list(base + 0.5), ("b", "13"): list(base),
                ("a", "33"): list(base + 0.5), ("b", "33"): list(base + 2.0)})
    d = paired_difference(df, "overall", "method", "a", "b", where={"layer": "13"})
    assert d["diff"] == pytest.approx(0.5) and d["ci_low"] == pytest.approx(0.5) and d["n"] == 40
    with pytest.raises(ValueError, match="no rows"):
        paired_difference(df, "overall", "method", "a", "zzz")
    sp = spread(df, "overall", over="layer", by="method")
    assert sp.loc["a", "spread"] == pytest.approx(0.0) and sp.loc["a", "ci_high"] == pytest.approx(0.0)
    assert sp.loc["b", "spread"] == pytest.approx(2.0) and sp.loc["b", "ci_low"] == pytest.approx(2.0)
    assert sp.loc["b", "highest"] == "33" and sp.loc["b", "lowest"] == "13" and sp.loc["b", "n"] == 40


# --------------------------------------------------------------------------- display
def test_evaluation_imports_no_ui():
    """Imports point down: the sweeps, the runner and the sanity checks load nothing of fgcam_lib.ui."""
    import subprocess
    import sys

    code = ("import sys, fgcam_lib.evaluation.ablation, fgcam_lib.evaluation.runner, fgcam_lib.evaluation.sanity; "
            "assert not [m for m in sys.modules if m.startswith('fgcam_lib.ui')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_format_summary_forest_plot_and_example_grid(tmp_path):
    import matplotlib

    matplotlib.use("agg")
    from fgcam_lib.ui.plots import example_grid, forest_plot

    df = pd.concat([_rows({("a", "13"): [1.0, 2.0, 3.0], ("b", "13"): [2.0, 2.0, 2.0]}, "overall"),
                    _rows({("a", "13"): [10.0, 20.0, 30.0], ("b", "13"): [5.0, 5.0, 5.0]}, "average_drop")])
    s = summarize(df)
    t = format_summary(s, rows=["method", "layer"], metrics=["average_drop", "overall"])
    assert list(t.columns) == ["A.D.", "Over-all"]
    assert t.loc[("b", "13"), "Over-all"] == "2.0000 ± 0.0000" and t.loc[("a", "13"), "A.D."].startswith("20.00 ± ")
    fig = forest_plot(s.xs("13", level="layer"), ["average_drop", "overall"], hue=None, title="t")
    assert len(fig.axes) == 2 and "lower is better" in fig.axes[0].get_title()
    images = torch.rand(2, 3, 16, 16)
    maps = {"v1": {13: torch.rand(2, 4, 4), "input": torch.randn(2, 16, 16)}, "v2": {"input": torch.zeros(2, 16, 16)}}
    fig = example_grid(images, maps, [(0, 13), (1, "input")], title="x")
    assert len(fig.axes) >= 3 * 2  # image row + two variants, two columns (+ colorbars)
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
