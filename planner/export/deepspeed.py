"""A plan as a DeepSpeed JSON config."""
from __future__ import annotations

import json

from planner.errors import require
from planner.export.common import header, uneven_stages
from planner.plan import Plan

_ZERO_STAGE = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}


def deepspeed_config(plan: Plan) -> dict:
    """A DeepSpeed config dict (docs/_pages/config-json.md names). DeepSpeed's data-parallel size
    is world / (pp * tp), so train_batch_size = micro x gradient_accumulation_steps x dp."""
    m, p = plan.model, plan.parallel
    notes: list[str] = []
    config: dict = {
        "train_batch_size": p.global_batch,
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": p.num_micro_batches,
        "zero_optimization": {"stage": _ZERO_STAGE[p.sharding]},
    }
    if p.sharding == "fsdp":
        notes.append("fsdp maps to ZeRO stage 3")
    if p.precision in ("bf16", "fp8"):
        config["bf16"] = {"enabled": True}
        if p.precision == "fp8":
            notes.append("fp8: DeepSpeed has no fp8 switch in its config; use Transformer Engine layers; bf16 written")
    elif p.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0}
    if p.recompute != "none":
        config["activation_checkpointing"] = {
            "partition_activations": p.tp > 1,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
        }
        if p.recompute == "selective":
            notes.append("selective recomputation (attention core only) is chosen by the model code "
                         "(e.g. Megatron-DeepSpeed --recompute-granularity selective), not this config")
    if p.pp > 1:
        config["pipeline"] = {
            "stages": p.pp,
            "partition": "uniform" if uneven_stages(p, m.n_layers) is None else "parameters",
            "activation_checkpoint_interval": 1 if p.recompute == "full" else 0,
        }
        if uneven_stages(p, m.n_layers) is not None:
            notes.append("uneven stages " + ",".join(map(str, p.layers_per_stage(m.n_layers)))
                         + ": pass PipelineModule(partition_method='type:...') or explicit parts; the JSON "
                         "cannot list layers per stage")
        require(p.sharding not in ("zero2", "zero3", "fsdp"), "export",
                f"DeepSpeed's pipeline engine runs ZeRO stage 0 or 1 only (PipelineEngine asserts "
                f"\"ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism\"); the plan has {p.sharding}: "
                "plan with --fix sharding=zero1")
        if p.vpp > 1 or p.schedule in ("interleaved", "zb", "gpipe"):
            notes.append(f"DeepSpeed's pipeline engine runs its own 1F1B-style schedule; "
                         f"schedule {p.schedule} (vpp {p.vpp}) is not available")
        if m.is_moe:
            notes.append("MoE with DeepSpeed pipeline parallelism is not supported by the pipeline "
                         "engine (DeepSpeed-MoE needs pp = 1)")
    elif m.is_moe:
        routing = (f"capacity_factor={m.moe_capacity_factor}, drop_tokens=True" if m.moe_capacity_factor
                   else "drop_tokens=False")  # its dispatch pads every expert to capacity when dropping
        # DeepSpeed-MoE's experts follow tp with enable_expert_tensor_parallelism, else stay whole (etp 1)
        split = f", enable_expert_tensor_parallelism={p.expert_tp == p.tp > 1}"
        notes.append(f"MoE: build the model with deepspeed.moe.layer.MoE(num_experts={m.n_experts}, "
                     f"ep_size={p.ep}, k={m.top_k}, {routing}{split})")
        if p.expert_tp not in (1, p.tp):
            notes.append(f"DeepSpeed-MoE splits experts over all of tp or none, not etp={p.expert_tp}")
        if m.moe_capacity_factor and not m.moe_pad_to_capacity:
            notes.append("DeepSpeed-MoE pads every expert's input to its capacity; the plan priced no padding")
    if p.tp > 1:
        config["tensor_parallel"] = {"autotp_size": p.tp}
        notes.append("tensor parallel via DeepSpeed AutoTP training (tensor_parallel.autotp_size), or "
                     "Megatron-DeepSpeed's --tensor-model-parallel-size with your mpu")
    if p.cp > 1:  # DeepSpeed's data-parallel size is then dp * cp: the same global batch in fewer steps each
        require(p.num_micro_batches % p.cp == 0, "export",
                f"DeepSpeed has no context parallelism: its cp={p.cp} ranks become data-parallel, which needs the "
                f"{p.num_micro_batches} micro-batches divisible by cp (plan with --fix cp=1)")
        config["gradient_accumulation_steps"] = p.num_micro_batches // p.cp
        notes.append(f"context parallel {p.cp}: DeepSpeed has Ulysses sequence parallelism instead (a different "
                     f"scheme); not written: the cp ranks are data-parallel ranks here (world / (tp x pp) = "
                     f"{p.dp * p.cp}), each with whole sequences and {p.num_micro_batches // p.cp} micro-batches")
    if notes:
        config["_comment"] = [*header(plan), *notes]
    else:
        config["_comment"] = header(plan)
    return config


def to_deepspeed(plan: Plan) -> str:
    return json.dumps(deepspeed_config(plan), indent=2) + "\n"
