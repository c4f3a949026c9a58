"""Gabriel's-horn DC injection: horn_inject and the fused horn_embedding (math: docs/ops/horn.md).

Kernels: csrc/cpu/horn.c; registration: csrc/torch/horn.cpp.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import check_float, check_offset, check_phases, dtype_name, fail
from tpt_ops.ops._extension import require_extension
from tpt_ops.reference import compute_dtype

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C


def _check_ids(op: str, ids: Tensor) -> None:
    if ids.dtype not in (torch.int64, torch.int32):
        fail(op, f"argument 'ids' has dtype {dtype_name(ids.dtype)}; expected int64 or int32")
    if ids.dim() not in (1, 2):
        fail(op, f"argument 'ids' must be [T] or [B, T], got {list(ids.shape)}")


@torch.library.register_fake("tpt::horn_inject")
def _horn_inject_fake(x: Tensor, n_phases: int, offset: int) -> Tensor:
    check_float("horn_inject", "x", x)
    if x.dim() < 2:
        fail("horn_inject", "argument 'x' must be [..., T, D] (at least 2 dims: positions along dim -2), "
                            f"got {list(x.shape)}")
    check_phases("horn_inject", "x", x, n_phases)
    check_offset("horn_inject", offset, x.shape[-2])
    return x.new_empty(x.shape)


@torch.library.register_fake("tpt::horn_inject_backward")
def _horn_inject_backward_fake(dy: Tensor, n_phases: int) -> Tensor:
    check_phases("horn_inject_backward", "dy", dy, n_phases)
    return dy.new_empty(dy.shape)


@torch.library.register_fake("tpt::horn_embedding")
def _horn_embedding_fake(ids: Tensor, table: Tensor, n_phases: int, offset: int) -> Tensor:
    op = "horn_embedding"
    check_float(op, "table", table)
    if ids.device != table.device:
        fail(op, "argument 'ids' is on a different device from the input")
    if table.dim() != 2:
        fail(op, f"argument 'table' must be [V, D], got {list(table.shape)}")
    D = check_phases(op, "table", table, n_phases)
    _check_ids(op, ids)
    check_offset(op, offset, ids.shape[-1])
    return table.new_empty((*ids.shape, D))


@torch.library.register_fake("tpt::horn_embedding_backward")
def _horn_embedding_backward_fake(dy: Tensor, ids: Tensor, vocab_size: int, n_phases: int) -> Tensor:
    D = check_phases("horn_embedding_backward", "dy", dy, n_phases)
    _check_ids("horn_embedding_backward", ids)
    return dy.new_empty((vocab_size, D))


def horn_inject_vjp(dy: Tensor) -> Tensor:
    """``dx = dy - mean(dy)`` (the horn term is a constant), as differentiable PyTorch in the compute precision."""
    d = dy.to(compute_dtype(dy.dtype))
    return d - d.mean(-1, keepdim=True)


def _inject_setup_context(ctx, inputs, output) -> None:
    ctx.n_phases = inputs[1]


def _inject_backward(ctx, dy: Tensor):
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return horn_inject_vjp(dy).to(dy.dtype), None, None
    return torch.ops.tpt.horn_inject_backward(dy, ctx.n_phases), None, None


def _embedding_setup_context(ctx, inputs, output) -> None:
    ids, table, n_phases, _offset = inputs
    ctx.save_for_backward(ids)
    ctx.vocab_size, ctx.n_phases, ctx.table_dtype = table.shape[0], n_phases, table.dtype


def _embedding_backward(ctx, dy: Tensor):
    (ids,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        rows = horn_inject_vjp(dy).reshape(-1, dy.shape[-1])
        dtable = rows.new_zeros((ctx.vocab_size, dy.shape[-1])).index_add(0, ids.reshape(-1), rows)
    else:
        dtable = torch.ops.tpt.horn_embedding_backward(dy, ids, ctx.vocab_size, ctx.n_phases)
    return None, dtable.to(ctx.table_dtype), None, None


torch.library.register_autograd("tpt::horn_inject", _inject_backward, setup_context=_inject_setup_context)
torch.library.register_autograd("tpt::horn_embedding", _embedding_backward, setup_context=_embedding_setup_context)


def horn_inject(x: Tensor, n_phases: int, offset: int = 0) -> Tensor:
    """Replace the DC component of each token with Gabriel's horn ``r(p) = 1/(p+1)``.

    ``x`` is ``[..., T, D]``; token ``t`` along dim -2 has absolute position
    ``p = t + offset`` (``offset`` = tokens already in the KV cache when
    decoding). ``y = x - mean(x) + r(p)``, so the per-phase means of ``y`` sum
    to ``n_phases * r(p)``. ``n_phases`` must divide ``D``.
    """
    return torch.ops.tpt.horn_inject(x, n_phases, offset)


def horn_embedding(ids: Tensor, table: Tensor, n_phases: int, offset: int = 0) -> Tensor:
    """Embedding lookup fused with :func:`horn_inject`: ``horn_inject(table[ids])``.

    ``ids`` is ``[T]`` or ``[B, T]`` (int64 or int32); out-of-range ids raise.
    The table gradient is accumulated deterministically (tokens grouped by id,
    summed in token order), so it is bitwise reproducible for any thread count.
    """
    return torch.ops.tpt.horn_embedding(ids, table, n_phases, offset)
