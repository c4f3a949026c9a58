"""horn_inject / horn_embedding: the C kernels against the plain-PyTorch reference (docs/ops/horn.md)."""
import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import (DTYPES, assert_close, assert_close_to_exact, assert_compile_matches_eager, assert_rejected,
                     exact_grads, grads, num_threads, output_grads)

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


def magnitudes(x, dy, offset):
    """Per element, the size of the terms summed into y = x - mean(x) + r(p) and
    dx = dy - mean(dy) (assert_close_to_exact's scale), float64."""
    x, dy = x.detach().double(), dy.double()
    r = reference.horn_profile(torch.arange(x.shape[-2], dtype=torch.float64) + offset)[:, None]
    return x.abs() + x.abs().mean(-1, keepdim=True) + r, dy.abs() + dy.abs().mean(-1, keepdim=True)


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", SHAPES)
def test_inject_parity(shape, n, dtype, offset):
    x = make_x(shape, dtype)
    y, (dx,) = grads(lambda x: tpt_ops.horn_inject(x, n, offset), (x,))
    y_ref, (dx_ref,) = exact_grads(lambda x: reference.horn_inject(x, n, offset), (x,), y)
    assert y.dtype == dtype and dx.dtype == dtype
    y_scale, dx_scale = magnitudes(x, output_grads(y)[0], offset)
    assert_close_to_exact(y, y_ref, y_scale, name="y")
    assert_close_to_exact(dx, dx_ref, dx_scale, name="dx")


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids_shape,vocab,D,n", [((9,), 11, 12, 3), ((3, 17), 50, 96, 3), ((2, 65), 7, 768, 6),
                                                 ((1, 5), 300, 4096, 4), ((4, 8), 5, 16, 1)])
def test_embedding_parity(ids_shape, vocab, D, n, dtype, offset):
    ids, table = make_embedding(ids_shape, vocab, D, dtype)
    y, (dt,) = grads(lambda t: tpt_ops.horn_embedding(ids, t, n, offset), (table,))
    y_ref, (dt_ref,) = exact_grads(lambda t: reference.horn_embedding(ids, t, n, offset), (table,), y)
    assert y.dtype == table.dtype and y.shape == (*ids_shape, D) and dt.dtype == table.dtype
    y_scale, row_scale = magnitudes(table[ids], output_grads(y)[0], offset)
    assert_close_to_exact(y, y_ref, y_scale, name="y")
    # the table gradient sums the rows of dy - mean(dy) over repeated ids
    dt_scale = torch.zeros(vocab, D, dtype=torch.float64).index_add_(
        0, ids.flatten(), row_scale.reshape(-1, D).pow(2)).sqrt()
    assert_close_to_exact(dt, dt_ref, dt_scale, name="dtable")



