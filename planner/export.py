"""A plan as other frameworks' configuration: Megatron-LM arguments, a torchtitan TOML, a
DeepSpeed JSON config, and the torchrun / Slurm command lines that launch clusterplan's own
executor on the plan.

Every exporter is a pure function ``Plan -> str``. A plan the target refuses to start (torchtitan's
DDP beside tp/pp/cp, ZeRO-2/3 in DeepSpeed's pipeline engine) is an InputError naming the target's
rule; what it runs differently (ZeRO-2 in Megatron-LM, a schedule the framework lacks...) is said
in a comment in the output (``#`` lines; a ``"_comment"`` list in the JSON) — never dropped
silently. Batch arithmetic is the plan's: global batch = micro batch x micro-batches x dp.
"""
from __future__ import annotations

import json
import shlex

from planner.errors import InputError, require
from planner.executor_rules import unsupported
from planner.launch import Shell, node_torchrun_command, shell_join
from planner.plan import DEFAULT_ORDER, ParallelConfig, Plan

FORMATS = ("megatron", "torchtitan", "deepspeed", "torchrun", "slurm")


def one_line(text: str) -> str:
    """``text`` from a file (a model name, a path) made safe for a comment or a quoted value of a
    script: control characters (a newline would start a new command) become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def _header(plan: Plan) -> list[str]:
    p = plan.parallel
    return [f"clusterplan plan {plan.id}: {one_line(plan.model.name)} on {plan.n_nodes} x {plan.gpus_per_node} "
            f"GPUs ({one_line(plan.machine)})",
            f"split: {p.megatron_notation()}; global batch {p.global_batch} = micro batch "
            f"{p.micro_batch} x {p.num_micro_batches} micro-batches x dp {p.dp}; seq {p.seq_len}"]


def _uneven(p: ParallelConfig, n_layers: int) -> tuple[int, ...] | None:
    """The stage split when it differs from the uniform one (None when uniform)."""
    stages = p.layers_per_stage(n_layers)
    return None if len(set(stages)) == 1 else stages


# ----- Megatron-LM ------------------------------------------------------------------------------
def megatron_args(plan: Plan) -> tuple[list[str], list[str]]:
    """(arguments, notes) for Megatron-LM's ``pretrain_gpt.py`` (Megatron-Core argument names)."""
    m, p = plan.model, plan.parallel
    args: list[str] = []
    notes: list[str] = []

    def add(flag: str, value=None) -> None:
        args.append(flag)
        if value is not None:
            args.append(str(value))

    add("--tensor-model-parallel-size", p.tp)
    add("--pipeline-model-parallel-size", p.pp)
    add("--context-parallel-size", p.cp)
    if p.sequence_parallel:
        add("--sequence-parallel")
    stages = p.layers_per_stage(m.n_layers)
    uneven = _uneven(p, m.n_layers)
    if p.vpp > 1 and uneven is None:
        add("--num-layers-per-virtual-pipeline-stage", stages[0])
    if uneven is not None:
        middle = uneven[1:-1]
        if p.vpp == 1 and len(uneven) >= 2 and len(set(middle)) <= 1:
            add("--decoder-first-pipeline-num-layers", uneven[0])
            add("--decoder-last-pipeline-num-layers", uneven[-1])
        else:
            # E = embedding, t = transformer layer, L = loss/LM head, | = next (virtual) stage.
            parts = ["t" * n for n in uneven]
            parts[0] = "E" + parts[0]
            parts[-1] = parts[-1] + "L"
            add("--pipeline-model-parallel-layout", "|".join(parts))
            notes.append("uneven stages " + ",".join(map(str, uneven))
                         + " use --pipeline-model-parallel-layout (recent Megatron-Core; virtual "
                         "stages are read from it)")
    if p.pp > 1 and p.schedule == "gpipe":
        notes.append("Megatron-LM has no GPipe schedule: it runs 1F1B (same bubble, less activation memory)")
    if p.pp > 1 and p.schedule == "zb":
        notes.append("zero-bubble (ZB-H1) is not in Megatron-LM's mainline schedules: it runs 1F1B")
    if p.order != DEFAULT_ORDER:
        if p.order == "tp-cp-pp-dp":
            add("--use-tp-pp-dp-mapping")
        else:
            notes.append(f"rank order {p.order} has no Megatron-LM flag; it uses tp-cp-ep-dp-pp")

    add("--micro-batch-size", p.micro_batch)
    add("--global-batch-size", p.global_batch)
    add("--seq-length", p.seq_len)
    add("--max-position-embeddings", max(m.seq_len, p.seq_len))
    add("--num-layers", m.n_layers)
    add("--hidden-size", m.hidden_size)
    add("--ffn-hidden-size", m.ffn_hidden_size)
    add("--num-attention-heads", m.n_heads)
    if m.n_kv_heads != m.n_heads:
        add("--group-query-attention")
        add("--num-query-groups", m.n_kv_heads)
    if m.is_mla:  # Megatron-Core MLATransformerConfig
        add("--multi-latent-attention")
        if m.q_lora_rank:
            add("--q-lora-rank", m.q_lora_rank)
        add("--kv-lora-rank", m.kv_lora_rank)
        add("--qk-head-dim", m.d_head)
        add("--qk-pos-emb-head-dim", m.qk_rope_head_dim)
        add("--v-head-dim", m.value_head_dim)
    elif m.head_dim and m.head_dim != m.hidden_size // m.n_heads:
        add("--kv-channels", m.head_dim)
    if m.qk_norm:
        add("--qk-layernorm")
    if m.norms_per_block != 2:
        notes.append(f"{m.norms_per_block} norms per block (Gemma 2's after each sublayer too): Megatron-LM "
                     "has no flag for the extra ones; not written")
    if m.sliding_window:  # Megatron-Core / TE window: (tokens before, tokens after)
        add("--window-size", f"({m.sliding_window - 1},0)")
        if m.global_attention_every:
            add("--window-attn-skip-freq", m.global_attention_every)
    if m.mlp == "swiglu":
        add("--swiglu")
    if m.norm == "rmsnorm":
        add("--normalization", "RMSNorm")
    if m.position == "rope":
        add("--position-embedding-type", "rope")
        if m.rope_theta:
            add("--rotary-base", round(m.rope_theta))  # Megatron-LM parses it as an int
        if m.rotary_fraction != 1.0:
            add("--rotary-percent", m.rotary_fraction)
    elif m.position == "learned":
        add("--position-embedding-type", "learned_absolute")
    else:
        notes.append(f"position embedding {m.position!r} has no Megatron-LM equivalent here")
    if m.norm_eps:
        add("--norm-epsilon", m.norm_eps)
    if not m.tied_embeddings:
        add("--untie-embeddings-and-output-weights")
    if not m.bias:
        add("--disable-bias-linear")
    if m.qkv_bias_only:  # Qwen2: biases on the QKV projection only
        add("--add-qkv-bias")
    add("--attention-dropout", m.dropout)
    add("--hidden-dropout", m.dropout)
    if m.is_moe:
        add("--num-experts", m.n_experts)
        add("--moe-router-topk", m.top_k)
        if m.dense_layers:  # 0 = dense block, 1 = MoE block, per layer
            add("--moe-layer-freq", f"([0]*{m.dense_layers}+[1]*{m.n_layers - m.dense_layers})")
        if m.expert_ffn_hidden_size:
            add("--moe-ffn-hidden-size", m.expert_ffn_hidden_size)
        if m.shared_expert_ffn_hidden_size:
            add("--moe-shared-expert-intermediate-size", m.shared_expert_ffn_hidden_size)
            if m.shared_expert_gate:  # Qwen2-MoE's sigmoid gate on the shared expert's output
                add("--moe-shared-expert-gate")
        add("--expert-model-parallel-size", p.ep)
        add("--moe-token-dispatcher-type", "alltoall")  # what the cost model prices
        add("--moe-grouped-gemm")
    notes.append(f"vocabulary {m.vocab_size}: comes from your tokenizer (NullTokenizer: --vocab-size {m.vocab_size})")

    if p.recompute == "full":
        add("--recompute-granularity", "full")
        add("--recompute-method", "uniform")
        add("--recompute-num-layers", 1)
    elif p.recompute == "selective":
        add("--recompute-granularity", "selective")

    if p.sharding == "zero1":
        add("--use-distributed-optimizer")
    elif p.sharding == "zero2":
        add("--use-distributed-optimizer")
        notes.append("Megatron-LM has no ZeRO-2: the distributed optimizer shards optimizer state "
                     "(ZeRO-1) and reduce-scatters gradients; gradient buffers stay whole")
    elif p.sharding in ("zero3", "fsdp"):
        add("--use-torch-fsdp2")
        add("--no-gradient-accumulation-fusion")
        notes.append("ZeRO-3/FSDP maps to Megatron's --use-torch-fsdp2 (PyTorch FSDP2)")
    if p.dp > 1:
        add("--overlap-grad-reduce")
        if p.sharding in ("zero1", "zero2"):
            add("--overlap-param-gather")

    if p.precision == "bf16":
        add("--bf16")
    elif p.precision == "fp16":
        add("--fp16")
    elif p.precision == "fp8":
        add("--bf16")
        add("--fp8-format", "hybrid")
        notes.append("fp8 needs Transformer Engine (--transformer-impl transformer_engine)")
    return args, notes


