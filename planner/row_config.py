"""Read one row of a published-runs CSV (the schema of ``benchmarks/published_runs.csv``) into a
plan: its model, parallel configuration, GPU profile, framework runtime and cluster.

The configuration is read as published; the model is built from the row's architecture columns
(:mod:`planner.row_model`; a preset only where they are missing). A row is *complete* when the
architecture, tp/pp/dp, micro-batch, global batch, sequence length, recomputation and a GPU type
with a profile are all stated. Gaps are filled from a documented default of the source's
framework (Megatron-LM: no interleaving unless ``--num-layers-per-virtual-pipeline-stage`` is
given, so "not stated" means v=1; "interleaved" with ``layers/pp`` having a single divisor > 1
fixes v) where one exists; what has none (micro-batch, recomputation) is assumed, and the
assumption is stated on the row (status ``assumed``); rows that cannot be built are skipped,
with the reason.

One profile per GPU type and one framework-behaviour preset per framework
(:mod:`planner.cost.runtime`); a row on nodes whose network is documented to differ from the
profile's node type gets that network (:data:`NODE_NETWORKS`); a row whose source states its
gradient dtype gets it (:data:`GRAD_REDUCE_BYTES`). Nothing is tuned per row.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from planner.cost.runtime import Runtime, get_runtime
from planner.errors import InputError
from planner.hardware import ClusterSpec, NodeSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig
from planner.profile_yaml import load_profile
from planner.row_model import row_model

ASSUMED_MICRO_BATCH = 1


def profile_for_gpu(gpu_type: str) -> str | None:
    """Profile name for a ``gpu_type`` cell (one profile per GPU/node type)."""
    g = gpu_type.upper()
    if "A100" in g:
        return "dgx-a100-40gb" if "40GB" in g else "dgx-a100-80gb"
    if "H100" in g:
        return "dgx-h100-80gb"
    if "GH200" in g:  # before H200, which it contains
        return "gh200-96gb-quad"
    if "H200" in g:
        return "dgx-h200-141gb"
    if "B200" in g:
        return "dgx-b200-192gb"
    if "MI300X" in g:
        return "mi300x-192gb-8x"
    if "V100" in g:
        return "dgx2h-v100-32gb"
    return None


@dataclass(frozen=True)
class NodeNetwork:
    """A published cluster's own inter-node network: each rank's flow across nodes at
    ``gb_s_per_gpu`` (one direction) times ``bus_efficiency``, and where that is stated."""

    words: tuple[str, ...]   # any of these in the row's gpu_type or interconnect, lower case
    gb_s_per_gpu: float
    bus_efficiency: float
    source: str


JEAN_ZAY_BUSBW_GB_S = 4e9 * 2 * 31 / 32 / 1.5292 / 1e9
"""NCCL all-reduce bus bandwidth measured across 4 of Jean Zay's A100 nodes (32 ranks, 4 GB fp32,
median of 160 rank-trials: 1.5292 s; NCCL 2.10.3 over the hfi1 verbs of Omni-Path, "Channel
00/02"): BigScience, ``experiments/bandwidth/all_reduce_bench-a100-n4.txt`` (2022-01), the
cluster BLOOM-176B trained on with the same NCCL (PyTorch 1.11)."""

NODE_NETWORKS: tuple[NodeNetwork, ...] = (
    NodeNetwork(("jean zay", "omni-path"), JEAN_ZAY_BUSBW_GB_S / 2, 1.0,
                f"Jean Zay nodes (8 A100, 4 Omni-Path 100 Gb/s links): NCCL's measured all-reduce bus "
                f"bandwidth across them, {JEAN_ZAY_BUSBW_GB_S:.2f} GB/s on its 2 channels (BigScience "
                f"experiments/bandwidth, 2022-01), = {JEAN_ZAY_BUSBW_GB_S / 2:.2f} GB/s per rank's flow, a fifth "
                f"of a link's line rate; concurrent groups assumed not to contend"),
)
"""Published runs on nodes of a known GPU but another network than the profile's node type."""


