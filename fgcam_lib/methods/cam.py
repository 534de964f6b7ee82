"""CAM weights, the built-in CAM bases and the CAM explainers (Eq. 1-3).

A CAM base (:class:`~fgcam_lib.methods.bases.CamBase`) turns the activations ``A`` at a layer
(B x C x h x w), the gradient ``G`` of the explained score w.r.t. ``A`` and the logits into
weights ``w``, per channel (B x C) or per element (B x C x h x w); the components are
``w * A`` and the map ``ReLU(sum_c w_c A_c)``. The bases here: Grad-CAM, Grad-CAM++,
XGrad-CAM (``w = f(A, G)``, B x C), Layer-CAM (``w = ReLU(G)``, element-wise) and Score-CAM
(masked forward passes, no gradient). :class:`CAM` applies any base at any feature layer;
:class:`GradCAM` and the others are :class:`CAM` with their base.

    >>> cam = GradCAM(model)
    >>> maps = cam(x, layer="features.33")          # B x h x w at that layer's resolution
    >>> maps = cam(x, layer=[13, 23, 33])           # one forward and backward for all three
    >>> maps = CAM(model, base=GradCAMppBase())(x, layer=33)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .base import Explainer, resolve_target
from .bases import (CamBase, CamInputs, GradientSource, base_label, components_of, make_base, needs_gradients,
                    register_base)
from ..catalogue import method_label
from ..engine.rules import safe_div
from ..engine.walk import forward

__all__ = [
    "grad_cam_weights", "grad_cam_pp_weights", "xgrad_cam_weights", "score_cam_weights", "GRADIENT_WEIGHTS",
    "GradCAMBase", "GradCAMppBase", "XGradCAMBase", "LayerCAMBase", "ScoreCAMBase",
    "CAM", "GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "ScoreCAM",
]

Tensor = torch.Tensor


def grad_cam_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM: ``w_c = mean_{ij} G_cij``."""
    return G.mean((2, 3))


