"""hedgehog_feature_map, linear_attention, linear_attention_prefill, linear_attention_step: the C kernels against
the quadratic plain-PyTorch form (tpt_ops.reference) evaluated exactly in float64."""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, assert_close_to_exact, assert_rejected, compute_dtype, num_threads, output_grads

ops = torch.ops.tpt


def features(B, H, T, K, dtype, seed, scale=1.0):
    """Non-negative features as the feature map makes them (rows summing to 2), times scale."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, T, K // 2, generator=gen, dtype=torch.float64) * 2
    return (reference.hedgehog_feature_map(u) * scale).to(dtype)


def inputs(B=2, H=4, Hkv=2, T=70, K=8, Dv=6, dtype=torch.float32, seed=0, k_scale=1.0):
    gen = torch.Generator().manual_seed(seed + 100)
    q = features(B, H, T, K, dtype, seed)
    k = features(B, Hkv, T, K, dtype, seed + 1, k_scale)
    v = torch.randn(B, Hkv, T, Dv, generator=gen, dtype=torch.float64).to(dtype)
    return q, k, v


def magnitudes(dy, q, k, v, causal, eps):
    """The size of everything summed into y, dq, dk, dv (float64): the exact formulas on absolute values,
    so every term adds (the bound of assert_close_to_exact's ``scale``)."""
    H, Hkv = q.shape[1], k.shape[1]
    q, k, v, g = q.double(), k.double().repeat_interleave(H // Hkv, 1), v.double().repeat_interleave(H // Hkv, 1), \
        dy.double().abs()
    scores = q @ k.transpose(-1, -2)
    if causal:
        scores = scores.tril()
    den = scores.sum(-1, keepdim=True) + eps
    y_abs = (scores @ v.abs()) / den
    a = g / den
    c = (g * y_abs).sum(-1, keepdim=True) / den
    ds = a @ v.abs().transpose(-1, -2) + c
    if causal:
        ds = ds.tril()
    dq = ds @ k
    dk = (ds.transpose(-1, -2) @ q).unflatten(1, (Hkv, -1)).sum(2)
    dv = (scores.transpose(-1, -2) @ a).unflatten(1, (Hkv, -1)).sum(2)
    return 2 * y_abs, 2 * dq, 2 * dk, 2 * dv


def check_against_exact(q, k, v, causal, eps=1e-12):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    y = tpt_ops.linear_attention(*leaves, causal=causal, eps=eps)
    (dy,) = output_grads(y)
    dy = dy.to(y.dtype)
    y.backward(dy)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    y_exact = reference.linear_attention(*exact, causal=causal, eps=eps)
    y_exact.backward(dy.double())
    scales = magnitudes(dy, q, k, v, causal, eps)
    assert y.dtype == q.dtype
    assert_close_to_exact(y.detach(), y_exact.detach(), scale=scales[0], name="y")
    for name, leaf, ex, scale in zip(("dq", "dk", "dv"), leaves, exact, scales[1:]):
        assert leaf.grad.dtype == leaf.dtype, name
        assert_close_to_exact(leaf.grad, ex.grad, scale=scale, name=name)


# ---- feature map ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 64), (1, 1), (0, 4)])
def test_feature_map_matches_the_two_softmaxes(dtype, shape):
    gen = torch.Generator().manual_seed(1)
    u = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype).requires_grad_()
    phi = tpt_ops.hedgehog_feature_map(u)
    (dphi,) = output_grads(phi)
    phi.backward(dphi.to(dtype))
    ue = u.detach().double().requires_grad_()
    exact = reference.hedgehog_feature_map(ue)
    exact.backward(dphi)
    assert phi.shape == (*shape[:-1], 2 * shape[-1]) and phi.dtype == dtype
    F = shape[-1]
    assert_close_to_exact(phi.detach(), exact.detach(), scale=exact.detach() * F, name="phi")
    p = exact.detach()
    scale = (p * (dphi.abs() + (dphi.abs() * p).unflatten(-1, (2, -1)).sum(-1).repeat_interleave(F, -1))) * F
    assert_close_to_exact(u.grad, ue.grad, scale=scale.unflatten(-1, (2, -1)).sum(-2), name="du")


def test_feature_map_subtracts_the_maximum():
    u = torch.tensor([[1000.0, 999.0, -1000.0]])
    phi = tpt_ops.hedgehog_feature_map(u)
    assert torch.isfinite(phi).all()
    torch.testing.assert_close(phi.sum(-1), torch.tensor([2.0]))
    torch.testing.assert_close(phi, reference.hedgehog_feature_map(u))


def test_feature_map_numpy_face_gives_the_torch_bits():
    u = torch.randn(4, 3, 9)
    assert np.array_equal(tpt_ops.numpy.hedgehog_feature_map_forward(u.numpy()),
                          tpt_ops.hedgehog_feature_map(u).numpy())


# ---- linear attention: parity with the quadratic form ----

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 150])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (4, 1)])
def test_linear_attention_matches_the_quadratic_form(causal, T, heads):
    H, Hkv = heads
    check_against_exact(*inputs(H=H, Hkv=Hkv, T=T), causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_dtypes(dtype, causal):
    check_against_exact(*inputs(T=100, dtype=dtype, K=16, Dv=8), causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_key_sums_beyond_float16_stay_finite(dtype):
    """z reaches ~1.6e5 > 65504 (float16's largest): only a float32 state keeps it."""
    q, k, v = inputs(B=1, H=2, Hkv=1, T=800, K=8, Dv=4, dtype=dtype, k_scale=400.0)
    assert k.double().sum(2).max() > 65504
    check_against_exact(q, k, v, True)
    y, S, z = tpt_ops.linear_attention_prefill(q, k, v)
    assert z.dtype == torch.float32 and z.max() > 65504 and torch.isfinite(S).all()


def test_eps_is_applied_to_an_all_zero_row():
    q = torch.zeros(1, 1, 3, 4)
    k, v = torch.zeros(1, 1, 3, 4), torch.randn(1, 1, 3, 2)
    for causal in (True, False):
        y = tpt_ops.linear_attention(q, k, v, causal=causal)
        assert torch.equal(y, torch.zeros_like(y))


def test_empty_inputs():
    for T in (0,):
        q, k, v = inputs(T=T)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        y = tpt_ops.linear_attention(q, k, v)
        assert y.shape == (2, 4, 0, 6)
        y.sum().backward()
        assert q.grad.shape == q.shape and k.grad.shape == k.shape
    q, k, v = inputs(B=0)
    assert tpt_ops.linear_attention(q, k, v).shape == (0, 4, 70, 6)


def test_non_contiguous_inputs():
    q, k, v = inputs(T=40)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    vt = v.transpose(2, 3).contiguous().transpose(2, 3)
    assert not qt.is_contiguous() and not vt.is_contiguous()
    assert torch.equal(tpt_ops.linear_attention(qt, k, vt), tpt_ops.linear_attention(q, k, v))


def test_numpy_face_gives_the_torch_bits():
    q, k, v = inputs(T=90)
    for causal in (True, False):
        got = tpt_ops.numpy.linear_attention_forward(q.numpy(), k.numpy(), v.numpy(), causal)
        assert np.array_equal(got, tpt_ops.linear_attention(q, k, v, causal).numpy())


# ---- gradcheck, opcheck, compile ----

@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_and_gradgradcheck(causal):
    q, k, v = (t.requires_grad_() for t in inputs(B=1, H=2, Hkv=1, T=67, K=4, Dv=3, dtype=torch.float64))

    def fn(q, k, v):
        return tpt_ops.linear_attention(q, k, v, causal=causal)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    small = [t[:, :, :9].detach().clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradgradcheck(fn, small)
    u = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tpt_ops.hedgehog_feature_map, (u,))
    assert torch.autograd.gradgradcheck(tpt_ops.hedgehog_feature_map, (u,))


def test_step_gradcheck():
    q, k, v = inputs(B=1, H=2, Hkv=1, T=1, K=4, Dv=3, dtype=torch.float64)
    S, z = torch.rand(1, 1, 4, 3, dtype=torch.float64), torch.rand(1, 1, 4, dtype=torch.float64)
    args = [t.requires_grad_() for t in (q, k, v, S, z)]
    assert torch.autograd.gradcheck(lambda *a: tpt_ops.linear_attention_step(*a), args)


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in inputs(B=1, H=2, Hkv=1, T=70, K=4, Dv=3))
    torch.library.opcheck(ops.linear_attention, (q, k, v, True, 1e-12))
    torch.library.opcheck(ops.linear_attention, (q, k, v, False, 1e-6))
    torch.library.opcheck(ops.linear_attention_prefill, (q, k, v, 1e-12))
    torch.library.opcheck(ops.linear_attention_backward,
                          (torch.randn(1, 2, 70, 3), q.detach(), k.detach(), v.detach(), True, 1e-12))
    torch.library.opcheck(ops.hedgehog_feature_map, (torch.randn(3, 5, requires_grad=True),))
    torch.library.opcheck(ops.hedgehog_feature_map_backward, (torch.randn(3, 10), torch.randn(3, 5)))
    q1, k1, v1 = (t[:, :, :1].detach().requires_grad_() for t in (q, k, v))
    S, z = torch.rand(1, 1, 4, 3, requires_grad=True), torch.rand(1, 1, 4, requires_grad=True)
    torch.library.opcheck(ops.linear_attention_step, (q1, k1, v1, S, z, 1e-12))


def test_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(3)
    uq, uk = torch.randn(1, 4, 80, 4, generator=gen), torch.randn(1, 2, 80, 4, generator=gen)
    v = torch.randn(1, 2, 80, 5, generator=gen)

    def fn(uq, uk, v):
        return tpt_ops.linear_attention(tpt_ops.hedgehog_feature_map(uq), tpt_ops.hedgehog_feature_map(uk), v)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    leaves = [t.clone().requires_grad_() for t in (uq, uk, v)]
    eager_leaves = [t.clone().requires_grad_() for t in (uq, uk, v)]
    out, expected = compiled(*leaves), fn(*eager_leaves)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for a, e in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, e.grad)


