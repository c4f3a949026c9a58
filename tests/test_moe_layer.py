"""TokenChoiceMoE and MoE 3PT models: against a plain loop over experts, on both backends."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tpt_ops
from tpt_ops.models import TPTConfig, ThreePhaseTransformer
from tpt_ops.nn import TokenChoiceMoE

from helpers import num_threads

BACKENDS = ["reference", "fused"]
TOL = dict(rtol=2e-4, atol=2e-5)  # float32 layer against the float64 loop


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_moe(seed=0, d_model=12, d_ff=16, n_experts=4, k=2, **options):
    torch.manual_seed(seed)
    return TokenChoiceMoE(d_model, d_ff, n_experts, k, **options)


def loop_reference(moe: TokenChoiceMoE, x: torch.Tensor, bias: torch.Tensor | None = None):
    """(y, aux_loss, z_loss, counts, params) in float64, one expert at a time; params are float64 leaves."""
    params = {name: p.detach().double().requires_grad_() for name, p in moe.named_parameters()}
    E, k = moe.n_experts, moe.k
    tokens = x.reshape(-1, moe.d_model)
    M = tokens.shape[0]
    logits32 = F.linear(tokens.detach().float(), moe.router.weight.detach())
    logits = tokens.double() @ params["router.weight"].t()
    act = torch.softmax if moe.score == "softmax" else (lambda t, dim: torch.sigmoid(t))
    scores = act(logits, dim=-1)
    selection = act(logits32, dim=-1) + (0 if bias is None else bias)
    choice = [sorted(range(E), key=lambda e: (-selection[t, e].item(), e))[:k] for t in range(M)]
    gates = torch.stack([scores[t, choice[t]] for t in range(M)]) if M else scores.new_zeros(0, k)
    if moe.normalize:
        gates = gates / gates.sum(-1, keepdim=True)
    capacity = None if moe.capacity_factor is None else math.ceil(moe.capacity_factor * M * k / E)
    load = [0] * E
    kept = {}
    for j in range(k):  # priority: every first choice before any second, by token within a choice
        for t in range(M):
            e = choice[t][j]
            kept[t, j] = capacity is None or load[e] < capacity
            load[e] += kept[t, j]
    y = tokens.new_zeros(M, moe.d_model, dtype=torch.float64)
    for e in range(E):
        picks = [(t, j) for (t, j), keep in kept.items() if keep and choice[t][j] == e]
        if not picks:
            continue
        rows = torch.tensor([t for t, _ in picks])
        h = tokens.double()[rows]
        out = (F.silu(h @ params["w_gate"][e]) * (h @ params["w_up"][e])) @ params["w_down"][e]
        gate = torch.stack([gates[t, j] for t, j in picks])
        y = y.index_add(0, rows, out * gate[:, None])
    if moe.shared is not None:
        w_gate, w_up = params["shared.gate_up.weight"].chunk(2, dim=0)
        w_down = params["shared.down.weight"]
        F_ = moe.d_ff
        for i in range(moe.n_shared_experts):  # each shared expert on its own, summed
            part = slice(i * F_, (i + 1) * F_)
            y = y + (F.silu(tokens.double() @ w_gate[part].t()) * (tokens.double() @ w_up[part].t())) @ w_down[:, part].t()
    counts = torch.tensor(load)
    fraction = counts.double() / max(1, sum(load))
    aux = moe.aux_loss_weight * E * (fraction * scores.mean(0)).sum()
    z = moe.z_loss_weight * torch.logsumexp(logits, -1).square().mean()
    return y.reshape(x.shape), aux, z, counts, params


def check_against_loop(moe, x, bias=None):
    x = x.clone().requires_grad_()
    y = moe(x)
    w_out = torch.randn(y.shape, generator=gen(1))
    ((y * w_out).sum() + moe.aux_loss + moe.z_loss).backward()
    x_ref = x.detach().double().requires_grad_()
    y_ref, aux_ref, z_ref, counts_ref, params = loop_reference(moe, x_ref, bias)
    ((y_ref * w_out.double()).sum() + aux_ref + z_ref).backward()
    assert torch.equal(moe.counts, counts_ref)
    torch.testing.assert_close(y, y_ref.float(), **TOL)
    torch.testing.assert_close(moe.aux_loss, aux_ref.float(), **TOL)
    torch.testing.assert_close(moe.z_loss, z_ref.float(), **TOL)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), **TOL)
    for name, p in moe.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad.float(), **TOL, msg=name)


# ------------------------------------------------------------------ parity

CASES = {
    "top1-raw": dict(k=1, normalize=False),
    "top2": dict(k=2),
    "top2-capacity-drops": dict(k=2, capacity_factor=0.5),
    "top2-capacity-shared-sigmoid": dict(k=2, capacity_factor=1.0, n_shared_experts=2, score="sigmoid"),
    "top1-most-dropped-sigmoid": dict(k=1, capacity_factor=0.25, score="sigmoid", normalize=False),
    "top4-of-8-capacity": dict(k=4, n_experts=8, capacity_factor=1.0),
    "one-expert": dict(k=1, n_experts=1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_matches_the_loop_over_experts(backend, case):
    moe = make_moe(backend=backend, **CASES[case])
    x = torch.randn(3, 8, 12, generator=gen())
    check_against_loop(moe, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_every_token_picks_the_same_expert(backend, capacity_factor):
    """Identical tokens all pick one expert: with capacity most assignments drop."""
    moe = make_moe(backend=backend, k=2, capacity_factor=capacity_factor)
    x = torch.randn(1, 12, generator=gen()).expand(16, 12).contiguous()
    check_against_loop(moe, x)
    assert (moe.counts > 0).sum() == 2
    if capacity_factor is not None:
        assert moe.routing_stats()["dropped"] == pytest.approx(1 - 2 * 8 / 32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_steers_selection_not_gates(backend):
    moe = make_moe(backend=backend, k=2, bias_update_rate=0.1)
    bias = torch.tensor([0.0, 5.0, 0.0, 0.0])
    moe.expert_bias.copy_(bias)
    x = torch.randn(20, 12, generator=gen())
    check_against_loop(moe, x, bias)
    assert moe.counts[1] == 20  # every token's choices include expert 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    moe = make_moe(backend=backend)
    x = torch.zeros(0, 5, 12, requires_grad=True)
    y = moe(x)
    (y.sum() + moe.aux_loss + moe.z_loss).backward()
    assert y.shape == x.shape and moe.aux_loss.item() == 0 and moe.counts.sum() == 0


# ------------------------------------------------------------------ compile, determinism, precision

@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    moe = make_moe(backend=backend, k=2, capacity_factor=1.0, n_shared_experts=1)
    x = torch.randn(2, 10, 12, generator=gen())

    def run(module):
        xg = x.clone().requires_grad_()
        y = module(xg)
        (y.square().sum() + moe.aux_loss + moe.z_loss).backward()
        grads = [xg.grad] + [p.grad.clone() for p in moe.parameters()]
        moe.zero_grad()
        return y.detach(), moe.aux_loss.detach(), moe.counts.clone(), grads

    eager = run(moe)
    compiled = run(torch.compile(moe, fullgraph=True))
    torch.testing.assert_close(compiled[:2], eager[:2])
    assert torch.equal(compiled[2], eager[2])
    torch.testing.assert_close(compiled[3], eager[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_deterministic_across_thread_counts(backend):
    moe = make_moe(d_model=64, d_ff=96, n_experts=8, k=2, capacity_factor=1.25, backend=backend)
    x = torch.randn(256, 64, generator=gen())

    def run():
        xg = x.clone().requires_grad_()
        y = moe(xg)
        (y.square().sum() + moe.aux_loss + moe.z_loss).backward()
        result = [y.detach(), moe.aux_loss.detach(), xg.grad] + [p.grad.clone() for p in moe.parameters()]
        moe.zero_grad()
        return result

    results = []
    for threads in (1, 2, 3, 1):
        with num_threads(threads):
            results.append(run())
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("backend", BACKENDS)
def test_router_stays_float32_under_bf16_autocast(backend):
    moe = make_moe(backend=backend, n_experts=8, k=2)
    x = torch.randn(64, 12, generator=gen())
    seen = []
    moe.router.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    moe(x)
    counts32 = moe.counts.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xg = x.clone().requires_grad_()
        y = moe(xg)
    (y.float().sum() + moe.aux_loss).backward()
    assert y.dtype == torch.bfloat16 and moe.aux_loss.dtype == torch.float32
    assert torch.equal(moe.counts, counts32)  # the same expert choices as without autocast
    assert moe.router.weight.grad.dtype == torch.float32 and moe.w_gate.grad.dtype == torch.float32


# ------------------------------------------------------------------ balancing

def bias_after(counts, rate):
    load = counts.float()
    return rate * torch.sign(load.mean() - load)


def test_bias_update_counts_every_micro_batch_once():
    moe = make_moe(k=2, bias_update_rate=0.01)
    batches = [torch.randn(16, 12, generator=gen(i)) for i in range(3)]
    counts = []
    for x in batches:
        moe(x).sum().backward()
        moe.accumulate_counts()
        counts.append(moe.counts)
    moe.eval()
    with torch.no_grad():
        moe(torch.randn(40, 12, generator=gen(9)))  # evaluation: not counted
    moe.train()
    total = sum(counts)
    assert torch.equal(moe.step_counts, total) and moe.expert_bias.abs().sum() == 0  # nothing before the step
    stats = moe.moe_step()
    assert torch.equal(moe.expert_bias, bias_after(total, 0.01))
    assert stats["max_load"] == pytest.approx(total.max().item() / total.float().mean().item())
    assert moe.step_counts.sum() == 0 and moe.step_assignments == 0


def test_bias_update_is_counted_once_under_activation_checkpointing():
    moe = make_moe(k=2, bias_update_rate=0.01)
    x = torch.randn(16, 12, generator=gen(), requires_grad=True)
    plain = moe(x)
    expected = moe.counts.clone()
    checkpoint(moe, x, use_reentrant=False).sum().backward()  # the backward runs the forward again
    moe.accumulate_counts()
    assert torch.equal(moe.step_counts, expected)
    moe.moe_step()
    assert torch.equal(moe.expert_bias, bias_after(expected, 0.01))
    assert plain.shape == x.shape


def test_balancing_evens_the_load():
    """A router biased towards expert 0 is evened out by the selection bias alone (no gradient step)."""
    moe = make_moe(k=1, n_experts=4, bias_update_rate=0.01)
    x = torch.randn(64, 12, generator=gen())
    x[:, 0] = 1.0
    with torch.no_grad():
        moe.router.weight[0, 0] = 3.0  # expert 0's logit is 3 above what the token alone gives
    moe(x)
    first = moe.routing_stats()["max_load"]
    for _ in range(60):
        moe(x)
        moe.accumulate_counts()
        moe.moe_step()
    assert first == 4.0 and moe.routing_stats()["max_load"] < 1.5


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("options,msg", [
    (dict(k=0), "k must be an int >= 1"),
    (dict(k=5), r"k \(5\) must be <= n_experts \(4\)"),
    (dict(capacity_factor=0.0), "capacity_factor must be None or finite and > 0"),
    (dict(capacity_factor=float("inf")), "capacity_factor must be None or finite and > 0"),
    (dict(score="relu"), "score must be one of"),
    (dict(n_shared_experts=-1), "n_shared_experts must be an int >= 0"),
    (dict(bias_update_rate=-0.1), "bias_update_rate must be finite and >= 0"),
    (dict(aux_loss_weight=float("nan")), "aux_loss_weight must be finite and >= 0"),
    (dict(backend="cuda"), "backend must be one of"),
])
def test_bad_layer_arguments(options, msg):
    with pytest.raises(ValueError, match=msg):
        make_moe(**options)


def test_bad_input_and_calls_out_of_order():
    moe = make_moe()
    with pytest.raises(RuntimeError, match="no forward has run yet"):
        moe.accumulate_counts()
    with pytest.raises(ValueError, match="the last dim of x must be d_model=12"):
        moe(torch.zeros(3, 11))


@pytest.mark.parametrize("changes,msg", [
    (dict(ffn="sparse"), "TPTConfig.ffn must be one of"),
    (dict(ffn="moe", moe_k=9), r"TPTConfig: k \(9\) must be <= n_experts \(8\)"),
    (dict(ffn="moe", moe_every=5), r"moe_every \(5\) exceeds n_layers \(4\)"),
    (dict(ffn="moe", moe_capacity=-1.0), "TPTConfig: capacity_factor"),
    (dict(ffn="moe", moe_score="tanh"), "TPTConfig: score must be one of"),
])
def test_bad_config(changes, msg):
    with pytest.raises(ValueError, match=msg):
        TPTConfig(**changes)


# ------------------------------------------------------------------ models

def moe_config(backend, **changes):
    return TPTConfig(d_model=48, n_layers=2, n_q_heads=6, n_kv_heads=3, d_ff=64, max_seq_len=32, ffn="moe",
                     moe_experts=4, moe_k=2, moe_d_ff=32, moe_bias_rate=0.01, backend=backend, **changes)


def test_moe_layers_where_the_config_says():
    every = ThreePhaseTransformer(moe_config("reference"))
    second = ThreePhaseTransformer(moe_config("reference", moe_every=2))
    assert [type(b.ffn).__name__ for b in every.blocks] == ["TokenChoiceMoE"] * 2
    assert [type(b.ffn).__name__ for b in second.blocks] == ["SwiGLU", "TokenChoiceMoE"]
    assert "blocks.1.ffn.expert_bias" in second.state_dict() and "blocks.0.ffn.gate_up.weight" in second.state_dict()
    dense = ThreePhaseTransformer(TPTConfig(backend="reference"))
    assert dense.moe_layers() == [] and dense.moe_loss() is None and dense.moe_step() == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_moe_model_matches_across_backends_trains_and_generates(backend):
    torch.manual_seed(0)
    model = ThreePhaseTransformer(moe_config(backend, moe_capacity=1.0, moe_shared=1))
    reference = ThreePhaseTransformer(moe_config("reference", moe_capacity=1.0, moe_shared=1))
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (2, 16), generator=gen())
    logits = model(ids)
    torch.testing.assert_close(logits, reference(ids), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.moe_loss(), reference.moe_loss())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten()) + model.moe_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.accumulate_moe_counts()
        stats = model.moe_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert set(stats) == {"moe_dropped", "moe_max_load"} and 0 <= stats["moe_dropped"] < 1
    assert all(layer.expert_bias.abs().sum() > 0 for layer in model.moe_layers())
    prompt = ids[0, :4]
    out = model.generate(prompt, 6, temperature=0)
    assert out.shape == (10,) and torch.equal(out[:4], prompt)
    # step-by-step decoding computes what a full forward computes
    assert torch.equal(out[4:6], model(out[None, :5]).argmax(-1)[0, 3:5])


def test_segment_mm_gradcheck_and_gradgradcheck():
    """The per-expert matmul's first and second derivatives (empty segments and unused rows included)."""
    from tpt_ops.nn.moe import segment_mm

    a = torch.randn(9, 5, dtype=torch.float64, generator=gen(2)).requires_grad_()
    b = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen(3)).requires_grad_()
    counts = torch.tensor([3, 0, 4, 1])  # 8 of 9 rows used, expert 1 empty
    assert torch.autograd.gradcheck(lambda a, b: segment_mm(a, b, counts), (a, b))
    assert torch.autograd.gradgradcheck(lambda a, b: segment_mm(a, b, counts), (a, b))


