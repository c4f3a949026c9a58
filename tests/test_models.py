"""tpt_ops.models: config validation, fused vs reference, baseline, KV-cache decoding, reference checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tpt_ops.models import TPTConfig, ThreePhaseTransformer, load_reference_state_dict, sample_next
from tpt_ops.nn import BACKENDS

SMALL = dict(vocab_size=64, d_model=48, n_layers=2, n_q_heads=6, n_kv_heads=3, n_phases=3, d_ff=64, max_seq_len=32)


def small(**changes):
    return TPTConfig(**{**SMALL, **changes})


def make_model(config, seed=0, perturb=True):
    """A model with random weights everywhere (norm weights and angles too, so layout mistakes show)."""
    torch.manual_seed(seed)
    model = ThreePhaseTransformer(config)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def ids_of(shape, seed=0, vocab=SMALL["vocab_size"]):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("changes,msg", [
    (dict(d_model=50), r"d_model \(50\) must be divisible by n_phases \(3\)"),
    (dict(n_q_heads=4, n_kv_heads=2), "phase-aligned GQA needs n_q_heads"),
    (dict(n_kv_heads=2), "phase-aligned GQA needs"),
    (dict(d_model=30, n_phases=2, n_q_heads=6, n_kv_heads=2), "phase width d_model/n_phases = 15 must be even"),
    (dict(n_q_heads=3, n_kv_heads=6), r"n_q_heads \(3\) must be a multiple of n_kv_heads \(6\)"),
    (dict(n_q_heads=9, n_kv_heads=3), r"d_model \(48\) must be divisible by n_q_heads \(9\)"),
    (dict(d_model=18, use_rotation=False, use_horn=False, use_phase_norm=False), "must be even for RoPE"),
    (dict(vocab_size=0), "vocab_size must be a positive int"),
    (dict(n_layers=2.0), "n_layers must be a positive int"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(backend="gpu"), "backend must be one of"),
])
def test_config_errors(changes, msg):
    with pytest.raises(ValueError, match=msg):
        small(**changes)


def test_config_baseline_and_presets():
    c = small()
    assert c.is_3pt and c.phases == 3 and c.norm_phases == 3 and c.head_dim == 8
    b = c.baseline()
    assert (b.use_rotation, b.use_horn, b.use_phase_norm) == (False, False, False)
    assert not b.is_3pt and b.phases == 1 and b.norm_phases == 1
    assert (b.d_model, b.n_layers, b.n_q_heads, b.n_kv_heads, b.d_ff) == (48, 2, 6, 3, 64)
    # heads need no phase alignment without the phases
    small(n_q_heads=4, n_kv_heads=2, use_rotation=False, use_horn=False, use_phase_norm=False)
    p = TPTConfig.paper_123m()
    assert (p.d_model, p.n_layers, p.n_q_heads, p.n_kv_heads, p.d_ff, p.vocab_size) == (768, 12, 12, 3, 2048, 32000)


def test_baseline_model_structure():
    c = small()
    m3, mb = ThreePhaseTransformer(c), ThreePhaseTransformer(c.baseline())
    assert not mb.embedding.horn and mb.norm_f.n_phases == 1
    assert all(b.rotation is None and b.norm1.n_phases == 1 and b.norm2.n_phases == 1 for b in mb.blocks)
    assert all(b.rotation is not None and b.norm1.n_phases == 3 for b in m3.blocks)
    # 3PT adds exactly the rotation angles: n_layers * P/2 parameters
    assert m3.num_parameters() - mb.num_parameters() == c.n_layers * (c.d_model // c.n_phases) // 2
    assert mb.num_parameters(exclude_embedding=True) == mb.num_parameters() - 64 * 48
    ids = ids_of((2, 5))
    assert torch.equal(mb.embedding(ids), F.embedding(ids, mb.embedding.weight))
    assert "theta" not in " ".join(mb.state_dict())
    # same names otherwise: a baseline state_dict loads into a 3PT model except the angles
    missing, unexpected = m3.load_state_dict(mb.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("rotation.theta") for k in missing)


def test_paper_123m_parameter_count():
    """+1,536 parameters over the matched baseline at the paper's 123M shape (counted on the meta device)."""
    c = TPTConfig.paper_123m()
    m3 = ThreePhaseTransformer(c, device="meta")
    mb = ThreePhaseTransformer(c.baseline(), device="meta")
    assert m3.num_parameters() - mb.num_parameters() == 1536


