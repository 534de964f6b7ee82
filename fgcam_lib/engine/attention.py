"""Self-attention calls taken apart into the pieces relevance rules read.

Every attention op the engine knows computes, per head,

    out = from_tokens( merge_h(A_h @ v_h) W_o^T + b_o ),   v = to_tokens(x_v) W_v^T + b_v,
    A_h = softmax(scores(q_h, k_h)),                        q, k projections of x_q, x_k,

where ``to_tokens`` is an index op (identity for ``nn.MultiheadAttention``; pad, cyclic shift
and window partition for Swin) and ``scores`` the scaled dot product plus whatever bias the
model adds (Swin's relative position bias and shift mask; Swin V2's cosine similarity).
:func:`attention_call` reads that structure from a traced node: ``nn.MultiheadAttention`` (q,
k and v recomputed from its ``in_proj_weight``, whatever fast path the module itself takes)
and torchvision's ``shifted_window_attention`` (Swin and Swin V2). The recomputed output
equals the op's own (tests compare them), so rules can hold ``A`` constant and walk the rest.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import CallOp, ModuleOp, Slot, fill
from .weighted import Weighted, _linear

__all__ = ["Projection", "AttentionCall", "HeldProduct", "attention_call", "WINDOW_ATTENTION"]

Tensor = torch.Tensor

#: torchvision's windowed attention function, by qualified name (Swin and Swin V2 call it)
WINDOW_ATTENTION = "torchvision.models.swin_transformer.shifted_window_attention"


@dataclass
class Projection:
    """A linear projection ``x W^T + b`` given by its tensors."""

    weight: Tensor
    bias: Tensor | None

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def weighted(self) -> Weighted:
        return _linear(self.weight, self.bias)


class HeldProduct(Weighted):
    """``A @ v`` with ``A`` (B x h x N x M) held constant: a linear map of ``v`` (B x h x M x d)
    whose weight is ``A``, so every weighted-layer rule (z+, epsilon, flat) applies to it."""

    #: an attention map has no negative weights: z+ skips the x- w- half
    nonnegative = True

    def __init__(self, A: Tensor):
        super().__init__(A, None, dims=-1)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return w @ x

    def transpose(self, s: Tensor, w: Tensor, shape: Sequence[int]) -> Tensor:
        return w.transpose(-2, -1) @ s

    def part(self, name: Any, make: Callable[[Tensor], Tensor]) -> Tensor:
        return make(self.weight)  # per image: nothing to cache

    def ones(self, x: Tensor, like: Tensor | None = None) -> Tensor:
        ref = x if like is None else like
        return torch.ones(x.shape, dtype=ref.dtype, device=ref.device)


@dataclass
class AttentionCall:
    """One attention op's pieces; ``signals`` are the positions of the query, key and value
    inputs among the op's tensor inputs (all 0 for self-attention on one input)."""

    heads: int
    q: Projection
    k: Projection
    v: Projection
    out: Projection
    to_tokens: Callable[[Tensor], Tensor]
    from_tokens: Callable[[Tensor], Tensor]
    signals: tuple[int, int, int]
    #: the factor on ``q k^T``: a number, or per head (Swin V2's logit scale, h x 1 x 1)
    scale: Any
    #: added to the scores (Swin's relative position bias and shift mask), or None
    bias: Tensor | None = None
    #: cosine attention (Swin V2): q and k are unit-normalised before the product
    cosine: bool = False

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``S = scale q k^T + bias`` per head (q and k unit-normalised for cosine attention)."""
        if self.cosine:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        s = (q @ k.transpose(-2, -1)) * self.scale
        return s if self.bias is None else s + self.bias

    def split(self, t: Tensor) -> Tensor:
        """B x N x C -> B x h x N x C/h."""
        B, N, C = t.shape
        return t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)

    @staticmethod
    def merge(t: Tensor) -> Tensor:
        """B x h x N x d -> B x N x h*d."""
        B, h, N, d = t.shape
        return t.transpose(1, 2).reshape(B, N, h * d)

    def attention(self, xq: Tensor, xk: Tensor) -> Tensor:
        """``A``: B x h x N x M, rows summing to 1."""
        q, k = self.split(self.q(self.to_tokens(xq))), self.split(self.k(self.to_tokens(xk)))
        return self.scores(q, k).softmax(-1)

    def __call__(self, xq: Tensor, xk: Tensor, xv: Tensor) -> Tensor:
        """The op's output recomputed from the pieces."""
        A = self.attention(xq, xk)
        o = self.merge(A @ self.split(self.v(self.to_tokens(xv))))
        return self.from_tokens(self.out(o))


def _slots(args: Any) -> list[int]:
    return [a.i for a in args if isinstance(a, Slot)]


