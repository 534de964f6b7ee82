"""FG-CAM (Eq. 2-8), its denoising, and LRP / CLRP / SGLRP on the same engine.

    >>> fg = FGCAM(model, base="grad_cam", rules="paper", denoise=0.1)
    >>> maps = fg(x, layer="input")                 # B x H x W, Eq. 8
    >>> many = fg(x, layer=[-1, 13, 23, 33])        # one propagation for all four
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch

from .base import Explainer, Target, resolve_target, normalization
from .bases import CAM_BASES, CamBase, CamInputs, GradientSource, components_of, make_base, needs_gradients
from .cam import GRADIENT_WEIGHTS, ScoreCAMBase
from ..engine.graph import INPUT
from ..engine.presets import Preset, bind, get_preset
from ..engine.rules import Rule
from ..engine.tokens import grid_of
from ..engine.walk import Trace, forward, plan, propagate

__all__ = ["FGCAM", "LRP", "CLRP", "SGLRP", "Step1", "BASES", "denoise", "denoise_rank"]

Tensor = torch.Tensor

#: the paper's CAM bases (the explorer's choices); ``FGCAM(base=...)`` takes any name in
#: :data:`~fgcam_lib.methods.bases.CAM_BASES` or any :class:`~fgcam_lib.methods.bases.CamBase`
BASES = tuple(GRADIENT_WEIGHTS) + ("score_cam",)


def denoise_rank(fraction: float, channels: int, positions: int) -> int:
    """Singular values kept: ``floor(fraction * min(C, K))``, at least 1 (4 for 512 x 49)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"denoise fraction must be in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * min(channels, positions) + 1e-9))


def denoise(components: Tensor, fraction: float, add_mean: bool = False) -> Tensor:
    """SVD denoising of B x C x H x W components.

    Per image: reshape to C x K (K = H W), subtract each row's mean, keep the top
    ``denoise_rank(fraction, C, K)`` singular values, reshape back. The row means are
    not added back (the authors' code) unless ``add_mean``.
    """
    B, C, H, W = components.shape
    M = components.reshape(B, C, H * W)
    mean = M.mean(2, keepdim=True)
    U, S, Vh = torch.linalg.svd(M - mean, full_matrices=False)
    r = denoise_rank(fraction, C, H * W)
    out = (U[:, :, :r] * S[:, None, :r]) @ Vh[:, :r]
    if add_mean:
        out = out + mean
    return out.reshape(B, C, H, W)


class Step1(NamedTuple):
    """FG-CAM's step 1 on a batch: the components ``I_L`` (B x C x H x W, denoised when the
    explainer denoises), the CAM weights (B x C, or B x C x H x W for an element-wise base),
    the classes explained (B), the logits and the forward trace the propagation reads."""

    components: Tensor
    weights: Tensor
    target: Tensor
    logits: Tensor
    trace: Trace


def _as_grid(explainer: Explainer, trace: Trace, position: int, R: Tensor) -> Tensor:
    if position == INPUT or not isinstance(R, torch.Tensor) or R.dim() not in (3, 4):
        return R
    g = grid_of(explainer.graph, position, trace.shapes, tuple(trace.shapes[INPUT][-2:]))
    return R if g is None else g.to_grid(R)


