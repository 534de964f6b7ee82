"""Any pytorch-grad-cam CAM with ``get_cam_weights`` as an FG-CAM base.

pytorch-grad-cam (``pip install fgcam-lib[gradcam]``, imported as ``pytorch_grad_cam``) computes
a CAM's per-channel weights in ``get_cam_weights(input, layer, targets, activations, grads)``.
:class:`PytorchGradCamBase` hands it this library's activations and gradients at the component
layer and returns its weights, so FG-CAM pushes that CAM's components down to the pixels:

    w = cam.get_cam_weights(x, layer, [ClassifierOutputTarget(t)], A, dS/dA)     (B x C)

    >>> import pytorch_grad_cam as pgc
    >>> fg = FGCAM(model, base=PytorchGradCamBase(pgc.GradCAMPlusPlus))
    >>> maps = fg(x, layer="input")
    >>> CAM(model, base=PytorchGradCamBase(pgc.XGradCAM))(x, layer="layer4")

Methods that replace ``get_cam_image`` instead (HiResCAM, EigenCAM, ...) have no weights to
take; :class:`~fgcam_lib.methods.hirescam.HiResCAMBase` is this library's HiResCAM.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from .bases import CamBase, CamInputs

__all__ = ["PytorchGradCamBase"]

Tensor = torch.Tensor


def _has_weights(cls: type) -> bool:
    """Whether a pytorch-grad-cam class computes its own ``get_cam_weights``."""
    from pytorch_grad_cam.base_cam import BaseCAM

    own = getattr(cls, "get_cam_weights", None)
    return own is not None and own is not BaseCAM.get_cam_weights


class PytorchGradCamBase(CamBase):
    """The weights of a pytorch-grad-cam CAM as a base.

    ``cam``: a CAM class (``pytorch_grad_cam.GradCAM``, ``GradCAMPlusPlus``, ``XGradCAM``,
    ``ScoreCAM``, ...), built on the explained model with no target layers (so it hooks
    nothing) the first time weights are asked for; or an instance of one, used as it is.
    The target of each image is given as ``ClassifierOutputTarget(t)``; the gradients are those
    of the score this library explains (the target logit, or e.g. Finer-CAM's contrast).
    """

    def __init__(self, cam: Any):
        if importlib.util.find_spec("pytorch_grad_cam") is None:  # pragma: no cover - without the extra only
            raise ImportError("PytorchGradCamBase needs pytorch-grad-cam: pip install 'fgcam-lib[gradcam]' "
                              "(or pip install grad-cam)")
        cls = cam if isinstance(cam, type) else type(cam)
        if not _has_weights(cls):
            raise TypeError(f"{cls.__name__} has no get_cam_weights of its own (it builds its map another way); "
                            "only CAMs that weight channels can be a base")
        self.cam_class = cls
        self.cam = None if isinstance(cam, type) else cam
        self.key = cls.__name__
        #: ScoreCAM and AblationCAM read no gradient; a class is asked once it is built
        self.needs_gradients = bool(getattr(self.cam, "uses_gradients", True))

    def _instance(self, model: torch.nn.Module | None) -> Any:
        if self.cam is None:
            if model is None:
                raise ValueError("building a pytorch-grad-cam CAM needs the model (CamInputs.model)")
            self.cam = self.cam_class(model=model, target_layers=[])
            self.needs_gradients = bool(getattr(self.cam, "uses_gradients", True))
        return self.cam

    @staticmethod
    def _layer(inputs: CamInputs) -> Any:
        try:
            return inputs.model.get_submodule(inputs.layer) if inputs.model is not None and inputs.layer else None
        except AttributeError:
            return None  # a functional node: no module to name

    def weights(self, inputs: CamInputs) -> Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = self._instance(inputs.model)
        A = inputs.activations
        G = inputs.gradients if getattr(cam, "uses_gradients", True) else None
        if getattr(cam, "detach", True):  # the library's numpy path
            A_in = A.detach().cpu().numpy()
            G_in = None if G is None else G.detach().cpu().numpy()
        else:
            A_in, G_in = A, G
        targets = [ClassifierOutputTarget(int(t)) for t in inputs.target.tolist()]
        w = cam.get_cam_weights(inputs.x, self._layer(inputs), targets, A_in, G_in)
        if isinstance(w, torch.Tensor):
            return w.detach().to(dtype=A.dtype, device=A.device)
        return torch.as_tensor(np.asarray(w), dtype=A.dtype, device=A.device)

    def __repr__(self) -> str:
        return f"PytorchGradCamBase({self.cam_class.__name__})"
