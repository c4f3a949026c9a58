"""Givens phase rotation: functional API, autograd and fake kernels of torch.ops.tpt.phase_rotate.

Kernels: csrc/cpu/rotate.c; registration: csrc/torch/rotate.cpp; math: SPEC 1b.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops import _C  # noqa: F401  (registers torch.ops.tpt.*)
from tpt_ops.ops._checks import check_float, check_pairs, check_param, check_phases, check_same_shape

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


def _setup_context(ctx, inputs, output) -> None:
    _x, theta, n_phases = inputs
    # The rotation is orthogonal: backward needs only the output, not x.
    ctx.save_for_backward(output, theta)
    ctx.n_phases = n_phases


def _backward(ctx, dy: Tensor):
    y, theta = ctx.saved_tensors
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
