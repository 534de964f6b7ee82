"""Tests for the explorer's headless render path, caching, class list, errors and images."""
from __future__ import annotations

from datetime import datetime, timezone

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fgcam_lib import FGCAM, LRP, GradCAM  # noqa: E402
from fgcam_lib.data.models import BundledVGG, Preprocess  # noqa: E402
from fgcam_lib.data.scenes import CLASSES, SyntheticScenes  # noqa: E402
from fgcam_lib.ui.render import ExplorerFigure  # noqa: E402
from fgcam_lib.ui.settings import PREDICTED, fraction_choices, parse_method, pool_layers  # noqa: E402
from fgcam_lib.ui.widgets import Explorer  # noqa: E402

SIZE = 64  # the bundled layout at 64 px: a 2 x 2 map at layer 43


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = BundledVGG(n_classes=len(CLASSES)).eval()
    scenes = SyntheticScenes("test", n=2, size=SIZE)
    images = [(f"scene {i}", scenes[i]["image"]) for i in range(2)]
    return model, Preprocess(SIZE), images


@pytest.fixture(scope="module")
def app(model_and_images):
    model, pre, images = model_and_images
    return Explorer(model, pre, images=images, class_names=CLASSES)


def _fresh(model_and_images) -> Explorer:
    model, pre, images = model_and_images
    return Explorer(model, pre, images=images, class_names=CLASSES)


# ------------------------------------------------------------------ helpers
def test_parse_method_names_and_labels():
    assert parse_method("fg_grad_cam") == ("fg_cam", "grad_cam", None)
    assert parse_method("fg_score_cam_denoise") == ("fg_cam", "score_cam", True)
    assert parse_method("FG-CAM", "xgrad_cam") == ("fg_cam", "xgrad_cam", None)
    assert parse_method("Grad-CAM")[0] == "grad_cam" and parse_method("SGLRP")[0] == "sglrp"
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("gradcam")


def test_pool_layers_and_fraction_choices(model_and_images):
    assert pool_layers(model_and_images[0]) == [43, 33, 23, 13, 6, "input"]
    choices = fraction_choices(512, 49)  # VGG16-BN: the paper's 0.1 keeps 4 singular values
    fractions = [f for _, f in choices]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.1 in fractions
    assert choices[0][1] == pytest.approx(1 / 49) and "rank 4" in dict((f, l) for l, f in choices)[0.1]
    assert len({label.split("rank ")[1] for label, _ in choices}) == len(choices)


