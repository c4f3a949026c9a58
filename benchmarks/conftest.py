"""Benchmark harness: every op is timed against its eager reference and
torch.compile of that reference in the same run, and its traffic is put
against a copy bandwidth measured in that run.

Run with ``make bench`` (pytest-benchmark). A table is printed at the end:
times, ratios, achieved GB/s and its fraction of the measured copy bandwidth.
No timing is asserted anywhere: these machines are noisy.
"""
from __future__ import annotations

import platform
import time
from collections import defaultdict

import pytest
import torch

RESULTS: dict = defaultdict(dict)  # (op, mode, dtype, shape) -> {impl: (median_s, bytes)}
COPY_GBPS: list = []


def measure_copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 15) -> float:
    """GB/s of dst.copy_(src) out of cache (read + write counted), best of `repeats`."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    if not COPY_GBPS:
        COPY_GBPS.append(measure_copy_bandwidth())
    return COPY_GBPS[0]


@pytest.fixture
def record(copy_gbps):
    """record(key, impl, benchmark, nbytes): keep the median of a finished benchmark."""
    def _record(key: tuple, impl: str, benchmark, nbytes: int) -> None:
        RESULTS[key][impl] = (benchmark.stats.stats.median, nbytes)
    return _record


def run_benchmark(benchmark, fn, rounds: int = 20, warmup: int = 3) -> None:
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)


BASELINES = ("eager", "compile", "unfused")  # other implementations, when a benchmark has them


def results_table(gbps: float) -> list[str]:
    """Markdown rows: tpt time, each baseline's time and tpt's speedup over it, GB/s and % of copy bandwidth."""
    header = ["op", "mode", "dtype", "tpt ms"]
    for b in BASELINES:
        header += [f"{b} ms", f"x {b}"]
    header += ["GB/s", "% copy bw"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key in sorted(RESULTS, key=str):
        r = RESULTS[key]
        if "tpt" not in r:
            continue
        t, nbytes = r["tpt"]
        cells = [*key[:3], f"{t * 1e3:.2f}"]
        for b in BASELINES:
            cells += [f"{r[b][0] * 1e3:.2f}", f"{r[b][0] / t:.2f}"] if b in r else ["", ""]
        achieved = nbytes / t / 1e9
        cells += [f"{achieved:.1f}", f"{100 * achieved / gbps:.0f}%"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    gbps = COPY_GBPS[0] if COPY_GBPS else float("nan")
    w = terminalreporter.write_line
    w("")
    w(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    w(f"measured copy bandwidth: {gbps:.1f} GB/s (GB/s below counts the minimum traffic of each op)")
    for row in results_table(gbps):
        w(row)
