"""A plan as a torchtitan TOML job config, for torchtitan's last TOML release (:data:`TORCHTITAN_RELEASE`)."""
from __future__ import annotations

import json

from planner.errors import require
from planner.export.common import header, one_line
from planner.plan import Plan

TORCHTITAN_RELEASE = "0.2.2"
"""The last torchtitan release read from a TOML JobConfig (0.3.0 moved to Python dataclass configs)."""

_TITAN_SCHEDULES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B",
                    "zb": "InterleavedZeroBubble"}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def torchtitan_config(plan: Plan) -> tuple[dict[str, dict], list[str]]:
    """({section: {key: value}}, notes) with torchtitan's JobConfig names
    (torchtitan/config/job_config.py: [training], [parallelism], [activation_checkpoint])."""
    m, p = plan.model, plan.parallel
    require(not m.cross_attention_layers, "export",
            f"torchtitan has no model with cross-attention to an image encoder ({one_line(m.name)}): "
            "its registry's decoders attend to the sequence only")
    notes: list[str] = []
    local_batch = p.global_batch // p.dp  # per dp rank per step (all micro-batches)
    training = {"seq_len": p.seq_len, "global_batch_size": p.global_batch}
    parallelism: dict = {}
    if p.pp > 1:
        # torchtitan splits local_batch_size into micro-batches of pipeline_parallel_microbatch_size.
        training["local_batch_size"] = local_batch
    else:
        # global > local * dp makes torchtitan accumulate gradients over the micro-batches.
        training["local_batch_size"] = p.micro_batch
    if p.precision in ("bf16", "fp8"):
        training["mixed_precision_param"] = "bfloat16"
        if p.precision == "fp8":
            notes.append("fp8: [model] converters float8 (torchao's Float8Linear; needs torchao)")
    else:
        training["mixed_precision_param"] = "float32"
        if p.precision == "fp16":
            notes.append("torchtitan has no fp16 mixed precision (bfloat16 or float32 only): float32 written")

    if p.sharding == "none":
        require(p.dp == 1 or (p.tp == 1 and p.pp == 1 and p.cp == 1), "export",
                "torchtitan runs DDP only as the sole parallelism (apply_ddp: \"DDP has not supported > 1D "
                "parallelism\"); plan with --fix sharding=fsdp for dp beside tp/pp/cp")
        parallelism["data_parallel_replicate_degree"] = p.dp
        parallelism["data_parallel_shard_degree"] = 1
    else:
        parallelism["data_parallel_replicate_degree"] = 1
        parallelism["data_parallel_shard_degree"] = p.dp
        if p.sharding in ("zero1", "zero2"):
            parallelism["fsdp_reshard_after_forward"] = "never"
            notes.append(f"{p.sharding}: torchtitan has no ZeRO-1/2; FSDP2 with reshard_after_forward=never "
                         "(weights stay gathered between forward and backward) is the nearest (ZeRO-2-like)")
    parallelism["tensor_parallel_degree"] = p.tp
    parallelism["enable_async_tensor_parallel"] = False
    parallelism["pipeline_parallel_degree"] = p.pp
    parallelism["context_parallel_degree"] = p.cp
    if p.tp > 1 and not p.sequence_parallel:
        notes.append("torchtitan's tensor parallel always shards norms and dropout along the "
                     "sequence (sequence parallel); the plan has it off")
    if p.pp > 1:
        parallelism["pipeline_parallel_schedule"] = _TITAN_SCHEDULES[p.schedule]
        parallelism["pipeline_parallel_microbatch_size"] = p.micro_batch
        # each (virtual) stage's modules by name: pipeline_parallel_layers_per_stage would count the
        # embedding and the output as a layer each (pipeline_parallel_first/last_stage_less_layers = 1),
        # another split and stage count than the plan's; pipeline_parallel_split_points was removed (2025-10)
        parallelism["module_fqns_per_model_part"] = _titan_stage_modules(p.layers_per_stage(m.n_layers))
        if p.schedule == "zb" and p.vpp == 1:
            notes.append("ZB-H1 with one stage per rank has no torchtitan schedule; InterleavedZeroBubble "
                         "needs several stages per rank (set pipeline_parallel_layers_per_stage smaller)")
    if m.is_moe:
        parallelism["expert_parallel_degree"] = p.ep
        # torchtitan's default etp is 1; it runs etp = tp or 1, and splits experts below tp only under ep
        require(p.expert_tp in (1, p.tp) and (p.ep > 1 or p.expert_tp == p.tp), "export",
                f"torchtitan runs expert tensor parallelism equal to tp or 1 under ep > 1 only (ParallelDims), "
                f"not etp={p.expert_tp} with tp={p.tp}, ep={p.ep}")
        parallelism["expert_tensor_parallel_degree"] = p.expert_tp if p.ep > 1 else 1
        if m.moe_capacity_factor:
            notes.append(f"torchtitan's MoE is dropless: the plan's expert capacity factor {m.moe_capacity_factor} "
                         "has no torchtitan setting")
    ac = {"mode": p.recompute}
    if p.recompute == "selective":
        ac["selective_ac_option"] = "op"
    config = {"job": {"description": f"clusterplan plan {plan.id}: {one_line(m.name)} {p.megatron_notation()}"}}
    flavor = llama3_flavor(m)
    if flavor:
        config["model"] = {"name": "llama3", "flavor": flavor}
        notes.append("[model] hf_assets_path: the folder of the Llama 3 tokenizer")
    else:
        notes.append(f"[model] name/flavor: no torchtitan flavor has {one_line(m.name)}'s shape (layers {m.n_layers}, "
                     f"hidden {m.hidden_size}, heads {m.n_heads}/{m.n_kv_heads}, ffn {m.ffn_hidden_size}, vocab "
                     f"{m.vocab_size}): add one to the model's flavors and name it here")
    if p.precision == "fp8":
        config.setdefault("model", {})["converters"] = ["float8"]
    config.update(training=training, parallelism=parallelism, activation_checkpoint=ac)
    return config, notes


