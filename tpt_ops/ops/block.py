"""Fused 3PT block ops: add_rotate_norm and add_norm (SPEC 1e).

Kernels: csrc/cpu/block.c; registration: csrc/torch/block.cpp. Each op
returns (h_new, normed) to the caller and saves h_new and rstd for backward.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops import _C  # noqa: F401  (registers torch.ops.tpt.*)
from tpt_ops.ops._checks import check_float, check_param, check_phases, check_same_shape, compute_dtype, fail


def _check(op: str, h: Tensor, a: Tensor, weight: Tensor, n_phases: int, theta: Tensor | None = None) -> None:
    check_float(op, "h", h)
    check_float(op, "a", a)
    check_same_shape(op, "a", a, h, x_name="h")
    D = check_phases(op, "h", h, n_phases)
    if (h.dtype == torch.float64) != (a.dtype == torch.float64):
        fail(op, f"arguments 'h' and 'a' must both be float64 or both not, got {h.dtype} and {a.dtype}")
    check_param(op, "weight", weight, D, h)
    if theta is not None:
        P = D // n_phases
        if P % 2:
            fail(op, f"the phase width P=D/n_phases={P} is odd; the rotation needs channel pairs")
        check_param(op, "theta", theta, P // 2, h)


def _outputs(h: Tensor, n_phases: int) -> tuple[Tensor, Tensor, Tensor]:
    rstd = h.new_empty((*h.shape[:-1], n_phases), dtype=compute_dtype(h.dtype))
    return h.new_empty(h.shape), h.new_empty(h.shape), rstd


@torch.library.register_fake("tpt::add_rotate_norm")
def _add_rotate_norm_fake(h, a, theta, weight, n_phases, eps):
    _check("add_rotate_norm", h, a, weight, n_phases, theta)
    return _outputs(h, n_phases)


@torch.library.register_fake("tpt::add_norm")
def _add_norm_fake(h, a, weight, n_phases, eps):
    _check("add_norm", h, a, weight, n_phases)
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
    *params, n_phases, _eps = inputs[2:]  # (theta, weight) or (weight,)
    ctx.save_for_backward(h_new, rstd, *params)
    ctx.n_phases = n_phases
    ctx.a_dtype = a.dtype


def _add_rotate_norm_backward(ctx, dh_new, dnormed, _drstd):
    h_new, rstd, theta, weight = ctx.saved_tensors
    dsum, dtheta, dweight = torch.ops.tpt.add_rotate_norm_backward(dh_new, dnormed, h_new, theta, weight, rstd,
                                                                   ctx.n_phases)
    return dsum, dsum.to(ctx.a_dtype), dtheta, dweight, None, None


def _add_norm_backward(ctx, dh_new, dnormed, _drstd):
    h_new, rstd, weight = ctx.saved_tensors
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
