"""moe_route, moe_permute, moe_unpermute: the C kernels against an independent loop implementation written here
and against tpt_ops.reference (plain PyTorch)."""
import math

import numpy as np
import pytest
import torch

import tpt_ops
from tpt_ops import reference
from helpers import DTYPES, assert_close, assert_close_to_exact, assert_rejected, compute_dtype, num_threads

ROUTE_OUTPUTS = ("gates", "experts", "slots", "slot_token", "counts", "aux_loss", "z_loss")


# ---- an independent implementation: Python loops over tokens, choices and experts, in float64 ----

def loop_route(logits, k, capacity_factor=None, normalize=True, score="softmax", bias=None):
    """The routing written out step by step; differentiable in logits (float64) through gather and mean."""
    l = logits.double()
    M, E = l.shape
    s = torch.softmax(l, -1) if score == "softmax" else torch.sigmoid(l)
    selection = (s.detach() + (0 if bias is None else bias.double())).tolist()
    experts = [sorted(range(E), key=lambda e: (-selection[t][e], e))[:k] for t in range(M)]
    experts_t = torch.tensor(experts, dtype=torch.int64).reshape(M, k)
    gates = s.gather(1, experts_t)
    if normalize:
        gates = gates / gates.sum(-1, keepdim=True)
    capacity = None if capacity_factor is None else math.ceil(capacity_factor * M * k / E)
    counts = [0] * E
    kept = [[False] * k for _ in range(M)]
    for j in range(k):
        for t in range(M):
            e = experts[t][j]
            if capacity is None or counts[e] < capacity:
                counts[e] += 1
                kept[t][j] = True
    rows = [(t, j) for e in range(E) for t in range(M) for j in range(k) if kept[t][j] and experts[t][j] == e]
    slots = torch.full((M, k), -1, dtype=torch.int64)
    slot_token = torch.full((M * k,), -1, dtype=torch.int64)
    for a, (t, j) in enumerate(rows):
        slots[t, j], slot_token[a] = a, t
    kept_t = torch.tensor(kept, dtype=torch.bool).reshape(M, k)
    gates = torch.where(kept_t, gates, torch.zeros((), dtype=torch.float64))
    counts_t = torch.tensor(counts, dtype=torch.int64)
    fraction = counts_t.double() / max(1, len(rows))
    aux = E * (fraction * s.sum(0) / max(M, 1)).sum()
    z = torch.logsumexp(l, -1).pow(2).sum() / max(M, 1)
    return gates, experts_t, slots, slot_token, counts_t, aux, z


def loop_permute(x, slots, slot_token):
    buf = x.new_zeros((slot_token.numel(), x.shape[1]))
    rows = [x[t] if t >= 0 else x.new_zeros(x.shape[1]) for t in slot_token.tolist()]
    return torch.stack(rows) if rows else buf


def loop_unpermute(out, gates, slots, slot_token):
    M, k = slots.shape
    y = [sum((gates[t, j] * out[a] for j, a in enumerate(slots[t].tolist()) if a >= 0),
             out.new_zeros(out.shape[1])) for t in range(M)]
    return torch.stack(y) if y else out.new_zeros((0, out.shape[1]))


def make_logits(M, E, dtype, seed=0, quantum=1 / 32):
    """Logits on a grid of `quantum` (exact in every dtype for |l| < 4): two experts' scores are then equal
    or differ by far more than any rounding, so the selection is the same in every precision."""
    gen = torch.Generator().manual_seed(seed)
    l = (torch.randn(M, E, generator=gen) * 1.2).clamp(-3.9, 3.9)
    return (torch.round(l / quantum) * quantum).to(dtype)


# ---- moe_route ----

CONFIGS = [  # (E, k)
    (1, 1), (4, 1), (4, 2), (4, 4), (8, 2), (8, 4), (64, 1), (64, 2), (64, 4),
]