_TITAN_LLAMA3_FLAVORS = {(32, 4096, 32, 8, 14336, 128256): "8B", (80, 8192, 64, 8, 28672, 128256): "70B",
                         (126, 16384, 128, 8, 53248, 128256): "405B"}
"""torchtitan's Llama 3 flavors (torchtitan/models/llama3/__init__.py: dim, n_layers, n_heads, n_kv_heads;
the FFN width from ffn_dim_multiplier 1.3 / 1.3 / 1.2 rounded up to multiple_of 1024 / 4096 / 4096)."""


def llama3_flavor(model) -> str | None:
    """torchtitan's Llama 3 flavor of this shape, or None."""
    if model.mlp != "swiglu" or model.tied_embeddings or model.is_moe:
        return None
    return _TITAN_LLAMA3_FLAVORS.get((model.n_layers, model.hidden_size, model.n_heads, model.n_kv_heads,
                                      model.ffn_hidden_size, model.vocab_size))


def _titan_stage_modules(stages: tuple[int, ...]) -> list[list[str]]:
    """torchtitan's ``module_fqns_per_model_part``: each (virtual) stage's module names, the
    embedding with the first stage, the final norm and output layer with the last."""
    parts, first = [], 0
    for n in stages:
        parts.append([f"layers.{i}" for i in range(first, first + n)])
        first += n
    parts[0].insert(0, "tok_embeddings")
    parts[-1] += ["norm", "output"]
    return parts


def to_torchtitan(plan: Plan) -> str:
    """A torchtitan TOML (the sections the plan decides); merge into your train config."""
    config, notes = torchtitan_config(plan)
    lines = [f"# {line}" for line in header(plan)]
    lines.append(f"# for torchtitan {TORCHTITAN_RELEASE}: its TOML JobConfig (torchtitan/config/job_config.py)")
    lines += [f"# NOTE: {n}" for n in notes]
    for section, values in config.items():
        lines.append("")
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
