"""A plan as Megatron-LM ``pretrain_gpt.py`` arguments and environment."""
from __future__ import annotations

import shlex

from planner.errors import require
from planner.export.common import header, one_line, uneven_stages
from planner.plan import DEFAULT_ORDER, Plan


def megatron_args(plan: Plan) -> tuple[list[str], list[str]]:
    """(arguments, notes) for Megatron-LM's ``pretrain_gpt.py`` (Megatron-Core argument names)."""
    m, p = plan.model, plan.parallel
    require(not m.cross_attention_layers, "export",
            "Megatron-LM's pretrain_gpt.py builds decoder blocks without cross-attention to an image encoder "
            f"({one_line(m.name)} has {len(m.cross_attention_layers)}): train it with its own recipe "
            "(NeMo's mllama); --format deepspeed writes its ZeRO config")
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
    uneven = uneven_stages(p, m.n_layers)
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
        kind = ("Gemma's after each sublayer too" if m.norms_per_block > 2
                else "one shared by the parallel attention and MLP, Falcon-7B's")
        notes.append(f"{m.norms_per_block} norms per block ({kind}): Megatron-LM has no flag for it; not written")
    if m.parallel_residual:
        notes.append("attention and MLP in parallel on one input (GPT-NeoX / Falcon): Megatron-LM's GPT blocks "
                     "are sequential; same parameters and FLOPs, not written")
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
        if p.expert_tp != p.tp:
            add("--expert-tensor-parallel-size", p.expert_tp)
        add("--moe-token-dispatcher-type", "alltoall")  # what the cost model prices
        if m.moe_capacity_factor:
            add("--moe-expert-capacity-factor", m.moe_capacity_factor)
            if m.moe_pad_to_capacity:
                add("--moe-pad-expert-input-to-capacity")
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
        for degree, name in ((p.pp, "pipeline"), (p.ep, "expert")):  # megatron/training/arguments.py validate_args
            require(degree == 1, "export", f"Megatron-LM refuses {name} parallelism with --use-torch-fsdp2 "
                    f"(validate_args: \"--use-torch-fsdp2 is not supported with {name} parallelism\"): plan "
                    "--fix sharding=zero1 (the distributed optimizer) for this target")
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
    lines = [f"# {line}" for line in header(plan)]
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
