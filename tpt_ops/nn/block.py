"""The 3PT decoder block, written for the fused add+rotate+norm / add+norm chain (docs/model.md, docs/ops/block.md)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tpt_ops.nn.attention import GroupedQueryAttention, KVCache
from tpt_ops.nn.backend import check_backend, ops_for
from tpt_ops.nn.ffn import SwiGLU
from tpt_ops.nn.hedgehog import HedgehogAttention
from tpt_ops.nn.moe import TokenChoiceMoE
from tpt_ops.nn.norm import PhaseRMSNorm
from tpt_ops.nn.rotation import PhaseRotation


class ThreePhaseBlock(nn.Module):
    """Pre-norm 3PT block: GQA attention, non-residual phase rotation, SwiGLU (or MoE) FFN.

    Math (the reference block)::

        h = h + attn(norm1(h))
        h = rotate(h)                  # non-residual; skipped when use_rotation=False
        h = h + ffn(norm2(h))

    The forward is written so that no pass over ``h`` is spent on a norm of
    its own: it takes ``normed = norm1(h)`` from the caller (the previous
    block's last fused op) and returns ``(h_new, next_norm(h_new))``::

        a          = attn(normed)
        h, n2      = add_rotate_norm(h, a, theta, norm2.weight)   # add_norm when no rotation
        f          = ffn(n2)
        h, n_next  = add_norm(h, f, next_norm.weight)

    ``next_norm`` is the next block's ``norm1`` or the model's final norm.
    With ``backend="reference"`` the same calls go to ``tpt_ops.reference``,
    whose fused functions are the plain unfused compositions.

    Args:
        d_model, n_q_heads, n_kv_heads, d_ff: sizes (see :class:`GroupedQueryAttention`).
        n_phases: phases of the partition (rotation, per-phase norms, head alignment).
        layer_idx, n_layers: position of the block (rotation init, KV-cache slot).
        use_rotation: insert the phase rotation (3PT) or not (baseline).
        use_phase_norm: norms per phase (3PT) or plain RMSNorm, N=1 (baseline).
        eps: RMSNorm epsilon.
        backend: ``"fused"`` or ``"reference"``.
        moe_options: None for the SwiGLU FFN of width ``d_ff``; else the
            :class:`TokenChoiceMoE` arguments (other than d_model and backend) of the FFN.
        hedgehog_options: None for softmax attention; else the :class:`HedgehogAttention`
            arguments beyond the head layout (``feature_dim``, ``feature_bias``).
    """

    def __init__(self, d_model: int, n_q_heads: int, n_kv_heads: int, d_ff: int, n_phases: int = 3,
                 layer_idx: int = 0, n_layers: int = 1, use_rotation: bool = True,
                 use_phase_norm: bool = True, eps: float = 1e-6, backend: str = "fused",
                 moe_options: dict | None = None, hedgehog_options: dict | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.backend = check_backend(backend)
        norm_phases = n_phases if use_phase_norm else 1
        factory = {"device": device, "dtype": dtype}
        self.norm1 = PhaseRMSNorm(d_model, norm_phases, eps, backend, **factory)
        self.attn = (GroupedQueryAttention(d_model, n_q_heads, n_kv_heads, n_phases, backend, **factory)
                     if hedgehog_options is None else
                     HedgehogAttention(d_model, n_q_heads, n_kv_heads, n_phases, **hedgehog_options, backend=backend,
                                       **factory))
        self.rotation = (PhaseRotation(d_model, n_phases, layer_idx, n_layers, backend, **factory)
                         if use_rotation else None)
        self.norm2 = PhaseRMSNorm(d_model, norm_phases, eps, backend, **factory)
        self.ffn = (SwiGLU(d_model, d_ff, backend, **factory) if moe_options is None
                    else TokenChoiceMoE(d_model, **moe_options, backend=backend, **factory))

    def reset_parameters(self) -> None:
        """Re-initialises every sub-module."""
        for module in (self.norm1, self.attn, self.rotation, self.norm2, self.ffn):
            if module is not None:
                module.reset_parameters()

    def forward(self, h: Tensor, cos: Tensor, sin_signed: Tensor, normed: Tensor | None = None,
                next_norm: PhaseRMSNorm | None = None,
                kv_cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """One block over the residual stream ``h`` ``[B, T, D]``.

        Args:
            h: residual stream.
            cos, sin_signed: RoPE tables of the tokens' absolute positions (:class:`RotaryEmbedding`).
            normed: ``norm1(h)`` if the caller has it (the chained path); computed if None.
            next_norm: the norm applied next to the block's output (next block's
                ``norm1`` or the final norm); its result is fused into the last add.
            kv_cache: decoding cache (slot ``layer_idx``).

        Returns:
            ``(h_new, next_norm(h_new))``; the second is None when ``next_norm`` is None.
        """
        ops = ops_for(self.backend)
        if normed is None:
            normed = self.norm1(h)
        # under autocast `a` and `f` are bfloat16/float16 while h stays float32:
        # the fused ops take the mixed pair and keep h's dtype
        a = self.attn(normed, cos, sin_signed, kv_cache, self.layer_idx)
        n2, rot = self.norm2, self.rotation
        if rot is None:
            h, normed = ops.add_norm(h, a, n2.weight, n2.n_phases, n2.eps)
        elif rot.n_phases == n2.n_phases:
            h, normed = ops.add_rotate_norm(h, a, rot.theta, n2.weight, n2.n_phases, n2.eps)
        else:  # rotation with plain (N=1) norms: no single fused op covers it
            h = ops.phase_rotate(h + a, rot.theta, rot.n_phases)
            normed = ops.phase_rmsnorm(h, n2.weight, n2.n_phases, n2.eps)
        f = self.ffn(normed)
        if next_norm is None:
            return h + f, None
        return ops.add_norm(h, f, next_norm.weight, next_norm.n_phases, next_norm.eps)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, backend={self.backend!r}"
