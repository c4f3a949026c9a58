"""causal_attention vs causal SDPA (GQA, ``enable_gqa=True``) and torch.compile of the quadratic reference, forward
and forward+backward, float32, at the shapes of the models: the demo's d96 (B=16, 6 query / 3 key-value heads,
head dim 16), head dim 32 (B=8), d384 (B=4, head dim 64) at T 128 and 256, and one sequence with 8 query / 4
key-value heads at T 1024 and 4096 for head dims 16, 32, 64.

The quadratic reference materialises [B, H, T, T] scores, so its compiled form runs up to T = 1024 only. Attention is
compute-bound: the GB/s column (q, k, v, out and, for fwd+bwd, dout and the three gradients) is far below the
copy bandwidth by nature; the ratios are the figure of merit.
"""
import pytest
import torch
import torch.nn.functional as F

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

SHAPES = [  # (name, B, H, Hkv, hd, T values)
    ("d96", 16, 6, 3, 16, (128, 256)),
    ("hd32", 8, 6, 3, 32, (128, 256)),
    ("d384", 4, 6, 3, 64, (128, 256)),
    ("long hd16", 1, 8, 4, 16, (1024, 4096)),
    ("long hd32", 1, 8, 4, 32, (1024, 4096)),
    ("long hd64", 1, 8, 4, 64, (1024, 4096)),
]
CASES = [(name, B, H, Hkv, hd, T) for name, B, H, Hkv, hd, Ts in SHAPES for T in Ts]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


_compiled = torch.compile(reference.causal_attention, dynamic=False)
IMPLS = {"tpt": tpt_ops.causal_attention, "sdpa": sdpa, "compile": _compiled}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-T{c[5]}" for c in CASES])
def test_causal_attention(benchmark, record, impl, mode, case):
    name, B, H, Hkv, hd, T = case
    if impl == "compile" and T > 1024:
        pytest.skip("the [B, H, T, T] scores of the quadratic form: too slow to compile and run at this T")
    gen = torch.Generator().manual_seed(0)
    grad = mode != "fwd"
    q = torch.randn(B, H, T, hd, generator=gen).requires_grad_(grad)
    k, v = (torch.randn(B, Hkv, T, hd, generator=gen).requires_grad_(grad) for _ in range(2))
    dy = torch.randn(B, H, T, hd, generator=gen)
    nbytes = (2 * q.numel() + 2 * k.numel()) * 4 * (2 if grad else 1)
    bench_op(benchmark, record, (f"causal_attention {name} B{B} H{H}/{Hkv} T={T}", mode, "float32"), impl,
             IMPLS[impl], (q, k, v), mode, dy, nbytes)
