"""GPU benchmarks of the CUDA kernels: every op against its eager reference and torch.compile of that reference in
the same run, and its minimum traffic against a device-to-device copy of buffers of the same size measured in that
run; causal softmax attention against flash SDPA, its eager reference and torch.compile at two GQA shapes. Buffers
are larger than the GPU's L2 (at least 4x), so every pass reads and writes DRAM. Skipped without a GPU.

Run by benchmarks/gpu_check.sh, or alone:  python benchmarks/bench_cuda.py --out DIR [--budget SECONDS]
(under pytest, `make bench` runs it with the defaults and prints the table). Times are medians of CUDA-event
timings after warm-up; no timing is asserted."""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import pytest
import torch
import torch.nn.functional as F

import tpt_ops
from tpt_ops import reference as ref

M, D, N = 65536, 768, 3  # 65536 x 768 float32 rows: 201 MB a pass, over 3x an H200's 60 MB L2


def cuda_time(fn, repeats=20, warmup=3) -> float:
    """Median seconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second (read + write) of a device-to-device copy of nbytes into an existing buffer."""
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / cuda_time(lambda: dst.copy_(src))


def step(fn, args, mode, dy):
    """fn(*args) without autograd (fwd), or forward plus the gradients of the inputs that require grad."""
    grad_args = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(*args)
    else:
        def run():
            out = fn(*args)
            outs = out if isinstance(out, tuple) else (out,)
            diff = [o for o in outs if o.requires_grad]
            torch.autograd.grad(diff, grad_args, dy[:len(diff)])
    return run


