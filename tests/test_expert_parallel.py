"""Expert parallelism: a 2-rank TokenChoiceMoE and MoE 3PT training (torchrun, gloo) against one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpt_ops import train
from tpt_ops.models import ThreePhaseTransformer
from tpt_ops.nn.expert_parallel import expert_major_order

import expert_parallel_worker as worker

ROOT = Path(__file__).resolve().parent.parent
# the test_train TINY model with an 8-expert MoE; no load-balance loss, whose gradient on a rank's share
# of the batch is not a share of its gradient on the whole batch (E * sum f_e P_e is not linear in the
# tokens), so that 2 ranks and 1 process train the same function
TRAIN_FLAGS = ["--d-model", "24", "--n-layers", "1", "--d-ff", "48", "--seq-len", "32", "--eval-batches", "2",
               "--max-bytes", "100000", "--sample-tokens", "16", "--quiet", "--moe-experts", "8", "--moe-k", "2",
               "--moe-d-ff", "24", "--moe-bias-rate", "0.01", "--moe-aux-weight", "0", "--steps", "6",
               "--eval-every", "2"]
EP_FLAGS = TRAIN_FLAGS + ["--batch-size", "2", "--expert-parallel", "2"]
EXPERTS = ("w_gate", "w_up", "w_down")


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory):
    """One torchrun launch of expert_parallel_worker.py: every layer case and the three training runs."""
    out = tmp_path_factory.mktemp("expert_parallel")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EP_TRAIN_FLAGS": json.dumps(EP_FLAGS),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve().parent / "expert_parallel_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def scaled_close(actual, expected, rel):
    """Every element within ``rel`` of the largest magnitude of ``expected`` (sums in another order)."""
    bound = rel * max(float(expected.abs().max()), 1e-30) if expected.numel() else 0.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=bound)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(worker.LAYER_CASES))
def test_layer_matches_the_single_process_layer(ep_run, name):
    """Each rank's outputs, losses, counts, input and router gradients are those of the single-process layer
    on that rank's tokens (capacity admitted per rank), and each rank's expert gradients are its rows of the
    single-process gradient summed over both ranks' tokens; the initial weights are its rows too."""
    seed, case = list(worker.LAYER_CASES).index(name), worker.LAYER_CASES[name]
    reference = worker.build_layer(seed, case)
    per_rank = case["n_experts"] // 2
    autocast = case.get("autocast", False)
    summed = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for rank in range(2):
        ep = torch.load(ep_run / f"layer_{name}_rank{rank}.pt")
        x, dy = worker.case_inputs(seed, case, rank)
        expected = worker.forward_backward(reference, x, dy, autocast)
        assert ep["repeatable"]  # the second forward and backward gave the same bits
        assert torch.equal(ep["counts"], expected["counts"])
        for key in ("y", "aux_loss", "z_loss", "grad_x") + tuple(k for k in expected if k.startswith("grad_")
                                                                    and k.split("_", 1)[1] not in EXPERTS):
            scaled_close(ep[key], expected[key], 1e-6)
        for n, g in expected.items():
            if n.startswith("grad_") and g is not None and n[5:] in summed:
                summed[n[5:]] += g
        for n in EXPERTS:
            rows = slice(rank * per_rank, (rank + 1) * per_rank)
            assert torch.equal(ep["weights"][n], getattr(reference, n).detach()[rows])
    for rank in range(2):
        ep = torch.load(ep_run / f"layer_{name}_rank{rank}.pt")
        for n in EXPERTS:  # bf16: the EP rank rounds one sum over both ranks' rows, the reference two
            scaled_close(ep[f"grad_{n}"], summed[n][rank * per_rank:(rank + 1) * per_rank],
                         2e-2 if autocast else 1e-5)


@pytest.mark.slow
def test_a_rank_whose_experts_get_no_token(ep_run):
    for rank in range(2):
        ep = torch.load(ep_run / f"layer_k2-idle-rank_rank{rank}.pt")
        assert ep["counts"][2:].sum() == 0 and ep["counts"][:2].sum() == 2 * worker.TOKENS[rank]
    idle = torch.load(ep_run / "layer_k2-idle-rank_rank1.pt")
    assert all(torch.equal(idle[f"grad_{n}"], torch.zeros_like(idle[f"grad_{n}"])) for n in EXPERTS)


@pytest.mark.slow
def test_group_size_must_divide_the_experts(ep_run):
    assert (ep_run / "indivisible_error.txt").read_text() == \
        "TokenChoiceMoE: n_experts (3) must be divisible by the size of expert_parallel_group (2)"


