"""qkv_rope: the fused C kernel against the plain-PyTorch reference (split, rotate-half RoPE, head-major)."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from tpt_ops.nn import RotaryEmbedding
from tpt_ops.nn.attention import apply_rotary_reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

op = torch.ops.tpt.qkv_rope.default
op_backward = torch.ops.tpt.qkv_rope_backward.default

SHAPES = [(1, 1, 1, 1, 2), (2, 5, 6, 3, 16), (3, 7, 4, 4, 8), (2, 130, 12, 4, 64)]  # (B, T, H, Hkv, hd)


def tables(T, hd, dtype=torch.float32, offset=0):
    """The model's RoPE rows of positions offset .. offset+T-1, float32 like its buffers (or cast)."""
    cos, sin_signed = RotaryEmbedding(hd, offset + T + 1)(offset, T)
    return cos.to(dtype), sin_signed.to(dtype)


def make(B, T, H, Hkv, hd, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, (H + 2 * Hkv) * hd, generator=gen).to(dtype).requires_grad_()


def table_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def magnitudes(x, cos, sin_signed, H, Hkv, douts):
    """Per element, |x cos| + |x_partner sin| for q, k, v and the same sum of the
    gradient's two terms for dqkv (assert_close_to_exact's scale), float64: the
    op is linear in x, so it is the reference on absolute values."""
    cos, sin_signed = cos.double().abs(), sin_signed.double().abs()
    x = x.detach().double().abs().requires_grad_()
    outs = reference.qkv_rope(x, cos, sin_signed, H, Hkv)
    (dx,) = torch.autograd.grad(outs, x, [d.abs() for d in douts])
    return [y.detach() for y in outs], dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_forward_backward(shape, dtype):
    B, T, H, Hkv, hd = shape
    x = make(*shape, dtype)
    cos, sin_signed = tables(T, hd, table_dtype(dtype), offset=3)
    out, (dx,) = grads(tpt_ops.qkv_rope, (x, cos, sin_signed, H, Hkv))
    out_ref, (dx_ref,) = exact_grads(reference.qkv_rope, (x, cos, sin_signed, H, Hkv), out)
    out_scale, dx_scale = magnitudes(x, cos, sin_signed, H, Hkv, output_grads(out))
    for y, y_ref, y_scale, heads, name in zip(out, out_ref, out_scale, (H, Hkv, Hkv), "qkv"):
        assert y.shape == (B, heads, T, hd) and y.dtype == dtype and y.is_contiguous()
        assert_close_to_exact(y, y_ref, y_scale, name=name)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close_to_exact(dx, dx_ref, dx_scale, name="dqkv")


def test_v_is_copied_exactly():
    x = make(2, 5, 6, 3, 16, torch.bfloat16).detach()
    cos, sin_signed = tables(5, 16)
    _, _, v = tpt_ops.qkv_rope(x, cos, sin_signed, 6, 3)
    assert torch.equal(v, x.unflatten(-1, (12, 16))[:, :, 9:].transpose(1, 2))