def cases():
    """(op, fn, reference, args builder(dtype), {mode: bytes of minimum traffic}) at memory-bound sizes."""
    def rows(dtype, n=M, d=D, grad=True, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return torch.randn(n, d, device="cuda", generator=g).to(dtype).requires_grad_(grad)

    def param(n, value=None, grad=True):
        p = torch.ones(n, device="cuda") if value is None else torch.full((n,), value, device="cuda")
        return p.requires_grad_(grad)

    def rope_args(dtype):
        B, T, H, Hkv, hd = 16, 2048, 12, 4, 64
        qkv = torch.randn(B, T, (H + 2 * Hkv) * hd, device="cuda").to(dtype).requires_grad_(True)
        angle = torch.outer(torch.arange(T, device="cuda").float(), torch.rand(hd // 2, device="cuda"))
        cos = torch.cat([angle.cos(), angle.cos()], -1)
        sin = torch.cat([-angle.sin(), angle.sin()], -1)
        return qkv, cos, sin, H, Hkv

    def moe_args(dtype):
        x = rows(dtype, n=M // 2)
        slots, slot_token = tpt_ops.moe_route(torch.randn(M // 2, 64, device="cuda"), 2, 1.25)[2:4]
        return x, slots, slot_token

    def unpermute_args(dtype):
        x, slots, slot_token = moe_args(dtype)
        out = rows(dtype, n=M)
        gates = torch.rand(M // 2, 2, device="cuda").requires_grad_(True)
        return out, gates, slots, slot_token

    e = lambda dtype: torch.tensor([], dtype=dtype).element_size()
    MD = M * D
    return [
        ("phase_rmsnorm", lambda x, w: tpt_ops.phase_rmsnorm(x, w, N), lambda x, w: ref.phase_rmsnorm(x, w, N),
         lambda dt: (rows(dt), param(D)), lambda dt: {"fwd": 2 * MD * e(dt), "fwd+bwd": 5 * MD * e(dt)}),
        ("phase_rotate", lambda x, t: tpt_ops.phase_rotate(x, t, N), lambda x, t: ref.phase_rotate(x, t, N),
         lambda dt: (rows(dt), param(D // N // 2, 0.1)), lambda dt: {"fwd": 2 * MD * e(dt), "fwd+bwd": 5 * MD * e(dt)}),
        ("horn_inject", lambda x: tpt_ops.horn_inject(x.view(16, -1, D), N), lambda x: ref.horn_inject(x.view(16, -1, D), N),
         lambda dt: (rows(dt),), lambda dt: {"fwd": 2 * MD * e(dt), "fwd+bwd": 4 * MD * e(dt)}),
        ("add_rotate_norm", lambda h, a, t, w: tpt_ops.add_rotate_norm(h, a, t, w, N),
         lambda h, a, t, w: ref.add_rotate_norm(h, a, t, w, N),
         lambda dt: (rows(dt), rows(dt, seed=1), param(D // N // 2, 0.1), param(D)),
         lambda dt: {"fwd": 4 * MD * e(dt), "fwd+bwd": 8 * MD * e(dt)}),
        ("swiglu", tpt_ops.swiglu, ref.swiglu, lambda dt: (rows(dt, d=2 * 2048, n=M // 4),),
         lambda dt: {"fwd": 3 * M // 4 * 2048 * e(dt), "fwd+bwd": 8 * M // 4 * 2048 * e(dt)}),
        ("qkv_rope", lambda qkv, c, s, H, Hkv: tpt_ops.qkv_rope(qkv, c, s, H, Hkv),
         lambda qkv, c, s, H, Hkv: ref.qkv_rope(qkv, c, s, H, Hkv), rope_args,
         lambda dt: {"fwd": 2 * 16 * 2048 * 20 * 64 * e(dt), "fwd+bwd": 4 * 16 * 2048 * 20 * 64 * e(dt)}),
        ("moe_permute", tpt_ops.moe_permute, ref.moe_permute, moe_args,
         lambda dt: {"fwd": 3 * M // 2 * D * e(dt), "fwd+bwd": 6 * M // 2 * D * e(dt)}),
        ("moe_unpermute", tpt_ops.moe_unpermute, ref.moe_unpermute, unpermute_args,
         lambda dt: {"fwd": 3 * M // 2 * D * e(dt), "fwd+bwd": 8 * M // 2 * D * e(dt)}),
        ("hedgehog_feature_map", tpt_ops.hedgehog_feature_map, ref.hedgehog_feature_map,
         lambda dt: (rows(dt, n=16 * M, d=64),), lambda dt: {"fwd": 3 * 16 * M * 64 * e(dt),
                                                            "fwd+bwd": 8 * 16 * M * 64 * e(dt)}),
    ]


def attention_vs_sdpa(dtype, T=8192, B=2, H=12, F_=64, Dv=64):
    """Hedgehog causal linear attention vs flash SDPA (causal) at the same [B, H, T, 64] shape."""
    def make(*shape, softmax=False):
        t = torch.randn(*shape, device="cuda")
        return (torch.softmax(t, -1) if softmax else t).to(dtype).requires_grad_(True)
    q, k = make(B, H, T, 2 * F_, softmax=True), make(B, H, T, 2 * F_, softmax=True)
    v = make(B, H, T, Dv)
    qs, ks, vs = make(B, H, T, 64), make(B, H, T, 64), make(B, H, T, 64)
    dy = (torch.randn(B, H, T, Dv, device="cuda").to(dtype),)
    result = {}
    for mode in ("fwd", "fwd+bwd"):
        result[f"linear_attention {mode}"] = cuda_time(
            step(lambda q, k, v: tpt_ops.linear_attention(q, k, v, True), (q, k, v), mode, dy), repeats=5, warmup=1)
        result[f"sdpa_flash {mode}"] = cuda_time(
            step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (qs, ks, vs), mode, dy),
            repeats=5, warmup=1)
    return result


# (B, H, Hkv, T, hd) of the causal softmax attention rows: GQA at a training length and a long context.
ATTENTION_SHAPES = [(8, 12, 4, 1024, 64), (2, 12, 4, 4096, 64)]


def causal_attention_vs_flash(dtype, start, budget_s):
    """tpt causal_attention (GQA) against flash SDPA on k, v repeated to the query heads (the same arithmetic; SDPA's
    GQA path is not flash everywhere), the eager quadratic reference and torch.compile of it, forward and
    forward + backward; compile (tens of seconds a graph) at the first shape only, skipped once budget_s has passed
    since start."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    result = {}
    for index, (B, H, Hkv, T, hd) in enumerate(ATTENTION_SHAPES):
        make = lambda heads: (torch.randn(B, heads, T, hd, device="cuda") * 0.5).to(dtype).requires_grad_(True)
        q, k, v = make(H), make(Hkv), make(Hkv)
        expand = lambda t: t.detach().repeat_interleave(H // Hkv, 1).requires_grad_(True)
        k_full, v_full = expand(k), expand(v)
        dy = (torch.randn(B, H, T, hd, device="cuda").to(dtype),)

        def flash(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        shape = f"B{B} H{H}/{Hkv} T{T} hd{hd}"
        compiled = torch.compile(ref.causal_attention, dynamic=False)
        for mode in ("fwd", "fwd+bwd"):
            timed = {"tpt": (tpt_ops.causal_attention, (q, k, v)), "sdpa_flash": (flash, (q, k_full, v_full)),
                     "eager": (ref.causal_attention, (q, k, v))}
            if index == 0 and time.time() - start < budget_s:
                timed["compile"] = (compiled, (q, k, v))
            for name, (fn, args) in timed.items():
                try:
                    result[f"{shape} {mode} {name}"] = 1e3 * cuda_time(step(fn, args, mode, dy), repeats=5, warmup=2)
                except Exception as exc:  # one baseline's failure must not lose the others' numbers
                    result[f"{shape} {mode} {name}"] = f"{type(exc).__name__}: {exc}"[:300]
    return result


# torch.compile takes seconds to tens of seconds per graph, so it is the baseline where training runs: bfloat16,
# forward + backward.
COMPILE_ROWS = {("bfloat16", "fwd+bwd")}


def run_all(out_dir: pathlib.Path | None, budget_s: float = 300.0) -> list[dict]:
    """Times every case; torch.compile baselines are skipped once budget_s has passed (and say so)."""
    start = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 0)
    copy = copy_bandwidth(M * D * 4)
    rows = []
    for op, fn, reference, build, traffic in cases():
        for dtype in (torch.float32, torch.bfloat16):
            for mode, nbytes in traffic(dtype).items():
                row = {"op": op, "dtype": str(dtype)[6:], "mode": mode, "bytes": nbytes}
                try:
                    args = build(dtype)
                    probe = fn(*args)
                    outs = probe if isinstance(probe, tuple) else (probe,)
                    dy = tuple(torch.randn_like(o) for o in outs if o.is_floating_point())
                    row["tpt_ms"] = 1e3 * cuda_time(step(fn, args, mode, dy))
                    row["eager_ms"] = 1e3 * cuda_time(step(reference, args, mode, dy))
                    row["compile_ms"] = None
                    if (row["dtype"], mode) not in COMPILE_ROWS:
                        pass
                    elif time.time() - start < budget_s:
                        compiled = torch.compile(reference, dynamic=False)
                        row["compile_ms"] = 1e3 * cuda_time(step(compiled, args, mode, dy))
                    else:
                        row["note"] = "torch.compile skipped: time budget spent"
                    row["copy_fraction"] = nbytes / (row["tpt_ms"] / 1e3) / copy
                except Exception as exc:  # one op's failure must not lose the others' numbers
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                print(json.dumps(row), flush=True)
    try:
        attention = {k: 1e3 * v for k, v in attention_vs_sdpa(torch.bfloat16).items()}
    except Exception as exc:
        attention = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    try:
        softmax_attention = causal_attention_vs_flash(torch.bfloat16, start, budget_s)
    except Exception as exc:
        softmax_attention = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    summary = {"gpu": props.name, "l2_bytes": l2, "copy_bytes_per_s": copy, "torch": torch.__version__,
               "rows": rows, "attention_T8192_bf16_ms": attention, "causal_attention_bf16_ms": softmax_attention,
               "seconds": time.time() - start}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_cuda.json").write_text(json.dumps(summary, indent=1))
        (out_dir / "bench_cuda.md").write_text("\n".join(table(summary)) + "\n")
    print("\n".join(table(summary)))
    return rows


def table(summary: dict) -> list[str]:
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    lines = [f"GPU: {summary['gpu']}, L2 {summary['l2_bytes'] / 2**20:.0f} MiB, torch {summary['torch']}; "
             f"device-to-device copy {summary['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write) at {M * D * 4 / 1e6:.0f} MB",
             "", "| op | mode | dtype | tpt ms | eager ms | x eager | compile ms | x compile | % copy bw |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['mode']} | {r['dtype']} | error: {r['error'][:120]} | | | | | |")
            continue
        x_e = r["eager_ms"] / r["tpt_ms"]
        x_c = r["compile_ms"] / r["tpt_ms"] if r.get("compile_ms") else None
        lines.append(f"| {r['op']} | {r['mode']} | {r['dtype']} | {fmt(r['tpt_ms'])} | {fmt(r['eager_ms'])} | "
                     f"{x_e:.2f} | {fmt(r.get('compile_ms'))} | {'' if x_c is None else f'{x_c:.2f}'} | "
                     f"{100 * r['copy_fraction']:.0f}% |")
    lines += ["", f"Hedgehog causal linear attention vs flash SDPA, T=8192, bf16 (ms): {summary['attention_T8192_bf16_ms']}"]
    lines += ["", "Causal softmax attention, bf16 (ms): tpt vs flash SDPA, eager reference, torch.compile", "",
              "| shape, mode, implementation | ms |", "|---|---|"]
    lines += [f"| {key} | {fmt(v) if isinstance(v, float) else v} |"
              for key, v in summary["causal_attention_bf16_ms"].items()]
    return lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU benchmarks are not run")
def test_cuda_benchmarks():
    rows = run_all(None)
    failed = [f"{r['op']} {r['mode']} {r['dtype']}: {r['error']}" for r in rows if "error" in r]
    assert rows and not failed, failed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds after which torch.compile is skipped")
    ns = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    run_all(ns.out, ns.budget)
