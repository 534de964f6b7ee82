"""HiResCAM (Draelos & Carin 2020): gradient times activation, element by element.

Grad-CAM averages the gradient over space before weighting the activations; HiResCAM keeps
it per element, so its map is exactly the gradient-times-activation sum at the layer:

    w = dS/dA                       (B x C x h x w)
    map = ReLU(sum_k dS/dA^k * A^k)

    >>> HiResCAM(model)(x, layer="layer3")                    # B x h x w
    >>> FGCAM(model, base="hires_cam")(x, layer="input")      # its components, pushed to the pixels
"""
from __future__ import annotations

import torch

from .bases import CamBase, CamInputs, register_base
from .cam import CAM
from ..catalogue import method_label

__all__ = ["HiResCAMBase", "HiResCAM"]


@register_base
class HiResCAMBase(CamBase):
    """HiResCAM's element-wise weights ``dS/dA`` (B x C x h x w), no spatial pooling."""

    key = "hires_cam"

    def weights(self, inputs: CamInputs) -> torch.Tensor:
        return inputs.gradients


class HiResCAM(CAM):
    """HiResCAM at any feature layer: ``ReLU(sum_k dS/dA^k * A^k)``."""

    name = method_label("hires_cam")
    base_type = HiResCAMBase
