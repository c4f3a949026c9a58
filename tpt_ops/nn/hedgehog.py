"""Hedgehog linear attention: phase-aligned GQA whose softmax is replaced by learned feature maps
(docs/model.md, docs/ops/hedgehog.md)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tpt_ops.nn.attention import GroupedQueryAttention, KVCache, rotate_half
from tpt_ops.nn.backend import check_backend, ops_for

#: The normaliser's eps of every Hedgehog layer (the default of the linear-attention ops).
HEDGEHOG_EPS = 1e-12
#: Where the student's attention weights are clamped before the log of the distillation loss.
DISTILLATION_CLAMP = 1e-12


class HedgehogFeatureMap(nn.Module):
    """Per-head feature map ``phi(x) = concat(softmax(x W_h + b_h), softmax(-(x W_h + b_h)))``.

    ``weight`` ``[n_heads, head_dim, feature_dim]``, ``bias`` ``[n_heads, feature_dim]`` (or None);
    ``x`` ``[B, n_heads, T, head_dim]`` -> ``[B, n_heads, T, 2 * feature_dim]``, each softmax over its
    ``feature_dim`` features (``tpt_ops.hedgehog_feature_map``). Initialisation: the identity when
    ``feature_dim == head_dim`` (so a fresh map is a function of the raw query/key alone), otherwise
    ``nn.Linear``'s default, per head; bias zero.
    """

    def __init__(self, n_heads: int, head_dim: int, feature_dim: int, bias: bool = True, backend: str = "fused",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_heads < 1 or head_dim < 1 or feature_dim < 1:
            raise ValueError(f"HedgehogFeatureMap: n_heads, head_dim and feature_dim must be >= 1, got "
                             f"{n_heads}, {head_dim}, {feature_dim}")
        self.backend = check_backend(backend)
        self.n_heads, self.head_dim, self.feature_dim = n_heads, head_dim, feature_dim
        self.weight = nn.Parameter(torch.empty(n_heads, head_dim, feature_dim, device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(n_heads, feature_dim, device=device, dtype=dtype)) if bias
                     else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Identity (``feature_dim == head_dim``) or ``nn.Linear``'s default per head; bias zero."""
        if self.feature_dim == self.head_dim:
            self.weight.copy_(torch.eye(self.head_dim).expand_as(self.weight))
        else:
            bound = 1.0 / self.head_dim ** 0.5  # nn.Linear's kaiming_uniform(a=sqrt(5)) bound
            self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        u = x @ self.weight.to(x.dtype)
        if self.bias is not None:
            u = u + self.bias.to(u.dtype)[:, None, :]
        return ops_for(self.backend).hedgehog_feature_map(u)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, head_dim={self.head_dim}, feature_dim={self.feature_dim}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")


class LinearAttentionCache(KVCache):
    """A :class:`KVCache` that also holds the recurrent state ``(S, z)`` of each Hedgehog layer.

    Softmax layers use the key/value buffers; a Hedgehog layer stores only
    ``S`` ``[B, Hkv, 2F, hd]`` and ``z`` ``[B, Hkv, 2F]`` (float32, or float64 for
    float64), whose size does not grow with the sequence.
    """

    def __init__(self, n_layers: int, capacity: int) -> None:
        super().__init__(n_layers, capacity)
        self.states: list[tuple[Tensor, Tensor] | None] = [None] * n_layers

    def reset(self) -> None:
        """Empties the cache: no position cached, no recurrent state."""
        super().reset()
        self.states = [None] * len(self.states)


