"""Hedgehog linear attention: functional API, autograd and fake kernels of torch.ops.tpt.hedgehog_feature_map
and torch.ops.tpt.linear_attention*.

Kernels: csrc/cpu/hedgehog.c; registration: csrc/torch/hedgehog.cpp; math: docs/ops/hedgehog.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import (check_eps, check_float, check_hedgehog_u, check_linear_attention, check_one_token,
                                 check_shape, compute_dtype)
from tpt_ops.ops._extension import require_extension

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

FEATURE_MAP, ATTENTION, PREFILL, STEP = ("hedgehog_feature_map", "linear_attention", "linear_attention_prefill",
                                         "linear_attention_step")
DEFAULT_EPS = 1e-12


# ---- fake kernels: the rules of csrc/cpu/checks.c and the output sizes ----

@torch.library.register_fake("tpt::hedgehog_feature_map")
def _feature_map_fake(u: Tensor) -> Tensor:
    F = check_hedgehog_u(FEATURE_MAP, u)
    return u.new_empty((*u.shape[:-1], 2 * F))


@torch.library.register_fake("tpt::hedgehog_feature_map_backward")
def _feature_map_backward_fake(dphi: Tensor, u: Tensor) -> Tensor:
    op = FEATURE_MAP + "_backward"
    F = check_hedgehog_u(op, u)
    check_float(op, "dphi", dphi)
    check_shape(op, "dphi", dphi, "[..., 2F]", (*u.shape[:-1], 2 * F), u)
    return u.new_empty(u.shape)


def _check_attention(op: str, phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float):
    dims = check_linear_attention(op, phi_q, phi_k, v)
    check_eps(op, eps)
    return dims


@torch.library.register_fake("tpt::linear_attention")
def _attention_fake(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool, eps: float) -> Tensor:
    B, H, _Hkv, T, _K, Dv = _check_attention(ATTENTION, phi_q, phi_k, v, eps)
    return phi_q.new_empty((B, H, T, Dv))


@torch.library.register_fake("tpt::linear_attention_prefill")
def _prefill_fake(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    B, H, Hkv, T, K, Dv = _check_attention(PREFILL, phi_q, phi_k, v, eps)
    ct = compute_dtype(phi_q.dtype)
    return phi_q.new_empty((B, H, T, Dv)), phi_q.new_empty((B, Hkv, K, Dv), dtype=ct), phi_q.new_empty(
        (B, Hkv, K), dtype=ct)


@torch.library.register_fake("tpt::linear_attention_backward")
def _attention_backward_fake(dy: Tensor, phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool,
                             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    op = ATTENTION + "_backward"
    B, H, _Hkv, T, _K, Dv = _check_attention(op, phi_q, phi_k, v, eps)
    check_float(op, "dy", dy)
    check_shape(op, "dy", dy, "[B, H, T, Dv]", (B, H, T, Dv), phi_q)
    return phi_q.new_empty(phi_q.shape), phi_k.new_empty(phi_k.shape), v.new_empty(v.shape)


@torch.library.register_fake("tpt::linear_attention_step")
def _step_fake(phi_q: Tensor, phi_k: Tensor, v: Tensor, S: Tensor, z: Tensor,
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    B, H, Hkv, T, K, Dv = _check_attention(STEP, phi_q, phi_k, v, eps)
    check_one_token(STEP, T)
    check_float(STEP, "S", S)
    check_float(STEP, "z", z)
    check_shape(STEP, "S", S, "[B, Hkv, 2F, Dv]", (B, Hkv, K, Dv), phi_q)
    check_shape(STEP, "z", z, "[B, Hkv, 2F]", (B, Hkv, K), phi_q)
    ct = compute_dtype(phi_q.dtype)
    return phi_q.new_empty((B, H, 1, Dv)), S.new_empty(S.shape, dtype=ct), z.new_empty(z.shape, dtype=ct)


# ---- the backwards as differentiable PyTorch, for create_graph=True ----

def hedgehog_feature_map_vjp(dphi: Tensor, u: Tensor) -> Tensor:
    """du = p (dp - sum(dp p)) - m (dm - sum(dm m)) with p = softmax(u), m = softmax(-u), in the compute
    precision; differentiable in both arguments."""
    ct = compute_dtype(u.dtype)
    uc = u.to(ct)
    p, m = torch.softmax(uc, -1), torch.softmax(-uc, -1)
    dp, dm = dphi.to(ct).chunk(2, -1)
    return p * (dp - (dp * p).sum(-1, keepdim=True)) - m * (dm - (dm * m).sum(-1, keepdim=True))


def _group_sum(t: Tensor, n_kv_heads: int) -> Tensor:
    """[B, H, ...] summed over the query heads of each key/value head -> [B, Hkv, ...]."""
    return t.unflatten(1, (n_kv_heads, -1)).sum(2)


def linear_attention_vjp(dy: Tensor, phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool,
                         eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of :func:`linear_attention` in the quadratic form, as differentiable PyTorch in the
    compute precision: with A the (masked) scores, den = rowsum(A) + eps, y = A v / den,
    a = dy / den, c = -(dy . y) / den and dA = (a v^T + c) masked: dq = dA k, dk = dA^T q, dv = A^T a,
    the last two summed over the query heads of each key/value head. It materialises [T, T]: it serves
    second derivatives, not training."""
    ct = compute_dtype(phi_q.dtype)
    H, Hkv = phi_q.shape[1], phi_k.shape[1]
    q, k, vv, g = phi_q.to(ct), phi_k.to(ct), v.to(ct), dy.to(ct)
    k, vv = k.repeat_interleave(H // Hkv, 1), vv.repeat_interleave(H // Hkv, 1)
    scores = q @ k.transpose(-1, -2)
    if causal:
        scores = scores.tril()
    den = scores.sum(-1, keepdim=True) + eps
    y = (scores @ vv) / den
    a = g / den
    c = -(g * y).sum(-1, keepdim=True) / den
    dscores = a @ vv.transpose(-1, -2) + c
    if causal:
        dscores = dscores.tril()
    dq = dscores @ k
    dk = _group_sum(dscores.transpose(-1, -2) @ q, Hkv)
    dv = _group_sum(scores.transpose(-1, -2) @ a, Hkv)
    return dq, dk, dv


def linear_attention_step_vjp(dy: Tensor, dS_new: Tensor, dz_new: Tensor, phi_q: Tensor, phi_k: Tensor, v: Tensor,
                              S: Tensor, z: Tensor, eps: float) -> tuple[Tensor, ...]:
    """(dq, dk, dv, dS, dz) of :func:`linear_attention_step` as differentiable PyTorch in the compute precision:
    with S' = S + k v^T, z' = z + k, den = q . z' + eps, y = q S' / den, a = dy / den, c = -(dy . y) / den:
    dq = S' a + c z', dS' = dS'_out + sum_h q a^T, dz' = dz'_out + sum_h c q (over each group's query heads),
    dS = dS', dz = dz', dk = dS' v + dz', dv = dS'^T k."""
    ct = compute_dtype(phi_q.dtype)
    H, Hkv = phi_q.shape[1], phi_k.shape[1]
    q, k, vv, g = phi_q.to(ct)[:, :, 0], phi_k.to(ct)[:, :, 0], v.to(ct)[:, :, 0], dy.to(ct)[:, :, 0]
    S_new = S.to(ct) + k[..., :, None] * vv[..., None, :]
    z_new = z.to(ct) + k
    S_h, z_h = S_new.repeat_interleave(H // Hkv, 1), z_new.repeat_interleave(H // Hkv, 1)
    den = (q * z_h).sum(-1, keepdim=True) + eps
    y = (q[..., None, :] @ S_h)[..., 0, :] / den
    a = g / den
    c = -(g * y).sum(-1, keepdim=True) / den
    dq = (S_h @ a[..., None])[..., 0] + c * z_h
    dS = dS_new.to(ct) + _group_sum(q[..., :, None] * a[..., None, :], Hkv)
    dz = dz_new.to(ct) + _group_sum(c * q, Hkv)
    dk = (dS @ vv[..., None])[..., 0] + dz
    dv = (k[..., None, :] @ dS)[..., 0, :]
    return dq[:, :, None], dk[:, :, None], dv[:, :, None], dS, dz


# ---- autograd ----

def _feature_map_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _feature_map_backward(ctx, dphi: Tensor):
    (u,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return hedgehog_feature_map_vjp(dphi, u).to(u.dtype)
    return torch.ops.tpt.hedgehog_feature_map_backward(dphi, u)


def _attention_grads(ctx, dy: Tensor, causal: bool):
    phi_q, phi_k, v = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dq, dk, dv = linear_attention_vjp(dy, phi_q, phi_k, v, causal, ctx.eps)
        return dq.to(phi_q.dtype), dk.to(phi_k.dtype), dv.to(v.dtype)
    return torch.ops.tpt.linear_attention_backward(dy, phi_q, phi_k, v, causal, ctx.eps)


def _attention_setup_context(ctx, inputs, output) -> None:
    phi_q, phi_k, v, causal, eps = inputs
    ctx.save_for_backward(phi_q, phi_k, v)
    ctx.causal, ctx.eps = causal, eps


def _attention_backward(ctx, dy: Tensor):
    return (*_attention_grads(ctx, dy, ctx.causal), None, None)


def _prefill_setup_context(ctx, inputs, output) -> None:
    phi_q, phi_k, v, eps = inputs
    ctx.save_for_backward(phi_q, phi_k, v)
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1], output[2])


def _prefill_backward(ctx, dy: Tensor, _dS, _dz):
    return (*_attention_grads(ctx, dy, True), None)


def _step_setup_context(ctx, inputs, output) -> None:
    *tensors, eps = inputs
    ctx.save_for_backward(*tensors)
    ctx.eps = eps


def _step_backward(ctx, dy: Tensor, dS_new: Tensor, dz_new: Tensor):
    phi_q, phi_k, v, S, z = ctx.saved_tensors
    dy = torch.zeros((*phi_q.shape[:3], v.shape[-1]), dtype=phi_q.dtype, device=phi_q.device) if dy is None else dy
    dS_new = torch.zeros_like(S) if dS_new is None else dS_new
    dz_new = torch.zeros_like(z) if dz_new is None else dz_new
    grads = linear_attention_step_vjp(dy, dS_new, dz_new, phi_q, phi_k, v, S, z, ctx.eps)
    return (*(g.to(t.dtype) for g, t in zip(grads, (phi_q, phi_k, v, S, z))), None)


torch.library.register_autograd("tpt::hedgehog_feature_map", _feature_map_backward,
                                setup_context=_feature_map_setup_context)
torch.library.register_autograd("tpt::linear_attention", _attention_backward, setup_context=_attention_setup_context)
torch.library.register_autograd("tpt::linear_attention_prefill", _prefill_backward,
                                setup_context=_prefill_setup_context)
torch.library.register_autograd("tpt::linear_attention_step", _step_backward, setup_context=_step_setup_context)


# ---- the public functions (the signatures of tpt_ops.reference.*) ----

def hedgehog_feature_map(u: Tensor) -> Tensor:
    """``[..., F] -> [..., 2F]``: ``concat(softmax(u), softmax(-u))`` over the last dim, computed in float32
    (float64 for float64) with the maximum subtracted, returned in ``u``'s dtype."""
    return torch.ops.tpt.hedgehog_feature_map(u)


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool = True,
                     eps: float = DEFAULT_EPS) -> Tensor:
    """Normalised linear attention ``y_i = phi_q_i S_i / (phi_q_i . z_i + eps)``.

    ``phi_q`` ``[B, H, T, 2F]``, ``phi_k`` ``[B, Hkv, T, 2F]``, ``v`` ``[B, Hkv, T, Dv]`` with H a multiple
    of Hkv (query head h reads key/value head ``h // (H / Hkv)``, nothing copied) -> ``[B, H, T, Dv]`` in
    ``phi_q``'s dtype. ``S_i = sum_j phi_k_j v_j^T`` and ``z_i = sum_j phi_k_j`` over ``j <= i`` (causal,
    computed in chunks of 64 tokens) or over all j; state and sums in float32 (float64 for float64)
    whatever the storage dtype. Memory O(T); the backward recomputes the states. Bitwise deterministic."""
    return torch.ops.tpt.linear_attention(phi_q, phi_k, v, causal, eps)


