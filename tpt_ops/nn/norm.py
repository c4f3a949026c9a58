"""Per-phase RMSNorm module (docs/ops/norm.md)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for


class PhaseRMSNorm(nn.Module):
    """RMSNorm applied independently to each of ``n_phases`` contiguous stripes of the last dim.

    ``y_i = x_i / sqrt(mean(x_i^2) + eps) * w_i`` for phase ``i`` (width
    ``P = d_model / n_phases``). The weight has shape ``[d_model]`` (the
    per-phase weights concatenated), the same parameter count as one
    ``RMSNorm(d_model)``; ``n_phases=1`` is exactly a plain RMSNorm.

    Args:
        d_model: width of the normalised (last) dim.
        n_phases: number of phases; must divide ``d_model``.
        eps: added to the mean square.
        backend: ``"fused"`` (C kernel) or ``"reference"`` (plain PyTorch).
    """

    def __init__(self, d_model: int, n_phases: int = 1, eps: float = 1e-6, backend: str = "fused",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_phases < 1 or d_model % n_phases != 0:
            raise ValueError(f"PhaseRMSNorm: d_model={d_model} is not divisible by n_phases={n_phases}")
        self.d_model = d_model
        self.n_phases = n_phases
        self.eps = eps
        self.backend = check_backend(backend)
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to ones (the identity scale)."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Normalises the last dim of ``x`` (``[..., d_model]``); output has ``x``'s dtype."""
        return ops_for(self.backend).phase_rmsnorm(x, self.weight, self.n_phases, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, n_phases={self.n_phases}, eps={self.eps}, backend={self.backend!r}"
