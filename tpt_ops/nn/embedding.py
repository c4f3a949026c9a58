"""Token embedding with Gabriel's horn DC injection (docs/ops/horn.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for


class HornEmbedding(nn.Module):
    """Token embedding whose all-ones (DC) component is replaced by ``r(p) = 1/(p+1)``.

    ``y = e - mean(e) + r(p + offset)`` per token, ``e`` the embedding row and
    ``p`` the token's index along the sequence dim; ``offset`` is the absolute
    position of the first token (0 in training, the KV-cache length while
    decoding). ``r`` is computed, so there is no length cap. With
    ``horn=False`` this is a plain ``nn.Embedding`` lookup (the RoPE-only
    baseline). The table is initialised like ``nn.Embedding`` (N(0, 1)), as in
    the reference implementation.

    Args:
        vocab_size: number of rows of the table.
        d_model: embedding width.
        n_phases: number of phases (``d_model`` must be divisible by it).
        horn: inject the horn profile (3PT) or not (baseline).
        backend: ``"fused"`` (C kernel) or ``"reference"`` (plain PyTorch).
    """

    def __init__(self, vocab_size: int, d_model: int, n_phases: int = 1, horn: bool = True,
                 backend: str = "fused", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_phases < 1 or d_model % n_phases != 0:
            raise ValueError(f"HornEmbedding: d_model={d_model} is not divisible by n_phases={n_phases}")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_phases = n_phases
        self.horn = horn
        self.backend = check_backend(backend)
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Table to N(0, 1), ``nn.Embedding``'s default."""
        nn.init.normal_(self.weight)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """Embeds ``ids`` (``[B, T]`` or ``[T]``), the first token at absolute position ``offset``."""
        if not self.horn:
            return F.embedding(ids, self.weight)
        return ops_for(self.backend).horn_embedding(ids, self.weight, self.n_phases, offset)

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, {self.d_model}, n_phases={self.n_phases}, horn={self.horn}, "
                f"backend={self.backend!r}")