class _Propagating(Explainer):
    """Explainers that push relevance down with a rule preset."""

    def __init__(
        self,
        model,
        rules: str | Preset | Mapping[str, Rule] = "paper",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__(model)
        # the input normalisation sets the canonical z-beta bounds: the model card's, else ImageNet's
        known_mean, known_std = normalization(model)
        mean = mean if mean is not None else known_mean
        std = std if std is not None else known_std
        self.preset = get_preset(rules, mean, std)
        self.preset.check_keys(self.graph)

    def bound_rules(self):
        """Rules per node, bound afresh each call (folded BN follows the current weights)."""
        return bind(self.preset, self.graph)

    def propagate(self, trace: Trace, relevance: Tensor, start: int, positions: Sequence[int],
                  bound=None) -> dict[int, Tensor]:
        """Push ``relevance`` (the shape of the activation at ``start``) down to ``positions``
        with this explainer's rules, one walk for all: ``{position: relevance}``."""
        bound = self.bound_rules() if bound is None else bound
        raw = trace.shapes[start]
        if isinstance(raw, torch.Size) and relevance.shape != raw:  # given on the token grid
            relevance = self.grid(trace.shapes, start).from_grid(relevance, raw)
        with torch.no_grad():
            R = propagate(self.graph, bound, trace, relevance, plan(self.graph, bound, start, positions))
        # token and channels-last layers are returned as B x C x h x w, as on a CNN
        return {p: _as_grid(self, trace, p, r) for p, r in R.items()}

    def forward_for(self, x: Tensor, start: int, stops: Sequence[int], grad_at: Sequence[int] = (),
                    keep: Sequence[int] = (), bound=None) -> Trace:
        """A forward keeping what a walk from ``start`` down to ``stops`` reads."""
        walk = plan(self.graph, self.bound_rules() if bound is None else bound, start, stops)
        return forward(self.graph, x, keep=set(walk.keep) | set(keep), grad_at=grad_at)


class FGCAM(_Propagating):
    """FG-CAM: CAM components at the last feature layer, pushed down with LRP rules.

    ``base``: the CAM weights of Eq. 2: "grad_cam", "score_cam", "grad_cam_pp", "xgrad_cam"
    (the paper's), any other name in :data:`~fgcam_lib.methods.bases.CAM_BASES` ("layer_cam",
    "hires_cam", "finer_cam"), or any object with ``weights(inputs)``
    (:class:`~fgcam_lib.methods.bases.CamBase`); element-wise weights (B x C x H x W) give
    the components ``w * A`` element by element. ``rules``: "paper" (the authors' code),
    "canonical", a :class:`Preset`, or a dict of rules laid over the paper preset.
    ``denoise``: rank fraction for SVD
    denoising (e.g. 0.1), or None. ``component_layer``: where ``I_L`` is taken (default:
    ``features[-1]``). ``score_cam_variant``: "paper" or "common". ``mean``/``std``: the
    input normalisation, for the canonical z-beta bounds (default: the model's card, else
    ImageNet's).

        >>> FGCAM(model, base="hires_cam")(x, layer="input")
        >>> FGCAM(model, base=FinerCAM("grad_cam_pp", k=2), rules="canonical")(x, layer=[13, "input"])
    """

    def __init__(
        self,
        model,
        base: str | CamBase = "grad_cam",
        rules: str | Preset | Mapping[str, Rule] = "paper",
        denoise: float | None = None,
        component_layer: int | str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        score_cam_variant: str = "paper",
        batch_size: int = 8,
        progress: bool = False,
    ):
        super().__init__(model, rules, mean, std)
        if isinstance(base, str):
            if base not in CAM_BASES:
                raise ValueError(f"unknown base {base!r}; use one of {', '.join(CAM_BASES)} "
                                 "or an object with a weights(inputs) method")
        else:
            make_base(base)  # validates the object
        if denoise is not None:
            if isinstance(denoise, bool) or not isinstance(denoise, (int, float)):
                raise TypeError(f"denoise must be a rank fraction in (0, 1] such as 0.1, or None; got {denoise!r}")
            denoise_rank(denoise, 1, 1)  # validates the fraction
        if score_cam_variant not in ("paper", "common"):
            raise ValueError(f"unknown Score-CAM variant {score_cam_variant!r}; use 'paper' or 'common'")
        self.base, self.denoise = base, denoise
        self.component_position = (
            self.graph.default_component_layer() if component_layer is None else self.graph.position(component_layer)
        )
        if self.component_position == INPUT:
            raise ValueError("component_layer cannot be the input")
        self.component_layer = self.graph.name(self.component_position)
        self.score_cam_variant, self.batch_size, self.progress = score_cam_variant, batch_size, progress

    def _check_position(self, position, name):
        if not self.graph.reaches(position, self.component_position):
            raise ValueError(
                f"layer {name!r} is {self.graph.where(position, self.component_position)} the component layer "
                f"{self.component_layer!r}; "
                "FG-CAM explains at that layer or below it"
            )

    @property
    def cam_base(self) -> CamBase:
        """The base object step 1 uses (built from the name with this explainer's Score-CAM options)."""
        if not isinstance(self.base, str):
            return self.base
        if self.base == "score_cam":
            return ScoreCAMBase(self.score_cam_variant, self.batch_size, progress=self.progress)
        return make_base(self.base)

    def components_at_top(self, x: Tensor, target: Target = None, keep_from: int | Sequence[int] | None = None,
                          bound=None) -> Step1:
        """Step 1 (+ denoising): ``Step1(I_L, weights, target, logits, trace)``; I_L is B x C x H x W.

        ``keep_from``: the position(s) anything will later be propagated down to (default: none).
        """
        L = self.component_position
        base = self.cam_base
        grad = needs_gradients(base)
        stops = [L] if keep_from is None else ([keep_from] if isinstance(keep_from, int) else list(keep_from))
        trace = self.forward_for(x, L, stops, grad_at=[L] if grad else (), keep=[L], bound=bound)
        logits = trace.out
        tgt = resolve_target(target, logits.detach())
        A = trace.acts[L]
        source = GradientSource(logits, [A], tgt) if grad else None
        grid = self.grid(trace.shapes, L)
        inputs = CamInputs(grid.to_grid(A.detach()), logits.detach(), tgt, x, lambda z: forward(self.graph, z).out,
                           self.component_layer, self.model,
                           grad_source=None if source is None else (lambda score: grid.to_grid(source(score, 0))))
        with torch.set_grad_enabled(grad):
            w = base.weights(inputs)
        A = inputs.activations
        if grad:
            trace.out = logits.detach()  # frees the graph above the component layer
        if A.dim() != 4:
            raise ValueError(f"the component layer {self.component_layer!r} gives {tuple(A.shape)}, not a "
                             "B x C x H x W feature map; pass component_layer")
        I = components_of(w, A, f"base {self.base!r}")
        if self.denoise is not None:
            I = denoise(I, self.denoise)
        return Step1(I, w, tgt, logits.detach(), trace)

    def _explain(self, x, target, positions):
        bound = self.bound_rules()
        step = self.components_at_top(x, target, keep_from=positions, bound=bound)
        R = self.propagate(step.trace, step.components, self.component_position, positions, bound)
        return [R[p] for p in positions], step.target, step.logits, step.weights


class LRP(_Propagating):
    """LRP from the logits: ``R = y_t`` at the target class, 0 elsewhere (Bach et al. 2015)."""

    def output_relevance(self, logits: Tensor, target: Tensor) -> Tensor:
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits)
        return onehot * logits

    def _explain(self, x, target, positions):
        bound = self.bound_rules()
        with torch.no_grad():
            trace = self.forward_for(x, self.graph.output, positions, bound=bound)
            logits = trace.out
            tgt = resolve_target(target, logits)
            R0 = self.output_relevance(logits, tgt)
        R = self.propagate(trace, R0, self.graph.output, positions, bound)
        return [R[p] for p in positions], tgt, logits, None


class CLRP(LRP):
    """Contrastive LRP (Gu et al. 2018): the target's relevance minus that of a dual
    concept made of all other classes, ``R = y_t`` at t and ``-y_t / (K - 1)`` elsewhere.
    Rules are linear in R, so this is one propagation of the contrastive output."""

    def output_relevance(self, logits, target):
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits)
        yt = logits.gather(1, target[:, None])
        return onehot * yt - (1 - onehot) * yt / (logits.shape[1] - 1)


class SGLRP(LRP):
    """Softmax-gradient LRP (Iwana et al. 2019): the output relevance is the gradient of
    the target's softmax probability, ``y_t (1 - y_t)`` at t and ``-y_t y_n`` elsewhere."""

    def output_relevance(self, logits, target):
        p = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits)
        pt = p.gather(1, target[:, None])
        return pt * (onehot - p)
