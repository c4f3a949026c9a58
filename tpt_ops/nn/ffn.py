"""SwiGLU feed-forward network."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, bias-free.

    ``gate`` and ``up`` are one fused matmul: ``gate_up.weight`` is the
    row-wise concatenation ``[W_gate; W_up]`` (``[2*d_ff, d_model]``), and
    ``backend="fused"`` applies ``silu(gate) * up`` to its output with the
    fused ``swiglu`` kernel (one pass forward, one backward, no chunk/cat;
    the backward writes its gradient over the gate/up activation, which
    nothing else reads: a forward hook on ``gate_up`` that keeps its output
    sees it overwritten after the backward);
    ``backend="reference"`` runs them as two matmuls, as the paper's code does.
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
            # gate_up's output is private to this forward: its backward may overwrite it
            return self.down(ops_for(self.backend).swiglu(self.gate_up(x), inplace_backward=True))
        w_gate, w_up = self.gate_up.weight.chunk(2, dim=0)
        return self.down(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, backend={self.backend!r}"
