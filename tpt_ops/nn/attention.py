"""Phase-aligned grouped-query attention with RoPE and a KV cache (docs/model.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for


def check_heads(d_model: int, n_q_heads: int, n_kv_heads: int, n_phases: int = 1) -> int:
    """Validates a phase-aligned GQA head layout and returns ``head_dim = d_model // n_q_heads``.

    Raises ``ValueError`` unless both head counts are positive and divisible
    by ``n_phases`` (so every head lives inside one phase), ``n_q_heads`` is a
    multiple of ``n_kv_heads``, ``d_model`` is divisible by ``n_q_heads`` and
    the head dim is even (RoPE rotates halves).
    """
    if n_q_heads < 1 or n_kv_heads < 1:
        raise ValueError(f"head counts must be >= 1, got n_q_heads={n_q_heads}, n_kv_heads={n_kv_heads}")
    if n_q_heads % n_phases != 0 or n_kv_heads % n_phases != 0:
        raise ValueError(f"phase-aligned GQA needs n_q_heads ({n_q_heads}) and n_kv_heads ({n_kv_heads}) "
                         f"both divisible by n_phases ({n_phases})")
    if n_q_heads % n_kv_heads != 0:
        raise ValueError(f"n_q_heads ({n_q_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    if d_model % n_q_heads != 0:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_q_heads ({n_q_heads})")
    head_dim = d_model // n_q_heads
    if head_dim % 2 != 0:
        raise ValueError(f"head_dim = d_model / n_q_heads = {head_dim} must be even for RoPE")
    return head_dim


class RotaryEmbedding(nn.Module):
    """Cached RoPE tables (rotate-half form), ``[max_seq_len, head_dim]`` each.

    Frequency ``j`` (``j < head_dim/2``) is ``base^(-2j/head_dim)``; both
    halves of the head use the same frequencies, so for angles ``a`` the
    tables are ``cos = [cos a, cos a]`` and ``sin_signed = [-sin a, sin a]``
    (the sign of ``rotate_half`` folded in, which saves a negation per call).
    Computed once in float64, stored as float32 non-persistent buffers (not in
    the state_dict), sliced per call.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RotaryEmbedding: head_dim={head_dim} must be even")
        if max_seq_len < 1:
            raise ValueError(f"RotaryEmbedding: max_seq_len must be >= 1, got {max_seq_len}")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.base = base
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim, device=device), persistent=False)
        self.register_buffer("sin_signed", torch.empty(max_seq_len, head_dim, device=device), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)computes the tables (e.g. after ``to_empty`` from the meta device)."""
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64), inv_freq)
        self.cos.copy_(torch.cat((angles.cos(), angles.cos()), dim=-1))
        self.sin_signed.copy_(torch.cat((-angles.sin(), angles.sin()), dim=-1))

    def forward(self, offset: int, length: int) -> tuple[Tensor, Tensor]:
        """The ``(cos, sin_signed)`` rows of absolute positions ``offset .. offset+length-1``."""
        if offset < 0 or offset + length > self.max_seq_len:
            raise ValueError(f"positions {offset}..{offset + length - 1} exceed max_seq_len={self.max_seq_len}")
        return self.cos[offset:offset + length], self.sin_signed[offset:offset + length]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, base={self.base}"


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Textbook RoPE, ``x * cos + rotate_half(x) * sin`` (``sin = [sin a, sin a]``), for ``x`` ``[B, T, H, hd]``."""
    return (x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]).to(x.dtype)