def grad_cam_pp_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ (closed form for an exponential score):
    ``a = G^2 / (2 G^2 + sum_ij(A) G^3)``, ``w_c = sum_ij a ReLU(G)``."""
    g2 = G.pow(2)
    denom = 2 * g2 + A.sum((2, 3), keepdim=True) * g2 * G
    alpha = torch.where(G != 0, g2 / (denom + 1e-6), torch.zeros_like(G))
    return (alpha * G.clamp(min=0)).sum((2, 3))


def xgrad_cam_weights(A: Tensor, G: Tensor) -> Tensor:
    """XGrad-CAM: ``w_c = sum_ij G_cij A_cij / (sum_ij A_cij)``."""
    return (G * A / (A.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3))


GRADIENT_WEIGHTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "grad_cam": grad_cam_weights,
    "grad_cam_pp": grad_cam_pp_weights,
    "xgrad_cam": xgrad_cam_weights,
}


def score_cam_weights(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    A: Tensor,
    target: Tensor,
    variant: str = "paper",
    batch_size: int = 8,
    align_corners: bool = False,
    progress: bool = False,
) -> Tensor:
    """Score-CAM weights, B x C.

    Each channel ``A_c`` is upsampled bilinearly to the input size and min-max
    normalised to a mask ``M_c``; the model sees ``x * M_c`` (``x`` as given, i.e.
    normalised). ``variant="paper"``: ``w_c = softmax(f(x * M_c))_t`` (the authors'
    code); ``variant="common"``: ``w = softmax_c(f(x * M_c)_t)`` (pytorch-grad-cam,
    torchcam). Masked inputs go through the model ``batch_size`` at a time in one
    reused buffer, the (image, channel) pairs of all images in one stream, so a batch
    spans images when a layer has fewer channels than ``batch_size``; the B x C x 3 x H x W
    tensor is never built, and the scores stay on the device.
    """
    if variant not in ("paper", "common"):
        raise ValueError(f"unknown Score-CAM variant {variant!r}; use 'paper' or 'common'")
    B, C = A.shape[:2]
    size = x.shape[-2:]
    scores = torch.empty(B * C, dtype=x.dtype, device=x.device)
    flat = A.reshape(B * C, 1, *A.shape[2:])  # pair p = (image p // C, channel p % C)
    buf = torch.empty((min(batch_size, B * C),) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    image_of = torch.arange(B * C, device=x.device) // C
    for p0 in tqdm(range(0, B * C, batch_size), desc="Score-CAM masks", disable=not progress, leave=False):
        p1 = min(p0 + batch_size, B * C)
        m = F.interpolate(flat[p0:p1], size=size, mode="bilinear", align_corners=align_corners)[:, 0]
        lo = m.flatten(1).min(1).values.view(-1, 1, 1)
        hi = m.flatten(1).max(1).values.view(-1, 1, 1)
        m = safe_div(m - lo, (hi - lo).expand_as(m))
        imgs = image_of[p0:p1]
        torch.mul(x[imgs], m.unsqueeze(1), out=buf[:p1 - p0])
        out = logits_fn(buf[:p1 - p0])
        if variant == "paper":
            out = out.softmax(1)
        scores[p0:p1] = out.gather(1, target[imgs][:, None])[:, 0]
    scores = scores.view(B, C)
    return scores if variant == "paper" else scores.softmax(1)



# ------------------------------------------------------------------------------- bases
@register_base
class GradCAMBase(CamBase):
    """Grad-CAM (Selvaraju et al. 2017): ``w_c = mean_ij dS/dA_cij``, B x C.

        >>> FGCAM(model, base=GradCAMBase())       # = FGCAM(model, base="grad_cam")
    """

    key = "grad_cam"

    def weights(self, inputs: CamInputs) -> Tensor:
        return grad_cam_weights(inputs.activations, inputs.gradients)


@register_base
class GradCAMppBase(GradCAMBase):
    """Grad-CAM++ (Chattopadhay et al. 2018), see :func:`grad_cam_pp_weights`; B x C."""

    key = "grad_cam_pp"

    def weights(self, inputs: CamInputs) -> Tensor:
        return grad_cam_pp_weights(inputs.activations, inputs.gradients)


@register_base
class XGradCAMBase(GradCAMBase):
    """XGrad-CAM (Fu et al. 2020): ``w_c = sum_ij G_cij A_cij / sum_ij A_cij``; B x C."""

    key = "xgrad_cam"

    def weights(self, inputs: CamInputs) -> Tensor:
        return xgrad_cam_weights(inputs.activations, inputs.gradients)


@register_base
class LayerCAMBase(CamBase):
    """Layer-CAM (Jiang et al. 2021): element-wise weights ``ReLU(dS/dA)``, B x C x h x w."""

    key = "layer_cam"

    def weights(self, inputs: CamInputs) -> Tensor:
        return inputs.gradients.clamp(min=0)


@register_base
class ScoreCAMBase(CamBase):
    """Score-CAM (Wang et al. 2020): the target's score on the input masked by each channel,
    B x C; no gradient. ``variant``, ``batch_size``, ``align_corners``, ``progress``: see
    :func:`score_cam_weights`."""

    key = "score_cam"
    needs_gradients = False

    def __init__(self, variant: str = "paper", batch_size: int = 8, align_corners: bool = False,
                 progress: bool = False):
        if variant not in ("paper", "common"):
            raise ValueError(f"unknown Score-CAM variant {variant!r}; use 'paper' or 'common'")
        self.variant, self.batch_size, self.align_corners, self.progress = variant, batch_size, align_corners, progress

    def weights(self, inputs: CamInputs) -> Tensor:
        return score_cam_weights(inputs.forward, inputs.x, inputs.activations, inputs.target, self.variant,
                                 self.batch_size, self.align_corners, self.progress)


# --------------------------------------------------------------------------- explainers
class CAM(Explainer):
    """A CAM at any feature layer: components ``w * A`` for the weights of ``base``, maps
    ``ReLU(sum_c w_c A_c)`` (element-wise weights: ``ReLU(sum_c w_cij A_cij)``).

    ``base``: a registered name (:data:`~fgcam_lib.methods.bases.CAM_BASES`) or any object with
    ``weights(inputs)``. Subclasses name their base in ``base_type``.

        >>> CAM(model, base="hires_cam")(x, layer=[13, 33])    # one forward and backward
    """

    #: the base a subclass builds when no ``base`` is given
    base_type: Callable[[], CamBase] | None = None
    name = "CAM"

    def __init__(self, model, base: str | CamBase | None = None):
        super().__init__(model)
        if base is None:
            if self.base_type is None:
                raise TypeError("CAM needs a base: a registered name such as 'grad_cam', or a CamBase object")
            base = self.base_type()
        self.base: CamBase = make_base(base)
        self.name = base_label(self.base)
        self.default_layer = self.graph.name(self.graph.default_component_layer())

    def _check_position(self, position, name):
        self._feature_map_check(position, name, self.name)

    def _logits(self, x: Tensor) -> Tensor:
        return forward(self.graph, x).out

    def _explain(self, x, target, positions):
        base, grad = self.base, needs_gradients(self.base)
        if grad:
            # gradients start at the requested layers that no other requested layer feeds
            lowest = [p for p in positions if not any(q != p and self.graph.reaches(q, p) for q in positions)]
            trace = forward(self.graph, x, keep=positions, grad_at=lowest)
        else:
            with torch.no_grad():
                trace = forward(self.graph, x, keep=positions)
        logits = trace.out
        tgt = resolve_target(target, logits.detach())
        acts = [trace.acts[p] for p in positions]
        source = GradientSource(logits, acts, tgt) if grad else None
        comps = []
        for i, (p, A) in enumerate(zip(positions, acts)):
            grid = self.grid(trace.shapes, p)  # tokens and channels-last maps read as B x C x h x w
            grads = None if source is None else (lambda score, i=i, g=grid: g.to_grid(source(score, i)))
            inputs = CamInputs(grid.to_grid(A.detach()), logits.detach(), tgt, x, self._logits, self.graph.name(p),
                               self.model, grad_source=grads)
            with torch.set_grad_enabled(grad):
                w = base.weights(inputs)
            comps.append(components_of(w, inputs.activations, self.name))
        return comps, tgt, logits.detach(), None


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): weights are the spatial mean of the gradient."""

    name = method_label("grad_cam")
    base_type = GradCAMBase


