"""Benchmark harness: every op is timed against its eager reference and
torch.compile of that reference in the same run, and its traffic is put
against a copy bandwidth measured in that run.

Run with ``make bench`` (pytest-benchmark). A table is printed at the end:
times, ratios, achieved GB/s and its fraction of the measured copy bandwidth.
No timing is asserted anywhere: these machines are noisy.
"""
from __future__ import annotations

import ctypes
import platform
import time
from collections import defaultdict

import pytest
import torch

def keep_freed_memory_in_heap() -> bool:
    """Fix glibc's malloc thresholds for the session so that every implementation's freed tensors of up to
    32 MiB stay in the heap, ready for the next round; True if it applied (glibc), False elsewhere.

    By default glibc trims the heap whenever its free top passes twice the (dynamic) mmap threshold. With
    pytest-benchmark keeping the previous round's result alive during the next call, the heap then grew and
    shrank every few rounds, and which implementation paid for faulting its output in again (6144 faults,
    10-12 ms a 25 MB tensor) depended on the allocation order: `phase_rmsnorm` float32 forward measured
    12 ms with 2 of 3 rounds faulting, against 3.6 ms without the faults. Here no round of any
    implementation faults after its warm-up. Tensors above 32 MiB, glibc's largest mmap threshold, are still
    mapped afresh on every allocation, for every implementation alike.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


HEAP_KEPT = keep_freed_memory_in_heap()
RESULTS: dict = defaultdict(dict)  # (op, mode, dtype, shape) -> {impl: (median_s, bytes)}
INTERLEAVED: dict = defaultdict(dict)  # key -> {baseline: median over rounds of baseline time / tpt time}
COPY_GBPS: list = []
# The steps of the key being benchmarked, {impl: step}, kept until the next key starts (interleave_finished_key).
PENDING_STEPS: dict = {}


# The ops are benchmarked on [8192, 768] float32 tensors (25 MB), which is
# close to this machine kind's L3 size, so the copy that sets the bar moves
# tensors of that same size into a fresh output, as the ops do; a copy far
# out of cache (256 MB) is printed beside it.
OP_TENSOR_BYTES = 8192 * 768 * 4


def measure_copy_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """GB/s (read + write counted) of x.clone() for a tensor of nbytes, median of `repeats`."""
    src = torch.ones(nbytes // 4)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.clone()
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    if not COPY_GBPS:
        COPY_GBPS.append(measure_copy_bandwidth(OP_TENSOR_BYTES))
        COPY_GBPS.append(measure_copy_bandwidth(256 * 2**20))
    return COPY_GBPS[0]


@pytest.fixture
def record(copy_gbps):
    """record(key, impl, benchmark, nbytes): keep the median of a finished benchmark."""
    def _record(key: tuple, impl: str, benchmark, nbytes: int) -> None:
        if benchmark.stats is not None:  # None under --benchmark-disable
            RESULTS[key][impl] = (benchmark.stats.stats.median, nbytes)
    return _record


def run_benchmark(benchmark, fn, rounds: int = 20, warmup: int = 3) -> None:
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)


def bench_op(benchmark, record, key: tuple, impl: str, fn, args: tuple, mode: str, dy, nbytes: int) -> None:
    """Times ``fn(*args)``: mode "fwd" without autograd, mode "fwd+bwd" as the
    forward plus the gradients, for output gradient(s) ``dy``, of every tensor
    argument that requires grad; records the median under ``key``/``impl``."""
    grad_args = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def step():
        if mode == "fwd":
            with torch.no_grad():
                return fn(*args)
        return torch.autograd.grad(fn(*args), grad_args, dy)

    run_benchmark(benchmark, step)
    record(key, impl, benchmark, nbytes)
    if PENDING_STEPS and PENDING_STEPS["key"] != key:
        interleave_finished_key()
    PENDING_STEPS.setdefault("key", key)
    PENDING_STEPS.setdefault("steps", {})[impl] = step


# Seconds of interleaved rounds per baseline of a key, within 5 to 20 rounds.
INTERLEAVED_BUDGET_S = 3.0


def interleave_finished_key() -> None:
    """Times each implementation of the key just finished against tpt again, in rounds that run the two once
    each, in alternating order, and records the median over rounds of its time over tpt's in the same round.

    pytest-benchmark times one implementation's rounds in one stretch, then the next one's, so a host whose
    speed drifts by 10-30% between stretches (seen on these shared VMs) moves the ratio of two stretches' medians
    as much; within one round the drift is the same for both, so the per-round ratio cancels it. The pairs are
    timed apart, tpt against one baseline at a time, so that no implementation runs after a third one's
    aftermath (the eager references' temporaries) more often than tpt does. The tests of a key run one after
    another (impl is each benchmark's innermost parameter), so only that key's arguments are kept alive."""
    key, steps = PENDING_STEPS.pop("key"), PENDING_STEPS.pop("steps")
    medians = {impl: RESULTS[key][impl][0] for impl in steps if impl in RESULTS[key]}
    if "tpt" not in medians:
        return
    for impl in medians:
        if impl == "tpt":
            continue
        rounds = max(5, min(20, int(INTERLEAVED_BUDGET_S / (medians["tpt"] + medians[impl]))))
        ratios = []
        for r in range(rounds):
            times = {}
            for name in ("tpt", impl) if r % 2 == 0 else (impl, "tpt"):
                t0 = time.perf_counter()
                steps[name]()
                times[name] = time.perf_counter() - t0
            ratios.append(times[impl] / times["tpt"])
        INTERLEAVED[key][impl] = sorted(ratios)[len(ratios) // 2]


def baselines() -> list[str]:
    """Every implementation recorded beside "tpt" (eager, compile, unfused, sdpa, ...), in the order first seen."""
    return list(dict.fromkeys(impl for r in RESULTS.values() for impl in r if impl != "tpt"))


def results_table(gbps: float) -> list[str]:
    """Markdown rows: tpt time, each baseline's time and tpt's speedup over it, GB/s and % of copy bandwidth."""
    names = baselines()
    header = ["op", "mode", "dtype", "tpt ms"]
    for b in names:
        header += [f"{b} ms", f"x {b}", f"x {b} alt"]
    header += ["GB/s", "% copy bw"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key in sorted(RESULTS, key=str):
        r = RESULTS[key]
        if "tpt" not in r:
            continue
        t, nbytes = r["tpt"]
        cells = [*key[:3], f"{t * 1e3:.2f}"]
        for b in names:
            alt = INTERLEAVED.get(key, {}).get(b)
            cells += [f"{r[b][0] * 1e3:.2f}", f"{r[b][0] / t:.2f}"] if b in r else ["", ""]
            cells.append(f"{alt:.2f}" if alt is not None else "")
        achieved = nbytes / t / 1e9
        cells += [f"{achieved:.1f}", f"{100 * achieved / gbps:.0f}%"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def pytest_terminal_summary(terminalreporter):
    if PENDING_STEPS:
        interleave_finished_key()
    if not RESULTS:
        return
    gbps = COPY_GBPS[0] if COPY_GBPS else float("nan")
    w = terminalreporter.write_line
    w("")
    w(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    w("glibc heap: freed memory kept (benchmarks/conftest.py)" if HEAP_KEPT else "malloc: the platform's defaults")
    w(f"measured copy bandwidth (clone, median): {gbps:.1f} GB/s at 25 MB, {COPY_GBPS[1]:.1f} GB/s at 256 MB; "
      "GB/s below counts each op's minimum traffic, % is of the 25 MB copy")
    w("x B: B's median over tpt's (each timed in its own stretch of rounds); x B alt: the median of B's time over "
      "tpt's in the same round, from rounds that alternate the two (conftest.interleave_finished_key)")
    for row in results_table(gbps):
        w(row)