class KVCache:
    """Key/value cache for incremental decoding, one preallocated buffer pair per layer.

    Buffers ``[B, n_kv_heads, capacity, head_dim]`` are allocated on the first
    write of each layer with the keys' dtype and device. ``length`` is the
    number of positions already cached, i.e. the absolute position of the next
    token; the model advances it once per forward, after all layers wrote.
    """

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes ``k``/``v`` (``[B, H, T, hd]``) at positions ``length..length+T-1``; returns all cached."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} positions needed, capacity {self.capacity}")
        if self.keys[layer_idx] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer_idx] = k.new_empty(shape)
            self.values[layer_idx] = v.new_empty(shape)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Marks ``n`` more positions as cached."""
        self.length += n

    def reset(self) -> None:
        """Empties the cache (the buffers are kept)."""
        self.length = 0


class GroupedQueryAttention(nn.Module):
    """Causal grouped-query self-attention with RoPE; heads phase-aligned.

    Bias-free projections; q, k and v are one fused matmul (``qkv.weight`` is
    the row-wise concatenation ``[W_q; W_k; W_v]`` of shapes
    ``[n_q_heads*hd, D]``, ``[n_kv_heads*hd, D]``, ``[n_kv_heads*hd, D]``).
    Query head ``h`` uses KV head ``h // (n_q_heads / n_kv_heads)``.
    ``head_dim = d_model / n_q_heads``. RoPE (rotate-half) is applied to q and
    k (``backend="fused"``: the ``qkv_rope`` kernel splits the projection into
    heads, rotates q and k and writes them head-major in one pass); attention
    is the ``causal_attention`` kernel (flash style, GQA without repeated keys/values,
    KV-cache decoding through its ``offset``) with scale ``1/sqrt(head_dim)``.
    Layout checks: :func:`check_heads`.

    ``backend="reference"`` computes the same thing the way the paper's
    reference code does, as the baseline the fused path is measured against:
    three separate q, k, v matmuls (row blocks of ``qkv.weight``) and RoPE on
    q and k separately in the textbook ``x*cos + rotate_half(x)*sin`` form, and attention through
    ``F.scaled_dot_product_attention``.
    """

    def __init__(self, d_model: int, n_q_heads: int, n_kv_heads: int, n_phases: int = 1,
                 backend: str = "fused", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.head_dim = check_heads(d_model, n_q_heads, n_kv_heads, n_phases)
        self.d_model = d_model
        self.n_q_heads = n_q_heads
        self.n_kv_heads = n_kv_heads
        self.n_phases = n_phases
        self.q_dim = n_q_heads * self.head_dim
        self.kv_dim = n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, self.q_dim + 2 * self.kv_dim, bias=False, device=device, dtype=dtype)
        self.o = nn.Linear(self.q_dim, d_model, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init for both projections (as the reference does)."""
        self.qkv.reset_parameters()
        self.o.reset_parameters()

    def forward(self, x: Tensor, cos: Tensor, sin_signed: Tensor, kv_cache: KVCache | None = None,
                layer_idx: int = 0) -> Tensor:
        """Attention over ``x`` ``[B, T, D]``.

        ``cos``/``sin_signed`` (``[T, head_dim]``, from :class:`RotaryEmbedding`)
        are the RoPE rows of the tokens' absolute positions. With ``kv_cache`` the new keys/values are stored in
        slot ``layer_idx`` at positions ``kv_cache.length ..`` and the queries
        attend causally to everything cached.
        """
        B, T, _ = x.shape
        H, Hkv, hd = self.n_q_heads, self.n_kv_heads, self.head_dim
        if self.backend == "fused":
            # one pass: split into heads, RoPE on q and k, head-major [B, heads, T, hd] outputs
            q, k, v = ops_for(self.backend).qkv_rope(self.qkv(x), cos, sin_signed, H, Hkv)
        else:
            w_q, w_k, w_v = self.qkv.weight.split((self.q_dim, self.kv_dim, self.kv_dim))
            sin = sin_signed[:, hd // 2:].repeat(1, 2)
            q = apply_rotary_reference(F.linear(x, w_q).unflatten(-1, (H, hd)), cos, sin)
            k = apply_rotary_reference(F.linear(x, w_k).unflatten(-1, (Hkv, hd)), cos, sin)
            v = F.linear(x, w_v).unflatten(-1, (Hkv, hd))
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.backend == "fused":
            offset = 0
            if kv_cache is not None:  # queries at positions past .. past+T-1 over the past + T cached keys
                offset = kv_cache.length
                k, v = kv_cache.update(layer_idx, k, v)
            out = ops_for(self.backend).causal_attention(q, k, v, offset=offset)
            return self.o(out.transpose(1, 2).reshape(B, T, self.q_dim))
        mask, causal = None, True
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(layer_idx, k, v)
            if past > 0:
                causal = False
                if T > 1:  # query i (absolute past+i) sees keys 0..past+i
                    mask = (torch.arange(past + T, device=x.device)[None, :]
                            <= torch.arange(past, past + T, device=x.device)[:, None])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=H != Hkv)
        return self.o(out.transpose(1, 2).reshape(B, T, self.q_dim))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_q_heads={self.n_q_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, n_phases={self.n_phases}, backend={self.backend!r}")
