"""What this project's executor (``executor/``) does with a plan, torch-free: which data-parallel
wrapper it uses, whether it ties the LM head to the embedding, how many FSDP2 units a stage has.
The executor (``executor/train.py``) and the cost model (:mod:`planner.cost.framework`) both read
these rules here, so the priced structure is the launched one."""
from __future__ import annotations

from planner.model import ModelSpec

DP_KINDS = ("none", "ddp", "zero1", "fsdp")
PRECISIONS = ("fp32", "bf16")
"""What the executor trains in: fp32, or bf16 autocast with fp32 master weights."""


def unsupported(parallel, model=None) -> str:
    """Why the executor cannot run ``parallel`` (a ParallelConfig) of ``model`` (a ModelSpec),
    or "" when it can."""
    if model is not None and model.shared_expert_ffn_hidden_size:
        return "model: the executor's MoE block has routed experts only (no shared expert)"
    if model is not None and model.norms_per_block != 2:
        return f"model: the executor's blocks have 2 norms, not {model.norms_per_block}"
    if model is not None and model.sliding_window:
        return "model: the executor's attention is full causal (no sliding window)"
    if model is not None and model.qk_norm:
        return "model: the executor's attention has no per-head query / key norm (qk_norm)"
    if model is not None and model.cross_attention_layers:
        return "model: the executor's blocks attend to the sequence only (no cross-attention to encoder states)"
    if model is not None and model.is_mla:
        return "model: the executor's attention is multi-head / grouped-query, not multi-head latent attention"
    if parallel.expert_tp != parallel.tp:
        return "etp: the executor splits experts over tp like the other layers (etp must equal tp)"
    if model is not None and model.moe_capacity_factor:
        return "model: the executor's MoE is dropless (no expert capacity factor)"
    if parallel.cp > 1:
        return "cp: context parallelism is not implemented by the executor (cp must be 1)"
    if parallel.precision not in PRECISIONS:
        return f"precision: the executor runs {' or '.join(PRECISIONS)}, not {parallel.precision}"
    if parallel.stage_tp:
        return "stage_tp: the executor builds one device mesh; a tp per pipeline stage cannot run"
    if parallel.ep > 1 and (parallel.tp > 1 or parallel.sharding != "none"):
        return ("ep: the executor runs expert parallelism with data and pipeline parallelism only (tp = 1, "
                "sharding none: ZeRO would mix the ranks' different experts)")
    return ""


def dp_kind(sharding: str, tp: int, dp: int) -> str:
    """How gradients are synchronised over dp: ``none`` (dp = 1), ``ddp`` (DistributedDataParallel),
    ``zero1`` (DDP + ZeroRedundancyOptimizer) or ``fsdp`` (FSDP2 ``fully_shard``: zero2 without
    resharding after forward, zero3 / fsdp with it, and every sharding when tp > 1, since DDP does
    not take DTensor parameters)."""
    if dp == 1:
        return "none"
    if tp > 1 or sharding in ("zero2", "zero3", "fsdp"):
        return "fsdp"
    return "zero1" if sharding == "zero1" else "ddp"


def uses_fsdp(sharding: str, tp: int, dp: int) -> bool:
    """The executor runs FSDP2 over dp (:func:`dp_kind` is ``fsdp``)."""
    return dp_kind(sharding, tp, dp) == "fsdp"


def reshards_after_forward(sharding: str) -> bool:
    """FSDP2 frees the gathered parameters after forward (and gathers again for backward)."""
    return sharding in ("zero3", "fsdp")


def ties_embeddings(model: ModelSpec, tp: int, pp: int) -> bool:
    """The LM head shares the embedding's weight only without PP and TP: a tie cannot span
    stages or a vocabulary-sharded head."""
    return bool(model.tied_embeddings) and pp == 1 and tp == 1


def fsdp_units(layers: int, first: bool, tied: bool) -> int:
    """``fully_shard`` units of a stage: its blocks, the untied embedding (first stage), the root."""
    return layers + (1 if (first and not tied) else 0) + 1