def megatron_env(plan: Plan) -> list[str]:
    """Environment the launch needs, as ``NAME=value (reason)`` lines. Megatron-LM's
    ``validate_args`` asserts CUDA_DEVICE_MAX_CONNECTIONS=1 with tensor or context parallelism
    (one hardware queue keeps TP/CP communication kernels in issue order); with
    ``--use-torch-fsdp2`` it must not be 1 (FSDP2's all-gathers overlap on side streams)."""
    p = plan.parallel
    if p.sharding in ("zero3", "fsdp"):
        return ["CUDA_DEVICE_MAX_CONNECTIONS unset or > 1 (Megatron-LM refuses 1 with --use-torch-fsdp2)"]
    if p.tp > 1 or p.cp > 1:
        return ["CUDA_DEVICE_MAX_CONNECTIONS=1 (Megatron-LM validate_args asserts it for tensor/context "
                "parallelism)"]
    return []


def to_megatron(plan: Plan) -> str:
    """Megatron-LM arguments, one flag per line, ready to paste after ``pretrain_gpt.py``."""
    args, notes = megatron_args(plan)
    lines = [f"# {line}" for line in _header(plan)]
    lines += [f"# ENV: {e}" for e in megatron_env(plan)]
    lines += [f"# NOTE: {n}" for n in notes]
    pairs, i = [], 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            pairs.append(f"{args[i]} {shlex.quote(args[i + 1])}")
            i += 2
        else:
            pairs.append(args[i])
            i += 1
    lines += [f"{pair} \\" for pair in pairs[:-1]] + [pairs[-1]]
    return "\n".join(lines) + "\n"


