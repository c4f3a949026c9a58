"""add_rotate_norm / add_norm: the fused C kernels against the unfused reference (SPEC 1e)."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, assert_close, assert_rejected, grads, num_threads, assert_compile_matches_eager

SHAPES = [  # (shape, n_phases)
    ((12,), 3),
    ((7, 16), 1),
    ((5, 24), 2),
    ((3, 5, 96), 3),
    ((2, 3, 64), 4),
    ((129, 72), 6),
    ((9, 4096), 4),
    ((257, 768), 3),
]


def make(shape, n, dtype, param_dtype=None, a_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(shape, generator=gen) * 2).to(dtype).requires_grad_()
    a = torch.randn(shape, generator=gen).to(a_dtype or dtype).requires_grad_()
    P = shape[-1] // n
    theta = (torch.rand(P // 2, generator=gen) * 3).to(param_dtype or dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(param_dtype or dtype).requires_grad_()
    return h, a, theta, w


def fused_rotate(h, a, theta, w, n):
    return tpt_ops.add_rotate_norm(h, a, theta, w, n)


def ref_rotate(h, a, theta, w, n):
    return reference.add_rotate_norm(h, a, theta, w, n)


def fused_norm(h, a, theta, w, n):
    return tpt_ops.add_norm(h, a, w, n)


def ref_norm(h, a, theta, w, n):
    return reference.add_norm(h, a, w, n)


OPS = {"add_rotate_norm": (fused_rotate, ref_rotate), "add_norm": (fused_norm, ref_norm)}


def check_param_grad(actual, expected, dtype):
    """Parameter grads sum over all rows: compare relative to their scale."""
    rtol = {torch.bfloat16: 5e-2, torch.float16: 5e-3, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    scale = expected.float().abs().max().item() + 1e-30
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_parity_forward_backward(name, shape, n, dtype):
    fused, ref = OPS[name]
    inputs = make(shape, n, dtype)
    (h_new, normed), g = grads(lambda *t: fused(*t, n), inputs)
    (h_ref, n_ref), g_ref = grads(lambda *t: ref(*t, n), inputs)
    if dtype in (torch.bfloat16, torch.float16):
        # the reference rounds h + a to the low precision before rotating; the kernel does not
        torch.testing.assert_close(h_new.float(), h_ref.float(), rtol=2e-2, atol=4e-2)
        torch.testing.assert_close(normed.float(), n_ref.float(), rtol=2e-2, atol=4e-2)
    else:
        assert_close(h_new, h_ref)
        assert_close(normed, n_ref)
    dh, da, dtheta, dw = g
    dh_ref, da_ref, dtheta_ref, dw_ref = g_ref
    if name == "add_norm":
        assert dtheta is None and dtheta_ref is None
    if dtype in (torch.bfloat16, torch.float16):
        torch.testing.assert_close(dh.float(), dh_ref.float(), rtol=3e-2, atol=6e-2)
    else:
        assert_close(dh, dh_ref)
    assert torch.equal(dh, da)
    check_param_grad(dw, dw_ref, dtype)
    if dtheta is not None:
        check_param_grad(dtheta, dtheta_ref, dtype)


@pytest.mark.parametrize("name", OPS)
def test_mixed_precision_autocast_style(name):
    """float32 residual stream h, bfloat16 branch output a, float32 parameters."""
    fused, ref = OPS[name]
    inputs = make((64, 48), 3, torch.float32, param_dtype=torch.float32, a_dtype=torch.bfloat16)
    (h_new, normed), (dh, da, dtheta, dw) = grads(lambda *t: fused(*t, 3), inputs)
    (h_ref, n_ref), (dh_ref, da_ref, dtheta_ref, dw_ref) = grads(lambda *t: ref(*t, 3), inputs)
    assert h_new.dtype == torch.float32 and normed.dtype == torch.float32
    assert da.dtype == torch.bfloat16 and dh.dtype == torch.float32 and dw.dtype == torch.float32
    assert_close(h_new, h_ref)
    assert_close(normed, n_ref)
    assert_close(dh, dh_ref)
    torch.testing.assert_close(da, da_ref)
    check_param_grad(dw, dw_ref, torch.float32)
    if dtheta is not None:
        check_param_grad(dtheta, dtheta_ref, torch.float32)


@pytest.mark.parametrize("name", OPS)
def test_non_contiguous(name):
    fused, ref = OPS[name]
    _, _, theta, w = make((10, 48), 4, torch.float64)
    h = torch.randn(48, 10, dtype=torch.float64).t()       # transposed
    a = torch.randn(10, 96, dtype=torch.float64)[:, ::2]    # strided
    assert not h.is_contiguous() and not a.is_contiguous()
    for x, y in zip(fused(h, a, theta, w, 4), ref(h, a, theta, w, 4)):
        assert_close(x, y)


@pytest.mark.parametrize("name", OPS)
def test_gradcheck(name):
    fused, _ = OPS[name]
    inputs = make((3, 4, 24), 3, torch.float64)
    params = inputs if name == "add_rotate_norm" else (inputs[0], inputs[1], inputs[3])

    def fn(*t):
        return fused(*t, 3) if name == "add_rotate_norm" else fused(t[0], t[1], None, t[2], 3)

    assert torch.autograd.gradcheck(fn, params)


def test_opcheck():
    h, a, theta, w = (t.detach() for t in make((6, 24), 3, torch.float32))
    torch.library.opcheck(torch.ops.tpt.add_rotate_norm.default, (h, a, theta, w, 3, 1e-6))
    torch.library.opcheck(torch.ops.tpt.add_norm.default, (h, a, w, 3, 1e-6))
    torch.library.opcheck(torch.ops.tpt.add_norm.default, (h, a.bfloat16(), w, 3, 1e-6))
    h_new, _, rstd = torch.ops.tpt.add_rotate_norm(h, a, theta, w, 3, 1e-6)
    dy, dn = torch.randn_like(h), torch.randn_like(h)
    torch.library.opcheck(torch.ops.tpt.add_rotate_norm_backward.default, (dy, dn, h_new, theta, w, rstd, 3))
    torch.library.opcheck(torch.ops.tpt.add_norm_backward.default, (dy, dn, h_new, w, rstd, 3))


@pytest.mark.parametrize("name", OPS)
def test_compile_fullgraph(name):
    fused, ref = OPS[name]
    inputs = make((4, 8, 48), 3, torch.float32)

    def body(impl):
        def fn(*t):
            h_new, normed = impl(*t, 3)
            return h_new * 2 + normed
        return fn

    out, g = grads(torch.compile(body(fused), fullgraph=True), inputs)
    out_ref, g_ref = grads(body(ref), inputs)
    assert_close(out, out_ref)
    for x, y in zip(g, g_ref):
        if y is not None:
            check_param_grad(x, y, torch.float32)


@pytest.mark.parametrize("name", OPS)
def test_bitwise_deterministic_across_runs_and_threads(name):
    fused, _ = OPS[name]
    inputs = make((1000, 384), 3, torch.float32)
    runs = []
    for threads in (1, 2, 2):
        with num_threads(threads):
            out, g = grads(lambda *t: fused(*t, 3), inputs)
        runs.append([*out, *(x for x in g if x is not None)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", OPS)
def test_empty(name):
    fused, _ = OPS[name]
    for shape in [(0, 12), (2, 0, 12)]:
        inputs = make(shape, 3, torch.float32)
        (h_new, normed), (dh, da, dtheta, dw) = grads(lambda *t: fused(*t, 3), inputs)
        assert h_new.shape == shape and normed.shape == shape and dh.shape == shape
        assert torch.equal(dw, torch.zeros(12))
        if dtheta is not None:
            assert torch.equal(dtheta, torch.zeros(2))


BAD = [  # (op name, kwargs overriding good inputs, message)
    ("add_rotate_norm", {"h": torch.randn(4, 10), "a": torch.randn(4, 10), "weight": torch.randn(10)}, r"tpt.add_rotate_norm: the last dim of 'h' \(D=10\) is not divisible by n_phases=3"),
    ("add_rotate_norm", {"a": torch.randn(4, 6)}, r"tpt.add_rotate_norm: argument 'a' has shape \[4, 6\]; expected the shape of h \[4, 12\]"),
    ("add_rotate_norm", {"theta": torch.randn(3)}, r"tpt.add_rotate_norm: argument 'theta' must have shape \[2\], got \[3\]"),
    ("add_rotate_norm", {"weight": torch.randn(13)}, r"tpt.add_rotate_norm: argument 'weight' must have shape \[12\], got \[13\]"),
    ("add_rotate_norm", {"h": torch.randn(4, 15), "a": torch.randn(4, 15), "weight": torch.randn(15)},
     r"tpt.add_rotate_norm: the phase width P=D/n_phases=5 is odd"),
    ("add_rotate_norm", {"h": torch.randn(4, 12).long()}, r"tpt.add_rotate_norm: argument 'h' has dtype int64"),
    ("add_norm", {"a": torch.randn(4, 12).int()}, r"tpt.add_norm: argument 'a' has dtype int32"),
    ("add_norm", {"a": torch.randn(4, 12, dtype=torch.float64)}, r"tpt.add_norm: arguments 'h' and 'a' must both be float64"),
    ("add_norm", {"n_phases": 0}, r"tpt.add_norm: n_phases must be >= 1, got 0"),
]


def call(name, h=None, a=None, theta=None, weight=None, n_phases=3):
    h = torch.randn(4, 12) if h is None else h
    a = torch.randn(4, 12) if a is None else a
    theta = torch.randn(2) if theta is None else theta
    weight = torch.randn(h.shape[-1]) if weight is None else weight
    if name == "add_rotate_norm":
        return tpt_ops.add_rotate_norm(h, a, theta, weight, n_phases)
    return tpt_ops.add_norm(h, a, weight, n_phases)


@pytest.mark.parametrize("name,kwargs,msg", BAD)
def test_bad_input(name, kwargs, msg):
    assert_rejected(lambda: call(name, **kwargs), msg)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_agrees_with_torch(name, dtype):
    h, a, theta, w = (t.detach() for t in make((300, 48), 3, dtype))
    dh, dn = torch.randn_like(h), torch.randn_like(h)
    rotate = name == "add_rotate_norm"
    if rotate:
        out = torch.ops.tpt.add_rotate_norm(h, a, theta, w, 3, 1e-6)
        ref_back = torch.ops.tpt.add_rotate_norm_backward(dh, dn, out[0], theta, w, out[2], 3)
        np_out = tpt_ops.numpy.add_rotate_norm_forward(h.numpy(), a.numpy(), theta.numpy(), w.numpy(), 3)
        np_back = tpt_ops.numpy.add_rotate_norm_backward(dh.numpy(), dn.numpy(), np_out[0], theta.numpy(),
                                                         w.numpy(), np_out[2], 3)
    else:
        out = torch.ops.tpt.add_norm(h, a, w, 3, 1e-6)
        ref_back = torch.ops.tpt.add_norm_backward(dh, dn, out[0], w, out[2], 3)
        np_out = tpt_ops.numpy.add_norm_forward(h.numpy(), a.numpy(), w.numpy(), 3)
        np_back = tpt_ops.numpy.add_norm_backward(dh.numpy(), dn.numpy(), np_out[0], w.numpy(), np_out[2], 3)
    for t, n in zip((*out, *ref_back), (*np_out, *np_back)):
        assert torch.equal(t, torch.from_numpy(n))


def test_numpy_bad_input():
    h = torch.randn(4, 12).numpy()
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.add_rotate_norm_forward: argument 'a' must have the shape of 'h'"):
        tpt_ops.numpy.add_rotate_norm_forward(h, h[:2], torch.randn(2).numpy(), torch.randn(12).numpy(), 3)
    with pytest.raises(ValueError, match=r"argument 'theta' must have shape \(2,\)"):
        tpt_ops.numpy.add_rotate_norm_forward(h, h, torch.randn(3).numpy(), torch.randn(12).numpy(), 3)
    with pytest.raises(TypeError, match=r"argument 'h' must be float32 or float64"):
        tpt_ops.numpy.add_norm_forward(h.astype("int32"), h, torch.randn(12).numpy(), 3)


def test_compile_non_contiguous():
    h = torch.randn(48, 10).t().requires_grad_()
    a = torch.randn(48, 10).t().requires_grad_()
    theta = torch.rand(8, requires_grad=True)
    w = torch.randn(48, requires_grad=True)
    assert_compile_matches_eager(lambda h, a, th, w: tuple(t * 2 + 1 for t in tpt_ops.add_rotate_norm(h, a, th, w, 3)),
                                 (h, a, theta, w))
    assert_compile_matches_eager(lambda h, a, w: tuple(t * 2 + 1 for t in tpt_ops.add_norm(h, a, w, 3)), (h, a, w))
