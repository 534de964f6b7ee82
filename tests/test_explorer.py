"""Tests for the headless explorer core (fgcam_lib.ui.explorer): no ipywidgets involved."""
from __future__ import annotations

import base64
import subprocess
import sys

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fgcam_lib import FGCAM, ScoreCAM  # noqa: E402
from fgcam_lib.catalogue import method_label  # noqa: E402
from fgcam_lib.data.models import BundledVGG, Preprocess  # noqa: E402
from fgcam_lib.data.scenes import CLASSES, SyntheticScenes  # noqa: E402
from fgcam_lib.ui import explorer as explorer_module  # noqa: E402
from fgcam_lib.ui.explorer import Explorer  # noqa: E402
from fgcam_lib.ui.settings import METHODS, PREDICTED  # noqa: E402

SIZE = 64


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = BundledVGG(n_classes=len(CLASSES)).eval()
    scenes = SyntheticScenes("test", n=2, size=SIZE)
    return model, Preprocess(SIZE), [(f"scene {i}", scenes[i]["image"]) for i in range(2)]


@pytest.fixture()
def app(parts):
    model, pre, images = parts
    return Explorer(model, pre, images=images, class_names=CLASSES, display_dpi=40)


def test_core_imports_without_ipywidgets():
    code = ("import sys, fgcam_lib.ui.explorer, fgcam_lib.ui.settings; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_labels_come_from_the_catalogue():
    assert all(label == method_label(key) for key, label in METHODS.items())


def test_explainers_come_from_the_registry(app, monkeypatch):
    made = []
    real = explorer_module.make_explainer
    monkeypatch.setattr(explorer_module, "make_explainer", lambda name, *a, **kw: made.append((name, kw)) or real(name, *a, **kw))
    fg = app.explainer("fg_cam", "score_cam", "canonical")
    sc = app.explainer("score_cam")
    assert made == [("fg_score_cam", {"rules": "canonical", "denoise": None}), ("score_cam", {})]
    assert isinstance(fg, FGCAM) and fg.denoise is None and isinstance(sc, ScoreCAM)
    assert app.explainer("fg_cam", "score_cam", "canonical") is fg and len(made) == 2  # cached


def test_rules_change_propagates_with_the_new_rules(parts, app):
    """Step 1 is shared across rules, the propagation is not: at the input the presets differ."""
    model, pre, images = parts
    x = pre(images[0][1][None])
    maps = {}
    for rules in ("paper", "canonical", "paper"):
        app.set(image=0, method="fg_grad_cam", layer="input", rules=rules, denoise=False)
        maps[rules] = app.current_map()
        ref = FGCAM(model, rules=rules, mean=pre.mean, std=pre.std)(x, layer="input")[0]
        assert torch.allclose(maps[rules], ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max())), rules
    assert not torch.allclose(maps["paper"], maps["canonical"])
    assert app.calls["top"] == 1 and app.calls["trace"] == 1
    expl, _ = app.explanation(app.set(rules="canonical", layer=43))
    assert expl.weights is not None  # the CAM weights carried over to the other rules


# ------------------------------------------------------------------ issue 11: the class menu
def test_class_menu_has_a_real_predicted_value(app):
    """ipywidgets shows a menu whose value is None as blank: the predicted option has a real value."""
    c = app.controls()["target"]
    values = [v for _, v in c.options]
    assert c.value == PREDICTED and c.value is not None and values[0] == PREDICTED
    assert None not in values and len(values) == 6
    app.set(target=3)
    assert app.controls()["target"].value == 3
    app.set(target=PREDICTED)  # what the menu sends back
    assert app.settings.target is None and app.controls()["target"].value == PREDICTED


def test_every_control_value_is_one_of_its_options(app):
    for settings in (dict(), dict(method="grad_cam", layer=33, target=5), dict(method="lrp", fraction=0.37)):
        app.set(**settings)
        for name, control in app.controls().items():
            if control.options is not None:
                assert control.value in [v for _, v in control.options], (name, control)
    c = app.controls()
    assert not c["base"].enabled and c["rules"].enabled and not c["fraction"].enabled  # LRP


# ------------------------------------------------------------------ issue 11: the start state
def test_fork_leaves_the_app_at_its_start(app):
    """Headless cells below the live app work on a fork: the app keeps showing its start scene."""
    start_fig = app.update(image=1, method="fg_grad_cam", layer="input")
    start = app.settings
    events = []
    app.subscribe(events.append)
    lab = app.fork()
    forwards = app.calls["forward"]
    lab.update(method="grad_cam", layer=33)
    lab.update(image=0, method="lrp", signed=True)
    assert lab.error is None and lab.settings != start
    assert app.settings == start and app.figure is start_fig and events == []
    assert app.calls["forward"] == forwards  # the fork counts its own calls
    assert lab.fork().settings == lab.settings


# ------------------------------------------------------------------ issue 11: the saved picture
def test_repr_shows_a_png_of_the_current_state(app):
    app.update(method="fg_grad_cam", layer=13)
    bundle = app._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    assert png[:4] == b"\x89PNG" and "FG-CAM" in bundle["text/plain"] and "Layer13" in bundle["text/plain"]
    app.set(layer="input")  # a changed setting is rendered anew, not the stale figure
    assert app.figure is None
    assert base64.b64decode(app._repr_mimebundle_()["image/png"]) != png and app.figure is not None


# ------------------------------------------------------------------ issue 11: errors
def test_error_leaves_no_stale_figure(app):
    app.update(method="fg_grad_cam", layer=13)
    assert app.figure is not None
    fig = app.update(method="grad_cam", layer="input")
    assert app.error and app.figure is None  # nothing of the previous settings to show under the message
    assert [t.get_text() for t in fig.texts] == [app.error]
    app.update(layer=33)
    assert app.error is None and app.figure is not None
