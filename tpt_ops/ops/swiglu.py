"""Fused SwiGLU activation: functional API (swiglu, linear_swiglu), autograd and fake kernels of torch.ops.tpt.swiglu.

Kernels: csrc/cpu/swiglu.c; registration: csrc/torch/swiglu.cpp.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tpt_ops.ops._checks import check_float, fail
from tpt_ops.ops._extension import require_extension
from tpt_ops.reference import compute_dtype

require_extension(__name__)  # the registrations below attach to torch.ops.tpt.*, defined by tpt_ops._C

OP = "swiglu"


def _check_gate_up(op: str, gate_up: Tensor) -> int:
    """F, half the last dim of gate_up = [..., 2F]."""
    check_float(op, "gate_up", gate_up)
    if gate_up.dim() < 1:
        fail(op, "argument 'gate_up' must have at least 1 dimension, got a scalar")
    D = gate_up.shape[-1]
    if D % 2 != 0:
        fail(op, f"the last dim of 'gate_up' ({D}) must be even: its first half is the gate, "
                 "its second half the up projection")
    return D // 2


@torch.library.register_fake("tpt::swiglu")
def _swiglu_fake(gate_up: Tensor) -> Tensor:
    F = _check_gate_up(OP, gate_up)
    return gate_up.new_empty((*gate_up.shape[:-1], F))


def _check_backward(op: str, dh: Tensor, gate_up: Tensor) -> None:
    check_float(op, "gate_up", gate_up)
    check_float(op, "dh", dh)
    if dh.device != gate_up.device:
        fail(op, "argument 'dh' is on a different device from the input")
    F = _check_gate_up(op, gate_up)
    if dh.shape != (*gate_up.shape[:-1], F):
        fail(op, f"argument 'dh' has shape {list(dh.shape)}; expected the shape of gate_up "
                 f"{list(gate_up.shape)} with its last dim halved")


@torch.library.register_fake("tpt::swiglu_backward")
def _swiglu_backward_fake(dh: Tensor, gate_up: Tensor) -> Tensor:
    _check_backward(OP + "_backward", dh, gate_up)
    return gate_up.new_empty(gate_up.shape)


@torch.library.register_fake("tpt::swiglu_backward_")
def _swiglu_backward_inplace_fake(dh: Tensor, gate_up: Tensor) -> None:
    op = OP + "_backward_"
    _check_backward(op, dh, gate_up)
    if not gate_up.is_contiguous():
        fail(op, "argument 'gate_up' must be contiguous to take its gradient in place")


def swiglu_vjp(dh: Tensor, gate_up: Tensor) -> Tensor:
    """The gradient of ``gate_up`` as differentiable PyTorch, in the compute precision.

    With ``s = sigmoid(g)``: ``dg = dh * u * s * (1 + g * (1 - s))``,
    ``du = dh * g * s`` (the C backward's math), in one ``[..., 2F]`` tensor.
    """
    ct = compute_dtype(gate_up.dtype)
    gate, up = gate_up.to(ct).chunk(2, dim=-1)
    d, s = dh.to(ct), torch.sigmoid(gate)
    return torch.cat((d * up * s * (1 + gate * (1 - s)), d * gate * s), dim=-1)


def _setup_context(ctx, inputs, output) -> None:
    # The caller may still see gate_up, so its gradient always goes to a new
    # tensor. Only linear_swiglu, which owns its gate_up, takes it in place.
    (gate_up,) = inputs
    ctx.save_for_backward(gate_up)


def _backward(ctx, dh: Tensor) -> Tensor:
    (gate_up,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return swiglu_vjp(dh, gate_up).to(gate_up.dtype)
    return torch.ops.tpt.swiglu_backward(dh, gate_up)


torch.library.register_autograd("tpt::swiglu", _backward, setup_context=_setup_context)


def swiglu(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` for ``gate, up = gate_up.chunk(2, dim=-1)``, in one pass.

    ``gate_up`` is ``[..., 2F]`` (the output of the FFN's fused gate/up
    matmul); the result is ``[..., F]`` in ``gate_up``'s dtype, computed in
    float32 (float64 for float64). The backward writes the gradients of both
    halves straight into one new ``[..., 2F]`` tensor; ``gate_up`` is never
    written. :func:`linear_swiglu` also runs the matmul and, owning its
    ``gate_up``, takes that gradient in place.
    """
    return torch.ops.tpt.swiglu(gate_up)


class _LinearSwiGLU(torch.autograd.Function):
    """``swiglu(F.linear(x, weight))`` as one autograd node whose ``gate_up`` never leaves it."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        gate_up = F.linear(x, weight)  # under autocast: in the autocast dtype
        ctx.save_for_backward(x, weight, gate_up)
        return torch.ops.tpt.swiglu(gate_up)

    @staticmethod
    def backward(ctx, dh: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight, gate_up = ctx.saved_tensors
        dtype = gate_up.dtype  # the matmul's dtype (the autocast dtype under autocast)
        x_c, w_c = x.to(dtype), weight.to(dtype)
        if torch.is_grad_enabled():
            # create_graph=True: a differentiable composition of the inputs (the
            # saved gate_up carries no graph), which also leaves it unwritten
            d_gate_up = swiglu_vjp(dh, F.linear(x_c, w_c)).to(dtype)
        elif gate_up.is_contiguous():
            # gate_up was made by forward and is seen by nobody else: its
            # gradient goes over it, saving a [..., 2F] buffer and a third of
            # the backward's memory traffic
            torch.ops.tpt.swiglu_backward_(dh, gate_up)
            # a second backward through this graph (retain_graph=True) must
            # fail on the overwritten activation, not compute with it
            torch.autograd.graph.increment_version(gate_up)
            d_gate_up = gate_up
        else:
            d_gate_up = torch.ops.tpt.swiglu_backward(dh, gate_up)
        # the matmuls of F.linear's own backward (mm on the flattened rows), so
        # the gradients are bit for bit those of linear + swiglu
        rows = d_gate_up.reshape(-1, d_gate_up.shape[-1])
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx = rows.mm(w_c).reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = rows.t().mm(x_c.reshape(-1, x.shape[-1])).to(weight.dtype)
        return dx, dweight


def linear_swiglu(x: Tensor, weight: Tensor) -> Tensor:
    """``swiglu(F.linear(x, weight))``: the FFN's gate/up matmul and the activation as one autograd node.

    ``weight`` is ``[2F, D]`` (``[W_gate; W_up]``), ``x`` ``[..., D]``. The
    ``[..., 2F]`` projection is private to the node, so its backward writes
    the activation's gradient over it in place (no ``[..., 2F]`` allocation)
    before the ``dx``/``dweight`` matmuls; results are bit for bit those of
    ``swiglu(F.linear(x, weight))``. Autocast-aware (the matmuls run in the
    autocast dtype, ``dweight`` comes back in ``weight``'s dtype) and twice
    differentiable. Eager only: under ``torch.compile`` use
    ``swiglu(F.linear(x, weight))``, whose buffers the compiler plans.
    """
    return _LinearSwiGLU.apply(x, weight)
