"""FG-CAM workbench: fine-grained CAM explanations and the LRP family on one engine.

    >>> from fgcam_lib import FGCAM
    >>> explainer = FGCAM(model, base="grad_cam", rules="paper", denoise=0.1)
    >>> maps = explainer(x, layer="input")          # Tensor[B, H, W]
"""
from .methods.base import Explainer, Explanation
from .methods.bases import CamBase, CamInputs, register_base
from .methods.cam import CAM, GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM
from .methods.finer import FinerCAM
from .methods.hirescam import HiResCAM, HiResCAMBase
from .methods.pgc import PytorchGradCamBase
from .methods.fgcam import CLRP, FGCAM, LRP, SGLRP, denoise
from .engine.presets import Preset, canonical, paper
from .engine.rules import AlphaBeta, Epsilon, Flat, Gate, Pass, PoolZ, Route, Split, Sum, WSquare, ZBeta, ZPlus


def coverage(model, rules="paper", x=None, size: int = 224):
    """What the engine does at every node of ``model``: op, kind, rule, conservation (a DataFrame).

    Run it before trusting a map on a new architecture; see :func:`fgcam_lib.engine.report.coverage`.
    """
    from .engine.report import coverage as _coverage  # lazily: pandas

    return _coverage(model, rules=rules, x=x, size=size)


def load_model(name: str, weights=None, device="cpu", pretrained: bool = True):
    """Load ``"bundled"`` or a torchvision CNN: ``(model, preprocess)``; see :func:`fgcam_lib.data.models.load_model`."""
    from .data.models import load_model as _load  # lazily: torchvision is only needed here

    return _load(name, weights=weights, device=device, pretrained=pretrained)


def show(x, maps, preprocess=None, **kwargs):
    """Each image with its map over it and a colourbar (a matplotlib Figure); see :func:`fgcam_lib.ui.viz.show`.

        >>> maps = FGCAM(model)(preprocess(images), layer="input")
        >>> show(preprocess(images), maps, preprocess)
    """
    from .ui.viz import show as _show  # lazily: matplotlib

    return _show(x, maps, preprocess, **kwargs)


__all__ = [
    "FGCAM", "GradCAM", "ScoreCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "LRP", "CLRP", "SGLRP",
    "CAM", "CamBase", "CamInputs", "register_base", "HiResCAM", "HiResCAMBase", "FinerCAM", "PytorchGradCamBase",
    "Explainer", "Explanation", "denoise", "load_model", "coverage", "show",
    "Preset", "paper", "canonical",
    "ZPlus", "ZBeta", "Epsilon", "AlphaBeta", "Flat", "WSquare", "Pass", "PoolZ", "Sum", "Gate", "Route", "Split",
]
