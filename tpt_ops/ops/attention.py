"""Causal softmax attention, flash style: functional API, autograd and fake kernels of
torch.ops.tpt.causal_attention.

Kernels: csrc/cpu/attention.c; registration: csrc/torch/attention.cpp; math: docs/ops/attention.md.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from tpt_ops.ops._checks import check_attention, check_attention_scale, check_float, check_shape, compute_dtype
from tpt_ops.ops._extension import require_extension

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

ATTENTION = "causal_attention"


# ---- fake kernels: the rules of csrc/cpu/checks.c and the output sizes ----

def _check(op: str, q: Tensor, k: Tensor, v: Tensor, offset: int, scale: float):
    dims = check_attention(op, q, k, v, offset)
    check_attention_scale(op, scale)
    return dims


@torch.library.register_fake("tpt::causal_attention")
def _attention_fake(q: Tensor, k: Tensor, v: Tensor, offset: int, scale: float) -> tuple[Tensor, Tensor]:
    B, H, _Hkv, T, _Tk, hd = _check(ATTENTION, q, k, v, offset, scale)
    return q.new_empty((B, H, T, hd)), q.new_empty((B, H, T), dtype=compute_dtype(q.dtype))


@torch.library.register_fake("tpt::causal_attention_backward")
def _attention_backward_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, offset: int,
                             scale: float) -> tuple[Tensor, Tensor, Tensor]:
    op = ATTENTION + "_backward"
    B, H, Hkv, T, Tk, hd = _check(op, q, k, v, offset, scale)
    for arg, t in (("dout", dout), ("out", out)):
        check_float(op, arg, t)
        check_shape(op, arg, t, "[B, H, T, hd]", (B, H, T, hd), q)
    check_float(op, "lse", lse)
    check_shape(op, "lse", lse, "[B, H, T]", (B, H, T), q)
    return q.new_empty((B, H, T, hd)), q.new_empty((B, Hkv, Tk, hd)), q.new_empty((B, Hkv, Tk, hd))


# ---- the backward as differentiable PyTorch, for create_graph=True ----

def causal_attention_vjp(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, offset: int,
                         scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of :func:`causal_attention` in the quadratic form, as differentiable PyTorch in the compute
    precision: P = softmax(scale q k^T) masked, dP = dout v^T, dS = P (dP - rowsum(dout * out)),
    dq = scale dS k, dk = scale dS^T q, dv = P^T dout, the last two summed over the query heads of each
    key/value head. It materialises [T, Tk]: it serves second derivatives, not training."""
    ct = compute_dtype(q.dtype)
    H, Hkv, T, Tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qc, g = q.to(ct), dout.to(ct)
    kc, vc = k.to(ct).repeat_interleave(H // Hkv, 1), v.to(ct).repeat_interleave(H // Hkv, 1)
    visible = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(offset, offset + T, device=q.device)[:, None]
    probs = torch.softmax((qc @ kc.transpose(-1, -2) * scale).masked_fill(~visible, -math.inf), -1)
    out = probs @ vc
    dscores = probs * (g @ vc.transpose(-1, -2) - (g * out).sum(-1, keepdim=True))
    dq = scale * (dscores @ kc)
    dk = scale * (dscores.transpose(-1, -2) @ qc).unflatten(1, (Hkv, -1)).sum(2)
    dv = (probs.transpose(-1, -2) @ g).unflatten(1, (Hkv, -1)).sum(2)
    return dq, dk, dv


# ---- autograd ----

def _setup_context(ctx, inputs, output) -> None:
    q, k, v, offset, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.offset, ctx.scale = offset, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout: Tensor, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dq, dk, dv = causal_attention_vjp(dout, q, k, v, ctx.offset, ctx.scale)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None
    dq, dk, dv = torch.ops.tpt.causal_attention_backward(dout, q, k, v, out, lse, ctx.offset, ctx.scale)
    return dq, dk, dv, None, None


torch.library.register_autograd("tpt::causal_attention", _backward, setup_context=_setup_context)


# ---- the public function (the signature of tpt_ops.reference.causal_attention) ----

def causal_attention(q: Tensor, k: Tensor, v: Tensor, offset: int = 0, scale: float | None = None) -> Tensor:
    """Causal softmax attention ``softmax(scale q k^T + mask) v``, flash style.

    ``q`` ``[B, H, T, hd]``, ``k`` and ``v`` ``[B, Hkv, Tk, hd]`` of q's dtype with H a multiple of Hkv (query
    head h reads key/value head ``h // (H / Hkv)``, nothing copied) -> ``[B, H, T, hd]`` in q's dtype. Query
    i sits at absolute position ``offset + i`` and sees keys ``0 .. offset + i``, so ``Tk = offset + T``:
    ``offset=0`` is training and prefill, ``offset > 0`` decodes over a KV cache (a slice ``[:, :, :Tk]`` of a
    cache buffer is read in place). ``scale`` defaults to ``1/sqrt(hd)``. Online softmax over key tiles of 64
    in float32 (float64 for float64) whatever the storage dtype; memory O(T) (no [T, Tk] scores), the
    backward recomputes the probabilities from the saved log-sum-exp. Bitwise deterministic."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() == 4 and q.shape[-1] > 0 else 1.0
    return torch.ops.tpt.causal_attention(q, k, v, offset, scale)[0]