def test_segment_mm_backward_zeroes_what_no_segment_writes(monkeypatch):
    """The gradient buffers start uninitialised (made NaN here): the rows past the used ones and the experts
    without rows must still come out exactly 0, and the rest is what the matmuls write."""
    from tpt_ops.nn.moe import segment_mm_backward

    full_like = torch.full_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: full_like(t, math.nan, **kw))
    a = torch.randn(9, 5, generator=gen(4))
    b = torch.randn(4, 5, 3, generator=gen(5))
    dout = torch.randn(9, 3, generator=gen(6))
    counts = torch.tensor([3, 0, 4, 1])  # rows 0..7 used, expert 1 without rows
    da, db = segment_mm_backward(dout, a, b, counts)
    assert torch.equal(da[8:], torch.zeros(1, 5)) and torch.equal(db[1], torch.zeros(5, 3))
    assert torch.equal(da[3:7], dout[3:7] @ b[2].t()) and torch.equal(db[2], a[3:7].t() @ dout[3:7])


# ------------------------------------------------------------------ the gate/up segment matmul + SwiGLU

SEGMENT_COUNTS = [5, 0, 9, 3, 0, 6]  # 23 of 25 rows used, experts 1 and 4 without rows


def segment_inputs(dtype, rows=25, d_in=12, d_out=10, seed=7):
    g = gen(seed)
    a = torch.randn(rows, d_in, generator=g).to(dtype)
    w_gate, w_up = (torch.randn(len(SEGMENT_COUNTS), d_in, d_out, generator=g).div(d_in ** 0.5).to(dtype)
                    for _ in range(2))
    return [t.requires_grad_() for t in (a, w_gate, w_up)], torch.tensor(SEGMENT_COUNTS)


