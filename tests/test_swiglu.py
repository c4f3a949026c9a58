"""swiglu: the fused C kernel against the plain-PyTorch reference silu(gate) * up."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

op = torch.ops.tpt.swiglu.default

SHAPES = [(6,), (7, 2), (3, 5, 96), (2, 3, 64), (129, 512), (33, 4096)]  # gate_up shapes [..., 2F]


def make(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(dtype).requires_grad_()


def gradient_magnitudes(x, dh):
    """Per element, the size of the terms summed into the gradient (assert_close_to_exact's scale), float64:
    d_gate = dh u s (1 + g (1 - s)), s = sigmoid(g), has two terms; d_up = dh g s is a product (0)."""
    g, u = x.detach().double().chunk(2, dim=-1)
    s = torch.sigmoid(g)
    return torch.cat(((dh * u).abs() * s * (1 + g.abs() * (1 - s)), torch.zeros_like(u)), dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_forward_backward(shape, dtype):
    x = make(shape, dtype)
    h, (dx,) = grads(tpt_ops.swiglu, (x,))
    h_ref, (dx_ref,) = exact_grads(reference.swiglu, (x,), h)
    assert h.shape == (*shape[:-1], shape[-1] // 2) and h.dtype == dtype and dx.dtype == dtype
    assert_close_to_exact(h, h_ref, name="h")
    assert_close_to_exact(dx, dx_ref, gradient_magnitudes(x, output_grads(h)[0]), name="dgate_up")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_gates(dtype):
    """sigmoid saturates without NaN: exp(-g) overflowing to inf gives s = 0 exactly."""
    g = torch.tensor([-1e4, -800.0, -100.0, -20.0, 0.0, 20.0, 100.0, 800.0, 1e4], dtype=dtype)
    x = torch.cat([g, torch.full_like(g, 0.5)]).requires_grad_()
    h, (dx,) = grads(tpt_ops.swiglu, (x,))
    h_ref, (dx_ref,) = grads(reference.swiglu, (x,))
    assert torch.isfinite(h).all() and torch.isfinite(dx).all()
    assert_close(h, h_ref)
    assert_close(dx, dx_ref)


def test_float32_silu_within_3_ulp():
    """The float32 kernel's own sigmoid (csrc/cpu/common.h, tpt_sigmoid_f32):
    g * sigmoid(g) within 3 ulp of the exact value, for 2.2M gates spread over
    every binade of [-87, 87]; 0 below -87 (exact value under FLT_MIN *
    |g|); NaN and the infinities as torch's silu gives them."""
    bits = np.arange(1, 0x42AE0000, 997, dtype=np.uint32)  # positive floats up to 87
    pos = bits.view(np.float32)
    edges = np.array([0, 87, -87, 86.99, -86.99, 1e-45, -1e-45, 1.2e-38, -1.2e-38], np.float32)
    g = torch.from_numpy(np.concatenate([pos, -pos, edges]))
    h = tpt_ops.swiglu(torch.stack([g, torch.ones_like(g)], dim=-1)).squeeze(-1).double()
    g64 = g.double()
    exact = g64 * torch.sigmoid(g64)
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(2.0**-149))) - 23).clamp_min(2.0**-149)
    assert ((h - exact).abs() / ulp).max().item() <= 3.0
    special = torch.tensor([-87.01, -100.0, -1e30, float("inf"), float("-inf"), float("nan")])
    h = tpt_ops.swiglu(torch.stack([special, torch.ones_like(special)], dim=-1)).squeeze(-1)
    expected = torch.nn.functional.silu(special)
    assert torch.equal(h[:3], torch.zeros(3)) and torch.isclose(expected[:3], torch.zeros(3)).all()
    torch.testing.assert_close(h[3:], expected[3:], equal_nan=True)


def test_non_contiguous():
    base = torch.randn(48, 10, dtype=torch.float64)
    x = base.t()  # [10, 48], strided
    assert not x.is_contiguous()
    assert_close(tpt_ops.swiglu(x), reference.swiglu(x))
    x2 = torch.randn(6, 96, dtype=torch.float64)[:, ::2]
    assert_close(tpt_ops.swiglu(x2), reference.swiglu(x2))
    dh = torch.randn(24, 6, dtype=torch.float64).t()  # [6, 24], strided
    expected = torch.autograd.grad(reference.swiglu(x2.requires_grad_()), x2, dh)[0]
    assert_close(torch.ops.tpt.swiglu_backward(dh, x2.detach()), expected)