def linear_attention_prefill(phi_q: Tensor, phi_k: Tensor, v: Tensor,
                             eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, S, z)``: the causal :func:`linear_attention` and the decoding state after the last token,
    ``S`` ``[B, Hkv, 2F, Dv]`` and ``z`` ``[B, Hkv, 2F]`` per key/value head, in float32 (float64 for
    float64). ``y`` is differentiable; the state is not (it is a cache for :func:`linear_attention_step`)."""
    return tuple(torch.ops.tpt.linear_attention_prefill(phi_q, phi_k, v, eps))


def linear_attention_step(phi_q: Tensor, phi_k: Tensor, v: Tensor, S: Tensor, z: Tensor,
                          eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """One decoding token: ``S' = S + phi_k^T v``, ``z' = z + phi_k``, ``y = phi_q S' / (phi_q . z' + eps)``.

    ``phi_q`` ``[B, H, 1, 2F]``, ``phi_k`` ``[B, Hkv, 1, 2F]``, ``v`` ``[B, Hkv, 1, Dv]``, the state from
    :func:`linear_attention_prefill` or the previous step; returns ``(y [B, H, 1, Dv], S', z')``. The same
    eps default as :func:`linear_attention`, so step-by-step outputs match the full causal form."""
    return tuple(torch.ops.tpt.linear_attention_step(phi_q, phi_k, v, S, z, eps))
