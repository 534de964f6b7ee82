"""The explorer's images, class names and models: the default gallery (benchmark scenes and the
real photos), images from tensors, PIL images or files, class names from a model's card, and
loaders of the menu's models (nothing loads until a loader is called).

    >>> default_images(96)[0][0]
    'scene 0 (cross)'
    >>> default_images(224, photos_first=True)[0][0]
    'photo: cat'
    >>> as_image_tensor("photo.png").shape             # 3 x H x W in [0, 1]
    >>> models = model_menu()                          # name -> loader, nothing loaded yet
    >>> list(models)
    ['efficientnet_lite0', 'bundled', 'bundled_vgg16bn_fc', 'bundled_resnet']
    >>> model, preprocess = models["bundled_resnet"]()
    >>> model_label("bundled_resnet")
    'bundled_resnet: ResNet (BasicBlock)'
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data.models import BUNDLED_MODELS

__all__ = ["default_images", "as_image_tensor", "image_name", "class_names_of", "BUNDLED", "MENU", "MODEL_LABELS",
           "ModelLoader", "model_menu", "model_label", "knows_benchmark"]

Tensor = torch.Tensor
#: a zero-argument function that returns ``(model, preprocess)``
ModelLoader = Callable[[], "tuple[nn.Module, Any]"]
#: the bundled CNNs, in the order of the explorer's model menu
BUNDLED: tuple[str, ...] = tuple(n for n in BUNDLED_MODELS if n not in ("bundled_vit", "bundled_swin"))
#: the explorer's model menu: the real ImageNet network (its weights install offline), then the bundled models
MENU: tuple[str, ...] = ("efficientnet_lite0", *BUNDLED)
#: model name -> what the model menu says about it
MODEL_LABELS: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite0: EfficientNet-Lite0, ImageNet",
    "bundled": "bundled: VGG16-BN, GAP + linear",
    "bundled_vgg16bn_fc": "bundled_vgg16bn_fc: VGG16-BN, 3 FC",
    "bundled_resnet": "bundled_resnet: ResNet (BasicBlock)",
    "bundled_vit": "bundled_vit: ViT (8 px patches)",
    "bundled_swin": "bundled_swin: Swin (3 stages)",
}


def model_menu(names: Sequence[str] = MENU) -> dict[str, ModelLoader]:
    """``{name: loader}`` for the menu's (or any :func:`~fgcam_lib.data.models.load_model`) models;
    a model is read from disk only when its loader is called.

    Example:
        >>> list(model_menu(BUNDLED))
        ['bundled', 'bundled_vgg16bn_fc', 'bundled_resnet']
    """
    from ..data.models import load_model

    return {name: partial(load_model, name) for name in names}


def model_label(name: str) -> str:
    """The model menu's text for ``name``: a short description for the bundled models, else the name."""
    return MODEL_LABELS.get(name, name)


def class_names_of(model: nn.Module, n_classes: int) -> list[str]:
    """The model card's ``classes``, else its ``categories``, else ``"class i"``."""
    card = getattr(model, "card", None)
    names = (card or {}).get("classes") if isinstance(card, dict) else None
    names = names or getattr(model, "categories", None)
    if names and len(names) == n_classes:
        return [str(c) for c in names]
    return [f"class {i}" for i in range(n_classes)]


def knows_benchmark(class_names: Sequence[str]) -> bool:
    """Whether a model's classes are the benchmark scenes' (a bundled model), not, say, ImageNet's."""
    from ..data.scenes import CLASSES

    return list(class_names) == list(CLASSES)


def default_images(size: int, photos_first: bool = False) -> list[tuple[str, Tensor]]:
    """Four benchmark scenes and the real photos, at the model's input size; ``photos_first``
    for a model that knows photos (an ImageNet network), so it starts on one."""
    from ..data.scenes import CLASSES, SyntheticScenes

    scenes = SyntheticScenes("test", n=4, size=size)
    out = [(f"scene {i} ({CLASSES[s['label']]})", s["image"]) for i, s in ((i, scenes[i]) for i in range(len(scenes)))]
    try:
        from ..data.photos import sample_photos

        photos, names, _ = sample_photos(size)
        pictures = [(f"photo: {n}", p) for n, p in zip(names, photos)]
        out = pictures + out if photos_first else out + pictures
    except (ImportError, OSError, AttributeError):  # scikit-image missing or a broken wheel
        pass
    return out


def as_image_tensor(image: Any) -> Tensor:
    """3 x H x W float in [0, 1] from a tensor (3 x H x W, 1 x 3 x H x W, uint8), a PIL image or a path."""
    from ..data.readers import load_image

    if isinstance(image, (str, Path)) or hasattr(image, "convert"):
        return load_image(image)
    t = torch.as_tensor(image)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"an image must be 3 x H x W (values in [0, 1]), got shape {tuple(t.shape)}")
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def image_name(image: Any, i: int) -> str:
    """A path's file name, else ``"image i"``."""
    return Path(image).name if isinstance(image, (str, Path)) else f"image {i}"
