"""horn_inject and horn_embedding: C kernels vs eager reference vs torch.compile(reference).

x is [B=8, T=1024, D=768] (8192 rows, as for the other ops), N=3; the
embedding table has 256 rows (byte-level vocabulary, so many repeated ids).
"""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

B, T, D, N, V = 8, 1024, 768, 3, 256
INJECT = {
    "tpt": tpt_ops.horn_inject,
    "eager": reference.horn_inject,
    "compile": torch.compile(reference.horn_inject, dynamic=False),
}
EMBEDDING = {
    "tpt": tpt_ops.horn_embedding,
    "eager": reference.horn_embedding,
    "compile": torch.compile(reference.horn_embedding, dynamic=False),
}
# [M, D] passes. inject: forward reads x, writes y; backward reads dy, writes dx.
# embedding: forward writes y (table rows stay in cache); backward reads dy.
PASSES = {"horn_inject": {"fwd": 2, "fwd+bwd": 4}, "horn_embedding": {"fwd": 1, "fwd+bwd": 2}}


@pytest.mark.parametrize("impl", ["tpt", "eager", "compile"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_horn_inject(benchmark, record, impl, mode, dtype):
    x = torch.randn(B, T, D).to(dtype).requires_grad_(mode != "fwd")
    dy = torch.randn(B, T, D).to(dtype)
    bench_op(benchmark, record, ("horn_inject", mode, str(dtype)[6:]), impl, INJECT[impl], (x, N), mode, dy,
             PASSES["horn_inject"][mode] * B * T * D * x.element_size())


@pytest.mark.parametrize("impl", ["tpt", "eager", "compile"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_horn_embedding(benchmark, record, impl, mode):
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    table = torch.randn(V, D, requires_grad=mode != "fwd")
    dy = torch.randn(B, T, D)
    bench_op(benchmark, record, ("horn_embedding", mode, "float32"), impl, EMBEDDING[impl], (ids, table, N), mode, dy,
             PASSES["horn_embedding"][mode] * B * T * D * 4)