def node_network(gpu_type: str, interconnect: str) -> NodeNetwork | None:
    """The row's nodes' own network, where they have one."""
    text = (gpu_type + " " + interconnect).lower()
    return next((n for n in NODE_NETWORKS if any(w in text for w in n.words)), None)


FRAMEWORK_RUNTIMES: tuple[tuple[tuple[str, ...], str], ...] = (
    # (any of these words in the framework cell, lower case) -> runtime preset; first match wins
    (("megatron-deepspeed",), "megatron-deepspeed"),
    (("deepspeed zero-3", "deepspeed zero3"), "deepspeed-zero3-2021"),
    (("megatron-core", "megatron core", "mcore", "nemo", "megatron-bridge", "megatron bridge"), "megatron-core"),
    (("torchtitan",), "torchtitan"),
    (("composer", "llm-foundry", "llm foundry"), "composer-fsdp"),
    (("megatron-lm", "megatron"), "megatron-lm-2021"),
)


def framework_runtime(framework: str) -> tuple[str, str]:
    """(runtime preset, note) for a ``framework`` cell as people write it ("NeMo 24.07",
    "Megatron-Bridge", "torchtitan + torch.compile", "torchtitan (eager)", "Megatron-LM (PTD-P)"). A framework not
    recognised is priced as the ``default`` current stack, and the note says so."""
    f = " ".join(framework.lower().replace("_", "-").split())
    for words, runtime in FRAMEWORK_RUNTIMES:
        if any(w in f for w in words):
            if runtime == "torchtitan" and "eager" in f:
                return "torchtitan-eager", ""
            return runtime, ""
    if not f:
        return "default", "framework not stated: priced as the default current stack"
    return "default", f"framework {framework!r} not recognised: priced as the default current stack"


def runtime_for_framework(framework: str) -> str:
    """The runtime preset for a ``framework`` cell (:func:`framework_runtime`)."""
    return framework_runtime(framework)[0]


