"""The data-parallel gradient reduction (and ZeRO-1/2's parameter all-gather) not hidden behind
the backward pass. ZeRO-3 / FSDP reduce block by block instead (:mod:`planner.cost.block`)."""
from __future__ import annotations

from planner.cost.block import group_shape
from planner.cost.comm import GroupShape, collective_time, comm_sm_fraction, overlapped_exposed_s
from planner.cost.compute import Rates
from planner.cost.runtime import Runtime
from planner.cost.stacks import stack_of
from planner.hardware import NodeSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig


def dp_reduction_s(node: NodeSpec, rates: Rates, g: GroupShape, *, precision: str, sharding: str, tp: int,
                   pp: int, params: float, param_tensors: int, grad_bytes: float,
                   grad_all_reduce: bool = False) -> tuple[float, float, float]:
    """(gradient reduction, ZeRO parameter all-gather, reducer work) seconds of the rank holding
    ``params`` parameters over its dp group ``g``, as the node's stack runs them
    (:meth:`planner.cost.stacks.FusedStack.dp_reduction_s`); zeros where the reduction is per
    block (ZeRO-3 / FSDP) or dp is 1. ``grad_bytes``: bytes per gradient element
    (:meth:`planner.cost.runtime.Runtime.grad_bytes`). ``grad_all_reduce``: ZeRO-1 all-reduces the
    gradients whole (:attr:`planner.cost.runtime.Runtime.pipeline_grad_all_reduce`)."""
    stack = stack_of(node)
    if g.size == 1 or sharding in ("zero3", "fsdp") or stack.shards_per_block(sharding, tp, g.size):
        return 0.0, 0.0, 0.0
    return stack.dp_reduction_s(node, rates, g, precision=precision, sharding=sharding, tp=tp, pp=pp,
                                params=params, param_tensors=param_tensors, grad_bytes=grad_bytes,
                                grad_all_reduce=grad_all_reduce)


def tied_embedding_sync_s(model: ModelSpec, node: NodeSpec, P: ParallelConfig, grad_bytes: float) -> float:
    """The all-reduce of the tied word embedding's gradient between the first and the last
    pipeline stage, each holding a copy, after the data-parallel reduction and before the
    optimizer step (Megatron-LM ``finalize_model_grads`` -> ``_allreduce_word_embedding_grads``,
    FP32 main grads; DeepSpeed ``PipelineEngine._exec_reduce_tied_grads``, the BF16 optimizer's
    FP32 grads; ``grad_bytes`` per element: :meth:`planner.cost.runtime.Runtime.grad_bytes`).
    Nothing overlaps it. Zero without pipelining, without tied embeddings, or in this project's
    executor (it unties them under pp)."""
    if P.pp == 1 or not model.tied_embeddings or stack_of(node).executor:
        return 0.0
    total_bytes = model.vocab_size * model.embed_dim / P.tp * grad_bytes
    across = group_shape(P, "pp", node.gpus_per_node).nodes > 1
    pair = GroupShape(2, 1, 2) if across else GroupShape(2, 2, 1)
    return collective_time("all_reduce", total_bytes, pair, node)


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
