"""The executor's MoE costs its counted ops miss, per MoE block and micro-batch.

:func:`moe_block_bench`: one executor MoE block with every expert local, at two expert counts
(:func:`planner.calibrate.executor_fits.moe_block_costs` keeps what the cost model's price of it
misses, per block and per expert). :func:`ep_dispatch_bench`: the expert-parallel dispatch and
combine (:func:`executor.parallel.ep.dispatch_combine`) on its own: ranks 0 and 1 hold 2 of 4
experts each, experts that return their input (no expert FLOPs), each token routed to two experts
so that both ranks send and receive as much (no rank waits on a busier one); forward: the routing
bookkeeping, the four all-to-alls (counts, expert ids, tokens out and back), each local expert's
row selection and the weighted combine; backward: the two autograd all-to-alls and the index ops'
gradients; at two token counts (:func:`planner.calibrate.executor_fits.ep_dispatch_costs` keeps a
constant and a part per routed token copy beyond the token all-to-alls)."""
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


def pass_through_layer(group, rank: int):
    """This rank's half of the 4 experts as pass-through modules, in the form dispatch_combine reads."""
    experts = nn.ModuleDict({str(2 * rank + i): nn.Identity() for i in range(EXPERTS // 2)})
    return types.SimpleNamespace(ep_group=group, ep_size=2, experts=experts, experts_per_rank=EXPERTS // 2)


def balanced_routing(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, chosen): token t to experts t and t+1 (mod 4), equal weights: every token's
    two copies go one to each rank on half the tokens and both to one rank on the others, in
    turn, so each rank sends as much to either."""
    first = torch.arange(tokens) % EXPERTS
    chosen = torch.stack([first, (first + 1) % EXPERTS], dim=-1)
    return torch.full((tokens, TOP_K), 1.0 / TOP_K), chosen


def forward_backward_s(fn, make_input, *, reps: int, warmup: int, before=None) -> tuple[float, float]:
    """Median seconds of ``fn(x)`` and of the backward of its sum, on a fresh input each call
    (``before()`` first: a barrier where ranks time together), after ``warmup`` calls."""
    fwd, bwd = [], []
    for i in range(warmup + reps):
        x = make_input().requires_grad_(True)
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = fn(x)
        t1 = time.perf_counter()
        out.sum().backward()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def ep_dispatch_bench(*, reps: int, warmup: int = 3) -> list[dict]:
    """Rows {tokens, routed_bytes, forward_s, backward_s} (medians over ``reps`` calls, the slower
    of the two ranks) on ranks 0 and 1; every rank must call it (it creates their group)."""
    group = dist.new_group([0, 1])
    rank = dist.get_rank()
    if rank > 1:
        return []
    layer = pass_through_layer(group, rank)
    gen = torch.Generator().manual_seed(rank)
    rows = []
    for tokens in TOKENS:
        weights, chosen = balanced_routing(tokens)
        medians = forward_backward_s(lambda x: dispatch_combine(layer, x, weights, chosen),
                                      lambda: torch.randn(tokens, HIDDEN, generator=gen), reps=reps, warmup=warmup,
                                      before=lambda: dist.barrier(group=group))
        slowest = torch.tensor(medians, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
        rows.append({"tokens": tokens, "hidden": HIDDEN, "top_k": TOP_K, "routed_bytes": tokens * TOP_K * HIDDEN * 4,
                     "forward_s": float(slowest[0]), "backward_s": float(slowest[1])})
    return rows


MOE_EXPERTS = (4, 8)
"""Expert counts of the MoE block bench: a constant and a part per expert the rank holds."""


def moe_spec(experts: int):
    """The MoE block of the bench: the Llama-style reference block (hidden 128) with ``experts``
    routed SwiGLU experts of width 256, top-2."""
    import dataclasses

    from executor.bench.framework import reference_spec

    return dataclasses.replace(reference_spec("llama", hidden=HIDDEN, layers=1), n_experts=experts, top_k=TOP_K,
                               expert_ffn_hidden_size=2 * HIDDEN)


def moe_block_bench(*, reps: int, warmup: int = 3, tokens: int = 256) -> list[dict]:
    """Rows {model, micro_batch, seq_len, experts, forward_s, backward_s}: one executor MoE block
    (``executor.model.Block``: attention, router, every expert local) forward and backward on
    ``tokens`` tokens (micro-batch 2), medians over ``reps`` calls; the cost model's price of the
    same block is subtracted by :func:`planner.calibrate.executor_fits.moe_block_costs`."""
    from executor.model import Block

    gen = torch.Generator().manual_seed(11)
    rows = []
    for experts in MOE_EXPERTS:
        spec = moe_spec(experts)
        torch.manual_seed(0)
        block = Block(spec)
        fwd, bwd = forward_backward_s(block, lambda: torch.randn(2, tokens // 2, HIDDEN, generator=gen),
                                       reps=reps, warmup=warmup)
        rows.append({"model": spec.to_dict(), "micro_batch": 2, "seq_len": tokens // 2, "experts": experts,
                     "forward_s": fwd, "backward_s": bwd})
    return rows
