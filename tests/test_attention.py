"""causal_attention: the C flash kernels against the quadratic plain-PyTorch form (tpt_ops.reference) evaluated
exactly in float64, and against torch's scaled_dot_product_attention."""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, TOL, assert_close_to_exact, assert_rejected, num_threads, output_grads

ops = torch.ops.tpt


def inputs(B=2, H=4, Hkv=2, T=70, hd=16, dtype=torch.float32, seed=0, offset=0, spread=2.0):
    """q [B, H, T, hd], k, v [B, Hkv, offset + T, hd]; q and k scaled so that the softmax is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, hd, generator=gen, dtype=torch.float64) * spread
    k = torch.randn(B, Hkv, offset + T, hd, generator=gen, dtype=torch.float64) * spread
    v = torch.randn(B, Hkv, offset + T, hd, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def visible(T, Tk, offset):
    return torch.arange(Tk)[None, :] <= torch.arange(offset, offset + T)[:, None]


def magnitudes(dout, q, k, v, offset, scale):
    """The size of everything summed into out, dq, dk, dv (float64), and of the terms that use the stored
    output (the backward's D = dout . out): the exact formulas on absolute values, with each probability
    weighted by 1 + |its score| + max |score| + log Tk, the relative error a score's and the log-sum-exp's
    rounding carry into it (the bounds of assert_close_to_exact's ``scale`` and ``stored``)."""
    H, Hkv, T, Tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    q, g = q.double(), dout.double()
    k, v = k.double().repeat_interleave(H // Hkv, 1), v.double().repeat_interleave(H // Hkv, 1)
    mask = visible(T, Tk, offset)
    probs = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf), -1)
    size = (scale * q.abs() @ k.abs().transpose(-1, -2)).masked_fill(~mask, 0)
    weight = probs * (1 + size + size.amax(-1, keepdim=True) + math.log(max(Tk, 1)))
    out = probs @ v
    out_abs = weight @ v.abs()
    dp = g @ v.transpose(-1, -2)
    ds_abs = weight * ((g.abs() @ v.abs().transpose(-1, -2)) + (g.abs() * out_abs).sum(-1, keepdim=True)
                       + (dp - (g * out).sum(-1, keepdim=True)).abs())
    ds_stored = probs * (g.abs() * out.abs()).sum(-1, keepdim=True)

    def group(t):
        return t.unflatten(1, (Hkv, -1)).sum(2)
    dq = scale * ds_abs @ k.abs()
    dk = group(scale * ds_abs.transpose(-1, -2) @ q.abs())
    dv = group(weight.transpose(-1, -2) @ g.abs())
    stored = (scale * ds_stored @ k.abs(), group(scale * ds_stored.transpose(-1, -2) @ q.abs()))
    return (2 * out_abs, 2 * dq, 2 * dk, 2 * dv), stored


def check_against_exact(q, k, v, offset=0, scale=None):
    hd = q.shape[-1]
    sc = 1 / math.sqrt(hd) if scale is None else scale
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = tpt_ops.causal_attention(*leaves, offset=offset, scale=scale)
    (dout,) = output_grads(out)
    out.backward(dout.to(out.dtype))
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out_exact = reference.causal_attention(*exact, offset=offset, scale=sc)
    out_exact.backward(dout)
    scales, stored = magnitudes(dout, q, k, v, offset, sc)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close_to_exact(out.detach(), out_exact.detach(), scale=scales[0], name="out")
    stored = (*stored, 0.0)
    for name, leaf, ex, size, st in zip(("dq", "dk", "dv"), leaves, exact, scales[1:], stored):
        assert leaf.grad.dtype == leaf.dtype, name
        assert_close_to_exact(leaf.grad, ex.grad, scale=size, stored=st, name=name)


# ---- parity with the quadratic form ----

@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 130])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (6, 2)])
def test_matches_the_quadratic_form(T, heads):
    H, Hkv = heads
    check_against_exact(*inputs(H=H, Hkv=Hkv, T=T))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hd", [16, 24, 32, 64])
def test_dtypes_and_head_dims(dtype, hd):
    check_against_exact(*inputs(T=100, hd=hd, H=6, Hkv=3, dtype=dtype))


@pytest.mark.parametrize("hd", [1, 5, 40, 80])
def test_other_head_dims_and_scale(hd):
    check_against_exact(*inputs(B=1, T=77, hd=hd), scale=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1, 63, 64, 100])
