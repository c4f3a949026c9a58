"""Backend selection: the same model on the C kernels or on the plain-PyTorch references.

Every module of :mod:`tpt_ops.nn` that uses a 3PT op takes ``backend``:

* ``"fused"``     the functional ops exported by :mod:`tpt_ops` (C kernels,
  registered as ``torch.ops.tpt.*``);
* ``"reference"`` the same-named functions of :mod:`tpt_ops.reference`
  (plain PyTorch, the ground truth and the "unfused" baseline).

Both expose the same sixteen functions with the same signatures, so a model's
math, parameters and state_dict do not depend on the backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tpt_ops
import tpt_ops.reference

BACKENDS = ("fused", "reference")

#: The functional ops a backend must provide (names and signatures of tpt_ops.reference).
OP_NAMES = ("phase_rmsnorm", "phase_rotate", "horn_inject", "horn_embedding", "add_rotate_norm", "add_norm",
            "swiglu", "qkv_rope", "moe_route", "moe_permute", "moe_unpermute",
            "hedgehog_feature_map", "linear_attention", "linear_attention_prefill", "linear_attention_step",
            "causal_attention")

_MODULES = {"fused": tpt_ops, "reference": tpt_ops.reference}


@dataclass(frozen=True)
class Ops:
    """The functional 3PT ops of one backend (see ``tpt_ops.reference`` for their math)."""

    backend: str
    phase_rmsnorm: Callable
    phase_rotate: Callable
    horn_inject: Callable
    horn_embedding: Callable
    add_rotate_norm: Callable
    add_norm: Callable
    swiglu: Callable
    qkv_rope: Callable
    moe_route: Callable
    moe_permute: Callable
    moe_unpermute: Callable
    hedgehog_feature_map: Callable
    linear_attention: Callable
    linear_attention_prefill: Callable
    linear_attention_step: Callable
    causal_attention: Callable


_CACHE: dict[str, Ops] = {}


def check_backend(backend: str) -> str:
    """Returns ``backend`` if it names a backend, else raises ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def ops_for(backend: str) -> Ops:
    """The functional ops of ``backend`` ("fused" or "reference"); ``ValueError`` for an unknown backend.

    Without the compiled extension the fused ops raise an ``ImportError``
    saying how to build it when called; the reference ops always work.
    """
    ops = _CACHE.get(backend)
    if ops is None:
        module = _MODULES[check_backend(backend)]
        ops = _CACHE[backend] = Ops(backend, **{name: getattr(module, name) for name in OP_NAMES})
    return ops
