"""One full training step (forward + backward + AdamW) of 3PT and its matched baseline, on CPU.

Four variants at two shapes, in one run: 3PT and the RoPE-only baseline,
each on the fused C kernels and on the plain-PyTorch reference ops (same
model code, same weights, same GEMMs; only the 3PT ops differ). The last
test prints a table: per-step time, 3PT-over-baseline overhead per backend
(the paper's reference code pays +17.2% per step) and the fused-3PT speedup
over reference-3PT.

Run:  python -m pytest benchmarks/bench_model.py -q -s
      (or: python benchmarks/bench_model.py)
Not part of the test suite; it takes about two minutes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tpt_ops.models import TPTConfig, ThreePhaseTransformer

ALL_THREADS = torch.get_num_threads()

SHAPES = {
    # name: model sizes, batch x sequence, threads (None: all), timed rounds
    "d96-L4": dict(model=dict(d_model=96, n_layers=4, d_ff=256, n_q_heads=6, n_kv_heads=3),
                   batch=16, seq=128, threads=1, rounds=30),
    "d384-L6": dict(model=dict(d_model=384, n_layers=6, d_ff=1024, n_q_heads=6, n_kv_heads=3),
                    batch=4, seq=256, threads=None, rounds=15),
}
VARIANTS = [("3pt", "fused"), ("3pt", "reference"), ("baseline", "fused"), ("baseline", "reference")]

#: (shape, variant, backend) -> median seconds per step
RESULTS: dict[tuple[str, str, str], float] = {}


def make_step(shape: str, variant: str, backend: str):
    spec = SHAPES[shape]
    config = TPTConfig(vocab_size=256, max_seq_len=spec["seq"], backend=backend, **spec["model"])
    if variant == "baseline":
        config = config.baseline()
    torch.manual_seed(0)
    model = ThreePhaseTransformer(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (spec["batch"], spec["seq"] + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
    return step


@pytest.mark.parametrize("variant,backend", VARIANTS, ids=[f"{v}-{b}" for v, b in VARIANTS])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step(benchmark, shape, variant, backend):
    spec = SHAPES[shape]
    benchmark.group = f"train-step {shape}"
    torch.set_num_threads(spec["threads"] or ALL_THREADS)
    try:
        step = make_step(shape, variant, backend)
        step()  # first step: allocations, AdamW state
        benchmark.pedantic(step, rounds=spec["rounds"], iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(ALL_THREADS)
    if benchmark.stats is not None:
        RESULTS[(shape, variant, backend)] = benchmark.stats.stats.median


def test_zz_report(capsys):
    """Prints the comparison table of everything measured above."""
    lines = ["", "training step (forward + backward + AdamW), CPU, median per step",
             f"{'shape':<9} {'threads':>7} {'3PT fused':>10} {'3PT ref':>10} {'base fused':>10} {'base ref':>10} "
             f"{'3PT ovh fused':>13} {'3PT ovh ref':>11} {'fused/ref 3PT':>13}"]
    for shape, spec in SHAPES.items():
        t = {(v, b): RESULTS.get((shape, v, b)) for v, b in VARIANTS}
        if any(value is None for value in t.values()):
            lines.append(f"{shape:<9} (not measured)")
            continue

        def ms(v, b):
            return f"{t[v, b] * 1e3:9.1f}ms"

        def overhead(b):
            return f"{(t['3pt', b] / t['baseline', b] - 1) * 100:+.1f}%"
        speedup = t["3pt", "reference"] / t["3pt", "fused"]
        threads = spec["threads"] or ALL_THREADS
        lines.append(f"{shape:<9} {threads:>7} {ms('3pt', 'fused'):>10} {ms('3pt', 'reference'):>10} "
                     f"{ms('baseline', 'fused'):>10} {ms('baseline', 'reference'):>10} "
                     f"{overhead('fused'):>13} {overhead('reference'):>11} {speedup:>12.2f}x")
    with capsys.disabled():
        print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s", "--benchmark-columns=median,iqr,rounds"]))
