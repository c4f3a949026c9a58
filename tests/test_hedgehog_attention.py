"""HedgehogAttention, Hedgehog and hybrid models, the distillation loss and softmax-to-Hedgehog conversion."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tpt_ops.models import ThreePhaseTransformer, TPTConfig, convert_to_hedgehog
from tpt_ops.nn import (BACKENDS, GroupedQueryAttention, HedgehogAttention, KVCache, LinearAttentionCache,
                        RotaryEmbedding, hedgehog_distillation_loss)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randomize(module, seed=0, scale=0.3):
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def quadratic_hedgehog(attn: HedgehogAttention, x):
    """The module's math written out: separate projections, explicit softmaxes, masked [T, T] scores."""
    B, T, _ = x.shape
    H, Hkv, hd = attn.n_q_heads, attn.n_kv_heads, attn.head_dim
    w_q, w_k, w_v = attn.qkv.weight.split((H * hd, Hkv * hd, Hkv * hd))
    q = (x @ w_q.T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ w_k.T).view(B, T, Hkv, hd).transpose(1, 2)
    v = (x @ w_v.T).view(B, T, Hkv, hd).transpose(1, 2)

    def phi(t, fmap):
        u = torch.einsum("bhtd,hdf->bhtf", t, fmap.weight)
        if fmap.bias is not None:
            u = u + fmap.bias[None, :, None, :]
        return torch.cat([u.softmax(-1), (-u).softmax(-1)], -1)

    group = H // Hkv
    pq, pk = phi(q, attn.q_map), phi(k, attn.k_map).repeat_interleave(group, 1)
    vv = v.repeat_interleave(group, 1)
    scores = (pq @ pk.transpose(-1, -2)) * torch.ones(T, T, dtype=torch.bool).tril()
    y = (scores @ vv) / (scores.sum(-1, keepdim=True) + 1e-12)
    return y.transpose(1, 2).reshape(B, T, H * hd) @ attn.o.weight.T


def outputs_and_grads(fn, module, x):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(torch.randn(out.shape, generator=gen(7), dtype=out.dtype))
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


# ------------------------------------------------------------------ module

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q,n_kv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("feature_dim,bias", [(None, True), (6, False), (16, True)])
def test_module_matches_quadratic_reference(backend, n_q, n_kv, feature_dim, bias):
    attn = HedgehogAttention(32, n_q, n_kv, feature_dim=feature_dim, feature_bias=bias, backend=backend,
                             dtype=torch.float64)
    randomize(attn)
    x = torch.randn(2, 67, 32, generator=gen(1), dtype=torch.float64)  # T not a multiple of the chunk (64)
    rope = RotaryEmbedding(attn.head_dim, 67)
    cos, sin = rope(0, 67)
    out, dx, dparams = outputs_and_grads(lambda t: attn(t, cos, sin), attn, x)
    ref_out, ref_dx, ref_dparams = outputs_and_grads(lambda t: quadratic_hedgehog(attn, t), attn, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-10, atol=1e-12)
    assert set(dparams) == {"qkv.weight", "o.weight", "q_map.weight", "k_map.weight"} | (
        {"q_map.bias", "k_map.bias"} if bias else set())
    for name in dparams:
        torch.testing.assert_close(dparams[name], ref_dparams[name], rtol=1e-10, atol=1e-12, msg=name)


def test_module_float32_and_rope_free():
    attn = randomize(HedgehogAttention(24, 6, 3, n_phases=3))
    x = torch.randn(1, 10, 24, generator=gen(2))
    cos, sin = RotaryEmbedding(attn.head_dim, 20)(0, 10)
    cos2, sin2 = RotaryEmbedding(attn.head_dim, 20)(5, 10)
    out = attn(x, cos, sin)
    torch.testing.assert_close(out, quadratic_hedgehog(attn, x), rtol=1e-5, atol=1e-6)
    assert torch.equal(out, attn(x, cos2, sin2))  # no positional rotation anywhere


