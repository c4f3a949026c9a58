"""Argument checks for the fake (meta) kernels, mirroring csrc/torch/glue.h.

The C++ glue checks real tensors; these run when an op is traced with fake
tensors (torch.compile, opcheck), so a bad call fails at trace time with the
same message instead of producing a graph that crashes later. The fake
kernels return contiguous outputs (``new_empty``, not ``empty_like``), as the
glue does: it makes its inputs contiguous before allocating outputs like them.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def fail(op: str, *parts: object) -> None:
    raise RuntimeError(f"tpt.{op}: " + "".join(str(p) for p in parts))


def check_float(op: str, arg: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        fail(op, f"argument '{arg}' has dtype {str(t.dtype).replace('torch.', '')}; "
                 "expected float32, float64, bfloat16 or float16")


def check_phases(op: str, arg: str, x: Tensor, n_phases: int) -> int:
    check_float(op, arg, x)
    if x.dim() < 1:
        fail(op, f"argument '{arg}' must have at least 1 dimension, got a scalar")
    if n_phases < 1:
        fail(op, f"n_phases must be >= 1, got {n_phases}")
    D = x.shape[-1]
    if D % n_phases != 0:
        fail(op, f"the last dim of '{arg}' (D={D}) is not divisible by n_phases={n_phases}")
    return D


def check_param(op: str, arg: str, p: Tensor, length: int, x: Tensor) -> None:
    check_float(op, arg, p)
    if p.device != x.device:
        fail(op, f"argument '{arg}' is on a different device from the input")
    if p.dim() != 1 or p.shape[0] != length:
        fail(op, f"argument '{arg}' must have shape [{length}], got {list(p.shape)}")


def check_same_shape(op: str, arg: str, t: Tensor, x: Tensor, x_name: str = "x") -> None:
    if t.shape != x.shape:
        fail(op, f"argument '{arg}' has shape {list(t.shape)}; expected the shape of {x_name} {list(x.shape)}")
    if t.device != x.device:
        fail(op, f"argument '{arg}' is on a different device from the input")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_pairs(op: str, D: int, n_phases: int) -> int:
    """The phase width P = D / N; the rotation pairs channels, so P must be even."""
    P = D // n_phases
    if P % 2 != 0:
        fail(op, f"the phase width P={P} (D={D}, n_phases={n_phases}) is odd; "
                 "the rotation needs (even, odd) channel pairs")
    return P
