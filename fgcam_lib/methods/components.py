"""FG-CAM's explanation components, one channel (or any edit of ``I_L``) at a time.

Every relevance rule is linear in the relevance for fixed activations, so the
resolution improvement ``IR`` of Eq. 4 is a linear map of the components ``I_L``
(B x C x H x W, Eq. 3). Split ``I_L`` into pieces that sum to it and the pieces'
propagations sum to ``IR(I_L)`` at every layer. Two splits are useful:

- by channel: ``I_L = sum_k I_L^(k)``, where ``I_L^(k)`` keeps channel ``k`` and zeroes
  the rest. ``IR(I_L^(k))`` at layer ``l`` (c x h x w, in the channels of layer ``l``)
  is what channel ``k`` of the component layer becomes there;
- by denoising: ``I_L = row means + kept singular directions + dropped ones``
  (:func:`denoise_split`), so the effect of SVD denoising can be looked at piece by piece.

    >>> top = TopComponents(FGCAM(model), x)                       # one forward + gradient
    >>> maps = top.propagate(layers=[13, "input"])                 # {layer: B x c x h x w}
    >>> per = top.per_channel([5, 17], layers=[13])                # {13: B x 2 x c x h x w}
    >>> torch.allclose(top.per_channel(range(top.channels), [13])[13].sum(1), maps[13])
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .base import LayerSpec, Target, resolve_target
from .fgcam import FGCAM, denoise, denoise_rank
from ..engine.ops import eval_mode
from ..engine.walk import Trace

Tensor = torch.Tensor

__all__ = ["TopComponents", "denoise_split", "relu_budget", "channel_pieces"]


def channel_pieces(components: Tensor, channels: Sequence[int]) -> Tensor:
    """``I_L^(k)`` for each ``k`` in ``channels``: B x k x C x H x W, channel ``k`` kept, others 0.

    Summed over the second dimension with all channels listed it gives ``components`` back.
    """
    B, C = components.shape[:2]
    idx = torch.as_tensor(list(channels), dtype=torch.long, device=components.device)
    if idx.numel() == 0:
        raise ValueError("channels is empty")
    if bool(((idx < 0) | (idx >= C)).any()):
        raise ValueError(f"channels {idx.tolist()} out of range for {C} channels")
    out = components.new_zeros((B, idx.numel()) + tuple(components.shape[1:]))
    j = torch.arange(idx.numel(), device=components.device)
    out[:, j, idx] = components[:, idx]
    return out


def denoise_split(components: Tensor, fraction: float) -> dict[str, Tensor]:
    """Split B x C x H x W components into the three parts SVD denoising sees.

    ``"mean"``: each channel's spatial mean (subtracted before the SVD and, as in the
    authors' code, not added back); ``"kept"``: the top ``denoise_rank(fraction, C, K)``
    singular directions of the centred C x K matrix (= :func:`fgcam_lib.denoise`);
    ``"dropped"``: the rest. The three sum to ``components``; denoising keeps ``"kept"`` only.

        >>> parts = denoise_split(I, 0.1)
        >>> torch.allclose(parts["mean"] + parts["kept"] + parts["dropped"], I, atol=1e-6)
        True
    """
    mean = components.mean((2, 3), keepdim=True).expand_as(components)
    kept = denoise(components, fraction)
    return {"mean": mean.contiguous(), "kept": kept, "dropped": components - mean - kept}


def relu_budget(signed_maps: Tensor) -> dict[str, Tensor]:
    """What Eq. 8's ReLU removes from signed maps (B x h x w, ``sum_c I_c`` before the ReLU).

    Also takes components (B x c x h x w): the masses are then per neuron, before the
    channel sum has let positive and negative relevance cancel. Per image: ``positive`` = sum of the positive values, ``negative`` = sum of the
    negative values (<= 0), ``net`` = their sum (the total relevance, conserved by the
    rules), ``removed_share`` = ``|negative| / (positive + |negative|)``, the share of
    the absolute relevance mass the ReLU sets to zero, and ``pixels_removed`` = the
    share of positions with a negative value.
    """
    m = signed_maps.flatten(1)
    pos = m.clamp(min=0).sum(1)
    neg = m.clamp(max=0).sum(1)
    total = pos - neg
    share = torch.where(total > 0, neg.abs() / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))
    return {"positive": pos, "negative": neg, "net": pos + neg, "removed_share": share,
            "pixels_removed": (m < 0).float().mean(1)}


def _repeat(v, times: int):
    if isinstance(v, torch.Tensor):
        return v.detach().repeat_interleave(times, 0)
    if isinstance(v, torch.Size):
        return torch.Size((v[0] * times,) + tuple(v[1:]))
    if isinstance(v, (tuple, list)) and v and isinstance(v[0], (torch.Tensor, torch.Size)):
        return type(v)(_repeat(t, times) for t in v)
    return v


def _repeat_trace(trace: Trace, times: int) -> Trace:
    """The trace of a batch where every image appears ``times`` times in a row."""
    acts = {p: _repeat(a, times) for p, a in trace.acts.items()}
    shapes = {p: _repeat(s, times) for p, s in trace.shapes.items()}
    return Trace(acts, shapes, None)


@dataclass
class TopComponents:
    """FG-CAM's step 1 on a batch, kept with its forward trace so that any components can
    be pushed down with the explainer's rules: ``I_L`` itself, an edit of it, or its
    channels one at a time. The one handle on step 1 for code outside the explainer.

    Args:
        fg: the FG-CAM explainer (its base CAM, rules and component layer are used; its
            ``denoise`` setting decides whether :attr:`components` is denoised).
        x: B x 3 x H x W, normalised.
        target: None (predicted class), an int or one class per image.
        lowest: the shallowest layer anything will be propagated to (default: the input),
            or a list of layers: the trace then keeps what walks to each of them read.
        source: ``source(x, target) -> B x C x H x W`` replaces step 1's components (e.g.
            Score-CAM components computed on a copy of the model); the forward then runs
            without gradients and :attr:`weights` is None.

    Attributes: ``components`` (I_L, B x C x H x W), ``weights`` (B x C; B x C x H x W for an
    element-wise base such as HiResCAM), ``target`` (B),
    ``logits`` (B x classes), ``trace``.
    """

    fg: FGCAM
    x: Tensor
    target: Target = None
    lowest: LayerSpec | Sequence[LayerSpec] = "input"
    source: Callable[[Tensor, Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        graph, fg = self.fg.graph, self.fg
        lowest = [self.lowest] if isinstance(self.lowest, (int, str)) else list(self.lowest)
        self._lowest = [graph.position(spec) for spec in lowest]
        self.weights: Tensor | None
        with eval_mode(fg.model):
            self._bound = fg.bound_rules()
            if self.source is None:
                step = fg.components_at_top(self.x, self.target, keep_from=self._lowest, bound=self._bound)
                I, w, tgt, logits, trace = step
                w = w.detach()
            else:
                with torch.no_grad():
                    L = fg.component_position
                    trace = fg.forward_for(self.x, L, self._lowest, keep=[L], bound=self._bound)
                    logits = trace.out
                    tgt = resolve_target(self.target, logits)
                I, w = self.source(self.x, tgt), None
        self.components, self.weights = I.detach(), w
        self.target, self.logits, self.trace = tgt, logits.detach(), trace

    @property
    def channels(self) -> int:
        """C, the number of channels at the component layer."""
        return int(self.components.shape[1])

    def rank(self, fraction: float) -> int:
        """Singular values denoising with ``fraction`` keeps for these components."""
        C, H, W = self.components.shape[1:]
        return denoise_rank(fraction, C, H * W)

    def _positions(self, layers: Iterable[LayerSpec]) -> list[tuple[LayerSpec, int]]:
        out = []
        graph = self.fg.graph
        for spec in layers:
            p = graph.position(spec)
            if not graph.reaches(p, self.fg.component_position):
                raise ValueError(f"layer {spec!r} is {graph.where(p, self.fg.component_position)} the component layer")
            if not any(graph.reaches(low, p) for low in self._lowest):
                raise ValueError(f"layer {spec!r} is below {self.lowest!r}, the lowest layer kept in the trace")
            out.append((spec, p))
        return out

    def propagate(self, components: Tensor | None = None, layers: Sequence[LayerSpec] = ("input",)) -> dict[LayerSpec, Tensor]:
        """``IR(components)`` at each layer: ``{layer: B x c x h x w}`` (one walk for all).

        ``components``: B x C x H x W (default: :attr:`components`), e.g. an edit of it.
        """
        I = self.components if components is None else components
        if I.shape != self.components.shape:
            raise ValueError(f"components must have shape {tuple(self.components.shape)}, got {tuple(I.shape)}")
        pos = self._positions(layers)
        R = self.fg.propagate(self.trace, I, self.fg.component_position, [p for _, p in pos], self._bound)
        return {spec: R[p] for spec, p in pos}

    def per_channel(
        self,
        channels: Iterable[int],
        layers: Sequence[LayerSpec] = ("input",),
        components: Tensor | None = None,
        sum_channels: bool = False,
        chunk: int = 64,
    ) -> dict[LayerSpec, Tensor]:
        """What each listed channel of ``I_L`` becomes at each layer.

        Propagates ``I_L^(k)`` (channel ``k`` only, :func:`channel_pieces`) for every ``k``
        in ``channels``, ``chunk`` channels per walk. Returns ``{layer: B x k x c x h x w}``
        (c: the channels of that layer), or ``B x k x h x w`` maps when ``sum_channels``.
        With every channel listed, the sum over ``k`` is :meth:`propagate`'s result.
        """
        chans = [int(c) for c in channels]
        I = self.components if components is None else components
        pos = self._positions(layers)
        B = I.shape[0]
        parts: dict[LayerSpec, list[Tensor]] = {spec: [] for spec, _ in pos}
        for start in range(0, len(chans), max(1, chunk)):
            group = chans[start:start + max(1, chunk)]
            k = len(group)
            R0 = channel_pieces(I, group).reshape((B * k,) + tuple(I.shape[1:]))
            R = self.fg.propagate(_repeat_trace(self.trace, k), R0, self.fg.component_position,
                                  [p for _, p in pos], self._bound)
            for spec, p in pos:
                r = R[p].reshape((B, k) + tuple(R[p].shape[1:]))
                parts[spec].append(r.sum(2) if sum_channels else r)
        return {spec: torch.cat(chunks, 1) for spec, chunks in parts.items()}
