"""moe_route + moe_permute + moe_unpermute (routing, dispatch, combine) vs the eager form users write
(torch.topk + argsort + index_select / index_add_) vs torch.compile of it: M=8192 tokens, D=768, k=2, E in {8, 64}.

The expert itself is the identity here, so the numbers are the routing and data movement alone; both sides
return ``y + aux_loss + z_loss`` so that the losses and their gradients are part of the work.
"""
import pytest
import torch

import tpt_ops
from conftest import bench_op

M, D, K = 8192, 768, 2


def tpt_moe(logits, x):
    gates, experts, slots, slot_token, counts, aux, z = tpt_ops.moe_route(logits, K)
    buf = tpt_ops.moe_permute(x, slots, slot_token)
    return tpt_ops.moe_unpermute(buf, gates, slots, slot_token) + (aux + z)


def eager_moe(logits, x):
    """Dropless top-k routing as MoE layers write it in PyTorch: top-k, a sort of the assignments by expert,
    index_select into the expert-contiguous buffer, index_add_ of the gated rows back to their tokens."""
    E = logits.shape[1]
    scores = torch.softmax(logits.float(), -1)
    gates, experts = scores.topk(K, dim=-1)
    gates = gates / gates.sum(-1, keepdim=True)
    order = experts.reshape(-1).argsort(stable=True)
    token = order // K
    buf = x.index_select(0, token)
    weighted = buf * gates.reshape(-1)[order, None].to(x.dtype)
    y = torch.zeros_like(x).index_add_(0, token, weighted)
    counts = torch.bincount(experts.reshape(-1), minlength=E)
    aux = E * (counts.to(scores.dtype) / (M * K) * scores.mean(0)).sum()
    z = torch.logsumexp(logits.float(), -1).square().mean()
    return y + (aux + z)


IMPLS = {"tpt": tpt_moe, "eager": eager_moe, "compile": torch.compile(eager_moe, dynamic=False)}
# Minimum traffic in [M, D] passes: forward reads x, writes and reads the k-row buffer, writes y; the backward
# reads dy (k times, gathered), the buffer once more for the gate gradients, writes dout, reads it and writes dx.
PASSES = {"fwd": 2 + 2 * K, "fwd+bwd": 2 + 2 * K + 2 + 4 * K}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", PASSES)
@pytest.mark.parametrize("E", [8, 64])
def test_moe_route_dispatch_combine(benchmark, record, impl, mode, E):
    grad = mode != "fwd"
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(M, E, generator=gen).requires_grad_(grad)
    x = torch.randn(M, D, generator=gen).requires_grad_(grad)
    dy = torch.randn(M, D, generator=gen)
    bench_op(benchmark, record, (f"moe E={E}", mode, "float32"), impl, IMPLS[impl], (logits, x), mode, dy,
             PASSES[mode] * M * D * x.element_size())
