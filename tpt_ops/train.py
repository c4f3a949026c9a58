"""Byte-level language-model training of a Three-Phase Transformer (or its baseline).

    python -m tpt_ops.train --steps 1500 --out runs/tpt         # embedded corpus
    python -m tpt_ops.train --baseline --out runs/base           # matched RoPE-only baseline
    python -m tpt_ops.train --data my_text_dir --bf16 --out runs/mine
    python -m tpt_ops.train --resume --out runs/tpt              # continue an interrupted run
    torchrun --nproc_per_node=2 -m tpt_ops.train --out runs/ddp  # DDP (gloo on CPU, NCCL on GPU)

The embedded corpus needs no download: the Python standard library's own
``.py`` files. Every byte is a token (vocabulary 256), so the validation
loss in bits is bits-per-byte (bpb).

What a run does: AdamW with linear warmup and cosine decay, gradient
clipping, gradient accumulation, optional bf16 autocast; every
``--eval-every`` steps a validation pass (bpb) and a checkpoint. It writes
into ``--out``: ``metrics.jsonl`` (one row per step; eval rows carry
``val_bpb``), ``ckpt.pt``, ``loss.png`` and ``sample.txt``. On a terminal
it shows a progress bar; otherwise (a log file) a plain line every
``steps // 20`` steps.

Exact resume: the training batch of a step is a pure function of
``(seed, step, micro-batch)`` and the learning rate a pure function of the
step, so a run continued from a checkpoint (``--resume``) computes exactly
the losses of a run that never stopped (``--stop-after K`` stops one on
purpose, after writing a checkpoint). So a resumed run must be the same
run: it may change only how it runs and reports (--backend, --threads,
--out, --eval-every, --sample-tokens, --quiet, --stop-after); any other
flag (the data, model, batches, schedule, numerics, --device, --steps: a
larger --steps would change the cosine schedule of the steps already
trained), the number of processes, or the corpus bytes differing from the
checkpoint's run is refused. Resuming at or past the step a run stops at
trains nothing and says so.

Mixture of experts: ``--moe-experts E`` makes the FFN of every
``--moe-every``-th layer a token-choice MoE (``--moe-k``, ``--moe-d-ff``,
``--moe-capacity``, ``--moe-score``, ``--moe-shared``,
``--moe-aux-weight``, ``--moe-z-weight``). Its weighted
load-balance and z losses join the training loss (``moe_loss`` in
``metrics.jsonl``, not part of ``loss``); the routing statistics of each
step (``moe_dropped``, ``moe_max_load``: max/mean expert load) are summed
over all micro-batches and ranks, and so is the expert count that drives
``--moe-bias-rate``'s selection-bias update, applied once per optimizer step.

Softmax-to-Hedgehog conversion: ``--convert-from CKPT`` loads the model a
run of this trainer saved, replaces the softmax attention of every layer by
Hedgehog linear attention on the same weights and trains only the new feature
maps, with the attention-distillation loss (the ``loss`` of
``metrics.jsonl``) instead of next-byte cross-entropy; the model flags are
those of the checkpoint. ``summary.json`` adds the validation bpb of the
softmax teacher (``teacher_val_bpb``) and of the converted model before any
training (``converted_val_bpb_before``). One process only.

Data parallel: under ``torchrun`` every step draws one global batch of
``batch_size * world_size`` windows and rank r trains on its r-th share
(a distributed sampler); rank 0 alone logs, writes metrics, checkpoints and
samples.

Expert parallel: ``torchrun --nproc_per_node=G -m tpt_ops.train --moe-experts E
--expert-parallel G`` shards every MoE layer's experts over the G ranks (rank r
holds experts r*E/G .. (r+1)*E/G - 1; tokens travel to their experts and back by
all-to-all, on a process group of their own) while DDP all-reduces every other
gradient; an expert's gradient already sums all ranks' tokens, so it is divided
by G as DDP averages, and gradient clipping uses the norm over all shards. The
initial weights are the single-process run's, capacity is admitted per rank
(as under plain DDP), and checkpoints hold the gathered, single-process state
(model and optimizer), so a single process loads them as they are. Each step's
``moe_rank_load`` is the share of the kept assignments each rank's experts computed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import sysconfig
import time
import zlib
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from tpt_ops.models import HedgehogConversion, ThreePhaseTransformer, TPTConfig, convert_to_hedgehog
from tpt_ops.nn import expert_parallel

VOCAB_SIZE = 256  # bytes
SAMPLE_PROMPT = b"def "


# ---------------------------------------------------------------------- data

def stdlib_sources() -> list[Path]:
    """The ``.py`` files of this Python's standard library (installed packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]