def test_backward_formula():
    """dx[j] = d[j] cos[t, j] + d[partner(j)] sin_signed[t, partner(j)]; dv copied back into dqkv."""
    B, T, H, Hkv, hd = 2, 3, 2, 1, 8
    cos, sin_signed = tables(T, hd, torch.float64)
    gen = torch.Generator().manual_seed(2)
    dq, dk, dv = (torch.randn(B, n, T, hd, generator=gen, dtype=torch.float64) for n in (H, Hkv, Hkv))
    dqkv = op_backward(dq, dk, dv, cos, sin_signed, H, Hkv)
    partner = torch.cat((torch.arange(hd // 2, hd), torch.arange(hd // 2)))

    def rope_t(d):
        return d * cos + d[..., partner] * sin_signed[:, partner]

    expected = torch.cat((rope_t(dq), rope_t(dk), dv), dim=1).transpose(1, 2).flatten(2)
    assert dqkv.shape == (B, T, (H + 2 * Hkv) * hd)
    assert_close(dqkv, expected)


def test_equals_previous_fused_attention_path():
    """The op equals the split + apply_rotary + transpose composition the fused attention used before,
    and the reference backend's separate textbook RoPE."""
    B, T, H, Hkv, hd = 2, 6, 6, 3, 16
    x = make(B, T, H, Hkv, hd, torch.float32).detach()
    cos, sin_signed = tables(T, hd, offset=4)

    def previous(qkv):
        qk, v = qkv.unflatten(-1, (H + 2 * Hkv, hd)).split((H + Hkv, Hkv), dim=2)
        x1, x2 = qk.chunk(2, dim=-1)
        rotated = (qk * cos[:, None, :] + torch.cat((x2, x1), dim=-1) * sin_signed[:, None, :]).to(qk.dtype)
        q, k = rotated.split((H, Hkv), dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def textbook(qkv):
        sin = sin_signed[:, hd // 2:].repeat(1, 2)
        q, k, v = qkv.unflatten(-1, (H + 2 * Hkv, hd)).split((H, Hkv, Hkv), dim=2)
        return (apply_rotary_reference(q, cos, sin).transpose(1, 2), apply_rotary_reference(k, cos, sin).transpose(1, 2),
                v.transpose(1, 2))

    out, (dx,) = grads(tpt_ops.qkv_rope, (x.requires_grad_(), cos, sin_signed, H, Hkv))
    for impl in (previous, textbook):
        out_ref, (dx_ref,) = grads(impl, (x,))
        for y, y_ref in zip(out, out_ref):
            assert_close(y, y_ref)
        assert_close(dx, dx_ref)


def test_non_contiguous():
    B, T, H, Hkv, hd = 2, 5, 2, 1, 8
    D = (H + 2 * Hkv) * hd
    cos, sin_signed = tables(T, hd, torch.float64)
    transposed = torch.randn(B, D, T, dtype=torch.float64).transpose(1, 2)  # [B, T, D], strided
    sliced = torch.randn(B, T, 2 * D, dtype=torch.float64)[..., ::2]
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        for y, y_ref in zip(tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), reference.qkv_rope(x, cos, sin_signed, H, Hkv)):
            assert_close(y, y_ref)
    # strided tables and output gradients
    big_cos, big_sin = tables(2 * T, hd, torch.float64)
    x = sliced.clone()
    for y, y_ref in zip(tpt_ops.qkv_rope(x, big_cos[::2], big_sin[::2], H, Hkv),
                        reference.qkv_rope(x, big_cos[::2], big_sin[::2], H, Hkv)):
        assert_close(y, y_ref)
    gen = torch.Generator().manual_seed(3)
    dq, dk, dv = (torch.randn(B, T, n, hd, generator=gen, dtype=torch.float64).transpose(1, 2) for n in (H, Hkv, Hkv))
    x.requires_grad_()
    expected = torch.autograd.grad(reference.qkv_rope(x, cos, sin_signed, H, Hkv), x, (dq, dk, dv))[0]
    assert_close(op_backward(dq, dk, dv, cos, sin_signed, H, Hkv), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_reads_strided_gradients_as_they_are(dtype):
    """Gradients in [B, T, heads, hd] memory (as SDPA's backward returns them),
    with a head-row stride, or with a strided last dim give the bits of their
    contiguous copies."""
    B, T, H, Hkv, hd = 2, 7, 4, 2, 16
    cos, sin_signed = tables(T, hd, torch.float32)
    gen = torch.Generator().manual_seed(5)

    def grad(n, layout):
        if layout == "bthd":
            return torch.randn(B, T, n, hd, generator=gen).to(dtype).transpose(1, 2)
        if layout == "padded_rows":
            return torch.randn(B, n, T, 2 * hd, generator=gen).to(dtype)[..., :hd]
        return torch.randn(B, n, T, 2 * hd, generator=gen).to(dtype)[..., ::2]  # last dim strided
    for layout in ("bthd", "padded_rows", "strided_last"):
        dq, dk, dv = grad(H, layout), grad(Hkv, layout), grad(Hkv, layout)
        assert not dq.is_contiguous()
        expected = op_backward(dq.contiguous(), dk.contiguous(), dv.contiguous(), cos, sin_signed, H, Hkv)
        assert torch.equal(op_backward(dq, dk, dv, cos, sin_signed, H, Hkv), expected)


def test_unused_outputs_get_zero_gradients():
    """Output gradients that are None (an unused q, k or v) count as zeros."""
    x = make(2, 5, 6, 3, 16, torch.float64)
    cos, sin_signed = tables(5, 16, torch.float64)
    q, k, v = tpt_ops.qkv_rope(x, cos, sin_signed, 6, 3)
    (dx,) = torch.autograd.grad(k.sum(), x)
    q_r, k_r, v_r = reference.qkv_rope(x, cos, sin_signed, 6, 3)
    (dx_ref,) = torch.autograd.grad(k_r.sum(), x)
    assert_close(dx, dx_ref)
    assert (dx[..., :96] == 0).all() and (dx[..., 144:] == 0).all()  # the q and v parts


def test_no_gradient_to_tables():
    x = make(1, 4, 2, 1, 8, torch.float64)
    cos, sin_signed = (t.requires_grad_() for t in tables(4, 8, torch.float64))
    q, k, v = tpt_ops.qkv_rope(x, cos, sin_signed, 2, 1)
    (q.sum() + k.sum() + v.sum()).backward()
    assert x.grad is not None and cos.grad is None and sin_signed.grad is None


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 2), (2, 3, 2, 1, 4)])
def test_gradcheck(shape):
    B, T, H, Hkv, hd = shape
    x = make(*shape, torch.float64)
    cos, sin_signed = tables(T, hd, torch.float64, offset=1)
    assert torch.autograd.gradcheck(lambda x: tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), (x,))


def test_gradcheck_across_row_blocks_and_vector_tails():
    """2 x 130 tokens cross the 128-row blocks; head_dim = 2*(16*2+3) = 70 runs the vector loops and a tail."""
    B, T, H, Hkv, hd = 2, 130, 2, 1, 70
    x = make(B, T, H, Hkv, hd, torch.float64)
    cos, sin_signed = tables(T, hd, torch.float64, offset=1)
    assert torch.autograd.gradcheck(lambda x: tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), (x,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    B, T, H, Hkv, hd = 2, 5, 4, 2, 8
    x = make(B, T, H, Hkv, hd, dtype)
    cos, sin_signed = (t.requires_grad_() for t in tables(T, hd))  # else opcheck skips its autograd checks
    assert x.requires_grad
    torch.library.opcheck(op, (x, cos, sin_signed, H, Hkv))
    cos, sin_signed = cos.detach(), sin_signed.detach()
    # the backward op has no autograd of its own: plain inputs
    gen = torch.Generator().manual_seed(1)
    dq, dk, dv = (torch.randn(B, n, T, hd, generator=gen).to(dtype) for n in (H, Hkv, Hkv))
    torch.library.opcheck(op_backward, (dq, dk, dv, cos, sin_signed, H, Hkv))
    strided = torch.randn(B, 64, T).to(dtype).transpose(1, 2)  # the fake outputs must be contiguous like the kernel's
    torch.library.opcheck(op, (strided.requires_grad_(), cos, sin_signed, H, Hkv))
    torch.library.opcheck(op_backward, (dq.transpose(2, 3).contiguous().transpose(2, 3), dk, dv, cos, sin_signed, H, Hkv))


def test_compile_fullgraph():
    B, T, H, Hkv, hd = 2, 8, 6, 3, 16
    x = make(B, T, H, Hkv, hd, torch.float32)
    cos, sin_signed = tables(T, hd)

    def loss(impl):
        return lambda x: tuple(y * 2 for y in impl(x, cos, sin_signed, H, Hkv))

    out, (dx,) = grads(torch.compile(loss(tpt_ops.qkv_rope), fullgraph=True), (x,))
    out_ref, (dx_ref,) = grads(loss(reference.qkv_rope), (x,))
    for y, y_ref in zip(out, out_ref):
        assert_close(y, y_ref)
    assert_close(dx, dx_ref)


def test_bitwise_deterministic_across_runs_and_threads():
    x = make(4, 250, 6, 3, 64, torch.float32)
    cos, sin_signed = tables(250, 64)
    runs = []
    for threads in (1, 2, 3, 3):
        with num_threads(threads):
            runs.append(grads(tpt_ops.qkv_rope, (x, cos, sin_signed, 6, 3)))
    for out, (dx,) in runs[1:]:
        assert all(torch.equal(y, y0) for y, y0 in zip(out, runs[0][0])) and torch.equal(dx, runs[0][1][0])


def test_empty():
    for B, T, H, Hkv, hd in [(0, 5, 2, 1, 8), (2, 0, 2, 1, 8), (2, 3, 2, 1, 0)]:
        x = make(B, T, H, Hkv, hd, torch.float32)
        cos, sin_signed = torch.zeros(T, hd), torch.zeros(T, hd)
        out, (dx,) = grads(tpt_ops.qkv_rope, (x, cos, sin_signed, H, Hkv))
        assert [y.shape for y in out] == [(B, n, T, hd) for n in (H, Hkv, Hkv)] and dx.shape == x.shape


def test_meta_device_gives_shapes():
    q, k, v = tpt_ops.qkv_rope(torch.empty(2, 5, 160, device="meta"), torch.empty(5, 16, device="meta"),
                               torch.empty(5, 16, device="meta"), 6, 2)
    assert q.device.type == "meta" and q.shape == (2, 6, 5, 16) and k.shape == v.shape == (2, 2, 5, 16)


def test_numpy_agrees_with_torch():
    B, T, H, Hkv, hd = 3, 7, 4, 2, 8
    x = make(B, T, H, Hkv, hd, torch.float32).detach()
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(B, n, T, hd, generator=gen) for n in (H, Hkv, Hkv)]
    for dtype in (torch.float32, torch.float64):
        cos, sin_signed = tables(T, hd, dtype)
        xn = x.to(dtype).numpy()
        outs = tpt_ops.numpy.qkv_rope_forward(xn, cos.numpy(), sin_signed.numpy(), H, Hkv)
        for yn, y in zip(outs, torch.ops.tpt.qkv_rope(x.to(dtype), cos, sin_signed, H, Hkv)):
            assert yn.dtype == np.dtype(str(dtype).replace("torch.", ""))
            np.testing.assert_array_equal(yn, y.numpy())
        dn = [g.to(dtype) for g in grads_out]
        dxn = tpt_ops.numpy.qkv_rope_backward(*(g.numpy() for g in dn), cos.numpy(), sin_signed.numpy(), H, Hkv)
        np.testing.assert_array_equal(dxn, op_backward(*dn, cos, sin_signed, H, Hkv).numpy())
    # float32 tables are cast to a float64 qkv's dtype
    cos, sin_signed = tables(T, hd)
    q64 = tpt_ops.numpy.qkv_rope_forward(x.double().numpy(), cos.numpy(), sin_signed.numpy(), H, Hkv)[0]
    np.testing.assert_array_equal(q64, torch.ops.tpt.qkv_rope(x.double(), cos, sin_signed, H, Hkv)[0].numpy())


COS, SIN = tables(5, 8)
BAD = [
    # (qkv, cos, sin_signed, n_q_heads, n_kv_heads, message)
    (torch.randn(2, 5, 32).int(), COS, SIN, 2, 1, r"tpt.qkv_rope: argument 'qkv' has dtype int32"),
    (torch.randn(5, 32), COS, SIN, 2, 1, r"tpt.qkv_rope: argument 'qkv' must be 3-d \[B, T, \(n_q_heads \+ "
                                         r"2\*n_kv_heads\)\*head_dim\], got \[5, 32\]"),
    (torch.randn(2, 5, 32), COS, SIN, 0, 1, r"tpt.qkv_rope: argument 'n_q_heads' must be >= 1, got 0"),
    (torch.randn(2, 5, 32), COS, SIN, 2, 0, r"tpt.qkv_rope: argument 'n_kv_heads' must be >= 1, got 0"),
    (torch.randn(2, 5, 30), COS, SIN, 2, 1, r"tpt.qkv_rope: the last dim of 'qkv' \(30\) is not divisible by "
                                            r"n_q_heads \+ 2\*n_kv_heads = 4"),
    (torch.randn(2, 5, 28), COS, SIN, 2, 1, r"tpt.qkv_rope: head_dim \(7\) is odd"),
    (torch.randn(2, 5, 32), COS[:4], SIN, 2, 1, r"tpt.qkv_rope: argument 'cos' must have shape \[T, head_dim\] = "
                                                r"\[5, 8\], got \[4, 8\]"),
    (torch.randn(2, 5, 32), COS, SIN[:, :4], 2, 1, r"tpt.qkv_rope: argument 'sin_signed' must have shape"),
    (torch.randn(2, 5, 32), COS.long(), SIN, 2, 1, r"tpt.qkv_rope: argument 'cos' has dtype int64"),
    (torch.randn(2, 5, 32), COS.to("meta"), SIN, 2, 1, r"tpt.qkv_rope: argument 'cos' is on a different device"),
    (torch.randn(2, 5, 32), COS, SIN.to("meta"), 2, 1, r"tpt.qkv_rope: argument 'sin_signed' is on a different device"),
]


@pytest.mark.parametrize("x,cos,sin_signed,H,Hkv,msg", BAD)
def test_bad_input(x, cos, sin_signed, H, Hkv, msg):
    assert_rejected(lambda: tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), msg)


