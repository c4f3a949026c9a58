"""Givens phase rotation module (docs/ops/rotate.md)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for


class PhaseRotation(nn.Module):
    """Non-residual 2D Givens rotation of each phase by ``theta + i * 2*pi/n_phases``.

    Inside phase ``i`` the channel pairs ``(2j, 2j+1)`` are rotated by
    ``theta[j] + i*2*pi/N``; ``theta`` (shape ``[P/2]``, ``P = d_model/N``) is
    learned and initialised depth-linearly to ``(layer_idx+1) * pi / (2*n_layers)``.
    The map is orthogonal, so it is placed non-residually between attention
    and FFN (``h = rotate(h)``).

    Args:
        d_model: width of the rotated (last) dim.
        n_phases: number of phases; ``d_model / n_phases`` must be even.
        layer_idx: index of the block (0-based), for the initial angle.
        n_layers: number of blocks, for the initial angle.
        backend: ``"fused"`` (C kernel) or ``"reference"`` (plain PyTorch).
    """

    def __init__(self, d_model: int, n_phases: int, layer_idx: int = 0, n_layers: int = 1,
                 backend: str = "fused", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_phases < 1 or d_model % n_phases != 0:
            raise ValueError(f"PhaseRotation: d_model={d_model} is not divisible by n_phases={n_phases}")
        if (d_model // n_phases) % 2 != 0:
            raise ValueError(f"PhaseRotation: the phase width d_model/n_phases={d_model // n_phases} "
                             "must be even (channels are rotated in pairs)")
        if n_layers < 1 or not 0 <= layer_idx < n_layers:
            raise ValueError(f"PhaseRotation: need 0 <= layer_idx < n_layers, got {layer_idx}, {n_layers}")
        self.d_model = d_model
        self.n_phases = n_phases
        self.layer_idx = layer_idx
        self.n_layers = n_layers
        self.backend = check_backend(backend)
        self.theta = nn.Parameter(torch.empty(d_model // n_phases // 2, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def init_angle(self) -> float:
        """The initial value of every ``theta``: ``(layer_idx+1) * pi / (2*n_layers)``."""
        return (self.layer_idx + 1) * math.pi / (2 * self.n_layers)

    def reset_parameters(self) -> None:
        """All angles to :attr:`init_angle`."""
        nn.init.constant_(self.theta, self.init_angle)

    def forward(self, x: Tensor) -> Tensor:
        """Rotates the last dim of ``x`` (``[..., d_model]``); output has ``x``'s dtype."""
        return ops_for(self.backend).phase_rotate(x, self.theta, self.n_phases)

    def extra_repr(self) -> str:
        return (f"{self.d_model}, n_phases={self.n_phases}, layer_idx={self.layer_idx}, "
                f"n_layers={self.n_layers}, backend={self.backend!r}")
