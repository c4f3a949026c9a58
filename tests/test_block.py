"""add_rotate_norm / add_norm: the fused C kernels against the unfused reference (docs/ops/block.md)."""
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

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


def magnitudes(name, h, a, theta, w, dy, dn, n, eps=1e-6):
    """Per output and gradient, assert_close_to_exact's (scale, stored) in float64: the size of the
    terms summed into each element, and of those that read h_new as it was stored (rounded to h's dtype).

    h_new = rotate(h + a) (add_norm: h + a), the rotation scaled as in
    test_rotate.magnitudes (pairs times 1 + |phi|, the angle's error);
    normed = h_new r w. Backward: the gradient reaching h_new is
    D = dy + r (g - h_new r^2 mean(g h_new)), g = dn w, a few terms; dh = da =
    rotate^T(D); dweight = sum over rows of dn h_new r and dtheta = sum over
    rows and phases of D-pair times h_new-pair terms: roots of the sums of squares.
    The stored h_new moves each of its elements by up to u of it, hence r (a
    root of their mean square) by up to u: r g by u, r^3 h_new mean(g h_new)
    by 5u, normed and each dweight term by 2u."""
    h, a, w = (t.detach().double() for t in (h, a, w))
    D = h.shape[-1]
    rotate = name == "add_rotate_norm"
    if rotate:
        grow = 1 + reference.phase_angles(theta.detach().double(), n).abs()  # [N, P/2]

        def pair_scale(t, by=1.0):  # each channel gets its pair's |even| + |odd| (times by)
            pairs = t.unflatten(-1, (n, -1, 2)).abs().sum(-1) * by
            return pairs[..., None].expand(*t.shape[:-1], n, D // n // 2, 2).flatten(-3)
        h_new = reference.phase_rotate(h + a, theta.detach().double(), n)
        h_new_scale = pair_scale(h.abs() + a.abs(), grow)
    else:
        h_new = h + a
        h_new_scale = h.abs() + a.abs()
    hs = h_new.unflatten(-1, (n, -1))
    gs = (dn * w).unflatten(-1, (n, -1))
    r = torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + eps)

    def per_phase(t, f):
        return f(t.unflatten(-1, (n, -1))).flatten(-2)

    normed = (per_phase(h_new_scale, lambda t: t * r) * w.abs(), 2 * (hs.abs() * r).flatten(-2) * w.abs())
    d_cancel = (r.pow(3) * hs.abs() * (gs * hs).abs().mean(-1, keepdim=True)).flatten(-2)
    d_scale = dy.abs() + (r * gs.abs()).flatten(-2) + d_cancel
    d_stored = (r * gs.abs()).flatten(-2) + 5 * d_cancel

    def over_rows(terms, *dims):
        return terms.reshape(-1, *dims).pow(2).sum(0).sqrt() if len(dims) == 1 else \
            terms.reshape(-1, *dims).pow(2).sum((0, 1)).sqrt()
    dw = (over_rows(dn * per_phase(h_new_scale, lambda t: t * r), D), 2 * over_rows(dn * (hs.abs() * r).flatten(-2), D))
    if not rotate:
        return {"h_new": (h_new_scale, 0.0), "normed": normed, "dh": (d_scale, d_stored), "dweight": dw}
    d_pairs = d_scale.unflatten(-1, (n, -1, 2)).sum(-1)
    d_stored_pairs = d_stored.unflatten(-1, (n, -1, 2)).sum(-1)
    dtheta = (over_rows(d_pairs * h_new_scale.unflatten(-1, (n, -1, 2)).amax(-1), *grow.shape),
              over_rows((d_pairs + d_stored_pairs) * h_new.unflatten(-1, (n, -1, 2)).abs().sum(-1), *grow.shape))
    return {"h_new": (h_new_scale, 0.0), "normed": normed,
            "dh": (pair_scale(d_scale, grow), pair_scale(d_stored)), "dweight": dw, "dtheta": dtheta}


def check_parity(name, inputs, n):
    """Outputs and every gradient against the float64 reference of the same inputs, element by element."""
    fused, ref = OPS[name]
    h, a, theta, w = inputs
    out, (dh, da, dtheta, dw) = grads(lambda *t: fused(*t, n), inputs)
    out_ref, (dh_ref, da_ref, dtheta_ref, dw_ref) = exact_grads(lambda *t: ref(*t, n), inputs, out)
    assert [t.dtype for t in out] == [h.dtype, h.dtype]
    assert (dh.dtype, da.dtype, dw.dtype) == (h.dtype, a.dtype, w.dtype)
    if name == "add_norm":
        assert dtheta is None and dtheta_ref is None
    size = magnitudes(name, h, a, theta, w, *output_grads(out), n)

    def check(label, actual, expected, key=None):
        scale, stored = size[key or label]
        assert_close_to_exact(actual, expected, scale, stored, stored_dtype=h.dtype, name=label)
    check("h_new", out[0], out_ref[0])
    check("normed", out[1], out_ref[1])
    # one gradient reaches h and a; each is checked against the reference's own
    check("dh", dh, dh_ref)
    check("da", da, da_ref, "dh")
    check("dweight", dw, dw_ref)
    if dtheta is not None:
        check("dtheta", dtheta, dtheta_ref)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_parity_forward_backward(name, shape, n, dtype):
    check_parity(name, make(shape, n, dtype), n)


