"""Fused SwiGLU activation: functional API, autograd and fake kernels of torch.ops.tpt.swiglu.

Kernels: csrc/cpu/swiglu.c; registration: csrc/torch/swiglu.cpp.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tpt_ops import _C  # noqa: F401  (registers torch.ops.tpt.*)
from tpt_ops.ops._checks import check_float, fail

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
def _swiglu_fake(gate_up: Tensor, inplace_backward: bool = False) -> Tensor:
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


def _setup_context(ctx, inputs, output) -> None:
    gate_up, inplace_backward = inputs
    ctx.save_for_backward(gate_up)
    ctx.inplace_backward = inplace_backward


def _backward(ctx, dh: Tensor) -> tuple[Tensor, None]:
    (gate_up,) = ctx.saved_tensors
    # In place only in eager mode on a plain contiguous tensor: under
    # torch.compile the traced backward takes the functional op and the
    # compiler plans its own buffers.
    if ctx.inplace_backward and type(gate_up) is torch.Tensor and gate_up.is_contiguous():
        torch.ops.tpt.swiglu_backward_(dh, gate_up)
        # a second backward through this graph (retain_graph=True) must fail
        # on the overwritten activation, not compute with it
        torch.autograd.graph.increment_version(gate_up)
        return gate_up, None
    return torch.ops.tpt.swiglu_backward(dh, gate_up), None


torch.library.register_autograd("tpt::swiglu", _backward, setup_context=_setup_context)


def swiglu(gate_up: Tensor, inplace_backward: bool = False) -> Tensor:
    """``silu(gate) * up`` for ``gate, up = gate_up.chunk(2, dim=-1)``, in one pass.

    ``gate_up`` is ``[..., 2F]`` (the output of the FFN's fused gate/up
    matmul); the result is ``[..., F]`` in ``gate_up``'s dtype, computed in
    float32 (float64 for float64). The backward writes the gradients of both
    halves straight into one ``[..., 2F]`` tensor.

    ``inplace_backward=True`` lets the backward write that gradient over
    ``gate_up`` itself instead of a new tensor (no ``[..., 2F]`` allocation,
    a third less memory traffic), for callers that own ``gate_up`` and never
    read it after the backward, as :class:`tpt_ops.nn.SwiGLU` does. The graph
    can then be backpropagated once only: a second backward raises autograd's
    "modified by an inplace operation" error.
    """
    return torch.ops.tpt.swiglu(gate_up, inplace_backward)