@pytest.mark.slow
def test_training_matches_one_process_on_the_global_batch(ep_run, tmp_path):
    """2 ranks x 2 sequences with the experts sharded train the weights (gathered into the checkpoint),
    losses, gradient norms, routing statistics and selection biases of 1 process on the 4-sequence
    global batch."""
    threads = torch.get_num_threads()
    try:
        train.run_cli(TRAIN_FLAGS + ["--batch-size", "4", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    ep = torch.load(ep_run / "full" / "ckpt.pt", weights_only=False)["model"]
    single = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]
    assert ep.keys() == single.keys()
    for key in single:
        assert ep[key].shape == single[key].shape
        torch.testing.assert_close(ep[key], single[key], rtol=1e-4, atol=1e-4 * float(single[key].abs().max()))
    assert torch.equal(ep["blocks.0.ffn.expert_bias"], single["blocks.0.ffn.expert_bias"])
    ep_rows, single_rows = train.read_metrics(ep_run / "full" / "metrics.jsonl"), train.read_metrics(
        tmp_path / "metrics.jsonl")
    assert len(ep_rows) == len(single_rows) == 6
    for a, b in zip(ep_rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        # AdamW hardly sees a gradient's scale; the norm that clipping uses does
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["moe_max_load"] == b["moe_max_load"] and a["moe_dropped"] == b["moe_dropped"]
        assert len(a["moe_rank_load"]) == 2 and sum(a["moe_rank_load"]) == pytest.approx(1.0)
    assert ep_rows[-1]["val_bpb"] == pytest.approx(single_rows[-1]["val_bpb"], rel=1e-4)


@pytest.mark.slow
def test_resume_is_exact_and_a_single_process_loads_the_checkpoint(ep_run):
    """Stopped after step 3 and resumed, the 2-rank run ends with exactly the metrics, weights and optimizer
    state of the run that never stopped; the checkpoint holds whole experts, each rank's shard is its rows,
    and a single-process model loads it as it is."""
    full = torch.load(ep_run / "full" / "ckpt.pt", weights_only=False)
    parts = torch.load(ep_run / "parts" / "ckpt.pt", weights_only=False)
    assert all(torch.equal(full["model"][k], parts["model"][k]) for k in full["model"])
    for i, state in full["optimizer"]["state"].items():
        assert all(torch.equal(v, parts["optimizer"]["state"][i][n]) for n, v in state.items())
    assert train.read_metrics(ep_run / "full" / "metrics.jsonl") == train.read_metrics(
        ep_run / "parts" / "metrics.jsonl")
    for run in ("full", "parts"):
        for rank in range(2):
            shard = torch.load(ep_run / f"train_{run}_rank{rank}.pt")
            for n in EXPERTS:
                rows = full["model"][f"blocks.0.ffn.{n}"][4 * rank:4 * rank + 4]
                assert torch.equal(shard[f"blocks.0.ffn.{n}"], rows)
    model = ThreePhaseTransformer(train.model_config(train.parse_args(EP_FLAGS)))
    model.load_state_dict(full["model"])
    assert model.blocks[0].ffn.w_gate.shape[0] == 8


def test_expert_major_order():
    """Rows received grouped (source rank, expert) are reordered to (expert, source rank), each block in order."""
    recv_counts = torch.tensor([[2, 0, 1], [1, 3, 0]])  # [source, local expert]
    blocks, start = {}, 0
    for s in range(2):
        for e in range(3):
            blocks[s, e] = list(range(start, start + int(recv_counts[s, e])))
            start += int(recv_counts[s, e])
    expected = [row for e in range(3) for s in range(2) for row in blocks[s, e]]
    assert expert_major_order(recv_counts).tolist() == expected
    assert expert_major_order(torch.zeros(2, 3, dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize("flags,msg", [
    (["--expert-parallel", "0"], "--expert-parallel must be >= 1"),
    (["--expert-parallel", "2"], "--expert-parallel 2 needs --moe-experts divisible by it, got 0"),
    (["--expert-parallel", "3", "--moe-experts", "8"], "--expert-parallel 3 needs --moe-experts divisible"),
])
def test_bad_expert_parallel_flags(flags, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_expert_parallel_needs_as_many_processes(tmp_path):
    with pytest.raises(SystemExit, match=r"--expert-parallel 2 must equal the number of processes \(1\)"):
        train.run_cli(TRAIN_FLAGS + ["--batch-size", "2", "--expert-parallel", "2", "--out", str(tmp_path)])
