"""tpt_ops: C kernels for Three-Phase Transformer (3PT) language models.

The ops are registered as ``torch.ops.tpt.*`` custom ops with autograd and
fake kernels (usable under ``torch.compile``); the functions below are their
functional API (:mod:`tpt_ops.ops`). Plain-PyTorch references of each live in
``tpt_ops.reference`` and NumPy entry points in ``tpt_ops.numpy``. Without
the compiled extensions the package still imports: the references and
``backend="reference"`` models work, the fused ops raise an ``ImportError``
saying how to build them.
"""
from tpt_ops.ops import (add_norm, add_rotate_norm, horn_embedding, horn_inject, linear_swiglu, moe_permute,
                         moe_route, moe_unpermute, phase_rmsnorm, phase_rotate, qkv_rope, swiglu)
from tpt_ops.ops import causal_attention
from tpt_ops.ops import (hedgehog_feature_map, linear_attention, linear_attention_prefill,
                         linear_attention_step)

try:
    from tpt_ops import numpy  # noqa: F401  (the NumPy face, tpt_ops.numpy)
except ImportError:  # tpt_ops._np not built; `import tpt_ops.numpy` names the missing module
    pass

__all__ = ["phase_rmsnorm", "phase_rotate", "horn_inject", "horn_embedding", "add_rotate_norm", "add_norm",
           "swiglu", "linear_swiglu", "qkv_rope", "moe_route", "moe_permute", "moe_unpermute",
           "hedgehog_feature_map", "linear_attention", "linear_attention_prefill", "linear_attention_step",
           "causal_attention"]
__version__ = "0.1.0"
