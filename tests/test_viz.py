"""Tests for fgcam_lib.ui.viz: normalisation, colours, overlays, figure grids, saving."""
from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fgcam_lib.ui import viz  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _maps(b: int, h: int, seed: int = 0, signed: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(b, h, h, generator=g)
    return m if signed else m.abs()


# ------------------------------------------------------------------ normalize / upsample
def test_normalize_zero_and_constant_maps_stay_zero():
    for signed in (False, True):
        out = viz.normalize_map(torch.zeros(2, 4, 4), signed=signed)
        assert torch.equal(out, torch.zeros(2, 4, 4))
    const = viz.normalize_map(torch.full((3, 3), 5.0))
    assert torch.isfinite(const).all() and torch.equal(const, torch.zeros(3, 3))


def test_normalize_min_max_per_map():
    m = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 3.0]]), torch.tensor([[0.0, 10.0], [5.0, 0.0]])])
    out = viz.normalize_map(m)
    assert torch.allclose(out[0], torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
    assert torch.allclose(out[1], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))


def test_normalize_signed_keeps_zero_at_centre():
    m = torch.tensor([[-1.0, 0.0], [2.0, 0.5]])
    out = viz.normalize_map(m, signed=True)
    assert torch.allclose(out, torch.tensor([[-0.5, 0.0], [1.0, 0.25]]))
    neg = viz.normalize_map(torch.tensor([[-4.0, -1.0]]), signed=True)
    assert torch.allclose(neg, torch.tensor([[-1.0, -0.25]]))


def test_normalize_numpy_in_numpy_out_and_nan_safe():
    a = np.array([[np.nan, 1.0], [2.0, np.inf]], dtype=np.float32)
    out = viz.normalize_map(a)
    assert isinstance(out, np.ndarray) and np.isfinite(out).all()
    assert out.min() == 0.0 and out.max() == 1.0


def test_upsample_shapes_and_nearest_blocks():
    m = torch.arange(4.0).view(2, 2)
    near = viz.upsample(m, 4, mode="nearest")
    assert near.shape == (4, 4)
    assert torch.equal(near[:2, :2], torch.zeros(2, 2)) and torch.equal(near[2:, 2:], torch.full((2, 2), 3.0))
    smooth = viz.upsample(_maps(3, 7), (14, 21))
    assert smooth.shape == (3, 14, 21)
    assert isinstance(viz.upsample(np.ones((2, 2)), 8), np.ndarray)
    with pytest.raises(ValueError):
        viz.upsample(m, 4, mode="cubic-ish")


# ------------------------------------------------------------------ colours / overlay
def test_signed_colormap_red_positive_blue_negative_white_zero():
    rgb = viz.colorize(np.array([[-2.0, 0.0, 2.0]]), signed=True)
    blue, white, red = rgb[0]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    assert blue[2] > 0.9 and blue[0] < 0.1 and blue[1] < 0.1
    assert np.all(white > 0.9)


def test_sequential_colormap_is_brighter_for_larger_values():
    rgb = viz.colorize(np.array([[0.0, 0.5, 1.0]]))
    brightness = rgb[0].mean(1)
    assert brightness[0] < brightness[1] < brightness[2]


def test_overlay_shapes_dtypes_ranges():
    img = torch.rand(3, 32, 32)
    out = viz.overlay(img, torch.rand(4, 4))
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    hwc = viz.overlay(img.permute(1, 2, 0).numpy(), torch.rand(1, 8, 8), signed=True)
    assert hwc.shape == (32, 32, 3)
    batch = viz.overlay(torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4))
    assert batch.shape == (2, 16, 16, 3)
    assert np.allclose(viz.overlay(img, torch.rand(4, 4), alpha=0.0), img.permute(1, 2, 0).numpy(), atol=1e-6)


def test_signed_overlay_paints_positive_red_and_negative_blue():
    img = torch.full((3, 8, 8), 0.5)
    m = torch.zeros(8, 8)
    m[0, 0], m[7, 7] = 1.0, -1.0
    out = viz.overlay(img, m, alpha=1.0, signed=True, mode="nearest")
    assert out[0, 0, 0] > 0.9 and out[0, 0, 2] < 0.1
    assert out[7, 7, 2] > 0.9 and out[7, 7, 0] < 0.1


def test_labels():
    assert viz.layer_label(13) == "Layer13" and viz.layer_label("features.33") == "Layer33"
    assert viz.layer_label("input") == "Input" and viz.layer_label(-1) == "Input"
    assert viz.method_label("fg_grad_cam") == "FG-Grad-CAM" and viz.method_label("mine") == "mine"


