"""Model loading: torchvision CNNs with their official weights, and the bundled benchmark models.

Three bundled architectures, trained on the synthetic scenes by ``python -m fgcam_lib.training``:
``"bundled"`` (:class:`BundledVGG`: VGG16-BN features, global pool, one linear layer),
``"bundled_vgg16bn_fc"`` (:class:`BundledVGGFC`: the same features with torchvision VGG's
three-layer classifier) and ``"bundled_resnet"`` (:class:`BundledResNet`: torchvision's
``ResNet`` / ``BasicBlock`` at reduced width, module paths as on ``resnet18``); and two vision
transformers, ``"bundled_vit"`` and ``"bundled_swin"`` (torchvision's ``VisionTransformer`` and
``SwinTransformer`` at benchmark size, :mod:`~fgcam_lib.data.transformers`).

``load_model(name) -> (model, preprocess)``; the model is in eval mode. Weights are never
silently random: a missing file raises :class:`WeightsNotFoundError` with the path(s)
looked at and how to obtain the file; random initialisation is asked for explicitly with
``weights="random"``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet

from ..engine.presets import IMAGENET_MEAN, IMAGENET_STD
from .imagenet_models import IMAGENET_MODELS, load_imagenet_model
from .transformers import BundledSwin, BundledViT

__all__ = [
    "BundledVGG", "BundledVGGFC", "BundledResNet", "BUNDLED_MODELS", "build_bundled", "bundled_paths",
    "Preprocess", "WeightsNotFoundError", "load_model", "model_card", "bundled_classes",
    "VGG16_CFG", "TORCHVISION_VGGS", "TORCHVISION_CNNS", "MODEL_NAMES", "BUNDLED_CHECKPOINT", "BUNDLED_CARD",
]


DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # the repository's data/ folder
BUNDLED_CHECKPOINT = DATA_DIR / "bundled_vgg16bn.pt"
BUNDLED_CARD = DATA_DIR / "bundled_vgg16bn.json"

#: torchvision's VGG16 configuration ("M" = 2x2 max-pool)
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

TORCHVISION_VGGS: tuple[str, ...] = (
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)
#: torchvision CNNs the engine is tested on (any other torchvision classifier loads too)
TORCHVISION_CNNS: tuple[str, ...] = TORCHVISION_VGGS + (
    "alexnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "wide_resnet50_2", "densenet121", "densenet169", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "convnext_tiny", "regnet_y_400mf",
)
#: bundled model name -> checkpoint file name under data/ (the card is the same name with .json)
BUNDLED_MODELS: dict[str, str] = {
    "bundled": "bundled_vgg16bn.pt",
    "bundled_vgg16bn_fc": "bundled_vgg16bn_fc.pt",
    "bundled_resnet": "bundled_resnet.pt",
    "bundled_vit": "bundled_vit.pt",
    "bundled_swin": "bundled_swin.pt",
}
MODEL_NAMES: tuple[str, ...] = tuple(BUNDLED_MODELS) + tuple(IMAGENET_MODELS) + TORCHVISION_CNNS


def _torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are not on disk (and cannot be downloaded here)."""


