"""The tpt_ops C kernels on NumPy arrays (float32 or float64), no torch needed at call time.

Every function runs the same C kernel as the corresponding ``torch.ops.tpt``
op, so results agree bit for bit with the torch op on one dtype. Forward
functions return the saved statistics the backward needs, llm.c style:

>>> y, rstd = phase_rmsnorm_forward(x, w, n_phases=3)
>>> dx, dw = phase_rmsnorm_backward(dy, x, w, rstd, n_phases=3)

Wrong dtypes raise ``TypeError``, wrong shapes ``ValueError``.
"""
from tpt_ops._np import (  # noqa: F401
    phase_rmsnorm_backward,
    phase_rmsnorm_forward,
)

__all__ = [
    "phase_rmsnorm_forward",
    "phase_rmsnorm_backward",
]