# ----- torchtitan -------------------------------------------------------------------------------
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
        stages = p.layers_per_stage(m.n_layers)
        if _uneven(p, m.n_layers) is None:
            parallelism["pipeline_parallel_layers_per_stage"] = stages[0]
        else:  # pipeline_parallel_split_points was removed (2025-10): each stage's modules by name
            parallelism["module_fqns_per_model_part"] = _titan_stage_modules(stages)
        if p.schedule == "zb" and p.vpp == 1:
            notes.append("ZB-H1 with one stage per rank has no torchtitan schedule; InterleavedZeroBubble "
                         "needs several stages per rank (set pipeline_parallel_layers_per_stage smaller)")
    if m.is_moe:
        parallelism["expert_parallel_degree"] = p.ep
    ac = {"mode": p.recompute}
    if p.recompute == "selective":
        ac["selective_ac_option"] = "op"
    config = {"job": {"description": f"clusterplan plan {plan.id}: {one_line(m.name)} {p.megatron_notation()}"}}
    flavor = _TITAN_LLAMA3_FLAVORS.get((m.n_layers, m.hidden_size, m.n_heads, m.n_kv_heads, m.ffn_hidden_size,
                                        m.vocab_size))
    if flavor and m.mlp == "swiglu" and not m.tied_embeddings and not m.is_moe:
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
    lines = [f"# {line}" for line in _header(plan)] + [f"# NOTE: {n}" for n in notes]
    for section, values in config.items():
        lines.append("")
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