# ------------------------------------------------------------------ panels and grids
def _map_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_show_map_with_image_and_colorbar():
    fig, ax = plt.subplots()
    viz.show_map(ax, torch.rand(4, 4), image=torch.rand(3, 16, 16), title="t", colorbar=True)
    assert ax.get_title() == "t"
    assert len(fig.axes) == 2  # the panel and its colorbar
    assert ax.images[0].get_array().shape[:2] == (16, 16)


def test_show_map_labels_all_zero_panels():
    fig, (a, b) = plt.subplots(1, 2)
    viz.show_map(a, torch.zeros(4, 4))
    viz.show_map(b, torch.rand(4, 4))
    assert [t.get_text() for t in a.texts] == ["all zero"] and not b.texts


def test_grid_figure1_layout_methods_by_layers(tmp_path):
    img = torch.rand(1, 3, 32, 32)
    maps = {
        "fg_grad_cam": {33: _maps(1, 4), 23: _maps(1, 8), 13: _maps(1, 16), "input": _maps(1, 32)},
        "grad_cam": {33: _maps(1, 4), 23: _maps(1, 8), 13: _maps(1, 16)},
        "lrp": {33: _maps(1, 4, signed=True), "input": _maps(1, 32, signed=True)},
    }
    fig = viz.grid(img, maps, layout="layers", signed={"lrp": True})
    panels = _map_axes(fig)
    assert len(panels) == 3 * (4 + 1)
    assert len(fig.axes) - len(panels) == 2  # one sequential and one diverging colorbar
    titles = [ax.get_title() for ax in panels[:5]]
    assert titles == ["Image", "Layer33", "Layer23", "Layer13", "Input"]
    assert [panels[5 * r + 1].get_ylabel() for r in range(3)] == ["FG-Grad-CAM", "Grad-CAM", "LRP"]
    assert not panels[5 + 4].axison  # Grad-CAM has no input map: blank panel
    path = viz.save(fig, tmp_path / "sub" / "fig1.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_grid_auto_picks_figure1_for_many_layers():
    fig = viz.grid(None, {"a": {13: _maps(1, 8), "input": _maps(1, 16)}})
    assert [ax.get_title() for ax in _map_axes(fig)] == ["Layer13", "Input"]


def test_grid_figure3_layout_images_by_methods(tmp_path):
    imgs = torch.rand(3, 3, 24, 24)
    maps = {"grad_cam": {13: _maps(3, 6)}, "fg_grad_cam": {13: _maps(3, 24)}, "layer_cam": _maps(3, 6)}
    fig = viz.grid(imgs, maps, layout="images", layer=13, image_titles=["a", "b", "c"], colorbar=False)
    panels = _map_axes(fig)
    assert len(panels) == 3 * 4 and len(fig.axes) == len(panels)
    assert [ax.get_title() for ax in panels[:4]] == ["Image", "Grad-CAM", "FG-Grad-CAM", "Layer-CAM"]
    assert [panels[4 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert viz.save(fig, tmp_path / "fig3.png").stat().st_size > 0


def test_grid_signed_overlay_figure4():
    maps = {"lrp": _maps(2, 16, signed=True), "clrp": _maps(2, 16, signed=True)}
    fig = viz.grid(torch.rand(2, 3, 16, 16), maps, signed=True, overlay=True)
    assert len(_map_axes(fig)) == 2 * 3 and len(fig.axes) == 2 * 3 + 1


def test_grid_rejects_ambiguous_layer():
    with pytest.raises(ValueError, match="layer="):
        viz.grid(None, {"a": {13: _maps(1, 8), 23: _maps(1, 4)}}, layout="images")


# ------------------------------------------------------------------ components
def test_top_channels_by_relevance_and_weight():
    comps = torch.zeros(5, 2, 2)
    comps[3] = -4.0
    comps[1] = 2.0
    assert viz.top_channels(comps, 2) == [3, 1]
    w = torch.tensor([0.1, 0.0, 0.5, -1.0, 0.2])
    assert viz.top_channels(comps, 3, weights=w) == [2, 4, 0]


def test_component_strip_axes_titles_and_shared_scale(tmp_path):
    comps = torch.randn(1, 16, 4, 4)
    fig = viz.component_strip(comps, k=6, image=torch.rand(3, 32, 32), weights=torch.rand(1, 16))
    panels = _map_axes(fig)
    assert len(panels) == 7 and len(fig.axes) == 8
    assert panels[0].get_title() == "image"
    assert all(ax.get_title().startswith("ch ") and "w " in ax.get_title() for ax in panels[1:])
    limits = {ax.images[0].get_clim() for ax in panels[1:]}
    assert len(limits) == 1
    lo, hi = limits.pop()
    assert lo == -hi and hi == pytest.approx(float(comps[0, viz.top_channels(comps, 6)].abs().max()))
    assert viz.save(fig, tmp_path / "strip.png").read_bytes()[:8] == PNG_MAGIC


def test_component_strip_fewer_channels_than_k_and_wrapping():
    fig = viz.component_strip(torch.randn(3, 8, 8), k=8, channel_names=["R", "G", "B"], ncols=2)
    panels = _map_axes(fig)
    assert len(panels) == 4  # 2 x 2 grid, one blank
    assert sorted(ax.get_title().split("\n")[0] for ax in panels[:3]) == ["B", "G", "R"]
    assert not panels[3].axison


def test_singular_values_plot_marks_kept_rank(tmp_path):
    fig, ax = plt.subplots()
    comps = torch.randn(20, 5, 2)  # C = 20, K = 10 -> rank floor(0.3 * 10) = 3
    viz.singular_values_plot(ax, comps, fraction=0.3)
    kept = [c for c in ax.collections if c.get_label().startswith("kept")]
    assert len(kept) == 1 and len(kept[0].get_offsets()) == 3
    assert len(ax.lines) == 2  # the spectrum and the cut
    viz.save(fig, tmp_path / "svd.png")


def test_metric_plot_lines_and_bands(tmp_path):
    rows = [{"method": m, "fraction": f, "mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
            for m, base in (("a", 0.2), ("b", 0.5)) for f, v in ((0.05, base), (0.1, base + 0.1), (1.0, base + 0.2))]
    ax = viz.metric_plot(pd.DataFrame(rows), x="fraction", hue="method", logx=True, ylabel="AUC")
    assert len(ax.lines) >= 2 and len(ax.collections) >= 2
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "AUC"
    viz.save(ax.figure, tmp_path / "metric.png")


def test_import_fgcam_lib_does_not_load_plotting():
    code = ("import sys, fgcam_lib; bad = [m for m in ('matplotlib', 'seaborn', 'ipywidgets') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ labels, keep, show
def test_labels_are_the_catalogues():
    from fgcam_lib import catalogue

    assert viz.METHOD_LABELS is catalogue.METHOD_LABELS
    assert viz.method_label is catalogue.method_label and viz.layer_label is catalogue.layer_label


def test_keep_saves_closes_and_shows_a_light_copy(tmp_path):
    fig = viz.grid(torch.rand(2, 3, 32, 32), {"fg_grad_cam": _maps(2, 8)}, layer=None)
    path = tmp_path / "kept" / "02_x.png"
    assert viz.keep(fig, path) is None
    assert path.read_bytes()[:8] == PNG_MAGIC and fig.number not in plt.get_fignums()
    light = viz.light_png(path, width=100)
    from PIL import Image
    import io

    with Image.open(io.BytesIO(light)) as im:
        assert im.size[0] <= 100 and im.mode == "P"


def test_show_images_with_maps_and_colourbars(tmp_path):
    import fgcam_lib
    from fgcam_lib.data.models import Preprocess

    pre = Preprocess(32)
    images = torch.rand(3, 3, 32, 32)
    x = pre(images)  # normalised: values outside [0, 1]
    fig = fgcam_lib.show(x, _maps(3, 8), pre, titles=["a", "b", "c"], title="t", path=tmp_path / "show.png")
    maps_axes = _map_axes(fig)
    assert len(maps_axes) == 3 and [ax.get_title() for ax in maps_axes] == ["a", "b", "c"]
    assert len(fig.axes) == 6 and fig._suptitle.get_text() == "t"  # one colourbar per panel
    assert (tmp_path / "show.png").stat().st_size > 0
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert cbar.get_ylabel() == "relevance"
    # a {layer: maps} mapping: one column per layer; negative values switch to the signed scale
    fig = viz.show(images[:2], {13: _maps(2, 8), "input": _maps(2, 32, signed=True)})
    assert len(_map_axes(fig)) == 4 and _map_axes(fig)[1].get_title() == "Input"
    assert [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0].get_ylabel() == "signed relevance"
    with pytest.raises(ValueError, match="preprocess="):
        viz.show(x, _maps(3, 8))
    with pytest.raises(ValueError, match="3 image"):
        viz.show(images, _maps(2, 8))


def test_grid_outlines_each_rows_box():
    from matplotlib.patches import Rectangle

    x = torch.rand(2, 3, 16, 16)
    maps = {"grad_cam": torch.rand(2, 4, 4), "fg_grad_cam": torch.rand(2, 16, 16)}
    fig = viz.grid(x, maps, layout="images", boxes=[(2, 3, 10, 12), None])
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    first = [p for ax in axes[0] for p in ax.patches if isinstance(p, Rectangle)]
    assert len(first) == 3 and all(p.get_width() == 8 and p.get_height() == 9 for p in first)
    assert not [p for ax in axes[1] for p in ax.patches if isinstance(p, Rectangle)]
    plt.close(fig)