def test_gradient_is_one_tensor_of_both_halves():
    x = make((5, 16), torch.float64)
    dh = torch.randn(5, 8, dtype=torch.float64)
    d = torch.ops.tpt.swiglu_backward(dh, x.detach())
    g, u = x.detach().chunk(2, dim=-1)
    s = torch.sigmoid(g)
    assert d.shape == x.shape
    assert_close(d[:, :8], dh * u * s * (1 + g * (1 - s)))
    assert_close(d[:, 8:], dh * g * s)


@pytest.mark.parametrize("shape", [(6,), (5, 4, 12)])
def test_gradcheck(shape):
    x = make(shape, torch.float64)
    assert torch.autograd.gradcheck(tpt_ops.swiglu, (x,))


def test_gradcheck_across_row_blocks_and_vector_tails():
    """260 rows cross the 128-row blocks; F = 2*(16*2+3) = 70 runs the vector loops and a tail."""
    x = make((2, 130, 140), torch.float64)
    assert torch.autograd.gradcheck(tpt_ops.swiglu, (x,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = make((6, 24), dtype)
    assert x.requires_grad  # else opcheck skips its autograd checks
    torch.library.opcheck(op, (x,))
    # the backward ops have no autograd of their own: plain inputs
    torch.library.opcheck(torch.ops.tpt.swiglu_backward_.default, (torch.randn(6, 12).to(dtype), x.detach().clone()))
    torch.library.opcheck(torch.ops.tpt.swiglu_backward.default, (torch.randn(6, 12).to(dtype), x.detach()))
    strided = torch.randn(24, 6).to(dtype).t()  # the fake outputs must be contiguous like the kernel's
    torch.library.opcheck(op, (strided.requires_grad_(),))
    torch.library.opcheck(torch.ops.tpt.swiglu_backward.default, (torch.randn(6, 12).to(dtype), strided.detach()))


def reference_grad(x):
    x = x.detach().requires_grad_()
    reference.swiglu(x).sum().backward()
    return x.grad


def test_backward_never_writes_a_leaf_input():
    """The gradient goes to a new tensor: a leaf gate_up keeps its values, and backward can run twice."""
    x = make((5, 3, 64), torch.float32)
    before = x.detach().clone()
    h = tpt_ops.swiglu(x)
    h.backward(torch.ones_like(h), retain_graph=True)
    h.backward(torch.ones_like(h))
    assert torch.equal(x, before)
    x.grad = None
    torch.ops.tpt.swiglu(x).sum().backward()
    assert torch.equal(x, before)
    assert_close(x.grad, reference_grad(x))
    with pytest.raises(TypeError, match="inplace_backward"):
        tpt_ops.swiglu(x, inplace_backward=True)


def test_backward_never_writes_a_shared_activation():
    """An activation the caller holds, and one another op reads in the backward, keep their values and all
    gradients are right."""
    x = make((4, 6, 32), torch.float64)
    results = []
    for swiglu in (tpt_ops.swiglu, reference.swiglu):
        x.grad = None
        gate_up = x * 1  # a non-leaf the caller keeps
        kept = gate_up.detach().clone()
        loss = swiglu(gate_up).pow(2).sum() + (gate_up * gate_up.sin()).sum()  # mul saves gate_up too
        loss.backward()
        assert torch.equal(gate_up, kept)
        results.append(x.grad)
    assert_close(results[0], results[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(48,), (33, 48), (4, 7, 48)])
def test_linear_swiglu_is_bitwise_linear_then_swiglu(shape, dtype):
    """The private in-place backward gives the bits of F.linear + swiglu (out of place), for x and weight."""
    from tpt_ops.ops import linear_swiglu

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(64, 48, generator=gen) / 7).to(dtype).requires_grad_()
    expected = grads(lambda x, w: tpt_ops.swiglu(torch.nn.functional.linear(x, w)), (x, w))
    actual = grads(linear_swiglu, (x, w))
    assert torch.equal(actual[0], expected[0])
    for a, e in zip(actual[1], expected[1], strict=True):
        assert torch.equal(a, e)


def test_linear_swiglu_under_autocast_is_bitwise_and_keeps_weight_dtype():
    """CPU bfloat16 autocast: the matmuls run in bfloat16, dweight comes back float32, all bits equal the
    out-of-place composition's."""
    from tpt_ops.ops import linear_swiglu

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 48, generator=gen).requires_grad_()
    w = (torch.randn(64, 48, generator=gen) / 7).requires_grad_()
    dh = torch.randn(2, 9, 32, generator=gen).bfloat16()
    runs = []
    for fn in (lambda x, w: tpt_ops.swiglu(torch.nn.functional.linear(x, w)), linear_swiglu):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = fn(x, w)
        runs.append((h, *torch.autograd.grad(h, (x, w), dh)))
    assert runs[1][0].dtype == torch.bfloat16 and runs[1][1].dtype == torch.float32
    assert runs[1][2].dtype == torch.float32
    for a, e in zip(*runs):
        assert torch.equal(a, e)