def segment_swiglu_loop(a, w_gate, w_up, counts):
    """Expert by expert on its rows, every other row 0: silu(a_seg @ w_gate[e]) * (a_seg @ w_up[e])."""
    parts, start = [], 0
    for e, n in enumerate(counts.tolist()):
        rows = a[start:start + n]
        parts.append(F.silu(rows @ w_gate[e]) * (rows @ w_up[e]))
        start += n
    parts.append(a.new_zeros(a.shape[0] - start, w_gate.shape[2]))
    return torch.cat(parts)


def run_with_grads(fn, inputs, counts, seed=8):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    h = fn(*inputs, counts)
    dh = torch.randn(h.shape, generator=gen(seed)).to(h.dtype)
    return [h.detach(), *torch.autograd.grad(h, inputs, dh)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_segment_swiglu_is_bitwise_the_concatenated_weight_composition(dtype):
    """Output and all three gradients are those of swiglu(segment_mm(a, cat((w_gate, w_up), -1))):
    the same products, only without the concatenated weight."""
    from tpt_ops.nn.moe import segment_mm, segment_swiglu

    inputs, counts = segment_inputs(dtype)
    actual = run_with_grads(segment_swiglu, inputs, counts)
    expected = run_with_grads(lambda a, wg, wu, c: tpt_ops.swiglu(segment_mm(a, torch.cat((wg, wu), -1), c)),
                              inputs, counts)
    for name, x, y in zip(("h", "da", "dw_gate", "dw_up"), actual, expected):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_swiglu_matches_a_loop_over_experts(dtype):
    """Against the float64 loop (unused rows and experts without rows come out exactly 0)."""
    from tpt_ops.nn.moe import segment_swiglu

    inputs, counts = segment_inputs(dtype)
    actual = run_with_grads(segment_swiglu, inputs, counts)
    expected = run_with_grads(segment_swiglu_loop, [t.double() for t in inputs], counts)
    # bfloat16: the gate/up products, the activation and its gradient are each rounded to 8 bits once
    rtol = {torch.float32: 2e-5, torch.bfloat16: 3e-2}[dtype]
    for name, x, y in zip(("h", "da", "dw_gate", "dw_up"), actual, expected):
        torch.testing.assert_close(x.double(), y, rtol=rtol, atol=rtol * float(y.abs().max()), msg=name)
    assert not actual[0][sum(SEGMENT_COUNTS):].any()
    assert not actual[2][[1, 4]].any() and not actual[3][[1, 4]].any()


def test_segment_swiglu_gradcheck_gradgradcheck_opcheck():
    from tpt_ops.nn.moe import segment_swiglu

    inputs, counts = segment_inputs(torch.float64, d_in=5, d_out=3)
    assert torch.autograd.gradcheck(lambda a, wg, wu: segment_swiglu(a, wg, wu, counts), inputs)
    assert torch.autograd.gradgradcheck(lambda a, wg, wu: segment_swiglu(a, wg, wu, counts), inputs)
    for dtype in (torch.float64, torch.float32):
        inputs, counts = segment_inputs(dtype)
        torch.library.opcheck(torch.ops.tpt_nn.segment_swiglu.default, (*inputs, counts))
        h, gate_up = torch.ops.tpt_nn.segment_swiglu(*(t.detach() for t in inputs), counts)
        torch.library.opcheck(torch.ops.tpt_nn.segment_swiglu_backward.default,
                              (torch.randn_like(h), *(t.detach() for t in inputs), gate_up, counts))


def test_segment_swiglu_compiles_fullgraph():
    from tpt_ops.nn.moe import segment_swiglu
    from helpers import assert_compile_matches_eager

    inputs, counts = segment_inputs(torch.float32)
    assert_compile_matches_eager(lambda a, wg, wu: segment_swiglu(a, wg, wu, counts), inputs)


def test_segment_swiglu_bitwise_deterministic_across_thread_counts():
    from tpt_ops.nn.moe import segment_swiglu

    inputs, _ = segment_inputs(torch.float32, rows=700, d_in=64, d_out=96)
    counts = torch.tensor([300, 0, 150, 200, 0, 40])  # 690 of 700 rows used
    results = []
    for threads in (1, 2, 3, 1):
        with num_threads(threads):
            results.append(run_with_grads(segment_swiglu, inputs, counts))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_segment_swiglu_rejects_mismatched_weights():
    from tpt_ops.nn.moe import segment_swiglu

    (a, w_gate, w_up), counts = segment_inputs(torch.float32)
    with pytest.raises(ValueError, match=r"segment_swiglu: w_gate and w_up must have one shape and dtype"):
        segment_swiglu(a, w_gate, w_up[:, :, :4], counts)
    with pytest.raises(ValueError, match=r"segment_mm: counts must be int64 of shape \[6\]"):
        segment_swiglu(a, w_gate, w_up, counts[:4])


def test_fused_layer_saves_no_concatenated_weight():
    """The fused layer's graph holds each expert weight once (as itself): no [E, D, 2F] copy of w_gate and w_up
    is saved for the backward, and the activation's input is held once."""
    moe = make_moe(d_model=12, d_ff=16, n_experts=4, k=2)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        moe(torch.randn(10, 12, generator=gen()))
    assert (4, 12, 32) not in shapes
    assert shapes.count((20, 32)) == 1  # gate_up [M*k, 2F], saved by the gate/up node alone
