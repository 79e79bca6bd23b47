"""Megatron-style tensor parallelism with DTensor (Shoeybi et al., 2019; sequence parallel:
Korthikanti et al., 2022).

Per block: Q/K/V and the MLP's first matrices column-parallel, the attention output and the MLP's
last matrix row-parallel: 2 all-reduces forward and 2 backward of s·b·h activations per layer, or
with sequence parallelism the same bytes as all-gather + reduce-scatter, the norms then running
on sequence shards (their weights become replicated DTensors whose gradients are reduced).
The token embedding is row-parallel over the vocabulary (Megatron's VocabParallelEmbedding: one
all-reduce of ``b*s*h`` forward; learned positions stay replicated; under SP its output is then
split along the sequence). The LM head is column-parallel over the vocabulary and its logits stay
sharded: the loss is the vocabulary-parallel cross entropy (Megatron-LM's
``vocab_parallel_cross_entropy``; here ``torch.distributed.tensor.parallel.loss_parallel``,
:func:`loss_context`), which all-reduces per-token maxima, sums and target logits instead of
gathering ``b*s*V`` logits. MoE experts are each column/row parallel; the router is replicated.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from executor.model import MLP, MoE, Transformer


def _mlp_plan(prefix: str, mlp: MLP, out_layout) -> dict:
    plan = {f"{prefix}up_proj": ColwiseParallel(), f"{prefix}down_proj": RowwiseParallel(output_layouts=out_layout)}
    if mlp.swiglu:
        plan[f"{prefix}gate_proj"] = ColwiseParallel()
    return plan


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, sequence_parallel: bool) -> Transformer:
    """Shard ``model`` (a whole model or a pipeline stage) in place over ``tp_mesh``."""
    sp = sequence_parallel
    residual = Shard(1) if sp else Replicate()
    if model.embed is not None:
        # vocabulary-parallel token embedding (Megatron's VocabParallelEmbedding): each rank
        # looks up its vocabulary rows, the partial sums are all-reduced
        parallelize_module(model.embed.tok, tp_mesh, RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Replicate(), use_local_output=True))
    if model.embed is not None and sp:
        parallelize_module(model.embed, tp_mesh, PrepareModuleOutput(
            output_layouts=Replicate(), desired_output_layouts=Shard(1), use_local_output=True))
    for block in model.layers.values():
        plan: dict = {
            "attn.q_proj": ColwiseParallel(),
            "attn.k_proj": ColwiseParallel(),
            "attn.v_proj": ColwiseParallel(),
            "attn.o_proj": RowwiseParallel(output_layouts=residual),
        }
        if sp:
            plan["attn_norm"] = SequenceParallel(use_local_output=True)
            plan["mlp_norm"] = SequenceParallel(use_local_output=True)
            plan["attn"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                              use_local_output=True)
        if isinstance(block.mlp, MoE):
            for e, expert in enumerate(block.mlp.experts):
                plan.update(_mlp_plan(f"mlp.experts.{e}.", expert, Replicate()))
            if sp:
                plan["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                                 use_local_output=True)
        else:
            plan.update(_mlp_plan("mlp.", block.mlp, residual))
            if sp:
                plan["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                                 use_local_output=True)
        parallelize_module(block, tp_mesh, plan)
        if isinstance(block.mlp, MoE) and sp:
            parallelize_module(block.mlp, tp_mesh, PrepareModuleOutput(
                output_layouts=Replicate(), desired_output_layouts=Shard(1), use_local_output=True))
    if model.final_norm is not None and sp:
        parallelize_module(model.final_norm, tp_mesh, SequenceParallel(use_local_output=True))
    if model.lm_head is not None:
        parallelize_module(model.lm_head, tp_mesh, ColwiseParallel(
            input_layouts=residual, output_layouts=Shard(-1), use_local_output=False))
    return model


def loss_context(tp: int):
    """Where the loss is computed and back-propagated: vocabulary-parallel cross entropy on the
    head's vocab-sharded logits when tp > 1."""
    return loss_parallel() if tp > 1 else contextlib.nullcontext()


def check_tp(model_heads: int, kv_heads: int, tp: int) -> None:
    from planner.errors import InputError

    if kv_heads % tp:
        raise InputError("tp", f"the executor shards K/V heads: n_kv_heads={kv_heads} must be divisible by tp={tp}")
    if model_heads % tp:
        raise InputError("tp", f"n_heads={model_heads} must be divisible by tp={tp}")



def reduce_partial_grads(params) -> None:
    """Sequence parallelism leaves the replicated norm weights with ``Partial`` gradients (each
    rank's sum over its sequence shard). All-reduce them once, in one coalesced collective per
    mesh, before the optimizer (Megatron-LM ``finalize_model_grads`` all-reduces the SP
    layer-norm gradients the same way); otherwise every optimizer op on such a gradient
    redistributes it again."""
    by_mesh: dict = {}
    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and g.device_mesh.ndim == 1 and g.placements[0].is_partial():
            by_mesh.setdefault(g.device_mesh, []).append(p)
    for mesh, group in by_mesh.items():
        locals_ = [p.grad.to_local() for p in group]
        flat = torch.cat([t.reshape(-1) for t in locals_])
        dist.all_reduce(flat, group=mesh.get_group())
        offset = 0
        for p, t in zip(group, locals_):
            chunk = flat[offset:offset + t.numel()].view_as(t)
            offset += t.numel()
            p.grad = DTensor.from_local(chunk, mesh, [Replicate()], run_check=False)
