"""Fused block ops vs the same math as a sequence of tpt ops ("unfused"), the
eager reference and torch.compile of the reference; M=8192, D=768, N=3."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

M, D, N = 8192, 768, 3


def unfused_add_rotate_norm(h, a, theta, w, n):
    h_new = tpt_ops.phase_rotate(h + a, theta, n)
    return h_new, tpt_ops.phase_rmsnorm(h_new, w, n)


def unfused_add_norm(h, a, w, n):
    h_new = h + a
    return h_new, tpt_ops.phase_rmsnorm(h_new, w, n)


OPS = {
    "add_rotate_norm": {
        "tpt": tpt_ops.add_rotate_norm,
        "unfused": unfused_add_rotate_norm,
        "eager": reference.add_rotate_norm,
        "compile": torch.compile(reference.add_rotate_norm, dynamic=False),
    },
    "add_norm": {
        "tpt": tpt_ops.add_norm,
        "unfused": unfused_add_norm,
        "eager": reference.add_norm,
        "compile": torch.compile(reference.add_norm, dynamic=False),
    },
}
# [M, D] passes: forward reads h, a and writes h_new, normed; backward reads
# dh_new, dnormed, h_new and writes dsum (= dh = da, one tensor).
PASSES = {"fwd": 4, "fwd+bwd": 8}


@pytest.mark.parametrize("impl", ["tpt", "unfused", "eager", "compile"])
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_block(benchmark, record, op, impl, mode, dtype):
    grad = mode != "fwd"
    h = torch.randn(M, D).to(dtype).requires_grad_(grad)
    a = torch.randn(M, D).to(dtype).requires_grad_(grad)
    theta = torch.rand(D // N // 2, requires_grad=grad)
    w = torch.ones(D, requires_grad=grad)
    args = (h, a, theta, w) if op == "add_rotate_norm" else (h, a, w)
    dy = (torch.randn(M, D).to(dtype), torch.randn(M, D).to(dtype))
    bench_op(benchmark, record, (op, mode, str(dtype)[6:]), impl, OPS[op][impl], (*args, N), mode, dy,
             PASSES[mode] * M * D * h.element_size())
