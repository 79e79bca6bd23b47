"""Parallel configuration and the versioned Plan file (the rank layout: :mod:`planner.layout`).

Default order is Megatron-LM's: tp varies fastest, then cp, then dp, then pp
(``rank = ((pp_i * dp + dp_i) * cp + cp_i) * tp + tp_i``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InputError, require
from planner.hardware import MAX_NODES
from planner.io import atomic_write_text, read_json_object
from planner.model import ModelSpec

PLAN_VERSION = 1
MAX_GLOBAL_BATCH = 1 << 24
MAX_SEQ_LEN = 1 << 24
MAX_DEGREE = 1 << 22
RECOMPUTE = ("none", "selective", "full")
SHARDING = ("none", "zero1", "zero2", "zero3", "fsdp")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb")
AXES = ("tp", "cp", "dp", "pp")
DEFAULT_ORDER = "tp-cp-dp-pp"


@dataclass(frozen=True)
class ParallelConfig:
    """How one training step is split.

    tp/pp/dp/cp: tensor, pipeline, data and context parallel degrees (world = tp*pp*dp*cp).
    vpp: virtual pipeline stages per rank (interleaved schedule; 1 otherwise).
    micro_batch: sequences per micro-batch per data-parallel rank.
    global_batch: sequences per optimizer step over all dp ranks.
    seq_len: tokens per sequence.
    recompute: activation recomputation: none, selective (attention core), full (whole block).
    sharding: none (DDP), zero1 (optimizer), zero2 (+grads), zero3 / fsdp (+weights) over dp.
    sequence_parallel: Megatron sequence parallelism within the tp group.
    precision: compute dtype (fp32 or mixed bf16/fp16/fp8 with fp32 master weights).
    schedule: pipeline schedule gpipe, 1f1b, interleaved (needs vpp>1) or zb (zero-bubble ZB-H1).
    stage_layers: transformer layers per pipeline stage (pp*vpp entries, in stage order, virtual
        stage i on rank i % pp); empty for the balanced split.
    order: rank-layout order, fastest-varying axis first (default Megatron ``tp-cp-dp-pp``).
    stage_tp: a tensor-parallel degree per pipeline stage (pp entries; ``tp`` is then the widest),
        for a pipeline over node types of a mixed cluster (Metis, Um et al. ATC'24); empty when
        every stage uses ``tp``. Stage r holds ``dp*cp*stage_tp[r]`` consecutive GPUs.
    ep: expert parallelism (MoE models): each rank holds ``n_experts/ep`` of every MoE layer's
        experts, carved out of dp as Megatron-Core does: an expert-parallel group is ``ep``
        neighbouring dp ranks, and an expert's gradients are reduced over the ``dp/ep`` ranks
        holding it (the expert-data-parallel group). Experts are split by ``tp`` like the dense
        MLP (Megatron-Core's default expert tensor parallel size).
    etp: expert tensor parallelism below ``tp`` (Megatron-Core ``--expert-tensor-parallel-size``,
        "MoE parallel folding", Liu et al. 2025, arXiv:2504.14960): the routed experts are split
        over ``etp`` ranks instead of ``tp``, and a stage's ``tp*dp`` ranks are regrouped for the
        MoE layers as etp (fastest) x ep x expert-dp, Megatron-Core's expert rank order
        ``tp-ep-dp-pp``; each rank dispatches its own sequence shard. 0: ``tp`` (the default).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    vpp: int = 1
    micro_batch: int = 1
    global_batch: int = 1
    seq_len: int = 2048
    recompute: str = "none"
    sharding: str = "none"
    sequence_parallel: bool = False
    precision: str = "bf16"
    schedule: str = "1f1b"
    stage_layers: tuple[int, ...] = ()
    order: str = DEFAULT_ORDER
    stage_tp: tuple[int, ...] = ()
    ep: int = 1
    etp: int = 0

    def __post_init__(self) -> None:
        limits = {"global_batch": MAX_GLOBAL_BATCH, "micro_batch": MAX_GLOBAL_BATCH, "seq_len": MAX_SEQ_LEN}
        for field in ("tp", "pp", "dp", "cp", "vpp", "micro_batch", "global_batch", "seq_len", "ep"):
            value = getattr(self, field)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    field, f"must be a positive integer, got {value!r}")
            limit = limits.get(field, MAX_DEGREE)
            require(value <= limit, field, f"{value:,} is beyond any real training run (at most {limit:,})")
        require(self.recompute in RECOMPUTE, "recompute", f"must be one of {RECOMPUTE}, got {self.recompute!r}")
        require(self.sharding in SHARDING, "sharding", f"must be one of {SHARDING}, got {self.sharding!r}")
        require(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        object.__setattr__(self, "stage_layers", tuple(self.stage_layers))
        object.__setattr__(self, "stage_tp", tuple(self.stage_tp))
        if self.stage_tp:
            require(len(self.stage_tp) == self.pp and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in self.stage_tp), "stage_tp",
                    f"needs pp={self.pp} positive integers, got {list(self.stage_tp)}")
            require(self.tp == max(self.stage_tp), "tp", f"must be the widest stage's tp ({max(self.stage_tp)})")
            require(self.order == DEFAULT_ORDER, "order", f"a tp per stage needs {DEFAULT_ORDER} (pp outermost)")
            require(self.vpp == 1, "vpp", "a tp per stage cannot be interleaved")
            if len(set(self.stage_tp)) == 1:
                object.__setattr__(self, "stage_tp", ())
        require(sorted(self.order.split("-")) == sorted(AXES), "order",
                f"must be a permutation of {'-'.join(AXES)}, got {self.order!r}")
        require(isinstance(self.etp, int) and not isinstance(self.etp, bool) and 0 <= self.etp <= MAX_DEGREE,
                "etp", f"must be 0 (= tp) or a positive integer, got {self.etp!r}")
        if self.etp and self.etp != self.tp:
            require(self.tp % self.etp == 0, "etp", f"must divide tp={self.tp}")
            require(self.cp == 1, "etp", "expert tensor parallelism below tp with context parallelism is not priced")
            require(not self.stage_tp, "etp", "expert tensor parallelism with a tp per stage is not supported")
            require(self.dp * self.tp // self.etp % self.ep == 0, "ep",
                    f"must divide dp*tp/etp = {self.dp * self.tp // self.etp} (experts are spread over a stage's "
                    "data- and tensor-parallel ranks)")
        else:
            require(self.dp % self.ep == 0, "ep",
                    f"must divide dp={self.dp} (experts are spread over data-parallel ranks)")
        require(self.ep == 1 or not self.stage_tp, "ep", "expert parallelism with a tp per stage is not supported")
        require(self.global_batch % (self.dp * self.micro_batch) == 0, "micro_batch",
                f"dp*micro_batch = {self.dp}*{self.micro_batch} does not divide global_batch={self.global_batch}")
        if self.schedule == "interleaved":
            require(self.vpp >= 2, "vpp", "the interleaved schedule needs vpp >= 2")
        else:
            require(self.vpp == 1, "vpp", f"vpp > 1 needs --schedule interleaved (got {self.schedule})")
        if self.stage_layers:
            require(len(self.stage_layers) == self.pp * self.vpp, "stage_layers",
                    f"has {len(self.stage_layers)} entries, expected pp*vpp = {self.pp * self.vpp}")
            require(all(isinstance(n, int) and n >= 1 for n in self.stage_layers), "stage_layers",
                    "every stage needs at least one layer")
        if self.schedule == "interleaved" and self.pp > 1:
            require(self.num_micro_batches % self.pp == 0, "micro_batch",
                    f"interleaved schedule needs the number of micro-batches ({self.num_micro_batches}) "
                    f"to be a multiple of pp={self.pp}")

    @property
    def expert_tp(self) -> int:
        """The routed experts' tensor-parallel degree (``etp``, else ``tp``)."""
        return self.etp or self.tp

    @property
    def expert_dp(self) -> int:
        """Ranks holding the same experts (the expert-data-parallel group): ``tp*dp / (ep*etp)``
        (``dp/ep`` when the experts follow tp)."""
        return self.dp * self.tp // (self.expert_tp * self.ep)

    @property
    def data_parallel_ranks(self) -> int:
        """Ranks holding the same parameters: dp x cp (gradients reduced and ZeRO / FSDP state
        sharded over them; :func:`planner.layout.data_parallel_spread`)."""
        return self.dp * self.cp

    @property
    def world_size(self) -> int:
        if self.stage_tp:
            return sum(self.stage_tp) * self.dp * self.cp
        return self.tp * self.pp * self.dp * self.cp

    def stage_config(self, stage: int) -> "ParallelConfig":
        """The split as pipeline stage ``stage``'s ranks run it (their own tp)."""
        if not self.stage_tp or self.stage_tp[stage] == self.tp:
            return dataclasses.replace(self, stage_tp=()) if self.stage_tp else self
        tp = self.stage_tp[stage]
        return dataclasses.replace(self, tp=tp, stage_tp=(), sequence_parallel=self.sequence_parallel and tp > 1)

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per step per pipeline (gradient-accumulation steps)."""
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def layers_per_stage(self, n_layers: int) -> tuple[int, ...]:
        """Layers of each (virtual) stage: ``stage_layers`` or the balanced split (earlier stages
        take the remainder, as torchtitan's splitter does)."""
        if self.stage_layers:
            return self.stage_layers
        stages = self.pp * self.vpp
        base, extra = divmod(n_layers, stages)
        return tuple(base + (1 if i < extra else 0) for i in range(stages))

    def validate_for(self, model: ModelSpec) -> None:
        """Raise InputError if this split cannot run ``model``."""
        for tp in sorted(set(self.stage_tp) - {self.tp}):
            self.stage_config(self.stage_tp.index(tp)).validate_for(model)
        require(model.n_heads % self.tp == 0, "tp",
                f"n_heads={model.n_heads} is not divisible by tp={self.tp}")
        require(model.n_kv_heads % self.tp == 0 or self.tp % model.n_kv_heads == 0, "tp",
                f"n_kv_heads={model.n_kv_heads} and tp={self.tp}: neither divides the other")
        require(model.ffn_hidden_size % self.tp == 0, "tp",
                f"ffn_hidden_size={model.ffn_hidden_size} is not divisible by tp={self.tp}")
        require(self.seq_len % self.cp == 0, "cp", f"seq_len={self.seq_len} is not divisible by cp={self.cp}")
        if self.sequence_parallel:
            require(self.seq_len % (self.tp * self.cp) == 0, "sequence_parallel",
                    f"seq_len={self.seq_len} is not divisible by tp*cp={self.tp * self.cp}")
        if self.ep > 1:
            require(model.is_moe, "ep", f"expert parallelism needs a mixture-of-experts model ({model.name} is dense)")
            require(model.n_experts % self.ep == 0, "ep",
                    f"n_experts={model.n_experts} is not divisible by ep={self.ep}")
        if model.is_moe:
            require(model.expert_ffn % self.expert_tp == 0, "etp" if self.etp else "tp",
                    f"expert ffn width {model.expert_ffn} is not divisible by {self.expert_tp}")
        if self.expert_tp != self.tp:
            require(model.is_moe, "etp", f"expert tensor parallelism needs a mixture-of-experts model ({model.name})")
            require(self.sequence_parallel, "sequence_parallel",
                    "Megatron-Core's MoE layers with tp > 1 need sequence parallelism (each rank dispatches its "
                    "own sequence shard)")
        stages = self.pp * self.vpp
        require(stages <= model.n_layers, "pp",
                f"pp*vpp={stages} stages exceed the model's {model.n_layers} layers")
        if self.stage_layers:
            require(sum(self.stage_layers) == model.n_layers, "stage_layers",
                    f"sum {sum(self.stage_layers)} != the model's {model.n_layers} layers")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stage_layers"] = list(self.stage_layers)
        if self.stage_tp:
            data["stage_tp"] = list(self.stage_tp)
        else:
            del data["stage_tp"]  # plans without it keep the ids they had before the field
        if self.ep == 1:
            del data["ep"]  # likewise
        if not self.etp:
            del data["etp"]  # likewise
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParallelConfig":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError(f"parallel.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        data = dict(data)
        for key in ("stage_layers", "stage_tp"):
            value = data.get(key, ())
            require(isinstance(value, (list, tuple)), f"parallel.{key}", f"must be a list, got {value!r}")
            data[key] = tuple(value)
        return cls(**data)

    def megatron_notation(self) -> str:
        """Short label, e.g. ``tp8 pp4 dp32 cp1 vpp2 mb1 full sp zero1 interleaved``."""
        tp = "/".join(map(str, self.stage_tp)) if self.stage_tp else str(self.tp)
        parts = [f"tp{tp}", f"pp{self.pp}", f"dp{self.dp}"]
        if self.cp > 1:
            parts.append(f"cp{self.cp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        if self.expert_tp != self.tp:
            parts.append(f"etp{self.etp}")
        if self.vpp > 1:
            parts.append(f"vpp{self.vpp}")
        parts.append(f"mb{self.micro_batch}")
        parts.append(self.recompute)
        if self.sequence_parallel:
            parts.append("sp")
        if self.sharding != "none":
            parts.append(self.sharding)
        if self.pp > 1:
            parts.append(self.schedule)
        return " ".join(parts)


# ----- the plan file --------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """A model, a cluster and a split, with the prediction made for it.

    The machine is either ``hardware`` (a profile name or YAML path: ``n_nodes`` nodes of it,
    ``gpus_per_node`` each) or ``cluster`` (a cluster file, possibly of several node types),
    never both. The ``id`` is a content hash of everything but the prediction, so measurements
    carrying the id join to the plan without parsing names.
    """

    model: ModelSpec
    hardware: str
    n_nodes: int
    gpus_per_node: int
    parallel: ParallelConfig
    prediction: dict | None = None
    version: int = PLAN_VERSION
    cluster: str = ""

    def __post_init__(self) -> None:
        require(isinstance(self.model, ModelSpec), "plan.model", "must be a model object")
        require(isinstance(self.parallel, ParallelConfig), "plan.parallel", "must be a parallel-configuration object")
        for name in ("n_nodes", "gpus_per_node"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool), f"plan.{name}",
                    f"must be an integer, got {value!r}")
        require(self.n_nodes <= MAX_NODES, "plan.n_nodes", f"must be at most {MAX_NODES:,}")
        require(self.prediction is None or isinstance(self.prediction, dict), "plan.prediction",
                "must be an object (or null)")
        require(isinstance(self.hardware, str) and isinstance(self.cluster, str), "hardware",
                "hardware and cluster must be strings")
        require(bool(self.hardware) != bool(self.cluster), "hardware",
                "a plan names a hardware profile or a cluster file (exactly one)")
        require(self.n_nodes >= 1, "nodes", "must be >= 1")
        require(self.gpus_per_node >= 1, "gpus_per_node", "must be >= 1")
        require(self.parallel.world_size == self.n_nodes * self.gpus_per_node, "dp",
                f"tp*pp*dp*cp = {self.parallel.tp}*{self.parallel.pp}*{self.parallel.dp}*{self.parallel.cp}"
                f" = {self.parallel.world_size} != nodes*gpus_per_node = {self.n_nodes}*{self.gpus_per_node}"
                f" = {self.n_nodes * self.gpus_per_node}")
        require(self.parallel.seq_len <= self.model.seq_len or self.model.position != "learned",
                "seq_len", f"{self.parallel.seq_len} exceeds the model's learned positions ({self.model.seq_len})")
        self.parallel.validate_for(self.model)

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    @property
    def machine(self) -> str:
        """What the plan runs on, for people: the cluster file or the profile."""
        return self.cluster or self.hardware

    def identity(self) -> dict[str, Any]:
        data = {
            "version": self.version,
            "model": self.model.to_dict(),
            "hardware": self.hardware,
            "n_nodes": self.n_nodes,
            "gpus_per_node": self.gpus_per_node,
            "parallel": self.parallel.to_dict(),
        }
        if self.cluster:
            data["cluster"] = self.cluster
        return data

    @property
    def id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = self.identity()
        data["id"] = self.id
        data["prediction"] = self.prediction
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def with_prediction(self, prediction: dict | None) -> "Plan":
        return dataclasses.replace(self, prediction=prediction)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        allowed = {"version", "model", "hardware", "cluster", "n_nodes", "gpus_per_node", "parallel", "prediction",
                   "id"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError(f"plan.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in ("model", "n_nodes", "gpus_per_node", "parallel") + (() if data.get("cluster") else ("hardware",)):
            if key not in data:
                raise InputError(f"plan.{key}", "missing")
        version = data.get("version", PLAN_VERSION)
        require(version == PLAN_VERSION, "plan.version", f"{version} is not supported (this is version {PLAN_VERSION})")
        for key in ("model", "parallel"):
            require(isinstance(data[key], dict), f"plan.{key}", f"must be an object, got {type(data[key]).__name__}")
        return cls(
            model=ModelSpec.from_dict(data["model"]),
            hardware=data.get("hardware", ""),
            cluster=data.get("cluster", ""),
            n_nodes=data["n_nodes"],
            gpus_per_node=data["gpus_per_node"],
            parallel=ParallelConfig.from_dict(data["parallel"]),
            prediction=data.get("prediction"),
            version=version,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_dict(read_json_object(path, "plan"))