@pytest.mark.parametrize("name", OPS)
def test_mixed_precision_autocast_style(name):
    """float32 residual stream h, bfloat16 branch output a, float32 parameters."""
    check_parity(name, make((300, 48), 3, torch.float32, param_dtype=torch.float32, a_dtype=torch.bfloat16), 3)


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


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("n", [1, 3])
def test_gradcheck_across_row_blocks_and_vector_tails(name, n):
    """260 rows cross the 128-row blocks of the parameter reductions; a phase
    of 2*(16*2+3) = 70 channels runs the vector loops and a tail."""
    fused, _ = OPS[name]
    h, a, theta, w = make((2, 130, 70 * n), n, torch.float64)
    if name == "add_rotate_norm":
        assert torch.autograd.gradcheck(lambda *t: fused(*t, n), (h, a, theta, w), fast_mode=True)
    else:
        assert torch.autograd.gradcheck(lambda h, a, w: fused(h, a, None, w, n), (h, a, w), fast_mode=True)


def test_opcheck():
    h, a, theta, w = make((6, 24), 3, torch.float32)
    assert all(t.requires_grad for t in (h, a, theta, w))  # else opcheck skips its autograd checks
    torch.library.opcheck(torch.ops.tpt.add_rotate_norm.default, (h, a, theta, w, 3, 1e-6))
    torch.library.opcheck(torch.ops.tpt.add_norm.default, (h, a, w, 3, 1e-6))
    torch.library.opcheck(torch.ops.tpt.add_norm.default, (h, a.detach().bfloat16().requires_grad_(), w, 3, 1e-6))
    # the backward ops have no autograd of their own: plain inputs
    h, a, theta, w = (t.detach() for t in (h, a, theta, w))
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
    out_eager, g_eager = grads(body(fused), inputs)
    out_ref, g_ref = grads(body(ref), inputs)
    assert_close(out, out_ref)
    # the compiled graph runs the same kernels as eager: the same bits
    assert torch.equal(out, out_eager)
    for x, y in zip(g, g_eager, strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("name", OPS)
def test_bitwise_deterministic_across_runs_and_threads(name):
    fused, _ = OPS[name]
    inputs = make((1000, 384), 3, torch.float32)
    runs = []
    for threads in (1, 2, 3, 3):
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
     r"tpt.add_rotate_norm: the phase width P=5 \(D=15, n_phases=3\) is odd"),
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
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.add_rotate_norm_forward: argument 'a' has shape \[2, 12\]; expected the shape of h"):
        tpt_ops.numpy.add_rotate_norm_forward(h, h[:2], torch.randn(2).numpy(), torch.randn(12).numpy(), 3)
    with pytest.raises(ValueError, match=r"argument 'theta' must have shape \[2\], got \[3\]"):
        tpt_ops.numpy.add_rotate_norm_forward(h, h, torch.randn(3).numpy(), torch.randn(12).numpy(), 3)
    with pytest.raises(TypeError, match=r"argument 'h' has dtype int32; expected float32 or float64"):
        tpt_ops.numpy.add_norm_forward(h.astype("int32"), h, torch.randn(12).numpy(), 3)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_eps(name, eps):
    h, a, theta, w = torch.randn(4, 12), torch.randn(4, 12), torch.randn(2), torch.randn(12)
    msg = rf"eps must be finite and > 0, got {eps:g}"
    if name == "add_rotate_norm":
        assert_rejected(lambda: tpt_ops.add_rotate_norm(h, a, theta, w, 3, eps), rf"tpt.add_rotate_norm: {msg}")
        with pytest.raises(ValueError, match=rf"tpt_ops.numpy.add_rotate_norm_forward: {msg}"):
            tpt_ops.numpy.add_rotate_norm_forward(h.numpy(), a.numpy(), theta.numpy(), w.numpy(), 3, eps)
    else:
        assert_rejected(lambda: tpt_ops.add_norm(h, a, w, 3, eps), rf"tpt.add_norm: {msg}")
        with pytest.raises(ValueError, match=rf"tpt_ops.numpy.add_rotate_norm_forward: {msg}"):
            tpt_ops.numpy.add_norm_forward(h.numpy(), a.numpy(), w.numpy(), 3, eps)