# ---- decoding ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(2, 2), (4, 1)])
def test_decode_steps_equal_the_full_forward(dtype, heads):
    H, Hkv = heads
    q, k, v = inputs(B=2, H=H, Hkv=Hkv, T=100, dtype=dtype)
    full = tpt_ops.linear_attention(q, k, v)
    split = 70
    y, S, z = tpt_ops.linear_attention_prefill(q[:, :, :split], k[:, :, :split], v[:, :, :split])
    assert torch.equal(y, full[:, :, :split])
    steps = []
    for t in range(split, 100):
        y_t, S, z = tpt_ops.linear_attention_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], S, z)
        steps.append(y_t)
    y_steps = torch.cat(steps, 2)
    exact_full = reference.linear_attention(q.double(), k.double(), v.double())
    exact = exact_full[:, :, split:]
    scale = magnitudes(torch.ones_like(exact_full), q, k, v, True, 1e-12)[0][:, :, split:]
    assert_close_to_exact(y_steps, exact, scale=scale, name="steps")
    assert_close_to_exact(full[:, :, split:], exact, scale=scale, name="full")
    _, S_all, z_all = tpt_ops.linear_attention_prefill(q, k, v)
    torch.testing.assert_close(S, S_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, z_all, rtol=1e-5, atol=1e-5)  # the running key sum z is carried