def _grads(shapes, dtype=torch.float32):
    return [torch.randn(s).to(dtype) for s in shapes]


BAD_BACKWARD = [
    # (dq, dk, dv, cos, sin_signed, n_q_heads, n_kv_heads, message)
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8)]), COS, SIN, 3, 1,
     r"tpt.qkv_rope_backward: argument 'dq' has shape \[2, 2, 5, 8\]; expected \[B, n_q_heads, T, head_dim\] "
     r"with n_q_heads=3"),
    (*_grads([(2, 5, 16), (2, 1, 5, 8), (2, 1, 5, 8)]), COS, SIN, 2, 1, r"argument 'dq' has shape \[2, 5, 16\]"),
    (*_grads([(2, 2, 5, 8), (2, 2, 5, 8), (2, 1, 5, 8)]), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'dk' has shape \[2, 2, 5, 8\]; expected \[B, n_kv_heads, T, head_dim\] = "
     r"\[2, 1, 5, 8\]"),
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8), (2, 1, 4, 8)]), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'dv' has shape \[2, 1, 4, 8\]"),
    (*_grads([(2, 2, 5, 7), (2, 1, 5, 7), (2, 1, 5, 7)]), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: head_dim \(7\) is odd"),
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8)]), COS, SIN, 2, 0,
     r"tpt.qkv_rope_backward: argument 'n_kv_heads' must be >= 1"),
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8), (2, 1, 5, 8)]), COS[:, :4], SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'cos' must have shape \[T, head_dim\] = \[5, 8\], got \[5, 4\]"),
    (torch.randn(2, 2, 5, 8).long(), *_grads([(2, 1, 5, 8), (2, 1, 5, 8)]), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'dq' has dtype int64"),
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8)]), torch.randn(2, 1, 5, 8).int(), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'dv' has dtype int32"),
    (*_grads([(2, 2, 5, 8), (2, 1, 5, 8)]), torch.randn(2, 1, 5, 8, device="meta"), COS, SIN, 2, 1,
     r"tpt.qkv_rope_backward: argument 'dv' is on a different device"),
]


