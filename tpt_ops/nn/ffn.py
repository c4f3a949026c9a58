"""SwiGLU feed-forward network."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for
from tpt_ops.ops import linear_swiglu


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, bias-free.

    ``gate`` and ``up`` are one fused matmul: ``gate_up.weight`` is the
    row-wise concatenation ``[W_gate; W_up]`` (``[2*d_ff, d_model]``), and
    ``backend="fused"`` applies ``silu(gate) * up`` to its output with the
    fused ``swiglu`` kernel (one pass forward, one backward, no chunk/cat).
    In eager mode the matmul and the kernel are one autograd node,
    :func:`tpt_ops.ops.linear_swiglu`, whose backward writes the activation's
    gradient over the gate/up projection it made itself (nothing outside can
    see that buffer); it reads ``gate_up.weight``, so forward hooks on the
    ``gate_up`` module do not run. Under ``torch.compile`` the module runs
    ``gate_up`` and the functional ``swiglu``, and the compiler plans the
    buffers. ``backend="reference"`` runs two matmuls, as the paper's code does.
    """

    def __init__(self, d_model: int, d_ff: int, backend: str = "fused", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"SwiGLU: d_model and d_ff must be >= 1, got {d_model}, {d_ff}")
        self.d_model = d_model
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False, device=device, dtype=dtype)
        self.down = nn.Linear(d_ff, d_model, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init (as the reference does)."""
        self.gate_up.reset_parameters()
        self.down.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "fused":
            if torch.compiler.is_compiling():
                return self.down(ops_for(self.backend).swiglu(self.gate_up(x)))
            return self.down(linear_swiglu(x, self.gate_up.weight))
        w_gate, w_up = self.gate_up.weight.chunk(2, dim=0)
        return self.down(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, backend={self.backend!r}"
