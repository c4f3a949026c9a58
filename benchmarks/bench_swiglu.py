"""swiglu: C kernel vs eager reference vs torch.compile(reference), M=8192, F=384.

gate_up is [8192, 768], the size of the other ops' tensors and of the copy
that sets the bandwidth bar (conftest.py); far larger tensors measure the
page faults of fresh allocations more than the kernels."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

M, F = 8192, 384
IMPLS = {
    "tpt": tpt_ops.swiglu,
    "eager": reference.swiglu,
    "compile": torch.compile(reference.swiglu, dynamic=False),
}
# Minimum traffic in [M, F] passes: forward reads gate_up (2) and writes h (1);
# backward reads dh (1) and gate_up (2) and writes d_gate_up (2).
PASSES = {"fwd": 3, "fwd+bwd": 8}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_swiglu(benchmark, record, impl, mode, dtype):
    gate_up = torch.randn(M, 2 * F).to(dtype).requires_grad_(mode != "fwd")
    dh = torch.randn(M, F).to(dtype)
    bench_op(benchmark, record, ("swiglu", mode, str(dtype)[6:]), impl, IMPLS[impl], (gate_up,), mode, dh,
             PASSES[mode] * M * F * gate_up.element_size())
