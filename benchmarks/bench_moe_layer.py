"""The whole TokenChoiceMoE layer, forward + backward, against MoE layers written in plain PyTorch:

* ``dense-loop``: the loop-over-experts reference: every expert runs on every token and its output is weighted
  by the token's gate for it (0 where it was not chosen);
* ``hf``: the HF transformers Mixtral block users run today: per expert, gather its tokens (``where`` on the
  one-hot choices), run it, ``index_add_`` the gated result; one parameter per expert matrix, as its
  ``nn.Linear`` experts hold them;
* ``sorted``: the strongest eager form: a stable sort of the assignments by expert, one ``index_select`` into an
  expert-contiguous buffer, per-expert matmuls on its segments with the weights unbound once, and a gather-sum
  combine over each token's k slots.

Every form routes the same way (float32 softmax, top-k, renormalised gates, dropless) and returns the output and
the aux + z losses; the gradients of the input and of every weight are taken. Rounds are interleaved (one call of
each form per round, the order rotating) because the machine is shared; the table gives the median time, the
spread (min-max over rounds) and the median of the per-round ratios. Peak memory is the growth of the process's
peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over one forward + backward in a fresh
subprocess, after the inputs and weights exist and a small warm-up call has run: it counts what the allocator
really maps, which ``tracemalloc`` does not see. It is taken twice: with glibc's default malloc (the median of 3
processes) and with a fixed 1 MiB mmap threshold (``FIXED_MMAP_THRESHOLD``), where it is the peak of the live
tensors, without the freed heap pages the default allocator keeps.

    python benchmarks/bench_moe_layer.py [--rounds N] [--clock wall|cpu] [--split]   (or through pytest, as ``make bench`` runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from tpt_ops.nn import TokenChoiceMoE

SHAPES = {
    "mixtral-like": dict(M=4096, D=768, F=1024, E=8, k=2),
    "fine-grained": dict(M=4096, D=256, F=256, E=64, k=4),
}
IMPLS = ("tpt", "sorted", "hf", "dense-loop")
AUX_WEIGHT, Z_WEIGHT = 1e-2, 1e-3  # TokenChoiceMoE's defaults, used by every form


# ------------------------------------------------------------------ the plain-PyTorch layers

def route(x, router_weight, k):
    """(probs, gates, experts, losses): float32 softmax, top-k, renormalised gates; aux + z losses."""
    logits = x.float() @ router_weight.t()
    probs = torch.softmax(logits, -1)
    gates, experts = probs.topk(k, dim=-1)
    gates = gates / gates.sum(-1, keepdim=True)
    E = logits.shape[1]
    counts = torch.bincount(experts.reshape(-1), minlength=E)
    aux = E * (counts.to(probs.dtype) / experts.numel() * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).square().mean()
    return gates, experts, AUX_WEIGHT * aux + Z_WEIGHT * z


def expert(h, w_gate, w_up, w_down):
    return (F.silu(h @ w_gate) * (h @ w_up)) @ w_down


def dense_loop_layer(x, p, k):
    gates, experts, losses = route(x, p["router"], k)
    y = torch.zeros_like(x)
    for e, (wg, wu, wd) in enumerate(zip(p["w_gate"].unbind(0), p["w_up"].unbind(0), p["w_down"].unbind(0))):
        weight = (gates * (experts == e)).sum(-1)
        y = y + weight[:, None] * expert(x, wg, wu, wd)
    return y, losses


def hf_layer(x, p, k):
    """transformers' MixtralSparseMoeBlock.forward, minus its jitter and reshapes."""
    gates, experts, losses = route(x, p["router"], k)
    E = len(p["experts"])
    y = torch.zeros_like(x)
    expert_mask = F.one_hot(experts, num_classes=E).permute(2, 1, 0)
    for e in range(E):
        idx, top_x = torch.where(expert_mask[e])
        if top_x.numel() == 0:
            continue
        current = expert(x[top_x], *p["experts"][e]) * gates[top_x, idx, None]
        y.index_add_(0, top_x, current.to(x.dtype))
    return y, losses


def sorted_layer(x, p, k):
    gates, experts, losses = route(x, p["router"], k)
    M, D = x.shape
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)
    buf = x.index_select(0, order // k)
    counts = torch.bincount(flat, minlength=p["w_gate"].shape[0]).tolist()
    weights = zip(p["w_gate"].unbind(0), p["w_up"].unbind(0), p["w_down"].unbind(0))
    # split, not a slice per segment: one backward node concatenates the segments' gradients, where each
    # slice's backward would write its own zero-filled buffer-sized gradient
    segments = buf.split(counts)
    out = torch.cat([expert(h, wg, wu, wd) for n, h, (wg, wu, wd) in zip(counts, segments, weights) if n])
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel())
    y = (out.index_select(0, slot).view(M, k, D) * gates[..., None].to(x.dtype)).sum(1)
    return y, losses


# ------------------------------------------------------------------ one forward + backward of each form

