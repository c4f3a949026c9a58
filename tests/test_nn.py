"""tpt_ops.nn modules: against plain-PyTorch math, on both backends."""
import math

import pytest
import torch
import torch.nn.functional as F

import tpt_ops
from tpt_ops import reference
from tpt_ops.nn import (BACKENDS, OP_NAMES, GroupedQueryAttention, HornEmbedding, KVCache, PhaseRMSNorm,
                        PhaseRotation, RotaryEmbedding, SwiGLU, ThreePhaseBlock, check_heads,
                        ops_for, rotate_half)

TOL = dict(rtol=1e-5, atol=1e-5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randomize(module, seed=0):
    """Random values in every parameter (norm weights and angles too, so layout mistakes show)."""
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return module


# ---------------------------------------------------------------- backends

def test_ops_for_backends():
    ref = ops_for("reference")
    for name in OP_NAMES:
        assert getattr(ref, name) is getattr(reference, name)
    assert ops_for("reference") is ref  # cached
    fused = ops_for("fused")
    assert fused.phase_rmsnorm is tpt_ops.phase_rmsnorm
    with pytest.raises(ValueError, match="backend must be one of"):
        ops_for("cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        PhaseRMSNorm(12, 3, backend="nope")


# ------------------------------------------------------------ PhaseRMSNorm

@pytest.mark.parametrize("backend", BACKENDS)
def test_phase_rmsnorm_module(backend):
    norm = PhaseRMSNorm(24, 3, eps=1e-5, backend=backend)
    assert norm.weight.shape == (24,) and torch.equal(norm.weight, torch.ones(24))
    assert repr(norm) == "PhaseRMSNorm(24, n_phases=3, eps=1e-05, backend=%r)" % backend
    randomize(norm)
    x = torch.randn(2, 5, 24, generator=gen(1))
    expected = torch.cat([F.rms_norm(p, (8,), w, 1e-5) for p, w in zip(x.chunk(3, -1), norm.weight.chunk(3))], -1)
    torch.testing.assert_close(norm(x), expected, **TOL)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(24))


def test_phase_rmsnorm_n1_is_rmsnorm():
    norm = randomize(PhaseRMSNorm(16))
    x = torch.randn(3, 16, generator=gen(2))
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, 1e-6), **TOL)
    with pytest.raises(ValueError, match="not divisible by n_phases"):
        PhaseRMSNorm(16, 3)


# ----------------------------------------------------------- PhaseRotation

@pytest.mark.parametrize("backend", BACKENDS)
def test_phase_rotation_module(backend):
    rot = PhaseRotation(24, 3, layer_idx=1, n_layers=4, backend=backend)
    assert rot.theta.shape == (4,)
    torch.testing.assert_close(rot.theta.detach(), torch.full((4,), 2 * math.pi / 8))
    assert "layer_idx=1, n_layers=4" in repr(rot)
    randomize(rot)
    x = torch.randn(2, 3, 24, generator=gen(3))
    y = rot(x)
    # plain Givens rotation of each interleaved pair by theta + i*2pi/3
    expected = torch.empty_like(x)
    for i in range(3):
        phi = rot.theta.detach() + i * 2 * math.pi / 3
        a, b = x[..., i * 8:(i + 1) * 8:2], x[..., i * 8 + 1:(i + 1) * 8:2]
        expected[..., i * 8:(i + 1) * 8:2] = a * phi.cos() - b * phi.sin()
        expected[..., i * 8 + 1:(i + 1) * 8:2] = a * phi.sin() + b * phi.cos()
    torch.testing.assert_close(y, expected, **TOL)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), **TOL)  # orthogonal
    rot.reset_parameters()
    torch.testing.assert_close(rot.theta.detach(), torch.full((4,), math.pi / 4))


