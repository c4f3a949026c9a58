"""linear_attention (causal) vs the quadratic eager reference, an eager chunked PyTorch implementation (a running
state over chunks of 64, the fastest eager form) and causal softmax SDPA: B=1, 8 heads, head dim 64, 2F=128,
T in {1024, 4096, 16384}; and the decode step at several cache lengths (its time does not depend on T).

The quadratic reference materialises [H, T, T] scores (8.6 GB at T=16384), so it runs up to T=4096 only.
"""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from conftest import bench_op

B, H, D, K = 1, 8, 64, 128
CHUNK = 64


def eager_chunked(phi_q, phi_k, v, eps=1e-12):
    """Causal normalised linear attention with a float32 running state (S, z) carried over chunks of 64."""
    Bq, Hq, T, Kq = phi_q.shape
    S = phi_q.new_zeros(Bq, Hq, Kq, v.shape[-1])
    z = phi_q.new_zeros(Bq, Hq, 1, Kq)
    mask = torch.ones(CHUNK, CHUNK, dtype=torch.bool).tril()
    out = []
    for t0 in range(0, T, CHUNK):
        q, k, vv = phi_q[:, :, t0:t0 + CHUNK], phi_k[:, :, t0:t0 + CHUNK], v[:, :, t0:t0 + CHUNK]
        n = q.shape[2]
        A = (q @ k.transpose(-1, -2)).masked_fill(~mask[:n, :n], 0)
        num = q @ S + A @ vv
        den = (q * z).sum(-1, keepdim=True) + A.sum(-1, keepdim=True) + eps
        out.append(num / den)
        S = S + k.transpose(-1, -2) @ vv
        z = z + k.sum(2, keepdim=True)
    return torch.cat(out, 2)


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


IMPLS = {"tpt": tpt_ops.linear_attention, "quadratic": reference.linear_attention, "chunked": eager_chunked,
         "sdpa": sdpa}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("T", [1024, 4096, 16384])
def test_linear_attention_causal(benchmark, record, impl, mode, T):
    if impl == "quadratic" and T > 4096:
        pytest.skip("the [H, T, T] scores do not fit")
    grad = mode != "fwd"
    gen = torch.Generator().manual_seed(0)
    if impl == "sdpa":
        args = [torch.randn(B, H, T, D, generator=gen) for _ in range(3)]
    else:
        u = [torch.randn(B, H, T, K // 2, generator=gen) for _ in range(2)]
        args = [tpt_ops.hedgehog_feature_map(x) for x in u] + [torch.randn(B, H, T, D, generator=gen)]
    args = [a.requires_grad_(grad) for a in args]
    dy = torch.randn(B, H, T, D, generator=gen)
    nbytes = sum(a.numel() for a in args) * 4 + dy.numel() * 4
    bench_op(benchmark, record, (f"linear_attention T={T}", mode, "float32"), impl, IMPLS[impl], tuple(args), mode,
             dy, nbytes)


@pytest.mark.parametrize("cache", [1024, 16384])
def test_linear_attention_step(benchmark, record, cache):
    gen = torch.Generator().manual_seed(0)
    u = [torch.randn(B, H, cache, K // 2, generator=gen) for _ in range(2)]
    q, k = (tpt_ops.hedgehog_feature_map(x) for x in u)
    v = torch.randn(B, H, cache, D, generator=gen)
    _, S, z = tpt_ops.linear_attention_prefill(q, k, v)
    q1, k1, v1 = q[:, :, :1].contiguous(), k[:, :, :1].contiguous(), v[:, :, :1].contiguous()
    bench_op(benchmark, record, (f"linear_attention_step cache={cache}", "fwd", "float32"), "tpt",
             lambda *a: tpt_ops.linear_attention_step(*a)[0], (q1, k1, v1, S, z), "fwd", None,
             (S.numel() * 2 + q1.numel() + k1.numel() + v1.numel()) * 4)
