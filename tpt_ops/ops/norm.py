"""Per-phase RMSNorm: functional API, autograd and fake kernel of torch.ops.tpt.phase_rmsnorm.

Kernels: csrc/cpu/norm.c; registration: csrc/torch/norm.cpp; math: docs/ops/norm.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import check_eps, check_param, check_phases, check_same_shape, compute_dtype
from tpt_ops.ops._extension import require_extension

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

OP = "phase_rmsnorm"


@torch.library.register_fake("tpt::phase_rmsnorm")
def _phase_rmsnorm_fake(x: Tensor, weight: Tensor, n_phases: int, eps: float) -> tuple[Tensor, Tensor]:
    D = check_phases(OP, "x", x, n_phases)
    check_eps(OP, eps)
    check_param(OP, "weight", weight, D, x)
    rstd = x.new_empty((*x.shape[:-1], n_phases), dtype=compute_dtype(x.dtype))
    return x.new_empty(x.shape), rstd


@torch.library.register_fake("tpt::phase_rmsnorm_backward")
def _phase_rmsnorm_backward_fake(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor,
                                 n_phases: int) -> tuple[Tensor, Tensor]:
    D = check_phases(OP + "_backward", "x", x, n_phases)
    check_same_shape(OP + "_backward", "dy", dy, x)
    check_param(OP + "_backward", "weight", weight, D, x)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def phase_rmsnorm_vjp(dy: Tensor, x: Tensor, weight: Tensor, n_phases: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(dx, dweight)`` of :func:`phase_rmsnorm` as differentiable PyTorch, in the compute precision.

    The math of the C backward (per phase, ``xhat = x * rstd``, ``g = dy * w``:
    ``dx = rstd * (g - xhat * mean(g * xhat))``, ``dweight = sum(dy * xhat)``)
    with ``rstd`` recomputed from ``x``, so that autograd can differentiate it
    again (``create_graph=True``).
    """
    ct = compute_dtype(x.dtype)
    xs = x.to(ct).unflatten(-1, (n_phases, -1))
    rstd = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
    xhat = xs * rstd
    g = (dy.to(ct) * weight.to(ct)).unflatten(-1, (n_phases, -1))
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dweight = (dy.to(ct) * xhat.flatten(-2)).reshape(-1, x.shape[-1]).sum(0)
    return dx.flatten(-2), dweight


def _setup_context(ctx, inputs, output) -> None:
    x, weight, n_phases, eps = inputs
    _y, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.n_phases, ctx.eps = n_phases, eps


def _backward(ctx, dy: Tensor, _drstd: Tensor):
    x, weight, rstd = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dx, dweight = phase_rmsnorm_vjp(dy, x, weight, ctx.n_phases, ctx.eps)
        return dx.to(x.dtype), dweight.to(weight.dtype), None, None
    dx, dweight = torch.ops.tpt.phase_rmsnorm_backward(dy, x, weight, rstd, ctx.n_phases)
    return dx, dweight, None, None


torch.library.register_autograd("tpt::phase_rmsnorm", _backward, setup_context=_setup_context)


def phase_rmsnorm(x: Tensor, weight: Tensor, n_phases: int = 1, eps: float = 1e-6) -> Tensor:
    """Per-phase RMSNorm of the last dim of ``x``.

    The last dim ``D`` is split into ``n_phases`` contiguous stripes of width
    ``P = D / n_phases``; each stripe is normalised by its own RMS and scaled
    by its slice of ``weight`` (shape ``[D]``). ``n_phases=1`` is plain RMSNorm.
    The output has ``x``'s dtype; the gradient of ``weight`` has ``weight``'s.
    """
    return torch.ops.tpt.phase_rmsnorm(x, weight, n_phases, eps)[0]
