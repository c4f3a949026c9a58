"""Expert parallelism for :class:`~tpt_ops.nn.TokenChoiceMoE`: experts sharded over a process group.

With a group of G ranks and E experts, rank r holds experts ``r*E/G .. (r+1)*E/G - 1``
(``E/G`` of them, the leading size of its ``w_gate``/``w_up``/``w_down``) and the whole
router. A forward routes the rank's own tokens (capacity, when set, is admitted over
them alone: GShard's per-group capacity), then :func:`expert_parallel_experts`

1. exchanges the per-expert counts (an all-to-all of ``E/G`` counts per rank pair);
2. sends each kept row of the expert-contiguous buffer to the rank that holds its expert
   (``all_to_all_single`` with uneven splits: the buffer's expert order makes each
   destination's rows one contiguous block);
3. reorders the received rows from (source rank, expert, token) to (expert, source rank,
   token), so that every local expert's rows are one contiguous segment, and runs the
   local experts on them;
4. undoes the reorder and returns every output row to its source with the inverse
   all-to-all, where the caller combines them with the gates.

The row order of every buffer is a function of the counts alone (source rank, then
expert, then token), never of arrival order, so the layer is deterministic. Both
exchanges and both reorders are autograd functions whose backward is the inverse
exchange / reorder (itself differentiable, so second derivatives work too).

The helpers below gather the shards into the full ``[E, ...]`` tensors of a
single-process layer (checkpoints) and cut a rank's shard out of them (loading).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


def group_size_and_rank(group) -> tuple[int, int]:
    """``(G, r)``: the size of ``group`` and this process's rank in it."""
    return dist.get_world_size(group), dist.get_rank(group)


def local_expert_range(n_experts: int, group) -> tuple[int, int]:
    """``(first, end)``: the experts this rank holds (a ``ValueError`` when the group size does not divide E)."""
    size, rank = group_size_and_rank(group)
    if n_experts % size:
        raise ValueError(f"TokenChoiceMoE: n_experts ({n_experts}) must be divisible by the size of "
                         f"expert_parallel_group ({size})")
    per_rank = n_experts // size
    return rank * per_rank, (rank + 1) * per_rank


# ------------------------------------------------------------------ differentiable data moves

