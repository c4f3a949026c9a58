"""The Three-Phase Transformer language model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.models.config import TPTConfig
from tpt_ops.nn.attention import KVCache, RotaryEmbedding
from tpt_ops.nn.backend import check_backend
from tpt_ops.nn.block import ThreePhaseBlock
from tpt_ops.nn.embedding import HornEmbedding
from tpt_ops.nn.expert_parallel import group_size_and_rank, sharded_experts
from tpt_ops.nn.hedgehog import LinearAttentionCache
from tpt_ops.nn.moe import TokenChoiceMoE, all_reduce_counts
from tpt_ops.nn.norm import PhaseRMSNorm


class ThreePhaseTransformer(nn.Module):
    """Decoder-only 3PT language model (docs/model.md): ``model(ids [B, T]) -> logits [B, T, vocab]``.

    embedding (+ Gabriel's horn) -> ``n_layers`` x :class:`ThreePhaseBlock`
    -> final (per-phase) RMSNorm -> bias-free untied head. The forward chains
    the fused ops: the embedding output is normed once, then every block
    returns its output already normed by the next norm (the next block's
    ``norm1``, or ``norm_f`` after the last block), so each block makes two
    fused passes over ``h`` instead of four unfused ones.

    ``config.backend`` ("fused" | "reference") selects the op implementations;
    parameters and state_dict are the same for both (change it later with
    :attr:`backend`). Initialisation follows the reference implementation:
    PyTorch defaults (``nn.Linear`` / ``nn.Embedding``), norm weights 1,
    rotation angles ``(i+1)*pi/(2*n_layers)``.

    State-dict names: ``embedding.weight``, ``blocks.{i}.norm1.weight``,
    ``blocks.{i}.attn.qkv.weight`` ([W_q; W_k; W_v]), ``blocks.{i}.attn.o.weight``,
    ``blocks.{i}.rotation.theta``, ``blocks.{i}.norm2.weight``,
    ``blocks.{i}.ffn.gate_up.weight`` ([W_gate; W_up]), ``blocks.{i}.ffn.down.weight``,
    ``norm_f.weight``, ``head.weight``. A MoE layer (``config.ffn="moe"``) holds
    ``blocks.{i}.ffn.router.weight``, ``.w_gate``, ``.w_up``, ``.w_down``, ``.expert_bias``
    (and ``.shared.*``) instead of the SwiGLU's; after a forward, :meth:`moe_loss`
    is the sum of its layers' weighted losses, which the caller adds to its loss.

    ``expert_parallel_group`` (a ``torch.distributed`` process group of G ranks, or None)
    shards the experts of every MoE layer over the group (:mod:`tpt_ops.nn.expert_parallel`);
    the other parameters are whole on every rank. The initial weights are those of the
    single-process model of the same seed; ``expert_parallel.full_state_dict(model)``
    gathers the single-process state, which ``load_state_dict`` takes back.
    """

    def __init__(self, config: TPTConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, expert_parallel_group=None) -> None:
        super().__init__()
        self.config = config
        self.expert_parallel_group = expert_parallel_group
        c = config
        moe_options = c.moe_options()
        if expert_parallel_group is not None:
            moe_options["expert_parallel_group"] = expert_parallel_group
        factory = {"device": device, "dtype": dtype}
        self.embedding = HornEmbedding(c.vocab_size, c.d_model, c.phases, horn=c.use_horn, backend=c.backend,
                                       **factory)
        self.rope = RotaryEmbedding(c.head_dim, c.max_seq_len, c.rope_base, device=device)
        self.blocks = nn.ModuleList(
            ThreePhaseBlock(c.d_model, c.n_q_heads, c.n_kv_heads, c.d_ff, c.phases, i, c.n_layers,
                            use_rotation=c.use_rotation, use_phase_norm=c.use_phase_norm, eps=c.eps,
                            backend=c.backend, moe_options=moe_options if c.is_moe_layer(i) else None,
                            hedgehog_options=c.hedgehog_options() if c.is_hedgehog_layer(i) else None,
                            **factory)
            for i in range(c.n_layers))
        self.norm_f = PhaseRMSNorm(c.d_model, c.norm_phases, c.eps, c.backend, **factory)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False, **factory)

    # ------------------------------------------------------------------ setup

    @property
    def backend(self) -> str:
        """The op backend of every sub-module; assigning switches all of them."""
        return self.config.backend

    @backend.setter
    def backend(self, backend: str) -> None:
        check_backend(backend)
        self.config = self.config.replace(backend=backend)
        for module in self.modules():
            if module is not self and hasattr(module, "backend"):
                module.backend = backend

    def reset_parameters(self) -> None:
        """Re-initialises every parameter (and recomputes the RoPE tables)."""
        self.embedding.reset_parameters()
        self.rope.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm_f.reset_parameters()
        self.head.reset_parameters()

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Number of parameters of the whole model, every rank's expert shards included
        (optionally without the embedding table)."""
        n = sum(p.numel() for p in self.parameters())
        if self.expert_parallel_group is not None:
            size, _ = group_size_and_rank(self.expert_parallel_group)
            n += (size - 1) * sum(p.numel() for p, _, _ in sharded_experts(self).values())
        return n - self.embedding.weight.numel() if exclude_embedding else n

    # -------------------------------------------------------------------- MoE

    def moe_layers(self) -> list[TokenChoiceMoE]:
        """The MoE FFNs, in layer order (empty for a dense model)."""
        return [block.ffn for block in self.blocks if isinstance(block.ffn, TokenChoiceMoE)]

    def moe_loss(self) -> Tensor | None:
        """Sum of the MoE layers' weighted aux and z losses of the last forward (None for a dense model)."""
        layers = self.moe_layers()
        if not layers:
            return None
        return sum(layer.aux_loss + layer.z_loss for layer in layers)

    def accumulate_moe_counts(self) -> None:
        """Adds the last forward's expert counts to the step's; call once per training micro-batch."""
        for layer in self.moe_layers():
            layer.accumulate_counts()

    def moe_step(self) -> dict[str, float]:
        """Ends an optimizer step for every MoE layer (one all-reduce of all their counts under DDP).

        Updates the selection biases from the step's counts and returns the step's routing
        statistics: ``moe_dropped`` (fraction of assignments dropped, over all layers) and
        ``moe_max_load`` (the largest max/mean expert load of any layer); {} for a dense model.
        With expert parallelism also ``moe_rank_load``: the share of all layers' kept
        assignments that each rank's experts computed (rank order), the balance the
        all-to-all and the slowest rank see.
        """
        layers = self.moe_layers()
        if not layers:
            return {}
        counts, assignments = all_reduce_counts([layer.step_counts for layer in layers],
                                                [layer.step_assignments for layer in layers])
        stats = [layer.moe_step(c.clone(), n) for layer, c, n in zip(layers, counts, assignments)]
        total = sum(assignments)
        dropped = sum(s["dropped"] * n for s, n in zip(stats, assignments)) / total if total else 0.0
        summary = {"moe_dropped": dropped, "moe_max_load": max(s["max_load"] for s in stats)}
        if self.expert_parallel_group is not None:
            size, _ = group_size_and_rank(self.expert_parallel_group)
            per_rank = sum(c.view(size, -1).sum(1) for c in counts).to(torch.float64)
            kept = float(per_rank.sum())
            summary["moe_rank_load"] = (per_rank / kept).tolist() if kept else [0.0] * size
        return summary

    def new_kv_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache for up to ``capacity`` (default ``max_seq_len``) positions; a
        :class:`LinearAttentionCache` (recurrent state for the Hedgehog layers) when there are any."""
        kind = LinearAttentionCache if self.config.attention == "hedgehog" else KVCache
        return kind(len(self.blocks), capacity or self.config.max_seq_len)

    # ---------------------------------------------------------------- forward

    def forward(self, ids: Tensor, kv_cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """Logits ``[B, T, vocab]`` for token ids ``[B, T]``.

        With ``kv_cache`` the tokens continue the cached sequence: their
        absolute positions (for RoPE and the horn) start at
        ``kv_cache.length``, and the cache is advanced by ``T``. With
        ``last_only`` only the last position's logits are computed (``[B, 1, vocab]``).
        """
        if ids.dim() != 2:
            raise ValueError(f"ThreePhaseTransformer: ids must be [B, T], got shape {list(ids.shape)}")
        T = ids.shape[1]
        offset = kv_cache.length if kv_cache is not None else 0
        cos, sin_signed = self.rope(offset, T)
        h = self.embedding(ids, offset)
        blocks = self.blocks
        normed = blocks[0].norm1(h)
        for i, block in enumerate(blocks):
            next_norm = blocks[i + 1].norm1 if i + 1 < len(blocks) else self.norm_f
            h, normed = block(h, cos, sin_signed, normed, next_norm, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only:
            normed = normed[:, -1:]
        return self.head(normed)

    # ------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Samples ``max_new_tokens`` tokens after the prompt ``ids`` (``[B, T]`` or ``[T]``).

        Uses a KV cache; each new token is embedded at its true absolute
        position (horn and RoPE), so step-by-step decoding computes exactly
        what a full forward over the same tokens would. ``temperature=0`` is
        greedy (argmax, deterministic); ``top_k`` keeps the k most likely
        tokens before sampling. Returns the prompt followed by the new tokens,
        in the prompt's shape convention. The model is in eval mode during
        the call and restored afterwards.
        """
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids[None]
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        total = ids.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_seq_len ({self.config.max_seq_len})")
        out = [ids]
        if max_new_tokens > 0:
            was_training = self.training
            self.eval()
            try:
                cache = self.new_kv_cache(max(total - 1, ids.shape[1]))
                logits = self(ids, cache, last_only=True)[:, -1]
                for step in range(max_new_tokens):
                    token = sample_next(logits, temperature, top_k, generator)
                    out.append(token)
                    if step + 1 < max_new_tokens:
                        logits = self(token, cache, last_only=True)[:, -1]
            finally:
                self.train(was_training)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token ids ``[B, 1]`` from last-position logits ``[B, vocab]``.

    ``temperature == 0``: argmax. Otherwise softmax(logits / temperature),
    restricted to the ``top_k`` largest logits when given, sampled with
    ``generator``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