# ---------------------------------------------------------- fused vs reference

# element by element (rtol, atol) for the gradients: the two backends round differently,
# a few ulp per operation through two blocks; atol sits far below their typical 1e-3 .. 1e-2
BACKEND_TOL = {torch.float32: (2e-5, 1e-8), torch.float64: (1e-12, 1e-15)}
# and for the logits, O(1) dot products over d_model whose small entries are cancellations:
# their absolute error is a few ulp of the O(1) terms (measured: 5e-7 and 1e-15)
LOGITS_TOL = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-12, 4e-15)}


@pytest.mark.parametrize("dtype", BACKEND_TOL)
@pytest.mark.parametrize("variant", ["3pt", "baseline"])
def test_fused_matches_reference_logits_and_grads(variant, dtype):
    c = small() if variant == "3pt" else small().baseline()
    fused = make_model(c.replace(backend="fused")).to(dtype)
    ref = ThreePhaseTransformer(c.replace(backend="reference")).to(dtype)
    ref.load_state_dict(fused.state_dict())
    ids, targets = ids_of((2, 12), seed=1), ids_of((2, 12), seed=2)
    results = []
    for model in (fused, ref):
        logits = model(ids)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (lf, gf), (lr, gr) = results
    assert lf.shape == (2, 12, 64) and lf.dtype == dtype
    torch.testing.assert_close(lf, lr, rtol=LOGITS_TOL[dtype][0], atol=LOGITS_TOL[dtype][1])
    rtol, atol = BACKEND_TOL[dtype]
    assert gf.keys() == gr.keys()
    for name in gf:
        torch.testing.assert_close(gf[name], gr[name], rtol=rtol, atol=atol, msg=name)


def test_backend_switch():
    m = ThreePhaseTransformer(small(backend="reference"))
    m.backend = "fused"
    assert m.config.backend == "fused"
    assert all(mod.backend == "fused" for mod in m.modules() if hasattr(mod, "backend"))
    with pytest.raises(ValueError):
        m.backend = "bogus"


def test_reset_parameters():
    m = make_model(small())
    m.reset_parameters()
    assert torch.equal(m.norm_f.weight, torch.ones(48))
    for i, b in enumerate(m.blocks):
        torch.testing.assert_close(b.rotation.theta.detach(), torch.full((8,), (i + 1) * math.pi / 4))


# ------------------------------------------------------------ generation

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompt_len", [1, 4])
def test_incremental_decoding_matches_full_forward(backend, prompt_len):
    model = make_model(small(backend=backend)).eval()
    seq = ids_of((2, 11), seed=3)
    with torch.no_grad():
        full = model(seq)
        cache = model.new_kv_cache()
        steps = [model(seq[:, :prompt_len], cache)]
        pos = prompt_len
        for n in (1, 1, 3, 1):  # single tokens and a multi-token chunk after the prompt
            steps.append(model(seq[:, pos:pos + n], cache))
            pos += n
        assert cache.length == pos
        steps.append(model(seq[:, pos:], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_generate_greedy_is_deterministic_and_consistent():
    model = make_model(small()).train()
    prompt = ids_of((2, 3), seed=4)
    out = model.generate(prompt, 8, temperature=0)
    assert model.training  # restored
    assert out.shape == (2, 11) and torch.equal(out[:, :3], prompt)
    assert torch.equal(model.generate(prompt, 8, temperature=0), out)
    # each new token is the argmax of a full forward over everything before it
    with torch.no_grad():
        logits = model.eval()(out)
    assert torch.equal(logits[:, 2:-1].argmax(-1), out[:, 3:])
    assert torch.equal(model.generate(prompt, 8, temperature=1.0, top_k=1), out)
    assert torch.equal(model.generate(prompt[0], 8, temperature=0), out[0])  # [T] prompt


def test_generate_sampling():
    model = make_model(small())
    prompt = ids_of((1, 2), seed=5)
    a = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (1, 12)
    assert torch.equal(model.generate(prompt, 0), prompt)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model.generate(prompt, 31)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1.0)
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    for _ in range(5):
        assert sample_next(logits, 1.0, top_k=2).item() in (1, 3)


# ------------------------------------------------------------- precision

@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_forward(backend):
    model = make_model(small(backend=backend))
    ids = ids_of((2, 16), seed=6)
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    err = (low.float() - ref).abs().max().item()
    assert err < 0.02 * ref.abs().max().item() + 0.02, err
    # training step under autocast: finite grads in float32 parameters
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(ids).flatten(0, 1).float(), ids.flatten())
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


