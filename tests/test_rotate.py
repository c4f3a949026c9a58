"""phase_rotate: the C kernel against the plain-PyTorch reference (docs/ops/rotate.md)."""
import math

import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

op = torch.ops.tpt.phase_rotate.default
op_backward = torch.ops.tpt.phase_rotate_backward.default

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


def make(shape, n, dtype, seed=0, param_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype).requires_grad_()
    P = shape[-1] // n
    theta = (torch.rand(P // 2, generator=gen) * 4 * math.pi - 2 * math.pi).to(param_dtype or dtype).requires_grad_()
    return x, theta


def magnitudes(x, theta, dy, n):
    """Per element, the size of the terms summed into y, dx and dtheta (assert_close_to_exact's
    scale), and for dtheta those that read the stored y (its ``stored``), float64.

    Each pair's |a| + |b| (|dy_even| + |dy_odd|) is scaled by 1 + |phi|: the
    kernel forms phi = theta + i*2pi/N in the compute precision, whose
    absolute error |phi| u moves the rotated pair by |phi| u times its size.
    dtheta sums, over rows and phases, terms of the size of
    (|dy_even| + |dy_odd|) times the pair of y: the root of the sum of their
    squares; the backward reads y as it was stored, rounded to x's dtype."""
    xs = x.detach().double().unflatten(-1, (n, -1, 2))
    ds = dy.unflatten(-1, (n, -1, 2))
    grow = 1 + reference.phase_angles(theta.detach().double(), n).abs()  # [N, P/2]
    x_pair, d_pair = xs.abs().sum(-1), ds.abs().sum(-1)
    y = (x_pair * grow)[..., None].expand(xs.shape).flatten(-3)
    dx = (d_pair * grow)[..., None].expand(xs.shape).flatten(-3)

    def over_rows(terms):
        return terms.reshape(-1, *grow.shape).pow(2).sum((0, 1)).sqrt()
    return y, dx, over_rows(x_pair * d_pair * grow), over_rows(x_pair * d_pair)


def check_parity(x, th, n):
    """Output and gradients against the float64 reference of the same inputs, element by element."""
    y, (dx, dth) = grads(lambda x, th: tpt_ops.phase_rotate(x, th, n), (x, th))
    y_ref, (dx_ref, dth_ref) = exact_grads(lambda x, th: reference.phase_rotate(x, th, n), (x, th), y)
    assert y.shape == x.shape and y.dtype == x.dtype and dx.dtype == x.dtype and dth.dtype == th.dtype
    y_scale, dx_scale, dth_scale, dth_stored = magnitudes(x, th, output_grads(y)[0], n)
    assert_close_to_exact(y, y_ref, y_scale, name="y")
    assert_close_to_exact(dx, dx_ref, dx_scale, name="dx")
    assert_close_to_exact(dth, dth_ref, dth_scale, dth_stored, stored_dtype=x.dtype, name="dtheta")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_parity_forward_backward(shape, n, dtype):
    check_parity(*make(shape, n, dtype), n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_float32_theta(dtype):
    """Autocast-style: activations in low precision, theta in float32."""
    check_parity(*make((300, 48), 3, dtype, param_dtype=torch.float32), 3)


def test_non_contiguous():
    base = torch.randn(48, 10, dtype=torch.float64)
    x = base.t()  # [10, 48], strided
    th = torch.randn(6, dtype=torch.float64)
    assert not x.is_contiguous()
    assert_close(tpt_ops.phase_rotate(x, th, 4), reference.phase_rotate(x, th, 4))
    x2 = torch.randn(6, 96, dtype=torch.float64)[:, ::2]
    th2 = torch.randn(48, dtype=torch.float64)[::6]  # strided theta, [8]
    assert_close(tpt_ops.phase_rotate(x2, th2, 3), reference.phase_rotate(x2, th2, 3))
    # non-contiguous output gradient
    x3, th3 = make((8, 24), 2, torch.float64)
    dy = torch.randn(24, 8, dtype=torch.float64).t()
    y = tpt_ops.phase_rotate(x3, th3, 2)
    dx, dth = torch.autograd.grad(y, (x3, th3), dy)
    y_ref = reference.phase_rotate(x3, th3, 2)
    dx_ref, dth_ref = torch.autograd.grad(y_ref, (x3, th3), dy)
    assert_close(dx, dx_ref)
    assert_close(dth, dth_ref)


@pytest.mark.parametrize("n", [1, 3])
def test_orthogonal(n):
    """A rotation preserves the norm of every phase pair, hence of every row; backward is its transpose."""
    x, th = make((17, 12 * n), n, torch.float64)
    x, th = x.detach(), th.detach()
    y = tpt_ops.phase_rotate(x, th, n)
    pairs = lambda t: t.unflatten(-1, (-1, 2)).pow(2).sum(-1)  # noqa: E731
    torch.testing.assert_close(pairs(y), pairs(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-13, atol=1e-13)
    # dx = R(-phi) dy: rotating the output back with its own backward gives x
    dx, _ = torch.ops.tpt.phase_rotate_backward(y, y, th, n)
    torch.testing.assert_close(dx, x, rtol=1e-13, atol=1e-13)


def test_theta_zero_n1_is_identity():
    x, _ = make((9, 32), 1, torch.float32)
    x = x.detach()
    assert torch.equal(tpt_ops.phase_rotate(x, torch.zeros(16), 1), x)


@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck(n):
    x, th = make((5, 4, 6 * n), n, torch.float64)
    assert torch.autograd.gradcheck(lambda x, th: tpt_ops.phase_rotate(x, th, n), (x, th))


@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck_across_row_blocks_and_vector_tails(n):
    """260 rows cross the 128-row blocks of the dtheta reduction; 16*2+3 = 35
    pairs a phase run the vector loops and a tail."""
    x, th = make((2, 130, 70 * n), n, torch.float64)
    assert torch.autograd.gradcheck(lambda x, th: tpt_ops.phase_rotate(x, th, n), (x, th), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, th = make((6, 24), 3, dtype, param_dtype=torch.float32)
    assert x.requires_grad and th.requires_grad  # else opcheck skips its autograd checks
    torch.library.opcheck(op, (x, th, 3))
    with torch.no_grad():
        y = torch.ops.tpt.phase_rotate(x, th, 3)
    # the backward op has no autograd of its own: plain inputs
    torch.library.opcheck(op_backward, (torch.randn_like(x).detach(), y.detach(), th.detach(), 3))


def test_compile_fullgraph():
    x, th = make((4, 8, 48), 3, torch.float32)
    fn = torch.compile(lambda x, th: tpt_ops.phase_rotate(x, th, 3) * 2, fullgraph=True)
    y, (dx, dth) = grads(fn, (x, th))
    y_ref, (dx_ref, dth_ref) = grads(lambda x, th: reference.phase_rotate(x, th, 3) * 2, (x, th))
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    assert_close(dth, dth_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic_across_runs_and_threads(dtype):
    x, th = make((1000, 384), 3, dtype, param_dtype=torch.float32)  # 8 row blocks
    runs = []
    for threads in (1, 2, 3, 3):
        with num_threads(threads):
            y, (dx, dth) = grads(lambda x, th: tpt_ops.phase_rotate(x, th, 3), (x, th))
        runs.append((y, dx, dth))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_empty():
    for shape in [(0, 12), (2, 0, 12)]:
        x, th = make(shape, 3, torch.float32)
        y, (dx, dth) = grads(lambda x, th: tpt_ops.phase_rotate(x, th, 3), (x, th))
        assert y.shape == shape and dx.shape == shape
        assert torch.equal(dth, torch.zeros(2))
    x, th = torch.randn(3, 0, requires_grad=True), torch.randn(0, requires_grad=True)
    y, (dx, dth) = grads(lambda x, th: tpt_ops.phase_rotate(x, th, 2), (x, th))
    assert y.shape == (3, 0) and dx.shape == (3, 0) and dth.shape == (0,)


BAD = [
    # (x, theta, n_phases, message)
    (torch.randn(4, 10), torch.randn(2), 3, r"tpt.phase_rotate: the last dim of 'x' \(D=10\) is not divisible by n_phases=3"),
    (torch.randn(4, 15), torch.randn(2), 3, r"tpt.phase_rotate: the phase width P=5 \(D=15, n_phases=3\) is odd"),
    (torch.randn(4, 7), torch.randn(3), 1, r"tpt.phase_rotate: the phase width P=7 \(D=7, n_phases=1\) is odd"),
    (torch.randn(4, 12), torch.randn(3), 3, r"tpt.phase_rotate: argument 'theta' must have shape \[2\], got \[3\]"),
    (torch.randn(4, 12), torch.randn(1, 2), 3, r"tpt.phase_rotate: argument 'theta' must have shape \[2\], got \[1, 2\]"),
    (torch.randn(4, 12).int(), torch.randn(2), 3, r"tpt.phase_rotate: argument 'x' has dtype int32"),
    (torch.randn(4, 12), torch.randn(2).long(), 3, r"tpt.phase_rotate: argument 'theta' has dtype int64"),
    (torch.randn(4, 12), torch.randn(2), 0, r"tpt.phase_rotate: n_phases must be >= 1, got 0"),
    (torch.tensor(1.0), torch.randn(1), 1, r"tpt.phase_rotate: argument 'x' must have at least 1 dimension"),
]


@pytest.mark.parametrize("x,th,n,msg", BAD)
def test_bad_input(x, th, n, msg):
    assert_rejected(lambda: tpt_ops.phase_rotate(x, th, n), msg)


y12, th2 = torch.randn(4, 12), torch.randn(2)
BAD_BACKWARD = [
    # (dy, y, theta, n_phases, message)
    (torch.randn(4, 13), y12, th2, 3, r"tpt.phase_rotate_backward: argument 'dy' has shape \[4, 13\]; expected the shape of y \[4, 12\]"),
    (torch.randn(4, 12).int(), y12, th2, 3, r"tpt.phase_rotate_backward: argument 'dy' has dtype int32"),
    (torch.randn(4, 12), y12.long(), th2, 3, r"tpt.phase_rotate_backward: argument 'y' has dtype int64"),
    (torch.randn(4, 12), y12, torch.randn(4), 3, r"tpt.phase_rotate_backward: argument 'theta' must have shape \[2\], got \[4\]"),
    (torch.randn(4, 15), torch.randn(4, 15), th2, 3, r"tpt.phase_rotate_backward: the phase width P=5 \(D=15, n_phases=3\) is odd"),
    (torch.randn(4, 12), y12, th2, 5, r"tpt.phase_rotate_backward: the last dim of 'y' \(D=12\) is not divisible by n_phases=5"),
]


@pytest.mark.parametrize("dy,y,th,n,msg", BAD_BACKWARD)
def test_bad_input_backward(dy, y, th, n, msg):
    with pytest.raises(RuntimeError, match=msg):
        op_backward(dy, y, th, n)
    with pytest.raises(Exception, match=msg):
        torch.compile(lambda dy, y, th: op_backward(dy, y, th, n), fullgraph=True, dynamic=False)(dy, y, th)


def test_bad_input_meta_device():
    x = torch.randn(4, 12, device="meta")
    with pytest.raises(RuntimeError, match="tpt.phase_rotate: argument 'theta' is on a different device"):
        tpt_ops.phase_rotate(x, torch.randn(2), 3)
    with pytest.raises(RuntimeError, match="tpt.phase_rotate_backward: argument 'dy' is on a different device"):
        op_backward(torch.randn(4, 12), torch.randn(4, 12, device="meta"), torch.randn(2), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_agrees_with_torch(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 48, generator=gen, dtype=dtype)
    theta = torch.rand(8, generator=gen, dtype=dtype)
    dy = torch.randn(300, 48, generator=gen, dtype=dtype)
    y = torch.ops.tpt.phase_rotate(x, theta, 3)
    dx, dtheta = torch.ops.tpt.phase_rotate_backward(dy, y, theta, 3)
    y_np = tpt_ops.numpy.phase_rotate_forward(x.numpy(), theta.numpy(), 3)
    dx_np, dtheta_np = tpt_ops.numpy.phase_rotate_backward(dy.numpy(), y_np, theta.numpy(), 3)
    for t, n in ((y, y_np), (dx, dx_np), (dtheta, dtheta_np)):
        assert torch.equal(t, torch.from_numpy(n))


def test_numpy_bad_input():
    import numpy as np
    x = np.zeros((4, 12), np.float32)
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.phase_rotate_forward: the phase width P=3 \(D=9, n_phases=3\) is odd"):
        tpt_ops.numpy.phase_rotate_forward(np.zeros((4, 9), np.float32), np.zeros(1, np.float32), 3)
    with pytest.raises(ValueError, match=r"argument 'theta' must have shape \[2\], got \[3\]"):
        tpt_ops.numpy.phase_rotate_forward(x, np.zeros(3, np.float32), 3)
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.phase_rotate_forward: argument 'x' has dtype int16; expected float32 or float64"):
        tpt_ops.numpy.phase_rotate_forward(x.astype(np.int16), np.zeros(2, np.float32), 3)


def test_numpy_casts_theta_to_the_input_precision():
    import numpy as np
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    theta64 = np.array([0.3, -1.2])
    y = tpt_ops.numpy.phase_rotate_forward(x, theta64, 3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, tpt_ops.numpy.phase_rotate_forward(x, theta64.astype(np.float32), 3))
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.phase_rotate_forward: argument 'theta' has dtype complex128"):
        tpt_ops.numpy.phase_rotate_forward(x, theta64.astype(np.complex128), 3)


def test_compile_non_contiguous():
    x = torch.randn(48, 10).t().requires_grad_()
    theta = torch.rand(8, requires_grad=True)
    assert_compile_matches_eager(lambda x, th: tpt_ops.phase_rotate(x, th, 3) * 2 + 1, (x, theta))


# ---- second derivatives: a differentiable composition under create_graph=True, the C kernel otherwise ----

@pytest.mark.parametrize("n", [1, 3])
def test_gradgradcheck(n):
    """create_graph=True gradients are exact second derivatives, for x and theta."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4 * n, generator=gen, dtype=torch.float64).requires_grad_()
    theta = torch.randn(2, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, t: tpt_ops.phase_rotate(x, t, n), (x, theta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(dtype):
    """Without create_graph the backward is torch.ops.tpt.phase_rotate_backward, bit for bit, eager and compiled."""
    from helpers import compiled_backward_graph

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 24, generator=gen).to(dtype).requires_grad_()
    theta = torch.randn(4, generator=gen).requires_grad_()
    dy = torch.randn(4, 5, 24, generator=gen).to(dtype)
    y = tpt_ops.phase_rotate(x, theta, 3)
    dx, dtheta = torch.autograd.grad(y, (x, theta), dy)
    kernel_dx, kernel_dtheta = torch.ops.tpt.phase_rotate_backward(dy, y.detach(), theta.detach(), 3)
    assert torch.equal(dx, kernel_dx) and torch.equal(dtheta, kernel_dtheta)
    graph = compiled_backward_graph(lambda x, t: tpt_ops.phase_rotate(x, t, 3), (x, theta))
    assert "tpt.phase_rotate_backward" in graph and "aten.sin" not in graph