class GradCAMpp(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018)."""

    name = method_label("grad_cam_pp")
    base_type = GradCAMppBase


class XGradCAM(CAM):
    """XGrad-CAM (Fu et al. 2020)."""

    name = method_label("xgrad_cam")
    base_type = XGradCAMBase


class LayerCAM(CAM):
    """Layer-CAM (Jiang et al. 2021): pixel weights ``ReLU(G)``, components ``ReLU(G) * A``."""

    name = method_label("layer_cam")
    base_type = LayerCAMBase


class ScoreCAM(CAM):
    """Score-CAM (Wang et al. 2020); see :func:`score_cam_weights` for ``variant``.

    The default is the authors' variant, the one FG-Score-CAM and the evaluation use, so
    ``ScoreCAM(model)`` and ``FGCAM(model, base="score_cam")`` share their weights;
    ``variant="common"`` reproduces pytorch-grad-cam.
    """

    name = method_label("score_cam")

    def __init__(self, model, variant: str = "paper", batch_size: int = 16, align_corners: bool = False, progress: bool = False):
        super().__init__(model, ScoreCAMBase(variant, batch_size, align_corners, progress))

    # the options live on the base; read and set them here as before
    variant = property(lambda self: self.base.variant, lambda self, v: setattr(self.base, "variant", v))
    batch_size = property(lambda self: self.base.batch_size, lambda self, v: setattr(self.base, "batch_size", v))
    align_corners = property(lambda self: self.base.align_corners,
                             lambda self, v: setattr(self.base, "align_corners", v))
    progress = property(lambda self: self.base.progress, lambda self, v: setattr(self.base, "progress", v))
