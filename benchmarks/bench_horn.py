"""horn_inject and horn_embedding: C kernels vs eager reference vs torch.compile(reference).

x is [B=8, T=1024, D=768] (8192 rows, as for the other ops), N=3; the
embedding table has 256 rows (byte-level vocabulary, so many repeated ids),
its ids either uniform or distributed like English text bytes (all below 128,
the space 18% of them), where a split of the vocabulary rows over threads
would leave one thread all the work.
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


def text_like_ids(gen: torch.Generator) -> torch.Tensor:
    """Byte ids with English text's skew: space 18%, the 26 lowercase letters 70% (Zipf-like), the rest of
    printable ASCII 12%."""
    weights = torch.zeros(V)
    weights[32] = 0.18
    weights[97:123] = 0.70 * (1 / torch.arange(1, 27)) / (1 / torch.arange(1, 27)).sum()
    printable = [i for i in range(33, 127) if not 97 <= i < 123]
    weights[printable] = 0.12 / len(printable)
    return torch.multinomial(weights, B * T, replacement=True, generator=gen).reshape(B, T)


IDS = {"uniform": lambda gen: torch.randint(0, V, (B, T), generator=gen), "text": text_like_ids}


@pytest.mark.parametrize("impl", ["tpt", "eager", "compile"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("ids_kind", IDS)
def test_horn_embedding(benchmark, record, impl, mode, dtype, ids_kind):
    ids = IDS[ids_kind](torch.Generator().manual_seed(0))
    table = torch.randn(V, D).to(dtype).requires_grad_(mode != "fwd")
    dy = torch.randn(B, T, D).to(dtype)
    name = "horn_embedding" if ids_kind == "uniform" else "horn_embedding text ids"
    bench_op(benchmark, record, (name, mode, str(dtype)[6:]), impl, EMBEDDING[impl], (ids, table, N), mode, dy,
             PASSES["horn_embedding"][mode] * B * T * D * table.element_size())
