"""Expert parallelism: each rank of an expert-parallel group holds ``n_experts/ep`` of every MoE
layer's experts; routed tokens go to the rank holding their expert and come back by all-to-all
(GShard, Lepikhin et al. 2021; Megatron-Core's all-to-all token dispatcher). The groups are the
planner's (:func:`planner.layout.expert_groups`): ``ep`` neighbouring dp ranks share one set of
experts, and an expert's gradients are summed over the ranks holding it (the expert-data-parallel
group) and averaged over dp like every other gradient."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor
from torch import nn

from planner.layout import expert_groups
from planner.plan import ParallelConfig


def ep_groups(parallel: ParallelConfig, rank: int):
    """(this rank's expert-parallel group, its position in it, its expert-data-parallel group).
    Collective: every rank creates every group, in the same order."""
    mine = {}
    ep_lists, edp_lists = expert_groups(parallel)
    for kind, lists in (("ep", ep_lists), ("edp", edp_lists)):
        for ranks in lists:
            g = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = (g, ranks.index(rank))
    return mine["ep"][0], mine["ep"][1], mine["edp"][0]


def shard_experts(model: nn.Module, ep_rank: int, ep_size: int, group) -> list[nn.Parameter]:
    """Keep this rank's share of every MoE layer's experts (named by their global index, so the
    parameter names stay the full model's) and route through :func:`dispatch_combine`; returns
    the experts' parameters (reduced over the expert-data-parallel group, not by DDP)."""
    from executor.model import MoE

    params = []
    for moe in (m for m in model.modules() if isinstance(m, MoE)):
        per_rank = len(moe.experts) // ep_size
        first = ep_rank * per_rank
        moe.experts = nn.ModuleDict({str(first + i): moe.experts[first + i] for i in range(per_rank)})
        moe.ep_group = group
        moe.ep_size = ep_size
        moe.experts_per_rank = per_rank
        params += list(moe.experts.parameters())
    return params


def dispatch_combine(moe, flat: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The MoE output of this rank's tokens ``flat`` routed to ``chosen`` experts with ``weights``:
    (token, slot) pairs are sorted by the rank owning their expert, sent there by all-to-all, run
    through that rank's experts, sent back and summed with their routing weights."""
    g, n_ranks, k = moe.ep_group, moe.ep_size, chosen.shape[-1]
    expert_ids = chosen.reshape(-1)
    token_ids = torch.arange(flat.shape[0], device=flat.device).repeat_interleave(k)
    owner = torch.div(expert_ids, moe.experts_per_rank, rounding_mode="floor")
    order = torch.argsort(owner, stable=True)
    send_counts = torch.bincount(owner, minlength=n_ranks)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=g)
    send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
    recv_experts = expert_ids.new_empty(sum(recv_splits))
    dist.all_to_all_single(recv_experts, expert_ids[order].contiguous(), recv_splits, send_splits, group=g)
    sent = flat[token_ids[order]]
    received = wait_tensor(all_to_all_single_autograd(sent, recv_splits, send_splits, g))
    local_out = torch.zeros_like(received)
    for key, expert in moe.experts.items():
        rows = torch.where(recv_experts == int(key))[0]
        if rows.numel() == 0:  # keep the expert in the graph: every holder then has its gradient
            local_out = local_out + 0.0 * expert(received[:1]).sum()
            continue
        local_out = local_out.index_add(0, rows, expert(received[rows]))
    back = wait_tensor(all_to_all_single_autograd(local_out, send_splits, recv_splits, g))
    contribution = back * weights.reshape(-1)[order, None]
    return torch.zeros_like(flat).index_add(0, token_ids[order], contribution)


def reduce_expert_grads(params: list[nn.Parameter], edp_group, dp: int) -> None:
    """Sum each expert's gradient over the ranks holding it and average over dp, as DDP averages
    the others (the loss is each dp rank's mean)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=edp_group)
    flat.div_(dp)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