def make_case(shape: dict, impl: str, seed: int = 0):
    """(step, module or None): step() runs one forward + backward and returns the gradients."""
    M, D, Fd, E, k = (shape[n] for n in ("M", "D", "F", "E", "k"))
    torch.manual_seed(seed)
    moe = TokenChoiceMoE(D, Fd, E, k, aux_loss_weight=AUX_WEIGHT, z_loss_weight=Z_WEIGHT)
    x = torch.randn(M, D).requires_grad_()
    dy = torch.randn(M, D)
    weights = {"router": moe.router.weight, "w_gate": moe.w_gate, "w_up": moe.w_up, "w_down": moe.w_down}
    if impl == "tpt":
        leaves = [x, moe.router.weight, moe.w_gate, moe.w_up, moe.w_down]

        def forward():
            return moe(x), moe.aux_loss + moe.z_loss
    else:
        layer = {"dense-loop": dense_loop_layer, "hf": hf_layer, "sorted": sorted_layer}[impl]
        p = {name: w.detach().clone().requires_grad_() for name, w in weights.items()}
        if impl == "hf":  # one parameter per expert matrix, as nn.Linear experts hold them
            p["experts"] = [tuple(w[e].detach().clone().requires_grad_() for w in (p["w_gate"], p["w_up"], p["w_down"]))
                            for e in range(E)]
            leaves = [x, p["router"], *(w for ws in p["experts"] for w in ws)]
        else:
            leaves = [x, p["router"], p["w_gate"], p["w_up"], p["w_down"]]

        def forward():
            return layer(x, p, k)
    one = torch.ones(())

    def step():
        y, losses = forward()
        # allow_unused: an expert that gets no token (the small warm-up) has no gradient in hf
        return torch.autograd.grad((y, losses), leaves, (dy, one), allow_unused=True)

    return step, moe


# wall: elapsed time; cpu: the process's CPU time (user + system, so page faults count), which with one
# thread leaves out the time spent waiting for a core that other jobs hold
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_rounds(shape: dict, impls, rounds: int, clock: str = "wall") -> dict:
    """{impl: [seconds per round]}, one call of each impl per round in a rotating order, after one warm-up each."""
    now = CLOCKS[clock]
    steps = {impl: make_case(shape, impl)[0] for impl in impls}
    for step in steps.values():
        step()
    times = {impl: [] for impl in impls}
    for r in range(rounds):
        order = list(impls[r % len(impls):]) + list(impls[:r % len(impls)])
        for impl in order:
            t0 = now()
            steps[impl]()
            times[impl].append(now() - t0)
    return times


# glibc's malloc with a fixed 1 MiB mmap threshold: every block of 1 MiB or more is mapped on its own and
# unmapped when freed, so the peak resident set is the peak of the live tensors (plus small blocks).
# By default the threshold grows up to 32 MiB after the first large free, such blocks come from the heap,
# and freed heap pages stay resident: the default peak adds 0-50 MB of retained pages that vary run to run.
FIXED_MMAP_THRESHOLD = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}


def peak_memory_mb(shape_name: str, impl: str, runs: int = 3, env: dict | None = None) -> float:
    """Growth of the peak resident set (MB) over one forward + backward: the median over ``runs`` fresh
    subprocesses, with ``env`` added to their environment."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory", shape_name, impl]
    peaks = []
    for _ in range(runs):
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
        peaks.append(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])
    return statistics.median(peaks)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _memory_child(shape_name: str, impl: str) -> None:
    small = dict(SHAPES[shape_name], M=64)
    make_case(small, impl)[0]()  # loads and initialises the libraries the full call uses
    step, _ = make_case(SHAPES[shape_name], impl)
    # Linux keeps ru_maxrss across fork + exec (the parent's peak), so the peak is reset here instead:
    # writing 5 to clear_refs restarts VmHWM from the current resident set
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_kib("VmRSS")
    step()
    print(json.dumps({"peak_mb": (_status_kib("VmHWM") - before) / 1024}))


def layer_table(rounds: int, impls=IMPLS, memory: bool = True, clock: str = "wall") -> list[str]:
    rows = [f"| shape | form | median ms ({clock}) | min-max ms | tpt speedup (median of rounds) | peak MB "
            "(median of 3) | peak MB, 1 MiB mmap threshold |",
            "|---|---|---|---|---|---|---|"]
    for name, shape in SHAPES.items():
        times = interleaved_rounds(shape, impls, rounds, clock)
        for impl in impls:
            ts = times[impl]
            print(f"{name} {impl}: {[round(t * 1e3, 1) for t in ts]} ms", file=sys.stderr)
            ratio = statistics.median(t / s for t, s in zip(ts, times["tpt"]))
            mem = (f"{peak_memory_mb(name, impl):.0f} | {peak_memory_mb(name, impl, 1, FIXED_MMAP_THRESHOLD):.0f}"
                   if memory else " | ")
            rows.append(f"| {name} {shape} | {impl} | {statistics.median(ts) * 1e3:.1f} | "
                        f"{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f} | {ratio:.2f} | {mem} |")
    return rows


def time_split(shape_name: str, rounds: int = 5) -> list[str]:
    """Self CPU time of each op in TokenChoiceMoE's forward + backward (torch.profiler), per call."""
    step, _ = make_case(SHAPES[shape_name], "tpt")
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return [f"{shape_name}: {rounds} calls", table]


def test_moe_layer_forward_backward():
    """The layer table (no timing asserted); printed, as ``make bench`` runs with -s."""
    rounds = int(os.environ.get("TPT_MOE_LAYER_ROUNDS", "5"))
    print()
    print(f"TokenChoiceMoE forward+backward, float32, {torch.get_num_threads()} threads, {rounds} interleaved rounds")
    for row in layer_table(rounds):
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="cpu: process CPU time, for a 1-thread run on a shared machine")
    parser.add_argument("--split", action="store_true", help="per-op time split of the tpt layer")
    parser.add_argument("--memory", nargs=2, metavar=("SHAPE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        _memory_child(*args.memory)
        return
    if args.split:
        for name in SHAPES:
            print("\n".join(time_split(name)))
        return
    impls = tuple(args.impls.split(","))
    if "tpt" not in impls:
        impls = ("tpt",) + impls
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, "
          f"{args.clock} clock")
    print("\n".join(layer_table(args.rounds, impls, memory=not args.no_memory, clock=args.clock)))


if __name__ == "__main__":
    main()