def hedgehog_distillation_loss(q: Tensor, k: Tensor, phi_q: Tensor, phi_k: Tensor) -> Tensor:
    """Attention distillation: ``-mean_i sum_j a_ij log(max(b_ij, 1e-12))`` over batch, heads and rows i.

    Teacher ``a = causal_softmax(q k^T / sqrt(d))`` from ``q`` ``[B, H, T, d]`` and ``k``
    ``[B, Hkv, T, d]``; student ``b`` = the causally masked ``phi_q phi_k^T`` normalised to sum 1 per row,
    from ``phi_q`` ``[B, H, T, 2F]`` and ``phi_k`` ``[B, Hkv, T, 2F]``; query head h reads key head
    ``h // (H / Hkv)``. Computed in float32 (float64 for float64); quadratic in T, a training loss,
    not a kernel. The teacher side carries no gradient.
    """
    if q.dim() != 4 or k.dim() != 4 or phi_q.dim() != 4 or phi_k.dim() != 4:
        raise ValueError("hedgehog_distillation_loss: q, k, phi_q, phi_k must be 4-d [B, heads, T, features], got "
                         f"{[list(t.shape) for t in (q, k, phi_q, phi_k)]}")
    B, H, T, d = q.shape
    Hkv = k.shape[1]
    if (k.shape[0], k.shape[2], k.shape[3]) != (B, T, d) or Hkv < 1 or H % Hkv:
        raise ValueError(f"hedgehog_distillation_loss: k must be [B, Hkv, T, d] with H a multiple of Hkv for q "
                         f"{list(q.shape)}, got {list(k.shape)}")
    if phi_q.shape[:3] != q.shape[:3] or phi_k.shape[:3] != k.shape[:3] or phi_q.shape[3] != phi_k.shape[3]:
        raise ValueError(f"hedgehog_distillation_loss: phi_q {list(phi_q.shape)} and phi_k {list(phi_k.shape)} "
                         f"must match q {list(q.shape)} and k {list(k.shape)} but for one common feature width")
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = H // Hkv
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    with torch.no_grad():
        scores = (q.to(ct) @ k.to(ct).repeat_interleave(group, 1).transpose(-1, -2)) / d ** 0.5
        teacher = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    student = (phi_q.to(ct) @ phi_k.to(ct).repeat_interleave(group, 1).transpose(-1, -2)) * causal
    student = student / student.sum(-1, keepdim=True)
    return -(teacher * student.clamp_min(DISTILLATION_CLAMP).log()).sum(-1).mean()


