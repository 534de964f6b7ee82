"""The two bundled vision transformers: torchvision's own classes at benchmark size.

Both are the torchvision classes themselves, so module paths are those of ``vit_b_16`` and
``swin_t`` (``encoder.layers.encoder_layer_5.ln_1``, ``features.5.1.norm1``, ...) and every
rule written for them holds on the torchvision models too.

* :class:`BundledViT`: ``VisionTransformer`` with 8 px patches at 96 px, a 12 x 12 token
  grid plus the class token, :data:`VIT_SIZE` blocks, widths and heads.
* :class:`BundledSwin`: ``SwinTransformer`` with 4 px patches at 96 px and three stages at
  24 x 24, 12 x 12 and 6 x 6 tokens (6 x 6 windows, so the last stage is one window).

    >>> BundledViT()(torch.zeros(1, 3, 96, 96)).shape
    torch.Size([1, 8])
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["BundledViT", "BundledSwin", "VIT_SIZE", "SWIN_SIZE"]

#: the bundled ViT's shape (constructor defaults; stored in its card)
VIT_SIZE: dict[str, Any] = dict(image_size=96, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128)
#: the bundled Swin's shape (constructor defaults; stored in its card)
SWIN_SIZE: dict[str, Any] = dict(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8],
                                 window_size=[6, 6], mlp_ratio=2.0)


class BundledViT(VisionTransformer):
    """torchvision's ``VisionTransformer`` at benchmark size (:data:`VIT_SIZE`); ``kwargs`` override it."""

    def __init__(self, n_classes: int = 8, **kwargs: Any) -> None:
        super().__init__(**{**VIT_SIZE, **kwargs}, num_classes=n_classes)


class BundledSwin(SwinTransformer):
    """torchvision's ``SwinTransformer`` at benchmark size (:data:`SWIN_SIZE`); ``kwargs`` override it.

    >>> BundledSwin()(torch.zeros(1, 3, 96, 96)).shape
    torch.Size([1, 8])
    """

    def __init__(self, n_classes: int = 8, **kwargs: Any) -> None:
        super().__init__(**{**SWIN_SIZE, **kwargs}, num_classes=n_classes)