# ----- DeepSpeed --------------------------------------------------------------------------------
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
            "partition": "uniform" if _uneven(p, m.n_layers) is None else "parameters",
            "activation_checkpoint_interval": 1 if p.recompute == "full" else 0,
        }
        if _uneven(p, m.n_layers) is not None:
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
        notes.append(f"MoE: build the model with deepspeed.moe.layer.MoE(num_experts={m.n_experts}, "
                     f"ep_size={p.ep}, k={m.top_k})")
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
        config["_comment"] = [*_header(plan), *notes]
    else:
        config["_comment"] = _header(plan)
    return config


def to_deepspeed(plan: Plan) -> str:
    return json.dumps(deepspeed_config(plan), indent=2) + "\n"


# ----- launching clusterplan's executor -----------------------------------------------------------
def _executor_lines(plan: Plan) -> list[str]:
    """The header of a script that launches this project's executor: the plan must be one it runs
    (InputError naming the rule otherwise); one predicted not to fit says so, as ``run`` would."""
    why = unsupported(plan.parallel, plan.model)
    require(not why, "export", f"the executor cannot run this plan ({why})")
    lines = [f"# {line}" for line in _header(plan)]
    pred = plan.prediction or {}
    if pred.get("fits") is False:
        lines.append(f"# WARNING: predicted not to fit ({pred.get('peak_memory_bytes', 0) / 2**30:.1f} GiB per rank of "
                     f"{pred.get('hbm_bytes', 0) / 2**30:.1f} GiB); clusterplan run refuses it without --force")
    return lines


def to_torchrun(plan: Plan, plan_path: str = "PLAN.json") -> str:
    lines = _executor_lines(plan)
    lines.append(f"# Run on each of the {plan.n_nodes} node(s); MASTER_ADDR = the first node's address.")
    lines.append("export MASTER_ADDR=${MASTER_ADDR:-localhost}")
    lines.append(shell_join(node_torchrun_command(plan.n_nodes, plan.gpus_per_node, plan_path, f"runs/{plan.id}",
                                                  master=Shell("$MASTER_ADDR"), rdzv_id=plan.id)))
    return "\n".join(lines) + "\n"


def to_slurm(plan: Plan, plan_path: str = "PLAN.json") -> str:
    """An sbatch script: one srun task per node, each running torchrun."""
    run_dir = f"runs/{plan.id}"
    cmd = shell_join(node_torchrun_command(plan.n_nodes, plan.gpus_per_node, plan_path, run_dir,
                                           master=Shell("$MASTER_ADDR"), rdzv_id=Shell("$SLURM_JOB_ID")))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=clusterplan-{plan.id}",
        f"#SBATCH --nodes={plan.n_nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={plan.gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --output=clusterplan-{plan.id}-%j.out",
        *_executor_lines(plan),
        "set -euo pipefail",
        f"mkdir -p {run_dir}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        f"srun --nodes={plan.n_nodes} --ntasks-per-node=1 {cmd}",
    ]
    return "\n".join(lines) + "\n"


def export_plan(plan: Plan, fmt: str, plan_path: str = "PLAN.json") -> str:
    """The plan in format ``fmt`` (one of :data:`FORMATS`). A plan with a tensor-parallel degree
    per pipeline stage (``stage_tp``, a mixed cluster) has no export: Megatron-LM, torchtitan and
    DeepSpeed take one tp for the whole model, and the executor builds one device mesh."""
    require(not plan.parallel.stage_tp, "stage_tp",
            f"{fmt} takes one tensor-parallel size for every stage; this plan uses "
            f"{'/'.join(map(str, plan.parallel.stage_tp))} (plan with --fix tp=N for an exportable one)")
    if fmt == "megatron":
        return to_megatron(plan)
    if fmt == "torchtitan":
        return to_torchtitan(plan)
    if fmt == "deepspeed":
        return to_deepspeed(plan)
    if fmt == "torchrun":
        return to_torchrun(plan, plan_path)
    if fmt == "slurm":
        return to_slurm(plan, plan_path)
    raise InputError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")

