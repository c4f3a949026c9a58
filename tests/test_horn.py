"""horn_inject / horn_embedding: the C kernels against the plain-PyTorch reference (SPEC 1c)."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, assert_close, assert_rejected, grads, num_threads, assert_compile_matches_eager

SHAPES = [  # (x shape [..., T, D], n_phases)
    ((5, 12), 3),
    ((7, 16), 1),
    ((2, 5, 24), 2),
    ((3, 9, 96), 3),
    ((2, 3, 64), 4),
    ((1, 33, 72), 6),
    ((2, 3, 4096), 4),
    ((4, 129, 768), 3),
]


def make_x(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2 + 0.3).to(dtype).requires_grad_()


def make_embedding(ids_shape, vocab, D, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, ids_shape, generator=gen)
    table = torch.randn(vocab, D, generator=gen).to(dtype).requires_grad_()
    return ids, table


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_inject_parity(shape, n, dtype, offset):
    x = make_x(shape, dtype)
    y, (dx,) = grads(lambda x: tpt_ops.horn_inject(x, n, offset), (x,))
    y_ref, (dx_ref,) = grads(lambda x: reference.horn_inject(x, n, offset), (x,))
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids_shape,vocab,D,n", [((9,), 11, 12, 3), ((3, 17), 50, 96, 3), ((2, 65), 7, 768, 6),
                                                 ((1, 5), 300, 4096, 4), ((4, 8), 5, 16, 1)])
def test_embedding_parity(ids_shape, vocab, D, n, dtype, offset):
    ids, table = make_embedding(ids_shape, vocab, D, dtype)
    y, (dt,) = grads(lambda t: tpt_ops.horn_embedding(ids, t, n, offset), (table,))
    y_ref, (dt_ref,) = grads(lambda t: reference.horn_embedding(ids, t, n, offset), (table,))
    assert y.dtype == table.dtype and y.shape == (*ids_shape, D)
    assert_close(y, y_ref)
    # the table gradient sums over repeated ids: compare relative to its scale
    rtol = {torch.bfloat16: 3e-2, torch.float16: 3e-3, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    scale = dt_ref.float().abs().max().item()
    torch.testing.assert_close(dt.float(), dt_ref.float(), rtol=rtol, atol=rtol * scale)
    assert dt.dtype == table.dtype


def test_int32_ids():
    ids, table = make_embedding((3, 10), 20, 24, torch.float32)
    assert torch.equal(tpt_ops.horn_embedding(ids.int(), table, 3), tpt_ops.horn_embedding(ids, table, 3))


def test_float32_table_with_bfloat16_autocast():
    """Embedding is not autocast: a float32 table gives float32 output and gradient."""
    ids, table = make_embedding((2, 16), 30, 48, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (dt,) = grads(lambda t: tpt_ops.horn_embedding(ids, t, 3), (table,))
    y_ref, (dt_ref,) = grads(lambda t: reference.horn_embedding(ids, t, 3), (table,))
    assert y.dtype == torch.float32 and dt.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(dt, dt_ref)


def test_non_contiguous():
    x = torch.randn(48, 10, dtype=torch.float64).t()  # [10, 48]
    assert_close(tpt_ops.horn_inject(x, 3, 5), reference.horn_inject(x, 3, 5))
    x3 = torch.randn(2, 7, 96, dtype=torch.float64)[:, :, ::2]
    assert_close(tpt_ops.horn_inject(x3, 4), reference.horn_inject(x3, 4))
    ids = torch.randint(0, 9, (6, 4)).t()  # [4, 6], strided
    table = torch.randn(24, 9, dtype=torch.float64).t()  # [9, 24], strided
    assert_close(tpt_ops.horn_embedding(ids, table, 3, 2), reference.horn_embedding(ids, table, 3, 2))


@pytest.mark.parametrize("offset", [0, 1000])
@pytest.mark.parametrize("n", [1, 3, 6])
def test_diagnostic_phase_means_sum_to_n_r(n, offset):
    """SPEC: the sum over phases of the per-phase means of y equals N * r(p + offset)."""
    x = torch.randn(2, 50, 6 * n, dtype=torch.float64) * 5
    y = tpt_ops.horn_inject(x, n, offset)
    phase_means = y.unflatten(-1, (n, -1)).mean(-1).sum(-1)  # [2, 50]
    p = torch.arange(50, dtype=torch.float64) + offset
    torch.testing.assert_close(phase_means, (n / (p + 1)).expand(2, 50), rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x = make_x((2, 5, 12), torch.float64)
    assert torch.autograd.gradcheck(lambda x: tpt_ops.horn_inject(x, 3, 7), (x,))
    ids = torch.tensor([[1, 2, 1, 6, 1], [0, 0, 3, 1, 2]])  # repeated ids
    _, table = make_embedding((1,), 7, 12, torch.float64)
    assert torch.autograd.gradcheck(lambda t: tpt_ops.horn_embedding(ids, t, 3, 2), (table,))


def test_opcheck():
    x = torch.randn(2, 5, 24)
    torch.library.opcheck(torch.ops.tpt.horn_inject.default, (x, 3, 4))
    torch.library.opcheck(torch.ops.tpt.horn_inject_backward.default, (x, 3))
    ids, table = make_embedding((3, 6), 10, 24, torch.float32)
    torch.library.opcheck(torch.ops.tpt.horn_embedding.default, (ids, table, 3, 1))
    torch.library.opcheck(torch.ops.tpt.horn_embedding_backward.default, (torch.randn(3, 6, 24), ids, 10, 3))


def test_compile_fullgraph():
    x = make_x((2, 8, 48), torch.float32)
    ids, table = make_embedding((2, 8), 13, 48, torch.float32)

    def body(ops):
        return lambda x, t: ops.horn_inject(x, 3, 3) * 2 + ops.horn_embedding(ids, t, 3, 3)

    out, g = grads(torch.compile(body(tpt_ops), fullgraph=True), (x, table))
    out_ref, g_ref = grads(body(reference), (x, table))
    assert_close(out, out_ref)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


def test_bitwise_deterministic_across_runs_and_threads():
    """Many repeated ids: the table gradient must not depend on the thread count."""
    x = make_x((4, 256, 384), torch.float32)
    ids, table = make_embedding((8, 512), 50, 384, torch.float32)
    runs = []
    for threads in (1, 2, 2):
        with num_threads(threads):
            y, (dx,) = grads(lambda x: tpt_ops.horn_inject(x, 3, 5), (x,))
            e, (dt,) = grads(lambda t: tpt_ops.horn_embedding(ids, t, 3), (table,))
        runs.append((y, dx, e, dt))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_empty():
    for shape in [(0, 12), (2, 0, 12), (0, 4, 12)]:
        x = make_x(shape, torch.float32)
        y, (dx,) = grads(lambda x: tpt_ops.horn_inject(x, 3), (x,))
        assert y.shape == shape and dx.shape == shape
    for ids_shape in [(0,), (2, 0), (0, 5)]:
        ids, table = make_embedding(ids_shape, 6, 12, torch.float32)
        y, (dt,) = grads(lambda t: tpt_ops.horn_embedding(ids, t, 3), (table,))
        assert y.shape == (*ids_shape, 12)
        assert torch.equal(dt, torch.zeros(6, 12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_agrees_with_torch(dtype):
    x = make_x((3, 40, 48), dtype).detach()
    dy = torch.randn_like(x)
    np_ = tpt_ops.numpy
    assert torch.equal(torch.from_numpy(np_.horn_inject_forward(x.numpy(), 3, 9)), torch.ops.tpt.horn_inject(x, 3, 9))
    assert torch.equal(torch.from_numpy(np_.horn_inject_backward(dy.numpy(), 3)),
                       torch.ops.tpt.horn_inject_backward(dy, 3))
    ids, table = make_embedding((3, 40), 17, 48, dtype)
    table = table.detach()
    assert torch.equal(torch.from_numpy(np_.horn_embedding_forward(ids.numpy(), table.numpy(), 3, 2)),
                       torch.ops.tpt.horn_embedding(ids, table, 3, 2))
    assert torch.equal(torch.from_numpy(np_.horn_embedding_backward(dy.numpy(), ids.numpy(), 17, 3)),
                       torch.ops.tpt.horn_embedding_backward(dy, ids, 17, 3))


def test_numpy_bad_input():
    np_ = tpt_ops.numpy
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.horn_embedding_forward: argument 'ids' holds 9 at flat index 1"):
        np_.horn_embedding_forward(np.array([1, 9]), np.zeros((5, 12), np.float32), 3)
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.horn_embedding_forward: argument 'ids' must be an integer array"):
        np_.horn_embedding_forward(np.array([1.0]), np.zeros((5, 12), np.float32), 3)
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.horn_inject_forward: argument 'x' must be \[..., T, D\]"):
        np_.horn_inject_forward(np.zeros(12, np.float32), 3)
    with pytest.raises(ValueError, match=r"offset must be >= 0"):
        np_.horn_inject_forward(np.zeros((2, 12), np.float32), 3, -1)


def bad_inject(**kw):
    args = {"x": torch.randn(2, 4, 12), "n_phases": 3, "offset": 0, **kw}
    return tpt_ops.horn_inject(args["x"], args["n_phases"], args["offset"])


def bad_embedding(**kw):
    args = {"ids": torch.tensor([[0, 1, 2]]), "table": torch.randn(5, 12), "n_phases": 3, "offset": 0, **kw}
    return tpt_ops.horn_embedding(args["ids"], args["table"], args["n_phases"], args["offset"])


BAD = [  # (call, kwargs, message, caught by the fake kernel too)
    (bad_inject, {"x": torch.randn(12)}, r"tpt.horn_inject: argument 'x' must be \[..., T, D\]", True),
    (bad_inject, {"x": torch.randn(2, 4, 10)}, r"tpt.horn_inject: the last dim of 'x' \(D=10\) is not divisible by n_phases=3", True),
    (bad_inject, {"x": torch.randn(2, 4, 12).long()}, r"tpt.horn_inject: argument 'x' has dtype int64", True),
    (bad_inject, {"offset": -1}, r"tpt.horn_inject: offset must be >= 0", True),
    (bad_inject, {"n_phases": 0}, r"tpt.horn_inject: n_phases must be >= 1", True),
    (bad_embedding, {"ids": torch.tensor([[0, 5, 2]])}, r"tpt.horn_embedding: argument 'ids' holds 5 at flat index 1, out of range for a table of 5 rows", False),
    (bad_embedding, {"ids": torch.tensor([-1])}, r"tpt.horn_embedding: argument 'ids' holds -1 at flat index 0", False),
    (bad_embedding, {"ids": torch.tensor([0.0, 1.0])}, r"tpt.horn_embedding: argument 'ids' has dtype float32; expected int64 or int32", True),
    (bad_embedding, {"ids": torch.zeros(1, 2, 3, dtype=torch.long)}, r"tpt.horn_embedding: argument 'ids' must be \[T\] or \[B, T\]", True),
    (bad_embedding, {"table": torch.randn(5, 12, 1)}, r"tpt.horn_embedding: argument 'table' must be \[V, D\]", True),
    (bad_embedding, {"table": torch.randn(5, 10)}, r"tpt.horn_embedding: the last dim of 'table' \(D=10\) is not divisible", True),
    (bad_embedding, {"offset": -3}, r"tpt.horn_embedding: offset must be >= 0", True),
]


@pytest.mark.parametrize("call,kwargs,msg,fake", BAD)
def test_bad_input(call, kwargs, msg, fake):
    assert_rejected(lambda: call(**kwargs), msg, check_fake=fake)


def test_compile_non_contiguous():
    x = torch.randn(48, 7, 2).permute(2, 1, 0).requires_grad_()  # [2, 7, 48]
    assert not x.is_contiguous()
    assert_compile_matches_eager(lambda x: tpt_ops.horn_inject(x, 3, 5) * 2 + 1, (x,))
