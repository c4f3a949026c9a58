"""One full training step (forward + backward + AdamW) of 3PT and its matched baseline, on CPU.

Four variants at two shapes, in one run: 3PT and the RoPE-only baseline,
each on the fused C kernels and on the plain-PyTorch reference ops (same
model code, same weights, same GEMMs). Each variant is a pytest-benchmark
test; the last tests time the four variants again in interleaved rounds and
print a table: per-step time, 3PT-over-baseline overhead per backend (the
paper's reference code pays +17.2% per step) and the fused-3PT speedup over
reference-3PT, as medians of per-round ratios with their spread. The
optimizer is the trainer's (``tpt_ops.train.make_optimizer``: AdamW,
``fused=True``).

Run:  python -m pytest benchmarks/bench_model.py -q -s
      (or: python benchmarks/bench_model.py)
Not part of the test suite; it takes about six minutes.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tpt_ops.models import TPTConfig, ThreePhaseTransformer
from tpt_ops.train import make_optimizer

ALL_THREADS = torch.get_num_threads()

SHAPES = {
    # name: model sizes, batch x sequence, threads (None: all), timed rounds
    "d96-L4": dict(model=dict(d_model=96, n_layers=4, d_ff=256, n_q_heads=6, n_kv_heads=3),
                   batch=16, seq=128, threads=1, rounds=30),
    "d384-L6": dict(model=dict(d_model=384, n_layers=6, d_ff=1024, n_q_heads=6, n_kv_heads=3),
                    batch=4, seq=256, threads=None, rounds=15),
}
VARIANTS = [("3pt", "fused"), ("3pt", "reference"), ("baseline", "fused"), ("baseline", "reference")]


def make_step(shape: str, variant: str, backend: str):
    spec = SHAPES[shape]
    config = TPTConfig(vocab_size=256, max_seq_len=spec["seq"], backend=backend, **spec["model"])
    if variant == "baseline":
        config = config.baseline()
    torch.manual_seed(0)
    model = ThreePhaseTransformer(config).train()
    opt = make_optimizer(model, SimpleNamespace(lr=1e-4, weight_decay=0.1))
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


STEPS_PER_TURN = 3


def paired_ratios(steps: dict, rounds: int) -> dict:
    """Gives every variant one turn per round, in a rotating order, so that
    slow drift of a noisy machine hits all variants alike; returns each
    variant's per-round time per step (seconds).

    A turn is one untimed step, then STEPS_PER_TURN timed ones: the timed
    steps run as in training, right after a step of the same model (its
    weights, optimizer state and freed buffers at hand), not right after
    another variant's step, which would charge every variant the cost of
    switching models."""
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            steps[name]()
            t0 = time.perf_counter()
            for _ in range(STEPS_PER_TURN):
                steps[name]()
            times[name].append((time.perf_counter() - t0) / STEPS_PER_TURN)
    return times


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_zz_interleaved_report(shape, capsys):
    """The comparison table, from interleaved rounds: per-step medians, and the
    3PT overhead and fused speedup as medians of per-round ratios, with their
    interquartile range (the run's own noise)."""
    spec = SHAPES[shape]
    torch.set_num_threads(spec["threads"] or ALL_THREADS)
    try:
        steps = {(v, b): make_step(shape, v, b) for v, b in VARIANTS}
        for step in steps.values():
            step()
        t = paired_ratios(steps, spec["rounds"])
    finally:
        torch.set_num_threads(ALL_THREADS)

    def ratio(num, den):
        rs = sorted(a / b for a, b in zip(t[num], t[den]))
        return median(rs), rs[len(rs) // 4], rs[3 * len(rs) // 4]

    def pct(r):
        return f"{(r[0] - 1) * 100:+.1f}% [{(r[1] - 1) * 100:+.1f}, {(r[2] - 1) * 100:+.1f}]"
    fused_ovh = ratio(("3pt", "fused"), ("baseline", "fused"))
    ref_ovh = ratio(("3pt", "reference"), ("baseline", "reference"))
    speedup = ratio(("3pt", "reference"), ("3pt", "fused"))
    ms = {k: f"{median(v) * 1e3:.1f}" for k, v in t.items()}
    lines = ["", f"training step {shape} ({spec['threads'] or ALL_THREADS} threads, {len(t[VARIANTS[0]])} interleaved "
             f"rounds of {STEPS_PER_TURN} steps per variant): median ms per step; ratios are medians of per-round ratios [interquartile range]",
             "| 3PT fused | 3PT ref | base fused | base ref | 3PT overhead, fused | 3PT overhead, ref | fused/ref 3PT |",
             "|---|---|---|---|---|---|---|",
             f"| {ms['3pt', 'fused']} | {ms['3pt', 'reference']} | {ms['baseline', 'fused']} | "
             f"{ms['baseline', 'reference']} | {pct(fused_ovh)} | {pct(ref_ovh)} | "
             f"{speedup[0]:.2f}x [{speedup[1]:.2f}, {speedup[2]:.2f}] |"]
    with capsys.disabled():
        print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s", "--benchmark-columns=median,iqr,rounds"]))
