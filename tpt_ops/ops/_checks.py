"""Argument checks for the fake (meta) kernels, mirroring csrc/cpu/checks.c.

The C rules (csrc/cpu/checks.c, raised by csrc/torch/glue.h) check real
tensors; these run when an op is traced with fake tensors (torch.compile,
opcheck), so a bad call fails at trace time with the same message instead of
producing a graph that crashes later. tests/test_checks.py asserts that each
rule gives the same message here and in C. The fake
kernels return contiguous outputs (``new_empty``, not ``empty_like``), as the
glue does: it makes its inputs contiguous before allocating outputs like them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def fail(op: str, *parts: object) -> None:
    raise RuntimeError(f"tpt.{op}: " + "".join(str(p) for p in parts))


INT64_MAX = 2**63 - 1


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name of a dtype without the module: 'float32', 'float8_e4m3fn'."""
    return str(dtype).replace("torch.", "")


def check_float(op: str, arg: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        fail(op, f"argument '{arg}' has dtype {dtype_name(t.dtype)}; expected float32, float64, bfloat16 or float16")


def check_eps(op: str, eps: float) -> None:
    """eps is finite and > 0 (formatted as C's %g, as the C rule does)."""
    if not (math.isfinite(eps) and eps > 0):
        fail(op, f"eps must be finite and > 0, got {eps:g}")


def check_offset(op: str, offset: int, T: int) -> None:
    """offset >= 0 and the last position offset + T - 1, plus one, fits in int64."""
    if offset < 0:
        fail(op, f"offset must be >= 0 (the absolute position of the first token), got {offset}")
    if offset > INT64_MAX - T:
        fail(op, f"offset={offset} with T={T} positions overflows int64: offset + T must be <= {INT64_MAX}")


def check_same_precision(op: str, h_arg: str, h: Tensor, a_arg: str, a: Tensor) -> None:
    """Both float64 or both not: the kernel reads both in one precision."""
    if (h.dtype == torch.float64) != (a.dtype == torch.float64):
        fail(op, f"arguments '{h_arg}' and '{a_arg}' must both be float64 or both not, got {dtype_name(h.dtype)} "
                 f"and {dtype_name(a.dtype)}")


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


# ---- moe (csrc/cpu/checks.c: tpt_check_moe_*) ----

def check_index(op: str, arg: str, t: Tensor, x: Tensor) -> None:
    """An int64 index tensor (slots, slot_token, experts, counts) on x's device."""
    if t.dtype != torch.int64:
        fail(op, f"argument '{arg}' has dtype {dtype_name(t.dtype)}; expected int64")
    if t.device != x.device:
        fail(op, f"argument '{arg}' is on a different device from the input")


def check_moe_logits(op: str, logits: Tensor) -> tuple[int, int]:
    """(M, E) of logits [M, E]."""
    check_float(op, "logits", logits)
    if logits.dim() != 2:
        fail(op, f"argument 'logits' must be 2-d [M, E], got {list(logits.shape)}")
    return logits.shape[0], logits.shape[1]


def check_moe_k(op: str, k: int, E: int) -> None:
    if not 1 <= k <= E:
        fail(op, f"k must be in [1, E] with E={E} experts, got {k}")


def check_moe_capacity_factor(op: str, capacity_factor: float | None) -> None:
    """None (no capacity limit) or finite and > 0 (formatted as C's %g)."""
    if capacity_factor is not None and not (math.isfinite(capacity_factor) and capacity_factor > 0):
        fail(op, f"capacity_factor must be finite and > 0 (None: no capacity limit), got {capacity_factor:g}")


def check_moe_score(op: str, score: str) -> None:
    if score not in ("softmax", "sigmoid"):
        fail(op, f"score must be 'softmax' or 'sigmoid', got '{score}'")


def check_moe_slots(op: str, slots: Tensor) -> tuple[int, int]:
    """(M, k) of slots [M, k]."""
    if slots.dim() != 2:
        fail(op, f"argument 'slots' must be 2-d [M, k], got {list(slots.shape)}")
    return slots.shape[0], slots.shape[1]


def check_moe_matrix(op: str, arg: str, t: Tensor, rows_name: str, rows: int, cols: int = -1) -> None:
    """t is 2-d [rows_name, D] with `rows` rows, and `cols` columns unless cols < 0."""
    if t.dim() == 2 and t.shape[0] == rows and (cols < 0 or t.shape[1] == cols):
        return
    if cols < 0:
        fail(op, f"argument '{arg}' must be 2-d [{rows_name}, D] with {rows_name}={rows}, got {list(t.shape)}")
    fail(op, f"argument '{arg}' must have shape [{rows_name}, D] = [{rows}, {cols}], got {list(t.shape)}")


def check_moe_slot_token(op: str, slot_token: Tensor, A: int) -> None:
    if slot_token.dim() != 1 or slot_token.shape[0] != A:
        fail(op, f"argument 'slot_token' must have shape [{A}], got {list(slot_token.shape)}")


# ---- hedgehog (csrc/cpu/checks.c: tpt_check_hedgehog_u, tpt_check_linear_attention, tpt_check_shape,
# tpt_check_one_token) ----

def check_hedgehog_u(op: str, u: Tensor) -> int:
    """F of u [..., F]."""
    check_float(op, "u", u)
    if u.dim() < 1:
        fail(op, "argument 'u' must have at least 1 dimension, got a scalar")
    if u.shape[-1] < 1:
        fail(op, "the last dim of 'u' (F) must be >= 1, got 0")
    return u.shape[-1]


def check_linear_attention(op: str, phi_q: Tensor, phi_k: Tensor, v: Tensor) -> tuple[int, int, int, int, int, int]:
    """(B, H, Hkv, T, K, Dv) of phi_q [B, H, T, K], phi_k [B, Hkv, T, K], v [B, Hkv, T, Dv]."""
    for arg, t in (("phi_q", phi_q), ("phi_k", phi_k), ("v", v)):
        check_float(op, arg, t)
    for arg, t in (("phi_k", phi_k), ("v", v)):
        if t.device != phi_q.device:
            fail(op, f"argument '{arg}' is on a different device from the input")
    for arg, t, layout in (("phi_q", phi_q, "[B, H, T, 2F]"), ("phi_k", phi_k, "[B, Hkv, T, 2F]"),
                           ("v", v, "[B, Hkv, T, Dv]")):
        if t.dim() != 4:
            fail(op, f"argument '{arg}' must be 4-d {layout}, got {list(t.shape)}")
    if v.shape[:3] != phi_k.shape[:3]:
        fail(op, f"argument 'v' must be [B, Hkv, T, Dv] with the B, Hkv, T of phi_k {list(phi_k.shape)}, "
                 f"got {list(v.shape)}")
    if phi_q.shape[0] != phi_k.shape[0] or phi_q.shape[2] != phi_k.shape[2]:
        fail(op, f"argument 'phi_q' must be [B, H, T, 2F] with the B, T of phi_k {list(phi_k.shape)}, "
                 f"got {list(phi_q.shape)}")
    if phi_q.shape[3] != phi_k.shape[3]:
        fail(op, f"the feature widths of phi_q ({phi_q.shape[3]}) and phi_k ({phi_k.shape[3]}) differ")
    B, H, T, K = phi_q.shape
    Hkv, Dv = phi_k.shape[1], v.shape[3]
    if Hkv < 1 or H < 1 or H % Hkv:
        fail(op, f"the query heads (H={H}) must be a positive multiple of the key/value heads (Hkv={Hkv})")
    return B, H, Hkv, T, K, Dv


def check_shape(op: str, arg: str, t: Tensor, names: str, sizes: tuple[int, ...], like: Tensor) -> None:
    """t has exactly the given sizes (spelled out by names) and is on like's device."""
    if tuple(t.shape) != tuple(sizes):
        fail(op, f"argument '{arg}' must have shape {names} = {list(sizes)}, got {list(t.shape)}")
    if t.device != like.device:
        fail(op, f"argument '{arg}' is on a different device from the input")


def check_one_token(op: str, T: int) -> None:
    if T != 1:
        fail(op, f"a decoding step takes one token (T=1), got T={T}")


# ---- attention (csrc/cpu/checks.c: tpt_check_attention*, tpt_check_same_dtype) ----

def check_same_dtype(op: str, a_arg: str, a: Tensor, b_arg: str, b: Tensor) -> None:
    if a.dtype != b.dtype:
        fail(op, f"arguments '{a_arg}' and '{b_arg}' must have one dtype, got {dtype_name(a.dtype)} and "
                 f"{dtype_name(b.dtype)}")


def check_attention(op: str, q: Tensor, k: Tensor, v: Tensor, offset: int) -> tuple[int, int, int, int, int, int]:
    """(B, H, Hkv, T, Tk, hd) of q [B, H, T, hd], k and v [B, Hkv, Tk, hd] with Tk = offset + T."""
    for arg, t in (("q", q), ("k", k), ("v", v)):
        check_float(op, arg, t)
    for arg, t in (("k", k), ("v", v)):
        if t.device != q.device:
            fail(op, f"argument '{arg}' is on a different device from the input")
    check_same_dtype(op, "k", k, "q", q)
    check_same_dtype(op, "v", v, "q", q)
    for arg, t, layout in (("q", q, "[B, H, T, hd]"), ("k", k, "[B, Hkv, Tk, hd]"), ("v", v, "[B, Hkv, Tk, hd]")):
        if t.dim() != 4:
            fail(op, f"argument '{arg}' must be 4-d {layout}, got {list(t.shape)}")
    if v.shape != k.shape:
        fail(op, f"argument 'v' must have the shape of k {list(k.shape)}, got {list(v.shape)}")
    if q.shape[0] != k.shape[0]:
        fail(op, f"q and k must have one batch size, got B={q.shape[0]} and B={k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        fail(op, f"the head dims of q ({q.shape[3]}) and k ({k.shape[3]}) differ")
    B, H, T, hd = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if Hkv < 1 or H < 1 or H % Hkv:
        fail(op, f"the query heads (H={H}) must be a positive multiple of the key/value heads (Hkv={Hkv})")
    if Tk < T:
        fail(op, f"k holds Tk={Tk} keys, fewer than the T={T} queries of q")
    if offset < 0 or offset > Tk - T:
        fail(op, f"offset={offset} is out of range: queries at positions offset .. offset+T-1 need 0 <= offset <= "
                 f"Tk - T = {Tk - T}")
    if Tk != offset + T:
        fail(op, f"k must hold Tk = offset + T = {offset + T} keys (each query sees every key up to its own "
                 f"position), got Tk={Tk}")
    return B, H, Hkv, T, Tk, hd


def check_attention_scale(op: str, scale: float) -> None:
    """scale is finite and > 0 (formatted as C's %g, as the C rule does)."""
    if not (math.isfinite(scale) and scale > 0):
        fail(op, f"scale must be finite and > 0, got {scale:g}")