def test_step_matches_reference():
    q, k, v = inputs(B=2, H=4, Hkv=2, T=1, dtype=torch.float64)
    S, z = torch.rand(2, 2, 8, 6, dtype=torch.float64), torch.rand(2, 2, 8, dtype=torch.float64)
    for got, expected in zip(tpt_ops.linear_attention_step(q, k, v, S, z), reference.linear_attention_step(q, k, v, S, z)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# ---- determinism and memory ----

def test_bitwise_deterministic_across_thread_counts():
    q, k, v = inputs(B=2, H=4, Hkv=2, T=150, K=16, Dv=8)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            for causal in (True, False):
                leaves = [t.clone().requires_grad_() for t in (q, k, v)]
                y = tpt_ops.linear_attention(*leaves, causal=causal)
                y.backward(torch.ones_like(y))
                results.append((causal, [y.detach()] + [t.grad for t in leaves]))
    by_mode = {}
    for causal, tensors in results:
        if causal in by_mode:
            for a, b in zip(by_mode[causal], tensors):
                assert torch.equal(a, b)
        by_mode[causal] = tensors


def test_memory_is_linear_in_T():
    """T = 65536 forward + backward in a fresh process: the [T, T] scores alone would be 16 GiB."""
    script = textwrap.dedent("""
        import resource, torch, tpt_ops
        T = 65536
        q = torch.rand(1, 1, T, 8, requires_grad=True)
        k = torch.rand(1, 1, T, 8, requires_grad=True)
        v = torch.randn(1, 1, T, 8, requires_grad=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tpt_ops.linear_attention(q, k, v).sum().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = int(out.stdout.split()[-1])
    assert growth < 256 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


# ---- bad inputs ----

def test_bad_inputs_are_rejected():
    q, k, v = inputs(T=10)
    la = tpt_ops.linear_attention
    assert_rejected(lambda: la(q[..., :6], k, v), r"tpt.linear_attention: the feature widths of phi_q \(6\) and "
                                                 r"phi_k \(8\) differ")
    assert_rejected(lambda: la(q, k, v[:, :, :9]), r"argument 'v' must be \[B, Hkv, T, Dv\] with the B, Hkv, T")
    assert_rejected(lambda: la(q[:, :3], k, v), r"the query heads \(H=3\) must be a positive multiple of the "
                                               r"key/value heads \(Hkv=2\)")
    assert_rejected(lambda: la(q[0], k, v), r"argument 'phi_q' must be 4-d")
    for eps in (0.0, -1.0, math.nan, math.inf):
        assert_rejected(lambda: la(q, k, v, eps=eps), r"tpt.linear_attention: eps must be finite and > 0")
    assert_rejected(lambda: la(q.int(), k, v), r"argument 'phi_q' has dtype int32")
    assert_rejected(lambda: tpt_ops.hedgehog_feature_map(torch.randn(3, 0)), r"the last dim of 'u' \(F\) must be")
    q1, k1, v1 = q[:, :, :1], k[:, :, :1], v[:, :, :1]
    S, z = torch.zeros(2, 2, 8, 6), torch.zeros(2, 2, 8)
    step = tpt_ops.linear_attention_step
    assert_rejected(lambda: step(q1, k1, v1, S[..., :5], z),
                    r"argument 'S' must have shape \[B, Hkv, 2F, Dv\] = \[2, 2, 8, 6\], got \[2, 2, 8, 5\]")
    assert_rejected(lambda: step(q1, k1, v1, S, z[:, :1]), r"argument 'z' must have shape \[B, Hkv, 2F\]")
    assert_rejected(lambda: step(q1, k1, v1[..., :5], S, z), r"argument 'S' must have shape")
    assert_rejected(lambda: step(q, k, v, S, z), r"a decoding step takes one token \(T=1\), got T=10")
    assert_rejected(lambda: step(q1, k1, v1, S, z, eps=0.0), r"eps must be finite and > 0")
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.linear_attention_forward: the feature widths"):
        tpt_ops.numpy.linear_attention_forward(q[..., :6].numpy(), k.numpy(), v.numpy())