@pytest.mark.parametrize("dq,dk,dv,cos,sin_signed,H,Hkv,msg", BAD_BACKWARD)
def test_bad_input_backward(dq, dk, dv, cos, sin_signed, H, Hkv, msg):
    assert_rejected(lambda: torch.ops.tpt.qkv_rope_backward(dq, dk, dv, cos, sin_signed, H, Hkv), msg)


def test_numpy_bad_input():
    x = np.zeros((2, 5, 32), np.float32)
    cos, sin_signed = COS.numpy(), SIN.numpy()
    fwd, bwd = tpt_ops.numpy.qkv_rope_forward, tpt_ops.numpy.qkv_rope_backward
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.qkv_rope_forward: argument 'qkv' has dtype int64; expected float32 or float64"):
        fwd(x.astype(np.int64), cos, sin_signed, 2, 1)
    with pytest.raises(TypeError, match=r"argument 'cos' has dtype int32; expected float32 or float64"):
        fwd(x, cos.astype(np.int32), sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"argument 'qkv' must be 3-d"):
        fwd(x[0], cos, sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"argument 'n_kv_heads' must be >= 1, got 0"):
        fwd(x, cos, sin_signed, 2, 0)
    with pytest.raises(ValueError, match=r"the last dim of 'qkv' \(30\) is not divisible by n_q_heads \+ 2\*n_kv_heads = 4"):
        fwd(x[..., :30], cos, sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"head_dim \(7\) is odd"):
        fwd(x[..., :28], cos, sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"argument 'sin_signed' must have shape \[T, head_dim\] = \[5, 8\], got \[4, 8\]"):
        fwd(x, cos, sin_signed[:4], 2, 1)
    dq, dkv = np.zeros((2, 2, 5, 8), np.float32), np.zeros((2, 1, 5, 8), np.float32)
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.qkv_rope_backward: argument 'dk' has dtype int32; expected float32 or float64"):
        bwd(dq, dkv.astype(np.int32), dkv, cos, sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"argument 'dq' has shape \[2, 2, 5, 8\]; expected \[B, n_q_heads, T, head_dim\] with n_q_heads=3"):
        bwd(dq, dkv, dkv, cos, sin_signed, 3, 1)
    with pytest.raises(ValueError, match=r"argument 'dv' has shape \[2, 1, 4, 8\]; expected \[B, n_kv_heads, T, head_dim\] = \[2, 1, 5, 8\]"):
        bwd(dq, dkv, dkv[:, :, :4], cos, sin_signed, 2, 1)
    with pytest.raises(ValueError, match=r"argument 'cos' must have shape"):
        bwd(dq, dkv, dkv, cos[:4], sin_signed, 2, 1)