def test_phase_rotation_errors():
    with pytest.raises(ValueError, match="must be even"):
        PhaseRotation(9, 3)
    with pytest.raises(ValueError, match="not divisible"):
        PhaseRotation(10, 3)
    with pytest.raises(ValueError, match="layer_idx"):
        PhaseRotation(12, 3, layer_idx=2, n_layers=2)


# ----------------------------------------------------------- HornEmbedding

@pytest.mark.parametrize("backend", BACKENDS)
def test_horn_embedding(backend):
    emb = HornEmbedding(50, 24, 3, backend=backend)
    assert emb.weight.shape == (50, 24)
    assert repr(emb) == "HornEmbedding(50, 24, n_phases=3, horn=True, backend=%r)" % backend
    ids = torch.randint(0, 50, (2, 7), generator=gen(4))
    plain = F.embedding(ids, emb.weight)
    for offset in (0, 5):
        y = emb(ids, offset)
        r = 1.0 / (torch.arange(7) + offset + 1.0)
        # the DC component is replaced by r(p + offset), the rest is untouched
        torch.testing.assert_close(y, plain - plain.mean(-1, keepdim=True) + r[:, None], **TOL)
        phase_means = y.detach().unflatten(-1, (3, 8)).mean(-1).sum(-1)
        torch.testing.assert_close(phase_means, (3 * r).expand(2, 7), **TOL)
    # a token continuing a sequence at position 4 gets the same row as in the full sequence
    torch.testing.assert_close(emb(ids[:, 4:5], offset=4), emb(ids)[:, 4:5], **TOL)
    emb.horn = False
    assert torch.equal(emb(ids, 3), plain)
    old = emb.weight.detach().clone()
    emb.reset_parameters()
    assert not torch.equal(old, emb.weight)


# ----------------------------------------------------------------- RoPE

def rotary(x, cos, sin_signed, backend="fused"):
    """RoPE of every head of x [B, T, n, hd] through the backend's qkv_rope (x as the q heads, zero k and v)."""
    B, T, n, hd = x.shape
    qkv = torch.cat((x, x.new_zeros(B, T, 2, hd)), dim=2).flatten(2)
    return ops_for(backend).qkv_rope(qkv, cos, sin_signed, n, 1)[0].transpose(1, 2)


def test_rotary_embedding():
    rope = RotaryEmbedding(8, 16)
    assert rope.cos.shape == (16, 8) and not dict(rope.state_dict())
    cos, sin_signed = rope(3, 4)
    inv = 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    ang = torch.arange(3, 7)[:, None] * inv
    torch.testing.assert_close(cos, ang.cos().repeat(1, 2))
    torch.testing.assert_close(sin_signed, torch.cat((-ang.sin(), ang.sin()), -1))
    # qkv_rope (both backends) on these tables is the textbook rotate-half form x*cos + rotate_half(x)*sin
    x = torch.randn(2, 4, 3, 8, generator=gen(4))
    for backend in BACKENDS:
        torch.testing.assert_close(rotary(x, cos, sin_signed, backend),
                                   x * cos[:, None] + rotate_half(x) * ang.sin().repeat(1, 2)[:, None])
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        rope(14, 3)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7, 16)
    # rotate-half RoPE: scores depend on relative positions only
    q = torch.randn(1, 1, 1, 8, generator=gen(5))
    k = torch.randn(1, 1, 1, 8, generator=gen(6))

    def score(m, n):
        return (rotary(q, *rope(m, 1)) * rotary(k, *rope(n, 1))).sum()
    torch.testing.assert_close(score(5, 2), score(10, 7))
    torch.testing.assert_close(rotary(q, *rope(9, 1)).norm(), q.norm())


# ------------------------------------------------------------- attention

