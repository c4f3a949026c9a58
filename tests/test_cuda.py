"""The CUDA kernels against the C kernels and the references, on a GPU (skipped, visibly, without one).

Every op runs on the same inputs on the CPU (the C kernels) and on the GPU (the CUDA kernels), forward and
backward through autograd with the same output gradients. The CUDA kernels compute each element with the C
kernels' arithmetic (the shared math headers, nvcc -fmad=false) and every sum in the C kernels' order, so the
results must be the same bits; they must also be close to the plain-PyTorch references on the GPU in each dtype,
and the same bits run to run. Causal attention is the exception: its CUDA tiles differ from the C kernel's, so it is
held to the rounding bounds of its results (the section at the end)."""
import math

import pytest
import torch

import tpt_ops
from tpt_ops import reference as ref

from helpers import DTYPES, TOL, assert_close_to_exact

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA kernels are not run")

CUDA = torch.device("cuda")
# M = 2 * 150 rows: more than two TPT_ROW_BLOCKs, and a phase width P = 26 that leaves a tail after the 16 lanes.
B, T, N, P = 2, 150, 3, 26
D = N * P


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


class Constant:
    """An input that takes no gradient (the RoPE tables: none flows to them)."""

    def __init__(self, tensor):
        self.tensor = tensor


def run(fn, inputs, device, seed=1):
    """fn on copies of inputs moved to device; returns (outputs, input gradients) on the CPU. Floating inputs
    require grad unless wrapped in Constant; each output that requires grad gets a fixed random gradient."""
    moved = []
    for t in inputs:
        if isinstance(t, Constant):
            t = t.tensor.to(device)
        elif isinstance(t, torch.Tensor):
            t = t.detach().to(device)
            if t.is_floating_point():
                t.requires_grad_(True)
        moved.append(t)
    out = fn(*moved)
    outs = out if isinstance(out, tuple) else (out,)
    diff = [o for o in outs if o.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    gouts = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.dtype).to(device) for o in diff]
    if diff:
        torch.autograd.backward(diff, gouts)
    grads = [t.grad for t in moved if isinstance(t, torch.Tensor) and t.requires_grad]
    cpu = lambda ts: [None if t is None else t.detach().cpu() for t in ts]
    return cpu(outs), cpu(grads)