def test_numpy_casts_tables_to_the_input_precision():
    x = np.random.default_rng(0).standard_normal((2, 5, 32)).astype(np.float32)
    cos, sin_signed = COS.numpy(), SIN.numpy()
    out = tpt_ops.numpy.qkv_rope_forward(x, cos.astype(np.float64), sin_signed.astype(np.float64), 2, 1)
    for t, ref in zip(out, tpt_ops.numpy.qkv_rope_forward(x, cos, sin_signed, 2, 1)):
        assert t.dtype == np.float32
        np.testing.assert_array_equal(t, ref)


def test_compile_non_contiguous():
    B, T, H, Hkv, hd = 2, 5, 4, 2, 8
    qkv = torch.randn((H + 2 * Hkv) * hd, T, B).permute(2, 1, 0).requires_grad_()  # [B, T, W]
    cos, sin_signed = torch.rand(T, hd), torch.rand(T, hd)
    assert_compile_matches_eager(
        lambda x: tuple(t * 2 + 1 for t in tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv)), (qkv,))


# ---- second derivatives: a differentiable composition under create_graph=True, the C kernel otherwise ----

@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 2), (2, 3, 4, 2, 8)])
def test_gradgradcheck(shape):
    """create_graph=True gradients of qkv are differentiable (the tables are fixed buffers, no gradient)."""
    B, T, H, Hkv, hd = shape
    x = make(*shape, torch.float64)
    cos, sin_signed = tables(T, hd, torch.float64, offset=2)
    assert torch.autograd.gradgradcheck(lambda x: tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(dtype):
    """Without create_graph the backward is torch.ops.tpt.qkv_rope_backward, bit for bit, eager and compiled."""
    from helpers import compiled_backward_graph

    B, T, H, Hkv, hd = 2, 5, 4, 2, 8
    x = make(B, T, H, Hkv, hd, dtype)
    cos, sin_signed = tables(T, hd)
    outs = tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv)
    gen = torch.Generator().manual_seed(3)
    douts = [torch.randn(o.shape, generator=gen).to(dtype) for o in outs]
    (dx,) = torch.autograd.grad(outs, x, douts)
    assert torch.equal(dx, torch.ops.tpt.qkv_rope_backward(*douts, cos, sin_signed, H, Hkv))
    graph = compiled_backward_graph(lambda x: tpt_ops.qkv_rope(x, cos, sin_signed, H, Hkv), (x,))
    assert "tpt.qkv_rope_backward" in graph and "aten.cat" not in graph
