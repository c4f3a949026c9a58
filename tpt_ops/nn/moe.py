"""Token-choice mixture-of-experts FFN (Switch / ST-MoE / Mixtral / DeepSeek-V3 style)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tpt_ops.nn.backend import check_backend, ops_for
from tpt_ops.nn.expert_parallel import (EXPERT_WEIGHTS, expert_parallel_experts, local_expert_range,
                                        take_expert_shard)
from tpt_ops.nn.ffn import SwiGLU
from tpt_ops.reference import MOE_SCORES


# ------------------------------------------------------------------ per-expert segment matmul

def _check_segment_mm(a: Tensor, b: Tensor, counts: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 3 or a.shape[1] != b.shape[1]:
        raise ValueError(f"segment_mm: a must be [A, K] and b [E, K, N], got {list(a.shape)} and {list(b.shape)}")
    if counts.dtype != torch.int64 or tuple(counts.shape) != (b.shape[0],):
        raise ValueError(f"segment_mm: counts must be int64 of shape [{b.shape[0]}], "
                         f"got {counts.dtype} {list(counts.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"segment_mm: a and b must have one dtype, got {a.dtype} and {b.dtype}")


def _segments(counts: Tensor) -> list[tuple[int, int, int]]:
    """(expert, start, end) of every non-empty segment; rows past the last one are unused."""
    bounds, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            bounds.append((e, start, start + n))
        start += n
    return bounds


@torch.library.custom_op("tpt_nn::segment_mm", mutates_args=())
def segment_mm(a: Tensor, b: Tensor, counts: Tensor) -> Tensor:
    """out[s_e:s_e+counts[e]] = a[s_e:s_e+counts[e]] @ b[e] for the expert-contiguous rows of ``a``.

    ``a`` [A, K], ``b`` [E, K, N], ``counts`` [E] int64 (segment lengths, in expert
    order); rows past ``sum(counts)`` are unused and come out 0. One ``torch.mm``
    per non-empty segment: an opaque op, so ``torch.compile`` traces it through
    its fake kernel without reading the data-dependent segment sizes.
    """
    _check_segment_mm(a, b, counts)
    out = a.new_empty(a.shape[0], b.shape[2])
    used = 0
    for e, start, end in _segments(counts):
        torch.mm(a[start:end], b[e], out=out[start:end])
        used = end
    out[used:].zero_()
    return out


@segment_mm.register_fake
def _segment_mm_fake(a: Tensor, b: Tensor, counts: Tensor) -> Tensor:
    _check_segment_mm(a, b, counts)
    return a.new_empty(a.shape[0], b.shape[2])


@torch.library.custom_op("tpt_nn::segment_mm_backward", mutates_args=())
def segment_mm_backward(dout: Tensor, a: Tensor, b: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(da, db) of :func:`segment_mm`: da = dout @ b[e]^T per segment, db[e] = a_seg^T @ dout_seg."""
    # empty, not zeros: the matmuls overwrite every used row and every expert that has rows, so only the
    # rest is zeroed (a zero-fill of both would be one more pass over tensors as large as the weights)
    da = torch.empty_like(a)
    db = torch.empty_like(b)
    dout = dout.to(a.dtype)
    used, without_rows = 0, set(range(b.shape[0]))
    for e, start, end in _segments(counts):
        torch.mm(dout[start:end], b[e].t(), out=da[start:end])
        torch.mm(a[start:end].t(), dout[start:end], out=db[e])
        used = end
        without_rows.discard(e)
    da[used:].zero_()
    for e in without_rows:
        db[e].zero_()
    return da, db