class HedgehogAttention(GroupedQueryAttention):
    """Causal Hedgehog linear attention with the projections and head layout of :class:`GroupedQueryAttention`.

    The same ``qkv`` and ``o`` parameters (so softmax weights load as they
    are), the same phase-aligned GQA (query head h reads key/value head
    ``h // (n_q_heads / n_kv_heads)``), no RoPE: the positions reach the
    attention only through the causal order. Untied feature maps
    ``q_map`` (``n_q_heads`` heads) and ``k_map`` (``n_kv_heads`` heads),
    :class:`HedgehogFeatureMap` of ``feature_dim`` (default ``head_dim``)
    features each, and ``y = linear_attention(phi(q), phi(k), v)`` (eps 1e-12).

    Decoding: with a :class:`LinearAttentionCache` the first call (the
    prompt) runs the prefill and stores ``(S, z)`` in slot ``layer_idx``;
    later calls advance that state token by token, so step-by-step outputs
    equal the full forward's and the cache does not grow.

    ``distilling = True`` turns the layer into its own softmax teacher: the
    forward returns the softmax attention of the parent class (RoPE
    included, the output the converted model had) and leaves
    :func:`hedgehog_distillation_loss` of the teacher's (rotated) q, k
    against the feature maps of the raw q, k in :attr:`distillation_loss`.
    ``backend`` selects the ops as everywhere; ``"reference"`` also splits
    the projection into three matmuls as the softmax layer's reference does.
    """

    def __init__(self, d_model: int, n_q_heads: int, n_kv_heads: int, n_phases: int = 1,
                 feature_dim: int | None = None, feature_bias: bool = True, backend: str = "fused",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(d_model, n_q_heads, n_kv_heads, n_phases, backend, device, dtype)
        self.feature_dim = self.head_dim if feature_dim is None else feature_dim
        factory = {"device": device, "dtype": dtype}
        self.q_map = HedgehogFeatureMap(n_q_heads, self.head_dim, self.feature_dim, feature_bias, backend, **factory)
        self.k_map = HedgehogFeatureMap(n_kv_heads, self.head_dim, self.feature_dim, feature_bias, backend,
                                        **factory)
        self.distilling = False
        self.distillation_loss: Tensor | None = None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.q_map.reset_parameters()
        self.k_map.reset_parameters()

    def feature_map_parameters(self) -> list[nn.Parameter]:
        """The parameters of both feature maps (what distillation trains)."""
        return [*self.q_map.parameters(), *self.k_map.parameters()]

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The raw (un-rotated) ``q`` ``[B, H, T, hd]``, ``k``, ``v`` ``[B, Hkv, T, hd]`` of ``x`` ``[B, T, D]``."""
        H, Hkv, hd = self.n_q_heads, self.n_kv_heads, self.head_dim
        if self.backend == "fused":
            q, k, v = self.qkv(x).split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        else:
            q, k, v = (nn.functional.linear(x, w) for w in self.qkv.weight.split((self.q_dim, self.kv_dim,
                                                                                    self.kv_dim)))
        return (q.unflatten(-1, (H, hd)).transpose(1, 2), k.unflatten(-1, (Hkv, hd)).transpose(1, 2),
                v.unflatten(-1, (Hkv, hd)).transpose(1, 2))

    def forward(self, x: Tensor, cos: Tensor, sin_signed: Tensor, kv_cache: KVCache | None = None,
                layer_idx: int = 0) -> Tensor:
        """Attention over ``x`` ``[B, T, D]``; ``cos``/``sin_signed`` are used only while distilling."""
        if self.distilling:
            return self._teacher_forward(x, cos, sin_signed)
        B, T, _ = x.shape
        ops = ops_for(self.backend)
        q, k, v = self.project(x)
        phi_q, phi_k = self.q_map(q), self.k_map(k)
        if kv_cache is None:
            y = ops.linear_attention(phi_q, phi_k, v, True, HEDGEHOG_EPS)
        else:
            y = self._decode(ops, phi_q, phi_k, v, kv_cache, layer_idx)
        return self.o(y.transpose(1, 2).reshape(B, T, self.q_dim))

    def _decode(self, ops, phi_q: Tensor, phi_k: Tensor, v: Tensor, cache: KVCache, layer_idx: int) -> Tensor:
        states = getattr(cache, "states", None)
        if states is None:
            raise TypeError("HedgehogAttention: decoding needs a LinearAttentionCache (it keeps the recurrent "
                            f"state), got {type(cache).__name__}")
        state = states[layer_idx]
        if state is None:  # the prompt: one causal pass that also returns the state
            y, S, z = ops.linear_attention_prefill(phi_q, phi_k, v, HEDGEHOG_EPS)
        else:  # continuing: the recurrence, one token at a time
            S, z = state
            outputs = []
            for t in range(phi_q.shape[2]):
                y_t, S, z = ops.linear_attention_step(phi_q[:, :, t:t + 1], phi_k[:, :, t:t + 1], v[:, :, t:t + 1],
                                                      S, z, HEDGEHOG_EPS)
                outputs.append(y_t)
            y = torch.cat(outputs, dim=2)
        states[layer_idx] = (S, z)
        return y

    def _teacher_forward(self, x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
        q, k, _ = self.project(x)
        sin = sin_signed[:, self.head_dim // 2:].repeat(1, 2)
        q_rot, k_rot = ((t * cos + rotate_half(t) * sin).to(t.dtype) for t in (q, k))
        self.distillation_loss = hedgehog_distillation_loss(q_rot, k_rot, self.q_map(q), self.k_map(k))
        return super().forward(x, cos, sin_signed)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", feature_dim={self.feature_dim}, rope=False"
