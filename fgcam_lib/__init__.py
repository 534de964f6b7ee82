"""FG-CAM workbench: fine-grained CAM explanations and the LRP family on one engine.

    >>> from fgcam_lib import FGCAM
    >>> explainer = FGCAM(model, base="grad_cam", rules="paper", denoise=0.1)
    >>> maps = explainer(x, layer="input")          # Tensor[B, H, W]
"""
from .base import Explainer, Explanation
from .cam import GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM
from .fgcam import CLRP, FGCAM, LRP, SGLRP, denoise
from .engine.presets import Preset, canonical, paper
from .engine.rules import AlphaBeta, Epsilon, Flat, Pass, PoolZ, WSquare, ZBeta, ZPlus


def load_model(name: str, weights=None, device="cpu", pretrained: bool = True):
    """Load ``"bundled"`` or a torchvision VGG: ``(model, preprocess)``; see :func:`fgcam_lib.models.load_model`."""
    from .models import load_model as _load  # lazily: torchvision is only needed here

    return _load(name, weights=weights, device=device, pretrained=pretrained)


__all__ = [
    "FGCAM", "GradCAM", "ScoreCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "LRP", "CLRP", "SGLRP",
    "Explainer", "Explanation", "denoise", "load_model",
    "Preset", "paper", "canonical",
    "ZPlus", "ZBeta", "Epsilon", "AlphaBeta", "Flat", "WSquare", "Pass", "PoolZ",
]