@segment_mm_backward.register_fake
def _segment_mm_backward_fake(dout: Tensor, a: Tensor, b: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(b)


def _segment_mm_setup_context(ctx, inputs, output) -> None:
    a, b, counts = inputs
    ctx.save_for_backward(a, b, counts)


def _segment_mm_vjp(dout: Tensor, a: Tensor, b: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(da, db) of :func:`segment_mm` as differentiable PyTorch (for ``create_graph=True``)."""
    dout = dout.to(a.dtype)
    da_parts, db_parts, start = [], [], 0
    for e, n in enumerate(counts.tolist()):
        da_parts.append(dout[start:start + n] @ b[e].t())
        db_parts.append(a[start:start + n].t() @ dout[start:start + n])
        start += n
    da_parts.append(a.new_zeros(a.shape[0] - start, a.shape[1]))  # the unused rows
    return torch.cat(da_parts), torch.stack(db_parts)


def _segment_mm_autograd(ctx, dout: Tensor):
    a, b, counts = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        da, db = _segment_mm_vjp(dout, a, b, counts)
    else:
        da, db = segment_mm_backward(dout, a, b, counts)
    return da, db, None


segment_mm.register_autograd(_segment_mm_autograd, setup_context=_segment_mm_setup_context)


# ------------------------------------------------------------------ per-expert gate/up matmul + SwiGLU

def _check_segment_swiglu(a: Tensor, w_gate: Tensor, w_up: Tensor, counts: Tensor) -> None:
    if w_gate.shape != w_up.shape or w_gate.dtype != w_up.dtype:
        raise ValueError(f"segment_swiglu: w_gate and w_up must have one shape and dtype, got "
                         f"{list(w_gate.shape)} {w_gate.dtype} and {list(w_up.shape)} {w_up.dtype}")
    _check_segment_mm(a, w_gate, counts)


@torch.library.custom_op("tpt_nn::segment_swiglu", mutates_args=())
def segment_swiglu_with_input(a: Tensor, w_gate: Tensor, w_up: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """``(h, gate_up)``: per expert segment, ``gate_up = [a @ w_gate[e] | a @ w_up[e]]`` and ``h = swiglu(gate_up)``.

    ``a`` [A, K], ``w_gate`` and ``w_up`` [E, K, N], ``counts`` [E] int64 as for
    :func:`segment_mm`; ``gate_up`` is [A, 2N] (the activation's input, kept for the
    backward) and ``h`` [A, N]. Each half of a segment's rows is the ``out=`` of one
    ``torch.mm`` straight from the expert's own weight, so no concatenated weight is
    ever made. Unused rows come out 0 in both.
    """
    _check_segment_swiglu(a, w_gate, w_up, counts)
    N = w_gate.shape[2]
    gate_up = a.new_empty(a.shape[0], 2 * N)
    used = 0
    for e, start, end in _segments(counts):
        torch.mm(a[start:end], w_gate[e], out=gate_up[start:end, :N])
        torch.mm(a[start:end], w_up[e], out=gate_up[start:end, N:])
        used = end
    gate_up[used:].zero_()
    return torch.ops.tpt.swiglu(gate_up), gate_up


@segment_swiglu_with_input.register_fake
def _segment_swiglu_fake(a: Tensor, w_gate: Tensor, w_up: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    _check_segment_swiglu(a, w_gate, w_up, counts)
    N = w_gate.shape[2]
    return a.new_empty(a.shape[0], N), a.new_empty(a.shape[0], 2 * N)


@torch.library.custom_op("tpt_nn::segment_swiglu_backward", mutates_args=())
def segment_swiglu_backward(dh: Tensor, a: Tensor, w_gate: Tensor, w_up: Tensor, gate_up: Tensor,
                            counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(da, dw_gate, dw_up)`` of :func:`segment_swiglu` from the saved activation input ``gate_up``.

    Per segment: ``[dg | du] = swiglu_backward(dh_seg, gate_up_seg)`` (a segment-sized
    temporary, so no [A, 2N] gradient buffer is ever held), ``da = [dg | du] @ [w_gate[e] |
    w_up[e]]^T`` (one product over 2N, rounded once: the expert's two weights are copied side
    by side into one [K, 2N] scratch reused by every segment), ``dw_gate[e] = a_seg^T @ dg``
    and ``dw_up[e] = a_seg^T @ du``.
    """
    K, N = w_gate.shape[1:]
    # empty, not zeros: the matmuls overwrite every used row and every expert with rows (see segment_mm_backward)
    da = torch.empty_like(a)
    dw_gate, dw_up = torch.empty_like(w_gate), torch.empty_like(w_up)
    w_gate_up = w_gate.new_empty(K, 2 * N)
    dh = dh.to(a.dtype).contiguous()
    used, without_rows = 0, set(range(w_gate.shape[0]))
    for e, start, end in _segments(counts):
        d_gate_up = torch.ops.tpt.swiglu_backward(dh[start:end], gate_up[start:end])
        a_seg, dg, du = a[start:end], d_gate_up[:, :N], d_gate_up[:, N:]
        torch.cat((w_gate[e], w_up[e]), dim=1, out=w_gate_up)
        torch.mm(d_gate_up, w_gate_up.t(), out=da[start:end])
        torch.mm(a_seg.t(), dg, out=dw_gate[e])
        torch.mm(a_seg.t(), du, out=dw_up[e])
        used = end
        without_rows.discard(e)
    da[used:].zero_()
    for e in without_rows:
        dw_gate[e].zero_()
        dw_up[e].zero_()
    return da, dw_gate, dw_up


@segment_swiglu_backward.register_fake
def _segment_swiglu_backward_fake(dh: Tensor, a: Tensor, w_gate: Tensor, w_up: Tensor, gate_up: Tensor,
                                  counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(w_gate), torch.empty_like(w_up)


def _segment_swiglu_setup_context(ctx, inputs, output) -> None:
    a, w_gate, w_up, counts = inputs
    _, gate_up = output
    ctx.mark_non_differentiable(gate_up)
    ctx.set_materialize_grads(False)  # no zero-filled [A, 2N] gradient for the output nobody differentiates
    ctx.save_for_backward(a, w_gate, w_up, counts, gate_up)


def _segment_swiglu_vjp(dh: Tensor, a: Tensor, w_gate: Tensor, w_up: Tensor,
                        counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(da, dw_gate, dw_up)`` of :func:`segment_swiglu` as differentiable PyTorch (for ``create_graph=True``).

    ``gate_up`` is recomputed from the inputs: the saved one carries no graph.
    """
    # imported here, not at the top: this module must import without the compiled extension (the
    # reference backend never runs segment_swiglu), and tpt_ops.ops.swiglu needs it
    from tpt_ops.ops.swiglu import swiglu_vjp

    dh = dh.to(a.dtype)
    da_parts, dg_parts, du_parts, start = [], [], [], 0
    for e, n in enumerate(counts.tolist()):
        rows = a[start:start + n]
        gate_up = torch.cat((rows @ w_gate[e], rows @ w_up[e]), dim=-1)
        d_gate, d_up = swiglu_vjp(dh[start:start + n], gate_up).to(a.dtype).chunk(2, dim=-1)
        da_parts.append(d_gate @ w_gate[e].t() + d_up @ w_up[e].t())
        dg_parts.append(rows.t() @ d_gate)
        du_parts.append(rows.t() @ d_up)
        start += n
    da_parts.append(a.new_zeros(a.shape[0] - start, a.shape[1]))  # the unused rows
    return torch.cat(da_parts), torch.stack(dg_parts), torch.stack(du_parts)


def _segment_swiglu_autograd(ctx, dh: Tensor | None, _):
    a, w_gate, w_up, counts, gate_up = ctx.saved_tensors
    if dh is None:
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        da, dw_gate, dw_up = _segment_swiglu_vjp(dh, a, w_gate, w_up, counts)
        return da, dw_gate, dw_up, None
    da, dw_gate, dw_up = segment_swiglu_backward(dh, a, w_gate, w_up, gate_up, counts)
    return da, dw_gate, dw_up, None


segment_swiglu_with_input.register_autograd(_segment_swiglu_autograd, setup_context=_segment_swiglu_setup_context)


def segment_swiglu(a: Tensor, w_gate: Tensor, w_up: Tensor, counts: Tensor) -> Tensor:
    """``swiglu(segment_mm(a, cat((w_gate, w_up), -1), counts))`` without the concatenated weight.

    ``a`` [A, K] expert-contiguous rows, ``w_gate`` and ``w_up`` [E, K, N], ``counts`` [E]
    int64: row block e computes ``silu(a_seg @ w_gate[e]) * (a_seg @ w_up[e])``, [A, N]
    (unused rows 0). One autograd node: it keeps ``a``, the weights and the activation's
    input ``[A, 2N]`` (not its output), and its backward takes the activation's gradient one
    segment at a time, right before that segment's matmuls. Twice differentiable;
    ``torch.compile`` traces it through its fake kernels.
    """
    return segment_swiglu_with_input(a, w_gate, w_up, counts)[0]


# ------------------------------------------------------------------ the layer

class TokenChoiceMoE(nn.Module):
    """Top-k token-choice MoE of SwiGLU experts, a drop-in for :class:`~tpt_ops.nn.SwiGLU`.

    Per token (``x`` ``[..., d_model]`` flattened to ``[M, d_model]``)::

        logits = x @ router.weight.T                          # float32, autocast off
        gates, experts, slots, ... = moe_route(logits, k, capacity_factor, normalize, score, expert_bias)
        buf = moe_permute(x, slots, slot_token)              # expert-contiguous rows [M*k, d_model]
        out = swiglu([buf @ w_gate[e] | buf @ w_up[e]]) @ w_down[e]  per expert segment e
        y   = moe_unpermute(out, gates, slots, slot_token)   # sum_j gate[t, j] * out[slot(t, j)]
        y  += shared(x)                                      # n_shared_experts always-on experts

    Expert e computes ``(silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]``; the
    ``n_shared_experts`` shared experts are held as one :class:`SwiGLU` of width
    ``n_shared_experts * d_ff`` (the same function as their sum). The router is
    float32 and stays float32 under autocast, since a low-precision router flips
    expert choices; the experts run in the autocast dtype when autocast is on.

    After each forward the module holds ``aux_loss`` and ``z_loss`` (already
    weighted by ``aux_loss_weight`` / ``z_loss_weight``, with gradient; the caller
    adds them to its loss), ``counts`` (kept assignments per expert) and
    ``n_assignments`` (M * k); :meth:`routing_stats` summarises them.

    Aux-loss-free balancing (``bias_update_rate > 0``, DeepSeek-V3): the buffer
    ``expert_bias`` is added to the scores for selection only. Counting is explicit
    so that recomputed forwards (activation checkpointing, evaluation) never count
    twice: call :meth:`accumulate_counts` once per training micro-batch and
    :meth:`moe_step` once after the optimizer step; it sums the step's counts over
    all ranks (an all-reduce when ``torch.distributed`` is initialised) and applies
    ``expert_bias += rate * sign(mean(counts) - counts)``.

    Args:
        d_model, d_ff: sizes of each expert (as :class:`SwiGLU`).
        n_experts, k: routed experts and experts per token (``1 <= k <= n_experts``).
        capacity_factor: None (dropless) or > 0: ``ceil(capacity_factor * M * k / E)`` slots per expert.
        normalize: renormalise the k gates of a token to sum 1.
        score: ``"softmax"`` or ``"sigmoid"``.
        n_shared_experts: always-on experts added to the routed output.
        aux_loss_weight, z_loss_weight: weights of the load-balance and router z-losses.
        bias_update_rate: step of the selection bias update (0 disables it).
        backend: ``"fused"`` or ``"reference"`` (the routing, dispatch and activation ops).
        expert_parallel_group: None, or a ``torch.distributed`` process group of G ranks over
            which the experts are sharded (:mod:`tpt_ops.nn.expert_parallel`): rank r holds experts
            ``r*E/G .. (r+1)*E/G - 1`` (``w_*`` of leading size ``E/G``; G must divide E) and the
            whole router; capacity is admitted over each rank's own tokens; every rank of the group
            must run every forward. ``reset_parameters`` draws the full ``[E, ...]`` weights and keeps
            this rank's rows (the same values as a single-process layer of the same seed), and
            ``load_state_dict`` takes full or sharded expert tensors.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int, capacity_factor: float | None = None,
                 normalize: bool = True, score: str = "softmax", n_shared_experts: int = 0,
                 aux_loss_weight: float = 1e-2, z_loss_weight: float = 1e-3, bias_update_rate: float = 0.0,
                 backend: str = "fused", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, expert_parallel_group=None) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        check_moe_args("TokenChoiceMoE", d_model=d_model, d_ff=d_ff, n_experts=n_experts, k=k,
                       capacity_factor=capacity_factor, score=score, n_shared_experts=n_shared_experts,
                       aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight,
                       bias_update_rate=bias_update_rate)
        self.d_model, self.d_ff, self.n_experts, self.k = d_model, d_ff, n_experts, k
        self.capacity_factor = None if capacity_factor is None else float(capacity_factor)
        self.normalize = bool(normalize)
        self.score = score
        self.n_shared_experts = n_shared_experts
        self.aux_loss_weight = float(aux_loss_weight)
        self.z_loss_weight = float(z_loss_weight)
        self.bias_update_rate = float(bias_update_rate)
        self.expert_parallel_group = expert_parallel_group
        self.local_experts = (range(n_experts) if expert_parallel_group is None
                              else range(*local_expert_range(n_experts, expert_parallel_group)))
        n_local = len(self.local_experts)
        factory = {"device": device, "dtype": dtype}
        self.router = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=torch.float32)
        self.w_gate = nn.Parameter(torch.empty(n_local, d_model, d_ff, **factory))
        self.w_up = nn.Parameter(torch.empty(n_local, d_model, d_ff, **factory))
        self.w_down = nn.Parameter(torch.empty(n_local, d_ff, d_model, **factory))
        if expert_parallel_group is not None:
            self._register_load_state_dict_pre_hook(self._take_expert_shards)
        self.shared = (SwiGLU(d_model, n_shared_experts * d_ff, backend, **factory)
                       if n_shared_experts else None)
        # part of the state (checkpointed); float32 like the router
        self.register_buffer("expert_bias", torch.zeros(n_experts, device=device, dtype=torch.float32))
        # this optimizer step's counts so far, zeroed by moe_step: a plain attribute, not a buffer,
        # since DDP overwrites every rank's buffers with rank 0's at each forward
        self.step_counts = torch.zeros(n_experts, device=device, dtype=torch.int64)
        self.step_assignments = 0
        self.aux_loss: Tensor | None = None
        self.z_loss: Tensor | None = None
        self.counts: Tensor | None = None
        self.n_assignments = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init for the router and for each expert's matrices (fan-in uniform)."""
        self.router.reset_parameters()
        for weight in (self.w_gate, self.w_up, self.w_down):
            bound = 1.0 / math.sqrt(weight.shape[1])
            with torch.no_grad():  # all E experts' draws, so the init is the same for any sharding
                full = weight.new_empty((self.n_experts,) + tuple(weight.shape[1:]))
                weight.copy_(nn.init.uniform_(full, -bound, bound)[self.local_experts.start:self.local_experts.stop])
        if self.shared is not None:
            self.shared.reset_parameters()
        self.expert_bias.zero_()
        self.step_counts.zero_()
        self.step_assignments = 0

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"TokenChoiceMoE: the last dim of x must be d_model={self.d_model}, "
                             f"got shape {list(x.shape)}")
        ops = ops_for(self.backend)
        tokens = x.reshape(-1, self.d_model)
        device_type = x.device.type
        with torch.autocast(device_type, enabled=False):
            logits = F.linear(tokens.float(), self.router.weight.float())
        bias = self.expert_bias if self.bias_update_rate > 0 else None
        gates, _, slots, slot_token, counts, aux_loss, z_loss = ops.moe_route(
            logits, self.k, self.capacity_factor, self.normalize, self.score, bias)
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        buf = ops.moe_permute(tokens.to(dtype), slots, slot_token)
        out = (self._run_experts(buf, counts, dtype) if self.expert_parallel_group is None
               else expert_parallel_experts(self, buf, counts, dtype))
        y = ops.moe_unpermute(out, gates, slots, slot_token)
        if self.shared is not None:
            y = y + self.shared(tokens)
        self.aux_loss = self.aux_loss_weight * aux_loss
        self.z_loss = self.z_loss_weight * z_loss
        self.counts = counts.detach()
        self.n_assignments = tokens.shape[0] * self.k
        return y.reshape(x.shape[:-1] + (self.d_model,))

    def _run_experts(self, buf: Tensor, counts: Tensor, dtype: torch.dtype) -> Tensor:
        """This module's experts on the expert-contiguous rows of ``buf`` (``counts`` rows per local expert)."""
        w_gate, w_up = self.w_gate.to(dtype), self.w_up.to(dtype)
        if self.backend == "fused":
            hidden = segment_swiglu(buf, w_gate, w_up, counts)
        else:  # the plain composition: one matmul per segment on the concatenated weight, then the activation
            hidden = ops_for(self.backend).swiglu(segment_mm(buf, torch.cat((w_gate, w_up), dim=-1), counts))
        return segment_mm(hidden, self.w_down.to(dtype), counts)

    # ---------------------------------------------------------- balancing

    def accumulate_counts(self) -> None:
        """Adds the last forward's counts to this optimizer step's (call once per training micro-batch)."""
        if self.counts is None:
            raise RuntimeError("TokenChoiceMoE.accumulate_counts: no forward has run yet")
        self.step_counts = self.step_counts.to(self.counts.device) + self.counts
        self.step_assignments += self.n_assignments

    def moe_step(self, counts: Tensor | None = None, n_assignments: int | None = None) -> dict[str, float]:
        """Ends an optimizer step: updates ``expert_bias`` from the step's counts and zeroes them.

        ``counts`` / ``n_assignments`` default to the accumulated ones, summed over ranks
        when ``torch.distributed`` is initialised (every rank must call this); a caller
        that has reduced several layers' counts at once passes the result. Returns the
        step's :func:`load_stats`.
        """
        if counts is None:
            counts, n_assignments = all_reduce_counts([self.step_counts], [self.step_assignments])
            counts, n_assignments = counts[0], n_assignments[0]
        stats = load_stats(counts, n_assignments)
        if self.bias_update_rate > 0 and int(counts.sum()) > 0:
            load = counts.to(torch.float32)
            self.expert_bias += self.bias_update_rate * torch.sign(load.mean() - load)
        self.step_counts.zero_()
        self.step_assignments = 0
        return stats

    def routing_stats(self) -> dict[str, float]:
        """The last forward's :func:`load_stats`."""
        if self.counts is None:
            raise RuntimeError("TokenChoiceMoE.routing_stats: no forward has run yet")
        return load_stats(self.counts, self.n_assignments)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, k={self.k}, "
                f"capacity_factor={self.capacity_factor}, score={self.score!r}, "
                f"n_shared_experts={self.n_shared_experts}, bias_update_rate={self.bias_update_rate}, "
                f"backend={self.backend!r}" +
                ("" if self.expert_parallel_group is None else
                 f", local_experts={self.local_experts.start}..{self.local_experts.stop - 1}"))

    # ---------------------------------------------------------- expert parallelism

    def _take_expert_shards(self, state_dict, prefix, *_) -> None:
        """Load pre-hook: full ``[E, ...]`` expert tensors (a single-process state) become this rank's rows."""
        for name in EXPERT_WEIGHTS:
            if prefix + name in state_dict:
                state_dict[prefix + name] = take_expert_shard(state_dict[prefix + name], self.n_experts,
                                                              self.expert_parallel_group)


