"""What the browser test found in the explorer, checked without a browser (part of `make test`).

In JupyterLab at 1280 px the three columns of controls were squeezed into scrolling boxes (the
menus cut, the rules buttons stacked), the rank-fraction readout read "0.1 (rank 1", and the
message for Grad-CAM at the input lost the closing quote of the layer it suggests.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fgcam_lib.data.models import BundledVGG, Preprocess  # noqa: E402
from fgcam_lib.data.scenes import CLASSES, SyntheticScenes  # noqa: E402
from fgcam_lib.ui import widgets  # noqa: E402
from fgcam_lib.ui.explorer import Explorer as Core  # noqa: E402
from fgcam_lib.ui.settings import fraction_choices  # noqa: E402

SIZE = 64


def _px(width: str) -> int:
    assert width.endswith("px"), width
    return int(width[:-2])


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = BundledVGG(n_classes=len(CLASSES)).eval()
    scenes = SyntheticScenes("test", n=1, size=SIZE)
    return model, Preprocess(SIZE), [("scene 0", scenes[0]["image"])]


@pytest.fixture()
def view(parts):
    pytest.importorskip("ipywidgets")
    model, pre, images = parts
    app = widgets.Explorer(model, pre, images=images, class_names=CLASSES, display_dpi=30)
    app.set(k=2)
    yield app.show()
    plt.close("all")


def test_columns_wrap_instead_of_squeezing(view):
    assert view.panel.layout.flex_flow == "row wrap"
    assert len(view.panel.children) == 3
    for column in view.panel.children:
        assert column.layout.flex == "0 0 auto"   # keeps its controls' width
    left = view.panel.children[0]
    # the file box and its load button: no wider than the menus above
    row = next(c for c in left.children if view.widgets["path"] in getattr(c, "children", ()))
    assert _px(row.children[0].layout.width) + _px(row.children[1].layout.width) <= _px(view.widgets["image"].layout.width)


def test_rank_fraction_readout_has_room(view):
    slider = view.widgets["fraction"]
    assert slider.readout and _px(slider.layout.width) == widgets.SLIDER_WIDTH
    # the bundled model's labels and those of a VGG16 component layer (512 channels, 14 x 14)
    labels = [label for label, _ in slider.options] + [label for label, _ in fraction_choices(512, 196)]
    assert max(map(len, labels)) <= widgets.READOUT_CHARS, labels
    assert widgets.SLIDER_WIDTH >= 90 + 164 + 7 * widgets.READOUT_CHARS


def test_rules_buttons_fit_the_middle_column(view):
    rules = view.widgets["rules"]
    assert rules.style.description_width == "initial"
    assert 2 * _px(rules.style.button_width) + 60 <= _px(view.widgets["method"].layout.width or "300px")


def test_error_message_keeps_its_quotes(parts):
    model, pre, images = parts
    core = Core(model, pre, images=images, class_names=CLASSES, display_dpi=30)
    core.update(method="grad_cam", layer="input", k=2)
    assert core.error.endswith("'features.43'"), core.error
    core.update(image="no such picture.png")   # other messages keep their quoted names too
    assert "'no such picture.png'" in core.error, core.error
    plt.close("all")


def test_key_error_messages_lose_only_the_added_quotes():
    from fgcam_lib.ui.explorer import _message

    assert _message(KeyError("unknown layer 'features.99'")) == "unknown layer 'features.99'"
    assert _message(ValueError("'x' is not a method")) == "'x' is not a method"
    assert _message(KeyError()) == "KeyError"
