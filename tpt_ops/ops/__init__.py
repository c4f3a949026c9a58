"""The fused 3PT ops: functional API, autograd and fake kernels over ``torch.ops.tpt.*``.

One module per family (``norm``, ``rotate``, ``horn``, ``block``, ``swiglu``,
``rope``, ``moe``, ``hedgehog``, ``attention``) registers the Python side of the ops that ``tpt_ops._C`` defines
(:mod:`tpt_ops.ops._extension` loads it). Without the compiled extension the
family modules are not imported and every function here raises an
:class:`ImportError` that says how to build it.
"""
from __future__ import annotations

from typing import Callable

from tpt_ops.ops._extension import LOAD_ERROR, missing_extension

__all__ = ["phase_rmsnorm", "phase_rotate", "horn_inject", "horn_embedding", "add_rotate_norm", "add_norm",
           "swiglu", "qkv_rope", "linear_swiglu", "moe_route", "moe_permute", "moe_unpermute",
           "hedgehog_feature_map", "linear_attention", "linear_attention_prefill", "linear_attention_step",
           "causal_attention"]


def _needs_extension(name: str) -> Callable:
    def op(*args, **kwargs):
        raise missing_extension(f"tpt_ops.{name}") from LOAD_ERROR
    op.__name__ = op.__qualname__ = name
    return op


if LOAD_ERROR is None:
    from tpt_ops.ops.attention import causal_attention
    from tpt_ops.ops.block import add_norm, add_rotate_norm
    from tpt_ops.ops.hedgehog import (hedgehog_feature_map, linear_attention, linear_attention_prefill,
                                      linear_attention_step)
    from tpt_ops.ops.horn import horn_embedding, horn_inject
    from tpt_ops.ops.moe import moe_permute, moe_route, moe_unpermute
    from tpt_ops.ops.norm import phase_rmsnorm
    from tpt_ops.ops.rope import qkv_rope
    from tpt_ops.ops.rotate import phase_rotate
    from tpt_ops.ops.swiglu import linear_swiglu, swiglu
else:
    phase_rmsnorm = _needs_extension("phase_rmsnorm")
    phase_rotate = _needs_extension("phase_rotate")
    horn_inject = _needs_extension("horn_inject")
    horn_embedding = _needs_extension("horn_embedding")
    add_rotate_norm = _needs_extension("add_rotate_norm")
    add_norm = _needs_extension("add_norm")
    swiglu = _needs_extension("swiglu")
    qkv_rope = _needs_extension("qkv_rope")
    linear_swiglu = _needs_extension("linear_swiglu")
    moe_route = _needs_extension("moe_route")
    moe_permute = _needs_extension("moe_permute")
    moe_unpermute = _needs_extension("moe_unpermute")
    hedgehog_feature_map = _needs_extension("hedgehog_feature_map")
    linear_attention = _needs_extension("linear_attention")
    linear_attention_prefill = _needs_extension("linear_attention_prefill")
    linear_attention_step = _needs_extension("linear_attention_step")
    causal_attention = _needs_extension("causal_attention")
