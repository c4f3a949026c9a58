"""Givens phase rotation: functional API, autograd and fake kernels of torch.ops.tpt.phase_rotate.

Kernels: csrc/cpu/rotate.c; registration: csrc/torch/rotate.cpp; math: docs/ops/rotate.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops.ops._checks import check_float, check_pairs, check_param, check_phases, check_same_shape
from tpt_ops.ops._extension import require_extension
from tpt_ops.reference import compute_dtype, phase_angles

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

OP = "phase_rotate"


@torch.library.register_fake("tpt::phase_rotate")
def _phase_rotate_fake(x: Tensor, theta: Tensor, n_phases: int) -> Tensor:
    D = check_phases(OP, "x", x, n_phases)
    P = check_pairs(OP, D, n_phases)
    check_param(OP, "theta", theta, P // 2, x)
    return x.new_empty(x.shape)


@torch.library.register_fake("tpt::phase_rotate_backward")
def _phase_rotate_backward_fake(dy: Tensor, y: Tensor, theta: Tensor, n_phases: int) -> tuple[Tensor, Tensor]:
    op = OP + "_backward"
    D = check_phases(op, "y", y, n_phases)
    P = check_pairs(op, D, n_phases)
    check_float(op, "dy", dy)
    check_same_shape(op, "dy", dy, y, "y")
    check_param(op, "theta", theta, P // 2, y)
    return y.new_empty(y.shape), theta.new_empty(theta.shape)


def phase_rotate_vjp(dy: Tensor, y: Tensor, theta: Tensor, n_phases: int) -> tuple[Tensor, Tensor]:
    """``(dx, dtheta)`` of ``y = phase_rotate(x, theta)`` from the output ``y``, as differentiable PyTorch.

    In the compute precision. ``dx = R(phi)^T dy``; since ``dR/dphi = R J``
    with ``J`` the 90-degree pair rotation ``(a, b) -> (-b, a)``, the angle's
    gradient is ``dtheta = sum(dy . J y)`` over the rows and phases. Written
    in ``y`` (not ``x``) like the C backward, so autograd can differentiate it
    again (``create_graph=True``) through ``y``'s own graph.
    """
    ct = compute_dtype(y.dtype)
    phi = phase_angles(theta.to(ct), n_phases)  # [N, P/2]
    cos, sin = torch.cos(phi), torch.sin(phi)
    d = dy.to(ct).unflatten(-1, (n_phases, -1, 2))
    ys = y.to(ct).unflatten(-1, (n_phases, -1, 2))
    da, db = d[..., 0], d[..., 1]
    dx = torch.stack((da * cos + db * sin, db * cos - da * sin), dim=-1).flatten(-3)
    dtheta = (db * ys[..., 0] - da * ys[..., 1]).reshape(-1, phi.shape[-1]).sum(0)
    return dx, dtheta


def _setup_context(ctx, inputs, output) -> None:
    _x, theta, n_phases = inputs
    # The rotation is orthogonal: backward needs only the output, not x.
    ctx.save_for_backward(output, theta)
    ctx.n_phases = n_phases


def _backward(ctx, dy: Tensor):
    y, theta = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        dx, dtheta = phase_rotate_vjp(dy, y, theta, ctx.n_phases)
        return dx.to(y.dtype), dtheta.to(theta.dtype), None
    dx, dtheta = torch.ops.tpt.phase_rotate_backward(dy, y, theta, ctx.n_phases)
    return dx, dtheta, None


torch.library.register_autograd("tpt::phase_rotate", _backward, setup_context=_setup_context)


def phase_rotate(x: Tensor, theta: Tensor, n_phases: int) -> Tensor:
    """Givens rotation of the channel pairs of each phase of the last dim of ``x``.

    The last dim ``D`` is split into ``n_phases`` contiguous stripes of even
    width ``P = D / n_phases``. Inside phase ``i`` the interleaved pairs
    ``(a, b) = (x_i[..., 0::2], x_i[..., 1::2])`` are rotated by
    ``phi = theta + i * 2*pi / n_phases`` (``theta`` has shape ``[P/2]``)::

        y_i[..., 0::2] = a*cos(phi) - b*sin(phi)
        y_i[..., 1::2] = a*sin(phi) + b*cos(phi)

    The rotation is orthogonal (norm preserving); its backward uses only the
    output. The output has ``x``'s dtype; the gradient of ``theta`` has
    ``theta``'s. Arithmetic is float32 (float64 for float64 ``x``).
    """
    return torch.ops.tpt.phase_rotate(x, theta, n_phases)
