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


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    gbps = COPY_GBPS[0] if COPY_GBPS else float("nan")
    w = terminalreporter.write_line
    w("")
    w(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    w(f"measured copy bandwidth: {gbps:.1f} GB/s")
    header = (f"| {'op':<18} | {'mode':<8} | {'dtype':<8} | {'tpt ms':>8} | {'eager ms':>8} | {'compile ms':>10} "
              f"| {'x eager':>7} | {'x compile':>9} | {'GB/s':>6} | {'% copy bw':>9} |")
    w(header)
    w("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for key in sorted(RESULTS, key=str):
        op, mode, dtype = key[:3]
        r = RESULTS[key]
        if "tpt" not in r:
            continue
        t, nbytes = r["tpt"]
        eager = r.get("eager", (float("nan"),))[0]
        comp = r.get("compile", (float("nan"),))[0]
        achieved = nbytes / t / 1e9
        w(f"| {op:<18} | {mode:<8} | {dtype:<8} | {t * 1e3:8.2f} | {eager * 1e3:8.2f} | {comp * 1e3:10.2f} "
          f"| {eager / t:7.2f} | {comp / t:9.2f} | {achieved:6.1f} | {100 * achieved / gbps:8.0f}% |")
