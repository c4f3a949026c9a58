"""The training CLI: schedule, data, exact resume, DDP, artefacts, bad flags."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tpt_ops import train
from tpt_ops.models import ThreePhaseTransformer

# A model and corpus small enough that a run takes a second or two.
TINY = ["--d-model", "24", "--n-layers", "1", "--d-ff", "48", "--seq-len", "32", "--batch-size", "4",
        "--eval-batches", "2", "--max-bytes", "100000", "--sample-tokens", "16", "--quiet"]
ROOT = Path(__file__).resolve().parent.parent


def metrics(out: Path) -> list[dict]:
    return train.read_metrics(out / "metrics.jsonl")


def test_learning_rate_schedule():
    args = train.parse_args(["--lr", "1e-3", "--warmup", "10", "--steps", "110", "--min-lr-ratio", "0.1"])
    lrs = [train.learning_rate(s, args) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert lrs[10] == pytest.approx(1e-3)  # cosine starts at the peak
    assert lrs[60] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays monotonically
    assert train.learning_rate(110, args) == pytest.approx(1e-4)  # to the floor at --steps


def test_corpus_is_deterministic_and_split():
    tr, val, name = train.load_corpus(None, 50_000, 0.1)
    assert len(tr) + len(val) == 50_000 and len(val) == 5_000
    assert "standard library" in name
    tr2, val2, _ = train.load_corpus(None, 50_000, 0.1)
    assert torch.equal(tr, tr2) and torch.equal(val, val2)
    text = bytes(tr[:20_000].tolist()).decode("utf-8", errors="replace")
    assert "def " in text or "import " in text  # it is Python source


def test_user_data_file_and_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"hello world\n" * 100)
    (tmp_path / "d" / "b.bin").write_bytes(b"\0\1\2" * 100)  # binary: skipped
    tr, val, name = train.load_corpus(str(tmp_path / "d"), None, 0.25)
    assert len(tr) + len(val) == 1200 and "1 files" in name
    assert set(bytes(torch.cat([tr, val]).tolist())) == set(b"hello world\n")
    tr1, _, _ = train.load_corpus(str(tmp_path / "d" / "a.txt"), None, 0.25)
    assert torch.equal(tr, tr1)
    with pytest.raises(FileNotFoundError, match="no such file"):
        train.load_corpus(str(tmp_path / "missing"), None, 0.1)


def test_global_batch_is_sharded_across_ranks():
    """Rank r of a 2-process run trains on rows r::2 of the single-process batch of twice the size."""
    data = torch.arange(10_000, dtype=torch.int64) % 251
    one = train.parse_args(["--batch-size", "8", "--seq-len", "16", "--seed", "3"])
    two = train.parse_args(["--batch-size", "4", "--seq-len", "16", "--seed", "3"])
    x, y = train.train_batch(data, one, step=5, micro=1, rank=0, world=1)
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    for rank in range(2):
        xr, yr = train.train_batch(data, two, step=5, micro=1, rank=rank, world=2)
        assert torch.equal(xr, x[rank::2]) and torch.equal(yr, y[rank::2])
    assert not torch.equal(train.train_batch(data, one, 6, 1, 0, 1)[0], x)  # a new batch each step


def test_run_writes_its_artefacts(tmp_path):
    out = tmp_path / "run"
    summary = train.main(TINY + ["--steps", "8", "--eval-every", "4", "--out", str(out)])
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["step"] for r in rows if "val_bpb" in r] == [4, 8]
    assert summary["final_val_bpb"] == rows[-1]["val_bpb"] and math.isfinite(summary["final_val_bpb"])
    assert summary["tokens_per_s"] > 0 and summary["steps"] == 8
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = (out / "sample.txt").read_text()
    assert sample.startswith("def ") and len(sample.encode("utf-8", errors="replace")) >= 4
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 8 and ckpt["config"]["n_phases"] == 3


def test_training_reduces_the_loss(tmp_path):
    out = tmp_path / "run"
    train.main(TINY + ["--steps", "60", "--eval-every", "30", "--lr", "1e-2", "--warmup", "5", "--out", str(out)])
    rows = metrics(out)
    first, last = [r["val_bpb"] for r in rows if "val_bpb" in r]
    assert last < first
    assert sum(r["loss"] for r in rows[-10:]) < sum(r["loss"] for r in rows[:10])


@pytest.mark.parametrize("flags", [[], ["--baseline", "--grad-accum", "2"], ["--bf16", "--backend", "reference"]],
                         ids=["3pt", "baseline-accum", "bf16-reference"])
def test_resume_is_exact(tmp_path, flags):
    """Stopping after step 3 and resuming gives exactly the metrics and weights of a run that never stopped."""
    common = TINY + flags + ["--steps", "6", "--eval-every", "2"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    train.main(common + ["--out", str(full)])
    stopped = train.main(common + ["--out", str(parts), "--stop-after", "3"])
    assert stopped["steps"] == 3 and stopped["final_val_bpb"] == metrics(full)[1]["val_bpb"]  # step 2's
    assert [r["step"] for r in metrics(parts)] == [1, 2, 3]
    train.main(common + ["--out", str(parts), "--resume"])

    def deterministic(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]
    assert deterministic(metrics(parts)) == deterministic(metrics(full))
    a = torch.load(full / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(parts / "ckpt.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_before_the_first_eval(tmp_path):
    summary = train.main(TINY + ["--steps", "20", "--eval-every", "10", "--stop-after", "3", "--out", str(tmp_path)])
    assert summary["final_val_bpb"] is None and summary["trained_steps"] == 3
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 3


def test_resume_refuses_another_model(tmp_path):
    out = tmp_path / "run"
    train.main(TINY + ["--steps", "2", "--out", str(out)])
    with pytest.raises(SystemExit, match="different model"):
        train.main(TINY + ["--steps", "4", "--out", str(out), "--resume", "--d-model", "48"])


@pytest.mark.parametrize("flags,msg", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--backend", "fused", "--device", "cuda"], "CPU kernels"),
])
def test_bad_flags(flags, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bad_model_and_data(tmp_path):
    with pytest.raises(SystemExit, match="divisible by n_phases"):
        train.main(TINY + ["--d-model", "25", "--out", str(tmp_path / "a")])
    (tmp_path / "small.txt").write_text("too short")
    with pytest.raises(ValueError, match="fewer than --seq-len"):
        train.main(TINY + ["--data", str(tmp_path / "small.txt"), "--out", str(tmp_path / "b")])


DDP_SCRIPT = """
import os, sys, torch
from tpt_ops import train
summary, model = train.run(train.parse_args(sys.argv[1:]))
torch.save(model.state_dict(), os.path.join(os.environ["RANK_DIR"], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights, equal to rank 0's
    checkpoint, and the run matches a single process training on the same global batch."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "RANK_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    flags = TINY + ["--steps", "3", "--eval-every", "3", "--batch-size", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *flags, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    ckpt = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=False)["model"]
    assert rank0.keys() == rank1.keys() == ckpt.keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], ckpt[k]) for k in rank0)
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = ThreePhaseTransformer(train.model_config(train.parse_args(flags))).state_dict()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)  # it trained

    threads = torch.get_num_threads()
    try:  # one process, one thread, the same global batch (2 x 2 rows)
        single = train.main(flags + ["--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "single")])
    finally:
        torch.set_num_threads(threads)
    ddp_rows, single_rows = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert [r["tokens"] for r in ddp_rows] == [r["tokens"] for r in single_rows]
    for a, b in zip(ddp_rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert ddp_rows[-1]["val_bpb"] == pytest.approx(single["final_val_bpb"], rel=1e-4)