def naive_attention(attn, x, positions):
    """Explicit softmax attention with separate q/k/v weights and repeated KV heads."""
    B, T, D = x.shape
    H, Hkv, hd = attn.n_q_heads, attn.n_kv_heads, attn.head_dim
    wq, wk, wv = attn.qkv.weight.split([H * hd, Hkv * hd, Hkv * hd])
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = (positions[:, None].double() * inv).repeat(1, 2)
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]

    def rope(t):
        t1, t2 = t[..., :hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat((-t2, t1), -1) * sin
    q = rope((x @ wq.T).view(B, T, H, hd)).transpose(1, 2)
    k = rope((x @ wk.T).view(B, T, Hkv, hd)).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = (x @ wv.T).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hd)
    return out @ attn.o.weight.T


def test_attention_matches_naive_and_cache():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(48, 6, 3, n_phases=3)
    assert attn.head_dim == 8 and attn.qkv.weight.shape == (48 + 2 * 24, 48)
    assert "n_q_heads=6, n_kv_heads=3, head_dim=8" in repr(attn)
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(2, 9, 48, generator=gen(7))
    full = attn(x, *rope(0, 9))
    torch.testing.assert_close(full, naive_attention(attn, x, torch.arange(9)), **TOL)
    # incremental: chunks of 4, 1, 3, 1 through a KV cache give the same outputs
    cache = KVCache(1, 9)
    outs, start = [], 0
    for n in (4, 1, 3, 1):
        outs.append(attn(x[:, start:start + n], *rope(start, n), kv_cache=cache, layer_idx=0))
        start += n
        cache.advance(n)
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL)
    with pytest.raises(ValueError, match="KV cache full"):
        attn(x[:, :1], *rope(9, 1), kv_cache=cache)
    old = attn.qkv.weight.detach().clone()
    attn.reset_parameters()
    assert not torch.equal(old, attn.qkv.weight)


@pytest.mark.parametrize("d,hq,hkv,n,msg", [
    (48, 6, 2, 3, "divisible by n_phases"),
    (48, 4, 3, 3, "divisible by n_phases"),
    (48, 6, 4, 2, "multiple of n_kv_heads"),
    (50, 6, 3, 3, "divisible by n_q_heads"),
    (18, 6, 3, 3, "must be even for RoPE"),
    (48, 0, 3, 3, ">= 1"),
])
def test_attention_head_errors(d, hq, hkv, n, msg):
    with pytest.raises(ValueError, match=msg):
        check_heads(d, hq, hkv, n)
    with pytest.raises(ValueError, match=msg):
        GroupedQueryAttention(d, hq, hkv, n)


# ------------------------------------------------------------------ SwiGLU

def test_swiglu():
    ffn = SwiGLU(12, 20)
    assert ffn.gate_up.weight.shape == (40, 12) and ffn.down.weight.shape == (12, 20)
    assert repr(ffn).startswith("SwiGLU(\n  d_model=12, d_ff=20")
    x = torch.randn(3, 12, generator=gen(8))
    wg, wu = ffn.gate_up.weight.split(20)
    torch.testing.assert_close(ffn(x), (F.silu(x @ wg.T) * (x @ wu.T)) @ ffn.down.weight.T, **TOL)
    old = ffn.down.weight.detach().clone()
    ffn.reset_parameters()
    assert not torch.equal(old, ffn.down.weight)


# ------------------------------------------------------------------ block