def user_sources(path: Path) -> list[Path]:
    """``path`` itself, or every regular text file below the directory ``path`` (NUL bytes mark binaries)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--data {path}: no such file or directory")
    files = []
    for p in path.rglob("*"):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
            with open(p, "rb") as f:
                if b"\0" not in f.read(4096):
                    files.append(p)
    return files


def load_corpus(data: str | None, max_bytes: int | None, val_fraction: float) -> tuple[Tensor, Tensor, str]:
    """``(train, val, description)``: uint8 tensors of the corpus bytes.

    Files are read in a fixed order that mixes directories (sorted by a CRC
    of their name), so a ``max_bytes`` cap still samples the whole corpus,
    and the last ``val_fraction`` of the bytes is the validation split: the
    same split on every machine with the same files.
    """
    root = Path(data) if data else None
    files = user_sources(root) if root else stdlib_sources()
    base = root if root and root.is_dir() else (root.parent if root else Path(sysconfig.get_paths()["stdlib"]))
    files.sort(key=lambda p: (zlib.crc32(p.relative_to(base).as_posix().encode()), p.as_posix()))
    chunks, total = [], 0
    for p in files:
        chunk = p.read_bytes()
        if max_bytes is not None:
            chunk = chunk[:max_bytes - total]
        chunks.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total >= max_bytes:
            break
    corpus = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    n_val = int(len(corpus) * val_fraction)
    what = f"{data} ({len(chunks)} files)" if data else f"the Python {sys.version_info.major}." \
        f"{sys.version_info.minor} standard library ({len(chunks)} .py files)"
    return corpus[:len(corpus) - n_val], corpus[len(corpus) - n_val:], what


def windows(data: Tensor, starts: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-byte targets ``[n, seq_len]`` (int64) of the windows starting at ``starts``."""
    rows = data[starts[:, None] + torch.arange(seq_len + 1)].long()
    return rows[:, :-1], rows[:, 1:]


# torch's CPU generator (mt19937) keeps only the low 32 bits of a seed.
GENERATOR_SEEDS = 2**32


def batch_seed(seed: int, step: int, micro: int, grad_accum: int) -> int:
    """The generator seed of micro-batch ``micro`` of ``step``: a different one for every micro-batch of a run.

    It is the run's micro-batch counter ``step * grad_accum + micro`` offset
    by a hash of ``seed``, modulo ``GENERATOR_SEEDS``: one-to-one in
    ``(step, micro)`` for the first 2**32 micro-batches of a run (check_args
    caps ``steps * grad_accum`` there). Runs with different seeds start at
    unrelated offsets.
    """
    return (zlib.crc32(str(seed).encode()) + step * grad_accum + micro) % GENERATOR_SEEDS


def train_batch(data: Tensor, args, step: int, micro: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
    """This rank's share of the global batch of ``(step, micro)``: a pure function of the seed and both.

    The global batch (``batch_size * world`` random windows) is the same for
    any world size; rank r takes rows r, r+world, ... of it.
    """
    gen = torch.Generator().manual_seed(batch_seed(args.seed, step, micro, args.grad_accum))
    starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch_size * world,), generator=gen)
    return windows(data, starts[rank::world], args.seq_len)


# -------------------------------------------------------------- optimisation