def _mha(m: nn.MultiheadAttention, op: Any, xs: Sequence[Any]) -> AttentionCall:
    if isinstance(op, CallOp):
        args, kwargs = fill(op.args, tuple(xs)), fill(op.kwargs, tuple(xs))
        slots = _slots(op.args)[:3]
    else:
        args, kwargs, slots = tuple(xs), {}, [0, 1, 2]
    bound = inspect.signature(m.forward).bind(*args, **kwargs).arguments
    for name in ("key_padding_mask", "attn_mask"):
        if bound.get(name) is not None:
            raise TypeError(f"attention with {name} is not supported by the attention rules")
    if bound.get("is_causal"):
        raise TypeError("causal attention is not supported by the attention rules")
    if m.bias_k is not None or m.add_zero_attn:
        raise TypeError("MultiheadAttention with bias_k/bias_v or add_zero_attn is not supported")
    E, h = m.embed_dim, m.num_heads
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight.chunk(3)
        ws = [(w[i], None) for i in range(3)]
    else:
        ws = [(m.q_proj_weight, None), (m.k_proj_weight, None), (m.v_proj_weight, None)]
    if m.in_proj_bias is not None:
        b = m.in_proj_bias.chunk(3)
        ws = [(wi, b[i]) for i, (wi, _) in enumerate(ws)]
    tokens: Callable[[Tensor], Tensor] = (lambda t: t) if m.batch_first else (lambda t: t.transpose(0, 1))
    return AttentionCall(h, *(Projection(*p) for p in ws), Projection(m.out_proj.weight, m.out_proj.bias),
                         tokens, tokens, tuple(slots), (E // h) ** -0.5)  # type: ignore[arg-type]


def _shift_mask(pad_h: int, pad_w: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """nW x N x N: -100 between tokens of one window that came from different regions of the
    shifted map (they must not attend to each other), 0 elsewhere."""
    region = like.new_zeros((pad_h, pad_w))
    label = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            region[hs, ws] = label
            label += 1
    r = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1]).permute(0, 2, 1, 3)
    r = r.reshape(-1, window[0] * window[1])
    return torch.where(r[:, None, :] != r[:, :, None], -100.0, 0.0).to(like.dtype)


def _window(op: CallOp, xs: Sequence[Any]) -> AttentionCall:
    args = inspect.signature(op.fn).bind(*fill(op.args, tuple(xs)), **fill(op.kwargs, tuple(xs))).arguments
    x = args["input"]
    window, heads = list(args["window_size"]), int(args["num_heads"])
    B, H, W, C = x.shape
    pad_b, pad_r = (-H) % window[0], (-W) % window[1]
    pad_h, pad_w = H + pad_b, W + pad_r
    # as the op does: no shift where one window covers the whole (padded) map
    shift = [0 if window[i] >= (pad_h, pad_w)[i] else int(args["shift_size"][i]) for i in range(2)]
    nh, nw = pad_h // window[0], pad_w // window[1]

    def to_tokens(t: Tensor) -> Tensor:
        t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b))
        if sum(shift):
            t = torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        t = t.reshape(B, nh, window[0], nw, window[1], t.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(B * nh * nw, window[0] * window[1], t.shape[-1])

    def from_tokens(t: Tensor) -> Tensor:
        t = t.reshape(B, nh, nw, window[0], window[1], t.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        t = t.reshape(B, pad_h, pad_w, t.shape[-1])
        if sum(shift):
            t = torch.roll(t, shifts=(shift[0], shift[1]), dims=(1, 2))
        return t[:, :H, :W]

    bias = args["relative_position_bias"]  # 1 x h x N x N
    if sum(shift):
        mask = _shift_mask(pad_h, pad_w, window, shift, x)  # nW x N x N
        bias = (bias + mask[:, None]).repeat(B, 1, 1, 1)  # windows are batch-major: B*nW x h x N x N
    qkv_bias = args.get("qkv_bias")
    logit_scale = args.get("logit_scale")
    wq, wk, wv = args["qkv_weight"].chunk(3)
    bq, bk, bv = qkv_bias.chunk(3) if qkv_bias is not None else (None, None, None)
    if logit_scale is not None:  # Swin V2: cosine attention, and no key bias
        scale: Any = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        bk = None
    else:
        scale = (C // heads) ** -0.5
    slot = _slots(op.args)[0]
    return AttentionCall(heads, Projection(wq, bq), Projection(wk, bk), Projection(wv, bv),
                         Projection(args["proj_weight"], args.get("proj_bias")), to_tokens, from_tokens,
                         (slot, slot, slot), scale, bias, cosine=logit_scale is not None)


def _qualified(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}"


def attention_call(op: Any, xs: Sequence[Any]) -> AttentionCall:
    """The pieces of the attention op ``op`` called on tensor inputs ``xs`` (in the walk's order)."""
    fn = op.fn if isinstance(op, CallOp) else op
    if isinstance(fn, ModuleOp) and isinstance(fn.module, nn.MultiheadAttention):
        return _mha(fn.module, op, xs)
    if isinstance(fn, nn.MultiheadAttention):
        return _mha(fn, op, xs)
    if isinstance(op, CallOp) and _qualified(op.fn) == WINDOW_ATTENTION:
        return _window(op, xs)
    raise TypeError(f"{op!r} is not an attention op the engine can take apart")
