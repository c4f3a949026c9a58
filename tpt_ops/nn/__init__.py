"""``torch.nn`` modules of the Three-Phase Transformer built on the tpt_ops kernels.

Modules that use a 3PT op take ``backend="fused"`` (the C kernels exported by
:mod:`tpt_ops`) or ``backend="reference"`` (the plain-PyTorch functions of
:mod:`tpt_ops.reference`); both give the same results and have the same
parameters, so weights move freely between them. See :func:`ops_for`.
"""
from tpt_ops.nn.attention import GroupedQueryAttention, KVCache, RotaryEmbedding, check_heads, rotate_half
from tpt_ops.nn.backend import BACKENDS, OP_NAMES, Ops, check_backend, ops_for
from tpt_ops.nn.block import ThreePhaseBlock
from tpt_ops.nn.embedding import HornEmbedding
from tpt_ops.nn.ffn import SwiGLU
from tpt_ops.nn.hedgehog import (HedgehogAttention, HedgehogFeatureMap, LinearAttentionCache,
                                 hedgehog_distillation_loss)
from tpt_ops.nn.moe import TokenChoiceMoE
from tpt_ops.nn.norm import PhaseRMSNorm
from tpt_ops.nn.rotation import PhaseRotation

__all__ = [
    "BACKENDS", "OP_NAMES", "Ops", "check_backend", "ops_for",
    "PhaseRMSNorm", "PhaseRotation", "HornEmbedding",
    "RotaryEmbedding", "rotate_half", "check_heads", "KVCache", "GroupedQueryAttention",
    "SwiGLU", "TokenChoiceMoE", "ThreePhaseBlock",
    "HedgehogAttention", "HedgehogFeatureMap", "LinearAttentionCache", "hedgehog_distillation_loss",
]
