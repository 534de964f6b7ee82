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
from fgcam_lib.ui import session as session_module  # noqa: E402
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
    code = ("import sys, fgcam_lib.ui.explorer, fgcam_lib.ui.settings, fgcam_lib.ui.session, fgcam_lib.ui.state; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_labels_come_from_the_catalogue():
    assert all(label == method_label(key) for key, label in METHODS.items())


def test_explainers_come_from_the_registry(app, monkeypatch):
    made = []
    real = session_module.make_explainer
    monkeypatch.setattr(session_module, "make_explainer", lambda name, *a, **kw: made.append((name, kw)) or real(name, *a, **kw))
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


# ------------------------------------------------------------------ the model menu
BUNDLED_SIZE = 96   # the bundled models' input size


@pytest.fixture(scope="module")
def scenes96():
    scenes = SyntheticScenes("test", n=2, size=BUNDLED_SIZE)
    return [(f"scene {i}", scenes[i]["image"]) for i in range(2)], [scenes[i]["masks"][0] for i in range(2)]


@pytest.fixture()
def menu(scenes96):
    """An explorer on the three bundled models whose loaders record what they load."""
    from fgcam_lib.data.models import load_model
    from fgcam_lib.ui.gallery import BUNDLED

    loads: list[str] = []

    def loader(name):
        return lambda: loads.append(name) or load_model(name)

    app = Explorer.from_models({n: loader(n) for n in BUNDLED}, "bundled", images=scenes96[0], display_dpi=40)
    app.set(k=2)
    return app, loads


def _object_share(m: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(share of the map's positive mass on the object, the object's share of the area) at the map's size."""
    small = torch.nn.functional.adaptive_avg_pool2d(mask[None, None].float(), m.shape)[0, 0]
    pos = m.clamp(min=0)
    return float((pos * small).sum() / pos.sum()), float(small.mean())


def test_model_menu_lists_the_models_and_loads_only_the_chosen_one(menu):
    app, loads = menu
    c = app.controls()["model"]
    assert [v for _, v in c.options] == ["bundled", "bundled_vgg16bn_fc", "bundled_resnet"]
    assert c.value == "bundled" and c.enabled and app.settings.model == "bundled"
    assert loads == ["bundled"]   # the other two are not read from disk until chosen
    assert app.model_names == ["bundled", "bundled_vgg16bn_fc", "bundled_resnet"]


def test_switching_to_the_resnet_and_back(menu, scenes96):
    app, loads = menu
    app.update(image=0, method="fg_grad_cam", layer=13, denoise=False)
    assert app.error is None
    vgg_layers = [v for _, v in app.controls()["layer"].options]
    assert vgg_layers == [43, 33, 23, 13, 6, "input"]
    vgg_map = app.current_map()

    app.update(model="bundled_resnet")
    assert app.error is None and loads == ["bundled", "bundled_resnet"]
    layers = [v for _, v in app.controls()["layer"].options]
    assert [l for l in layers if l in ("layer3", "layer2", "layer1", "input")] == ["layer3", "layer2", "layer1", "input"]
    assert not any(isinstance(l, int) for l in layers)   # no VGG indices left in the menu
    assert app.settings.layer == "layer1"   # Layer13 (1/4 of the input) -> the ResNet's layer at 1/4
    assert app.class_names == list(CLASSES) and app.controls()["target"].value == PREDICTED
    m = app.current_map()
    assert m.shape == (BUNDLED_SIZE // 4, BUNDLED_SIZE // 4) and float(m.max()) > 0 and float(m.std()) > 0
    share, area = _object_share(m, scenes96[1][0])
    assert share > 2 * area, (share, area)   # the map sits on the object, not spread over the scene
    ref = FGCAM(app.model, mean=app.preprocess.mean, std=app.preprocess.std)(
        app.preprocess(scenes96[0][0][1][None]), target=app._target(app.settings), layer="layer1")[0]
    assert torch.allclose(m, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    assert "bundled_resnet" in app.describe()
    for layer in ("layer3", "layer2", "input"):
        app.update(layer=layer)
        assert app.error is None and app.current_map().abs().max() > 0, layer
    app.update(method="grad_cam", layer="layer3")
    assert app.error is None and app.current_map().shape == (BUNDLED_SIZE // 16, BUNDLED_SIZE // 16)

    tops = app.calls["top"]
    app.update(model="bundled", method="fg_grad_cam", layer=13)
    assert app.error is None and loads == ["bundled", "bundled_resnet"]   # nothing loaded again
    assert [v for _, v in app.controls()["layer"].options] == vgg_layers
    assert torch.equal(app.current_map(), vgg_map) and app.calls["top"] == tops   # the VGG's caches kept
    app.update(model="bundled_resnet", layer="input")
    assert app.settings.layer == "input" and app.error is None
    app.update(model="bundled")
    assert app.settings.layer == "input"   # the input stays the input


def test_unknown_model_is_a_one_line_value_error(menu):
    app, loads = menu
    before = app.settings
    with pytest.raises(ValueError, match=r"unknown model 'vgg99'; use one of 'bundled'") as err:
        app.set(model="vgg99")
    assert "\n" not in str(err.value) and app.settings == before
    app.update(model="vgg99")
    assert app.error == str(err.value) and app.settings == before and app.model_name == "bundled"
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        Explorer.from_models({"bundled": lambda: None}, "vgg99")
    assert loads == ["bundled"]


def test_fork_switches_model_without_moving_the_app(menu):
    app, loads = menu
    app.update(method="fg_grad_cam", layer=13)
    start, fig = app.settings, app.figure
    lab = app.fork()
    lab.update(model="bundled_resnet", layer="layer2")
    assert lab.error is None and lab.model_name == "bundled_resnet"
    assert app.settings == start and app.figure is fig and app.model_name == "bundled" and 13 in app.layers
    app.update(model="bundled_resnet")
    assert loads == ["bundled", "bundled_resnet"]   # the fork's model is the app's: loaded once


def test_one_model_has_a_disabled_model_menu(app):
    c = app.controls()["model"]
    assert c.options == (("model", "model"),) and c.value == "model" and not c.enabled
    assert not app.describe().startswith("model")


def test_model_dropdown_in_the_widgets(menu, monkeypatch):
    pytest.importorskip("ipywidgets")
    from fgcam_lib.ui import widgets
    from fgcam_lib.ui.render import ExplorerFigure

    core, loads = menu
    app = widgets.Explorer.from_models(core._sources, "bundled", images=core.images, display_dpi=30)
    app.set(k=2)
    app.show()
    ws = app._widgets
    assert [v for _, v in ws["model"].options] == ["bundled", "bundled_vgg16bn_fc", "bundled_resnet"]
    assert ws["model"].value == "bundled" and not ws["model"].disabled
    monkeypatch.setattr(ExplorerFigure, "png", lambda self, dpi=None: b"\x89PNG stub")
    ws["layer"].value = 13
    ws["model"].value = "bundled_resnet"
    assert app.model_name == "bundled_resnet" and app.error is None and ws["message"].value == ""
    assert ws["layer"].value == "layer1" and "layer3" in [v for _, v in ws["layer"].options]
    ws["model"].value = "bundled"
    assert [v for _, v in ws["layer"].options] == [43, 33, 23, 13, 6, "input"] and ws["layer"].value == 13