def test_feature_map_init_and_layout():
    attn = HedgehogAttention(32, 4, 2)
    assert attn.q_map.weight.shape == (4, 8, 8) and attn.k_map.weight.shape == (2, 8, 8)
    assert torch.equal(attn.q_map.weight, torch.eye(8).expand(4, 8, 8))
    assert torch.equal(attn.k_map.bias, torch.zeros(2, 8))
    wide = HedgehogAttention(32, 4, 2, feature_dim=12, feature_bias=False)
    assert wide.q_map.weight.shape == (4, 8, 12) and wide.q_map.bias is None
    assert not torch.equal(wide.q_map.weight[0, :, 0], wide.q_map.weight[0, :, 1])  # no symmetric features
    assert isinstance(attn, GroupedQueryAttention)  # same qkv/o layout and head checks
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        HedgehogAttention(32, 4, 3)
    with pytest.raises(ValueError, match="divisible by n_phases"):
        HedgehogAttention(48, 4, 2, n_phases=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        HedgehogAttention(32, 4, 2, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_decode_equals_full_forward(backend):
    attn = randomize(HedgehogAttention(32, 4, 2, backend=backend, dtype=torch.float64), scale=0.5)
    x = torch.randn(2, 20, 32, generator=gen(3), dtype=torch.float64)
    cos, sin = RotaryEmbedding(attn.head_dim, 20)(0, 20)
    full = attn(x, cos, sin)
    cache = LinearAttentionCache(1, 20)
    pieces = [attn(x[:, :6], cos, sin, cache)]
    for t in range(6, 12):
        pieces.append(attn(x[:, t:t + 1], cos, sin, cache))
    pieces.append(attn(x[:, 12:], cos, sin, cache))  # several tokens continuing a state
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-12)
    S, z = cache.states[0]
    assert S.shape == (2, 2, 16, 8) and z.shape == (2, 2, 16)
    torch.testing.assert_close(z.sum(-1), torch.full((2, 2), 40.0, dtype=torch.float64))  # 20 tokens x 2
    assert cache.keys[0] is None  # no KV buffers for a Hedgehog layer
    cache.reset()
    assert cache.states == [None] and cache.length == 0
    with pytest.raises(TypeError, match="LinearAttentionCache"):
        attn(x[:, :3], cos, sin, KVCache(1, 20))


# ------------------------------------------------------------------- model

def hybrid_config(**changes):
    base = dict(vocab_size=64, d_model=48, n_layers=3, n_q_heads=6, n_kv_heads=3, n_phases=3, d_ff=64,
                max_seq_len=32, attention="hedgehog", hedgehog_layers=(0, 2))
    base.update(changes)
    return TPTConfig(**base)


def test_config_layers_and_errors():
    c = hybrid_config()
    assert [c.is_hedgehog_layer(i) for i in range(3)] == [True, False, True]
    assert all(hybrid_config(hedgehog_layers=None).is_hedgehog_layer(i) for i in range(3))
    assert not any(hybrid_config(attention="softmax", hedgehog_layers=None).is_hedgehog_layer(i) for i in range(3))
    assert hybrid_config(hedgehog_layers=[1]).hedgehog_layers == (1,)
    for changes, match in [(dict(attention="linear"), "attention must be one of"),
                           (dict(attention="softmax"), "needs attention='hedgehog'"),
                           (dict(hedgehog_layers=()), "at least one layer"),
                           (dict(hedgehog_layers=(3,)), "not a layer index in 0..2"),
                           (dict(hedgehog_layers=(-1,)), "not a layer index"),
                           (dict(hedgehog_layers=(1, 1)), "names a layer twice"),
                           (dict(hedgehog_feature_dim=0), "hedgehog_feature_dim must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            hybrid_config(**changes)


def test_model_layers_and_state_dict():
    model = ThreePhaseTransformer(hybrid_config(hedgehog_feature_dim=4, hedgehog_feature_bias=False))
    kinds = [type(b.attn) for b in model.blocks]
    assert kinds == [HedgehogAttention, GroupedQueryAttention, HedgehogAttention]
    keys = set(model.state_dict())
    assert {"blocks.0.attn.q_map.weight", "blocks.2.attn.k_map.weight", "blocks.1.attn.qkv.weight"} <= keys
    assert "blocks.1.attn.q_map.weight" not in keys and "blocks.0.attn.q_map.bias" not in keys
    assert model.blocks[0].attn.q_map.weight.shape == (6, 8, 4)
    assert isinstance(model.new_kv_cache(), LinearAttentionCache)
    model.backend = "reference"
    assert model.blocks[2].attn.q_map.backend == "reference"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", [(0, 2), None])
def test_model_decode_equals_full_forward(backend, layers):
    torch.manual_seed(0)
    model = ThreePhaseTransformer(hybrid_config(backend=backend, hedgehog_layers=layers)).double().eval()
    ids = torch.randint(0, 64, (2, 24), generator=gen(4))
    full = model(ids)
    cache = model.new_kv_cache()
    steps = [model(ids[:, :9], cache)] + [model(ids[:, t:t + 1], cache) for t in range(9, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)
    # greedy generation with the recurrent state picks what the full forward's argmax picks
    out = model.generate(ids[:, :5], 12, temperature=0)
    logits = model(out[:, :-1])
    assert torch.equal(out[:, 5:], logits[:, 4:].argmax(-1))


def train_losses(model, steps=8, params=None, seed=0):
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=1e-2)
    data = torch.randint(0, 16, (4, 17), generator=gen(seed))  # a small alphabet: quickly learnable
    losses = []
    for _ in range(steps):
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_hybrid_trains_identically_on_both_backends():
    runs = {}
    for backend in BACKENDS:
        torch.manual_seed(0)
        model = ThreePhaseTransformer(hybrid_config(backend=backend))
        runs[backend] = (train_losses(model), model)
    losses = runs["fused"][0]
    assert losses[-1] < losses[0] - 0.5, losses
    torch.testing.assert_close(torch.tensor(runs["reference"][0]), torch.tensor(losses), rtol=1e-4, atol=1e-4)
    fused_sd, ref_sd = runs["fused"][1].state_dict(), runs["reference"][1].state_dict()
    for key in fused_sd:
        torch.testing.assert_close(fused_sd[key], ref_sd[key], rtol=1e-3, atol=1e-4, msg=key)
    text = runs["fused"][1].generate(torch.tensor([1, 2, 3]), 8, temperature=0.8, top_k=5, generator=gen(1))
    assert text.shape == (11,)


# ----------------------------------------------------------- distillation

def direct_distillation_loss(q, k, phi_q, phi_k):
    """Element by element in float64: -mean over (b, h, i) of sum_j a_ij log(max(b_ij, 1e-12))."""
    B, H, T, d = q.shape
    group = H // k.shape[1]
    total, rows = 0.0, 0
    for b in range(B):
        for h in range(H):
            for i in range(T):
                logits = [float(q[b, h, i] @ k[b, h // group, j]) / math.sqrt(d) for j in range(i + 1)]
                top = max(logits)
                a = [math.exp(s - top) for s in logits]
                a = [w / sum(a) for w in a]
                s = [float(phi_q[b, h, i] @ phi_k[b, h // group, j]) for j in range(i + 1)]
                total += -sum(w * math.log(max(x / sum(s), 1e-12)) for w, x in zip(a, s))
                rows += 1
    return total / rows


@pytest.mark.parametrize("n_q,n_kv", [(2, 2), (4, 2), (4, 1)])
def test_distillation_loss_matches_direct_computation(n_q, n_kv):
    g = gen(5)
    q = torch.randn(2, n_q, 7, 4, generator=g, dtype=torch.float64) * 2
    k = torch.randn(2, n_kv, 7, 4, generator=g, dtype=torch.float64) * 2
    phi_q = torch.rand(2, n_q, 7, 6, generator=g, dtype=torch.float64)
    phi_k = torch.rand(2, n_kv, 7, 6, generator=g, dtype=torch.float64)
    phi_k[0, 0, 1] = 0.0  # a zero student weight: clamped at 1e-12 before the log
    loss = hedgehog_distillation_loss(q, k, phi_q, phi_k)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(direct_distillation_loss(q, k, phi_q, phi_k), rel=1e-12)
    # float32 inputs are computed in float32
    loss32 = hedgehog_distillation_loss(q.float(), k.float(), phi_q.float(), phi_k.float())
    assert loss32.dtype == torch.float32 and loss32.item() == pytest.approx(loss.item(), rel=1e-5)


def test_distillation_loss_gradient_reaches_only_the_student():
    g = gen(6)
    q, k = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    phi_q, phi_k = (torch.rand(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    hedgehog_distillation_loss(q, k, phi_q, phi_k).backward()
    assert q.grad is None and k.grad is None
    assert phi_q.grad.abs().sum() > 0 and phi_k.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of Hkv"):
        hedgehog_distillation_loss(torch.zeros(1, 3, 5, 4), torch.zeros(1, 2, 5, 4), torch.zeros(1, 3, 5, 6),
                                   torch.zeros(1, 2, 5, 6))
    with pytest.raises(ValueError, match="one common feature width"):
        hedgehog_distillation_loss(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 6),
                                   torch.zeros(1, 2, 5, 8))


def trained_softmax_model(backend="fused"):
    torch.manual_seed(0)
    model = ThreePhaseTransformer(hybrid_config(attention="softmax", hedgehog_layers=None, backend=backend))
    train_losses(model, steps=6)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_conversion_keeps_weights_and_freezes_all_but_feature_maps(backend):
    teacher = trained_softmax_model(backend)
    model = copy.deepcopy(teacher)
    conversion = convert_to_hedgehog(model, layers=[2, 0])
    assert conversion.layers == (0, 2) and model.config.hedgehog_layers == (0, 2)
    assert [type(b.attn) for b in model.blocks] == [HedgehogAttention, GroupedQueryAttention, HedgehogAttention]
    teacher_sd = teacher.state_dict()
    for key, value in model.state_dict().items():
        if "_map." in key:
            continue
        assert torch.equal(value, teacher_sd[key]), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.{m}.{w}" for i in (0, 2) for m in ("q_map", "k_map")
                         for w in ("weight", "bias")}
    assert {id(p) for p in conversion.parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    # while distilling, the converted layers compute the teacher's softmax attention
    ids = torch.randint(0, 64, (2, 16), generator=gen(8))
    for attn in conversion.attention_layers():
        attn.distilling = True
    torch.testing.assert_close(model(ids), teacher(ids), rtol=1e-5, atol=1e-5)
    for attn in conversion.attention_layers():
        attn.distilling = False
    assert not torch.allclose(model(ids), teacher(ids), atol=1e-3)  # the linear attention itself differs
    # converting the remaining layer completes the model; converting a layer twice is refused
    with pytest.raises(ValueError, match="already has Hedgehog attention"):
        convert_to_hedgehog(model, layers=[0])
    convert_to_hedgehog(model)
    assert model.config.hedgehog_layers is None and all(isinstance(b.attn, HedgehogAttention) for b in model.blocks)
    with pytest.raises(ValueError, match="no softmax attention layer"):
        convert_to_hedgehog(model)
    with pytest.raises(ValueError, match="not a layer index"):
        convert_to_hedgehog(copy.deepcopy(teacher), layers=[3])


def test_distillation_loss_falls_and_trains_only_feature_maps():
    teacher = trained_softmax_model()
    model = copy.deepcopy(teacher)
    conversion = convert_to_hedgehog(model)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam(conversion.parameters(), lr=3e-2)
    ids = torch.randint(0, 16, (4, 24), generator=gen(9))
    losses = []
    for _ in range(15):
        loss = conversion.distillation_loss(ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.05, losses
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(not attn.distilling and attn.distillation_loss is None for attn in conversion.attention_layers())
    # the converted model decodes with the recurrent state
    full = model(ids[:1])
    cache = model.new_kv_cache()
    steps = [model(ids[:1, :4], cache)] + [model(ids[:1, t:t + 1], cache) for t in range(4, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- trainer

def test_trainer_converts_a_checkpoint(tmp_path):
    from tpt_ops import train
    tiny = ["--d-model", "24", "--n-layers", "2", "--d-ff", "48", "--seq-len", "32", "--batch-size", "4",
            "--eval-batches", "2", "--max-bytes", "100000", "--sample-tokens", "8", "--quiet"]
    teacher_run, student_run = tmp_path / "teacher", tmp_path / "student"
    teacher = train.run_cli(tiny + ["--steps", "20", "--eval-every", "20", "--out", str(teacher_run)])
    summary = train.run_cli(tiny + ["--steps", "12", "--eval-every", "6", "--lr", "3e-2", "--warmup", "0",
                                    "--convert-from", str(teacher_run / "ckpt.pt"), "--out", str(student_run)])
    assert summary["teacher_val_bpb"] == pytest.approx(teacher["final_val_bpb"], rel=1e-6)
    assert math.isfinite(summary["converted_val_bpb_before"]) and math.isfinite(summary["final_val_bpb"])
    losses = [r["loss"] for r in train.read_metrics(student_run / "metrics.jsonl")]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    before = torch.load(teacher_run / "ckpt.pt", weights_only=False)
    after = torch.load(student_run / "ckpt.pt", weights_only=False)
    assert after["config"]["attention"] == "hedgehog" and after["run"]["convert_from"].endswith("ckpt.pt")
    for key, value in after["model"].items():
        assert ("_map." in key) != torch.equal(value, before["model"].get(key, torch.empty(0))), key
    with pytest.raises(SystemExit, match="no checkpoint at"):
        train.run_cli(tiny + ["--steps", "2", "--convert-from", str(tmp_path / "missing.pt"),
                              "--out", str(tmp_path / "x")])