def scaled_cfg(divisor: int = 8, cfg: Sequence[int | str] = VGG16_CFG) -> list[int | str]:
    """VGG configuration with every width divided by ``divisor`` (at least 1 channel)."""
    return [c if c == "M" else max(int(c) // divisor, 1) for c in cfg]


class BundledVGG(nn.Module):
    """VGG16-BN layout with narrower channels (same ``features[i]`` indices as torchvision).

    ``features``: conv3x3 (pad 1) -> BatchNorm2d -> ReLU(inplace) per conv, MaxPool2d(2, 2)
    at indices 6, 13, 23, 33, 43 for the VGG16 configuration; ``avgpool``: global average
    pool; ``classifier``: Dropout -> Linear.

    Input B x 3 x S x S (normalised); output B x n_classes logits. With S = 96 (the bundled
    model's input size) the last feature map (``features[43]``) is B x C x 3 x 3.
    """

    def __init__(self, cfg: Sequence[int | str] | None = None, n_classes: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.cfg = list(cfg) if cfg is not None else scaled_cfg(8)
        self.features, c_in = _vgg_features(self.cfg)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, n_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x n_classes."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_weights(model: nn.Module, linear: str = "small") -> None:
    """VGG-style init of ``model``'s layers in module order (the same RNG draws as torchvision's loop).

    Conv2d: He (fan_out), BatchNorm2d: 1 / 0, biases 0; Linear weights: ``"small"`` N(0, 0.01)
    (torchvision VGG) or ``"he"`` (He, fan_in, for narrow ReLU layers).

    >>> _init_weights(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)), linear="he")
    """
    if linear not in ("small", "he"):
        raise ValueError(f"linear must be 'small' or 'he', not {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _vgg_features(cfg: Sequence[int | str]) -> tuple[nn.Sequential, int]:
    """conv3x3 -> BN -> ReLU(inplace) per width, MaxPool2d(2) per "M"; returns (features, last width)."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in cfg:
        if c == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(c), kernel_size=3, padding=1), nn.BatchNorm2d(int(c)),
                       nn.ReLU(inplace=True)]
            c_in = int(c)
    return nn.Sequential(*layers), c_in


class BundledVGGFC(nn.Module):
    """VGG16-BN features (as :class:`BundledVGG`) with torchvision VGG's own classifier structure.

    ``features``: indices 0-43 exactly as ``BundledVGG``; ``avgpool``:
    ``AdaptiveAvgPool2d(pool)``; flatten; ``classifier``: Linear, ReLU, Dropout, Linear,
    ReLU, Dropout, Linear (indices 0-6 as in torchvision's ``VGG``). torchvision pools to
    7 x 7, the size of ``features[43]`` at 224 px, so its pool is the identity there; the
    default ``pool=3`` is that size at 96 px. ``hidden=512`` is torchvision's 4096 divided
    by the width divisor 8.

    >>> m = BundledVGGFC().eval()
    >>> m(torch.zeros(1, 3, 96, 96)).shape
    torch.Size([1, 8])
    """

    def __init__(self, cfg: Sequence[int | str] | None = None, n_classes: int = 8, pool: int = 3,
                 hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.cfg = list(cfg) if cfg is not None else scaled_cfg(8)
        self.features, c_last = _vgg_features(self.cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c_last * pool * pool, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, n_classes))
        # He init keeps the signal's scale through two narrow ReLU layers (torchvision's
        # N(0, 0.01) suits 4096 wide layers, not 512); the last layer starts small
        _init_weights(self, linear="he")
        nn.init.normal_(self.classifier[6].weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x n_classes."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class BundledResNet(ResNet):
    """torchvision's ``ResNet`` with ``BasicBlock`` at reduced width (``resnet18`` layout by default).

    Module paths are those of ``torchvision.models.resnet18``: ``conv1, bn1, relu, maxpool,
    layer1..layer4`` (each of ``BasicBlock``\ s, ``layerN.0.downsample`` where the shape
    changes), ``avgpool, fc``; ``forward`` is torchvision's. ``widths`` replaces 64, 128,
    256, 512. At 96 px ``layer1..layer4`` give 24, 12, 6, 3 pixel maps (1/4 .. 1/32).

    >>> m = BundledResNet().eval()
    >>> m(torch.zeros(1, 3, 96, 96)).shape
    torch.Size([1, 8])
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (2, 2, 2, 2),
                 n_classes: int = 8) -> None:
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes the widths: set up the same modules here
        w = [int(c) for c in widths]
        self.widths, self.blocks = w, [int(b) for b in blocks]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = w[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, w[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, w[0], self.blocks[0])
        self.layer2 = self._make_layer(BasicBlock, w[1], self.blocks[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, w[2], self.blocks[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, w[3], self.blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w[3] * BasicBlock.expansion, n_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_bundled(name: str, n_classes: int = 8, **kwargs: Any) -> nn.Module:
    """A bundled architecture by name with random weights; ``kwargs`` go to its constructor.

    >>> build_bundled("bundled_resnet", widths=(8, 16, 32, 64)).fc.in_features
    64
    """
    classes: dict[str, type[nn.Module]] = {
        "bundled": BundledVGG, "bundled_vgg16bn_fc": BundledVGGFC, "bundled_resnet": BundledResNet,
        "bundled_vit": BundledViT, "bundled_swin": BundledSwin}
    if name not in classes:
        raise ValueError(f"unknown bundled architecture {name!r}; one of {', '.join(classes)}")
    return classes[name](n_classes=n_classes, **kwargs)


def bundled_paths(name: str) -> tuple[Path, Path]:
    """(checkpoint, card) default paths of a bundled model under data/."""
    ckpt = DATA_DIR / BUNDLED_MODELS[name]
    return ckpt, ckpt.with_suffix(".json")


class Preprocess:
    """Resize to ``size`` x ``size`` and normalise with ``mean``/``std``.

    Accepts a B x 3 x H x W or 3 x H x W float tensor in [0, 1], a uint8 tensor, a PIL
    image, or a path to an image file; returns a B x 3 x size x size float tensor.
    """

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 resize_mode: str = "bilinear") -> None:
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_mode = resize_mode

    def to_tensor(self, x: Any) -> torch.Tensor:
        """Input of any accepted kind -> B x 3 x H x W float in [0, 1] (a list is resized to ``size``)."""
        from .readers import to_batch  # one reader: paths, PIL, grey/RGB/RGBA arrays, CHW/HWC, lists

        return to_batch(x, size=self.size if isinstance(x, (list, tuple)) else None)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x 3 x size x size (unchanged if already that size)."""
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode=self.resize_mode, align_corners=False,
                             antialias=self.resize_mode in ("bilinear", "bicubic"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def __call__(self, x: Any) -> torch.Tensor:
        return self.normalize(self.resize(self.to_tensor(x)))

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, mean={self.mean}, std={self.std})"


# ------------------------------------------------------------------ loading ------------
def _torchvision_weights_enum(name: str) -> Any:
    import torchvision.models as tvm

    if name in TORCHVISION_VGGS:  # the paper's weights
        return tvm.get_model_weights(name).IMAGENET1K_V1
    return tvm.get_model_weights(name).DEFAULT


def _hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_torchvision(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, Preprocess]:
    import torchvision.models as tvm

    enum = _torchvision_weights_enum(name)
    tf = enum.transforms()
    preprocess = Preprocess(int(tf.crop_size[0]), tuple(tf.mean), tuple(tf.std))
    if weights == "random":
        return tvm.get_model(name, weights=None), preprocess
    url = enum.url
    path = Path(weights) if weights is not None else _hub_checkpoint_path(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained weights for {name!r} not found at {path}\n"
            f"Download {url}\n"
            f"and put it at {_hub_checkpoint_path(url)} (torch hub cache; TORCH_HOME moves it), "
            f"or pass load_model({name!r}, weights='/path/to/{os.path.basename(url)}'). "
            f"Use weights='random' for an untrained network.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # skip the random init: every tensor comes from the file
        model = tvm.get_model(name, weights=None)
    model.load_state_dict(state, assign=True)
    model.categories = list(enum.meta["categories"])  # type: ignore[attr-defined]
    return model, preprocess


def _read_card(card_path: Path) -> dict[str, Any]:
    with open(card_path) as f:
        return json.load(f)


def _arch_from_card(card: dict[str, Any], default: str) -> tuple[str, dict[str, Any]]:
    """(architecture name, constructor kwargs) a card describes; old cards hold only cfg/dropout."""
    arch = card.get("arch", default)
    if "arch_kwargs" in card:
        return arch, dict(card["arch_kwargs"])
    return arch, {"cfg": card["cfg"], "dropout": card.get("dropout", 0.2)}


def _missing_bundled(name: str, ckpt_path: Path) -> WeightsNotFoundError:
    if name == "bundled":
        how = f"`python -m fgcam_lib.training --out {ckpt_path}`"
    else:
        how = f"`python -m fgcam_lib.training --recipe {name}`"
    return WeightsNotFoundError(f"weights of {name!r} not found at {ckpt_path}; train them with {how} "
                                f"(see TRAINING.md), or use weights='random'.")


def _load_bundled(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, Preprocess]:
    default_ckpt, default_card = bundled_paths(name)
    ckpt_path = default_ckpt if weights in (None, "random") else Path(weights)
    card_path = ckpt_path.with_suffix(".json")
    if weights == "random":
        card = _read_card(card_path) if card_path.is_file() else {
            "arch": name, "arch_kwargs": {}, "classes": _scene_classes(), "input_size": 96,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        arch, kwargs = _arch_from_card(card, name)
        model = build_bundled(arch, n_classes=len(card["classes"]), **kwargs)
    else:
        if not ckpt_path.is_file():
            raise _missing_bundled(name, ckpt_path)
        blob = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        card = blob["card"] if "card" in blob else _read_card(card_path)
        arch, kwargs = _arch_from_card(card, name)
        model = build_bundled(arch, n_classes=len(card["classes"]), **kwargs)
        model.load_state_dict(blob["state_dict"])
    model.card = card  # type: ignore[attr-defined]
    return model, Preprocess(card["input_size"], card["mean"], card["std"])


def _scene_classes() -> list[str]:
    from .scenes import CLASSES

    return list(CLASSES)


def load_model(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               pretrained: bool = True) -> tuple[nn.Module, Preprocess]:
    """Load a model by name; returns ``(model in eval mode on device, preprocess)``.

    Args:
        name: a bundled model ("bundled", "bundled_vgg16bn_fc", "bundled_resnet", "bundled_vit",
            "bundled_swin"), a real ImageNet network
            whose weights install offline ("efficientnet_lite0") or a torchvision classifier
            (``TORCHVISION_CNNS`` are tested: VGGs, ResNets, DenseNets, MobileNets, EfficientNet, ConvNeXt, ...).
        weights: None (default location: data/ for "bundled", the torch hub cache for
            torchvision models; VGGs take the paper's IMAGENET1K_V1 weights, others their
            DEFAULT), a path to a checkpoint / state-dict file, or "random" (untrained).
        device: where to put the model.
        pretrained: False is the same as ``weights="random"``.

    Raises:
        ValueError: unknown name.
        WeightsNotFoundError: the weights file is missing.
    """
    if not pretrained:
        weights = "random"
    if name in BUNDLED_MODELS:
        model, preprocess = _load_bundled(name, weights)
    elif name in IMAGENET_MODELS:
        model = load_imagenet_model(name, weights)
        card = IMAGENET_MODELS[name]
        preprocess = Preprocess(card["input_size"], card["mean"], card["std"])
    elif name in TORCHVISION_CNNS or name in _torchvision_classifiers():
        model, preprocess = _load_torchvision(name, weights)
    else:
        import difflib

        close = difflib.get_close_matches(name, list(dict.fromkeys(MODEL_NAMES + tuple(_torchvision_classifiers()))), n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; use {', '.join(map(repr, BUNDLED_MODELS))}, "
                         f"{', '.join(map(repr, IMAGENET_MODELS))} (ImageNet weights, offline) or a "
                         "torchvision classifier such as "
                         "vgg16_bn, resnet50, densenet121, mobilenet_v2, efficientnet_b0, convnext_tiny")
    return model.to(device).eval(), preprocess


def model_card(model: nn.Module) -> dict[str, Any]:
    """The JSON card of a bundled model (architecture, data, training, accuracies); {} otherwise."""
    return dict(getattr(model, "card", {}))


def bundled_classes() -> list[str]:
    """Class names of the bundled model (from its card, else the scene classes)."""
    if BUNDLED_CARD.is_file():
        return list(_read_card(BUNDLED_CARD)["classes"])
    return _scene_classes()
