"""Fused 3PT block ops: add_rotate_norm and add_norm (math: docs/ops/block.md).

Kernels: csrc/cpu/block.c; registration: csrc/torch/block.cpp. Each op
returns (h_new, normed) to the caller and saves h_new and rstd for backward.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import (check_eps, check_float, check_pairs, check_param, check_phases, check_same_precision,
                                 check_same_shape, compute_dtype)
from tpt_ops.ops._extension import require_extension
from tpt_ops.ops.norm import phase_rmsnorm_vjp
from tpt_ops.ops.rotate import phase_rotate_vjp

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C


def _check(op: str, h: Tensor, a: Tensor, weight: Tensor, n_phases: int, theta: Tensor | None = None,
           eps: float | None = None) -> None:
    """The rules of csrc/torch/block.cpp, in its order; eps only for the forward ops."""
    check_float(op, "h", h)
    check_float(op, "a", a)
    check_same_shape(op, "a", a, h, x_name="h")
    D = check_phases(op, "h", h, n_phases)
    if eps is not None:
        check_eps(op, eps)
    check_same_precision(op, "h", h, "a", a)
    check_param(op, "weight", weight, D, h)
    if theta is not None:
        P = check_pairs(op, D, n_phases)
        check_param(op, "theta", theta, P // 2, h)


def _outputs(h: Tensor, n_phases: int) -> tuple[Tensor, Tensor, Tensor]:
    rstd = h.new_empty((*h.shape[:-1], n_phases), dtype=compute_dtype(h.dtype))
    return h.new_empty(h.shape), h.new_empty(h.shape), rstd


@torch.library.register_fake("tpt::add_rotate_norm")
def _add_rotate_norm_fake(h, a, theta, weight, n_phases, eps):
    _check("add_rotate_norm", h, a, weight, n_phases, theta, eps)
    return _outputs(h, n_phases)


@torch.library.register_fake("tpt::add_norm")
def _add_norm_fake(h, a, weight, n_phases, eps):
    _check("add_norm", h, a, weight, n_phases, eps=eps)
    return _outputs(h, n_phases)


@torch.library.register_fake("tpt::add_rotate_norm_backward")
def _add_rotate_norm_backward_fake(dh_new, dnormed, h_new, theta, weight, rstd, n_phases):
    _check("add_rotate_norm_backward", h_new, dh_new, weight, n_phases, theta)
    return h_new.new_empty(h_new.shape), theta.new_empty(theta.shape), weight.new_empty(weight.shape)


@torch.library.register_fake("tpt::add_norm_backward")
def _add_norm_backward_fake(dh_new, dnormed, h_new, weight, rstd, n_phases):
    _check("add_norm_backward", h_new, dh_new, weight, n_phases)
    return h_new.new_empty(h_new.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output) -> None:
    h, a = inputs[0], inputs[1]
    h_new, _normed, rstd = output
    *params, n_phases, eps = inputs[2:]  # (theta, weight) or (weight,)
    ctx.save_for_backward(h_new, rstd, *params)
    ctx.n_phases, ctx.eps = n_phases, eps
    ctx.a_dtype = a.dtype


def _dh_new_total(ctx, dh_new: Tensor, dnormed: Tensor, h_new: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(u, dweight)``: ``u = dh_new + J_norm(h_new)^T dnormed``, all the gradient reaching ``h_new``.

    Differentiable PyTorch (for ``create_graph=True``) in the compute
    precision, written in the saved output ``h_new``: its own graph (through
    this op) carries the dependence on the inputs when autograd differentiates
    the gradient again.
    """
    dx_norm, dweight = phase_rmsnorm_vjp(dnormed, h_new, weight, ctx.n_phases, ctx.eps)
    return dh_new.to(dx_norm.dtype) + dx_norm, dweight


def _add_rotate_norm_backward(ctx, dh_new, dnormed, _drstd):
    h_new, rstd, theta, weight = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        u, dweight = _dh_new_total(ctx, dh_new, dnormed, h_new, weight)
        dsum, dtheta = phase_rotate_vjp(u, h_new, theta, ctx.n_phases)  # h_new = R(theta) (h + a)
        dsum, dtheta, dweight = dsum.to(h_new.dtype), dtheta.to(theta.dtype), dweight.to(weight.dtype)
    else:
        dsum, dtheta, dweight = torch.ops.tpt.add_rotate_norm_backward(dh_new, dnormed, h_new, theta, weight, rstd,
                                                                       ctx.n_phases)
    return dsum, dsum.to(ctx.a_dtype), dtheta, dweight, None, None


def _add_norm_backward(ctx, dh_new, dnormed, _drstd):
    h_new, rstd, weight = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        u, dweight = _dh_new_total(ctx, dh_new, dnormed, h_new, weight)
        dsum, dweight = u.to(h_new.dtype), dweight.to(weight.dtype)
    else:
        dsum, dweight = torch.ops.tpt.add_norm_backward(dh_new, dnormed, h_new, weight, rstd, ctx.n_phases)
    return dsum, dsum.to(ctx.a_dtype), dweight, None, None


torch.library.register_autograd("tpt::add_rotate_norm", _add_rotate_norm_backward, setup_context=_setup_context)
torch.library.register_autograd("tpt::add_norm", _add_norm_backward, setup_context=_setup_context)


def add_rotate_norm(h: Tensor, a: Tensor, theta: Tensor, weight: Tensor, n_phases: int,
                    eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Fused ``h_new = phase_rotate(h + a, theta)`` and ``normed = phase_rmsnorm(h_new, weight)``.

    The 3PT block's attention residual, its non-residual rotation and the
    FFN's pre-norm in one pass. Returns ``(h_new, normed)``, both in ``h``'s
    dtype (``a`` may be a lower-precision branch output, as under autocast).
    """
    h_new, normed, _ = torch.ops.tpt.add_rotate_norm(h, a, theta, weight, n_phases, eps)
    return h_new, normed


def add_norm(h: Tensor, a: Tensor, weight: Tensor, n_phases: int, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Fused ``h_new = h + a`` and ``normed = phase_rmsnorm(h_new, weight)`` (the next block's pre-norm)."""
    h_new, normed, _ = torch.ops.tpt.add_norm(h, a, weight, n_phases, eps)
    return h_new, normed
