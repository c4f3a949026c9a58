"""Plain-PyTorch reference implementations of every tpt_ops op.

These are the ground truth the C kernels are tested against (``tests/``) and
the baseline they are measured against (``benchmarks/``); the math is in
``SPEC.md``. They follow the kernels' precision rules: arithmetic in float32
(float64 for float64 inputs), output in the activation's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the kernels compute in for a storage dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def phase_rmsnorm(x: Tensor, weight: Tensor, n_phases: int = 1, eps: float = 1e-6) -> Tensor:
    """y_i = x_i / sqrt(mean(x_i^2) + eps) * w_i for each phase i of the last dim."""
    ct = compute_dtype(x.dtype)
    xs = x.to(ct).unflatten(-1, (n_phases, -1))
    r = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
    return ((xs * r).flatten(-2) * weight.to(ct)).to(x.dtype)


def phase_angles(theta: Tensor, n_phases: int) -> Tensor:
    """phi[i, j] = theta[j] + i * 2*pi/N, shape [N, P/2]."""
    shift = torch.arange(n_phases, device=theta.device, dtype=theta.dtype) * (2 * math.pi / n_phases)
    return theta[None, :] + shift[:, None]


def phase_rotate(x: Tensor, theta: Tensor, n_phases: int) -> Tensor:
    """Givens rotation of the interleaved (even, odd) channel pairs of each phase by theta + i*2pi/N."""
    ct = compute_dtype(x.dtype)
    xs = x.to(ct).unflatten(-1, (n_phases, -1, 2))
    phi = phase_angles(theta.to(ct), n_phases)
    cos, sin = torch.cos(phi), torch.sin(phi)
    a, b = xs[..., 0], xs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-3).to(x.dtype)


def horn_profile(positions: Tensor) -> Tensor:
    """Gabriel's horn r(p) = 1 / (p + 1)."""
    return 1.0 / (positions + 1.0)


def horn_inject(x: Tensor, n_phases: int, offset: int = 0) -> Tensor:
    """y = x - mean(x) + r(p + offset), p the token's index along dim -2."""
    ct = compute_dtype(x.dtype)
    xc = x.to(ct)
    positions = torch.arange(x.shape[-2], device=x.device, dtype=ct) + offset
    return (xc - xc.mean(-1, keepdim=True) + horn_profile(positions)[:, None]).to(x.dtype)


def horn_embedding(ids: Tensor, table: Tensor, n_phases: int, offset: int = 0) -> Tensor:
    """Embedding gather followed by horn_inject; ids are [B, T] or [T]."""
    return horn_inject(torch.nn.functional.embedding(ids, table), n_phases, offset)


def add_rotate_norm(h: Tensor, a: Tensor, theta: Tensor, weight: Tensor, n_phases: int,
                    eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """h_new = rotate(h + a); returns (h_new, phase_rmsnorm(h_new))."""
    h_new = phase_rotate(h + a, theta, n_phases)
    return h_new, phase_rmsnorm(h_new, weight, n_phases, eps)


def add_norm(h: Tensor, f: Tensor, weight: Tensor, n_phases: int, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """h_new = h + f; returns (h_new, phase_rmsnorm(h_new))."""
    h_new = h + f
    return h_new, phase_rmsnorm(h_new, weight, n_phases, eps)


def swiglu(gate_up: Tensor, inplace_backward: bool = False) -> Tensor:
    """h = silu(g) * u for g, u the first and second halves of the last dim of gate_up.

    ``inplace_backward`` is accepted for the fused op's signature and has no
    effect here (autograd's own backward allocates its gradients)."""
    gate, up = gate_up.to(compute_dtype(gate_up.dtype)).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(gate_up.dtype)


def qkv_rope(qkv: Tensor, cos: Tensor, sin_signed: Tensor, n_q_heads: int,
             n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split qkv [B, T, (H + 2*Hkv)*hd] into heads, rotate-half RoPE on q and k, v as is; each [B, heads, T, hd]."""
    ct = compute_dtype(qkv.dtype)
    hd = qkv.shape[-1] // (n_q_heads + 2 * n_kv_heads)
    q, k, v = qkv.to(ct).unflatten(-1, (n_q_heads + 2 * n_kv_heads, hd)).split(
        (n_q_heads, n_kv_heads, n_kv_heads), dim=2)
    cos, sin_signed = cos.to(ct)[:, None, :], sin_signed.to(ct)[:, None, :]

    def rope(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((x2, x1), dim=-1) * sin_signed

    return tuple(y.transpose(1, 2).contiguous().to(qkv.dtype) for y in (rope(q), rope(k), v))
