"""The two rule shapes and the helpers every rule family shares.

A :class:`Rule` handles an op with one signal input: ``rule(op, x, R) -> R_in``, ``R`` the
relevance at the op's output, ``R_in`` at its input (the shape of ``x``). A
:class:`MultiRule` handles an op with several inputs (a residual ``add``, ``cat``, a gating
``mul``, ``x @ A``): ``rule(op, xs, R, data) -> [R_in or None per input]``. The walk picks
the call by the rule's class, nothing else.

A new rule subclasses one of the two and implements ``__call__``; ``reads_input = False``
when it needs only its inputs' shapes, ``guarantee`` when it does not conserve everywhere.

    >>> class Half(Rule):
    ...     guarantee = "no"
    ...     def __call__(self, op, x, R):
    ...         return R.reshape(x.shape) / 2
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch

__all__ = ["Rule", "MultiRule", "InputRelevance", "Pass", "Missing", "safe_div", "vjp", "positive_part",
           "negative_part"]

Tensor = torch.Tensor

#: what a :class:`MultiRule` returns per input: a tensor, ``{item: tensor}`` for a tuple
#: input (the pieces of a ``chunk``), or None (the input takes no relevance)
InputRelevance = Union[Tensor, dict[int, Tensor], None]


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0``."""
    # one division and one in-place pass: x/0 gives inf or nan, both set to 0
    return (num / den).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def vjp(fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor) -> Tensor:
    """``s`` pulled back through ``fn`` at ``x``: ``sum_j d fn(x)_j / d x_i * s_j``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xg), xg, s)
    return g


def positive_part(w: Tensor) -> Tensor:
    """``w+``, the positive part (the weight-part cache's ``"+"``)."""
    return w.clamp(min=0)


def negative_part(w: Tensor) -> Tensor:
    """``w-``, the negative part (the weight-part cache's ``"-"``)."""
    return w.clamp(max=0)


class Rule:
    """A rule for an op with one signal input: ``rule(op, x, R) -> R_in``.

    ``op`` is the node's module, its :class:`~fgcam_lib.engine.weighted.Weighted` (convs and
    linear layers) or a call ``op(x)`` with every other input filled in.
    """

    #: reads the input's values (False: its shape only, so the forward keeps no activation)
    reads_input: bool = True

    @property
    def guarantee(self) -> str:
        """What the rule promises about conservation (relevance summed over the inputs equals the
        output's, biases ignored): ``"always"``, a condition such as ``"where any input
        contributes"``, or ``"no"`` (a bias or a stabiliser takes a share)."""
        return "no" if getattr(self, "bias", False) else "always"

    @property
    def conserves(self) -> bool:
        """True when the rule conserves relevance everywhere (:attr:`guarantee` is ``"always"``)."""
        return self.guarantee == "always"

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class MultiRule(Rule):
    """A rule for an op with several inputs: ``rule(op, xs, R, data) -> [R_in or None per input]``.

    ``xs`` are the op's tensor inputs in call order (``op(*xs)`` reruns it), ``data[k]`` says
    whether input ``k`` depends on the image (constants such as a bias take no relevance;
    None: all do). A subclass of :class:`Rule` so presets hold both shapes alike.
    """

    # the call shape differs from Rule's on purpose: the walk dispatches on the class
    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,  # type: ignore[override]
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:  # pragma: no cover
        raise NotImplementedError


class Pass(Rule):
    """Relevance passes unchanged, ``R_in = R``: activations (ReLU, ReLU6, SiLU, GELU, ...),
    BatchNorm in the paper preset, LayerNorm (its std held constant), Dropout and
    StochasticDepth in eval."""

    reads_input = False

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        return R.reshape(x.shape)


class Missing(Rule):
    """Placeholder for an op no preset knows: raises when relevance reaches it."""

    reads_input = False

    def __init__(self, reason: str):
        self.reason = reason

    @property
    def conserves(self) -> bool:
        return False

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        raise TypeError(self.reason)