class _AllToAll(torch.autograd.Function):
    """Rows of ``x`` split as ``send_splits`` go to ranks 0..G-1; rows from them arrive as ``recv_splits``.

    The backward is the same exchange with the splits swapped.
    """

    @staticmethod
    def forward(ctx, x: Tensor, recv_splits: list[int], send_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (recv_splits, send_splits), group
        out = x.new_empty((sum(recv_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        recv_splits, send_splits = ctx.splits
        return _AllToAll.apply(grad, send_splits, recv_splits, ctx.group), None, None, None


def all_to_all_rows(x: Tensor, recv_splits: list[int], send_splits: list[int], group) -> Tensor:
    """Differentiable ``all_to_all_single`` of the rows of ``x`` (uneven splits allowed)."""
    return _AllToAll.apply(x, recv_splits, send_splits, group)


class _PermuteRows(torch.autograd.Function):
    """``x[order]`` for a permutation ``order`` whose inverse is ``inverse``: a gather both ways
    (no scatter, so the backward is as deterministic as the forward)."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(order, inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad: Tensor):
        order, inverse = ctx.saved_tensors
        return _PermuteRows.apply(grad, inverse, order), None, None


def expert_major_order(recv_counts: Tensor) -> Tensor:
    """The permutation that takes rows grouped (source rank, local expert) to (local expert, source rank).

    ``recv_counts`` ``[G, E_local]``: rows of local expert e from source s; within each
    (s, e) block the rows keep their order (token order).
    """
    lengths = recv_counts.reshape(-1)
    starts = torch.cumsum(lengths, 0) - lengths  # of each (s, e) block in the received order
    lengths_em, starts_em = recv_counts.t().reshape(-1), starts.view_as(recv_counts).t().reshape(-1)
    new_starts = torch.cumsum(lengths_em, 0) - lengths_em  # of each (e, s) block in the expert-major order
    total = int(lengths.sum())
    return torch.repeat_interleave(starts_em - new_starts, lengths_em, output_size=total) + \
        torch.arange(total, device=recv_counts.device)


# ------------------------------------------------------------------ the expert-parallel experts

def expert_parallel_experts(layer, buf: Tensor, counts: Tensor, dtype: torch.dtype) -> Tensor:
    """The expert outputs ``[A, D]`` of this rank's expert-contiguous buffer ``buf`` ``[A, D]``.

    ``counts`` ``[E]``: this rank's kept rows per expert (rows ``[0, sum(counts))`` of
    ``buf`` are used, grouped by expert). Every rank of ``layer.expert_parallel_group``
    must call this with its own buffer. Rows past ``sum(counts)`` come back 0.
    """
    group = layer.expert_parallel_group
    size, _ = group_size_and_rank(group)
    n_local = layer.n_experts // size
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts, group=group)  # E/G counts to each rank, E/G from each
    recv_counts = recv_counts.view(size, n_local)
    send_splits = counts.view(size, n_local).sum(1).tolist()
    recv_splits = recv_counts.sum(1).tolist()
    n_kept = sum(send_splits)
    received = all_to_all_rows(buf[:n_kept], recv_splits, send_splits, group)
    local_counts = recv_counts.sum(0)
    if n_local > 1 and size > 1:
        order = expert_major_order(recv_counts)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = _PermuteRows.apply(layer._run_experts(_PermuteRows.apply(received, order, inverse),
                                                    local_counts, dtype), inverse, order)
    else:
        out = layer._run_experts(received, local_counts, dtype)
    returned = all_to_all_rows(out, send_splits, recv_splits, group)
    return torch.cat((returned, returned.new_zeros(buf.shape[0] - n_kept, returned.shape[1])))


# ------------------------------------------------------------------ shards and full tensors

def gather_expert_shards(shard: Tensor, group) -> Tensor:
    """The full ``[E, ...]`` tensor from every rank's ``[E/G, ...]`` shard (a collective: every rank calls)."""
    size, _ = group_size_and_rank(group)
    parts = [torch.empty_like(shard) for _ in range(size)]
    dist.all_gather(parts, shard.contiguous(), group=group)
    return torch.cat(parts)


def take_expert_shard(full: Tensor, n_experts: int, group) -> Tensor:
    """This rank's ``[E/G, ...]`` rows of a full ``[E, ...]`` tensor (a shard already is returned as is)."""
    first, end = local_expert_range(n_experts, group)
    if full.shape[0] == end - first:
        return full
    if full.shape[0] != n_experts:
        raise ValueError(f"TokenChoiceMoE: an expert tensor must have {n_experts} (all) or {end - first} "
                         f"(this rank's) rows, got shape {list(full.shape)}")
    return full[first:end]


def sharded_experts(module: torch.nn.Module) -> dict[str, tuple[torch.nn.Parameter, int, object]]:
    """``{qualified name: (parameter, n_experts, group)}`` of every expert-parallel weight under ``module``."""
    from tpt_ops.nn.moe import TokenChoiceMoE  # here: that module imports this one

    found = {}
    for prefix, sub in module.named_modules():
        group = sub.expert_parallel_group if isinstance(sub, TokenChoiceMoE) else None
        if group is None:
            continue
        for name in EXPERT_WEIGHTS:
            found[f"{prefix}.{name}" if prefix else name] = (getattr(sub, name), sub.n_experts, group)
    return found


def full_state_dict(module: torch.nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every expert shard replaced by the full tensor (a collective).

    The result is the state of the single-process model: it loads into one as it is, and
    into an expert-parallel one through :class:`~tpt_ops.nn.TokenChoiceMoE`'s load hook.
    """
    state = module.state_dict()
    for name, (param, _, group) in sharded_experts(module).items():
        state[name] = gather_expert_shards(param.detach(), group)
    return state


def _optimizer_index(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """``{id(param): index}`` as ``optimizer.state_dict()`` numbers them (in group order)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {id(p): i for i, p in enumerate(params)}


def full_optimizer_state_dict(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict:
    """``optimizer.state_dict()`` with the per-parameter state of expert shards gathered (a collective)."""
    state = optimizer.state_dict()
    # state_dict() shares each parameter's state dict with the optimizer: copy before replacing entries
    state["state"] = {i: dict(entry) for i, entry in state["state"].items()}
    index = _optimizer_index(optimizer)
    for param, _, group in sharded_experts(module).values():
        entry = state["state"].get(index[id(param)])
        for key, value in (entry or {}).items():
            if torch.is_tensor(value) and value.shape == param.shape:
                entry[key] = gather_expert_shards(value, group)
    return state


def shard_optimizer_state_dict(state: dict, optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict:
    """The inverse of :func:`full_optimizer_state_dict`: this rank's rows of each expert's state."""
    index = _optimizer_index(optimizer)
    for param, n_experts, group in sharded_experts(module).values():
        entry = state["state"].get(index[id(param)])
        for key, value in (entry or {}).items():
            if torch.is_tensor(value) and value.dim() == param.dim() and value.shape[1:] == param.shape[1:]:
                entry[key] = take_expert_shard(value, n_experts, group)
    return state


# ------------------------------------------------------------------ training-step helpers

def average_expert_grads(module: torch.nn.Module, n_replicas: int) -> None:
    """Divides the expert gradients by ``n_replicas``: DDP averages the replicated parameters' gradients
    over the ranks, while an expert's gradient already sums every rank's tokens."""
    for param, _, _ in sharded_experts(module).values():
        if param.grad is not None:
            param.grad.div_(n_replicas)


def clip_grad_norm_(module: torch.nn.Module, max_norm: float, group) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the whole model when its experts are sharded over ``group``:
    the norm counts every replicated gradient once and every rank's expert shard (one all-reduce)."""
    experts = {id(p) for p, _, _ in sharded_experts(module).values()}
    with_grad = [p for p in module.parameters() if p.grad is not None]
    replicated = torch.nn.utils.get_total_norm([p.grad for p in with_grad if id(p) not in experts])
    shard_square = torch.nn.utils.get_total_norm([p.grad for p in with_grad if id(p) in experts]).square()
    dist.all_reduce(shard_square, group=group)
    total = (replicated.square() + shard_square).sqrt()
    torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, total)
    return total