def test_numpy_casts_parameters_and_refuses_mixed_precision_inputs():
    h, a, theta, w = (t.numpy() for t in (torch.randn(4, 12), torch.randn(4, 12), torch.randn(2), torch.randn(12)))
    out = tpt_ops.numpy.add_rotate_norm_forward(h, a, theta.astype("float64"), w.astype("float64"), 3)
    for t, ref in zip(out, tpt_ops.numpy.add_rotate_norm_forward(h, a, theta, w, 3)):
        assert t.dtype == "float32"
        assert (t == ref).all()
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.add_rotate_norm_forward: arguments 'h' and 'a' must both be "
                                        r"float64 or both not, got float32 and float64"):
        tpt_ops.numpy.add_rotate_norm_forward(h, a.astype("float64"), theta, w, 3)


def test_compile_non_contiguous():
    h = torch.randn(48, 10).t().requires_grad_()
    a = torch.randn(48, 10).t().requires_grad_()
    theta = torch.rand(8, requires_grad=True)
    w = torch.randn(48, requires_grad=True)
    assert_compile_matches_eager(lambda h, a, th, w: tuple(t * 2 + 1 for t in tpt_ops.add_rotate_norm(h, a, th, w, 3)),
                                 (h, a, theta, w))
    assert_compile_matches_eager(lambda h, a, w: tuple(t * 2 + 1 for t in tpt_ops.add_norm(h, a, w, 3)), (h, a, w))


# ---- second derivatives: a differentiable composition under create_graph=True, the C kernel otherwise ----

def _block_inputs(seed, n=3, dtype=torch.float64, a_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 3, 12, generator=gen).to(dtype).requires_grad_()
    a = torch.randn(2, 3, 12, generator=gen).to(a_dtype or dtype).requires_grad_()
    theta = torch.randn(12 // n // 2, generator=gen).to(torch.float64 if dtype == torch.float64 else torch.float32)
    w = (1 + torch.randn(12, generator=gen)).to(theta.dtype)
    return h, a, theta.requires_grad_(), w.requires_grad_()


@pytest.mark.parametrize("n", [1, 3])
def test_gradgradcheck_add_rotate_norm(n):
    """Exact second derivatives for h, a, theta and weight, from the saved h_new alone."""
    assert torch.autograd.gradgradcheck(lambda h, a, t, w: tpt_ops.add_rotate_norm(h, a, t, w, n),
                                        _block_inputs(5, n))


@pytest.mark.parametrize("n", [1, 3])
def test_gradgradcheck_add_norm(n):
    h, a, _, w = _block_inputs(6, n)
    assert torch.autograd.gradgradcheck(lambda h, a, w: tpt_ops.add_norm(h, a, w, n), (h, a, w))


def test_hessian_vector_product_matches_reference():
    """An HVP through both outputs (h_new and normed) agrees with the plain-PyTorch composition."""
    results = []
    for fn in (tpt_ops.add_rotate_norm, reference.add_rotate_norm):
        inputs = _block_inputs(7)
        h_new, normed = fn(*inputs, 3)
        loss = (h_new.sin() * normed).sum() + normed.pow(3).sum()
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        vector = [torch.ones_like(g) for g in first]
        results.append(torch.autograd.grad(first, inputs, vector))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("a_dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(a_dtype):
    """Without create_graph the backwards are torch.ops.tpt.add_*_backward, bit for bit, eager and compiled."""
    from helpers import compiled_backward_graph

    h, a, theta, w = _block_inputs(8, 3, torch.float32, a_dtype)
    gen = torch.Generator().manual_seed(9)
    dh_new, dnormed = torch.randn(2, 2, 3, 12, generator=gen)
    h_new, normed, rstd = torch.ops.tpt.add_rotate_norm(h, a, theta, w, 3, 1e-6)
    grads_ = torch.autograd.grad((h_new, normed), (h, a, theta, w), (dh_new, dnormed))
    dsum, dtheta, dw = torch.ops.tpt.add_rotate_norm_backward(dh_new, dnormed, h_new.detach(), theta.detach(),
                                                             w.detach(), rstd.detach(), 3)
    for actual, expected in zip(grads_, (dsum, dsum.to(a_dtype), dtheta, dw)):
        assert torch.equal(actual, expected)
    h_new, normed, rstd = torch.ops.tpt.add_norm(h, a, w, 3, 1e-6)
    grads_ = torch.autograd.grad((h_new, normed), (h, a, w), (dh_new, dnormed))
    dsum, dw = torch.ops.tpt.add_norm_backward(dh_new, dnormed, h_new.detach(), w.detach(), rstd.detach(), 3)
    for actual, expected in zip(grads_, (dsum, dsum.to(a_dtype), dw)):
        assert torch.equal(actual, expected)
    graph = compiled_backward_graph(
        lambda h, a, t, w: tpt_ops.add_norm(*tpt_ops.add_rotate_norm(h, a, t, w, 3), w, 3), (h, a, theta, w))
    assert "tpt.add_rotate_norm_backward" in graph and "tpt.add_norm_backward" in graph and "rsqrt" not in graph
