"""phase_rotate: C kernel vs eager reference vs torch.compile(reference), M=8192, D=768, N=3."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import run_benchmark

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
    fn = IMPLS[impl]
    x = torch.randn(M, D).to(dtype).requires_grad_(mode != "fwd")
    theta = torch.rand(D // N // 2, requires_grad=mode != "fwd")
    dy = torch.randn(M, D).to(dtype)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                return fn(x, theta, N)
        return torch.autograd.grad(fn(x, theta, N), (x, theta), dy)

    run_benchmark(benchmark, step)
    record(("phase_rotate", mode, str(dtype).replace("torch.", "")), impl, benchmark,
           PASSES[mode] * M * D * x.element_size())
