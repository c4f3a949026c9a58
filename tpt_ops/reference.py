"""Plain-PyTorch reference implementations of every tpt_ops op.

These are the ground truth the C kernels are tested against (``tests/``) and
the baseline they are measured against (``benchmarks/``); the math is in
``docs/ops/<family>.md``. They follow the kernels' precision rules: arithmetic in float32
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


def swiglu(gate_up: Tensor) -> Tensor:
    """h = silu(g) * u for g, u the first and second halves of the last dim of gate_up."""
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


MOE_SCORES = ("softmax", "sigmoid")


def _moe_check_index(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if t.dtype != torch.int64 or tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must be int64 of shape {list(shape)}, got {t.dtype} {list(t.shape)}")


def moe_capacity(capacity_factor: float, n_tokens: int, k: int, n_experts: int) -> int:
    """Slots per expert, C = ceil(capacity_factor * M * k / E), in double precision."""
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def moe_route(logits: Tensor, k: int, capacity_factor: float | None = None, normalize: bool = True,
              score: str = "softmax", bias: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Token-choice top-k routing of logits [M, E].

    Returns (gates [M, k], experts [M, k] int64, slots [M, k] int64, slot_token [M*k] int64,
    counts [E] int64, aux_loss, z_loss):
    scores s = softmax(logits) (or sigmoid) over experts; each token picks the k largest s + bias
    (bias steers selection only), in descending order, ties to the lower expert index; its gates
    are s at those experts, renormalised to sum 1 over the k when ``normalize``. With a capacity
    factor each expert admits C = ceil(capacity_factor * M * k / E) assignments in priority order
    (every token's choice j before any choice j + 1, by token index within a choice); a dropped
    assignment has gate 0 and slot -1. The kept assignments own rows [0, n_kept) of an M*k row
    buffer, grouped by expert in expert order and by token within an expert: ``slots[t, j]`` is
    the row of (t, j), ``slot_token[a]`` the token of row a (-1 for the unused tail) and
    ``counts[e]`` expert e's segment length. aux_loss = E * sum_e f_e * P_e with f_e the fraction
    of kept assignments at e (no gradient) and P_e the mean score of e; z_loss = mean over tokens
    of logsumexp(logits)^2. Computed in float32 (float64 for float64 logits): gates in that precision,
    the losses in the logits' dtype.
    """
    op = "moe_route"
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must be 2-d [M, E], got shape {list(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{op}: logits must have a float dtype, got {logits.dtype}")
    n_tokens, n_experts = logits.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
        raise ValueError(f"{op}: k must be an integer in [1, E={n_experts}], got {k!r}")
    if capacity_factor is not None and not (math.isfinite(capacity_factor) and capacity_factor > 0):
        raise ValueError(f"{op}: capacity_factor must be None or finite and > 0, got {capacity_factor!r}")
    if score not in MOE_SCORES:
        raise ValueError(f"{op}: score must be one of {MOE_SCORES}, got {score!r}")
    # bfloat16 / float16 logits are routed in float32, as a low-precision router flips expert choices
    storage, ct = logits.dtype, compute_dtype(logits.dtype)
    logits = logits.to(ct)
    if bias is not None:
        if tuple(bias.shape) != (n_experts,) or bias.dtype not in (torch.float32, ct):
            raise ValueError(f"{op}: bias must be float32 of shape [{n_experts}], "
                             f"got {bias.dtype} {list(bias.shape)}")
        if bias.device != logits.device:
            raise ValueError(f"{op}: bias is on {bias.device}, logits on {logits.device}")

    scores = torch.softmax(logits, dim=-1) if score == "softmax" else torch.sigmoid(logits)
    selection = scores.detach() if bias is None else scores.detach() + bias.detach().to(ct)
    # A stable descending sort keeps equal values in index order: ties go to the lower expert.
    experts = torch.sort(selection, dim=-1, descending=True, stable=True).indices[:, :k]
    gates = scores.gather(1, experts)
    if normalize:
        gates = gates / gates.sum(-1, keepdim=True)

    n_assign = n_tokens * k
    rows = torch.arange(n_assign, device=logits.device)
    # Priority order: assignment p = j * M + t.
    expert_by_priority = experts.t().reshape(-1)
    if capacity_factor is None:
        kept = torch.ones(n_tokens, k, dtype=torch.bool, device=logits.device)
    else:
        capacity = moe_capacity(capacity_factor, n_tokens, k, n_experts)
        order = torch.sort(expert_by_priority, stable=True).indices
        demand = torch.zeros(n_experts, dtype=torch.int64, device=logits.device).scatter_add_(
            0, expert_by_priority, torch.ones_like(expert_by_priority))
        start = torch.cumsum(demand, 0) - demand
        rank_sorted = rows - start[expert_by_priority[order]]
        rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
        kept = (rank < capacity).reshape(k, n_tokens).t()
    gates = torch.where(kept, gates, torch.zeros((), dtype=ct, device=logits.device))

    # Token-major assignment a = t * k + j; the key orders kept ones by (expert, token), dropped last.
    expert_flat, kept_flat = experts.reshape(-1), kept.reshape(-1)
    token_flat = rows // k
    key = torch.where(kept_flat, expert_flat * n_tokens + token_flat, n_experts * n_tokens)
    by_row = torch.sort(key, stable=True).indices
    row_of = torch.empty_like(by_row).scatter_(0, by_row, rows)
    slots = torch.where(kept_flat, row_of, -1).reshape(n_tokens, k)
    n_kept = kept_flat.sum()
    slot_token = torch.where(rows < n_kept, token_flat[by_row], -1)
    counts = torch.zeros(n_experts, dtype=torch.int64, device=logits.device).scatter_add_(
        0, expert_flat, kept_flat.to(torch.int64))

    fraction = counts.to(ct) / n_kept.clamp(min=1).to(ct)
    mean_score = scores.sum(0) / max(n_tokens, 1)
    aux_loss = n_experts * (fraction * mean_score).sum()
    z_loss = torch.logsumexp(logits, dim=-1).square().sum() / max(n_tokens, 1)
    return gates, experts, slots, slot_token, counts, aux_loss.to(storage), z_loss.to(storage)


def moe_permute(x: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    """buf [M*k, D] with buf[a] = x[slot_token[a]] for used rows, 0 for unused rows (slot_token -1)."""
    op = "moe_permute"
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-d [M, D], got shape {list(x.shape)}")
    if slots.dim() != 2 or slots.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: slots must be [M={x.shape[0]}, k], got shape {list(slots.shape)}")
    _moe_check_index(op, "slots", slots, tuple(slots.shape))
    _moe_check_index(op, "slot_token", slot_token, (slots.numel(),))
    used = (slot_token >= 0)[:, None]
    return torch.where(used, x[slot_token.clamp(min=0)], torch.zeros((), dtype=x.dtype, device=x.device))


def moe_unpermute(out: Tensor, gates: Tensor, slots: Tensor, slot_token: Tensor) -> Tensor:
    """y [M, D] with y[t] = sum_j gates[t, j] * out[slots[t, j]] over kept j (slot >= 0).

    Accumulated in float32 (float64 for float64), returned in out's dtype; ``slot_token`` is the
    fused op's backward map from rows to tokens and is only checked here."""
    op = "moe_unpermute"
    if out.dim() != 2:
        raise ValueError(f"{op}: out must be 2-d [M*k, D], got shape {list(out.shape)}")
    if gates.dim() != 2 or tuple(gates.shape) != tuple(slots.shape) or gates.numel() != out.shape[0]:
        raise ValueError(f"{op}: gates {list(gates.shape)} and slots {list(slots.shape)} must be [M, k] "
                         f"with M*k = rows of out ({out.shape[0]})")
    _moe_check_index(op, "slots", slots, tuple(gates.shape))
    _moe_check_index(op, "slot_token", slot_token, (out.shape[0],))
    ct = compute_dtype(out.dtype)
    kept = slots >= 0
    zero = torch.zeros((), dtype=ct, device=out.device)
    rows = torch.where(kept[..., None], out.to(ct)[slots.clamp(min=0)], zero)
    weights = torch.where(kept, gates.to(ct), zero)
    return (weights[..., None] * rows).sum(1).to(out.dtype)


# ---- Hedgehog linear attention (docs/ops/hedgehog.md) ----

def hedgehog_feature_map(u: Tensor) -> Tensor:
    """phi [..., 2F] = concat(softmax(u), softmax(-u)) over the F features of u [..., F]."""
    uc = u.to(compute_dtype(u.dtype))
    return torch.cat([torch.softmax(uc, -1), torch.softmax(-uc, -1)], -1).to(u.dtype)


def _expand_kv(t: Tensor, n_heads: int) -> Tensor:
    """A [B, Hkv, ...] key/value tensor repeated to the H query heads (query head h reads h // (H / Hkv))."""
    return t.repeat_interleave(n_heads // t.shape[1], dim=1)


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool = True, eps: float = 1e-12) -> Tensor:
    """The quadratic form: y = (A v) / (rowsum(A) + eps), A = phi_q phi_k^T (lower triangle when causal).

    phi_q [B, H, T, 2F], phi_k [B, Hkv, T, 2F], v [B, Hkv, T, Dv] -> [B, H, T, Dv] in phi_q's dtype,
    computed in float32 (float64 for float64). Materialises the [T, T] scores: a reference, not a kernel."""
    ct = compute_dtype(phi_q.dtype)
    H = phi_q.shape[1]
    q, k, vv = phi_q.to(ct), _expand_kv(phi_k.to(ct), H), _expand_kv(v.to(ct), H)
    scores = q @ k.transpose(-1, -2)
    if causal:
        scores = scores.tril()
    return ((scores @ vv) / (scores.sum(-1, keepdim=True) + eps)).to(phi_q.dtype)


def linear_attention_prefill(phi_q: Tensor, phi_k: Tensor, v: Tensor,
                             eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """(y, S, z): the causal linear_attention and the state after the last token, per key/value head:
    S [B, Hkv, 2F, Dv] = sum_j phi_k_j v_j^T, z [B, Hkv, 2F] = sum_j phi_k_j, in the compute precision."""
    ct = compute_dtype(phi_q.dtype)
    k, vv = phi_k.to(ct), v.to(ct)
    return linear_attention(phi_q, phi_k, v, True, eps), k.transpose(-1, -2) @ vv, k.sum(-2)


def linear_attention_step(phi_q: Tensor, phi_k: Tensor, v: Tensor, S: Tensor, z: Tensor,
                          eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """One decoding token: S' = S + phi_k^T v, z' = z + phi_k, y = phi_q S' / (phi_q . z' + eps).

    phi_q [B, H, 1, 2F], phi_k [B, Hkv, 1, 2F], v [B, Hkv, 1, Dv], S [B, Hkv, 2F, Dv], z [B, Hkv, 2F];
    returns (y [B, H, 1, Dv] in phi_q's dtype, S', z' in the compute precision)."""
    ct = compute_dtype(phi_q.dtype)
    H = phi_q.shape[1]
    k, vv = phi_k.to(ct), v.to(ct)
    S_new = S.to(ct) + k.transpose(-1, -2) @ vv
    z_new = z.to(ct) + k[:, :, 0]
    q = phi_q.to(ct)
    num = q @ _expand_kv(S_new, H)
    den = (q[:, :, 0] * _expand_kv(z_new, H)).sum(-1)[..., None, None] + eps
    return (num / den).to(phi_q.dtype), S_new, z_new


# ---- causal softmax attention (docs/ops/attention.md) ----

def causal_attention(q: Tensor, k: Tensor, v: Tensor, offset: int = 0, scale: float | None = None) -> Tensor:
    """The quadratic form: softmax(scale q k^T, keys past each query's position masked) v.

    q [B, H, T, hd], k and v [B, Hkv, Tk, hd] with Tk = offset + T (query i sits at position offset + i and
    sees keys 0 .. offset + i) -> [B, H, T, hd] in q's dtype, computed in float32 (float64 for float64),
    key/value heads repeated to the query heads. Materialises the [T, Tk] scores: a reference, not a kernel."""
    ct = compute_dtype(q.dtype)
    H, T, Tk = q.shape[1], q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qc, kc, vc = q.to(ct), _expand_kv(k.to(ct), H), _expand_kv(v.to(ct), H)
    visible = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(offset, offset + T, device=q.device)[:, None]
    scores = (qc @ kc.transpose(-1, -2) * scale).masked_fill(~visible, -math.inf)
    return (torch.softmax(scores, -1) @ vc).to(q.dtype)
