"""Loading checkpoints of the paper author's reference implementation (``ThreePhaseTransformer123M.py``)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from tpt_ops.models.config import TPTConfig
from tpt_ops.models.transformer import ThreePhaseTransformer

#: Buffers of the reference model that carry no learned state (recomputed here).
_IGNORED = re.compile(r"^(embedding\.horn_profile|mask|blocks\.\d+\.attn\.rotary\..*)$")
#: The reference script's RoPE/mask capacity (MAX_SEQ_LEN), used when the state_dict has no buffer telling it.
REFERENCE_MAX_SEQ_LEN = 2048


def _unwrap(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Accepts a training payload ``{"model": state_dict, ...}`` and compiled/DDP key prefixes."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _count(sd: Mapping[str, Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


def _norm_weight(sd: dict[str, Tensor], prefix: str, n_phases: int, d_model: int, used: set[str]) -> Tensor:
    """A [D] weight from a reference norm: the per-phase ``norms.{j}.weight`` concatenated, or a plain ``weight``."""
    if f"{prefix}.norms.0.weight" in sd:
        keys = [f"{prefix}.norms.{j}.weight" for j in range(n_phases)]
    else:
        keys = [f"{prefix}.weight"]
    width = d_model // len(keys)
    for key in keys:
        if key not in sd:
            raise ValueError(f"load_reference_state_dict: missing {key!r}")
        if sd[key].numel() != width:
            raise ValueError(f"load_reference_state_dict: {key!r} has {sd[key].numel()} entries, expected {width}")
    used.update(keys)
    return torch.cat([sd[k].reshape(-1) for k in keys])


def load_reference_state_dict(state_dict: Mapping[str, Tensor], n_q_heads: int, n_kv_heads: int, *,
                              max_seq_len: int | None = None, use_horn: bool = True, eps: float = 1e-6,
                              rope_base: float = 10000.0, backend: str = "fused",
                              strict: bool = True) -> ThreePhaseTransformer:
    """A :class:`ThreePhaseTransformer` holding the weights of a reference-implementation checkpoint.

    ``state_dict`` is the ``model.state_dict()`` of the author's
    ``ThreePhaseTransformer`` (or the training payload ``{"model": ...}``
    the reference script saves). Its names::

        embedding.token_emb.weight                [V, D]
        blocks.{i}.attn.{q,k,v,o}.weight          q,o [D, D]; k,v [n_kv*hd, D]
        blocks.{i}.ff.{gate,up,down}.weight       gate,up [d_ff, D]; down [D, d_ff]
        blocks.{i}.n1.norms.{j}.weight            [D/N] per phase j  (n2 likewise)
        blocks.{i}.pr.theta                       [D/N/2]
        norm_f.norms.{j}.weight, head.weight      [D/N], [V, D]

    Buffers (``embedding.horn_profile``, ``blocks.{i}.attn.rotary.*``,
    ``mask``) are ignored: the horn and the RoPE tables are recomputed.

    Inferred from tensor shapes: ``vocab_size`` and ``d_model`` (token
    embedding), ``n_layers`` (number of ``blocks.{i}.attn.q.weight``),
    ``n_phases`` (number of ``norm_f.norms.{j}.weight``), ``d_ff``
    (``ff.gate.weight`` rows), ``use_rotation`` (presence of ``pr.theta``),
    ``use_phase_norm`` (per-phase ``norms.{j}`` rather than a plain
    ``weight``), and ``max_seq_len`` (length of the RoPE cache or mask
    buffer when present, else 2048, the reference's ``MAX_SEQ_LEN``). The
    head counts cannot be recovered from shapes (only their ratio), hence the
    arguments; ``head_dim = d_model / n_q_heads`` as in the reference. The
    reference always injects the horn; pass ``use_horn=False`` for a
    checkpoint of a model without it. q/k/v and gate/up are concatenated
    into the fused ``qkv`` / ``gate_up`` weights.

    Raises ``ValueError`` for missing tensors, shapes that contradict the
    head counts, or (with ``strict``) keys that are neither parameters nor
    the ignored buffers.
    """
    sd = _unwrap(state_dict)
    used: set[str] = set()
    if "embedding.token_emb.weight" not in sd:
        raise ValueError("load_reference_state_dict: missing 'embedding.token_emb.weight' "
                         "(not a ThreePhaseTransformer123M state_dict?)")
    vocab_size, d_model = sd["embedding.token_emb.weight"].shape
    n_layers = _count(sd, "blocks.{}.attn.q.weight")
    if n_layers == 0:
        raise ValueError("load_reference_state_dict: no 'blocks.{i}.attn.q.weight' found")
    n_norm_phases = _count(sd, "norm_f.norms.{}.weight")
    use_phase_norm = n_norm_phases > 0
    use_rotation = "blocks.0.pr.theta" in sd
    if use_phase_norm:
        n_phases = n_norm_phases
    elif use_rotation:  # theta has P/2 = D/(2N) entries
        n_phases = d_model // (2 * sd["blocks.0.pr.theta"].numel())
    else:
        n_phases = 1
    d_ff = sd["blocks.0.ff.gate.weight"].shape[0] if "blocks.0.ff.gate.weight" in sd else None
    if d_ff is None:
        raise ValueError("load_reference_state_dict: missing 'blocks.0.ff.gate.weight'")
    if max_seq_len is None:
        if "blocks.0.attn.rotary.cos_cached" in sd:
            max_seq_len = sd["blocks.0.attn.rotary.cos_cached"].shape[-2]
        elif "mask" in sd:
            max_seq_len = sd["mask"].shape[-1]
        else:
            max_seq_len = REFERENCE_MAX_SEQ_LEN

    config = TPTConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_q_heads=n_q_heads,
                       n_kv_heads=n_kv_heads, n_phases=n_phases, d_ff=d_ff, max_seq_len=max_seq_len,
                       use_rotation=use_rotation, use_horn=use_horn, use_phase_norm=use_phase_norm, eps=eps,
                       rope_base=rope_base, backend=backend)
    kv_dim = n_kv_heads * config.head_dim

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in sd:
            raise ValueError(f"load_reference_state_dict: missing {key!r}")
        t = sd[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"load_reference_state_dict: {key!r} has shape {list(t.shape)}, expected {list(shape)} "
                             f"(n_q_heads={n_q_heads}, n_kv_heads={n_kv_heads}, d_model={d_model})")
        used.add(key)
        return t

    D = d_model
    used.add("embedding.token_emb.weight")
    out = {"embedding.weight": sd["embedding.token_emb.weight"]}
    for i in range(n_layers):
        p = f"blocks.{i}"
        out[f"{p}.attn.qkv.weight"] = torch.cat([take(f"{p}.attn.q.weight", (D, D)),
                                                 take(f"{p}.attn.k.weight", (kv_dim, D)),
                                                 take(f"{p}.attn.v.weight", (kv_dim, D))])
        out[f"{p}.attn.o.weight"] = take(f"{p}.attn.o.weight", (D, D))
        out[f"{p}.ffn.gate_up.weight"] = torch.cat([take(f"{p}.ff.gate.weight", (d_ff, D)),
                                                    take(f"{p}.ff.up.weight", (d_ff, D))])
        out[f"{p}.ffn.down.weight"] = take(f"{p}.ff.down.weight", (D, d_ff))
        out[f"{p}.norm1.weight"] = _norm_weight(sd, f"{p}.n1", n_phases, D, used)
        out[f"{p}.norm2.weight"] = _norm_weight(sd, f"{p}.n2", n_phases, D, used)
        if use_rotation:
            out[f"{p}.rotation.theta"] = take(f"{p}.pr.theta", (D // n_phases // 2,))
    out["norm_f.weight"] = _norm_weight(sd, "norm_f", n_phases, D, used)
    out["head.weight"] = take("head.weight", (vocab_size, D))

    unexpected = sorted(k for k in sd if k not in used and not _IGNORED.match(k))
    if strict and unexpected:
        raise ValueError(f"load_reference_state_dict: unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    model = ThreePhaseTransformer(config)
    model.load_state_dict(out, strict=True)
    return model
