"""The explanation methods: the shared call shape (:mod:`.base`), the CAM base protocol
(:mod:`.bases`), CAMs (:mod:`.cam`, :mod:`.hirescam`, :mod:`.finer`, :mod:`.pgc`), FG-CAM and
the LRP family (:mod:`.fgcam`), FG-CAM's components one channel at a time (:mod:`.components`)
and the registry of the methods the paper compares (:mod:`.registry`).

    >>> from fgcam_lib.methods import make_explainer
    >>> fg = make_explainer("fg_grad_cam_denoise", model, preprocess=preprocess)
    >>> fg = FGCAM(model, base=FinerCAM("grad_cam", k=3))           # any CamBase
"""
from .bases import CAM_BASES, CamBase, CamInputs, make_base, register_base
from .cam import CAM
from .finer import FinerCAM  # registers "finer_cam"
from .hirescam import HiResCAM, HiResCAMBase  # registers "hires_cam"
from .pgc import PytorchGradCamBase
from ..catalogue import is_input_layer
from .base import normalization
from .registry import (FAMILIES, METHODS, PAPER_CAM_METHODS, PAPER_INPUT_METHODS, MethodSpec, is_signed, label,
                       make_explainer, method_layers, method_names, paper_layers, supports)

__all__ = [
    "MethodSpec", "METHODS", "FAMILIES", "PAPER_CAM_METHODS", "PAPER_INPUT_METHODS", "make_explainer",
    "method_layers", "supports", "is_signed", "is_input_layer", "label", "method_names", "normalization",
    "paper_layers",
    "CamBase", "CamInputs", "CAM_BASES", "make_base", "register_base",
    "CAM", "HiResCAM", "HiResCAMBase", "FinerCAM", "PytorchGradCamBase",
]
