"""phase_rotate: C kernel vs eager reference vs torch.compile(reference), M=8192, D=768, N=3."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

M, D, N = 8192, 768, 3
IMPLS = {
    "tpt": tpt_ops.phase_rotate,
    "eager": reference.phase_rotate,
    "compile": torch.compile(reference.phase_rotate, dynamic=False),
}
# [M, D] passes: forward reads x, writes y; backward reads dy and y, writes dx.
PASSES = {"fwd": 2, "fwd+bwd": 5}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_phase_rotate(benchmark, record, impl, mode, dtype):
    grad = mode != "fwd"
    x = torch.randn(M, D).to(dtype).requires_grad_(grad)
    theta = torch.rand(D // N // 2, requires_grad=grad)
    dy = torch.randn(M, D).to(dtype)
    bench_op(benchmark, record, ("phase_rotate", mode, str(dtype)[6:]), impl, IMPLS[impl], (x, theta, N), mode, dy,
             PASSES[mode] * M * D * x.element_size())