# ------------------------------------------------------------------ the render path
SETTINGS = [
    dict(method="fg_grad_cam", layer="input", denoise=True, fraction=0.1),
    dict(method="fg_grad_cam", layer=13, denoise=False),
    dict(method="fg_cam", base="grad_cam", layer=13, rules="canonical", denoise=True),
    dict(method="grad_cam", layer=33, signed=False),
    dict(method="layer_cam", layer=23),
    dict(method="lrp", layer="input", signed=True),
    dict(method="sglrp", layer=13, signed=True, rules="paper"),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_update_renders_figure(app, settings):
    open_before = plt.get_fignums()
    fig = app.update(**settings)
    assert app.error is None, app.error
    assert isinstance(fig, Figure) and plt.get_fignums() == open_before  # not left open in pyplot
    n_top = 4 if app.settings.method == "fg_cam" else 3
    assert len(fig.axes) >= n_top + 2  # top row + colorbar + at least one component and its colorbar
    title = fig._suptitle.get_text()
    assert app.settings.rules in title or app.settings.method not in ("fg_cam", "lrp", "sglrp")
    for key, value in settings.items():
        if key not in ("method",):
            assert getattr(app.settings, key) == value


def test_update_keeps_unspecified_settings(app):
    app.update(method="fg_grad_cam", layer=13, fraction=0.5, signed=False)
    app.update(signed=True)
    s = app.settings
    assert (s.method, s.base, s.layer, s.fraction, s.signed) == ("fg_cam", "grad_cam", 13, 0.5, True)


def test_fg_maps_match_the_explainer(model_and_images, app):
    model, pre, images = model_and_images
    x = pre(images[1][1][None])
    for rules, dn in (("paper", 0.25), ("canonical", None)):
        app.set(image=1, method="fg_grad_cam", layer=13, rules=rules, denoise=dn is not None, fraction=dn or 0.1,
                signed=False)
        ref = FGCAM(model, rules=rules, denoise=dn, mean=pre.mean, std=pre.std)(x, layer=13)[0]
        assert torch.allclose(app.current_map(), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_lrp_and_cam_maps_match_the_explainers(model_and_images, app):
    model, pre, images = model_and_images
    x = pre(images[0][1][None])
    app.set(image=0, method="lrp", layer="input", rules="paper", signed=True)
    assert torch.allclose(app.current_map(), LRP(model, mean=pre.mean, std=pre.std)(x, layer="input", signed=True)[0])
    app.set(method="grad_cam", layer=33, signed=False)
    assert torch.allclose(app.current_map(), GradCAM(model)(x, layer=33)[0])


def test_top5_classes(model_and_images, app):
    model, pre, images = model_and_images
    top = app.top_classes(0)
    assert len(top) == 5
    probs = [p for _, _, p in top]
    assert probs == sorted(probs, reverse=True)
    with torch.no_grad():
        expected = model(pre(images[0][1][None])).softmax(1)[0]
    for c, name, p in top:
        assert name == CLASSES[c] and p == pytest.approx(float(expected[c]), abs=1e-6)
    assert top[0][0] == int(expected.argmax())


def test_explicit_target_and_reset_on_image_change(app):
    app.set(image=0, target=3, method="fg_grad_cam", layer=13)
    assert app.settings.target == 3 and int(app.explanation()[0].target) == 3
    assert "class star" in app.describe()
    app.set(image=1)
    assert app.settings.target is None


# ------------------------------------------------------------------ errors
def test_invalid_combination_shows_message(app):
    fig = app.update(method="grad_cam", layer="input")
    assert app.error is not None and "input" in app.error and "Traceback" not in app.error
    assert isinstance(fig, Figure) and any("input" in t.get_text() for t in fig.texts)
    assert fig._repr_png_()[:4] == b"\x89PNG"  # what Jupyter shows for update()'s return value
    with pytest.raises(ValueError):
        app.update(raise_errors=True)
    app.update(layer=13)
    assert app.error is None


def test_bad_values_give_messages(app):
    before = app.settings
    for bad in (dict(method="no_such_method"), dict(fraction=0.0), dict(layer="features.99"), dict(image=99),
                dict(rules="mine")):
        app.update(**bad)
        assert app.error, bad
        assert app.settings == before  # invalid values are not stored


def test_fg_cam_above_component_layer_is_refused(app):
    app.update(method="fg_grad_cam", layer="classifier.1")
    assert app.error and "component layer" in app.error


def test_set_raises_on_invalid_values(app):
    with pytest.raises(ValueError, match="unknown rules"):
        app.set(rules="mine")
    with pytest.raises(TypeError):
        app.set(colour="red")


# ------------------------------------------------------------------ caching
def test_fraction_change_reuses_forward(model_and_images):
    app = _fresh(model_and_images)
    app.update(image=0, method="fg_grad_cam", layer=13, denoise=True, fraction=0.25)
    first = app.explanation()[0].map(13).clone()
    before = dict(app.calls)
    assert before["top"] == 1 and before["propagate"] == 1
    app.update(fraction=1.0)
    assert app.calls["forward"] == before["forward"] and app.calls["top"] == before["top"]
    assert app.calls["propagate"] == before["propagate"] + 1
    assert not torch.allclose(app.explanation()[0].map(13), first)
    app.set(rules="canonical")  # rules change: a new propagation, the same top components
    app.current_map()
    assert app.calls["top"] == before["top"] and app.calls["propagate"] == before["propagate"] + 2
    assert app.calls["trace"] == before.get("trace", 0) + 1  # the canonical rules' trace, without gradients
    counts = dict(app.calls)
    app.set(layer=23)  # every pooling layer came out of the same propagation
    app.current_map()
    app.set(layer="input", signed=True)
    app.current_map()
    app.set(rules="paper", fraction=0.25, layer=13)  # back to the first settings: cached
    assert dict(app.calls) == counts
    assert torch.equal(app.explanation()[0].map(13), first)


def test_explainers_are_cached(app):
    assert app.explainer("fg_cam", "grad_cam", "paper") is app.explainer("fg_cam", "grad_cam", "paper")
    assert app.explainer("lrp", rules="paper") is not app.explainer("lrp", rules="canonical")


# ------------------------------------------------------------------ images
def test_image_from_file_path(model_and_images, tmp_path):
    from PIL import Image

    app = _fresh(model_and_images)
    arr = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)
    fig = app.update(image=str(path), method="fg_grad_cam", layer="input")
    assert app.error is None, app.error
    assert app.images[app.settings.image][0] == str(path)
    assert app.display_image().shape == (3, SIZE, SIZE)
    assert isinstance(fig, Figure)
    n = len(app.images)
    app.set(image=str(path))  # loading the same file again reuses it
    assert len(app.images) == n
    app.update(image=str(tmp_path / "missing.png"))
    assert app.error and "missing.png" in app.error


def test_images_as_batch_tensor(model_and_images):
    model, pre, images = model_and_images
    app = Explorer(model, pre, images=torch.stack([img for _, img in images]))
    assert [n for n, _ in app.images] == ["image 0", "image 1"]
    assert app.class_names[0] in ("class 0", CLASSES[0])


# ------------------------------------------------------------------ widgets
def test_show_builds_controls_that_drive_update(model_and_images, monkeypatch):
    pytest.importorskip("ipywidgets")
    model, pre, images = model_and_images
    app = Explorer(model, pre, images=images, class_names=CLASSES, display_dpi=40)
    app.set(k=2)  # a light figure: this test is about the controls
    ui = app.show()
    ws = app._widgets
    assert ui is not None and ws is not None
    assert [v for _, v in ws["layer"].options] == [43, 33, 23, 13, 6, "input"]
    assert len(ws["target"].options) == 6  # "predicted" + the top 5
    assert ws["view"].value[:4] == b"\x89PNG"
    monkeypatch.setattr(ExplorerFigure, "png", lambda self, dpi=None: b"\x89PNG stub")  # skip drawing from here on
    ws["method"].value = "grad_cam"  # at the input: a message, no traceback
    assert "input" in ws["message"].value and app.error
    ws["layer"].value = 33
    assert app.settings.layer == 33 and app.error is None and ws["message"].value == ""
    app.set(image=1, method="fg_grad_cam", fraction=0.5, target=7)  # a headless change shows in the controls
    assert ws["method"].value == "fg_cam" and ws["fraction"].value == 0.5 and not ws["fraction"].disabled
    assert ws["image"].value == 1 and ws["target"].value == 7 and ws["rules"].disabled is False
    ws["image"].value = 0  # a new image: its own top-5, the predicted class again
    assert app.settings.image == 0 and ws["target"].value == PREDICTED
    n = app.add_image(torch.rand(3, 40, 40), "noise")  # listed, not selected
    assert ws["image"].options[-1] == ("noise", n) and ws["image"].value == 0 and app.settings.image == 0
    ws["upload"].value = ({"name": "up.png", "type": "image/png", "size": len(PNG), "content": memoryview(PNG),
                           "last_modified": datetime.now(timezone.utc)},)
    assert app.images[app.settings.image][0] == "up.png" and ws["image"].value == app.settings.image
    ws["upload"].value = ({"name": "bad.png", "type": "image/png", "size": 3, "content": memoryview(b"abc"),
                           "last_modified": datetime.now(timezone.utc)},)
    assert "bad.png" in ws["message"].value


def test_view_labels_are_not_cut(model_and_images):
    pytest.importorskip("ipywidgets")
    app = _fresh(model_and_images)
    app.set(k=2)
    app.show()
    described = [w for w in app._widgets.values() if getattr(w, "description", "") and hasattr(w, "style")
                 and hasattr(w.style, "description_width")]
    assert {"rank fraction", "SVD denoising", "signed (red/blue)"} <= {w.description for w in described}
    assert all(w.style.description_width == "initial" for w in described)


def test_view_error_clears_the_figure_and_a_fork_leaves_the_app_alone(model_and_images, monkeypatch):
    pytest.importorskip("ipywidgets")
    app = _fresh(model_and_images)
    app.set(k=2)
    ui = app.show()
    ws = app._widgets
    start = (app.settings, ws["view"].value, ws["method"].value, ws["layer"].value)
    lab = app.fork()  # what the notebook's headless cells use
    monkeypatch.setattr(ExplorerFigure, "png", lambda self, dpi=None: b"\x89PNG stub")
    lab.update(method="grad_cam", layer=33)
    assert (app.settings, ws["view"].value, ws["method"].value, ws["layer"].value) == start
    bundle = ui._repr_mimebundle_()  # the live widget, and a picture for a saved copy
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert "VBox" not in bundle["text/plain"]
    ws["method"].value = "grad_cam"  # at the input: only the message, no figure of the earlier settings
    assert app.error and "input" in ws["message"].value
    assert ws["view"].value == b"" and ws["view"].layout.display == "none"
    ws["layer"].value = 33
    assert ws["message"].value == "" and ws["view"].value == b"\x89PNG stub" and ws["view"].layout.display != "none"


def test_explorer_on_a_resnet():
    """Beyond VGG: stage outputs by name, and the explorer's FG-CAM map is the explainer's."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES)).eval()
    assert pool_layers(model, SIZE) == ["layer4", "layer3", "layer2", "layer1", "relu", "input"]
    scenes = SyntheticScenes("test", 2, size=SIZE).to_tensors()[0]
    pre = Preprocess(SIZE)
    ex = Explorer(model, pre, images=scenes)
    ex.update(image=0, method="fg_grad_cam", layer="layer2", denoise=False)
    assert ex.error is None
    ref = FGCAM(model, mean=pre.mean, std=pre.std)(pre(scenes[:1]), target=ex._target(ex.settings), layer="layer2")
    assert torch.allclose(ex.current_map(), ref[0], rtol=1e-5, atol=1e-8)
    ex.update(method="grad_cam", layer="layer3")
    assert ex.error is None and ex.current_map().shape == (SIZE // 16, SIZE // 16)
