"""The tpt_ops C kernels on NumPy arrays (float32 or float64), no torch needed at call time.

Every function runs the same C kernel as the corresponding ``torch.ops.tpt``
op, so results agree bit for bit with the torch op on one dtype. Forward
functions return the saved statistics the backward needs, llm.c style:

>>> y, rstd = phase_rmsnorm_forward(x, w, n_phases=3)
>>> dx, dw = phase_rmsnorm_backward(dy, x, w, rstd, n_phases=3)

The first array argument sets the precision; parameters (``weight``,
``theta``, ``cos``, ``sin_signed``), gradients and saved statistics are cast
to it, as the torch ops convert them (``add_rotate_norm_forward``'s ``a`` must
match ``h``, as in torch). The argument rules and messages are the torch
ops': wrong dtypes raise ``TypeError``, wrong shapes or values (``eps``,
``offset``, ids) ``ValueError``, naming the function and the argument.
"""
from tpt_ops._np import (  # noqa: F401
    add_rotate_norm_backward,
    add_rotate_norm_forward,
    causal_attention_forward,
    hedgehog_feature_map_forward,
    horn_embedding_backward,
    horn_embedding_forward,
    horn_inject_backward,
    horn_inject_forward,
    linear_attention_forward,
    moe_permute_backward,
    moe_permute_forward,
    moe_route_backward,
    moe_route_forward,
    moe_unpermute_backward,
    moe_unpermute_forward,
    phase_rmsnorm_backward,
    phase_rmsnorm_forward,
    phase_rotate_backward,
    phase_rotate_forward,
    qkv_rope_backward,
    qkv_rope_forward,
    swiglu_backward,
    swiglu_forward,
)


def add_norm_forward(h, a, weight, n_phases, eps=1e-6):
    """(h_new, normed, rstd) with h_new = h + a: add_rotate_norm_forward without the rotation."""
    return add_rotate_norm_forward(h, a, None, weight, n_phases, eps)


def add_norm_backward(dh_new, dnormed, h_new, weight, rstd, n_phases):
    """(dsum, dweight): the gradient of h and of a is dsum."""
    dsum, _, dweight = add_rotate_norm_backward(dh_new, dnormed, h_new, None, weight, rstd, n_phases)
    return dsum, dweight


__all__ = [
    "phase_rmsnorm_forward",
    "phase_rmsnorm_backward",
    "phase_rotate_forward",
    "phase_rotate_backward",
    "add_rotate_norm_forward",
    "add_rotate_norm_backward",
    "add_norm_forward",
    "add_norm_backward",
    "horn_inject_forward",
    "horn_inject_backward",
    "horn_embedding_forward",
    "horn_embedding_backward",
    "swiglu_forward",
    "swiglu_backward",
    "qkv_rope_forward",
    "qkv_rope_backward",
    "moe_route_forward",
    "moe_route_backward",
    "moe_permute_forward",
    "moe_permute_backward",
    "moe_unpermute_forward",
    "moe_unpermute_backward",
    "hedgehog_feature_map_forward",
    "linear_attention_forward",
    "causal_attention_forward",
]