def learning_rate(step: int, args) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norm weights or rotation angles)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # fused=True: one kernel over all parameters (on CPU 3-5x faster than the
    # default per-tensor loop: 0.5 vs 2.8 ms at demo size, 8 vs 22 ms at d_model 384)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused)


def autocast(args):
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if args.bf16 else nullcontext()


def eval_starts(n_bytes: int, seq_len: int, n: int) -> Tensor:
    """``n`` window starts spread evenly over ``0 .. n_bytes - seq_len - 1``, both ends included
    (start i is ``floor(i * last / (n - 1))``, so neighbours differ by ``floor`` or ``ceil`` of ``last / (n - 1)``).

    Integer arithmetic: float32 (``torch.linspace``) rounds starts past the
    end for splits above 2**24 bytes.
    """
    last = n_bytes - seq_len - 1
    return torch.arange(n, dtype=torch.int64) * last // max(1, n - 1)


@torch.no_grad()
def evaluate(model: ThreePhaseTransformer, val: Tensor, args, rank: int, world: int) -> float:
    """Validation bits-per-byte over ``eval_batches`` global batches of fixed, evenly spaced windows
    (the same windows for any world size; each rank scores its share)."""
    n = args.eval_batches * args.batch_size * world
    starts = eval_starts(len(val), args.seq_len, n)[rank::world]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=args.device)  # summed loss, token count
    for chunk in starts.split(args.batch_size):
        x, y = (t.to(args.device) for t in windows(val, chunk, args.seq_len))
        with autocast(args):
            logits = model(x)
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        total[1] += y.numel()
    model.train(was_training)
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item() / math.log(2)


# ---------------------------------------------------------------- artefacts

def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (those with ``step <= up_to_step`` when given)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def checkpoint_states(model, optimizer) -> tuple[dict, dict]:
    """The model's and optimizer's state dicts as one process holds them: with expert parallelism
    every expert shard gathered (a collective: every rank calls it)."""
    return expert_parallel.full_state_dict(model), expert_parallel.full_optimizer_state_dict(optimizer, model)


def save_checkpoint(path: Path, states: tuple[dict, dict], step: int, config: TPTConfig, args,
                    definition: dict) -> None:
    """Writes ``checkpoint_states``' ``(model, optimizer)`` atomically (a crash mid-write leaves the
    previous checkpoint intact); ``definition`` is the run's ``run_definition``, which a resume must match."""
    payload = {"model": states[0], "optimizer": states[1], "step": step,
               "config": dataclasses.asdict(config), "args": vars(args), "run": definition}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def plot_metrics(rows: list[dict], path: Path, title: str) -> None:
    """Training loss and validation bpb against step, as a PNG (no pyplot: leaves the caller's backend alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in rows], [r["loss"] / math.log(2) for r in rows], lw=0.8, alpha=0.7,
            label="train (bits/byte)")
    val = [r for r in rows if "val_bpb" in r]
    ax.plot([r["step"] for r in val], [r["val_bpb"] for r in val], "o-", label="validation (bits/byte)")
    ax.set(xlabel="step", ylabel="bits per byte", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------- resume

# The flags that define a run: its data, model, batches, schedule and
# numerics. A resumed run must give each the checkpoint's value.
RUN_DEFINING_ARGS = ("data", "max_bytes", "val_fraction", "steps", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "n_phases", "d_ff", "seq_len", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup",
                     "weight_decay", "grad_clip", "bf16", "seed", "baseline", "device", "eval_batches",
                     "moe_experts", "moe_k", "moe_d_ff", "moe_capacity", "moe_score", "moe_shared",
                     "moe_bias_rate", "moe_every", "moe_aux_weight", "moe_z_weight", "expert_parallel",
                     "convert_from")
# The flags a resumed run may change: how it runs and reports, not what it
# computes (fused and reference ops share one state_dict; results do not
# depend on the thread count; evaluation and sampling draw no training
# randomness; --eval-batches is run-defining because it sets which windows
# val_bpb averages).
RESUME_MAY_CHANGE = ("out", "backend", "threads", "eval_every", "sample_tokens", "quiet", "resume", "stop_after")
# What else defines a run, with the words that name it in an error.
RUN_DEFINING_OTHER = {"world_size": "the number of processes", "corpus_crc32": "the corpus bytes (CRC-32)"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_definition(args, world: int, train: Tensor, val: Tensor) -> dict:
    """What a resume must match: the run-defining flags (``--data`` as an absolute path, ``--device``
    as its type), the number of processes and a checksum of both splits' bytes."""
    definition = {name: getattr(args, name) for name in RUN_DEFINING_ARGS}
    definition["data"] = str(Path(args.data).resolve()) if args.data else None
    definition["convert_from"] = str(Path(args.convert_from).resolve()) if args.convert_from else None
    definition["device"] = args.device.split(":")[0]
    definition["world_size"] = world
    definition["corpus_crc32"] = zlib.crc32(val.numpy(), zlib.crc32(train.numpy()))
    return definition


