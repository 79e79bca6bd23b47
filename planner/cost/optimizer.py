"""The optimizer step: AdamW over the rank's local parameter shard, memory-bound, plus (under the
executor's runtime) its per-op costs."""
from __future__ import annotations

from planner.cost import framework as fw
from planner.cost.compute import Rates
from planner.cost.memory import shard_divisors, stage_parameters
from planner.model import ModelSpec
from planner.plan import ParallelConfig
from planner.executor_rules import ties_embeddings, uses_fsdp

OPTIMIZER_BYTES_PER_PARAM = 28.0
"""Adam step traffic per local parameter: read fp32 master, m, v and the fp32 gradient (16),
write master, m, v (12) -- the bf16 weight copy is written from the master in the same pass."""


def param_tensors(model: ModelSpec, P: ParallelConfig, ranks: tuple[int, ...] | None = None) -> int:
    """Parameter tensors of the busiest pipeline rank (of ``ranks``, default all) in the executor."""
    layers = P.layers_per_stage(model.n_layers)
    n_vs, pp = P.pp * P.vpp, P.pp
    first, last = fw.edge_param_tensors(model, ties_embeddings(model, P.tp, pp))
    best = 0
    for r in (range(pp) if ranks is None else ranks):
        ks = list(range(r, n_vs, pp))
        n = sum(layers[k] for k in ks) * fw.block_param_tensors(model)
        n += (first if 0 in ks else 0) + (last if n_vs - 1 in ks else 0)
        best = max(best, n)
    return best


def optimizer_traffic_s(rates: Rates, local_params: float, params_per_tensor: float | None) -> float:
    """Memory traffic of the optimizer step over ``local_params``: with a framework ``adamw``
    rate, the executor's AdamW(foreach=False) bytes
    (:data:`planner.cost.framework.ADAMW_BYTES_PER_PARAM`) at its rate for tensors of
    ``params_per_tensor`` (None: the fastest measured size, a lower bound for the search), times
    the profile's in-step factor (:meth:`planner.hardware.FrameworkSpec.step_scale`); else
    the fused :data:`OPTIMIZER_BYTES_PER_PARAM` at the pooled memory-bound rate (times that
    factor too with a framework profile)."""
    frame = rates.framework
    points = frame.elementwise_points("adamw", "fp32") if frame else None
    if points is None:
        traffic_s = rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 0)
    else:
        call_bytes = (max(points, key=lambda pt: pt[1])[0] if params_per_tensor is None
                      else fw.ADAMW_BYTES_PER_PARAM * params_per_tensor)
        traffic_s = rates.elementwise({"adamw": (fw.ADAMW_BYTES_PER_PARAM * local_params, 0.0, call_bytes)}, 4)[0]
    return traffic_s * frame.step_scale("optimizer") if frame else traffic_s


def fused_optimizer_s(rates: Rates, local_params: float, n_virtual_stages: int) -> float:
    """A fused (multi-tensor) AdamW over ``local_params``: its traffic at the memory-bound rate,
    two kernels per virtual stage's parameter group."""
    return rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 2 * max(1, n_virtual_stages))


def optimizer_s(model: ModelSpec, P: ParallelConfig, rates: Rates, ranks: tuple[int, ...] | None = None) -> float:
    """AdamW over the local shard of the busiest pipeline rank (of ``ranks``, default all):
    memory-bound traffic plus, with a framework profile, the executor's per-op costs
    (AdamW(foreach=False): ~10 ops per parameter tensor; DTensor parameters under TP / FSDP2,
    ZeroRedundancyOptimizer's per-parameter bookkeeping)."""
    params = stage_parameters(model, P)
    most = max(params) if ranks is None else max(params[r] for r in ranks)
    _, _, o_div = shard_divisors(P.sharding, P.dp)
    frame = rates.framework
    if frame is None:
        return fused_optimizer_s(rates, most / o_div, P.pp * P.vpp)
    tensors = param_tensors(model, P, ranks)
    fsdp = uses_fsdp(P.sharding, P.tp, P.dp)
    zero1 = P.sharding == "zero1" and P.dp > 1 and not fsdp
    stepped = tensors / P.dp if zero1 else tensors  # ZeRO-1 partitions whole tensors over dp
    local = most / o_div
    t = optimizer_traffic_s(rates, local, local / max(1, stepped))
    t += rates.ops(stepped * fw.ADAM_OPS_PER_PARAM, frame.op_optimizer_s)
    if P.tp > 1:
        t += rates.ops(tensors, frame.tp_optimizer_param_s)
    elif fsdp:
        t += rates.ops(tensors, frame.fsdp_optimizer_param_s)
    if zero1:
        t += rates.ops(tensors, frame.zero1_param_s)
    return t