def rope_tables(dtype, hd=16):
    angle = torch.outer(torch.arange(T, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(hd // 2) * 2.0 / hd))
    cos, sin = torch.cos(angle), torch.sin(angle)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.cat([cos, cos], -1).to(ct), torch.cat([-sin, sin], -1).to(ct)


def route_layout(dtype, score="softmax"):
    logits = randn(B * T, 8, dtype=dtype, seed=7)
    gates, experts, slots, slot_token, counts, aux, z = ref.moe_route(logits.double(), 2, 1.0, True, score)
    return slots, slot_token


def attention_inputs(dtype, T_=T):
    fm = lambda *s, seed: torch.softmax(randn(*s, seed=seed, dtype=torch.float64), -1).to(dtype)
    return fm(B, 4, T_, 32, seed=11), fm(B, 2, T_, 32, seed=12), randn(B, 2, T_, 24, dtype=dtype, seed=13)


def shifted(t):
    """t's values in a view one element into its storage: pair loads must see a misaligned start."""
    return torch.cat([t.new_zeros(1), t.reshape(-1)])[1:].view(t.shape)


def state_detached(outputs):
    """(y, S, z) with the decoding state cut from the graph: it is a cache, not differentiable in tpt_ops."""
    y, S, z = outputs
    return y, S.detach(), z.detach()


def cases(dtype):
    """(name, tpt function, reference function, inputs)."""
    x = randn(B, T, D, dtype=dtype)
    a = randn(B, T, D, dtype=dtype, seed=2)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    w = (1 + 0.1 * randn(D, seed=3)).to(ct)
    theta = randn(P // 2, seed=4).to(ct)
    ids = torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(5))
    table = randn(50, D, dtype=dtype, seed=6)
    cos, sin = rope_tables(dtype)
    qkv = randn(B, T, (4 + 2 * 2) * 16, dtype=dtype, seed=8)
    slots, slot_token = route_layout(dtype)
    rows = randn(B * T, 40, dtype=dtype, seed=9)
    out = randn(B * T * 2, 40, dtype=dtype, seed=10)
    gates = torch.rand(B * T, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64).to(ct)
    q, k, v = attention_inputs(dtype)
    S = torch.rand(B, 2, 32, 24, dtype=ct, generator=torch.Generator().manual_seed(15))
    zs = torch.rand(B, 2, 32, dtype=ct, generator=torch.Generator().manual_seed(16)) + 1
    return [
        ("phase_rmsnorm", lambda x, w: tpt_ops.phase_rmsnorm(x, w, N), lambda x, w: ref.phase_rmsnorm(x, w, N),
         [x, w]),
        ("phase_rotate", lambda x, t: tpt_ops.phase_rotate(x, t, N), lambda x, t: ref.phase_rotate(x, t, N), [x, theta]),
        ("phase_rotate_unaligned", lambda x, t: tpt_ops.phase_rotate(shifted(x), t, N),
         lambda x, t: ref.phase_rotate(shifted(x), t, N), [x, theta]),
        ("horn_inject", lambda x: tpt_ops.horn_inject(x, N, 5), lambda x: ref.horn_inject(x, N, 5), [x]),
        ("horn_embedding", lambda i, t: tpt_ops.horn_embedding(i, t, N, 2), lambda i, t: ref.horn_embedding(i, t, N, 2),
         [ids, table]),
        ("add_rotate_norm", lambda h, a, t, w: tpt_ops.add_rotate_norm(h, a, t, w, N),
         lambda h, a, t, w: ref.add_rotate_norm(h, a, t, w, N), [x, a, theta, w]),
        ("add_norm", lambda h, a, w: tpt_ops.add_norm(h, a, w, N), lambda h, a, w: ref.add_norm(h, a, w, N), [x, a, w]),
        # autocast's mix: a float32 residual stream plus a branch output of the case's dtype
        ("add_rotate_norm_mixed", lambda h, a, t, w: tpt_ops.add_rotate_norm(h, a, t, w, N),
         lambda h, a, t, w: ref.add_rotate_norm(h, a, t, w, N),
         [x if dtype == torch.float64 else x.float(), a, theta, w]),
        ("swiglu", tpt_ops.swiglu, ref.swiglu, [randn(B, T, 80, dtype=dtype, seed=17)]),
        ("swiglu_odd", tpt_ops.swiglu, ref.swiglu, [randn(B, T, 82, dtype=dtype, seed=17)]),
        ("swiglu_unaligned", lambda g: tpt_ops.swiglu(shifted(g)), lambda g: ref.swiglu(shifted(g)),
         [randn(B, T, 80, dtype=dtype, seed=17)]),
        ("qkv_rope", lambda qkv, c, s: tpt_ops.qkv_rope(qkv, c, s, 4, 2), lambda qkv, c, s: ref.qkv_rope(qkv, c, s, 4, 2),
         [qkv, Constant(cos), Constant(sin)]),
        ("moe_route_softmax", lambda l: tpt_ops.moe_route(l, 2, 1.0, True, "softmax"),
         lambda l: ref.moe_route(l, 2, 1.0, True, "softmax"), [randn(B * T, 8, dtype=dtype, seed=7)]),
        ("moe_route_sigmoid", lambda l: tpt_ops.moe_route(l, 2, 1.25, False, "sigmoid"),
         lambda l: ref.moe_route(l, 2, 1.25, False, "sigmoid"), [randn(B * T, 8, dtype=dtype, seed=7)]),
        ("moe_permute", tpt_ops.moe_permute, ref.moe_permute, [rows, slots, slot_token]),
        ("moe_unpermute", tpt_ops.moe_unpermute, ref.moe_unpermute, [out, gates, slots, slot_token]),
        ("hedgehog_feature_map", tpt_ops.hedgehog_feature_map, ref.hedgehog_feature_map,
         [randn(B, 4, T, 16, dtype=dtype, seed=18)]),
        ("linear_attention_causal", lambda q, k, v: tpt_ops.linear_attention(q, k, v, True),
         lambda q, k, v: ref.linear_attention(q, k, v, True), [q, k, v]),
        ("linear_attention_full", lambda q, k, v: tpt_ops.linear_attention(q, k, v, False),
         lambda q, k, v: ref.linear_attention(q, k, v, False), [q, k, v]),
        ("linear_attention_prefill", lambda q, k, v: state_detached(tpt_ops.linear_attention_prefill(q, k, v)),
         lambda q, k, v: state_detached(ref.linear_attention_prefill(q, k, v)), [q, k, v]),
        ("linear_attention_step", tpt_ops.linear_attention_step, ref.linear_attention_step,
         [q[:, :, :1], k[:, :, :1], v[:, :, :1], S, zs]),
    ]


NAMES = [c[0] for c in cases(torch.float32)]


def case(name, dtype):
    return next(c for c in cases(dtype) if c[0] == name)


def bits(t):
    """t's bytes (floats compared bit for bit: -0 is not +0, a NaN equals the same NaN)."""
    return t.reshape(-1).view(torch.uint8) if t.is_floating_point() else t


def assert_same_bits(actual, expected, what):
    for i, (x, y) in enumerate(zip(actual, expected, strict=True)):
        if x is None and y is None:
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, (what, i, x.dtype, y.dtype, x.shape, y.shape)
        same = torch.equal(bits(x), bits(y))
        if not same:
            diff = (x.double() - y.double()).abs().max().item()
            pytest.fail(f"{what} {i}: CUDA and C kernels differ (max |diff| {diff:.3g})")


# The C linear-attention kernels sum their chunk products in register tiles of fused multiply-adds; the CUDA
# ones follow the chunk steps with one thread a row and separate products, so the two agree to rounding, not bit
# for bit (each is held to the reference below, and CUDA to the C kernel within the dtype's tolerance).
ROUNDING_ONLY = {"linear_attention_causal", "linear_attention_full", "linear_attention_prefill",
                 "linear_attention_step"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_cuda_gives_the_c_kernels_bits(name, dtype):
    """Outputs and input gradients on the GPU are the C kernels' bits for the same inputs (within the dtype's
    tolerance for the ROUNDING_ONLY ops)."""
    _, fn, _, inputs = case(name, dtype)
    cpu_out, cpu_grads = run(fn, inputs, "cpu")
    cuda_out, cuda_grads = run(fn, inputs, CUDA)
    if name in ROUNDING_ONLY:
        for x, y in zip(list(cuda_out) + list(cuda_grads), list(cpu_out) + list(cpu_grads), strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                assert_near(x.cpu(), y, dtype)
        return
    assert_same_bits(cuda_out, cpu_out, f"{name} output")
    assert_same_bits(cuda_grads, cpu_grads, f"{name} gradient")


def assert_near(actual, expected, dtype):
    """|actual - expected| <= tol (|expected| + max |expected|): the dtype's tolerance relative to each element and
    to the tensor's scale (gradients that sum hundreds of rounded terms are off by that scale's rounding)."""
    tol = TOL[dtype][0]
    expected = expected.double()
    bound = tol * (expected.abs() + expected.abs().max())
    excess = (actual.double() - expected).abs() - bound
    assert excess.max() <= 0, f"off by up to {excess.max().item():.3g} beyond the {dtype} tolerance"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_the_reference(name, dtype):
    """The CUDA ops against the plain-PyTorch reference on the GPU, in float64 from the same inputs (an
    independent implementation), within the dtype's tolerance."""
    _, fn, reference, inputs = case(name, dtype)
    out, grads = run(fn, inputs, CUDA)
    as64 = [Constant(t.tensor.double()) if isinstance(t, Constant)
            else t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    ref_out, ref_grads = run(reference, as64, CUDA)
    for x, y in zip(out, ref_out, strict=True):
        if x.is_floating_point():
            assert_near(x, y, dtype)
        else:
            assert torch.equal(x, y)
    for x, y in zip(grads, ref_grads, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert_near(x, y, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_cuda_is_deterministic(name):
    """Two runs on the GPU give the same bits (no atomics, fixed reduction order)."""
    _, fn, _, inputs = case(name, torch.bfloat16)
    first, second = run(fn, inputs, CUDA), run(fn, inputs, CUDA)
    assert_same_bits(first[0], second[0], f"{name} output")
    assert_same_bits(first[1], second[1], f"{name} gradient")


def test_cuda_runs_on_the_current_stream():
    """A kernel launched on a side stream sees the work queued before it there (the glue takes torch's current
    stream), and the result does not depend on the stream."""
    x, w = randn(B, T, D), 1 + 0.1 * randn(D, seed=3)
    expected = tpt_ops.phase_rmsnorm(x.cuda(), w.cuda(), N)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs = x.cuda(non_blocking=True) * 1.0
        y = tpt_ops.phase_rmsnorm(xs, w.cuda(), N)
    stream.synchronize()
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_swiglu_backward_in_place_gives_the_c_kernels_bits(dtype):
    """swiglu_backward_ (the gradient written over gate_up) on the GPU: the C kernel's bits."""
    gate_up, dh = randn(B, T, 80, dtype=dtype, seed=17), randn(B, T, 40, dtype=dtype, seed=19)
    on_cpu, on_gpu = gate_up.clone(), gate_up.cuda()
    torch.ops.tpt.swiglu_backward_(dh, on_cpu)
    torch.ops.tpt.swiglu_backward_(dh.cuda(), on_gpu)
    assert_same_bits([on_gpu.cpu()], [on_cpu], "swiglu_backward_")


def test_cuda_compiled_ops_give_the_eager_bits():
    """torch.compile(fullgraph=True) of CUDA ops (fake kernels, autograd) gives the eager CUDA bits."""
    x, a = randn(B, T, D).cuda(), randn(B, T, D, seed=2).cuda()
    theta, w = randn(P // 2, seed=4).cuda(), (1 + 0.1 * randn(D, seed=3)).cuda()

    def fn(x, a, theta, w):
        h, normed = tpt_ops.add_rotate_norm(x, a, theta, w, N)
        return tpt_ops.swiglu(torch.cat([normed, h], -1))

    eager = run(fn, [x, a, theta, w], CUDA)
    compiled = run(torch.compile(fn, fullgraph=True), [x, a, theta, w], CUDA)
    assert_same_bits(compiled[0], eager[0], "compiled output")
    assert_same_bits(compiled[1], eager[1], "compiled gradient")


def test_cuda_bad_input_names_the_argument():
    """The CUDA path applies the C path's argument rules, with its messages."""
    x = randn(4, D).cuda()
    with pytest.raises(RuntimeError, match="tpt.phase_rmsnorm: .*weight"):
        tpt_ops.phase_rmsnorm(x, torch.ones(D + 1, device=CUDA), N)
    with pytest.raises(RuntimeError, match="tpt.horn_embedding: .*ids"):
        tpt_ops.horn_embedding(torch.tensor([[0, 99]], device=CUDA), randn(50, D).cuda(), N)


def test_cuda_model_trains_on_the_fused_backend():
    """A small fused-backend 3PT model takes a training step on the GPU, with a finite loss and gradients."""
    from tpt_ops.models import TPTConfig, ThreePhaseTransformer
    config = TPTConfig(vocab_size=64, d_model=48, n_layers=2, n_q_heads=6, n_kv_heads=3, n_phases=3, d_ff=64,
                       max_seq_len=32, backend="fused")
    model = ThreePhaseTransformer(config, device=CUDA)
    ids = torch.randint(0, 64, (2, 32), device=CUDA)
    loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 64).float(), ids.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- causal attention: other tiles than the C kernel's (attention.cuh), so its results within the rounding the
# C kernel is held to (tests/test_attention.py's bounds), not its bits ----

from test_attention import inputs as attention_qkv, magnitudes  # noqa: E402

# name: (B, H, Hkv, T, hd, offset, kv read from a cache buffer's slice)
ATTENTION_SHAPES = {
    "gqa": (2, 4, 2, 150, 32, 0, False),  # query and key tails in both kernels' tiles
    "mha_hd24": (1, 3, 3, 77, 24, 0, False),
    "offset": (2, 6, 2, 40, 16, 110, False),  # 40 rows decoded over a 150-key cache
    "decode_cache_slice": (2, 4, 1, 1, 64, 199, True),  # one row, k and v a [:, :, :Tk] slice of a longer buffer
    "hd128": (1, 2, 1, 70, 128, 0, False),  # the largest tiles in shared memory
}


def attention_case(name, dtype):
    B, H, Hkv, T, hd, offset, cache = ATTENTION_SHAPES[name]
    q, k, v = attention_qkv(B=B, H=H, Hkv=Hkv, T=T, hd=hd, dtype=dtype, offset=offset, seed=len(name))
    dout = torch.randn(B, H, T, hd, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return q, k, v, dout.to(dtype), offset, cache


def attention_run(name, dtype, device):
    """(out, lse, dq, dk, dv) on the CPU from the op on `device`."""
    q, k, v, dout, offset, cache = attention_case(name, dtype)
    leaves = [t.to(device).requires_grad_() for t in (q, k, v)]
    qd, kd, vd = leaves
    if cache:  # the op reads k and v in place from a buffer with room for 9 more keys
        room = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], 9, t.shape[3])], 2)[:, :, :t.shape[2]]
        kd, vd = room(kd), room(vd)
    out, lse = torch.ops.tpt.causal_attention(qd, kd, vd, offset, 1 / math.sqrt(q.shape[-1]))
    out.backward(dout.to(device))
    return [t.detach().cpu() for t in (out, lse, *(leaf.grad for leaf in leaves))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ATTENTION_SHAPES))
def test_cuda_attention_matches_the_exact_result(name, dtype):
    """out, dq, dk, dv on the GPU against the quadratic form in float64 from the same values, within the bounds
    tests/test_attention.py holds the C kernel to; lse against the exact log-sum-exp."""
    q, k, v, dout, offset, _ = attention_case(name, dtype)
    out, lse, *grads = attention_run(name, dtype, CUDA)
    scale = 1 / math.sqrt(q.shape[-1])
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    out_exact = ref.causal_attention(*exact, offset=offset, scale=scale)
    out_exact.backward(dout.double())
    sizes, stored = magnitudes(dout.double(), q, k, v, offset, scale)
    assert_close_to_exact(out, out_exact.detach(), scale=sizes[0], name="out")
    for what, g, e, size, st in zip(("dq", "dk", "dv"), grads, exact, sizes[1:], (*stored, 0.0)):
        assert g.dtype == dtype, what
        assert_close_to_exact(g, e.grad, scale=size, stored=st, name=what)
    H, Hkv, T, Tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    scores = q.double() @ k.double().repeat_interleave(H // Hkv, 1).transpose(-1, -2) * scale
    mask = torch.arange(Tk)[None, :] <= torch.arange(offset, offset + T)[:, None]
    lse_exact = scores.masked_fill(~mask, -math.inf).logsumexp(-1)
    score_size = (q.double().abs() @ k.double().abs().repeat_interleave(H // Hkv, 1).transpose(-1, -2) * scale)
    assert_close_to_exact(lse, lse_exact, scale=score_size.amax(-1) + lse_exact.abs(), name="lse")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ATTENTION_SHAPES))
def test_cuda_attention_is_close_to_the_c_kernel(name, dtype):
    """The GPU's results against the C kernel's on the same inputs: the two differ only by the rounding of their
    different tilings, each within the bound of the exact result, so by at most the sum of the two bounds."""
    q, k, v, dout, offset, _ = attention_case(name, dtype)
    cuda, cpu = attention_run(name, dtype, CUDA), attention_run(name, dtype, "cpu")
    sizes, stored = magnitudes(dout.double(), q, k, v, offset, 1 / math.sqrt(q.shape[-1]))
    assert_close_to_exact(cuda[0], cpu[0].double(), scale=2 * sizes[0], name="out")
    torch.testing.assert_close(cuda[1], cpu[1], **dict(zip(("rtol", "atol"), TOL[cpu[1].dtype])))
    for what, g, c, size, st in zip(("dq", "dk", "dv"), cuda[2:], cpu[2:], sizes[1:], (*stored, 0.0)):
        assert_close_to_exact(g, c.double(), scale=2 * size, stored=2 * st, name=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["gqa", "offset"])
def test_cuda_attention_is_deterministic(name, dtype):
    """Two runs on the GPU give the same bits: dk and dv summed by one thread each over the query heads and tiles
    in order, no atomics."""
    first, second = attention_run(name, dtype, CUDA), attention_run(name, dtype, CUDA)
    assert_same_bits(first, second, f"attention {name}")


def test_cuda_attention_gradcheck_and_compile():
    """float64 gradcheck of the CUDA kernels, and torch.compile(fullgraph=True) giving the eager bits."""
    q, k, v = (t.cuda().requires_grad_() for t in attention_qkv(B=1, H=4, Hkv=2, T=37, hd=4, dtype=torch.float64,
                                                                 spread=1.0))
    assert torch.autograd.gradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: tpt_ops.causal_attention(q, k, v, offset=30, scale=0.7),
                                    (q[:, :, 30:].detach().requires_grad_(), k, v))
    fn = lambda q, k, v: tpt_ops.causal_attention(q, k, v) * 2
    inputs = [t.float() for t in attention_qkv(B=1, H=4, Hkv=2, T=80, hd=16)]
    eager = run(fn, inputs, CUDA)
    compiled = run(torch.compile(fn, fullgraph=True, dynamic=False), inputs, CUDA)
    assert_same_bits(compiled[0], eager[0], "compiled attention output")
    assert_same_bits(compiled[1], eager[1], "compiled attention gradient")


def test_cuda_attention_bad_input_names_the_argument():
    q, k, v = (t.cuda() for t in attention_qkv(T=8))
    with pytest.raises(RuntimeError, match="tpt.causal_attention: .*'k' is on a different device"):
        torch.ops.tpt.causal_attention(q, k.cpu(), v, 0, 0.25)
    with pytest.raises(RuntimeError, match="tpt.causal_attention: offset=3 is out of range"):
        torch.ops.tpt.causal_attention(q, k, v, 3, 0.25)
