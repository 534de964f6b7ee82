"""Finer-CAM (Zhang et al. 2025): explain the target against its most similar classes.

A CAM explains the target logit ``y_t`` and so also lights up what the target shares with
classes that look alike. Finer-CAM keeps the CAM and changes the score it explains to a
contrast with the ``k`` most similar classes ``D``:

    S = sum_{d in D} pi_d (y_t - gamma y_d) = y_t - gamma sum_{d in D} pi_d y_d

``D``: the ``k`` classes whose logits are nearest the target's (for the predicted class, the
runners-up). ``pi``: ``"softmax"`` (the authors' code) is the softmax over ``D``'s logits, i.e.
the predicted probabilities renormalised over ``D``, differentiated with the rest of ``S``;
``"mean"`` is ``1 / k``. ``gamma`` (the comparison strength): 0 gives the base CAM back, 1 the
plain difference. Any gradient base then takes its weights from ``dS/dA``.

    >>> FGCAM(model, base=FinerCAM("grad_cam", k=3))(x, layer="input")
    >>> CAM(model, base="finer_cam")(x, layer="layer4")     # Finer-Grad-CAM, the defaults

On a linear head ``y = W GAP(A)`` with ``weighting="mean"`` the Grad-CAM weights are
``(W_t - gamma mean_{d in D} W_d) / (h w)``.
"""
from __future__ import annotations

import torch

from .bases import CamBase, CamInputs, base_label, make_base, needs_gradients, register_base

__all__ = ["FinerCAM", "similar_classes"]

Tensor = torch.Tensor
WEIGHTINGS = ("softmax", "mean")


def similar_classes(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """The ``k`` classes whose logits are nearest each target's, nearest first: LongTensor[B, k]."""
    dist = (logits - logits.gather(1, target[:, None])).abs()
    dist = dist.scatter(1, target[:, None], float("inf"))
    return dist.topk(k, dim=1, largest=False).indices


@register_base
class FinerCAM(CamBase):
    """A gradient base's weights for Finer-CAM's contrastive score (see the module docstring).

    ``base``: the CAM whose weights are taken (a name or a base object; it must read
    gradients). ``k``: how many similar classes (at most the number of classes - 1).
    ``gamma``: comparison strength. ``weighting``: ``"softmax"`` or ``"mean"``.
    """

    key = "finer_cam"

    def __init__(self, base: str | CamBase = "grad_cam", k: int = 3, gamma: float = 1.0,
                 weighting: str = "softmax"):
        self.base = make_base(base)
        if not needs_gradients(self.base):
            raise ValueError(f"Finer-CAM changes the score a gradient is taken of; {base_label(self.base)} "
                             "reads no gradient")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        self.k, self.gamma, self.weighting = k, float(gamma), weighting

    def references(self, logits: Tensor, target: Tensor) -> Tensor:
        """The similar classes ``D`` of each image, B x k (fewer when the model has fewer classes)."""
        k = min(self.k, logits.shape[1] - 1)
        if k < 1:
            raise ValueError("Finer-CAM needs a model with at least two classes")
        return similar_classes(logits.detach(), target, k)

    def score(self, logits: Tensor, target: Tensor) -> Tensor:
        """``S = y_t - gamma sum_d pi_d y_d``, B."""
        ref = self.references(logits, target)
        y_d = logits.gather(1, ref)
        pi = y_d.softmax(1) if self.weighting == "softmax" else torch.full_like(y_d, 1.0 / y_d.shape[1])
        return logits.gather(1, target[:, None])[:, 0] - self.gamma * (pi * y_d).sum(1)

    def weights(self, inputs: CamInputs) -> Tensor:
        return self.base.weights(inputs.with_score(self.score))

    def __repr__(self) -> str:
        return f"FinerCAM({base_label(self.base)}, k={self.k}, gamma={self.gamma}, weighting={self.weighting!r})"
