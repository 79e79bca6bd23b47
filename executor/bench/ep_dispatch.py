"""The executor's expert-parallel dispatch and combine (:func:`executor.parallel.ep.dispatch_combine`)
timed on its own, per MoE layer and micro-batch: ranks 0 and 1 hold 2 of 4 experts each, experts
that return their input (no expert FLOPs: the cost model prices those as GEMMs), each token routed
to two experts on different ranks in turn so both ranks send and receive as much (no rank waits on
a busier one). Forward: the routing bookkeeping, the four all-to-alls (counts, expert ids, tokens
out and back), each local expert's row selection and the weighted combine; backward: the two
autograd all-to-alls and the index ops' gradients. Two sizes, so the profile keeps a constant and
a per-byte part (:func:`planner.calibrate.executor_costs.ep_dispatch_costs`)."""
from __future__ import annotations

import statistics
import time
import types

import torch
import torch.distributed as dist
from torch import nn

from executor.parallel.ep import dispatch_combine

HIDDEN = 128
TOKENS = (256, 2048)
"""Tokens per rank per micro-batch (routed copies: twice that); the executor's reference shape
(hidden 128, micro-batch 2 x seq 128) is the first."""
EXPERTS, TOP_K = 4, 2


def _layer(group, rank: int):
    experts = nn.ModuleDict({str(2 * rank + i): nn.Identity() for i in range(EXPERTS // 2)})
    return types.SimpleNamespace(ep_group=group, ep_size=2, experts=experts, experts_per_rank=EXPERTS // 2)


def _routing(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, chosen): token t to experts t and t+1 (mod 4), equal weights: every token's
    two copies go one to each rank on half the tokens and both to one rank on the others, in
    turn, so each rank sends as much to either."""
    first = torch.arange(tokens) % EXPERTS
    chosen = torch.stack([first, (first + 1) % EXPERTS], dim=-1)
    return torch.full((tokens, TOP_K), 1.0 / TOP_K), chosen


def ep_dispatch_bench(*, reps: int, warmup: int = 3) -> list[dict]:
    """Rows {tokens, routed_bytes, forward_s, backward_s} (medians over ``reps`` calls, the slower
    of the two ranks) on ranks 0 and 1; every rank must call it (it creates their group)."""
    group = dist.new_group([0, 1])
    rank = dist.get_rank()
    if rank > 1:
        return []
    layer = _layer(group, rank)
    gen = torch.Generator().manual_seed(rank)
    rows = []
    for tokens in TOKENS:
        weights, chosen = _routing(tokens)
        fwd, bwd = [], []
        for i in range(warmup + reps):
            flat = torch.randn(tokens, HIDDEN, generator=gen).requires_grad_(True)
            dist.barrier(group=group)
            t0 = time.perf_counter()
            out = dispatch_combine(layer, flat, weights, chosen)
            t1 = time.perf_counter()
            out.sum().backward()
            t2 = time.perf_counter()
            if i >= warmup:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
        slowest = torch.tensor([statistics.median(fwd), statistics.median(bwd)], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
        rows.append({"tokens": tokens, "hidden": HIDDEN, "top_k": TOP_K, "routed_bytes": tokens * TOP_K * HIDDEN * 4,
                     "forward_s": float(slowest[0]), "backward_s": float(slowest[1])})
    return rows