def test_offset_matches_the_quadratic_form(dtype, offset):
    check_against_exact(*inputs(T=20, offset=offset, dtype=dtype), offset=offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, offset, hd", [(150, 37, 16), (130, 100, 32), (129, 1, 24)])
def test_offset_query_tiles_across_key_tiles(dtype, T, offset, hd):
    # several query tiles whose positions sit off the key tiles' boundaries: the diagonal tiles' computed
    # chunks and each block's range of keys or queries depend on that shift
    check_against_exact(*inputs(T=T, offset=offset, hd=hd, dtype=dtype), offset=offset)


def test_log_sum_exp_is_saved():
    q, k, v = inputs(T=150, hd=32, offset=10)
    out, lse = ops.causal_attention(q, k, v, 10, 0.25)
    scores = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2) * 0.25)
    exact = scores.masked_fill(~visible(150, 160, 10), -math.inf).logsumexp(-1)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 150)
    # the scores' own rounding (|q| |k| / 4 up to ~30 here) bounds the error, and the log's within 2 ulp
    size = (q.double().abs() @ k.double().abs().repeat_interleave(2, 1).transpose(-1, -2) * 0.25).amax(-1)
    assert_close_to_exact(lse, exact, scale=size + exact.abs(), name="lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_matches_sdpa(dtype, heads):
    H, Hkv = heads
    q, k, v = inputs(B=2, H=H, Hkv=Hkv, T=90, hd=32, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    sdpa_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = tpt_ops.causal_attention(*leaves)
    expected = F.scaled_dot_product_attention(*sdpa_leaves, is_causal=True, enable_gqa=True)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    dout = torch.randn_like(out)
    out.backward(dout)
    expected.backward(dout)
    for a, e in zip(leaves, sdpa_leaves):
        torch.testing.assert_close(a.grad, e.grad, rtol=rtol * 4, atol=atol * 4)


def test_empty_inputs():
    q, k, v = (t.requires_grad_() for t in inputs(T=0))
    out = tpt_ops.causal_attention(q, k, v)
    assert out.shape == (2, 4, 0, 16)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
    q, k, v = inputs(B=0)
    assert tpt_ops.causal_attention(q, k, v).shape == (0, 4, 70, 16)


def test_non_contiguous_inputs_and_cache_slices():
    q, k, v = inputs(T=40)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    vt = v.transpose(2, 3).contiguous().transpose(2, 3)
    assert not qt.is_contiguous() and not vt.is_contiguous()
    assert torch.equal(tpt_ops.causal_attention(qt, k, vt), tpt_ops.causal_attention(q, k, v))
    buffer_k, buffer_v = torch.zeros(2, 2, 100, 16), torch.zeros(2, 2, 100, 16)
    buffer_k[:, :, :40], buffer_v[:, :, :40] = k, v
    ks, vs = buffer_k[:, :, :40], buffer_v[:, :, :40]  # read in place: heads 100 rows apart
    assert not ks.is_contiguous()
    assert torch.equal(tpt_ops.causal_attention(q, ks, vs), tpt_ops.causal_attention(q, k, v))


def test_numpy_face_gives_the_torch_bits():
    for dtype in (torch.float32, torch.float64):
        q, k, v = inputs(T=90, offset=7, dtype=dtype)
        out, lse = tpt_ops.numpy.causal_attention_forward(q.numpy(), k.numpy(), v.numpy(), 7, 0.3)
        expected, expected_lse = ops.causal_attention(q, k, v, 7, 0.3)
        assert np.array_equal(out, expected.numpy()) and np.array_equal(lse, expected_lse.numpy())
        out_default, _ = tpt_ops.numpy.causal_attention_forward(q.numpy(), k.numpy(), v.numpy(), offset=7)
        assert np.array_equal(out_default, tpt_ops.causal_attention(q, k, v, offset=7).numpy())


# ---- decoding over a KV cache ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(2, 2), (6, 2)])
def test_decode_rows_equal_the_full_forward(dtype, heads):
    """Prefill of 70 tokens, then 5 at once, then one at a time: every row has the full causal forward's
    bits (a row's sums run over the same key tiles in the same order)."""
    H, Hkv = heads
    q, k, v = inputs(B=2, H=H, Hkv=Hkv, T=140, dtype=dtype)
    full = tpt_ops.causal_attention(q, k, v)
    buffer_k, buffer_v = torch.zeros(2, Hkv, 160, 16, dtype=dtype), torch.zeros(2, Hkv, 160, 16, dtype=dtype)
    rows = []
    for start, end in [(0, 70), (70, 75)] + [(t, t + 1) for t in range(75, 140)]:
        buffer_k[:, :, start:end], buffer_v[:, :, start:end] = k[:, :, start:end], v[:, :, start:end]
        rows.append(tpt_ops.causal_attention(q[:, :, start:end], buffer_k[:, :, :end], buffer_v[:, :, :end],
                                             offset=start))
    assert torch.equal(torch.cat(rows, 2), full)


# ---- gradcheck, opcheck, compile ----

def test_gradcheck_and_gradgradcheck():
    q, k, v = (t.requires_grad_() for t in inputs(B=1, H=4, Hkv=2, T=67, hd=4, dtype=torch.float64, spread=1.0))
    assert torch.autograd.gradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v, offset=60, scale=0.7),
                                    (q[:, :, 60:].detach().requires_grad_(), k, v))
    small = [t[:, :, :9].detach().clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradgradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v), small)
    assert torch.autograd.gradgradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v, offset=4),
                                        (small[0][:, :, 4:].detach().requires_grad_(), *small[1:]))


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in inputs(B=1, H=4, Hkv=2, T=70, hd=8))
    torch.library.opcheck(ops.causal_attention, (q, k, v, 0, 0.35))
    q1 = q[:, :, 66:].detach().requires_grad_()
    torch.library.opcheck(ops.causal_attention, (q1, k, v, 66, 0.35))
    out, lse = ops.causal_attention(q.detach(), k.detach(), v.detach(), 0, 0.35)
    torch.library.opcheck(ops.causal_attention_backward,
                          (torch.randn(1, 4, 70, 8), q.detach(), k.detach(), v.detach(), out, lse, 0, 0.35))


