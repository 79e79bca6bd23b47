"""Pipeline parallelism with ``torch.distributed.pipelining``.

Stages come from ``ParallelConfig.layers_per_stage`` (the planner's cut); virtual stage i lives on
pipeline rank i % pp (Narayanan et al., SC'21, interleaved schedule). The first stage holds
``embed``, the last ``final_norm`` and ``lm_head``. Schedules: GPipe (Huang et al., 2019), 1F1B
(PipeDream-flush, Narayanan et al., 2021), interleaved 1F1B, and zero-bubble
``ScheduleInterleavedZeroBubble`` (Qi et al., ICLR 2024: backward split into input-gradient and
weight-gradient passes; with one stage per rank this is the ZB-H1 schedule of the plan).
Gradients of mean micro-batch losses are divided by the number of micro-batches
(``scale_grads=True``), so a step equals one pass over the whole batch.
"""
from __future__ import annotations

import copy

from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)

from planner.plan import ParallelConfig

from executor.model import Transformer

SCHEDULE_CLASSES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved": ScheduleInterleaved1F1B,
    "zb": ScheduleInterleavedZeroBubble,
}
MULTI_STAGE = {"interleaved", "zb"}


def stage_ids(parallel: ParallelConfig, pp_rank: int) -> list[int]:
    """Virtual stages held by pipeline rank ``pp_rank``: pp_rank, pp_rank + pp, ..."""
    return [pp_rank + k * parallel.pp for k in range(parallel.vpp)]


def stage_layer_ids(parallel: ParallelConfig, n_layers: int, stage: int) -> list[int]:
    """Global layer indices of virtual stage ``stage`` under the plan's cut."""
    sizes = parallel.layers_per_stage(n_layers)
    start = sum(sizes[:stage])
    return list(range(start, start + sizes[stage]))


def stage_module(full: Transformer, parallel: ParallelConfig, stage: int) -> Transformer:
    n_stages = parallel.pp * parallel.vpp
    module = copy.deepcopy(full)
    return module.keep_stage(stage_layer_ids(parallel, full.spec.n_layers, stage),
                             first=stage == 0, last=stage == n_stages - 1)


def make_stage(module, stage: int, parallel: ParallelConfig, device, pp_group) -> PipelineStage:
    return PipelineStage(module, stage_index=stage, num_stages=parallel.pp * parallel.vpp,
                         device=device, group=pp_group)


def make_schedule(stages: list[PipelineStage], parallel: ParallelConfig, loss_fn):
    cls = SCHEDULE_CLASSES[parallel.schedule]
    n_micro = parallel.num_micro_batches
    if parallel.schedule in MULTI_STAGE:
        return cls(stages, n_microbatches=n_micro, loss_fn=loss_fn, scale_grads=True)
    (stage,) = stages
    return cls(stage, n_microbatches=n_micro, loss_fn=loss_fn, scale_grads=True)