def literal_block(block, h, cos, sin_signed):
    """The reference block written out in plain PyTorch from the block's parameters, no tpt_ops code:
    h += attn(norm1(h)) (projections, rotate-half RoPE, explicit causal softmax over repeated KV heads);
    h = rotate(h) (Givens pairs by theta + i*2pi/N); h += ffn(norm2(h)) (SwiGLU)."""
    attn, ffn, rot = block.attn, block.ffn, block.rotation
    B, T, _ = h.shape
    H, Hkv, hd = attn.n_q_heads, attn.n_kv_heads, attn.head_dim
    sin = sin_signed[:, hd // 2:].repeat(1, 2)

    def rope(t):  # [B, heads, T, hd]
        return t * cos + torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), -1) * sin

    def heads(t, n):
        return t.view(B, T, n, hd).transpose(1, 2)

    x = plain_phase_rmsnorm(h, block.norm1)
    wq, wk, wv = attn.qkv.weight.split([H * hd, Hkv * hd, Hkv * hd])
    q = rope(heads(x @ wq.T, H))
    k = rope(heads(x @ wk.T, Hkv)).repeat_interleave(H // Hkv, 1)
    v = heads(x @ wv.T, Hkv).repeat_interleave(H // Hkv, 1)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                                   float("-inf"))
    h = h + (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hd) @ attn.o.weight.T
    if rot is not None:
        n = rot.n_phases
        phi = rot.theta + torch.arange(n, dtype=h.dtype)[:, None] * (2 * math.pi / n)
        pairs = h.unflatten(-1, (n, -1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        h = torch.stack((a * phi.cos() - b * phi.sin(), a * phi.sin() + b * phi.cos()), -1).flatten(-3)
    x = plain_phase_rmsnorm(h, block.norm2)
    wg, wu = ffn.gate_up.weight.split(ffn.d_ff)
    return h + (F.silu(x @ wg.T) * (x @ wu.T)) @ ffn.down.weight.T


def plain_phase_rmsnorm(x, norm):
    xs = x.unflatten(-1, (norm.n_phases, -1))
    return (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + norm.eps)).flatten(-2) * norm.weight


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_rotation,use_phase_norm", [(True, True), (False, True), (False, False), (True, False)])
def test_block_chain_matches_literal_block(backend, use_rotation, use_phase_norm):
    """Outputs and every gradient (h and all parameters) against the literal block, in float64,
    where both sides are exact to about 1e-15 relative."""
    torch.manual_seed(0)
    block = ThreePhaseBlock(48, 6, 3, 64, n_phases=3, layer_idx=1, n_layers=2, use_rotation=use_rotation,
                            use_phase_norm=use_phase_norm, backend=backend, dtype=torch.float64)
    assert (block.rotation is None) != use_rotation
    assert block.norm1.n_phases == (3 if use_phase_norm else 1)
    randomize(block)
    next_norm = randomize(PhaseRMSNorm(48, block.norm1.n_phases, backend=backend, dtype=torch.float64), seed=9)
    cos, sin_signed = (t.double() for t in RotaryEmbedding(8, 16)(0, 6))
    h = torch.randn(2, 6, 48, generator=gen(10), dtype=torch.float64, requires_grad=True)
    params = [h, *block.parameters(), next_norm.weight]
    expected = literal_block(block, h, cos, sin_signed)
    expected_normed = plain_phase_rmsnorm(expected, next_norm)
    out, normed = block(h, cos, sin_signed, normed=None, next_norm=next_norm)
    exact = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected, **exact)
    torch.testing.assert_close(normed, expected_normed, **exact)
    g_out, g_normed = torch.randn(2, 2, 6, 48, generator=gen(11), dtype=torch.float64)
    actual_grads = torch.autograd.grad((out, normed), params, (g_out, g_normed))
    expected_grads = torch.autograd.grad((expected, expected_normed), params, (g_out, g_normed))
    for (name, _), a, e in zip([("h", h), *block.named_parameters(), ("next_norm.weight", None)],
                               actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, **exact, msg=lambda m, name=name: f"d{name}: {m}")
    out2, none = block(h, cos, sin_signed)
    assert none is None
    torch.testing.assert_close(out2, expected, **exact)


def test_block_reset_and_repr():
    block = ThreePhaseBlock(48, 6, 3, 64, n_phases=3, layer_idx=0, n_layers=2)
    randomize(block)
    block.reset_parameters()
    assert torch.equal(block.norm1.weight, torch.ones(48))
    torch.testing.assert_close(block.rotation.theta.detach(), torch.full((8,), math.pi / 4))
    assert "layer_idx=0, backend='fused'" in repr(block)
