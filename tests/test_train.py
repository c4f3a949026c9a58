"""The training CLI: schedule, data, exact resume, DDP, artefacts, bad flags."""
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tpt_ops import train
from tpt_ops.models import ThreePhaseTransformer

# A model and corpus small enough that a run takes a second or two.
TINY_LOUD = ["--d-model", "24", "--n-layers", "1", "--d-ff", "48", "--seq-len", "32", "--batch-size", "4",
             "--eval-batches", "2", "--max-bytes", "100000", "--sample-tokens", "16"]
TINY = TINY_LOUD + ["--quiet"]
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


def test_batch_seeds_are_distinct_in_a_long_run():
    """Every (step, micro) of 50 steps x 100 micro-batches gets its own seed and its own windows
    (micro 64 of a step is not micro 0 of the next)."""
    steps, accum = 50, 100
    args = train.parse_args(["--batch-size", "2", "--seq-len", "4", "--grad-accum", str(accum), "--seed", "7"])
    seeds = {train.batch_seed(args.seed, s, m, accum) for s in range(steps) for m in range(accum)}
    assert len(seeds) == steps * accum and all(0 <= x < train.GENERATOR_SEEDS for x in seeds)
    data = torch.arange(1_000_000)  # a window's first input is its start
    starts = {tuple(train.train_batch(data, args, s, m, 0, 1)[0][:, 0].tolist())
              for s in range(steps) for m in range(accum)}
    assert len(starts) == steps * accum
    assert not torch.equal(train.train_batch(data, args, 3, 64, 0, 1)[0], train.train_batch(data, args, 4, 0, 0, 1)[0])


