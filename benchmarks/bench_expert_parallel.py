"""TokenChoiceMoE forward+backward with its experts on 1 rank against sharded over 2 (torchrun, gloo, one
thread a rank), at the fine-grained shape of bench_moe.py: 4096 tokens in all (2048 a rank on 2 ranks),
D=256, F=256, E=64, k=4. The time spent inside ``all_to_all_single`` (the counts and both row exchanges,
forward and backward, waiting for the other rank included) is reported on its own.

    python -m pytest benchmarks/bench_expert_parallel.py -q -s     # launches both runs
    torchrun --nproc_per_node=2 benchmarks/bench_expert_parallel.py OUT.json   # one run by hand
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

TOKENS, D, F, E, K = 4096, 256, 256, 64, 4
WARMUP, REPEATS = 2, 10


def measure(out_path: str) -> None:
    from tpt_ops.nn import TokenChoiceMoE

    world = int(os.environ.get("WORLD_SIZE", "1"))
    group = None
    if world > 1:
        dist.init_process_group("gloo")
        group = dist.new_group(list(range(world)))
    rank = dist.get_rank() if group is not None else 0
    exchange_seconds = [0.0]
    all_to_all_single = dist.all_to_all_single

    def timed_all_to_all(*args, **kwargs):
        start = time.perf_counter()
        result = all_to_all_single(*args, **kwargs)
        exchange_seconds[0] += time.perf_counter() - start
        return result

    dist.all_to_all_single = timed_all_to_all
    torch.manual_seed(0)
    layer = TokenChoiceMoE(D, F, E, K, expert_parallel_group=group)
    x = torch.randn(TOKENS, D, generator=torch.Generator().manual_seed(1))[rank::world].contiguous()
    x.requires_grad_()
    steps, exchanges = [], []
    for i in range(WARMUP + REPEATS):
        if group is not None:
            dist.barrier()
        exchange_seconds[0] = 0.0
        start = time.perf_counter()
        y = layer(x)
        (y.square().mean() + layer.aux_loss + layer.z_loss).backward()
        if i >= WARMUP:
            steps.append(time.perf_counter() - start)
            exchanges.append(exchange_seconds[0])
    result = {"ranks": world, "tokens_per_rank": x.shape[0], "fwd_bwd_ms": 1e3 * statistics.median(steps),
              "all_to_all_ms": 1e3 * statistics.median(exchanges)}
    if group is not None:
        gathered = [None] * world
        dist.all_gather_object(gathered, result)
        dist.destroy_process_group()
        result = {**gathered[0], "per_rank": gathered}
    if rank == 0:
        Path(out_path).write_text(json.dumps(result))


def test_expert_parallel_layer(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    rows = []
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        __file__, str(out)], env=env, check=True, timeout=600)
        rows.append(json.loads(out.read_text()))
    print(f"\nTokenChoiceMoE fwd+bwd, {TOKENS} tokens in all, D={D} F={F} E={E} k={K}, 1 thread a rank (median ms)")
    for row in rows:
        for r, rank_row in enumerate(row.get("per_rank", [row])):
            print(f"  {row['ranks']} rank(s), rank {r}: {rank_row['tokens_per_rank']} tokens, "
                  f"fwd+bwd {rank_row['fwd_bwd_ms']:.1f} ms, of which all-to-all {rank_row['all_to_all_ms']:.1f} ms")


if __name__ == "__main__":
    measure(sys.argv[1])
