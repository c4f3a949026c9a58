"""phase_rmsnorm: the C kernel against the plain-PyTorch reference (docs/ops/norm.md)."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

op = torch.ops.tpt.phase_rmsnorm.default

SHAPES = [  # (x shape, n_phases)
    ((12,), 3),
    ((7, 12), 1),
    ((5, 24), 2),
    ((3, 5, 96), 3),
    ((2, 3, 64), 4),
    ((129, 36), 6),
    ((33, 4096), 4),
    ((257, 768), 3),
]


def magnitudes(x, w, dy, n, eps=1e-6):
    """Per element, the size of the terms summed into dx and dw (assert_close_to_exact's scale), float64.

    docs/ops/norm.md: dx_i = r_i (g_i - x_i r_i^2 mean(g_i x_i)) with g = dy w, a few
    terms: the sum of their magnitudes; dw = sum over rows of dy x r: the
    root of the sum of the squares."""
    xs = x.detach().double().unflatten(-1, (n, -1))
    gs = (dy * w.detach().double()).unflatten(-1, (n, -1))
    r = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
    dx = (r * gs.abs() + r.pow(3) * xs.abs() * (gs * xs).abs().mean(-1, keepdim=True)).flatten(-2)
    dw = (dy * (xs * r).flatten(-2)).reshape(-1, x.shape[-1]).pow(2).sum(0).sqrt()
    return dx, dw


def check_parity(x, w, n):
    """Output and gradients against the float64 reference of the same inputs, element by element."""
    y, (dx, dw) = grads(lambda x, w: tpt_ops.phase_rmsnorm(x, w, n), (x, w))
    y_ref, (dx_ref, dw_ref) = exact_grads(lambda x, w: reference.phase_rmsnorm(x, w, n), (x, w), y)
    assert y.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == w.dtype
    dx_scale, dw_scale = magnitudes(x, w, output_grads(y)[0], n)
    assert_close_to_exact(y, y_ref, name="y")
    assert_close_to_exact(dx, dx_ref, dx_scale, name="dx")
    assert_close_to_exact(dw, dw_ref, dw_scale, name="dweight")


def make(shape, dtype, seed=0, param_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(param_dtype or dtype).requires_grad_()
    return x, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_parity_forward_backward(shape, n, dtype):
    check_parity(*make(shape, dtype), n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_float32_weight(dtype):
    """Autocast-style: activations in low precision, the weight in float32."""
    # dweight is float32 from exact inputs (dy, x in the low precision, rstd float32): float32's tolerance
    check_parity(*make((300, 48), dtype, param_dtype=torch.float32), 3)


def test_non_contiguous():
    base = torch.randn(48, 10, dtype=torch.float64)
    x = base.t()  # [10, 48], strided
    w = torch.randn(48, dtype=torch.float64)
    assert not x.is_contiguous()
    assert_close(tpt_ops.phase_rmsnorm(x, w, 4), reference.phase_rmsnorm(x, w, 4))
    x2 = torch.randn(6, 96, dtype=torch.float64)[:, ::2]
    assert_close(tpt_ops.phase_rmsnorm(x2, w, 3), reference.phase_rmsnorm(x2, w, 3))


def test_n1_is_plain_rmsnorm():
    x, w = make((9, 32), torch.float64)
    expected = torch.nn.functional.rms_norm(x, (32,), w, eps=1e-6)
    assert_close(tpt_ops.phase_rmsnorm(x, w, 1), expected)


@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck(n):
    x, w = make((5, 4, 6 * n), torch.float64)
    assert torch.autograd.gradcheck(lambda x, w: tpt_ops.phase_rmsnorm(x, w, n), (x, w))


@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck_across_row_blocks_and_vector_tails(n):
    """260 rows cross the 128-row blocks of the dweight reduction; a phase of
    2*(16*2+3) = 70 channels runs the vector loops and a tail."""
    x, w = make((2, 130, 70 * n), torch.float64)
    assert torch.autograd.gradcheck(lambda x, w: tpt_ops.phase_rmsnorm(x, w, n), (x, w), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, w = make((6, 24), dtype, param_dtype=torch.float32)
    assert x.requires_grad and w.requires_grad  # else opcheck skips its autograd checks
    torch.library.opcheck(op, (x, w, 3, 1e-6))
    with torch.no_grad():
        rstd = torch.ops.tpt.phase_rmsnorm(x, w, 3, 1e-6)[1]
    # the backward op has no autograd of its own: plain inputs
    torch.library.opcheck(torch.ops.tpt.phase_rmsnorm_backward.default,
                          (torch.randn_like(x).detach(), x.detach(), w.detach(), rstd.detach(), 3))


def test_compile_fullgraph():
    x, w = make((4, 8, 48), torch.float32)
    fn = torch.compile(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3) * 2, fullgraph=True)
    y, (dx, dw) = grads(fn, (x, w))
    y_ref, (dx_ref, dw_ref) = grads(lambda x, w: reference.phase_rmsnorm(x, w, 3) * 2, (x, w))
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    assert_close(dw, dw_ref)


def test_bitwise_deterministic_across_runs_and_threads():
    x, w = make((1000, 384), torch.float32)
    runs = []
    for threads in (1, 2, 3, 3):
        with num_threads(threads):
            y, (dx, dw) = grads(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3), (x, w))
        runs.append((y, dx, dw))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_empty():
    for shape in [(0, 12), (2, 0, 12)]:
        x, w = make(shape, torch.float32)
        y, (dx, dw) = grads(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3), (x, w))
        assert y.shape == shape and dx.shape == shape
        assert torch.equal(dw, torch.zeros(12))


def test_numpy_agrees_with_torch():
    x, w = make((37, 48), torch.float32)
    y, (dx, dw) = grads(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3), (x, w))
    gen = torch.Generator().manual_seed(0)
    dy = torch.randn(y.shape, generator=gen)
    for dtype in (torch.float32, torch.float64):
        xn, wn, dyn = (t.detach().to(dtype).numpy() for t in (x, w, dy))
        yn, rstd = tpt_ops.numpy.phase_rmsnorm_forward(xn, wn, 3)
        dxn, dwn = tpt_ops.numpy.phase_rmsnorm_backward(dyn, xn, wn, rstd, 3)
        assert yn.dtype == np.dtype(str(dtype).replace("torch.", ""))
        ref_y, ref_rstd = torch.ops.tpt.phase_rmsnorm(x.detach().to(dtype), w.detach().to(dtype), 3, 1e-6)
        np.testing.assert_array_equal(yn, ref_y.numpy())
        ref_dx, ref_dw = torch.ops.tpt.phase_rmsnorm_backward(dy.to(dtype), x.detach().to(dtype),
                                                              w.detach().to(dtype), ref_rstd, 3)
        np.testing.assert_array_equal(dxn, ref_dx.numpy())
        np.testing.assert_array_equal(dwn, ref_dw.numpy())


BAD = [
    # (x, weight, n_phases, message)
    (torch.randn(4, 10), torch.randn(10), 3, r"tpt.phase_rmsnorm: the last dim of 'x' \(D=10\) is not divisible by n_phases=3"),
    (torch.randn(4, 12), torch.randn(11), 3, r"tpt.phase_rmsnorm: argument 'weight' must have shape \[12\], got \[11\]"),
    (torch.randn(4, 12), torch.randn(2, 6), 3, r"argument 'weight' must have shape \[12\]"),
    (torch.randn(4, 12).int(), torch.randn(12), 3, r"tpt.phase_rmsnorm: argument 'x' has dtype int32"),
    (torch.randn(4, 12), torch.randn(12).long(), 3, r"tpt.phase_rmsnorm: argument 'weight' has dtype int64"),
    (torch.randn(4, 12), torch.randn(12), 0, r"tpt.phase_rmsnorm: n_phases must be >= 1, got 0"),
    (torch.tensor(1.0), torch.randn(1), 1, r"tpt.phase_rmsnorm: argument 'x' must have at least 1 dimension"),
]


@pytest.mark.parametrize("x,w,n,msg", BAD)
def test_bad_input(x, w, n, msg):
    assert_rejected(lambda: tpt_ops.phase_rmsnorm(x, w, n), msg)


def test_bad_input_meta_device():
    x = torch.randn(4, 12, device="meta")
    with pytest.raises(RuntimeError, match="different device"):
        tpt_ops.phase_rmsnorm(x, torch.randn(12), 3)


def test_numpy_bad_input():
    x = np.zeros((4, 12), np.float32)
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.phase_rmsnorm_forward: argument 'x' has dtype int64; expected float32 or float64"):
        tpt_ops.numpy.phase_rmsnorm_forward(x.astype(np.int64), np.ones(12, np.float32), 3)
    with pytest.raises(TypeError, match=r"argument 'weight' has dtype int32; expected float32 or float64"):
        tpt_ops.numpy.phase_rmsnorm_forward(x, np.ones(12, np.int32), 3)
    with pytest.raises(ValueError, match=r"argument 'weight' must have shape \[12\], got \[11\]"):
        tpt_ops.numpy.phase_rmsnorm_forward(x, np.ones(11, np.float32), 3)
    with pytest.raises(ValueError, match=r"\(D=12\) is not divisible by n_phases=5"):
        tpt_ops.numpy.phase_rmsnorm_forward(x, np.ones(12, np.float32), 5)
    y, rstd = tpt_ops.numpy.phase_rmsnorm_forward(x, np.ones(12, np.float32), 3)
    with pytest.raises(ValueError, match=r"argument 'dy' has shape \[2, 12\]; expected the shape of x \[4, 12\]"):
        tpt_ops.numpy.phase_rmsnorm_backward(y[:2], x, np.ones(12, np.float32), rstd, 3)


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan"), float("inf")])
def test_bad_eps(eps):
    x, w = torch.randn(4, 12), torch.randn(12)
    msg = rf"eps must be finite and > 0, got {eps:g}"
    assert_rejected(lambda: tpt_ops.phase_rmsnorm(x, w, 3, eps), rf"tpt.phase_rmsnorm: {msg}")
    with pytest.raises(ValueError, match=rf"tpt_ops.numpy.phase_rmsnorm_forward: {msg}"):
        tpt_ops.numpy.phase_rmsnorm_forward(x.numpy(), w.numpy(), 3, eps)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_unsupported_dtype_is_named(dtype):
    x, w = torch.randn(4, 12), torch.randn(12)
    name = str(dtype).removeprefix("torch.")
    assert_rejected(lambda: tpt_ops.phase_rmsnorm(x.to(dtype), w, 3),
                    rf"tpt.phase_rmsnorm: argument 'x' has dtype {name}; expected float32, float64")
    assert_rejected(lambda: tpt_ops.phase_rmsnorm(x, w.to(dtype), 3),
                    rf"tpt.phase_rmsnorm: argument 'weight' has dtype {name}; expected float32, float64")


def test_numpy_casts_parameters_to_the_input_precision():
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    w64 = np.linspace(0.5, 2, 12)
    y, rstd = tpt_ops.numpy.phase_rmsnorm_forward(x, w64, 3)
    y_ref, rstd_ref = tpt_ops.numpy.phase_rmsnorm_forward(x, w64.astype(np.float32), 3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, y_ref)
    dx, dw = tpt_ops.numpy.phase_rmsnorm_backward(x.astype(np.float64), x, w64, rstd.astype(np.float64), 3)
    dx_ref, dw_ref = tpt_ops.numpy.phase_rmsnorm_backward(x, x, w64.astype(np.float32), rstd, 3)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)


def test_compile_non_contiguous():
    x = torch.randn(48, 10).t().requires_grad_()  # [10, 48], transposed strides
    w = torch.randn(48, requires_grad=True)
    assert not x.is_contiguous()
    assert_compile_matches_eager(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3) * 2 + 1, (x, w))


# ---- second derivatives: a differentiable composition under create_graph=True, the C kernel otherwise ----

@pytest.mark.parametrize("n", [1, 3])
def test_gradgradcheck(n):
    """create_graph=True gradients (gradient penalty, HVP) are exact second derivatives, for x and weight."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 12, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(12, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, w: tpt_ops.phase_rmsnorm(x, w, n), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(dtype):
    """Without create_graph the backward is torch.ops.tpt.phase_rmsnorm_backward, bit for bit, eager and
    compiled (AOTAutograd traces the backward with grad mode off, so it keeps the kernel)."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 24, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(24, generator=gen).requires_grad_()
    dy = torch.randn(4, 5, 24, generator=gen).to(dtype)
    y, rstd = torch.ops.tpt.phase_rmsnorm(x, w, 3, 1e-6)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    kernel_dx, kernel_dw = torch.ops.tpt.phase_rmsnorm_backward(dy, x.detach(), w.detach(), rstd.detach(), 3)
    assert torch.equal(dx, kernel_dx) and torch.equal(dw, kernel_dw)
    from helpers import compiled_backward_graph
    graph = compiled_backward_graph(lambda x, w: tpt_ops.phase_rmsnorm(x, w, 3), (x, w))
    assert "tpt.phase_rmsnorm_backward" in graph and "rsqrt" not in graph


def test_bfloat16_outputs_keep_float32_subnormals():
    """The bfloat16 output and dx are the float32 kernel's values (same inputs, upcast) rounded by torch, also where
    those values are float32 subnormals: on a CPU with AVX512-BF16 the row stores (dx's here) convert in hardware,
    which reads a subnormal as zero, and a group of values holding one must take the integer rounding
    (csrc/cpu/convert.c); y comes from the pair loop's integer rounding."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, 768, generator=gen).bfloat16()
    w = torch.ones(768)
    w[::3] = 3e-39  # every group of 32 outputs holds subnormal values, among normal ones
    w[512:] = 1e-39  # and a whole phase of them
    dy = torch.randn(64, 768, generator=gen).bfloat16()
    outs = {}
    for dtype in (torch.bfloat16, torch.float32):
        xs = x.to(dtype).requires_grad_()
        y = tpt_ops.phase_rmsnorm(xs, w, 3)
        (dx,) = torch.autograd.grad(y, xs, dy.to(dtype))
        outs[dtype] = (y.detach(), dx)
    (y16, dx16), (y32, dx32) = outs[torch.bfloat16], outs[torch.float32]
    subnormal = (y32 != 0) & (y32.abs() < torch.finfo(torch.float32).tiny)
    assert (subnormal & (y32.to(torch.bfloat16) != 0)).sum() > 10000  # subnormals a flush to zero would lose
    assert torch.equal(y16.view(torch.int16), y32.to(torch.bfloat16).view(torch.int16))
    assert torch.equal(dx16.view(torch.int16), dx32.to(torch.bfloat16).view(torch.int16))