def test_compile_fullgraph_matches_eager():
    q, k, v = inputs(B=1, H=4, Hkv=2, T=80, hd=16)

    def fn(q, k, v):
        return tpt_ops.causal_attention(q, k, v) * 2
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    eager_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, expected = compiled(*leaves), fn(*eager_leaves)
    assert torch.equal(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for a, e in zip(leaves, eager_leaves):
        assert torch.equal(a.grad, e.grad)


# ---- determinism and memory ----

def test_bitwise_deterministic_across_runs_and_thread_counts():
    q, k, v = inputs(B=2, H=6, Hkv=2, T=150, hd=16)
    dout = torch.randn(2, 6, 150, 16)
    results = []
    for n in (1, 2, 3, 1):
        with num_threads(n):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = tpt_ops.causal_attention(*leaves)
            out.backward(dout)
            results.append([out.detach()] + [t.grad for t in leaves])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_memory_is_linear_in_T():
    """T = 16384 forward + backward in a fresh process: the [T, T] scores alone would be 1 GiB."""
    script = textwrap.dedent("""
        import resource, torch, tpt_ops
        T = 16384
        q, k, v = (torch.randn(1, 1, T, 8, requires_grad=True) for _ in range(3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tpt_ops.causal_attention(q, k, v).sum().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = int(out.stdout.split()[-1])
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


# ---- bad inputs ----

def test_bad_inputs_are_rejected():
    q, k, v = inputs(T=10)
    ca = tpt_ops.causal_attention
    assert_rejected(lambda: ca(q[..., :8], k, v), r"tpt.causal_attention: the head dims of q \(8\) and k \(16\) differ")
    assert_rejected(lambda: ca(q[:, :3], k, v), r"the query heads \(H=3\) must be a positive multiple of the "
                                               r"key/value heads \(Hkv=2\)")
    assert_rejected(lambda: ca(q, k[:, :, :9], v[:, :, :9]), r"k holds Tk=9 keys, fewer than the T=10 queries of q")
    assert_rejected(lambda: ca(q, k, v, offset=-1), r"offset=-1 is out of range: .* 0 <= offset <= Tk - T = 0")
    assert_rejected(lambda: ca(q, k, v, offset=1), r"offset=1 is out of range")
    kk, vv = inputs(T=10, offset=5)[1:]
    assert_rejected(lambda: ca(q, kk, vv, offset=2), r"k must hold Tk = offset \+ T = 12 keys .*, got Tk=15")
    for scale in (0.0, -1.0, math.nan, math.inf):
        assert_rejected(lambda: ca(q, k, v, scale=scale), r"tpt.causal_attention: scale must be finite and > 0")
    assert_rejected(lambda: ca(q, k.double(), v), r"arguments 'k' and 'q' must have one dtype, got float64 and float32")
    assert_rejected(lambda: ca(q, k, v.half()), r"arguments 'v' and 'q' must have one dtype, got float16 and float32")
    assert_rejected(lambda: ca(q.int(), k, v), r"argument 'q' has dtype int32")
    assert_rejected(lambda: ca(q[0], k, v), r"argument 'q' must be 4-d \[B, H, T, hd\], got \[4, 10, 16\]")
    assert_rejected(lambda: ca(q, k, v[:, :1]), r"argument 'v' must have the shape of k \[2, 2, 10, 16\]")
    assert_rejected(lambda: ca(q[:1], k, v), r"q and k must have one batch size, got B=1 and B=2")
    out, lse = ops.causal_attention(q, k, v, 0, 0.25)
    assert_rejected(lambda: ops.causal_attention_backward(out, q, k, v, out, lse[:, :, :9], 0, 0.25),
                    r"argument 'lse' must have shape \[B, H, T\] = \[2, 4, 10\], got \[2, 4, 9\]")
    assert_rejected(lambda: ops.causal_attention_backward(out[..., :8], q, k, v, out, lse, 0, 0.25),
                    r"argument 'dout' must have shape \[B, H, T, hd\]")
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.causal_attention_forward: the head dims of q \(8\)"):
        tpt_ops.numpy.causal_attention_forward(q[..., :8].numpy(), k.numpy(), v.numpy())
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.causal_attention_forward: scale must be finite"):
        tpt_ops.numpy.causal_attention_forward(q.numpy(), k.numpy(), v.numpy(), 0, -1.0)