def check_resume(path: Path, saved: dict | None, definition: dict) -> None:
    """Refuses (``SystemExit``) a resume whose run differs from the checkpoint's, naming each difference."""
    if saved is None:
        raise SystemExit(f"tpt_ops.train: --resume: {path} records no run definition (an older trainer wrote "
                         f"it), so it cannot be resumed exactly; start a new run in another --out")
    diffs = []
    for key, value in definition.items():
        if saved.get(key) != value:
            name = RUN_DEFINING_OTHER.get(key, flag(key))
            diffs.append(f"{name}: {value!r} here, {saved.get(key)!r} in the checkpoint")
            if key == "steps":
                diffs[-1] += (" (--steps sets the cosine schedule of every step, those already trained "
                              "included: a run cannot be extended or shortened)")
    if diffs:
        allowed = ", ".join(flag(n) for n in RESUME_MAY_CHANGE if n != "resume")
        raise SystemExit(f"tpt_ops.train: --resume: {path} holds a different run:\n  " + "\n  ".join(diffs)
                         + f"\na resumed run continues the checkpoint's run exactly, so it may change only "
                         f"{allowed}; to change anything else, start a new run in another --out")


# ----------------------------------------------------------------- progress

class Progress:
    """The lead rank's step progress on stdout: a tqdm bar on a terminal; otherwise (a log file) one
    plain line every ``max(1, steps // 20)`` steps and at the last step, never carriage returns."""

    def __init__(self, start: int, end: int, steps: int, enabled: bool) -> None:
        self.end, self.enabled = end, enabled
        self.every = max(1, steps // 20)
        self.bar = (tqdm(total=end, initial=start, unit="step", dynamic_ncols=True, file=sys.stdout)
                    if enabled and sys.stdout.isatty() else None)

    def step(self, done: int, loss: float, lr: float, tokens_per_s: float, moe_stats: dict | None = None) -> None:
        moe = {"max_load": f"{moe_stats['moe_max_load']:.2f}", "dropped": f"{moe_stats['moe_dropped']:.3f}"} \
            if moe_stats else {}
        if moe_stats and "moe_rank_load" in moe_stats:
            moe["rank_load"] = "/".join(f"{share:.2f}" for share in moe_stats["moe_rank_load"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", **moe)
        elif self.enabled and (done % self.every == 0 or done == self.end):
            routing = "".join(f"  {name} {value}" for name, value in moe.items())
            print(f"step {done:>6}/{self.end}  loss {loss:.4f}  lr {lr:.3g}  {tokens_per_s:,.0f} tokens/s{routing}",
                  flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        elif self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tpt_ops.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", help="a text file or a directory of text files (default: the embedded stdlib corpus)")
    a("--max-bytes", type=int, help="read at most this many bytes of the corpus")
    a("--val-fraction", type=float, default=0.05, help="share of the corpus held out for validation")
    a("--out", default="runs/tpt", help="directory for metrics.jsonl, ckpt.pt, loss.png, sample.txt")
    a("--steps", type=int, default=1500, help="optimizer steps of the whole run")
    a("--d-model", type=int, default=96)
    a("--n-layers", type=int, default=4)
    a("--n-heads", type=int, default=6, help="query heads")
    a("--n-kv-heads", type=int, default=3)
    a("--n-phases", type=int, default=3)
    a("--d-ff", type=int, default=256)
    a("--seq-len", type=int, default=128)
    a("--batch-size", type=int, default=16, help="sequences per micro-batch and rank")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--lr", type=float, default=3e-3, help="peak learning rate")
    a("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    a("--warmup", type=int, default=50, help="linear warmup steps")
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: off)")
    a("--bf16", action="store_true", help="bfloat16 autocast (parameters and optimizer stay float32)")
    a("--seed", type=int, default=0)
    a("--baseline", action="store_true", help="the matched RoPE-only baseline (no 3PT ops)")
    a("--backend", choices=("fused", "reference"), default="fused",
      help="fused C kernels or the plain-PyTorch reference ops")
    a("--moe-experts", type=int, default=0,
      help="routed experts of each MoE FFN (0: the dense SwiGLU FFN everywhere)")
    a("--moe-k", type=int, default=2, help="experts per token")
    a("--moe-d-ff", type=int, help="width of each expert (default: --d-ff)")
    a("--moe-capacity", type=float, help="capacity factor: ceil(c * tokens * k / experts) slots per expert "
      "(default: dropless)")
    a("--moe-score", choices=("softmax", "sigmoid"), default="softmax", help="router score function")
    a("--moe-shared", type=int, default=0, help="always-on shared experts per MoE FFN")
    a("--moe-bias-rate", type=float, default=0.0,
      help="aux-loss-free balancing: selection-bias step per optimizer step (0: off)")
    a("--moe-every", type=int, default=1, help="every n-th layer is MoE (1: every layer)")
    a("--moe-aux-weight", type=float, default=1e-2, help="weight of the load-balance loss")
    a("--moe-z-weight", type=float, default=1e-3, help="weight of the router z-loss")
    a("--expert-parallel", type=int, default=1,
      help="shard the experts over this many ranks: 1 (off) or the torchrun world size")
    a("--convert-from", metavar="CKPT",
      help="convert the softmax model of this checkpoint to Hedgehog attention and distil its feature maps")
    a("--device", default="cpu", help="cpu, or cuda (reference backend only: the CUDA kernels are not yet checked on a GPU)")
    a("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    a("--eval-every", type=int, default=250, help="steps between validation passes and checkpoints")
    a("--eval-batches", type=int, default=20, help="global batches per validation pass")
    a("--resume", action="store_true",
      help="continue from --out/ckpt.pt if it exists; every flag must match the checkpoint's run except "
           + ", ".join(flag(n) for n in RESUME_MAY_CHANGE if n != "resume") + " (--steps too: no extending)")
    a("--stop-after", type=int, help="stop (with a checkpoint) after this step, as if interrupted")
    a("--sample-tokens", type=int, default=256, help="bytes to sample at the end (capped at --seq-len)")
    a("--quiet", action="store_true", help="no progress bar or log lines")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    positive = ("steps", "d_model", "n_layers", "n_heads", "n_kv_heads", "n_phases", "d_ff", "seq_len",
                "batch_size", "grad_accum", "eval_every", "eval_batches")
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    if args.lr <= 0 or args.warmup < 0 or args.grad_clip < 0 or not 0 <= args.min_lr_ratio <= 1:
        p.error("need --lr > 0, --warmup >= 0, --grad-clip >= 0 and 0 <= --min-lr-ratio <= 1")
    if args.moe_experts < 0:
        p.error(f"--moe-experts must be >= 0, got {args.moe_experts}")
    if args.expert_parallel < 1:
        p.error(f"--expert-parallel must be >= 1, got {args.expert_parallel}")
    if args.expert_parallel > 1 and (args.moe_experts == 0 or args.moe_experts % args.expert_parallel):
        p.error(f"--expert-parallel {args.expert_parallel} needs --moe-experts divisible by it, "
                f"got {args.moe_experts}")
    if args.stop_after is not None and args.stop_after < 1:
        p.error(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.steps * args.grad_accum > GENERATOR_SEEDS:
        p.error(f"--steps x --grad-accum must be <= 2**32 (one generator seed per micro-batch), "
                f"got {args.steps * args.grad_accum}")
    if args.device.startswith("cuda") and args.backend == "fused":
        p.error("--backend fused runs on the CPU only (its CUDA kernels are not yet checked on a GPU); "
                "use --device cpu, or --backend reference on cuda")


def model_config(args) -> TPTConfig:
    config = TPTConfig(vocab_size=VOCAB_SIZE, d_model=args.d_model, n_layers=args.n_layers,
                       n_q_heads=args.n_heads, n_kv_heads=args.n_kv_heads, n_phases=args.n_phases,
                       d_ff=args.d_ff, max_seq_len=args.seq_len, backend=args.backend)
    if args.moe_experts:
        config = config.replace(ffn="moe", moe_experts=args.moe_experts, moe_k=args.moe_k, moe_d_ff=args.moe_d_ff,
                                moe_capacity=args.moe_capacity, moe_score=args.moe_score,
                                moe_shared=args.moe_shared, moe_bias_rate=args.moe_bias_rate,
                                moe_every=args.moe_every, moe_aux_weight=args.moe_aux_weight,
                                moe_z_weight=args.moe_z_weight)
    return config.baseline() if args.baseline else config


def convert_checkpoint(args, val: Tensor, rank: int, world: int) -> tuple[HedgehogConversion, dict]:
    """``--convert-from``: the checkpoint's softmax model converted to Hedgehog attention (on
    ``--backend``), and the validation bpb of the teacher and of the converted model before training."""
    path = Path(args.convert_from)
    if not path.is_file():
        raise SystemExit(f"tpt_ops.train: --convert-from: no checkpoint at {path}")
    ckpt = torch.load(path, map_location=args.device, weights_only=False)
    config = TPTConfig(**ckpt["config"]).replace(backend=args.backend)
    if config.max_seq_len < args.seq_len:
        raise SystemExit(f"tpt_ops.train: --seq-len {args.seq_len} exceeds the checkpoint model's max_seq_len "
                         f"{config.max_seq_len}")
    model = ThreePhaseTransformer(config).to(args.device)
    model.load_state_dict(ckpt["model"])
    bpb = {"teacher_val_bpb": evaluate(model, val, args, rank, world)}
    try:
        conversion = convert_to_hedgehog(model)
    except ValueError as e:
        raise SystemExit(f"tpt_ops.train: --convert-from {path}: {e}") from None
    bpb["converted_val_bpb_before"] = evaluate(model, val, args, rank, world)
    return conversion, bpb


def run(args) -> tuple[dict, ThreePhaseTransformer]:
    """Trains as ``args`` say; returns ``(summary, model)`` (the model unwrapped from DDP).

    Under torchrun it joins the default process group if the caller has initialised one
    (and leaves it to the caller), else initialises and destroys one itself.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    owns_process_group = distributed and not dist.is_initialized()
    if distributed:
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
        if owns_process_group:
            dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if distributed else 0
    lead = rank == 0
    log = print if lead and not args.quiet else (lambda *a, **k: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        train, val, corpus_name = load_corpus(args.data, args.max_bytes, args.val_fraction)
        for split, data in (("training", train), ("validation", val)):
            if len(data) <= args.seq_len + 1:
                raise ValueError(f"the {split} split has {len(data)} bytes, fewer than --seq-len + 2 "
                                 f"({args.seq_len + 2}): use more data or a shorter --seq-len")
        try:
            config = model_config(args)
        except ValueError as e:
            raise SystemExit(f"tpt_ops.train: {e}") from None

        conversion, conversion_bpb, expert_group = None, {}, None
        if args.convert_from:
            if distributed:
                raise SystemExit("tpt_ops.train: --convert-from runs in one process")
            conversion, conversion_bpb = convert_checkpoint(args, val, rank, world)
            model, config = conversion.model, conversion.model.config
        else:
            if args.expert_parallel > 1 and args.expert_parallel != world:
                raise SystemExit(f"tpt_ops.train: --expert-parallel {args.expert_parallel} must equal the number "
                                 f"of processes ({world}): run it under torchrun --nproc_per_node="
                                 f"{args.expert_parallel}")
            # the expert exchange gets a group of its own, so its collectives never interleave with DDP's
            if args.expert_parallel > 1:
                expert_group = dist.new_group(list(range(world)))
            torch.manual_seed(args.seed)
            model = ThreePhaseTransformer(config, expert_parallel_group=expert_group).to(args.device)
        optimizer = make_optimizer(model, args)
        ckpt_path, metrics_path = out / "ckpt.pt", out / "metrics.jsonl"
        definition = run_definition(args, world, train, val)
        start = 0
        if args.resume and ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location=args.device, weights_only=False)
            check_resume(ckpt_path, ckpt.get("run"), definition)
            model.load_state_dict(ckpt["model"])  # expert-parallel layers keep their rows of the experts
            optimizer.load_state_dict(expert_parallel.shard_optimizer_state_dict(ckpt["optimizer"], optimizer,
                                                                                  model))
            start = ckpt["step"]
        rows = read_metrics(metrics_path, start) if start else []
        if lead:  # drop rows written after the checkpoint by an interrupted run
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if distributed:  # expert shards are not replicas: DDP leaves them alone
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, list(expert_parallel.sharded_experts(model)))
        ddp = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

        kind = "baseline (RoPE only)" if args.baseline else f"3PT (N={config.phases})"
        if config.ffn == "moe":
            kind += f", MoE {config.moe_experts} experts top-{config.moe_k} every {config.moe_every} layer(s)"
        if conversion is not None:
            kind += ", Hedgehog conversion"
            log(f"converting {args.convert_from}: teacher {conversion_bpb['teacher_val_bpb']:.4f} bpb, "
                f"converted before training {conversion_bpb['converted_val_bpb_before']:.4f} bpb")
        log(f"corpus: {corpus_name}: {len(train):,} training / {len(val):,} validation bytes")
        log(f"model: {kind}, {model.num_parameters():,} parameters, backend {args.backend}, {args.device}, "
            f"{world} process(es) x {torch.get_num_threads()} threads")
        if start:
            log(f"resuming from {ckpt_path} at step {start}")

        tokens_per_step = args.batch_size * args.seq_len * args.grad_accum * world
        train_seconds = 0.0
        last = rows[-1] if rows else {}
        val_bpb = next((r["val_bpb"] for r in reversed(rows) if "val_bpb" in r), None)
        stop = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
        if start >= stop:
            log(f"nothing to train: {ckpt_path} is at step {start}, and this run stops at step {stop} "
                f"(--steps {args.steps}, --stop-after {args.stop_after})")
        end = max(start, stop)
        progress = Progress(start, end, args.steps, enabled=lead and not args.quiet)
        model.train()
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = learning_rate(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=args.device)
            moe_loss_sum = torch.zeros((), device=args.device)
            for micro in range(args.grad_accum):
                x, y = (t.to(args.device) for t in train_batch(train, args, step, micro, rank, world))
                sync = not distributed or micro == args.grad_accum - 1
                with (nullcontext() if sync else ddp.no_sync()), autocast(args):
                    if conversion is None:
                        logits = ddp(x)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / args.grad_accum
                    else:
                        loss = conversion.distillation_loss(x) / args.grad_accum
                    moe_loss = model.moe_loss()
                if moe_loss is None:
                    loss.backward()
                else:
                    (loss + moe_loss / args.grad_accum).backward()
                    moe_loss_sum += moe_loss.detach() / args.grad_accum
                    model.accumulate_moe_counts()  # once per micro-batch: recomputed forwards never count
                loss_sum += loss.detach()
            if expert_group is not None:
                expert_parallel.average_expert_grads(model, world)
            if args.grad_clip <= 0:
                grad_norm = torch.zeros(())
            elif expert_group is not None:
                grad_norm = expert_parallel.clip_grad_norm_(model, args.grad_clip, expert_group)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            moe_stats = model.moe_step()  # every rank: sums the step's expert counts, updates the biases
            if distributed:  # the logged loss is the mean over ranks
                dist.all_reduce(loss_sum)
                loss_sum /= world
            step_loss = loss_sum.item()
            train_seconds += time.perf_counter() - t0
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"tpt_ops.train: loss is {step_loss} at step {step + 1}")

            done = step + 1
            row = {"step": done, "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens": done * tokens_per_step}
            if moe_stats:  # rank 0's MoE losses; the load statistics are over all ranks
                row.update(moe_loss=moe_loss_sum.item(), **moe_stats)
            if done % args.eval_every == 0 or done == args.steps:
                val_bpb = row["val_bpb"] = evaluate(model, val, args, rank, world)
                progress.write(f"step {done:>6}  train loss {step_loss:.4f}  val bpb {val_bpb:.4f}")
            if "val_bpb" in row or done == end:  # --stop-after: a checkpoint, no extra eval row
                states = checkpoint_states(model, optimizer)  # every rank: expert shards are gathered
                if lead:
                    save_checkpoint(ckpt_path, states, done, config, args, definition)
            if lead:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            last = row
            progress.step(done, step_loss, lr, tokens_per_step * (done - start) / train_seconds, moe_stats)
        progress.close()
        if distributed:
            dist.barrier()  # rank 0's checkpoint and metrics are complete

        trained = end - start
        summary = {"steps": end, "trained_steps": trained, "final_val_bpb": val_bpb,
                   "final_loss": last.get("loss"),
                   "tokens_per_s": tokens_per_step * trained / train_seconds if trained else None,
                   "parameters": model.num_parameters(), "world_size": world, "backend": args.backend,
                   "baseline": args.baseline, "out": str(out), **conversion_bpb}
        n_sample = min(args.sample_tokens, args.seq_len - len(SAMPLE_PROMPT))
        # with expert parallelism every rank runs the sampling forwards (their experts serve rank 0's)
        if trained and n_sample > 0 and (lead or expert_group is not None):
            prompt = torch.tensor(list(SAMPLE_PROMPT), device=args.device)
            gen = torch.Generator(args.device).manual_seed(args.seed)
            with autocast(args):
                ids = model.generate(prompt, n_sample, temperature=0.8, top_k=40, generator=gen)
            summary["sample"] = bytes(ids.tolist()).decode("utf-8", errors="replace")
        if lead and trained:
            plot_metrics(read_metrics(metrics_path), out / "loss.png",
                         f"{kind}, d_model {args.d_model}, {args.n_layers} layers, seed {args.seed}")
            if "sample" in summary:
                (out / "sample.txt").write_text(summary["sample"])
                log(f"sample:\n{summary['sample']}")
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            bpb = "not evaluated yet" if val_bpb is None else f"{val_bpb:.4f} bpb"
            log(f"done: step {end}, validation {bpb}, {summary['tokens_per_s'] or 0:,.0f} tokens/s; wrote {out}/")
        return summary, model
    finally:
        if owns_process_group:
            dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def run_cli(argv: list[str] | None = None) -> dict:
    """Trains as the command line ``argv`` says; returns the run's summary (``final_val_bpb``, ``tokens_per_s``...)."""
    return run(parse_args(argv))[0]


def main(argv: list[str] | None = None) -> int:
    """The ``tpt-train`` console script: trains, then returns exit status 0 (errors exit nonzero)."""
    run_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