def text_cell(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def int_cell(row: dict, key: str) -> int | None:
    """The cell as a positive whole number (None when empty); one line naming row and column."""
    v = float_cell(row, key)
    if v is None:
        return None
    if v != int(v) or v < 1:
        raise InputError(f"dataset row {row.get('row_id')}, column {key}", f"must be a positive integer, got {v!r}")
    return int(v)


def float_cell(row: dict, key: str) -> float | None:
    """The cell as a finite number (None when empty); one line naming row and column."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return None
    try:
        value = float(v)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"dataset row {row.get('row_id')}, column {key}", f"must be a finite number, got {v!r}")
    return value


def _recompute(text: str) -> str | None:
    t = text.lower()
    if t.startswith("full"):
        return "full"
    if t.startswith("selective"):
        return "selective"
    if t.startswith("none"):
        return "none"
    return None


def _precision(text: str) -> str | None:
    t = text.lower()
    if "fp8" in t or "float8" in t:
        return "fp8"
    if "tf32" in t or t in ("fp32", "float32"):
        return "tf32" if "tf32" in t else "fp32"
    if "bf16" in t and "fp16" not in t:
        return "bf16"
    if "fp16" in t:
        # "mixed FP16/BF16" (SC'21 / Korthikanti): the A100 runs used 16-bit; both dtypes have the
        # same A100 peak, fp16 chosen as the papers' "mixed precision" default.
        return "fp16"
    if t.startswith("mixed precision"):
        return "fp16"
    return None


def _sharding(text: str) -> str:
    t = text.lower()
    if "zero-3" in t or "zero3" in t:
        return "zero3"
    if "fsdp" in t:
        return "fsdp"
    if "zero-1" in t or "overlap-param-gather" in t:
        # Megatron-Core's --overlap-param-gather exists only with the distributed optimizer
        return "zero1"
    return "none"


def _vpp(text: str, layers_per_stage: float, pp: int) -> tuple[int | None, str]:
    """(v, note); v None when the row says interleaved but v cannot be derived."""
    t = text.lower()
    if pp == 1 or not t or t == "not stated":
        return 1, ("" if pp == 1 or not t else "vpp not stated: Megatron default (no interleaving), v=1")
    if "3 stages" in t:
        return 3, "v=3 as the source's note states"
    if re.fullmatch(r"\d+(\.0*)?", t):  # a bare number is the virtual pipeline size (Megatron's VP column)
        return int(float(t)), ""
    stated = re.search(r"\bv(?:pp?)?\s*[=:]?\s*(\d+)", t)
    if stated:
        return int(stated.group(1)), ""
    if t.startswith("interleaved"):
        if layers_per_stage != int(layers_per_stage):
            return None, "interleaved, v not stated (uneven layers per stage)"
        lps = int(layers_per_stage)
        divisors = [d for d in range(2, lps + 1) if lps % d == 0]
        if len(divisors) == 1:
            return divisors[0], f"interleaved with {lps} layers per stage: the only valid v is {divisors[0]}"
        return None, f"interleaved, v not stated ({lps} layers per stage allow v in {divisors})"
    return 1, ""


@dataclass(frozen=True)
class RowConfig:
    status: str          # predicted | assumed | skipped
    reason: str
    preset: str = ""
    profile: str = ""
    runtime: str = ""
    parallel: ParallelConfig | None = None
    nodes: int = 0
    model: ModelSpec | None = None
    network: NodeNetwork | None = None  # the row's nodes' own network (:data:`NODE_NETWORKS`)
    main_grad_bytes: float | None = None  # the source's gradient dtype (:data:`GRAD_REDUCE_BYTES`)

    def priced_runtime(self, base: Runtime | None = None) -> Runtime:
        """The runtime the row is priced with: ``base`` (default: the row's preset) with the
        gradient dtype the source states."""
        runtime = base or get_runtime(self.runtime)
        if self.main_grad_bytes is None:
            return runtime
        return dataclasses.replace(runtime, main_grad_bytes=self.main_grad_bytes)


GRAD_REDUCE_BYTES = {"bf16": 2.0, "fp32": 4.0}
"""Optional column ``grad_reduce_dtype``: the dtype the source's configuration accumulates and
reduces gradients in, where it sets one (NeMo 1 YAML ``optim.grad_sync_dtype``), bytes per
element; it replaces the runtime's own (:attr:`planner.cost.runtime.Runtime.main_grad_bytes`)."""


def row_config(row: dict) -> RowConfig:
    """Read one CSV row into a plan, or say why it cannot be predicted."""
    assumptions: list[str] = []
    notes: list[str] = []
    name = text_cell(row, "model")
    profile = profile_for_gpu(text_cell(row, "gpu_type"))
    if profile is None:
        return RowConfig("skipped", f"no profile for GPU type {text_cell(row, 'gpu_type')!r}")
    network = node_network(text_cell(row, "gpu_type"), text_cell(row, "interconnect"))
    if network:
        assumptions.append(f"{network.source}; GPU and NVLink as {profile}")
    seq = int_cell(row, "seq_len")
    if seq is None:
        return RowConfig("skipped", "sequence length not stated", name, profile)
    built = row_model(row, seq)
    preset = built.preset or name
    if built.model is None:
        return RowConfig("skipped", built.reason, preset, profile)
    model = built.model
    assumptions += built.assumptions
    tp, pp, dp = int_cell(row, "tp"), int_cell(row, "pp"), int_cell(row, "dp")
    if None in (tp, pp, dp):
        return RowConfig("skipped", "tp/pp/dp not all stated", preset, profile)
    cp = int_cell(row, "cp") or 1
    ep = int_cell(row, "ep") or 1
    gbs = int_cell(row, "global_batch")
    if gbs is None:
        return RowConfig("skipped", "global batch not stated", preset, profile)
    n_gpus = int_cell(row, "num_gpus")
    if n_gpus is not None and n_gpus != tp * pp * dp * cp:
        return RowConfig("skipped", f"tp*pp*dp*cp != num_gpus {n_gpus}", preset, profile)
    mb = int_cell(row, "micro_batch")
    if mb is None:
        mb = ASSUMED_MICRO_BATCH
        assumptions.append(f"micro-batch not stated: assumed {mb}")
    recompute = _recompute(text_cell(row, "activation_recompute"))
    if recompute is None:
        recompute = "none"
        assumptions.append("recomputation not stated: assumed none (Megatron default)")
    precision = _precision(text_cell(row, "precision"))
    if precision is None:
        if "bf16" in text_cell(row, "precision").lower():
            precision = "bf16"
        else:
            precision = "bf16"
            assumptions.append("precision not stated: assumed bf16")
    v, vnote = _vpp(text_cell(row, "vpp_interleave"), model.n_layers / pp, pp)
    if v is None:
        v = 1
        assumptions.append(vnote + ": assumed v=1 (1F1B)")
    elif vnote:
        notes.append(vnote)
    sp_cell = text_cell(row, "sequence_parallel").lower()
    sp = sp_cell == "yes"
    sharding = _sharding(text_cell(row, "zero_or_fsdp"))
    grad_dtype = text_cell(row, "grad_reduce_dtype").lower()
    if grad_dtype and grad_dtype not in GRAD_REDUCE_BYTES:
        return RowConfig("skipped", f"grad_reduce_dtype {grad_dtype!r} is not one of {', '.join(GRAD_REDUCE_BYTES)}",
                         preset, profile)
    if grad_dtype:
        notes.append(f"gradients accumulated and reduced in {grad_dtype} (the source's configuration)")
    runtime, runtime_note = framework_runtime(text_cell(row, "framework"))
    if runtime_note:
        notes.append(runtime_note)
    if tp > 1 and not sp_cell and get_runtime(runtime).tp_comm_overlap:
        sp = True  # Megatron-Core asserts --sequence-parallel with --tp-comm-overlap
        notes.append("sequence parallel not stated: on, as the runtime's --tp-comm-overlap requires")
    nodes_gpus = tp * pp * dp * cp
    gpn = load_profile(profile).gpus_per_node
    if nodes_gpus % gpn != 0:
        if nodes_gpus < gpn:
            gpn_use = nodes_gpus
        else:
            return RowConfig("skipped", f"{nodes_gpus} GPUs is not a whole number of {gpn}-GPU nodes",
                             preset, profile)
    else:
        gpn_use = gpn
    etp = int_cell(row, "etp") or 0
    if not etp and ep > 1 and tp > 1 and dp % ep and (dp * tp) % ep == 0:
        etp = 1  # ep above dp fits only with the experts whole below tp (Megatron-Core's MoE parallel folding)
        sp = True
        assumptions.append(f"ep {ep} > dp {dp}: experts whole below tp assumed (expert tensor parallel size 1)")
    try:
        parallel = ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, etp=etp, vpp=v, micro_batch=mb,
                                  global_batch=gbs, seq_len=seq, recompute=recompute, sharding=sharding,
                                  sequence_parallel=sp, precision=precision,
                                  schedule="interleaved" if v > 1 else "1f1b")
        parallel.validate_for(model)
    except InputError as err:
        return RowConfig("skipped", f"configuration invalid: {err}", preset, profile)
    status = "assumed" if assumptions else "predicted"
    return RowConfig(status, "; ".join(assumptions + notes), preset, profile, runtime, parallel,
                     nodes_gpus // gpn_use if gpn_use == gpn else 1, model,
                     network, GRAD_REDUCE_BYTES.get(grad_dtype))




def row_cluster(cfg: RowConfig, nodes: Mapping[str, NodeSpec]) -> ClusterSpec:
    """The row's cluster: its profile (or ``nodes``' replacement of it) at the row's node size, on
    the row's own network where it has one."""
    gpus_per_node = cfg.parallel.world_size // cfg.nodes
    node = nodes[cfg.profile] if cfg.profile in nodes else load_profile(cfg.profile)
    if node.gpus_per_node != gpus_per_node:
        node = node.with_gpus_per_node(gpus_per_node)
    if cfg.network is not None:
        link = dataclasses.replace(node.inter_node, bandwidth_bytes_per_s=cfg.network.gb_s_per_gpu * 1e9,
                                   bus_efficiency=cfg.network.bus_efficiency)
        node = dataclasses.replace(node, inter_node=link)
    return ClusterSpec.homogeneous(node, cfg.nodes)
