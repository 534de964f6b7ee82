"""The CAM base protocol: what FG-CAM and the CAM explainers ask of a CAM method.

A base turns what the network computed at one layer into CAM weights, with one method::

    weights(inputs: CamInputs) -> Tensor     # B x C (per channel) or B x C x h x w (per element)

The components are ``I = w * A`` (a B x C ``w`` broadcast over space, a B x C x h x w one
element-wise) and the CAM map is ``ReLU(sum_c I_c)`` (Eq. 2-3 and 8). :class:`CamInputs`
carries the activations ``A`` at the layer, the logits, the target classes, the input and a
``forward`` for bases that run the model again (Score-CAM), and gives the gradient of the
explained score w.r.t. ``A`` on demand (:attr:`CamInputs.gradients`; the score is the target
logit unless a base such as :class:`~fgcam_lib.methods.finer.FinerCAM` replaces it). A base
that never reads gradients sets ``needs_gradients = False``; its forward then records no graph.

    >>> class MeanActivation:                      # any object with .weights is a base
    ...     needs_gradients = False
    ...     def weights(self, inputs):
    ...         return inputs.activations.mean((2, 3))
    >>> maps = FGCAM(model, base=MeanActivation())(x, layer="input")
    >>> maps = FGCAM(model, base="hires_cam")(x, layer="input")        # a registered name

Names FG-CAM and :class:`~fgcam_lib.methods.cam.CAM` take for ``base=`` are in
:data:`CAM_BASES`; :func:`register_base` adds one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence, TypeVar, runtime_checkable

import torch
from torch import nn

from ..catalogue import method_label

__all__ = [
    "CamBase", "CamInputs", "Score", "target_logit", "CAM_BASES", "register_base", "make_base",
    "needs_gradients", "base_label", "components_of", "GradientSource",
]

Tensor = torch.Tensor
#: ``score(logits, target) -> B``: the per-image quantity whose gradient gradient bases read
Score = Callable[[Tensor, Tensor], Tensor]


def target_logit(logits: Tensor, target: Tensor) -> Tensor:
    """``y_t``: each image's target logit, B (the score every base explains by default)."""
    return logits.gather(1, target[:, None])[:, 0]


class GradientSource:
    """``dS/dA`` at several layers of one forward, one backward per score for all of them.

    ``logits``: B x K with the graph down to ``acts`` (the activations, leaves that require grad).
    """

    def __init__(self, logits: Tensor, acts: Sequence[Tensor], target: Tensor):
        self.logits, self.acts, self.target = logits, list(acts), target
        self._cache: dict[Any, tuple[Tensor, ...]] = {}

    def __call__(self, score: Score, index: int) -> Tensor:
        if score not in self._cache:
            s = score(self.logits, self.target)
            if s.shape != self.target.shape:
                raise ValueError(f"a score must give one value per image ({tuple(self.target.shape)}), "
                                 f"got {tuple(s.shape)}")
            self._cache[score] = torch.autograd.grad(s.sum(), self.acts, retain_graph=True)
        return self._cache[score][index]


@dataclass
class CamInputs:
    """What a base sees at one layer.

    ``activations``: ``A``, B x C x h x w (no graph). ``logits``: B x K (no graph).
    ``target``: B class indices. ``x``: the model input. ``forward(z) -> logits`` runs the
    model on a batch ``z`` (e.g. masked inputs). ``layer``: the layer's name. ``model``: the
    explained module. ``score``: what :attr:`gradients` differentiates.
    """

    activations: Tensor
    logits: Tensor
    target: Tensor
    x: Tensor
    forward: Callable[[Tensor], Tensor] = field(repr=False)
    layer: str = ""
    model: nn.Module | None = field(default=None, repr=False)
    score: Score = target_logit
    grad_source: Callable[[Score], Tensor] | None = field(default=None, repr=False)

    @property
    def gradients(self) -> Tensor:
        """``dS/dA``, B x C x h x w, for ``S = score(logits, target)`` summed over the batch."""
        if self.grad_source is None:
            raise RuntimeError("this forward kept no gradients: a base that reads inputs.gradients "
                               "must not set needs_gradients = False")
        return self.grad_source(self.score)

    def with_score(self, score: Score) -> "CamInputs":
        """The same inputs explaining another score (gradients follow it)."""
        return replace(self, score=score)


@runtime_checkable
class CamBase(Protocol):
    """A CAM method's weights at one layer: ``weights(inputs) -> B x C`` or ``B x C x h x w``.

    Optional attributes: ``needs_gradients`` (default True) and ``label`` (display name).
    """

    def weights(self, inputs: CamInputs) -> Tensor:
        ...


def needs_gradients(base: CamBase) -> bool:
    """Whether ``base`` reads :attr:`CamInputs.gradients` (its ``needs_gradients``, default True)."""
    return bool(getattr(base, "needs_gradients", True))


def base_label(base: CamBase | str) -> str:
    """Display label of a base: the catalogue's for a registered name or key, else the class name."""
    key = base if isinstance(base, str) else getattr(base, "key", None)
    if key is not None and method_label(key) != key:
        return method_label(key)
    return getattr(base, "label", None) or (key if isinstance(key, str) else type(base).__name__)


#: base name -> a callable building it (the class itself, keyword options allowed)
CAM_BASES: dict[str, Callable[..., CamBase]] = {}

B = TypeVar("B")


def register_base(cls: B) -> B:
    """Register a base class under its ``key``: ``@register_base`` above the class.

    Its label comes from :mod:`fgcam_lib.catalogue` (``METHOD_LABELS`` or ``OTHER_LABELS``).
    """
    key = getattr(cls, "key", None)
    if not isinstance(key, str) or not key:
        raise TypeError(f"{cls!r} needs a string class attribute 'key' to be registered")
    CAM_BASES[key] = cls  # type: ignore[assignment]
    return cls


def make_base(base: str | CamBase, **options: Any) -> CamBase:
    """A base object from a registered name (built with ``options``) or any object with ``weights``."""
    if isinstance(base, str):
        try:
            factory = CAM_BASES[base]
        except KeyError:
            raise ValueError(f"unknown base {base!r}; use one of {', '.join(CAM_BASES)} "
                             "or an object with a weights(inputs) method") from None
        return factory(**options)
    if options:
        raise TypeError(f"options {sorted(options)} apply to a base given by name, not to {base!r}")
    if isinstance(base, type):
        raise TypeError(f"base must be an instance, not the class {base.__name__} (use {base.__name__}())")
    if not callable(getattr(base, "weights", None)):
        raise TypeError(f"base must be a registered name or an object with a weights(inputs) method, not {base!r}")
    return base


def components_of(weights: Tensor, A: Tensor, name: str = "base") -> Tensor:
    """``w * A``: B x C weights broadcast over space, B x C x h x w ones element-wise."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name} returned {type(weights).__name__}, not a Tensor")
    if weights.dim() == 2 and weights.shape == A.shape[:2]:
        return weights.reshape(tuple(weights.shape) + (1,) * (A.dim() - 2)) * A
    if weights.shape == A.shape:
        return weights * A
    raise ValueError(f"{name} returned weights of shape {tuple(weights.shape)}; expected B x C "
                     f"{tuple(A.shape[:2])} or B x C x h x w {tuple(A.shape)}")
