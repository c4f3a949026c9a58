"""tpt_ops: C/CUDA kernels for Three-Phase Transformer (3PT) language models.

The ops are registered as ``torch.ops.tpt.*`` custom ops with autograd and
fake kernels (usable under ``torch.compile``); the functions below are their
functional API. Plain-PyTorch references of each live in ``tpt_ops.reference``
and NumPy entry points in ``tpt_ops.numpy``.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from tpt_ops import _C  # noqa: F401  (registers torch.ops.tpt.*)
from tpt_ops import numpy  # noqa: F401  (the NumPy face, tpt_ops.numpy)
from tpt_ops.ops.block import add_norm, add_rotate_norm
from tpt_ops.ops.horn import horn_embedding, horn_inject
from tpt_ops.ops.norm import phase_rmsnorm
from tpt_ops.ops.rope import qkv_rope
from tpt_ops.ops.rotate import phase_rotate
from tpt_ops.ops.swiglu import swiglu

__all__ = ["phase_rmsnorm", "phase_rotate", "horn_inject", "horn_embedding", "add_rotate_norm", "add_norm",
           "swiglu", "qkv_rope"]
__version__ = "0.1.0"
