"""Rules for transformer ops: self-attention and LayerNorm.

Attention (``nn.MultiheadAttention``, Swin's windowed attention; see
:mod:`~fgcam_lib.engine.attention`) has two rules:

- :class:`CPAttention` (the default): CP-LRP (Ali et al., ICML 2022). The attention matrix
  ``A`` is held constant, so the op is linear in its value input and relevance flows through
  the values only: the out-projection, ``A @ v`` and the value projection each take ``rule``
  (z+ by default, as FG-CAM's hidden layers; epsilon reproduces LXT's CP-LRP).
- :class:`AttnLRP` (Achtibat et al., ICML 2024): relevance also flows through ``A``; the
  softmax is linearised at its input, ``R_S = S (R_A - A sum_j R_A_j)``, and the two bilinear
  products ``A @ v`` and ``q k^T`` give each operand half of every contribution.

    >>> preset = paper().with_rules(attention=AttnLRP())
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionCall, HeldProduct, attention_call
from .ops import CallOp, Slot, fill
from .rules_base import InputRelevance, MultiRule, Rule, safe_div
from .rules_weighted import Epsilon, ZPlus

__all__ = ["CPAttention", "AttnLRP", "HeldStd"]

Tensor = torch.Tensor


def _through_values(call: AttentionCall, rule: Rule, xq: Tensor, xk: Tensor, xv: Tensor, R: Tensor) -> Tensor:
    """Relevance from the output down to ``v`` (B x h x N x d) with ``A`` held constant."""
    with torch.no_grad():
        A = call.attention(xq, xk)
        v = call.split(call.v(call.to_tokens(xv)))
        o = call.merge(A @ v)
    R_o = rule(call.out.weighted(), o, call.to_tokens(R))  # relevance at the heads' merged output
    return rule(HeldProduct(A), v, call.split(R_o))


def _back(call: AttentionCall, rule: Rule, proj: Any, x: Tensor, R_tokens: Tensor) -> Tensor:
    """Relevance at a projection's output (B x h x N x d) -> at the op's input ``x``."""
    R = rule(proj.weighted(), call.to_tokens(x), call.merge(R_tokens))
    with torch.enable_grad():  # to_tokens is an index op: its transpose carries R back
        z = torch.zeros_like(x, requires_grad=True)
        (g,) = torch.autograd.grad(call.to_tokens(z), z, R)
    return g


def _collect(n: int, parts: Sequence[tuple[int, Tensor]]) -> list[InputRelevance]:
    out: list[InputRelevance] = [None] * n
    for k, r in parts:
        out[k] = r if out[k] is None else out[k] + r
    return out


class CPAttention(MultiRule):
    """CP-LRP: the attention ``A`` held constant, relevance through the values.

    ``R_x = P_v^T rule_v( A^T rule_A( rule_o(R) ) )``: ``rule`` (z+ by default) at the
    out-projection, at ``A @ v`` (``A`` as its weights) and at the value projection; the
    query and key inputs take none. With z+ it conserves where an input contributes
    positively, as z+ does (biases ignored).
    """

    def __init__(self, rule: Rule | None = None):
        self.rule = ZPlus() if rule is None else rule

    @property
    def guarantee(self) -> str:
        return self.rule.guarantee

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        if isinstance(op, CallOp) and op.fn is F.scaled_dot_product_attention:
            return _held_sdpa(self.rule, op, xs, R)
        call = attention_call(op, xs)
        R = R[0] if isinstance(R, dict) else R  # nn.MultiheadAttention returns (output, weights)
        iq, ik, iv = call.signals
        R_v = _through_values(call, self.rule, xs[iq], xs[ik], xs[iv], R)
        return _collect(len(xs), [(iv, _back(call, self.rule, call.v, xs[iv], R_v))])

    def __repr__(self) -> str:
        return f"CPAttention({self.rule!r})"


def _held_sdpa(rule: Rule, op: CallOp, xs: Sequence[Any], R: Tensor) -> list[InputRelevance]:
    """``F.scaled_dot_product_attention(q, k, v)`` (timm's fused attention): ``A`` recomputed and
    held, ``rule`` on ``A @ v``; q and k take none."""
    args = fill(op.args, tuple(xs))
    kw = fill(op.kwargs, tuple(xs))
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else kw.get("attn_mask")
    if kw.get("is_causal") or (len(args) > 5 and args[5]):
        raise TypeError("causal attention is not supported by the attention rules")
    scale = kw.get("scale") or q.shape[-1] ** -0.5
    with torch.no_grad():
        S = (q @ k.transpose(-2, -1)) * scale
        if mask is not None:
            S = S.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else S + mask
        A = S.softmax(-1)
    slots = [a.i for a in op.args[:3] if isinstance(a, Slot)]
    out: list[InputRelevance] = [None] * len(xs)
    out[slots[2]] = rule(HeldProduct(A), v, R)
    return out


class AttnLRP(MultiRule):
    """AttnLRP: relevance through the values and through the attention weights.

    ``A @ v``: each product ``A_ij v_jd`` shares ``R_o`` as the epsilon rule does and gives half
    to ``A_ij``, half to ``v_jd``; the softmax ``A = softmax(S)``: ``R_S = S (R_A - A sum_j
    R_A_j)``; ``S = scale q k^T (+ bias)``: half to ``q``, half to ``k``; the projections take
    ``rule`` (epsilon by default). The sum over the three inputs equals the output's relevance
    less what the biases and the stabiliser absorb.
    """

    guarantee = "no"

    def __init__(self, rule: Rule | None = None, epsilon: float = 1e-9):
        self.rule = Epsilon(epsilon, bias=True) if rule is None else rule
        self.epsilon = epsilon

    def _stable(self, z: Tensor) -> Tensor:
        return z + self.epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)

    def __call__(self, op: Any, xs: Sequence[Any], R: Tensor,
                 data: Sequence[bool] | None = None) -> list[InputRelevance]:
        call = attention_call(op, xs)
        R = R[0] if isinstance(R, dict) else R
        iq, ik, iv = call.signals
        xq, xk, xv = xs[iq], xs[ik], xs[iv]
        with torch.no_grad():
            q, k = call.split(call.q(call.to_tokens(xq))), call.split(call.k(call.to_tokens(xk)))
            S = call.scores(q, k)
            A = S.softmax(-1)
            v = call.split(call.v(call.to_tokens(xv)))
            if call.cosine:  # the norms held constant: relevance at q/|q| is that of q
                q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
            o = A @ v
        R_o = call.split(self.rule(call.out.weighted(), call.merge(o), call.to_tokens(R)))
        s = safe_div(R_o, self._stable(o))
        R_v = v * (A.transpose(-2, -1) @ s) / 2
        R_A = A * (s @ v.transpose(-2, -1)) / 2
        R_S = S * (R_A - A * R_A.sum(-1, keepdim=True))
        # S_ij = scale sum_d q_id k_jd (+ bias): each product's share, half to q and half to k
        t = safe_div(R_S, self._stable(S)) * call.scale
        R_q = q * (t @ k) / 2
        R_k = k * (t.transpose(-2, -1) @ q) / 2
        return _collect(len(xs), [
            (iv, _back(call, self.rule, call.v, xv, R_v)),
            (iq, _back(call, self.rule, call.q, xq, R_q)),
            (ik, _back(call, self.rule, call.k, xk, R_k)),
        ])

    def __repr__(self) -> str:
        return f"AttnLRP({self.rule!r})"


def _norm_parts(op: Any) -> tuple[int, Tensor | None, float]:
    """(how many trailing dims a LayerNorm normalises, its weight, its eps)."""
    m = op.fn.module if isinstance(op, CallOp) and hasattr(op.fn, "module") else op
    if isinstance(m, nn.LayerNorm):
        return len(m.normalized_shape), m.weight, m.eps
    if isinstance(op, CallOp) and op.label == "layer_norm":
        shape = op.arg(1, "normalized_shape")
        return len(shape), op.arg(2, "weight"), float(op.arg(4, "eps", 1e-5))
    raise TypeError(f"HeldStd handles LayerNorm, not {type(m).__name__}")


class HeldStd(Rule):
    """LayerNorm with its standard deviation held constant (CP-LRP's LN rule; LXT's): the norm
    ``y = g (x - mean x) / std + b`` is then linear in ``x`` and the epsilon rule on it gives
    ``R_x = x (t - mean t)``, ``t = g / std * R / (y + eps sign y)``. The shift ``b`` and the
    removed mean absorb some relevance; :class:`~fgcam_lib.engine.rules_base.Pass` is the
    conservative alternative."""

    guarantee = "no"

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = epsilon

    def __call__(self, module: Any, x: Tensor, R: Tensor) -> Tensor:
        n, weight, eps = _norm_parts(module)
        dims = tuple(range(-n, 0))
        y = module(x)
        std = (x.var(dim=dims, unbiased=False, keepdim=True) + eps).sqrt()
        t = safe_div(R, y + self.epsilon * torch.where(y >= 0, 1.0, -1.0).to(y)) / std
        if weight is not None:
            t = t * weight
        return x * (t - t.mean(dim=dims, keepdim=True))