def test_linear_swiglu_refuses_a_second_backward():
    """Its gate_up holds the gradient after the backward: backpropagating the graph again is refused."""
    from tpt_ops.ops import linear_swiglu

    x = make((3, 16), torch.float32)
    h = linear_swiglu(x, torch.randn(20, 16, requires_grad=True))
    h.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_linear_swiglu_gradgradcheck():
    from tpt_ops.ops import linear_swiglu

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(8, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(linear_swiglu, (x, w))


def test_nn_swiglu_double_backward_matches_reference():
    """A gradient penalty through the fused nn.SwiGLU (in-place path in eager) equals the reference backend's."""
    from tpt_ops.nn import SwiGLU

    results = []
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        ffn = SwiGLU(12, 20, backend=backend).double()
        x = torch.randn(3, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
        (dx,) = torch.autograd.grad(ffn(x).pow(2).sum(), x, create_graph=True)
        dx.pow(2).sum().backward()
        results.append([x.grad] + [p.grad for p in ffn.parameters()])
    assert results[0][1].abs().max() > 0
    for a, e in zip(*results, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_nn_swiglu_compiles_fullgraph():
    """Under torch.compile nn.SwiGLU runs the functional op (one graph) and matches eager."""
    from tpt_ops.nn import SwiGLU

    torch.manual_seed(0)
    ffn = SwiGLU(16, 24)
    x = make((2, 5, 16), torch.float32)
    eager = grads(ffn, (x,))
    ffn.zero_grad()
    compiled = grads(torch.compile(ffn, fullgraph=True), (x,))
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1][0], eager[1][0])


@pytest.mark.parametrize("shape", [(6,), (5, 4, 12)])
def test_gradgradcheck(shape):
    """create_graph=True gradients are exact second derivatives (the old backward gave none)."""
    assert torch.autograd.gradgradcheck(tpt_ops.swiglu, (make(shape, torch.float64),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(dtype):
    """Without create_graph the backward is torch.ops.tpt.swiglu_backward, bit for bit, eager and compiled."""
    from helpers import compiled_backward_graph

    x = make((5, 3, 64), dtype)
    dh = torch.randn(5, 3, 32).to(dtype)
    (dx,) = torch.autograd.grad(tpt_ops.swiglu(x), x, dh)
    assert torch.equal(dx, torch.ops.tpt.swiglu_backward(dh, x.detach()))
    graph = compiled_backward_graph(tpt_ops.swiglu, (x,))
    assert "tpt.swiglu_backward" in graph and "sigmoid" not in graph


def test_compile_fullgraph():
    x = make((4, 8, 48), torch.float32)
    fn = torch.compile(lambda x: tpt_ops.swiglu(x) * 2, fullgraph=True)
    h, (dx,) = grads(fn, (x,))
    h_ref, (dx_ref,) = grads(lambda x: reference.swiglu(x) * 2, (x,))
    assert_close(h, h_ref)
    assert_close(dx, dx_ref)


def test_bitwise_deterministic_across_runs_and_threads():
    x = make((1000, 384), torch.float32)
    runs = []
    for threads in (1, 2, 3, 3):
        with num_threads(threads):
            runs.append(grads(tpt_ops.swiglu, (x,)))
    for h, (dx,) in runs[1:]:
        assert torch.equal(h, runs[0][0]) and torch.equal(dx, runs[0][1][0])


def test_empty():
    for shape in [(0, 12), (2, 0, 12), (3, 0)]:
        x = make(shape, torch.float32)
        h, (dx,) = grads(tpt_ops.swiglu, (x,))
        assert h.shape == (*shape[:-1], shape[-1] // 2) and dx.shape == shape


def test_meta_device_gives_shapes():
    h = tpt_ops.swiglu(torch.empty(4, 3, 10, device="meta"))
    assert h.device.type == "meta" and h.shape == (4, 3, 5)


def test_numpy_agrees_with_torch():
    x = make((37, 48), torch.float32).detach()
    dh = torch.randn(37, 24, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.float64):
        xn, dhn = x.to(dtype).numpy(), dh.to(dtype).numpy()
        hn = tpt_ops.numpy.swiglu_forward(xn)
        dxn = tpt_ops.numpy.swiglu_backward(dhn, xn)
        assert hn.dtype == np.dtype(str(dtype).replace("torch.", "")) and hn.shape == (37, 24)
        np.testing.assert_array_equal(hn, torch.ops.tpt.swiglu(x.to(dtype)).numpy())
        np.testing.assert_array_equal(dxn, torch.ops.tpt.swiglu_backward(dh.to(dtype), x.to(dtype)).numpy())


BAD = [
    # (gate_up, message)
    (torch.randn(4, 12).int(), r"tpt.swiglu: argument 'gate_up' has dtype int32"),
    (torch.tensor(1.0), r"tpt.swiglu: argument 'gate_up' must have at least 1 dimension, got a scalar"),
    (torch.randn(4, 7), r"tpt.swiglu: the last dim of 'gate_up' \(7\) must be even"),
]


@pytest.mark.parametrize("x,msg", BAD)
def test_bad_input(x, msg):
    assert_rejected(lambda: tpt_ops.swiglu(x), msg)


BAD_BACKWARD = [
    # (dh, gate_up, message)
    (torch.randn(4, 5), torch.randn(4, 12),
     r"tpt.swiglu_backward: argument 'dh' has shape \[4, 5\]; expected the shape of gate_up \[4, 12\]"),
    (torch.randn(6), torch.randn(2, 6), r"argument 'dh' has shape \[6\]"),
    (torch.randn(4, 6).long(), torch.randn(4, 12), r"tpt.swiglu_backward: argument 'dh' has dtype int64"),
    (torch.randn(4, 6), torch.randn(4, 13), r"tpt.swiglu_backward: the last dim of 'gate_up' \(13\) must be even"),
    (torch.randn(4, 6, device="meta"), torch.randn(4, 12), "different device"),
]


@pytest.mark.parametrize("dh,x,msg", BAD_BACKWARD)
def test_bad_input_backward(dh, x, msg):
    assert_rejected(lambda: torch.ops.tpt.swiglu_backward(dh, x), msg)
    inplace_msg = msg.replace("swiglu_backward:", "swiglu_backward_:")
    assert_rejected(lambda: torch.ops.tpt.swiglu_backward_(dh, x.clone()), inplace_msg)


def test_bad_input_backward_inplace_strided():
    gate_up = torch.randn(12, 4).t()
    assert_rejected(lambda: torch.ops.tpt.swiglu_backward_(torch.randn(4, 6), gate_up),
                    r"tpt.swiglu_backward_: argument 'gate_up' must be contiguous to take its gradient in place")


def test_numpy_bad_input():
    x = np.zeros((4, 12), np.float32)
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.swiglu_forward: argument 'gate_up' has dtype int64; expected float32 or float64"):
        tpt_ops.numpy.swiglu_forward(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"the last dim of 'gate_up' \(7\) must be even"):
        tpt_ops.numpy.swiglu_forward(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"argument 'gate_up' must have at least 1 dimension"):
        tpt_ops.numpy.swiglu_forward(np.float32(1.0))
    with pytest.raises(TypeError, match=r"argument 'dh' has dtype int32; expected float32 or float64"):
        tpt_ops.numpy.swiglu_backward(np.zeros((4, 6), np.int32), x)
    with pytest.raises(ValueError, match=r"argument 'dh' has shape \[4, 12\]; expected the shape of gate_up \[4, 12\] with its last dim halved"):
        tpt_ops.numpy.swiglu_backward(np.zeros((4, 12), np.float32), x)


def test_compile_non_contiguous():
    gate_up = torch.randn(32, 10).t().requires_grad_()  # [10, 32]
    assert_compile_matches_eager(lambda x: tpt_ops.swiglu(x) * 2 + 1, (gate_up,))