def route_grads(fn, logits, args, seed=0):
    """Outputs of fn(logits, *args) and d(sum of gates * G + aux * a + z * b)/dlogits for fixed G, a, b."""
    l = logits.detach().clone().requires_grad_()
    out = fn(l, *args)
    gen = torch.Generator().manual_seed(seed)
    # exact in every dtype the outputs may have, so both implementations see the same output gradients
    G = torch.randn(out[0].shape, generator=gen).double()
    a, b = 0.75, -0.375
    loss = (out[0].double() * G).sum() + a * out[5].double() + b * out[6].double()
    loss.backward()
    return out, l.grad, (G, a, b)


def route_grad_scale(logits, out, G, a, b, k, normalize, score):
    """Per element of dlogits, the size of the terms summed into it (assert_close_to_exact's scale)."""
    l = logits.double()
    M, E = l.shape
    p = torch.softmax(l, -1)
    s = p if score == "softmax" else torch.sigmoid(l)
    experts, slots, counts = out[1], out[2], out[4]
    dg = torch.where(slots >= 0, G, torch.zeros(()))
    chosen = s.gather(1, experts)
    if normalize:
        total = chosen.sum(-1, keepdim=True)
        dchosen = (dg.abs() + (dg * chosen / total).abs().sum(-1, keepdim=True)) / total
    else:
        dchosen = dg.abs()
    fraction = counts.double() / max(1, int(counts.sum()))
    ds = torch.zeros_like(s).scatter(1, experts, dchosen) + abs(a) * E * fraction / max(M, 1)
    lse = torch.logsumexp(l, -1, keepdim=True)
    z_term = abs(b) * 2 * lse.abs() / max(M, 1) * p
    if score == "softmax":
        return s * (ds + (ds * s).sum(-1, keepdim=True)) + z_term
    return ds * s * (1 - s) + z_term


