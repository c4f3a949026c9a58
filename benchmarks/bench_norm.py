"""phase_rmsnorm: C kernel vs eager reference vs torch.compile(reference), M=8192, D=768, N=3."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

M, D, N = 8192, 768, 3
IMPLS = {
    "tpt": tpt_ops.phase_rmsnorm,
    "eager": reference.phase_rmsnorm,
    "compile": torch.compile(reference.phase_rmsnorm, dynamic=False),
}
# Minimum traffic in [M, D] passes: forward reads x and writes y; backward
# reads dy and x and writes dx.
PASSES = {"fwd": 2, "fwd+bwd": 5}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_phase_rmsnorm(benchmark, record, impl, mode, dtype):
    grad = mode != "fwd"
    x = torch.randn(M, D).to(dtype).requires_grad_(grad)
    w = torch.ones(D, requires_grad=grad)
    dy = torch.randn(M, D).to(dtype)
    bench_op(benchmark, record, ("phase_rmsnorm", mode, str(dtype)[6:]), impl, IMPLS[impl], (x, w, N), mode, dy,
             PASSES[mode] * M * D * x.element_size())
