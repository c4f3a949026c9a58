"""Run by tests/test_expert_parallel.py under ``torchrun --standalone --nproc_per_node=2`` (gloo).

    expert_parallel_worker.py OUT_DIR

1. For every case of ``LAYER_CASES`` each rank builds the expert-parallel TokenChoiceMoE
   (seeded as the single-process layer the test builds), runs its own tokens forward and
   backward twice, and saves ``layer_{case}_rank{r}.pt``: outputs, losses, counts, the
   input gradient, every parameter gradient and whether the second run was bitwise the first;
   rank 0 writes the error of a group size that does not divide E to ``indivisible_error.txt``.
2. The trainer with ``--expert-parallel 2``: a whole run, the same run stopped after step 3
   and its resume (train.run once per run, in the worker's one process group); each rank
   saves its final state dict as ``train_{run}_rank{r}.pt``.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

from tpt_ops import train
from tpt_ops.nn import TokenChoiceMoE

D_MODEL, D_FF = 12, 16
# tokens per rank: uneven, and one case where rank 1 has none
TOKENS = (20, 13)
LAYER_CASES = {
    "k1": dict(n_experts=4, k=1),
    "k2": dict(n_experts=4, k=2),
    "k1-capacity": dict(n_experts=4, k=1, capacity_factor=0.5),
    "k2-capacity": dict(n_experts=4, k=2, capacity_factor=0.75),
    "k2-idle-rank": dict(n_experts=4, k=2, idle_rank=1),  # no token picks rank 1's experts
    "k2-no-tokens": dict(n_experts=4, k=2, tokens=(20, 0)),
    "one-expert-per-rank": dict(n_experts=2, k=1, capacity_factor=1.0),
    "sigmoid-shared-8": dict(n_experts=8, k=2, score="sigmoid", n_shared_experts=1, capacity_factor=1.25),
    "bf16-autocast": dict(n_experts=4, k=2, autocast=True),
}
# selection bias that keeps every token away from the experts of the idle rank
IDLE_BIAS = -1e3


def layer_options(case: dict) -> dict:
    """The TokenChoiceMoE keyword arguments of a case (the test builds its single-process layer from them)."""
    options = {k: v for k, v in case.items() if k not in ("idle_rank", "tokens", "autocast")}
    if "idle_rank" in case:
        options["bias_update_rate"] = 0.01  # the selection bias is used only when its rate is set
    return options


def build_layer(seed: int, case: dict, group=None) -> TokenChoiceMoE:
    torch.manual_seed(seed)
    layer = TokenChoiceMoE(D_MODEL, D_FF, **layer_options(case), expert_parallel_group=group)
    if "idle_rank" in case:
        per_rank = case["n_experts"] // 2
        first = case["idle_rank"] * per_rank
        layer.expert_bias[first:first + per_rank] = IDLE_BIAS
    return layer


def case_inputs(seed: int, case: dict, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s tokens and output cotangent: its block of one global draw."""
    sizes = case.get("tokens", TOKENS)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(sum(sizes), D_MODEL, generator=gen)
    dy = torch.randn(sum(sizes), D_MODEL, generator=gen)
    start = sum(sizes[:rank])
    return x[start:start + sizes[rank]], dy[start:start + sizes[rank]]


def forward_backward(layer: TokenChoiceMoE, x: torch.Tensor, dy: torch.Tensor, autocast: bool) -> dict:
    """Output, losses, counts and every gradient of ``sum(y * dy) + aux_loss + z_loss``."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    loss = (y.float() * dy).sum() + layer.aux_loss + layer.z_loss
    loss.backward()
    result = {"y": y.detach(), "aux_loss": layer.aux_loss.detach(), "z_loss": layer.z_loss.detach(),
              "counts": layer.counts, "grad_x": x.grad}
    result.update({f"grad_{name}": p.grad for name, p in layer.named_parameters()})
    return result


def run_layer_cases(out: str) -> None:
    rank = dist.get_rank()
    group = dist.new_group([0, 1])
    for seed, (name, case) in enumerate(LAYER_CASES.items()):
        layer = build_layer(seed, case, group)
        x, dy = case_inputs(seed, case, rank)
        first = forward_backward(layer, x, dy, case.get("autocast", False))
        again = forward_backward(layer, x, dy, case.get("autocast", False))
        first["repeatable"] = all(torch.equal(first[k], again[k]) for k in first)
        first["weights"] = {n: p.detach() for n, p in layer.named_parameters()}
        torch.save(first, os.path.join(out, f"layer_{name}_rank{rank}.pt"))
    try:
        TokenChoiceMoE(D_MODEL, D_FF, n_experts=3, k=1, expert_parallel_group=group)
    except ValueError as e:
        if rank == 0:
            with open(os.path.join(out, "indivisible_error.txt"), "w") as f:
                f.write(str(e))


def run_training(out: str, flags: list[str]) -> None:
    for run, extra in (("full", []), ("parts", ["--stop-after", "3"]), ("parts", ["--resume"])):
        summary, model = train.run(train.parse_args(flags + extra + ["--out", os.path.join(out, run)]))
        rank = int(os.environ["RANK"])
        torch.save(model.state_dict(), os.path.join(out, f"train_{run}_rank{rank}.pt"))


if __name__ == "__main__":
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")  # one group for everything: train.run joins it
    try:
        run_layer_cases(out_dir)
        run_training(out_dir, json.loads(os.environ["EP_TRAIN_FLAGS"]))
    finally:
        dist.destroy_process_group()
