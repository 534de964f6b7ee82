"""CAM weights and CAM explainers (Eq. 1-3).

Gradient weights take ``A`` (B x C x H x W activations at a layer) and ``G`` (the
gradient of the target logit w.r.t. ``A``) and return B x C weights; the components are
``w * A`` and the map ``ReLU(sum_c w_c A_c)``. Layer-CAM uses pixel weights ``ReLU(G)``.

    >>> cam = GradCAM(model)
    >>> maps = cam(x, layer="features.33")          # B x h x w at that layer's resolution
    >>> maps = cam(x, layer=[13, 23, 33])           # one forward and backward for all three
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .base import Explainer, resolve_target
from ..engine.rules import safe_div
from ..engine.walk import forward

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


class _CAM(Explainer):
    """CAM family at any feature layer; components ``w * A`` (or ``ReLU(G) * A``)."""

    name = "CAM"

    def __init__(self, model):
        super().__init__(model)
        self.default_layer = self.graph.name(self.graph.default_component_layer())

    def _check_position(self, position, name):
        self._feature_map_check(position, name, self.name)

    def _components(self, A: Tensor, G: Tensor) -> Tensor:
        raise NotImplementedError

    def _explain(self, x, target, positions):
        # gradients start at the requested layers that no other requested layer feeds
        lowest = [p for p in positions if not any(q != p and self.graph.reaches(q, p) for q in positions)]
        trace = forward(self.graph, x, keep=positions, grad_at=lowest)
        logits = trace.out
        tgt = resolve_target(target, logits.detach())
        acts = [trace.acts[p] for p in positions]
        grads = torch.autograd.grad(logits.gather(1, tgt[:, None]).sum(), acts)
        comps = [self._components(A.detach(), G) for A, G in zip(acts, grads)]
        return comps, tgt, logits, None


class GradCAM(_CAM):
    """Grad-CAM (Selvaraju et al. 2017): weights are the spatial mean of the gradient."""

    name = "Grad-CAM"
    weight_fn = staticmethod(grad_cam_weights)

    def _components(self, A, G):
        return self.weight_fn(A, G)[:, :, None, None] * A


class GradCAMpp(GradCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018)."""

    name = "Grad-CAM++"
    weight_fn = staticmethod(grad_cam_pp_weights)


class XGradCAM(GradCAM):
    """XGrad-CAM (Fu et al. 2020)."""

    name = "XGrad-CAM"
    weight_fn = staticmethod(xgrad_cam_weights)


class LayerCAM(_CAM):
    """Layer-CAM (Jiang et al. 2021): pixel weights ``ReLU(G)``, components ``ReLU(G) * A``."""

    name = "Layer-CAM"

    def _components(self, A, G):
        return G.clamp(min=0) * A


class ScoreCAM(_CAM):
    """Score-CAM (Wang et al. 2020); see :func:`score_cam_weights` for ``variant``.

    The default is the authors' variant, the one FG-Score-CAM and the evaluation use, so
    ``ScoreCAM(model)`` and ``FGCAM(model, base="score_cam")`` share their weights;
    ``variant="common"`` reproduces pytorch-grad-cam.
    """

    name = "Score-CAM"

    def __init__(self, model, variant: str = "paper", batch_size: int = 16, align_corners: bool = False, progress: bool = False):
        super().__init__(model)
        if variant not in ("paper", "common"):
            raise ValueError(f"unknown Score-CAM variant {variant!r}; use 'paper' or 'common'")
        self.variant, self.batch_size, self.align_corners, self.progress = variant, batch_size, align_corners, progress

    def _logits(self, x: Tensor) -> Tensor:
        return forward(self.graph, x).out

    def _explain(self, x, target, positions):
        with torch.no_grad():
            trace = forward(self.graph, x, keep=positions)
            tgt = resolve_target(target, trace.out)
            comps = []
            for p in positions:
                A = trace.acts[p]
                w = score_cam_weights(self._logits, x, A, tgt, self.variant, self.batch_size, self.align_corners, self.progress)
                comps.append(w[:, :, None, None] * A)
        return comps, tgt, trace.out, None