def load_stats(counts: Tensor, n_assignments: int) -> dict[str, float]:
    """``dropped`` (fraction of the n_assignments not kept), ``max_load`` (max / mean kept count per expert)."""
    counts = counts.to(torch.float64)
    kept = float(counts.sum())
    mean = kept / counts.numel()
    return {"dropped": 1.0 - kept / n_assignments if n_assignments else 0.0,
            "max_load": float(counts.max()) / mean if mean > 0 else 0.0}


def all_reduce_counts(counts: list[Tensor], n_assignments: list[int]) -> tuple[list[Tensor], list[int]]:
    """Sums per-layer counts and assignment totals over all ranks in one all-reduce (identity without DDP)."""
    if not counts or not (dist.is_available() and dist.is_initialized()):
        return counts, n_assignments
    flat = torch.cat([c.reshape(-1) for c in counts] +
                     [torch.tensor(n_assignments, dtype=torch.int64, device=counts[0].device)])
    dist.all_reduce(flat)
    sizes = [c.numel() for c in counts]
    parts = flat.split(sizes + [len(n_assignments)])
    return [p.view_as(c) for p, c in zip(parts, counts)], parts[-1].tolist()


def check_moe_args(owner: str, *, d_model: int, d_ff: int, n_experts: int, k: int, capacity_factor: float | None,
                   score: str, n_shared_experts: int, aux_loss_weight: float, z_loss_weight: float,
                   bias_update_rate: float) -> None:
    """``ValueError`` naming ``owner`` and the argument for any invalid MoE setting."""
    for name, value, low in (("d_model", d_model, 1), ("d_ff", d_ff, 1), ("n_experts", n_experts, 1),
                             ("k", k, 1), ("n_shared_experts", n_shared_experts, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    if k > n_experts:
        raise ValueError(f"{owner}: k ({k}) must be <= n_experts ({n_experts})")
    if capacity_factor is not None and not (math.isfinite(capacity_factor) and capacity_factor > 0):
        raise ValueError(f"{owner}: capacity_factor must be None or finite and > 0, got {capacity_factor!r}")
    if score not in MOE_SCORES:
        raise ValueError(f"{owner}: score must be one of {MOE_SCORES}, got {score!r}")
    for name, value in (("aux_loss_weight", aux_loss_weight), ("z_loss_weight", z_loss_weight),
                        ("bias_update_rate", bias_update_rate)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{owner}: {name} must be finite and >= 0, got {value!r}")
