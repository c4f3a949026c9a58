"""Fused qkv split + RoPE + head-major layout: functional API, autograd and fake kernels of torch.ops.tpt.qkv_rope.

Kernels: csrc/cpu/rope.c; registration: csrc/torch/rope.cpp.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import check_float, fail
from tpt_ops.ops._extension import require_extension
from tpt_ops.reference import compute_dtype

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

OP = "qkv_rope"


def _check_head_counts(op: str, n_q_heads: int, n_kv_heads: int) -> None:
    if n_q_heads < 1:
        fail(op, f"argument 'n_q_heads' must be >= 1, got {n_q_heads}")
    if n_kv_heads < 1:
        fail(op, f"argument 'n_kv_heads' must be >= 1, got {n_kv_heads}")


def _check_head_dim(op: str, hd: int) -> None:
    if hd % 2 != 0:
        fail(op, f"head_dim ({hd}) is odd; rotate-half RoPE needs an even head_dim")


def _check_table(op: str, arg: str, table: Tensor, T: int, hd: int, x: Tensor) -> None:
    check_float(op, arg, table)
    if table.device != x.device:
        fail(op, f"argument '{arg}' is on a different device from the input")
    if table.dim() != 2 or table.shape[0] != T or table.shape[1] != hd:
        fail(op, f"argument '{arg}' must have shape [T, head_dim] = [{T}, {hd}], got {list(table.shape)}")


@torch.library.register_fake("tpt::qkv_rope")
def _qkv_rope_fake(qkv: Tensor, cos: Tensor, sin_signed: Tensor, n_q_heads: int,
                   n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    check_float(OP, "qkv", qkv)
    if qkv.dim() != 3:
        fail(OP, f"argument 'qkv' must be 3-d [B, T, (n_q_heads + 2*n_kv_heads)*head_dim], got {list(qkv.shape)}")
    _check_head_counts(OP, n_q_heads, n_kv_heads)
    B, T, D = qkv.shape
    heads = n_q_heads + 2 * n_kv_heads
    if D % heads != 0:
        fail(OP, f"the last dim of 'qkv' ({D}) is not divisible by n_q_heads + 2*n_kv_heads = {heads}")
    hd = D // heads
    _check_head_dim(OP, hd)
    _check_table(OP, "cos", cos, T, hd, qkv)
    _check_table(OP, "sin_signed", sin_signed, T, hd, qkv)
    return (qkv.new_empty((B, n_q_heads, T, hd)), qkv.new_empty((B, n_kv_heads, T, hd)),
            qkv.new_empty((B, n_kv_heads, T, hd)))


@torch.library.register_fake("tpt::qkv_rope_backward")
def _qkv_rope_backward_fake(dq: Tensor, dk: Tensor, dv: Tensor, cos: Tensor, sin_signed: Tensor, n_q_heads: int,
                            n_kv_heads: int) -> Tensor:
    op = OP + "_backward"
    for arg, t in (("dq", dq), ("dk", dk), ("dv", dv)):
        check_float(op, arg, t)
    for arg, t in (("dk", dk), ("dv", dv)):
        if t.device != dq.device:
            fail(op, f"argument '{arg}' is on a different device from the input")
    _check_head_counts(op, n_q_heads, n_kv_heads)
    if dq.dim() != 4 or dq.shape[1] != n_q_heads:
        fail(op, f"argument 'dq' has shape {list(dq.shape)}; expected [B, n_q_heads, T, head_dim] "
                 f"with n_q_heads={n_q_heads}")
    B, _, T, hd = dq.shape
    _check_head_dim(op, hd)
    for arg, t in (("dk", dk), ("dv", dv)):
        if t.shape != (B, n_kv_heads, T, hd):
            fail(op, f"argument '{arg}' has shape {list(t.shape)}; expected [B, n_kv_heads, T, head_dim] = "
                     f"[{B}, {n_kv_heads}, {T}, {hd}]")
    _check_table(op, "cos", cos, T, hd, dq)
    _check_table(op, "sin_signed", sin_signed, T, hd, dq)
    return dq.new_empty((B, T, (n_q_heads + 2 * n_kv_heads) * hd))


def qkv_rope_vjp(dq: Tensor, dk: Tensor, dv: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """The gradient ``[B, T, D]`` of ``qkv`` as differentiable PyTorch, in the compute precision.

    RoPE is linear: ``dx[j] = dy[j] * cos[t, j] + dy[p] * sin_signed[t, p]``
    with ``p = partner(j)``; ``v``'s gradient is copied; the head-major
    gradients go back to the token-major layout of the projection.
    """
    ct = compute_dtype(dq.dtype)
    cos, sin_signed = cos.to(ct), sin_signed.to(ct)  # [T, hd], broadcast over [B, heads, T, hd]

    def unrotate(d: Tensor) -> Tensor:
        d = d.to(ct)
        first, second = (d * sin_signed).chunk(2, dim=-1)
        return d * cos + torch.cat((second, first), dim=-1)

    heads = torch.cat((unrotate(dq), unrotate(dk), dv.to(ct)), dim=1)  # [B, H + 2*Hkv, T, hd]
    return heads.transpose(1, 2).flatten(2)


def _setup_context(ctx, inputs, output) -> None:
    _, cos, sin_signed, n_q_heads, n_kv_heads = inputs
    ctx.save_for_backward(cos, sin_signed)
    ctx.heads = (n_q_heads, n_kv_heads)


def _backward(ctx, dq: Tensor, dk: Tensor, dv: Tensor):
    # autograd passes zeros for an unused output's gradient (materialize_grads)
    cos, sin_signed = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return qkv_rope_vjp(dq, dk, dv, cos, sin_signed).to(dq.dtype), None, None, None, None
    dqkv = torch.ops.tpt.qkv_rope_backward(dq, dk, dv, cos, sin_signed, *ctx.heads)
    return dqkv, None, None, None, None


torch.library.register_autograd("tpt::qkv_rope", _backward, setup_context=_setup_context)


def qkv_rope(qkv: Tensor, cos: Tensor, sin_signed: Tensor, n_q_heads: int,
             n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Splits the fused qkv projection into heads, applies RoPE to q and k, and lays them out head-major.

    ``qkv`` is ``[B, T, (n_q_heads + 2*n_kv_heads)*head_dim]`` (per token: the
    query heads, then the key heads, then the value heads); ``cos`` and
    ``sin_signed`` are the ``[T, head_dim]`` rotate-half tables of
    :class:`tpt_ops.nn.RotaryEmbedding` (``[cos a, cos a]`` and ``[-sin a, sin a]``).
    Returns contiguous ``q`` ``[B, n_q_heads, T, head_dim]``, ``k`` and ``v``
    ``[B, n_kv_heads, T, head_dim]`` in ``qkv``'s dtype, with, for each q and k
    head vector ``x`` at time ``t``::

        rope(x)[j] = x[j] * cos[t, j] + x[partner(j)] * sin_signed[t, j]

    (``partner(j) = j +- head_dim/2``); ``v`` is copied unrotated. Computed in
    float32 (float64 for float64 ``qkv``); the tables are converted to that
    precision. The gradient flows to ``qkv`` only, written directly as one
    ``[B, T, D]`` tensor; ``cos`` and ``sin_signed`` are fixed buffers and get
    none (``None``).
    """
    return torch.ops.tpt.qkv_rope(qkv, cos, sin_signed, n_q_heads, n_kv_heads)
