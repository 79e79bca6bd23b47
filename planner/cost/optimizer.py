"""The optimizer step: AdamW over the local parameter shard of the busiest pipeline rank, as the
node's stack runs it (:meth:`planner.cost.stacks.FusedStack.optimizer_s`)."""
from __future__ import annotations

from planner.cost.compute import Rates
from planner.cost.memory import shard_divisors, stage_parameters
from planner.cost.stacks import stack_of
from planner.model import ModelSpec
from planner.plan import ParallelConfig


def optimizer_s(model: ModelSpec, P: ParallelConfig, rates: Rates, ranks: tuple[int, ...] | None = None) -> float:
    """AdamW over the local shard of the busiest pipeline rank (of ``ranks``, default all)."""
    _, _, o_div = shard_divisors(P.sharding, P.data_parallel_ranks)
    # ZeRO spreads every expert's state over the dp/ep ranks holding it: all experts over dp
    params = stage_parameters(model, P, ep=1) if o_div > 1 else stage_parameters(model, P)
    most = max(params) if ranks is None else max(params[r] for r in ranks)
    return stack_of(rates).optimizer_s(model, P, rates, most / o_div, ranks)


def optimizer_lower_bound_s(rates: Rates, local_params: float, n_virtual_stages: int) -> float:
    """Below :func:`optimizer_s` for ``local_params`` on the rank (the search's bound)."""
    return stack_of(rates).optimizer_lower_bound_s(rates, local_params, n_virtual_stages)