def test_eval_starts_are_integer_exact_above_2_to_the_24():
    """A validation split past float32's exact integers: the starts end exactly at the last window,
    in range and evenly spaced, and evaluate() runs on it."""
    args = train.parse_args(TINY + ["--eval-batches", "2"])
    n_bytes = 2**24 + 3 + args.seq_len + 1  # last start 2**24 + 3: float32 rounds it up to 2**24 + 4
    n = args.eval_batches * args.batch_size
    starts = train.eval_starts(n_bytes, args.seq_len, n)
    last = n_bytes - args.seq_len - 1
    assert starts.dtype == torch.int64 and starts[0] == 0 and starts[-1] == last
    gaps = starts.diff()
    assert set(gaps.tolist()) <= {last // (n - 1), -(-last // (n - 1))}
    assert train.eval_starts(1000, 32, 1).tolist() == [0]
    val = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = ThreePhaseTransformer(train.model_config(args))
    bpb = train.evaluate(model, val, args, rank=0, world=1)
    assert math.isfinite(bpb) and bpb > 0


def test_console_script_exits_zero(tmp_path):
    """The installed ``tpt-train`` exits 0 after a successful run (the entry point passes main()'s
    return value to sys.exit)."""
    script = Path(sys.executable).parent / "tpt-train"
    if not script.exists():
        pytest.skip(f"{script} not installed (pip install -e . creates it)")
    out = tmp_path / "run"
    proc = subprocess.run([str(script), *TINY, "--steps", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("metrics.jsonl", "ckpt.pt", "loss.png", "sample.txt", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert train.main(TINY + ["--steps", "1", "--out", str(tmp_path / "again")]) == 0


def test_progress_without_a_terminal_is_plain_lines(tmp_path, capsys):
    """Captured (not a tty) output: no carriage-return redraws, one line every steps // 20 steps."""
    train.run_cli(TINY_LOUD + ["--steps", "40", "--eval-every", "20", "--sample-tokens", "0", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    progress = [line for line in captured.out.splitlines() if re.match(r"step +\d+/40 ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in progress] == list(range(2, 41, 2))
    assert "tokens/s" in progress[-1] and "lr " in progress[-1]
    assert len(captured.out.splitlines()) < 30


def test_progress_on_a_terminal_is_a_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    train.run_cli(TINY_LOUD + ["--steps", "4", "--sample-tokens", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "\r" in out and not re.search(r"^step +\d+/4 ", out, re.MULTILINE)


def test_run_writes_its_artefacts(tmp_path):
    out = tmp_path / "run"
    summary = train.run_cli(TINY + ["--steps", "8", "--eval-every", "4", "--out", str(out)])
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
    train.run_cli(TINY + ["--steps", "60", "--eval-every", "30", "--lr", "1e-2", "--warmup", "5", "--out", str(out)])
    rows = metrics(out)
    first, last = [r["val_bpb"] for r in rows if "val_bpb" in r]
    assert last < first
    assert sum(r["loss"] for r in rows[-10:]) < sum(r["loss"] for r in rows[:10])


MOE = ["--moe-experts", "4", "--moe-k", "2", "--moe-d-ff", "24", "--moe-bias-rate", "0.01"]


@pytest.mark.parametrize("flags", [[], ["--baseline", "--grad-accum", "2"], ["--bf16", "--backend", "reference"],
                                   MOE + ["--grad-accum", "2", "--moe-capacity", "1.0", "--moe-shared", "1"]],
                         ids=["3pt", "baseline-accum", "bf16-reference", "moe-accum"])
def test_resume_is_exact(tmp_path, flags):
    """Stopping after step 3 and resuming gives exactly the metrics and weights of a run that never stopped."""
    common = TINY + flags + ["--steps", "6", "--eval-every", "2"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    train.run_cli(common + ["--out", str(full)])
    stopped = train.run_cli(common + ["--out", str(parts), "--stop-after", "3"])
    assert stopped["steps"] == 3 and stopped["final_val_bpb"] == metrics(full)[1]["val_bpb"]  # step 2's
    assert [r["step"] for r in metrics(parts)] == [1, 2, 3]
    train.run_cli(common + ["--out", str(parts), "--resume"])

    def deterministic(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]
    assert deterministic(metrics(parts)) == deterministic(metrics(full))
    a = torch.load(full / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(parts / "ckpt.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if flags and flags[0] == "--moe-experts":  # the selection bias moved and is part of the checkpoint
        assert a["blocks.0.ffn.expert_bias"].abs().sum() > 0
        assert all({"moe_loss", "moe_dropped", "moe_max_load"} <= r.keys() for r in metrics(full))


def test_stop_before_the_first_eval(tmp_path):
    summary = train.run_cli(TINY + ["--steps", "20", "--eval-every", "10", "--stop-after", "3", "--out", str(tmp_path)])
    assert summary["final_val_bpb"] is None and summary["trained_steps"] == 3
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 3


RESUMABLE = TINY + ["--steps", "6", "--eval-every", "2"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run of RESUMABLE on its own corpus file, stopped after step 3 (a refused resume leaves it as it is)."""
    root = tmp_path_factory.mktemp("stopped")
    corpus = root / "corpus.txt"
    corpus.write_bytes(b"".join(p.read_bytes() for p in sorted(Path(train.__file__).parent.rglob("*.py"))))
    flags = RESUMABLE + ["--out", str(root / "run")]
    train.run_cli(flags + ["--data", str(corpus), "--stop-after", "3"])
    return flags, ["--data", str(corpus)], root


def test_every_flag_is_either_run_defining_or_resumable():
    dests = {a.dest for a in train.build_parser()._actions if a.dest != "help"}
    defining, resumable = set(train.RUN_DEFINING_ARGS), set(train.RESUME_MAY_CHANGE)
    assert not defining & resumable and defining | resumable == dests


@pytest.mark.parametrize("change,expected", [
    (["--seed", "1"], "--seed: 1 here, 0 in the checkpoint"),
    (["--lr", "0.01"], "--lr: 0.01 here, 0.003 in the checkpoint"),
    (["--batch-size", "2"], "--batch-size: 2 here, 4 in the checkpoint"),
    (["--grad-accum", "2"], "--grad-accum: 2 here, 1 in the checkpoint"),
    (["--warmup", "3"], "--warmup: 3 here, 50 in the checkpoint"),
    (["--steps", "12"], "--steps: 12 here, 6 in the checkpoint (--steps sets the cosine schedule"),
    (["--min-lr-ratio", "0.5"], "--min-lr-ratio: 0.5 here, 0.1 in the checkpoint"),
    (["--seq-len", "16"], "--seq-len: 16 here, 32 in the checkpoint"),
    (["--max-bytes", "90000"], "--max-bytes: 90000 here, 100000 in the checkpoint"),
    (["--val-fraction", "0.1"], "--val-fraction: 0.1 here, 0.05 in the checkpoint"),
    (["--weight-decay", "0"], "--weight-decay: 0.0 here, 0.1 in the checkpoint"),
    (["--grad-clip", "0.5"], "--grad-clip: 0.5 here, 1.0 in the checkpoint"),
    (["--bf16"], "--bf16: True here, False in the checkpoint"),
    (["--baseline"], "--baseline: True here, False in the checkpoint"),
    (["--d-model", "48"], "--d-model: 48 here, 24 in the checkpoint"),
    (["--n-layers", "2"], "--n-layers: 2 here, 1 in the checkpoint"),
    (["--n-heads", "3"], "--n-heads: 3 here, 6 in the checkpoint"),
    (["--n-kv-heads", "6"], "--n-kv-heads: 6 here, 3 in the checkpoint"),
    (["--d-ff", "32"], "--d-ff: 32 here, 48 in the checkpoint"),
    (["--eval-batches", "3"], "--eval-batches: 3 here, 2 in the checkpoint"),
    (["--moe-experts", "4"], "--moe-experts: 4 here, 0 in the checkpoint"),
    ([], "--data: None here, "),  # no --data: the embedded corpus
])
def test_resume_refuses_a_different_run(stopped_run, change, expected):
    flags, data, root = stopped_run
    with pytest.raises(SystemExit) as e:
        train.run_cli(flags + (data if change else []) + change + ["--resume"])
    message = str(e.value.code)
    assert message.startswith("tpt_ops.train: --resume: ") and "holds a different run" in message
    assert expected in message and "--backend, --threads" in message
    assert train.read_metrics(root / "run" / "metrics.jsonl")[-1]["step"] == 3  # left as it was


def test_resume_refuses_other_corpus_bytes_processes_and_device(tmp_path):
    """What the flags do not show: the files under --data changed, another world size, another device type."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(Path(train.__file__).read_bytes() * 3)
    flags = RESUMABLE + ["--data", str(corpus), "--out", str(tmp_path / "run")]
    train.run_cli(flags + ["--stop-after", "3"])
    corpus.write_bytes(corpus.read_bytes().replace(b"def ", b"fed "))  # same size, same flags
    with pytest.raises(SystemExit, match=r"the corpus bytes \(CRC-32\): "):
        train.run_cli(flags + ["--resume"])
    saved = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["run"]
    for key, other, words in (("world_size", 2, "the number of processes: 2 here, 1"),
                              ("device", "cuda", "--device: 'cuda' here, 'cpu'")):
        with pytest.raises(SystemExit, match=re.escape(words)):
            train.check_resume(tmp_path / "ckpt.pt", saved, {**saved, key: other})
    with pytest.raises(SystemExit, match="records no run definition"):
        train.check_resume(tmp_path / "ckpt.pt", None, saved)


def test_resume_allows_what_does_not_change_the_run(tmp_path):
    """--eval-every, --sample-tokens and --quiet change what is reported, not the training: the losses and
    weights are exactly the uninterrupted run's; --backend and --threads are accepted too."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    train.run_cli(RESUMABLE + ["--out", str(full)])
    train.run_cli(RESUMABLE + ["--out", str(parts), "--stop-after", "3"])
    train.run_cli(TINY_LOUD + ["--steps", "6", "--eval-every", "1", "--sample-tokens", "4", "--stop-after", "5",
                               "--out", str(parts), "--resume"])
    train.run_cli(RESUMABLE + ["--out", str(parts), "--resume"])
    assert [r["loss"] for r in metrics(parts)] == [r["loss"] for r in metrics(full)]
    a = torch.load(full / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(parts / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    train.run_cli(RESUMABLE + ["--out", str(other), "--stop-after", "3"])
    threads = torch.get_num_threads()
    try:
        summary = train.run_cli(RESUMABLE + ["--out", str(other), "--resume", "--backend", "reference",
                                             "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert summary["trained_steps"] == 3 and summary["steps"] == 6


@pytest.mark.parametrize("stop_after", ["2", "3"])
def test_resume_at_or_past_stop_after_trains_nothing(tmp_path, capsys, stop_after):
    out = tmp_path / "run"
    train.run_cli(RESUMABLE + ["--out", str(out), "--stop-after", "3"])
    before = metrics(out)
    summary = train.run_cli(TINY_LOUD + ["--steps", "6", "--eval-every", "2", "--out", str(out), "--resume",
                                         "--stop-after", stop_after])
    assert summary["trained_steps"] == 0 and summary["steps"] == 3 and summary["tokens_per_s"] is None
    assert f"nothing to train: {out / 'ckpt.pt'} is at step 3, and this run stops at step {stop_after}" \
        in capsys.readouterr().out
    assert metrics(out) == before and torch.load(out / "ckpt.pt", weights_only=False)["step"] == 3
    train.run_cli(RESUMABLE + ["--out", str(out), "--resume"])  # then on to the end
    assert train.main(RESUMABLE + ["--out", str(out), "--resume"]) == 0  # a finished run: nothing to do
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))


@pytest.mark.parametrize("flags,msg", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--backend", "fused", "--device", "cuda"], "not yet checked on a GPU"),
    (["--stop-after", "0"], "--stop-after must be >= 1"),
    (["--moe-experts", "-1"], "--moe-experts must be >= 0"),
    (["--steps", "65537", "--grad-accum", "65536"], "--steps x --grad-accum must be <= 2**32"),
])
def test_bad_flags(flags, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bad_model_and_data(tmp_path):
    with pytest.raises(SystemExit, match="divisible by n_phases"):
        train.run_cli(TINY + ["--d-model", "25", "--out", str(tmp_path / "a")])
    (tmp_path / "small.txt").write_text("too short")
    with pytest.raises(ValueError, match="fewer than --seq-len"):
        train.run_cli(TINY + ["--data", str(tmp_path / "small.txt"), "--out", str(tmp_path / "b")])


DDP_SCRIPT = """
import os, sys, torch
from tpt_ops import train
summary, model = train.run(train.parse_args(sys.argv[1:]))
torch.save(model.state_dict(), os.path.join(os.environ["RANK_DIR"], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model_flags", [[], MOE], ids=["dense", "moe"])
def test_ddp_two_processes(tmp_path, model_flags):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights (and MoE selection
    biases, updated from both ranks' counts), equal to rank 0's checkpoint, and the run matches a single
    process training on the same global batch."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "RANK_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    flags = TINY + model_flags + ["--steps", "3", "--eval-every", "3", "--batch-size", "2"]
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
        single = train.run_cli(flags + ["--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "single")])
    finally:
        torch.set_num_threads(threads)
    ddp_rows, single_rows = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    if model_flags:  # the bias saw the global batch's counts: a single process's update on that batch
        single_state = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=False)["model"]
        assert torch.equal(rank0["blocks.0.ffn.expert_bias"], single_state["blocks.0.ffn.expert_bias"])
        assert [r["moe_max_load"] for r in ddp_rows] == [r["moe_max_load"] for r in single_rows]
    assert [r["tokens"] for r in ddp_rows] == [r["tokens"] for r in single_rows]
    for a, b in zip(ddp_rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert ddp_rows[-1]["val_bpb"] == pytest.approx(single["final_val_bpb"], rel=1e-4)