# ---------------------------------------------- the author's reference checkpoints

class AuthorRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class AuthorPhaseNorm(nn.Module):
    """One RMSNorm of width P per phase: names ``norms.{j}.weight``."""

    def __init__(self, d_model, n_phases):
        super().__init__()
        self.norms = nn.ModuleList(AuthorRMSNorm(d_model // n_phases) for _ in range(n_phases))

    def forward(self, x):
        parts = x.chunk(len(self.norms), dim=-1)
        return torch.cat([norm(part) for norm, part in zip(self.norms, parts)], dim=-1)


class AuthorRotary(nn.Module):
    def __init__(self, head_dim, max_len, base=10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_len).float(), self.inv_freq).repeat(1, 2)
        self.register_buffer("cos_cached", angles.cos()[None, None])
        self.register_buffer("sin_cached", angles.sin()[None, None])


class AuthorAttention(nn.Module):
    def __init__(self, d_model, n_q, n_kv, max_len):
        super().__init__()
        self.n_q, self.n_kv, self.hd = n_q, n_kv, d_model // n_q
        self.q = nn.Linear(d_model, n_q * self.hd, bias=False)
        self.k = nn.Linear(d_model, n_kv * self.hd, bias=False)
        self.v = nn.Linear(d_model, n_kv * self.hd, bias=False)
        self.o = nn.Linear(n_q * self.hd, d_model, bias=False)
        self.rotary = AuthorRotary(self.hd, max_len)

    def forward(self, x):
        B, T, D = x.shape
        cos, sin = self.rotary.cos_cached[:, :, :T], self.rotary.sin_cached[:, :, :T]

        def rope(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat((-t2, t1), dim=-1) * sin
        q = rope(self.q(x).view(B, T, self.n_q, self.hd).transpose(1, 2))
        k = rope(self.k(x).view(B, T, self.n_kv, self.hd).transpose(1, 2))
        v = self.v(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        rep = self.n_q // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(B, T, D))


class AuthorFF(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class AuthorEmbedding(nn.Module):
    def __init__(self, vocab, d_model, n_phases, max_len):
        super().__init__()
        self.n_phases = n_phases
        self.token_emb = nn.Embedding(vocab, d_model)
        self.register_buffer("horn_profile", (1.0 / (torch.arange(max_len).float() + 1.0)).view(1, -1, 1))

    def forward(self, ids):
        e = self.token_emb(ids)
        dc = torch.stack([p.mean(-1) for p in e.chunk(self.n_phases, dim=-1)], -1).mean(-1, keepdim=True)
        return e + (self.horn_profile[:, :ids.shape[1]] - dc)


class AuthorRotation(nn.Module):
    def __init__(self, d_model, n_phases, layer_idx, n_layers):
        super().__init__()
        self.n_phases = n_phases
        self.theta = nn.Parameter(torch.full((d_model // n_phases // 2,), (layer_idx + 1) * math.pi / (2 * n_layers)))

    def forward(self, x):
        out = []
        for i, p in enumerate(x.chunk(self.n_phases, dim=-1)):
            phi = self.theta + i * 2 * math.pi / self.n_phases
            a, b = p[..., 0::2], p[..., 1::2]
            out.append(torch.stack((a * phi.cos() - b * phi.sin(), a * phi.sin() + b * phi.cos()), -1).flatten(-2))
        return torch.cat(out, dim=-1)


class AuthorStyle3PT(nn.Module):
    """Plain-PyTorch 3PT with the parameter names of ``ThreePhaseTransformer123M.py`` and the math of docs/model.md."""

    def __init__(self, vocab, d_model, n_layers, d_ff, n_q, n_kv, n_phases=3, max_len=64):
        super().__init__()
        self.embedding = AuthorEmbedding(vocab, d_model, n_phases, max_len + 1)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "attn": AuthorAttention(d_model, n_q, n_kv, max_len),
            "ff": AuthorFF(d_model, d_ff),
            "n1": AuthorPhaseNorm(d_model, n_phases),
            "n2": AuthorPhaseNorm(d_model, n_phases),
            "pr": AuthorRotation(d_model, n_phases, i, n_layers),
        }) for i in range(n_layers))
        self.norm_f = AuthorPhaseNorm(d_model, n_phases)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(max_len, max_len)))

    def forward(self, ids):
        h = self.embedding(ids)
        for b in self.blocks:
            h = h + b["attn"](b["n1"](h))
            h = b["pr"](h)
            h = h + b["ff"](b["n2"](h))
        return self.head(self.norm_f(h))


def author_model(seed=0, n_phases=3, n_q=6, n_kv=3):
    torch.manual_seed(seed)
    ref = AuthorStyle3PT(vocab=64, d_model=48, n_layers=3, d_ff=80, n_q=n_q, n_kv=n_kv, n_phases=n_phases, max_len=40)
    with torch.no_grad():  # move norms and angles off their inits so their layout matters
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape))
    return ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_phases,n_q,n_kv", [(3, 6, 3), (2, 4, 2)])
