"""Data: images (readers :mod:`.readers`, folders and batching :mod:`.images`, the bundled photos
:mod:`.photos`, ImageNet val :mod:`.imagenet`), the synthetic benchmark (:mod:`.scenes`) and
models (loading :mod:`.models`, fingerprints :mod:`.fingerprint`). Training the bundled models
is :mod:`fgcam_lib.training`.

    >>> from fgcam_lib.data import sample_photos, collate
    >>> x, names, classes = sample_photos(224)

``import fgcam_lib.data`` stays light: scenes and models load when first used.
"""
from typing import Any

from .imagenet import IMAGENET_ENV_VARS, ImageNetVal, read_synset_mapping
from .images import ImageFolderDataset, collate
from .photos import DEFAULT_SAMPLE_PHOTOS, SAMPLE_PHOTOS, SamplePhoto, sample_photos
from .readers import image_extensions, load_image, load_images

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