def check_route(logits, k, capacity_factor=None, normalize=True, score="softmax", bias=None):
    args = (k, capacity_factor, normalize, score, bias)
    out, dl, (G, a, b) = route_grads(tpt_ops.moe_route, logits, args)
    exact, dl_exact, _ = route_grads(loop_route, logits.double(), args)
    ct = compute_dtype(logits.dtype)
    assert out[0].dtype == ct and out[5].dtype == logits.dtype and out[6].dtype == logits.dtype
    for name, actual, expected in zip(ROUTE_OUTPUTS[1:5], out[1:5], exact[1:5]):
        assert torch.equal(actual, expected), name
    assert_close_to_exact(out[0], exact[0], name="gates")
    assert_close_to_exact(out[5], exact[5], name="aux_loss")
    assert_close_to_exact(out[6], exact[6], name="z_loss")
    assert dl.dtype == logits.dtype
    scale = route_grad_scale(logits, exact, G, a, b, k, normalize, score)
    assert_close_to_exact(dl, dl_exact, scale, name="dlogits")
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,k", CONFIGS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_route_parity(E, k, capacity_factor, dtype):
    check_route(make_logits(150, E, dtype), k, capacity_factor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("E,k", [(8, 2), (64, 4)])
def test_route_scores_and_normalisation(E, k, normalize, score, dtype):
    check_route(make_logits(130, E, dtype, seed=1), k, 1.25, normalize, score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_route_matches_reference(capacity_factor, score, dtype):
    """Both route low-precision logits in float32: the same choices, float32 gates, losses in the logits' dtype."""
    logits = make_logits(200, 8, dtype, seed=2)
    bias = torch.linspace(-0.05, 0.05, 8)
    args = (2, capacity_factor, True, score, bias)
    out, dl, _ = route_grads(tpt_ops.moe_route, logits, args)
    ref, dl_ref, _ = route_grads(reference.moe_route, logits, args)
    for name, actual, expected in zip(ROUTE_OUTPUTS, out, ref):
        if expected.dtype == torch.int64:
            assert torch.equal(actual, expected), name
        else:
            assert_close(actual, expected.to(actual.dtype))
    assert_close(dl, dl_ref)


def test_capacity_drops_most_tokens():
    """C = ceil(0.05 * 256 * 2 / 8) = 4 slots per expert: 32 of 512 assignments kept, in priority order."""
    logits = make_logits(256, 8, torch.float32, seed=3)
    out = check_route(logits, 2, 0.05)
    gates, experts, slots, slot_token, counts = out[:5]
    assert counts.tolist() == [4] * 8 and int((slots >= 0).sum()) == 32
    assert torch.all((gates == 0) == (slots < 0))
    assert torch.all(slot_token[32:] == -1) and torch.all(slot_token[:32] >= 0)
    # every kept assignment is a first choice here: the first choices alone fill each expert
    assert torch.all(slots[:, 1] == -1)


def test_every_token_picks_the_same_expert():
    logits = make_logits(100, 4, torch.float32, seed=4)
    logits[:, 2] = 3.9  # expert 2 is everybody's first choice
    out = check_route(logits, 2, 1.0)  # C = ceil(100 * 2 / 4) = 50
    gates, experts, slots, slot_token, counts = out[:5]
    assert torch.all(experts[:, 0] == 2)
    assert counts[2] == 50
    assert torch.all(slots[:50, 0] >= 0) and torch.all(slots[50:, 0] == -1)  # by token index
    assert slot_token[int(counts[:2].sum()):int(counts[:3].sum())].tolist() == list(range(50))
    check_route(logits, 2, None)  # dropless: one segment holds every token


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_ties_go_to_the_lower_expert(score):
    logits = torch.zeros(5, 6)
    logits[1, 3:] = 1.0  # experts 3, 4, 5 tie above the rest
    out = check_route(logits, 4, None, True, score)
    assert out[1][0].tolist() == [0, 1, 2, 3]
    assert out[1][1].tolist() == [3, 4, 5, 0]
    torch.testing.assert_close(out[0][0], torch.full((4,), 0.25))


def test_bias_changes_selection_not_gates():
    logits = make_logits(64, 8, torch.float32, seed=5)
    bias = torch.zeros(8)
    bias[7] = 10.0  # expert 7 wins every token's first choice
    gates, experts = tpt_ops.moe_route(logits, 2, None, False, "softmax", bias)[:2]
    unbiased_experts = tpt_ops.moe_route(logits, 2, None, False, "softmax", None)[1]
    assert torch.all(experts[:, 0] == 7) and not torch.equal(experts, unbiased_experts)
    s = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(gates.double(), s.gather(1, experts), rtol=1e-6, atol=1e-7)
    check_route(logits, 2, 1.0, True, "softmax", bias)


# ---- moe_permute, moe_unpermute ----

def routing(M=97, E=8, k=2, capacity_factor=0.8, seed=6):
    with torch.no_grad():
        return tpt_ops.moe_route(make_logits(M, E, torch.float32, seed=seed), k, capacity_factor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capacity_factor", [None, 0.3])
def test_permute_parity(dtype, capacity_factor):
    _, _, slots, slot_token, *_ = routing(capacity_factor=capacity_factor)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(97, 40, generator=gen).to(dtype).requires_grad_()
    buf = tpt_ops.moe_permute(x, slots, slot_token)
    assert torch.equal(buf, loop_permute(x.detach(), slots, slot_token))  # a copy: exact
    assert torch.equal(buf, reference.moe_permute(x.detach(), slots, slot_token))
    dbuf = torch.randn(buf.shape, generator=gen).to(dtype)
    (dx,) = torch.autograd.grad(buf, x, dbuf)
    d = dbuf.double()
    exact = loop_unpermute(d, torch.ones(slots.shape, dtype=torch.float64), slots, slot_token)
    scale = loop_unpermute(d.abs(), torch.ones(slots.shape, dtype=torch.float64), slots, slot_token)
    assert dx.dtype == dtype
    assert_close_to_exact(dx, exact, scale, name="dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capacity_factor", [None, 0.3])
def test_unpermute_parity(dtype, capacity_factor):
    gates, _, slots, slot_token, *_ = routing(capacity_factor=capacity_factor)
    gen = torch.Generator().manual_seed(8)
    gates = gates.to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
    out = torch.randn(slot_token.numel(), 40, generator=gen).to(dtype).requires_grad_()
    y = tpt_ops.moe_unpermute(out, gates, slots, slot_token)
    dy = torch.randn(y.shape, generator=gen).to(dtype)
    dout, dgates = torch.autograd.grad(y, (out, gates), dy)
    o, g, d = out.detach().double(), gates.detach().double().requires_grad_(), dy.double()
    o.requires_grad_()
    y_exact = loop_unpermute(o, g, slots, slot_token)
    dout_exact, dgates_exact = torch.autograd.grad(y_exact, (o, g), d)
    assert y.dtype == dtype and dout.dtype == dtype and dgates.dtype == gates.dtype
    assert_close_to_exact(y, y_exact, loop_unpermute(o.detach().abs(), g.detach().abs(), slots, slot_token), name="y")
    assert_close_to_exact(dout, dout_exact, name="dout")
    rows = o.detach()[slots.clamp(min=0)]
    dgates_scale = (d[:, None, :] * rows).pow(2).sum(-1).sqrt()
    assert_close_to_exact(dgates, dgates_exact, dgates_scale, name="dgates")
    assert torch.all(dgates[slots < 0] == 0)
    ref = reference.moe_unpermute(out.detach(), gates.detach(), slots, slot_token)
    assert_close(y, ref)


# ---- the three together: gradients, second derivatives, compile, determinism ----

def linear_expert(buf, w):
    return torch.tanh(buf @ w)


def pipeline(op_set, logits, x, w, k=2, capacity_factor=0.75, score="softmax", normalize=True, expert=linear_expert):
    """Route, dispatch, one 'expert' for every row, combine: what a MoE layer does with these ops."""
    gates, experts, slots, slot_token, counts, aux, z = op_set.moe_route(logits, k, capacity_factor, normalize,
                                                                          score, None)
    buf = op_set.moe_permute(x, slots, slot_token)
    return op_set.moe_unpermute(expert(buf, w), gates, slots, slot_token), aux, z


def pipeline_inputs(dtype=torch.float64, M=40, E=4, D=6, seed=9):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(M, E, generator=gen, dtype=dtype).requires_grad_()
    x = torch.randn(M, D, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(D, D, generator=gen, dtype=dtype).requires_grad_()
    return logits, x, w


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_gradcheck(score, normalize, capacity_factor):
    fn = lambda l, x, w: pipeline(tpt_ops, l, x, w, 2, capacity_factor, score, normalize)  # noqa: E731
    assert torch.autograd.gradcheck(fn, pipeline_inputs())


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_gradgradcheck(score):
    """create_graph=True gradients are exact second derivatives of all three ops."""
    fn = lambda l, x, w: pipeline(tpt_ops, l, x, w, 2, 0.6, score)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, pipeline_inputs(M=12))


def test_pipeline_matches_reference():
    inputs = pipeline_inputs(torch.float32, M=300, E=8, D=32)
    out = pipeline(tpt_ops, *inputs)
    grads = torch.autograd.grad(sum(o.sum() for o in out), inputs)
    ref = pipeline(reference, *inputs)
    ref_grads = torch.autograd.grad(sum(o.sum() for o in ref), inputs)
    for a, b in zip((*out, *grads), (*ref, *ref_grads)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_first_order_backward_is_the_c_kernel():
    """Without create_graph the backward runs torch.ops.tpt.*_backward, bit for bit."""
    logits, x, _ = pipeline_inputs(torch.float32)
    gates, experts, slots, slot_token, counts, aux, z = tpt_ops.moe_route(logits, 2, 0.75)
    dgates = torch.randn_like(gates)
    (dl,) = torch.autograd.grad((gates, aux, z), logits, (dgates, torch.tensor(0.3), torch.tensor(-0.2)))
    kernel = torch.ops.tpt.moe_route_backward(dgates, torch.tensor(0.3), torch.tensor(-0.2), logits.detach(),
                                              experts, gates.detach(), slots, counts, True, "softmax")
    assert torch.equal(dl, kernel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    logits, x, _ = pipeline_inputs(torch.float32, M=20, E=8)
    x = x.detach().to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.tpt.moe_route.default, (logits, 2, 0.75, True, "softmax", torch.zeros(8)))
    torch.library.opcheck(torch.ops.tpt.moe_route.default, (logits, 3, None, False, "sigmoid", None))
    gates, experts, slots, slot_token, counts, aux, z = (t.detach() for t in tpt_ops.moe_route(logits, 2, 0.75))
    torch.library.opcheck(torch.ops.tpt.moe_permute.default, (x, slots, slot_token))
    out = torch.randn(40, 6).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.tpt.moe_unpermute.default, (out, gates.requires_grad_(), slots, slot_token))
    # the backward ops have no autograd of their own: plain inputs
    gates = gates.detach()
    torch.library.opcheck(torch.ops.tpt.moe_route_backward.default,
                          (torch.randn_like(gates), torch.tensor(0.5), torch.tensor(0.1), logits.detach(), experts,
                           gates, slots, counts, True, "softmax"))
    torch.library.opcheck(torch.ops.tpt.moe_permute_backward.default, (out.detach(), slots))
    torch.library.opcheck(torch.ops.tpt.moe_unpermute_backward.default,
                          (x.detach(), out.detach(), gates, slots, slot_token))


def test_compile_fullgraph():
    inputs = pipeline_inputs(torch.float32, M=64, E=8, D=16)
    fn = lambda l, x, w: pipeline(tpt_ops, l, x, w)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    expected = fn(*inputs)
    actual = compiled(*inputs)
    grads = torch.autograd.grad(sum(o.sum() for o in actual), inputs)
    expected_grads = torch.autograd.grad(sum(o.sum() for o in expected), inputs)
    for a, b in zip((*actual, *grads), (*expected, *expected_grads)):
        assert_close(a, b)


def test_bitwise_deterministic_across_runs_and_threads():
    # an elementwise expert and output gradients of ones: torch's matmul and sum reduce in an order that may
    # depend on the thread count
    logits, x, _ = pipeline_inputs(torch.float32, M=1000, E=8, D=96)
    runs = []
    for threads in (1, 2, 3, 3):
        with num_threads(threads):
            out = pipeline(tpt_ops, logits, x, None, expert=lambda buf, _: torch.tanh(buf), capacity_factor=1.0)
            grads = torch.autograd.grad(out, (logits, x), [torch.ones_like(o) for o in out])
            runs.append((*out, *grads))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_empty():
    logits = torch.zeros(0, 4, requires_grad=True)
    x = torch.zeros(0, 8, requires_grad=True)
    gates, experts, slots, slot_token, counts, aux, z = tpt_ops.moe_route(logits, 2, 1.0)
    assert gates.shape == (0, 2) and slot_token.shape == (0,) and counts.tolist() == [0] * 4
    assert aux.item() == 0 and z.item() == 0
    buf = tpt_ops.moe_permute(x, slots, slot_token)
    y = tpt_ops.moe_unpermute(buf, gates, slots, slot_token)
    assert buf.shape == (0, 8) and y.shape == (0, 8)
    dl, dx = torch.autograd.grad(y.sum() + aux + z, (logits, x))
    assert dl.shape == (0, 4) and dx.shape == (0, 8)
    assert tpt_ops.moe_permute(torch.zeros(3, 0), *routing(M=3, E=4)[2:4]).shape == (6, 0)


# ---- the NumPy face ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_agrees_with_torch(dtype):
    logits = make_logits(77, 8, dtype, seed=10)
    bias = torch.linspace(0, 0.02, 8, dtype=dtype)
    out = torch.ops.tpt.moe_route(logits, 2, 0.9, True, "sigmoid", bias)
    np_out = tpt_ops.numpy.moe_route_forward(logits.numpy(), 2, 0.9, True, "sigmoid", bias.numpy())
    for a, b in zip(out, np_out):
        np.testing.assert_array_equal(b, a.numpy())
    gates, experts, slots, slot_token, counts = out[:5]
    dgates = torch.randn(gates.shape, dtype=dtype)
    dl = torch.ops.tpt.moe_route_backward(dgates, torch.tensor(0.5, dtype=dtype), torch.tensor(0.25, dtype=dtype),
                                          logits, experts, gates, slots, counts, True, "sigmoid")
    np_dl = tpt_ops.numpy.moe_route_backward(dgates.numpy(), 0.5, 0.25, logits.numpy(), experts.numpy(),
                                             gates.numpy(), slots.numpy(), counts.numpy(), True, "sigmoid")
    np.testing.assert_array_equal(np_dl, dl.numpy())
    x = torch.randn(77, 24, dtype=dtype)
    buf = torch.ops.tpt.moe_permute(x, slots, slot_token)
    np.testing.assert_array_equal(tpt_ops.numpy.moe_permute_forward(x.numpy(), slots.numpy(), slot_token.numpy()),
                                  buf.numpy())
    np.testing.assert_array_equal(tpt_ops.numpy.moe_permute_backward(buf.numpy(), slots.numpy()),
                                  torch.ops.tpt.moe_permute_backward(buf, slots).numpy())
    y = torch.ops.tpt.moe_unpermute(buf, gates, slots, slot_token)
    np.testing.assert_array_equal(
        tpt_ops.numpy.moe_unpermute_forward(buf.numpy(), gates.numpy(), slots.numpy(), slot_token.numpy()), y.numpy())
    dout, dg = torch.ops.tpt.moe_unpermute_backward(x, buf, gates, slots, slot_token)
    np_dout, np_dg = tpt_ops.numpy.moe_unpermute_backward(x.numpy(), buf.numpy(), gates.numpy(), slots.numpy(),
                                                          slot_token.numpy())
    np.testing.assert_array_equal(np_dout, dout.numpy())
    np.testing.assert_array_equal(np_dg, dg.numpy())


# ---- bad input ----

L = torch.randn(6, 4)
_, _, S, ST, *_ = routing(M=6, E=4, k=2, capacity_factor=0.5)

BAD_ROUTE = [
    # (args of moe_route, message)
    ((L, 0), r"tpt.moe_route: k must be in \[1, E\] with E=4 experts, got 0"),
    ((L, 5), r"tpt.moe_route: k must be in \[1, E\] with E=4 experts, got 5"),
    ((L, 2, 0.0), r"tpt.moe_route: capacity_factor must be finite and > 0 \(None: no capacity limit\), got 0"),
    ((L, 2, -1.0), r"capacity_factor must be finite and > 0 \(None: no capacity limit\), got -1"),
    ((L, 2, math.inf), r"capacity_factor must be finite and > 0 \(None: no capacity limit\), got inf"),
    ((L, 2, math.nan), r"capacity_factor must be finite and > 0 \(None: no capacity limit\), got nan"),
    ((L[0], 1), r"tpt.moe_route: argument 'logits' must be 2-d \[M, E\], got \[4\]"),
    ((L[None], 1), r"tpt.moe_route: argument 'logits' must be 2-d \[M, E\], got \[1, 6, 4\]"),
    ((L, 2, None, True, "softmin"), r"tpt.moe_route: score must be 'softmax' or 'sigmoid', got 'softmin'"),
    ((L, 2, None, True, "softmax", torch.zeros(5)), r"tpt.moe_route: argument 'bias' must have shape \[4\], got \[5\]"),
    ((L, 2, None, True, "softmax", torch.zeros(4, dtype=torch.int64)),
     r"tpt.moe_route: argument 'bias' has dtype int64; expected float32"),
    ((L.int(), 2), r"tpt.moe_route: argument 'logits' has dtype int32; expected float32"),
]


@pytest.mark.parametrize("args,msg", BAD_ROUTE)
def test_route_bad_input(args, msg):
    assert_rejected(lambda: tpt_ops.moe_route(*args), msg)


BAD_DATA = [
    (lambda: tpt_ops.moe_permute(torch.randn(5, 3), S, ST),
     r"tpt.moe_permute: argument 'x' must be 2-d \[M, D\] with M=6, got \[5, 3\]"),
    (lambda: tpt_ops.moe_permute(torch.randn(6, 3), S.int(), ST),
     r"tpt.moe_permute: argument 'slots' has dtype int32; expected int64"),
    (lambda: tpt_ops.moe_permute(torch.randn(6, 3), S.reshape(-1), ST),
     r"tpt.moe_permute: argument 'slots' must be 2-d \[M, k\], got \[12\]"),
    (lambda: tpt_ops.moe_permute(torch.randn(6, 3), S, ST[:5]),
     r"tpt.moe_permute: argument 'slot_token' must have shape \[12\], got \[5\]"),
    (lambda: tpt_ops.moe_unpermute(torch.randn(11, 3), torch.rand(6, 2), S, ST),
     r"tpt.moe_unpermute: argument 'out' must be 2-d \[M\*k, D\] with M\*k=12, got \[11, 3\]"),
    (lambda: tpt_ops.moe_unpermute(torch.randn(12, 3), torch.rand(6, 3), S, ST),
     r"tpt.moe_unpermute: argument 'gates' has shape \[6, 3\]; expected the shape of slots \[6, 2\]"),
    (lambda: tpt_ops.moe_unpermute(torch.randn(12, 3), torch.rand(6, 2).long(), S, ST),
     r"tpt.moe_unpermute: argument 'gates' has dtype int64; expected float32"),
]


@pytest.mark.parametrize("call,msg", BAD_DATA)
def test_data_path_bad_input(call, msg):
    assert_rejected(call, msg)


def test_index_values_are_checked():
    """Values the fake kernels cannot see: indices that did not come from moe_route never reach the kernels."""
    x = torch.randn(6, 3)
    bad_slots = S.clone()
    bad_slots[0, 0] = 12
    with pytest.raises(RuntimeError, match=r"tpt.moe_permute: argument 'slots' holds 12 at flat index 0, "
                                           r"out of range \[-1, M\*k=12\)"):
        tpt_ops.moe_permute(x, bad_slots, ST)
    bad_tokens = ST.clone()
    bad_tokens[0] = 6
    with pytest.raises(RuntimeError, match=r"argument 'slot_token' holds 6 at row 0, out of range \[-1, M=6\)"):
        tpt_ops.moe_permute(x, S, bad_tokens)
    swapped = ST.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    if not torch.equal(swapped, ST):
        with pytest.raises(RuntimeError, match="slots and slot_token must come from one moe_route call"):
            tpt_ops.moe_unpermute(torch.randn(12, 3), torch.rand(6, 2), S, swapped)
    with pytest.raises(ValueError, match=r"tpt_ops.numpy.moe_permute_forward: argument 'slots' holds 12"):
        tpt_ops.numpy.moe_permute_forward(x.numpy(), bad_slots.numpy(), ST.numpy())
    with pytest.raises(TypeError, match=r"tpt_ops.numpy.moe_permute_forward: argument 'slots' has dtype int32; "
                                        r"expected int64"):
        tpt_ops.numpy.moe_permute_forward(x.numpy(), S.int().numpy(), ST.numpy())


def test_data_path_sums_start_from_zero():
    """moe_unpermute and the permute's backward add each token's kept rows to a sum that starts at +0, so a
    token whose terms are all -0 gets +0 (an accumulator seeded with the first term would keep -0), and a token
    with no kept row gets +0: the bits of the float32 sum 0 + t_0 + t_1 + ... in choice order."""
    gates, _, slots, slot_token, *_ = routing(capacity_factor=0.5)
    A = slot_token.numel()
    gen = torch.Generator().manual_seed(9)
    out = torch.randn(A, 16, generator=gen)
    out[::3] = -0.0  # whole rows of -0: products -0 (or +0 for a negative gate)
    dropped = slots < 0
    assert dropped.any() and (~dropped).all(1).any()
    gates = gates.float()
    y = tpt_ops.moe_unpermute(out, gates, slots, slot_token)
    dx = torch.ops.tpt.moe_permute_backward(out, slots)
    y_exact = torch.zeros_like(y)
    dx_exact = torch.zeros_like(dx)
    for j in range(slots.shape[1]):
        kept = ~dropped[:, j]
        rows = out[slots[:, j].clamp(min=0)]
        y_exact[kept] = y_exact[kept] + gates[kept, j, None] * rows[kept]
        dx_exact[kept] = dx_exact[kept] + rows[kept]
    for got, exact in ((y, y_exact), (dx, dx_exact)):
        assert torch.equal(got.view(torch.int32), exact.view(torch.int32))
    one_kept = (~dropped).sum(1) == 1
    on_zero_row = (slots.clamp(min=0) % 3 == 0) & ~dropped
    assert (one_kept & on_zero_row.any(1)).any()  # a token whose one term is -0: +0 here, -0 if seeded with it