def test_load_reference_state_dict(backend, n_phases, n_q, n_kv):
    ref = author_model(n_phases=n_phases, n_q=n_q, n_kv=n_kv)
    sd = ref.state_dict()
    assert "embedding.horn_profile" in sd and "blocks.0.attn.rotary.cos_cached" in sd and "mask" in sd
    model = load_reference_state_dict(sd, n_q_heads=n_q, n_kv_heads=n_kv, backend=backend)
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_phases, c.d_ff, c.max_seq_len) == (64, 48, 3, n_phases, 80, 40)
    assert c.use_rotation and c.use_horn and c.use_phase_norm
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters())
    ids = ids_of((2, 17), seed=8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=1e-4, atol=1e-4)


def test_load_reference_payload_and_errors():
    ref = author_model()
    sd = ref.state_dict()
    ids = ids_of((1, 9), seed=9)
    wrapped = {"model": {"_orig_mod." + k: v for k, v in sd.items()}, "step": 10, "optimizer": {}}
    with torch.no_grad():
        torch.testing.assert_close(load_reference_state_dict(wrapped, 6, 3, backend="reference")(ids), ref(ids),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"'blocks.0.attn.k.weight' has shape \[24, 48\], expected \[12, 48\]"):
        load_reference_state_dict(sd, n_q_heads=12, n_kv_heads=3)  # wrong head counts
    with pytest.raises(ValueError, match="unexpected keys"):
        load_reference_state_dict({**sd, "extra.weight": torch.zeros(1)}, 6, 3)
    load_reference_state_dict({**sd, "extra.weight": torch.zeros(1)}, 6, 3, strict=False)
    with pytest.raises(ValueError, match="missing 'blocks.1.ff.up.weight'"):
        load_reference_state_dict({k: v for k, v in sd.items() if k != "blocks.1.ff.up.weight"}, 6, 3)
    with pytest.raises(ValueError, match="embedding.token_emb.weight"):
        load_reference_state_dict({"head.weight": torch.zeros(2, 2)}, 6, 3)
    with pytest.raises(ValueError, match="phase-aligned GQA"):
        load_reference_state_dict(sd, 4, 2)


@pytest.mark.slow
def test_compile_fullgraph_training_step():
    """The whole model traces into one graph (fused ops included) and matches eager."""
    model = make_model(small())
    ids, targets = ids_of((2, 10), seed=10), ids_of((2, 10), seed=11)

    def step(forward):
        logits = forward(ids)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, torch.autograd.grad(loss, list(model.parameters()))

    eager, eager_grads = step(model)
    compiled, compiled_grads = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled, eager, rtol=LOGITS_TOL[torch.float32][0], atol=LOGITS_TOL[torch.float32][1])
    # element by element, with the fused-vs-reference tolerance: inductor may reorder the
    # float32 arithmetic around the custom ops (a few ulp per operation)
    rtol, atol = BACKEND_TOL[torch.float32]
    for (name, _), c, e in zip(model.named_parameters(), compiled_grads, eager_grads, strict=True):
        assert torch.count_nonzero(e) > 0, name
        torch.testing.assert_close(c, e, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
