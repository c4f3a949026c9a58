"""Configuration of a Three-Phase Transformer and of its matched RoPE-only baseline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tpt_ops.nn.attention import check_heads
from tpt_ops.nn.backend import check_backend
from tpt_ops.nn.moe import check_moe_args

FFN_KINDS = ("dense", "moe")
ATTENTION_KINDS = ("softmax", "hedgehog")


@dataclass(frozen=True)
class TPTConfig:
    """Sizes and switches of a :class:`~tpt_ops.models.ThreePhaseTransformer`.

    The three 3PT switches are independent; all three off is the matched
    RoPE-only baseline (:meth:`baseline`): plain RMSNorm (N=1), no rotation,
    plain embedding, the same sizes otherwise. ``head_dim = d_model / n_q_heads``.

    Every inconsistency raises ``ValueError`` here, at construction:
    ``d_model`` not divisible by ``n_phases``, heads not phase-aligned
    (``n_q_heads`` and ``n_kv_heads`` both divisible by ``n_phases``), an odd
    phase width ``d_model / n_phases`` with rotation on, ``n_q_heads`` not a
    multiple of ``n_kv_heads``, ``d_model`` not divisible by ``n_q_heads``, an
    odd head_dim (RoPE), non-positive sizes, an unknown backend, an invalid
    MoE setting. The phase constraints apply only when some 3PT feature is on.

    ``ffn="moe"`` replaces the SwiGLU FFN of every ``moe_every``-th layer
    (layers ``moe_every - 1, 2 * moe_every - 1, ...``; 1 = every layer) by a
    :class:`~tpt_ops.nn.TokenChoiceMoE` of ``moe_experts`` experts of width
    ``moe_d_ff`` (None: ``d_ff``), ``moe_k`` per token, capacity factor
    ``moe_capacity`` (None: dropless), ``moe_score`` scores, ``moe_shared``
    shared experts, load-balance / z-loss weights ``moe_aux_weight`` /
    ``moe_z_weight`` and selection-bias rate ``moe_bias_rate``. The ``moe_*``
    fields are ignored when ``ffn="dense"``.

    ``attention="hedgehog"`` makes the attention of the layers ``hedgehog_layers``
    (None: every layer; a tuple of distinct layer indices makes a hybrid with
    softmax attention elsewhere) a :class:`~tpt_ops.nn.HedgehogAttention` with
    ``hedgehog_feature_dim`` features per head (None: head_dim) and, with
    ``hedgehog_feature_bias``, a bias in its feature maps. ``hedgehog_layers``
    with ``attention="softmax"`` is an error.
    """

    vocab_size: int = 256
    d_model: int = 192
    n_layers: int = 4
    n_q_heads: int = 6
    n_kv_heads: int = 3
    n_phases: int = 3
    d_ff: int = 512
    max_seq_len: int = 512
    use_rotation: bool = True
    use_horn: bool = True
    use_phase_norm: bool = True
    eps: float = 1e-6
    rope_base: float = 10000.0
    backend: str = "fused"
    ffn: str = "dense"
    moe_every: int = 1
    moe_experts: int = 8
    moe_k: int = 2
    moe_d_ff: int | None = None
    moe_capacity: float | None = None
    moe_score: str = "softmax"
    moe_shared: int = 0
    moe_aux_weight: float = 1e-2
    moe_z_weight: float = 1e-3
    moe_bias_rate: float = 0.0
    attention: str = "softmax"
    hedgehog_layers: tuple[int, ...] | None = None
    hedgehog_feature_dim: int | None = None
    hedgehog_feature_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_q_heads", "n_kv_heads", "n_phases", "d_ff",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TPTConfig.{name} must be a positive int, got {value!r}")
        if not self.eps > 0:
            raise ValueError(f"TPTConfig.eps must be > 0, got {self.eps!r}")
        if not self.rope_base > 0:
            raise ValueError(f"TPTConfig.rope_base must be > 0, got {self.rope_base!r}")
        check_backend(self.backend)
        N = self.phases
        if self.d_model % N != 0:
            raise ValueError(f"TPTConfig: d_model ({self.d_model}) must be divisible by n_phases ({N})")
        if self.use_rotation and (self.d_model // N) % 2 != 0:
            raise ValueError(f"TPTConfig: the phase width d_model/n_phases = {self.d_model // N} must be "
                             "even when use_rotation=True (channels rotate in pairs)")
        try:
            check_heads(self.d_model, self.n_q_heads, self.n_kv_heads, N)
        except ValueError as e:
            raise ValueError(f"TPTConfig: {e}") from None
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"TPTConfig.ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.ffn == "moe":
            if not isinstance(self.moe_every, int) or isinstance(self.moe_every, bool) or self.moe_every < 1:
                raise ValueError(f"TPTConfig.moe_every must be a positive int, got {self.moe_every!r}")
            if self.moe_every > self.n_layers:
                raise ValueError(f"TPTConfig: moe_every ({self.moe_every}) exceeds n_layers ({self.n_layers}): "
                                 "no layer would be MoE")
            check_moe_args("TPTConfig", **self.moe_options(), d_model=self.d_model)
        self._check_attention()

    def _check_attention(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"TPTConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        layers = self.hedgehog_layers
        if layers is not None:
            if self.attention != "hedgehog":
                raise ValueError(f"TPTConfig: hedgehog_layers={layers!r} needs attention='hedgehog', "
                                 f"got attention={self.attention!r}")
            layers = tuple(layers)  # a list from a JSON or checkpoint config
            object.__setattr__(self, "hedgehog_layers", layers)
            if not layers:
                raise ValueError("TPTConfig.hedgehog_layers must name at least one layer (None: every layer)")
            for i in layers:
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.n_layers:
                    raise ValueError(f"TPTConfig.hedgehog_layers: {i!r} is not a layer index in "
                                     f"0..{self.n_layers - 1}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"TPTConfig.hedgehog_layers names a layer twice: {layers!r}")
        dim = self.hedgehog_feature_dim
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"TPTConfig.hedgehog_feature_dim must be a positive int or None, got {dim!r}")

    def is_hedgehog_layer(self, layer_idx: int) -> bool:
        """True when layer ``layer_idx``'s attention is Hedgehog (``attention="hedgehog"``, in ``hedgehog_layers``)."""
        return self.attention == "hedgehog" and (self.hedgehog_layers is None or layer_idx in self.hedgehog_layers)

    def hedgehog_options(self) -> dict:
        """The :class:`~tpt_ops.nn.HedgehogAttention` arguments of a Hedgehog layer beyond the GQA layout."""
        return dict(feature_dim=self.hedgehog_feature_dim, feature_bias=self.hedgehog_feature_bias)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """True when layer ``layer_idx``'s FFN is a MoE (``ffn="moe"`` and every ``moe_every``-th layer)."""
        return self.ffn == "moe" and layer_idx % self.moe_every == self.moe_every - 1

    def moe_options(self) -> dict:
        """The :class:`~tpt_ops.nn.TokenChoiceMoE` arguments of a MoE layer (other than d_model, backend)."""
        return dict(d_ff=self.moe_d_ff if self.moe_d_ff is not None else self.d_ff, n_experts=self.moe_experts,
                    k=self.moe_k, capacity_factor=self.moe_capacity, score=self.moe_score,
                    n_shared_experts=self.moe_shared, aux_loss_weight=self.moe_aux_weight,
                    z_loss_weight=self.moe_z_weight, bias_update_rate=self.moe_bias_rate)

    @property
    def is_3pt(self) -> bool:
        """True when any 3PT feature (rotation, horn, per-phase norms) is on."""
        return self.use_rotation or self.use_horn or self.use_phase_norm

    @property
    def phases(self) -> int:
        """The phase count the model actually uses: ``n_phases``, or 1 for the baseline."""
        return self.n_phases if self.is_3pt else 1

    @property
    def norm_phases(self) -> int:
        """Phases of every RMSNorm: ``n_phases`` with ``use_phase_norm``, else 1 (plain RMSNorm)."""
        return self.n_phases if self.use_phase_norm else 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_q_heads

    def replace(self, **changes) -> "TPTConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def baseline(self) -> "TPTConfig":
        """The matched RoPE-only baseline: the same sizes with all three 3PT switches off."""
        return self.replace(use_rotation=False, use_horn=False, use_phase_norm=False)

    @classmethod
    def paper_123m(cls, vocab_size: int = 32000, **changes) -> "TPTConfig":
        """The paper's 123M configuration (d_model 768, 12 layers, 12 q / 3 kv heads, d_ff 2048,
        RoPE/mask capacity 2048, Llama-2 vocabulary of 32000)."""
        sizes = dict(vocab_size=vocab_size, d_model=768, n_layers=12, n_q_heads=12, n_kv_heads=3, n_phases=3,
                     d_ff=2048, max_seq_len=2048)
        sizes.update(changes)
        return cls(**sizes)
