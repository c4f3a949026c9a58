"""Token-choice MoE routing and dispatch: functional API, autograd and fake kernels of torch.ops.tpt.moe_*.

Kernels: csrc/cpu/moe.c; registration: csrc/torch/moe.cpp; math: docs/ops/moe.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import (check_float, check_index, check_moe_capacity_factor, check_moe_k, check_moe_logits,
                                 check_moe_matrix, check_moe_score, check_moe_slot_token, check_moe_slots,
                                 check_param, check_same_shape, compute_dtype, fail)
from tpt_ops.ops._extension import require_extension

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

ROUTE, PERMUTE, UNPERMUTE = "moe_route", "moe_permute", "moe_unpermute"


# ---- fake kernels: the rules of csrc/cpu/checks.c and the output sizes, which never depend on the data ----

@torch.library.register_fake("tpt::moe_route")
def _moe_route_fake(logits: Tensor, k: int, capacity_factor: float | None, normalize: bool, score: str,
                    bias: Tensor | None) -> tuple[Tensor, ...]:
    M, E = check_moe_logits(ROUTE, logits)
    check_moe_k(ROUTE, k, E)
    check_moe_capacity_factor(ROUTE, capacity_factor)
    check_moe_score(ROUTE, score)
    if bias is not None:
        check_param(ROUTE, "bias", bias, E, logits)
    ct = compute_dtype(logits.dtype)
    index = dict(dtype=torch.int64)
    return (logits.new_empty((M, k), dtype=ct), logits.new_empty((M, k), **index), logits.new_empty((M, k), **index),
            logits.new_empty((M * k,), **index), logits.new_empty((E,), **index), logits.new_empty(()),
            logits.new_empty(()))


@torch.library.register_fake("tpt::moe_route_backward")
def _moe_route_backward_fake(dgates: Tensor, daux: Tensor, dz: Tensor, logits: Tensor, experts: Tensor,
                             gates: Tensor, slots: Tensor, counts: Tensor, normalize: bool, score: str) -> Tensor:
    op = ROUTE + "_backward"
    M, E = check_moe_logits(op, logits)
    check_moe_score(op, score)
    for arg, t in (("experts", experts), ("slots", slots), ("counts", counts)):
        check_index(op, arg, t, logits)
    check_moe_matrix(op, "experts", experts, "M", M)
    check_moe_k(op, experts.shape[1], E)
    for arg, t in (("slots", slots), ("gates", gates), ("dgates", dgates)):
        check_same_shape(op, arg, t, experts, "experts")
    if counts.dim() != 1 or counts.shape[0] != E:
        fail(op, f"argument 'counts' must have shape [{E}], got {list(counts.shape)}")
    check_float(op, "gates", gates)
    check_float(op, "dgates", dgates)
    return logits.new_empty(logits.shape)


def _check_permute(op: str, x: Tensor, x_arg: str, slots: Tensor, slot_token: Tensor | None) -> tuple[int, int]:
    check_float(op, x_arg, x)
    check_index(op, "slots", slots, x)
    if slot_token is not None:
        check_index(op, "slot_token", slot_token, x)
    return check_moe_slots(op, slots)


@torch.library.register_fake("tpt::moe_permute")
def _moe_permute_fake(x: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    M, k = _check_permute(PERMUTE, x, "x", slots, slot_token)
    check_moe_matrix(PERMUTE, "x", x, "M", M)
    check_moe_slot_token(PERMUTE, slot_token, M * k)
    return x.new_empty((M * k, x.shape[1]))


@torch.library.register_fake("tpt::moe_permute_backward")
def _moe_permute_backward_fake(dbuf: Tensor, slots: Tensor) -> Tensor:
    op = PERMUTE + "_backward"
    M, k = _check_permute(op, dbuf, "dbuf", slots, None)
    check_moe_matrix(op, "dbuf", dbuf, "M*k", M * k)
    return dbuf.new_empty((M, dbuf.shape[1]))


def _check_unpermute(op: str, out: Tensor, gates: Tensor, slots: Tensor, slot_token: Tensor) -> tuple[int, int]:
    check_float(op, "out", out)
    check_float(op, "gates", gates)
    if gates.device != out.device:
        fail(op, "argument 'gates' is on a different device from the input")
    check_index(op, "slots", slots, out)
    check_index(op, "slot_token", slot_token, out)
    M, k = check_moe_slots(op, slots)
    check_moe_matrix(op, "out", out, "M*k", M * k)
    check_same_shape(op, "gates", gates, slots, "slots")
    check_moe_slot_token(op, slot_token, M * k)
    return M, k


@torch.library.register_fake("tpt::moe_unpermute")
def _moe_unpermute_fake(out: Tensor, gates: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    M, _ = _check_unpermute(UNPERMUTE, out, gates, slots, slot_token)
    return out.new_empty((M, out.shape[1]))


@torch.library.register_fake("tpt::moe_unpermute_backward")
def _moe_unpermute_backward_fake(dy: Tensor, out: Tensor, gates: Tensor, slots: Tensor,
                                 slot_token: Tensor) -> tuple[Tensor, Tensor]:
    op = UNPERMUTE + "_backward"
    M, _ = _check_unpermute(op, out, gates, slots, slot_token)
    check_float(op, "dy", dy)
    if dy.device != out.device:
        fail(op, "argument 'dy' is on a different device from the input")
    check_moe_matrix(op, "dy", dy, "M", M, out.shape[1])
    return out.new_empty(out.shape), gates.new_empty(gates.shape)


# ---- the backward as differentiable PyTorch, for create_graph=True ----

def moe_route_vjp(dgates: Tensor, daux: Tensor, dz: Tensor, logits: Tensor, experts: Tensor, slots: Tensor,
                  counts: Tensor, normalize: bool, score: str) -> Tensor:
    """dlogits of :func:`moe_route` as differentiable PyTorch, in the compute precision.

    The math of the C backward (docs/ops/moe.md): with s the scores, p = softmax(logits), S the sum of
    the k selected scores and dg the gate gradient of the kept assignments,
    ``ds[e_j] = (dg_j - sum_i dg_i g_i) / S`` (normalize; else ``dg_j``) plus ``daux * E * f_e / M``;
    ``dl = s * (ds - sum(ds * s))`` (softmax) or ``ds * s * (1 - s)`` (sigmoid), plus
    ``dz * 2 * lse / M * p``. Scores are recomputed from ``logits`` so that autograd can differentiate
    this again.
    """
    ct = compute_dtype(logits.dtype)
    M, E = logits.shape
    tokens = max(M, 1)
    l = logits.to(ct)
    p = torch.softmax(l, -1)
    s = p if score == "softmax" else torch.sigmoid(l)
    dg = torch.where(slots >= 0, dgates.to(ct), torch.zeros((), dtype=ct))
    if normalize:
        chosen = s.gather(1, experts)
        total = chosen.sum(-1, keepdim=True)
        dchosen = (dg - (dg * chosen / total).sum(-1, keepdim=True)) / total
    else:
        dchosen = dg
    fraction = counts.to(ct) / max(int(counts.sum()), 1)
    ds = torch.zeros_like(s).scatter(1, experts, dchosen) + daux.to(ct) * E * fraction / tokens
    if score == "softmax":
        dl = s * (ds - (ds * s).sum(-1, keepdim=True))
    else:
        dl = ds * s * (1 - s)
    lse = torch.logsumexp(l, -1, keepdim=True)
    return dl + dz.to(ct) * 2 * lse / tokens * p


def moe_permute_vjp(dbuf: Tensor, slots: Tensor) -> Tensor:
    """``dx[t] = sum over kept j of dbuf[slots[t, j]]`` as differentiable PyTorch, in the compute precision."""
    ct = compute_dtype(dbuf.dtype)
    rows = dbuf.to(ct)[slots.clamp(min=0)]
    return torch.where((slots >= 0)[..., None], rows, torch.zeros((), dtype=ct)).sum(1)


def moe_unpermute_vjp(dy: Tensor, out: Tensor, gates: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """``(dout, dgates)`` of :func:`moe_unpermute` as differentiable PyTorch, in the compute precision:
    ``dout[a] = gates[t, j] * dy[t]`` for the (t, j) at row a (0 for unused rows),
    ``dgates[t, j] = dot(dy[t], out[slots[t, j]])`` (0 for dropped)."""
    ct = compute_dtype(out.dtype)
    M, k = slots.shape
    zero = torch.zeros((), dtype=ct)
    kept = slots >= 0
    d, o = dy.to(ct), out.to(ct)
    dgates = torch.where(kept, (d[:, None, :] * o[slots.clamp(min=0)]).sum(-1), zero)
    # the assignment t * k + j of each row, -1 for unused rows: kept slots are distinct rows
    assignment = torch.full((out.shape[0],), -1, dtype=torch.int64, device=out.device)
    assignment[slots[kept]] = torch.arange(M * k, device=out.device).reshape(M, k)[kept]
    pick = assignment.clamp(min=0)
    dout = torch.where((assignment >= 0)[:, None], gates.to(ct).reshape(-1)[pick][:, None] * d[pick // k], zero)
    return dout, dgates


# ---- autograd ----

def _route_setup_context(ctx, inputs, output) -> None:
    logits, _k, _capacity_factor, normalize, score, _bias = inputs
    gates, experts, slots, _slot_token, counts, _aux, _z = output
    ctx.save_for_backward(logits, experts, gates, slots, counts)
    ctx.normalize, ctx.score = normalize, score


def _route_backward(ctx, dgates, _dexperts, _dslots, _dslot_token, _dcounts, daux, dz):
    logits, experts, gates, slots, counts = ctx.saved_tensors
    dgates = torch.zeros_like(gates) if dgates is None else dgates
    daux = logits.new_zeros(()) if daux is None else daux
    dz = logits.new_zeros(()) if dz is None else dz
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dlogits = moe_route_vjp(dgates, daux, dz, logits, experts, slots, counts, ctx.normalize, ctx.score)
        dlogits = dlogits.to(logits.dtype)
    else:
        dlogits = torch.ops.tpt.moe_route_backward(dgates, daux, dz, logits, experts, gates, slots, counts,
                                                   ctx.normalize, ctx.score)
    return dlogits, None, None, None, None, None


def _permute_setup_context(ctx, inputs, output) -> None:
    _x, slots, _slot_token = inputs
    ctx.save_for_backward(slots)


def _permute_backward(ctx, dbuf: Tensor):
    (slots,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return moe_permute_vjp(dbuf, slots).to(dbuf.dtype), None, None
    return torch.ops.tpt.moe_permute_backward(dbuf, slots), None, None


def _unpermute_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _unpermute_backward(ctx, dy: Tensor):
    out, gates, slots, slot_token = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dout, dgates = moe_unpermute_vjp(dy, out, gates, slots)
        dout, dgates = dout.to(out.dtype), dgates.to(gates.dtype)
    else:
        dout, dgates = torch.ops.tpt.moe_unpermute_backward(dy, out, gates, slots, slot_token)
    return dout, dgates, None, None


torch.library.register_autograd("tpt::moe_route", _route_backward, setup_context=_route_setup_context)
torch.library.register_autograd("tpt::moe_permute", _permute_backward, setup_context=_permute_setup_context)
torch.library.register_autograd("tpt::moe_unpermute", _unpermute_backward, setup_context=_unpermute_setup_context)


# ---- the public functions (the signatures of tpt_ops.reference.moe_*) ----

def moe_route(logits: Tensor, k: int, capacity_factor: float | None = None, normalize: bool = True,
              score: str = "softmax", bias: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Token-choice top-k routing of ``logits`` ``[M, E]`` in one C pass plus a serial counting pass.

    Returns ``(gates [M, k], experts [M, k], slots [M, k], slot_token [M*k], counts [E], aux_loss,
    z_loss)``. Scores ``s = softmax(logits)`` (or ``sigmoid``); each token picks the ``k`` largest
    ``s + bias`` (``bias`` ``[E]`` steers the selection only), descending, ties to the lower expert
    index; ``gates`` are ``s`` there, divided by their sum when ``normalize``. With a
    ``capacity_factor`` each expert keeps at most ``ceil(capacity_factor * M * k / E)`` assignments,
    admitted every token's first choice before any second choice, by token within a choice; a dropped
    assignment has gate 0 and slot -1. The kept assignments own rows ``[0, n_kept)`` of an ``M*k``-row
    buffer, by expert then token (``counts`` the segment lengths). ``aux_loss = E * sum_e f_e P_e``
    (``f_e`` kept fraction, no gradient; ``P_e`` mean score), ``z_loss = mean(logsumexp(logits)^2)``.
    Gates are float32 (float64 for float64 logits), the losses in ``logits``' dtype; ``gates``,
    ``aux_loss`` and ``z_loss`` are differentiable in ``logits``. Bitwise deterministic.
    """
    return tuple(torch.ops.tpt.moe_route(logits, k, capacity_factor, normalize, score, bias))


def moe_permute(x: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    """The expert-contiguous buffer ``[M*k, D]``: ``buf[a] = x[slot_token[a]]``, 0 for unused rows.

    Its gradient sums each token's kept slots (a gather, no atomics)."""
    return torch.ops.tpt.moe_permute(x, slots, slot_token)


def moe_unpermute(out: Tensor, gates: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    """``y[t] = sum over kept j of gates[t, j] * out[slots[t, j]]`` ``[M, D]`` in ``out``'s dtype,
    accumulated in float32 (float64 for float64). Gradients of ``out`` and ``gates``; ``slot_token``
    maps each row back to its token for the backward."""
    return torch.ops.tpt.moe_unpermute(out, gates, slots, slot_token)
