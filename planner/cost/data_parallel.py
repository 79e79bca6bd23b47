"""The data-parallel gradient reduction (and ZeRO-1/2's parameter all-gather) not hidden behind
the backward pass. ZeRO-3 / FSDP reduce block by block instead (:mod:`planner.cost.block`)."""
from __future__ import annotations

from planner.cost.comm import GroupShape, comm_sm_fraction, overlapped_exposed_s
from planner.cost.compute import Rates
from planner.cost.runtime import Runtime
from planner.cost.stacks import stack_of
from planner.hardware import NodeSpec


def dp_reduction_s(node: NodeSpec, rates: Rates, g: GroupShape, *, precision: str, sharding: str, tp: int,
                   pp: int, params: float, param_tensors: int) -> tuple[float, float, float]:
    """(gradient reduction, ZeRO parameter all-gather, reducer work) seconds of the rank holding
    ``params`` parameters over its dp group ``g``, as the node's stack runs them
    (:meth:`planner.cost.stacks.FusedStack.dp_reduction_s`); zeros where the reduction is per
    block (ZeRO-3 / FSDP) or dp is 1."""
    stack = stack_of(node)
    if g.size == 1 or sharding in ("zero3", "fsdp") or stack.shards_per_block(sharding, tp, g.size):
        return 0.0, 0.0, 0.0
    return stack.dp_reduction_s(node, rates, g, precision=precision, sharding=sharding, tp=tp, pp=pp,
                                params=params, param_tensors=param_tensors)


def exposed_s(runtime: Runtime, reduction: tuple[float, float, float], window_s: float,
              rates: Rates) -> float:
    """What of :func:`dp_reduction_s` the step shows: overlapped with the backward (DDP buckets,
    Li et al. VLDB 2020; Megatron-Core ``--overlap-grad-reduce``) the part longer than
    ``window_s`` (the rank's last micro-batch's backward); ZeRO's parameter all-gather unless
    the runtime overlaps it with the next forward. Overlapped, each still takes its SMs from
    the compute beside it (:func:`planner.cost.comm.overlapped_exposed_s`)."""
    red, gather, reducer = reduction
    device = rates.device
    red_s = overlapped_exposed_s(device, red, window_s) if runtime.overlap_grad_reduce else red
    # the gather runs beside the next forward (longer than it): only its SMs show
    gather_s = comm_sm_fraction(device) * gather if runtime.overlap_param_gather else gather
    return red_s + gather_s + reducer