@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_gradient_of_a_dominant_id(dtype):
    """A byte vocabulary where id 0 is 70% of 2000 tokens: its tokens fill 10 of the 16 fixed 128-token blocks, and
    id 1's (222) span three, so their rows are sums of several block partials combined in order: close to
    the exact sum, the same bits for 1, 2 and 3 threads, and the NumPy face's bits."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.where(torch.rand(4, 500, generator=gen) < 0.7, 0, torch.randint(2, 256, (4, 500), generator=gen))
    ids.view(-1)[torch.arange(5, 2000, 9)] = 1
    table = torch.randn(256, 96, generator=gen).to(dtype).requires_grad_()
    runs = []
    for threads in (1, 2, 3):
        with num_threads(threads):
            runs.append(grads(lambda t: tpt_ops.horn_embedding(ids, t, 3), (table,)))
    for y, (dt,) in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(dt, runs[0][1][0])
    y, (dt,) = runs[0]
    _, (dt_ref,) = exact_grads(lambda t: reference.horn_embedding(ids, t, 3), (table,), y)
    _, row_scale = magnitudes(table[ids], output_grads(y)[0], 0)
    dt_scale = torch.zeros(256, 96, dtype=torch.float64).index_add_(
        0, ids.flatten(), row_scale.reshape(-1, 96).pow(2)).sqrt()
    assert_close_to_exact(dt, dt_ref, dt_scale, name="dtable")

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
    """docs/ops/horn.md: the sum over phases of the per-phase means of y equals N * r(p + offset)."""
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


def test_gradcheck_across_row_blocks_and_vector_tails():
    """260 tokens cross the 128-row blocks; rows of 3*70 = 210 channels run
    the vector loops and a tail; repeated ids sum into the table gradient."""
    x = make_x((2, 130, 210), torch.float64)
    assert torch.autograd.gradcheck(lambda x: tpt_ops.horn_inject(x, 3, 7), (x,), fast_mode=True)
    ids, table = make_embedding((2, 130), 40, 210, torch.float64)
    assert torch.autograd.gradcheck(lambda t: tpt_ops.horn_embedding(ids, t, 3, 2), (table,), fast_mode=True)


def test_opcheck():
    x = torch.randn(2, 5, 24, requires_grad=True)  # a plain input would skip opcheck's autograd checks
    torch.library.opcheck(torch.ops.tpt.horn_inject.default, (x, 3, 4))
    ids, table = make_embedding((3, 6), 10, 24, torch.float32)
    assert table.requires_grad
    torch.library.opcheck(torch.ops.tpt.horn_embedding.default, (ids, table, 3, 1))
    # the backward ops have no autograd of their own: plain inputs
    torch.library.opcheck(torch.ops.tpt.horn_inject_backward.default, (x.detach(), 3))
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
    for threads in (1, 2, 3, 3):
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
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.horn_embedding_forward: argument 'ids' has dtype float64; expected an integer dtype"):
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
    (bad_inject, {"offset": 2**63 - 1}, r"tpt.horn_inject: offset=9223372036854775807 with T=4 positions overflows int64", True),
    (bad_inject, {"offset": 2**63 - 4}, r"tpt.horn_inject: offset=9223372036854775804 with T=4 positions overflows int64", True),
    (bad_embedding, {"offset": 2**63 - 2}, r"tpt.horn_embedding: offset=9223372036854775806 with T=3 positions overflows int64", True),
]


@pytest.mark.parametrize("call,kwargs,msg,fake", BAD)
def test_bad_input(call, kwargs, msg, fake):
    assert_rejected(lambda: call(**kwargs), msg, check_fake=fake)


def test_largest_offset_that_fits():
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    y = tpt_ops.horn_inject(x, 3, 2**63 - 5)  # last position 2**63 - 2, p + 1 = 2**63 - 1
    assert torch.isfinite(y).all()


def test_numpy_offset_overflow():
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.horn_inject_forward: offset=9223372036854775807 with T=4 "
                                         r"positions overflows int64"):
        tpt_ops.numpy.horn_inject_forward(np.zeros((4, 12), np.float32), 3, 2**63 - 1)
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.horn_embedding_forward: offset=9223372036854775806 with T=2"):
        tpt_ops.numpy.horn_embedding_forward(np.array([0, 1]), np.zeros((5, 12), np.float32), 3, 2**63 - 2)


def test_compile_non_contiguous():
    x = torch.randn(48, 7, 2).permute(2, 1, 0).requires_grad_()  # [2, 7, 48]
    assert not x.is_contiguous()
    assert_compile_matches_eager(lambda x: tpt_ops.horn_inject(x, 3, 5) * 2 + 1, (x,))


# ---- second derivatives: a differentiable composition under create_graph=True, the C kernel otherwise ----

def test_gradgradcheck():
    """create_graph=True gradients are differentiable: of x for horn_inject, of the table for horn_embedding
    (repeated ids included)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 12, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: tpt_ops.horn_inject(x, 3, 2), (x,))
    table = torch.randn(6, 12, generator=gen, dtype=torch.float64).requires_grad_()
    ids = torch.tensor([[0, 2, 2, 5], [5, 1, 0, 0]])
    assert torch.autograd.gradgradcheck(lambda t: tpt_ops.horn_embedding(ids, t, 3, 1), (table,))
    assert torch.autograd.gradgradcheck(lambda t: tpt_ops.horn_embedding(ids.int()[0], t, 3), (table,))


def test_gradient_penalty_through_the_embedding_table():
    """d/dtable of |d loss/d table|^2 matches the reference's (a backward without a graph gives zeros)."""
    ids = torch.tensor([[0, 2, 2, 3]])
    results = []
    for fn in (tpt_ops.horn_embedding, reference.horn_embedding):
        table = torch.randn(4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64).requires_grad_()
        loss = (fn(ids, table, 3, 0) ** 3).sum()
        (g,) = torch.autograd.grad(loss, table, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), table)[0])
    assert results[0].abs().max() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_order_backward_is_the_c_kernel(dtype):
    """Without create_graph the backwards are torch.ops.tpt.horn_*_backward, bit for bit, eager and compiled."""
    from helpers import compiled_backward_graph

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 24, generator=gen).to(dtype).requires_grad_()
    dy = torch.randn(4, 5, 24, generator=gen).to(dtype)
    (dx,) = torch.autograd.grad(tpt_ops.horn_inject(x, 3, 1), x, dy)
    assert torch.equal(dx, torch.ops.tpt.horn_inject_backward(dy, 3))
    table = torch.randn(7, 24, generator=gen).requires_grad_()
    ids = torch.randint(0, 7, (4, 5), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = tpt_ops.horn_embedding(ids, table, 3, 0)
    (dtable,) = torch.autograd.grad(y, table, dy.to(y.dtype))
    assert torch.equal(dtable, torch.ops.tpt.horn_embedding_backward(dy.to(y.dtype), ids, 7, 3).to(table.dtype))
    graph = compiled_backward_graph(lambda x, t: tpt_ops.horn_inject(x, 3) + tpt_ops.horn_embedding(ids, t, 3),
                                    (x.detach().float().requires_grad_(), table))
    assert "tpt.horn_inject_backward" in graph and "tpt.horn_embedding_backward" in graph
    assert "index_add" not in graph
