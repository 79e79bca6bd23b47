"""The data-parallel gradient reduction (and ZeRO-1/2's parameter all-gather) not hidden behind
the backward pass. ZeRO-3 / FSDP reduce block by block instead (:mod:`planner.cost.block`)."""
from __future__ import annotations

from planner.cost.block import shards_per_block
from planner.cost.comm import GroupShape, collective_time
from planner.cost.compute import Rates
from planner.cost.precision import grad_bytes_per_param, weight_bytes_per_param
from planner.cost.runtime import Runtime
from planner.hardware import NodeSpec


def dp_reduction_s(node: NodeSpec, rates: Rates, g: GroupShape, *, precision: str, sharding: str, tp: int,
                   pp: int, params: float, param_tensors: int) -> tuple[float, float, float]:
    """(gradient reduction, ZeRO parameter all-gather, DDP reducer work) seconds of the rank holding
    ``params`` parameters over its dp group ``g``; zeros where the reduction is per block
    (ZeRO-3 / FSDP, :mod:`planner.cost.block`) or dp is 1.

    Under the executor's runtime (a ``framework:`` section) ZeRO-1 is DDP's all-reduce plus
    parameter broadcasts, and without pipelining DDP's reducer (hooks, buckets over
    ``param_tensors`` tensors) costs its calibrated time."""
    frame = node.framework
    if g.size == 1 or sharding in ("zero3", "fsdp") or shards_per_block(frame, sharding, tp, g.size):
        return 0.0, 0.0, 0.0
    grad_bytes = params * grad_bytes_per_param(precision)
    if sharding == "none":
        red = collective_time("all_reduce", grad_bytes, g, node)
        gather = 0.0
    elif frame is not None:
        red = collective_time("all_reduce", grad_bytes, g, node)
        gather = collective_time("all_gather", params * weight_bytes_per_param(precision), g, node)
    else:
        red = collective_time("reduce_scatter", grad_bytes, g, node)
        gather = collective_time("all_gather", params * weight_bytes_per_param(precision), g, node)
    reducer = rates.ops(1, frame.ddp_reducer_s(param_tensors, grad_bytes)) if frame is not None and pp == 1 else 0.0
    return red, gather, reducer


def exposed_s(runtime: Runtime, reduction: tuple[float, float, float], window_s: float) -> float:
    """What of :func:`dp_reduction_s` the step shows: overlapped with the backward (DDP buckets,
    Li et al. VLDB 2020; Megatron-Core ``--overlap-grad-reduce``) only the part longer than
    ``window_s`` (the rank's last micro-batch's backward); ZeRO's parameter all-gather unless
    the runtime overlaps it with the next forward."""
    red, gather, reducer = reduction
    window = window_s if runtime.overlap_grad_reduce else 0.0
    return max(0.0, red - window) + (0.0 if runtime.overlap_param_gather else gather) + reducer
