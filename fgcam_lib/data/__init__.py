"""Data: images and ImageNet val (:mod:`.images`), the synthetic benchmark (:mod:`.scenes`),
model loading (:mod:`.models`) and training the bundled model (:mod:`.train`).

    >>> from fgcam_lib.data import sample_photos, collate
    >>> x, names, classes = sample_photos(224)

``import fgcam_lib.data`` stays light: scenes, models and training load when first used.
"""
from typing import Any

from .images import (DEFAULT_SAMPLE_PHOTOS, IMAGENET_ENV_VARS, SAMPLE_PHOTOS, ImageFolderDataset, ImageNetVal,
                     SamplePhoto, collate, image_extensions, load_image, load_images, read_synset_mapping,
                     sample_photos)

__all__ = [
    "IMAGENET_ENV_VARS", "SAMPLE_PHOTOS", "DEFAULT_SAMPLE_PHOTOS", "ImageFolderDataset", "ImageNetVal",
    "SamplePhoto", "SyntheticScenes", "collate", "image_extensions", "load_image", "load_images",
    "read_synset_mapping", "sample_photos",
]


def __getattr__(name: str) -> Any:
    """``SyntheticScenes`` on first use, so importing the image readers does not build the benchmark."""
    if name == "SyntheticScenes":
        from .scenes import SyntheticScenes

        return SyntheticScenes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"SyntheticScenes"})
