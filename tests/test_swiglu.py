"""swiglu: the fused C kernel against the plain-PyTorch reference silu(gate) * up."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, assert_close, assert_rejected, grads, num_threads, assert_compile_matches_eager

op = torch.ops.tpt.swiglu.default

SHAPES = [(6,), (7, 2), (3, 5, 96), (2, 3, 64), (129, 512), (33, 4096)]  # gate_up shapes [..., 2F]


def make(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_forward_backward(shape, dtype):
    x = make(shape, dtype)
    h, (dx,) = grads(tpt_ops.swiglu, (x,))
    h_ref, (dx_ref,) = grads(reference.swiglu, (x,))
    assert h.shape == (*shape[:-1], shape[-1] // 2) and h.dtype == dtype and dx.dtype == dtype
    assert_close(h, h_ref)
    assert_close(dx, dx_ref)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = make((6, 24), dtype)
    torch.library.opcheck(op, (x,))
    torch.library.opcheck(op, (x, True))
    torch.library.opcheck(torch.ops.tpt.swiglu_backward_.default, (torch.randn(6, 12).to(dtype), x.detach().clone()))
    torch.library.opcheck(torch.ops.tpt.swiglu_backward.default, (torch.randn(6, 12).to(dtype), x.detach()))
    strided = torch.randn(24, 6).to(dtype).t()  # the fake outputs must be contiguous like the kernel's
    torch.library.opcheck(op, (strided.requires_grad_(),))
    torch.library.opcheck(torch.ops.tpt.swiglu_backward.default, (torch.randn(6, 12).to(dtype), strided.detach()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_backward(dtype):
    """inplace_backward=True: the same gradient bit for bit, written over the
    activation, and a second backward through the graph is refused."""
    x = make((5, 3, 64), dtype)
    dh = torch.randn(5, 3, 32).to(dtype)
    expected_h = tpt_ops.swiglu(x)
    (expected_dx,) = torch.autograd.grad(expected_h, x, dh)
    gate_up = x * 1  # an activation the caller owns, as in nn.SwiGLU
    h = tpt_ops.swiglu(gate_up, inplace_backward=True)
    h.backward(dh, retain_graph=True)
    assert torch.equal(h, expected_h) and torch.equal(x.grad, expected_dx)
    assert torch.equal(gate_up, expected_dx)  # the activation now holds its gradient
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.backward(dh)


def test_inplace_backward_falls_back_on_strided_activation():
    x = make((32, 10), torch.float32)
    h, (dx,) = grads(lambda x: tpt_ops.swiglu(x.t(), inplace_backward=True), (x,))
    h_ref, (dx_ref,) = grads(lambda x: reference.swiglu(x.t()), (x,))
    assert_close(h, h_ref)
    assert_close(dx, dx_ref)


def test_compile_inplace_backward():
    """Under torch.compile the backward takes the functional op; same results as eager."""
    x = make((4, 8, 48), torch.float32)
    fn = torch.compile(lambda x: tpt_ops.swiglu(x * 2, inplace_backward=True) * 2, fullgraph=True)
    h, (dx,) = grads(fn, (x,))
    h_ref, (dx_ref,) = grads(lambda x: reference.swiglu(x * 2) * 2, (x,))
    assert_close(h, h_ref)
    assert_close(dx, dx_ref)


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
    for threads in (1, 2, 2):
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
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.swiglu_forward: argument 'gate_up' must be float32 or float64"):
        tpt_ops.numpy.swiglu_forward(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"the last dim of 'gate_up' \(7\) must be even"):
        tpt_ops.numpy.swiglu_forward(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"argument 'gate_up' must have at least 1 dimension"):
        tpt_ops.numpy.swiglu_forward(np.float32(1.0))
    with pytest.raises(TypeError, match=r"argument 'dh' must be float32 or float64"):
        tpt_ops.numpy.swiglu_backward(np.zeros((4, 6), np.int32), x)
    with pytest.raises(ValueError, match=r"argument 'dh' must have the shape of 'gate_up' with its last dim halved"):
        tpt_ops.numpy.swiglu_backward(np.zeros((4, 12), np.float32), x)


def test_compile_non_contiguous():
    gate_up = torch.randn(32, 10).t().requires_grad_()  # [10, 32]
    assert_compile_matches_eager(lambda x: tpt_ops.swiglu(x) * 2 + 1, (gate_up,))
