"""Tests of model loading, the bundled architectures, their checkpoints and the training script."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from fgcam_lib.data import models
from fgcam_lib.engine.presets import IMAGENET_MEAN, IMAGENET_STD
from fgcam_lib.data.models import (BUNDLED_CHECKPOINT, BUNDLED_MODELS, BundledResNet, BundledVGG, BundledVGGFC,
                                   Preprocess, WeightsNotFoundError, bundled_paths, load_model, model_card,
                                   scaled_cfg)
from fgcam_lib.data.scenes import CLASSES, SyntheticScenes


def test_bundled_layout_matches_torchvision_vgg16_bn() -> None:
    ours = BundledVGG(scaled_cfg(8), n_classes=len(CLASSES))
    with torch.device("meta"):
        ref = torchvision.models.vgg16_bn(weights=None)
    assert len(ours.features) == len(ref.features) == 44
    for i, (a, b) in enumerate(zip(ours.features, ref.features)):
        assert type(a) is type(b), i
        if isinstance(a, nn.Conv2d):
            assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding) == ((3, 3), (1, 1), (1, 1))
            assert a.out_channels * 8 == b.out_channels
        if isinstance(a, nn.ReLU):
            assert a.inplace
    pools = [i for i, m in enumerate(ours.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [6, 13, 23, 33, 43]
    assert isinstance(ours.avgpool, nn.AdaptiveAvgPool2d)
    assert isinstance(ours.classifier[-1], nn.Linear)
    assert ours.classifier[-1].out_features == len(CLASSES)


def test_bundled_forward_walks_features_avgpool_classifier() -> None:
    model = BundledVGG(scaled_cfg(16), n_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.features(x)
    assert feats.shape == (2, 32, 2, 2)
    manual = model.classifier(torch.flatten(model.avgpool(feats), 1))
    assert torch.allclose(model(x), manual)
    assert manual.shape == (2, 5)


def test_unknown_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="vgg16_bn"):
        load_model("resnet9000")


def test_torchvision_weights_missing_raise_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("vgg16_bn")
    msg = str(info.value)
    assert str(tmp_path) in msg and "vgg16_bn-6c64b313.pth" in msg and "https://" in msg
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(WeightsNotFoundError):
        load_model("vgg11", weights=tmp_path / "missing.pth")


def test_torchvision_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg11(weights=None).state_dict().items()}
    state = {k: torch.empty(s) for k, s in shapes.items()}  # uninitialised: cheap
    path = tmp_path / "vgg11-8a719046.pth"
    path.write_bytes(b"")  # a real file is 500 MB: hand torch.load's result over instead
    monkeypatch.setattr(models.torch, "load", lambda f, **kw: state if Path(f) == path else None)
    model, pre = load_model("vgg11", weights=path)
    assert isinstance(model, torchvision.models.VGG) and not model.training
    assert pre.size == 224 and pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD
    assert len(model.categories) == 1000
    got = model.state_dict()
    assert all(got[k].data_ptr() == v.data_ptr() for k, v in state.items())


def test_bundled_random_init() -> None:
    model, pre = load_model("bundled", weights="random")
    assert isinstance(model, BundledVGG) and not model.training
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD
    out = model(pre(torch.rand(2, 3, 50, 70)))
    assert out.shape == (2, len(model_card(model)["classes"]))


def test_bundled_missing_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="train"):
        load_model("bundled", weights=tmp_path / "nope.pt")


def test_preprocess_inputs(tmp_path: Path) -> None:
    from PIL import Image

    pre = Preprocess(32)
    x = torch.rand(3, 40, 48)
    batch = pre(x)
    assert batch.shape == (1, 3, 32, 32)
    assert torch.allclose(pre.denormalize(pre.normalize(x[None])), x[None], atol=1e-6)
    img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    assert torch.allclose(pre(img), batch, atol=0.02)
    img.save(tmp_path / "a.png")
    assert torch.allclose(pre(tmp_path / "a.png"), batch, atol=0.02)
    assert pre(torch.rand(4, 3, 32, 32)).shape == (4, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        pre(tmp_path / "missing.png")


def test_training_script_tiny_epoch(tmp_path: Path) -> None:
    from fgcam_lib.training.train import main

    out = tmp_path / "tiny.pt"
    main(["--tiny", "--out", str(out), "--threads", "1"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["classes"] == CLASSES and card["epochs"] == 1
    assert 0.0 <= card["test_accuracy"] <= 1.0 and 0.0 <= card["pairs_top2"] <= 1.0
    model, pre = load_model("bundled", weights=out)
    assert pre.size == card["input_size"] == 32
    assert model(pre(torch.rand(1, 3, 32, 32))).shape == (1, len(CLASSES))
    assert (tmp_path / "tiny.pt.ckpt").is_file()  # the resumable training state


def test_pairs_metric() -> None:
    from fgcam_lib.training.train import pairs_top2, soft_targets

    logits = torch.tensor([[5.0, 4.0, 0.0], [5.0, 0.0, 4.0]])
    classes = torch.tensor([[1, 0], [0, 1]])
    assert pairs_top2(logits, classes) == 0.5
    assert soft_targets(classes, 3).tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]


@pytest.mark.parametrize("name", list(BUNDLED_MODELS))
def test_bundled_checkpoint_reproduces_card_accuracy(name: str) -> None:
    ckpt, card_path = bundled_paths(name)
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} not trained yet (TRAINING.md)")
    model, pre = load_model(name)
    card = model_card(model)
    assert card["classes"] == CLASSES
    assert json.loads(card_path.read_text())["test_accuracy"] == card["test_accuracy"]
    ds = SyntheticScenes("test", n=200, seed=card.get("scene_seed", 0), size=card["input_size"])
    images, classes = ds.to_tensors()
    with torch.no_grad():
        logits = model(pre(images))
    acc = float((logits.argmax(1) == classes[:, 0]).float().mean())
    # the transformers got far less far in their CPU budget (TRAINING.md); chance is 1/8
    floor = 0.25 if name in ("bundled_vit", "bundled_swin") else 0.8
    assert acc > floor, "bundled model is not trained"
    assert abs(acc - card["test_accuracy_first200"]) <= 0.02
    assert abs(acc - card["test_accuracy"]) <= 0.06


# ------------------------------------------------------------ the two new architectures --
def test_bundled_resnet_paths_are_resnet18s() -> None:
    ours = BundledResNet()
    with torch.device("meta"):
        ref = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert [type(m) for m in ours.modules()][1:] == [type(m) for m in ref.modules()][1:]
    assert [n for n, _ in ours.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                     "layer3", "layer4", "avgpool", "fc"]
    assert all(isinstance(b, torchvision.models.resnet.BasicBlock) for n in range(1, 5)
               for b in getattr(ours, f"layer{n}"))
    assert isinstance(ours, torchvision.models.ResNet)
    assert [getattr(ours, f"layer{n}")[0].conv1.out_channels for n in range(1, 5)] == [16, 32, 64, 128]


def test_bundled_resnet_stage_sizes_at_96px() -> None:
    model = BundledResNet().eval()
    x = torch.randn(2, 3, 96, 96)
    sizes = []
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for n in range(1, 5):
            h = getattr(model, f"layer{n}")(h)
            sizes.append(tuple(h.shape[1:]))
        logits = model.fc(torch.flatten(model.avgpool(h), 1))
    assert sizes == [(16, 24, 24), (32, 12, 12), (64, 6, 6), (128, 3, 3)]  # 1/4, 1/8, 1/16, 1/32
    assert torch.allclose(model(x), logits) and logits.shape == (2, len(CLASSES))


def test_bundled_vgg_fc_layout() -> None:
    ours = BundledVGGFC()
    plain = BundledVGG(scaled_cfg(8))
    assert [type(m) for m in ours.features] == [type(m) for m in plain.features]
    assert [(k, v.shape) for k, v in ours.features.state_dict().items()] == \
        [(k, v.shape) for k, v in plain.features.state_dict().items()]
    with torch.device("meta"):
        ref = torchvision.models.vgg16_bn(weights=None)
    assert [type(m) for m in ours.classifier] == [type(m) for m in ref.classifier]  # Linear, ReLU, Dropout x 2, Linear
    assert [n for n, _ in ours.named_children()] == ["features", "avgpool", "classifier"]
    assert isinstance(ours.avgpool, nn.AdaptiveAvgPool2d) and ours.avgpool.output_size == (3, 3)
    names = {n for n, _ in ours.named_modules()}
    assert {"features.43", "avgpool"} | {f"classifier.{i}" for i in range(7)} <= names
    assert (ours.classifier[0].in_features, ours.classifier[0].out_features) == (64 * 9, 512)
    assert ours.classifier[6].out_features == len(CLASSES)
    x = torch.randn(2, 3, 96, 96)
    assert ours.features(x).shape == (2, 64, 3, 3)
    assert ours.eval()(x).shape == (2, len(CLASSES))


def test_vgg_models_share_one_init() -> None:
    # one init for both VGG models: BN 1 / 0, zero biases, N(0, 0.01) classifiers; the FC
    # model's hidden Linear layers He-initialised (std sqrt(2 / fan_in)), its last one N(0, 0.01)
    torch.manual_seed(0)
    plain = BundledVGG(scaled_cfg(8)).requires_grad_(False)
    fc = BundledVGGFC(scaled_cfg(8)).requires_grad_(False)
    for bn in (m for m in fc.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())
    for i in (0, 3):
        w = fc.classifier[i].weight
        assert abs(float(w.std()) / (2 / w.shape[1]) ** 0.5 - 1) < 0.05, i
    assert abs(float(fc.classifier[6].weight.std()) - 0.01) < 0.003
    assert abs(float(plain.classifier[1].weight.std()) - 0.01) < 0.003
    assert all(float(m.bias.abs().max()) == 0 for m in fc.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    with pytest.raises(ValueError, match="linear"):
        models._init_weights(nn.Linear(2, 2), linear="xavier")


@pytest.mark.parametrize("name", ["bundled_vgg16bn_fc", "bundled_resnet"])
def test_new_bundled_models_checkpoint_size_and_random_forward(name: str) -> None:
    model, pre = load_model(name, weights="random")
    assert not model.training and pre.size == 96
    assert model(pre(torch.rand(3, 3, 80, 100))).shape == (3, len(CLASSES))
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert n_bytes < 5e6, n_bytes  # the checkpoint is the state dict plus a small card


@pytest.mark.parametrize("name", ["bundled_vgg16bn_fc", "bundled_resnet"])
def test_new_bundled_models_missing_weights_one_line_error(name: str, tmp_path: Path) -> None:
    for weights in (tmp_path / "nope.pt",) + ((None,) if not bundled_paths(name)[0].is_file() else ()):
        with pytest.raises(WeightsNotFoundError) as info:
            load_model(name, weights=weights)
        msg = str(info.value)
        assert "\n" not in msg and f"python -m fgcam_lib.training --recipe {name}" in msg


def test_bundled_names_are_model_names() -> None:
    assert set(BUNDLED_MODELS) <= set(models.MODEL_NAMES)
    assert bundled_paths("bundled")[0] == BUNDLED_CHECKPOINT


@pytest.mark.parametrize("arch", ["bundled_resnet", "bundled_vgg16bn_fc"])
def test_tiny_trained_new_arch_loads_by_its_card(arch: str, tmp_path: Path) -> None:
    from fgcam_lib.training.train import main

    out = tmp_path / "m.pt"
    card = main(["--tiny", "--arch", arch, "--out", str(out), "--threads", "1", "--log-steps", "0"])
    model, pre = load_model(arch, weights=out)
    assert type(model).__name__ == {"bundled_resnet": "BundledResNet", "bundled_vgg16bn_fc": "BundledVGGFC"}[arch]
    assert model_card(model)["fingerprint"] == card["fingerprint"] and pre.size == 32


def _zero_shifts(model: nn.Module) -> nn.Module:
    """No biases and no BN shifts (so conservation holds to round-off), positive BN scales."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name,component", [("bundled_resnet", "layer4"), ("bundled_vgg16bn_fc", "features.43")])
def test_engine_explains_new_architectures(name: str, component: str) -> None:
    from fgcam_lib import FGCAM, coverage

    torch.manual_seed(0)
    model = _zero_shifts(load_model(name, weights="random")[0])
    table = coverage(model, size=96)
    assert bool(table.reached.any())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    fg = FGCAM(model, rules="canonical")
    assert fg.component_layer == component
    e = fg.explain(x, layer=["input", component])
    top = e.components[component].double()
    lost = e.components["input"].double().sum((1, 2, 3)) - top.sum((1, 2, 3))
    assert float((lost / top.abs().sum((1, 2, 3))).abs().max()) < 1e-6
    maps = fg(x, layer="input")
    assert maps.shape == (2, 96, 96) and bool(torch.isfinite(maps).all())
