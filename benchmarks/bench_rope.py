"""qkv_rope: C kernel vs eager reference vs torch.compile(reference), at the demo model's attention shape
(B=16, T=128, H=6, Hkv=3, hd=16) and a wider-head one (B=4, T=256, H=6, Hkv=3, hd=64)."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from tpt_ops.nn import RotaryEmbedding
from conftest import bench_op

SHAPES = {"B16xT128 hd16": (16, 128, 6, 3, 16), "B4xT256 hd64": (4, 256, 6, 3, 64)}  # (B, T, H, Hkv, hd)
IMPLS = {
    "tpt": tpt_ops.qkv_rope,
    "eager": reference.qkv_rope,
    "compile": torch.compile(reference.qkv_rope, dynamic=False),
}
# [B, T, D] passes of qkv: forward reads qkv and writes q, k, v (as much again);
# backward reads dq, dk, dv and writes dqkv.
PASSES = {"fwd": 2, "fwd+bwd": 4}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_qkv_rope(benchmark, record, impl, mode, dtype, shape):
    B, T, H, Hkv, hd = SHAPES[shape]
    qkv = torch.randn(B, T, (H + 2 * Hkv) * hd).to(dtype).requires_grad_(mode != "fwd")
    cos, sin_signed = RotaryEmbedding(hd, T)(0, T)  # float32 tables, as the model passes them
    dy = tuple(torch.randn(B, n, T, hd).to(dtype) for n in (H, Hkv, Hkv))
    bench_op(benchmark, record, (f"qkv_rope {shape}", mode, str(dtype)[6:]), impl, IMPLS[impl],
             (qkv, cos, sin_signed, H, Hkv), mode, dy, PASSES[mode] * qkv.numel() * qkv.element_size())
