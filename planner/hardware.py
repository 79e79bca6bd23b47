"""Hardware profiles: devices, nodes, links and clusters, parsed strictly from YAML.

Profiles live in ``hardware_profiles/<name>.yaml`` (schema in ``hardware_profiles/README.md``).
YAML uses readable units (TFLOP/s, GiB, GB/s, microseconds) named in each key; everything is
converted to SI here (FLOP/s, bytes, bytes/s, seconds) and nothing else in the planner converts.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from planner.errors import InputError, reject_unknown_keys, require
from planner.io import resolve_named_yaml

PROFILES_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")
GIB = 1024**3
GB = 1e9
GIGA = 1e9
TERA = 1e12
MICRO = 1e-6


@dataclass(frozen=True)
class EfficiencyCurve:
    """Achieved fraction of peak as a function of problem size.

    ``points`` are (size, efficiency) pairs sorted by size; between points the efficiency is
    interpolated linearly in log10(size), and clamped at the ends (roofline-with-efficiency, as in
    Calculon's efficiency tables).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        require(len(self.points) >= 1, "efficiency_curve", "needs at least one [size, efficiency] point")
        sizes = [p[0] for p in self.points]
        require(all(s > 0 for s in sizes), "efficiency_curve", "sizes must be > 0")
        require(sizes == sorted(sizes), "efficiency_curve", "sizes must be increasing")
        require(all(0 < p[1] <= 1.0 for p in self.points), "efficiency_curve",
                "efficiencies must be in (0, 1]")

    def __call__(self, size: float) -> float:
        pts = self.points
        if size <= pts[0][0]:
            return pts[0][1]
        if size >= pts[-1][0]:
            return pts[-1][1]
        sizes = [p[0] for p in pts]
        i = bisect.bisect_right(sizes, size)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        t = (math.log10(size) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return y0 + t * (y1 - y0)


@dataclass(frozen=True)
class LinkSpec:
    """A link class seen by one GPU: intra-node fabric (NVLink/NVSwitch) or the node's NIC.

    bandwidth_bytes_per_s: per GPU, one direction (line rate).
    latency_s: per-message latency (alpha in the alpha-beta model).
    bus_efficiency: achieved collective bus bandwidth / line rate (nccl-tests ``busbw``).
    """

    bandwidth_bytes_per_s: float
    latency_s: float
    bus_efficiency: float

    def __post_init__(self) -> None:
        require(self.bandwidth_bytes_per_s > 0, "bandwidth_gb_s", "must be > 0")
        require(self.latency_s >= 0, "latency_us", "must be >= 0")
        require(0 < self.bus_efficiency <= 1, "bus_efficiency", "must be in (0, 1]")

    @property
    def effective_bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.bus_efficiency


@dataclass(frozen=True)
class MeasuredCollective:
    """A measured collective (from ``clusterplan calibrate``) for one op and group size:
    time(S) = latency_s + S_bus / bus_bandwidth_bytes_per_s, with S_bus the ring-corrected bytes.

    times_s: optional measured ((message bytes S, seconds), ...), S ascending. Within their range
    the time is interpolated between the two neighbouring sizes, linearly in log(S) and log(t)
    (gloo and NCCL switch algorithms with the size, so a single alpha-beta line misses mid
    sizes; ASTRA-sim and Calculon likewise read collective efficiency off measured tables);
    below the smallest size it is the smallest size's time (latency-bound), above the largest
    the line continues from the largest point with the bus bandwidth."""

    op: str
    group_size: int
    latency_s: float
    bus_bandwidth_bytes_per_s: float
    times_s: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        require(self.op in COLLECTIVE_OPS, "collectives.op", f"must be one of {COLLECTIVE_OPS}")
        require(self.group_size >= 2, "collectives.group_size", "must be >= 2")
        require(self.latency_s >= 0, "collectives.latency_us", "must be >= 0")
        require(self.bus_bandwidth_bytes_per_s > 0, "collectives.bus_bandwidth_gb_s", "must be > 0")
        sizes = [b for b, _ in self.times_s]
        require(all(b > 0 and t > 0 for b, t in self.times_s), "collectives.times_us",
                "sizes and times must be > 0")
        require(all(a < b for a, b in zip(sizes, sizes[1:])), "collectives.times_us",
                "sizes must be strictly ascending")

    def time_s(self, size_bytes: float, bus_factor: float) -> float:
        """Seconds for a message of ``size_bytes`` (the full tensor); ``bus_factor``: bytes each
        rank moves per byte of S (:func:`planner.cost.comm.ring_bus_factor`)."""
        pts = self.times_s
        if len(pts) < 2:
            return self.latency_s + bus_factor * size_bytes / self.bus_bandwidth_bytes_per_s
        if size_bytes <= pts[0][0]:
            return pts[0][1]
        if size_bytes >= pts[-1][0]:
            return pts[-1][1] + bus_factor * (size_bytes - pts[-1][0]) / self.bus_bandwidth_bytes_per_s
        return _loglog(pts, size_bytes, 1)


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or one CPU rank for the local profile).

    peak_flops_per_s: dense peak per dtype as ((dtype, FLOP/s), ...); a dtype absent is unsupported.
    hbm_bytes / hbm_bandwidth_bytes_per_s: device memory capacity and peak bandwidth.
    matmul_efficiency: fraction of peak a GEMM reaches vs its FLOPs (2*m*n*k), any dtype.
    matmul_efficiency_by_dtype: ((dtype, curve), ...) where a dtype has its own curve (a CPU's
        fp32 and bf16 GEMMs scale differently); :meth:`matmul_curve` picks it.
    memory_bound_efficiency: fraction of peak bandwidth reached by elementwise/normalisation ops.
    kernel_overhead_s: fixed cost per kernel / framework op (launch, dispatch).
    reserved_bytes: memory the framework holds outside tensors (CUDA context, NCCL buffers).
    fragmentation_fraction: allocator overhead as a fraction of tensor memory.
    host_cores: CPU profiles only: cores shared by the ranks; a rank runs at
        peak * min(1, host_cores / ranks_on_host). 0 for GPUs (no sharing).
    """

    name: str
    peak_flops_per_s: tuple[tuple[str, float], ...]
    hbm_bytes: float
    hbm_bandwidth_bytes_per_s: float
    matmul_efficiency: EfficiencyCurve
    memory_bound_efficiency: float
    kernel_overhead_s: float
    reserved_bytes: float
    fragmentation_fraction: float
    host_cores: int = 0
    matmul_efficiency_by_dtype: tuple[tuple[str, EfficiencyCurve], ...] = ()

    def __post_init__(self) -> None:
        for dtype, _ in self.matmul_efficiency_by_dtype:
            require(dtype in DTYPES, f"device.matmul_efficiency.{dtype}", f"unknown dtype (allowed: {DTYPES})")
        require(len(self.peak_flops_per_s) > 0, "device.peak_tflops", "needs at least one dtype")
        for dtype, flops in self.peak_flops_per_s:
            require(dtype in DTYPES, f"device.peak_tflops.{dtype}", f"unknown dtype (allowed: {DTYPES})")
            require(flops > 0, f"device.peak_tflops.{dtype}", "must be > 0")
        require(self.hbm_bytes > 0, "device.hbm_gib", "must be > 0")
        require(self.hbm_bandwidth_bytes_per_s > 0, "device.hbm_bandwidth_gb_s", "must be > 0")
        require(0 < self.memory_bound_efficiency <= 1, "device.memory_bound_efficiency", "must be in (0, 1]")
        require(self.kernel_overhead_s >= 0, "device.kernel_overhead_us", "must be >= 0")
        require(self.reserved_bytes >= 0, "device.reserved_gib", "must be >= 0")
        require(0 <= self.fragmentation_fraction < 1, "device.fragmentation_fraction", "must be in [0, 1)")
        require(self.host_cores >= 0, "device.host_cores", "must be >= 0")

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; raises InputError if the device lacks it."""
        for name, flops in self.peak_flops_per_s:
            if name == dtype:
                return flops
        supported = ", ".join(name for name, _ in self.peak_flops_per_s)
        raise InputError("precision", f"{self.name} has no {dtype} peak (profile lists: {supported})")

    def matmul_curve(self, dtype: str) -> EfficiencyCurve:
        """The GEMM efficiency curve for ``dtype``: its own if the profile has one, else the shared one."""
        for name, curve in self.matmul_efficiency_by_dtype:
            if name == dtype:
                return curve
        return self.matmul_efficiency

    def default_precision(self) -> str:
        """The training dtype a user gets without asking: bf16, else fp16 (V100), else fp32 (CPU)."""
        for dtype in ("bf16", "fp16", "fp32"):
            if self.supports(dtype):
                return dtype
        return self.peak_flops_per_s[0][0]

    def supports(self, dtype: str) -> bool:
        return any(name == dtype for name, _ in self.peak_flops_per_s)


ELEMENTWISE_CLASSES = ("arith", "rmsnorm", "layernorm", "gelu", "swiglu", "rope", "adamw")
"""Kinds of the executor's element-wise work that run at their own rate on a CPU (one thread,
eager): ``arith`` the plain binary ops (residual adds, the gradient sums of tensors read twice,
bias-gradient sums, dropout), the two norms, the two activations (per FFN element; SwiGLU is
``silu(gate) * up``), RoPE (per rotated element) and the optimizer's ``AdamW(foreach=False)``
update (per parameter, fp32 master weights in both precisions; one rate, its "forward").
``executor/bench/elementwise.py`` times each on the executor's own code; the profile keeps a
forward and a backward rate per class, dtype and size (``framework.elementwise_gb_s``);
``planner.cost.framework.elementwise_bytes_per_element`` counts their bytes."""

ATTENTION_CLASSES = ("mha", "gqa")
"""Kinds of the executor's attention core (``F.scaled_dot_product_attention``, causal) timed
apart: every query head with its own K/V (``mha``) and grouped-query K/V (``gqa``, fewer K/V
heads than query heads, ``enable_gqa``). ``executor/bench/attention.py`` times both at several
head widths; the profile keeps a forward and a backward rate per kind and head width (``mha_d64``),
dtype and sequence length (``framework.attention_gflops``)."""


@dataclass(frozen=True)
class FrameworkSpec:
    """Costs of the executor's own building blocks on this machine (``clusterplan calibrate``
    measures them on the executor's real modules at a small reference shape; optional: GPU
    profiles have none and predict without it). Seconds and bytes.

    op_forward_s: per aten op of a forward under autograd (dispatch + autograd graph recording),
        replacing ``kernel_overhead_s`` for the ops the executor's blocks run.
    op_backward_s: per aten op the autograd engine runs in backward.
    op_optimizer_s: per aten op of ``AdamW(foreach=False).step`` (about 10 per parameter tensor).
    tp_linear_forward_s / tp_linear_backward_s: DTensor cost per tensor-parallel linear
        (ColwiseParallel / RowwiseParallel) per micro-batch, beyond its local GEMM and the
        profile's collective times (``from_local`` / ``redistribute`` dispatch, functional
        collectives and their waits on gloo); the constant part.
    tp_linear_forward_s_per_byte / tp_linear_backward_s_per_byte: the part that grows with the
        module's activation (tokens x hidden x bytes per element), from the TP reference at two
        widths; optional (0). :meth:`tp_module_s` adds both.
    pp_action_s: ``torch.distributed.pipelining``'s own cost per schedule action (one forward,
        backward or weight-gradient step of one micro-batch on one stage: the stage's input
        and output bookkeeping, ``autograd.backward`` on the stage outputs, posting its
        sends / receives); the constant part, from pp=2 1F1B reference steps at two shapes;
        optional (0).
    pp_compute_slowdown: how much longer a stage's work takes inside a pipeline action than
        the same work in the plain step, minus one (the part of the pipelining runtime's cost
        that grows with the action: its autograd calls on the stage outputs, the stage's inputs
        and outputs kept and freed per micro-batch); with ``pp_action_s`` the slope and
        intercept of the 1F1B reference residual at two shapes; optional (0).
    zb_split_slowdown: the zero-bubble schedule's split backward (input gradients, then weight
        gradients from the retained graph) over the fused backward of the same stage, minus
        one, from a pp=2 zero-bubble reference step; optional (0).
    ddp_grad_s_per_byte: DDP's reducer beyond its all-reduce time, per gradient byte per step
        (bucketing, and the gloo transfer's own CPU work, which with every core running a rank
        comes out of compute); optional (0).
    ddp_param_s: DDP's reducer cost per parameter tensor per step (its autograd hook marks the
        gradient ready and books it into a bucket); with ``ddp_grad_s_per_byte`` the constant and
        the slope of the DDP reference step's residual at two widths; optional (0).
    tp_optimizer_param_s: extra optimizer time per DTensor parameter tensor (per-op DTensor
        dispatch of the AdamW update).
    sp_block_forward_s / sp_block_backward_s: with sequence parallelism, the extra cost per
        block per micro-batch beyond its TP linears (the norms' ``SequenceParallel`` and the
        inputs' ``Shard(1)`` -> ``Replicate`` redistributions); optional (0).
    fsdp_unit_forward_s / fsdp_unit_backward_s: FSDP2 ``fully_shard`` cost per wrapped unit per
        micro-batch (pre/post hooks, copy-in/copy-out of the flat all-gather and
        reduce-scatter buffers) beyond the profile's collective times.
    fsdp_unit_forward_s_per_byte / fsdp_unit_backward_s_per_byte: the part of that cost that
        grows with the unit's parameter bytes (copy-in to the all-gather buffer and copy-out to
        the unsharded parameters, the gradients' reduce-scatter buffers), from the FSDP2
        reference at two widths; optional (0). :meth:`fsdp_unit_s` adds both.
    fsdp_optimizer_param_s: extra optimizer time per FSDP2 (DTensor) parameter tensor.
    zero1_param_s: ZeroRedundancyOptimizer cost per parameter tensor per step beyond the
        AdamW update of its shard (per-parameter broadcast bookkeeping and waits).
    fragmentation_fraction: a training step's measured peak (the CPU allocator's live bytes, as
        the executor reports it) per byte of the cost model's tensors, minus one (transient
        tensors the model does not itemise), from real training steps at two batch sizes.
    training_overhead_bytes: the intercept of that fit (memory beyond the tensors).
    concurrent_slowdown: how much longer a rank's memory-bound and per-op work takes while
        several ranks run at once on the host (shared caches and memory bandwidth) than alone,
        minus one: the reference training step on every rank at once (no communication)
        against the same step on one rank, over its non-GEMM part. Applies when more than one
        rank shares the host; optional (0).
    concurrent_gemm_slowdown: the same for the GEMMs' arithmetic (two ranks on the cores of
        one host share its last-level cache and, on a VM, possibly the physical cores under
        the virtual ones); fitted together with ``concurrent_slowdown`` from the alone / at
        once steps at several shapes, whose GEMM shares differ; optional (0).
    step_forward_slowdown / step_backward_slowdown / step_optimizer_slowdown: how much longer
        the compute of a training step's forward, backward and optimizer step (GEMMs, attention,
        element-wise and optimizer traffic; not the per-op costs) takes in the executor's own
        plain step than the microbenchmarks' rates predict, minus one (among other causes,
        operands a tight loop keeps in the core's caches come from further away between a
        step's other work: GEMMs 5-10% slower over a pool of operands on one host). From
        the plain reference step at up to three shapes (none of them a sweep shape); optional (0).
    elementwise_rates: per kind of element-wise work (:data:`ELEMENTWISE_CLASSES`) and
        activation dtype, (kind, dtype, points): each point (bytes of one call's forward,
        forward bytes/s, backward bytes/s), bytes read + written as ``planner.cost.framework``
        counts them, measured on the executor's own code at several sizes with the counted ops'
        per-op cost taken off (it is charged apart); :meth:`elementwise_rate` interpolates.
        Optional (empty: the device's pooled ``memory_bound_efficiency`` for all of them).
    attention_rates: per kind of attention core (:data:`ATTENTION_CLASSES`) and dtype, (kind,
        dtype, points): each point (sequence length, forward FLOP/s, backward FLOP/s), both
        rates per counted forward FLOP (the cost model's full ``4 s^2 d`` per head and sequence,
        ``planner.cost.flops``: a causal kernel that skips masked tiles shows as a higher rate),
        measured on the executor's own SDPA call with its per-op cost taken off;
        :meth:`attention_rate` interpolates. Optional (empty: the GEMM curve and a softmax pass).
    """

    op_forward_s: float
    op_backward_s: float
    op_optimizer_s: float
    tp_linear_forward_s: float
    tp_linear_backward_s: float
    tp_optimizer_param_s: float
    fsdp_unit_forward_s: float
    fsdp_unit_backward_s: float
    fsdp_optimizer_param_s: float
    zero1_param_s: float
    fragmentation_fraction: float
    training_overhead_bytes: float
    concurrent_slowdown: float = 0.0
    sp_block_forward_s: float = 0.0
    sp_block_backward_s: float = 0.0
    tp_linear_forward_s_per_byte: float = 0.0
    tp_linear_backward_s_per_byte: float = 0.0
    pp_action_s: float = 0.0
    pp_compute_slowdown: float = 0.0
    zb_split_slowdown: float = 0.0
    ddp_grad_s_per_byte: float = 0.0
    ddp_param_s: float = 0.0
    fsdp_unit_forward_s_per_byte: float = 0.0
    fsdp_unit_backward_s_per_byte: float = 0.0
    concurrent_gemm_slowdown: float = 0.0
    step_forward_slowdown: float = 0.0
    step_backward_slowdown: float = 0.0
    step_optimizer_slowdown: float = 0.0
    elementwise_rates: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = ()
    attention_rates: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = ()

    @staticmethod
    def number_fields() -> tuple[str, ...]:
        """The fields that hold one number (all but the rate tables)."""
        return tuple(f.name for f in dataclasses.fields(FrameworkSpec)
                     if f.name not in ("elementwise_rates", "attention_rates"))

    def attention_rate(self, kind: str, d_head: float, dtype: str, seq_len: float) -> tuple[float, float] | None:
        """(forward, backward) FLOP/s per counted forward FLOP of the ``kind`` attention core
        (:data:`ATTENTION_CLASSES`) with heads of ``d_head`` on ``dtype`` at ``seq_len``: the
        measured head width nearest ``d_head`` (in ratio), log-log interpolation between its
        measured lengths, the end point's rate outside them; None if the kind is unmeasured."""
        widths = [(abs(math.log(int(k.rsplit("_d", 1)[1]) / d_head)), points)
                  for k, d, points in self.attention_rates if k.rsplit("_d", 1)[0] == kind and d == dtype]
        if not widths:
            return None
        points = min(widths, key=lambda w: w[0])[1]
        return tuple(_loglog(points, seq_len, column) for column in (1, 2))

    def elementwise_points(self, kind: str, dtype: str) -> tuple[tuple[float, float, float], ...] | None:
        """The measured (call bytes, forward bytes/s, backward bytes/s) of ``kind`` on ``dtype``
        activations, None if unmeasured."""
        for k, d, points in self.elementwise_rates:
            if k == kind and d == dtype:
                return points
        return None

    def elementwise_rate(self, kind: str, dtype: str, call_bytes: float) -> tuple[float, float] | None:
        """(forward, backward) bytes/s of ``kind`` on ``dtype`` activations for calls moving
        ``call_bytes`` forward: log-log interpolation between the measured sizes, the end
        point's rate outside them; None if unmeasured."""
        points = self.elementwise_points(kind, dtype)
        return None if points is None else tuple(_loglog(points, call_bytes, column) for column in (1, 2))

    def step_scale(self, phase: str) -> float:
        """The factor on a step's compute time in ``phase`` (forward, backward, optimizer):
        one plus its measured ``step_*_slowdown``."""
        return 1.0 + getattr(self, f"step_{phase}_slowdown")

    def fsdp_unit_s(self, param_bytes: float) -> tuple[float, float]:
        """(forward, backward) FSDP2 cost of one ``fully_shard`` unit per micro-batch holding
        ``param_bytes`` of (unsharded) parameters, beyond its collectives."""
        return (self.fsdp_unit_forward_s + self.fsdp_unit_forward_s_per_byte * param_bytes,
                self.fsdp_unit_backward_s + self.fsdp_unit_backward_s_per_byte * param_bytes)

    def ddp_reducer_s(self, param_tensors: int, grad_bytes: float) -> float:
        """DDP's reducer beyond its all-reduce, per step: hooks per tensor plus per-byte work."""
        return self.ddp_param_s * param_tensors + self.ddp_grad_s_per_byte * grad_bytes

    def tp_module_s(self, activation_bytes: float) -> tuple[float, float]:
        """(forward, backward) DTensor cost of one TP module per micro-batch whose activation
        (tokens x hidden) has ``activation_bytes``: a per-module constant plus a per-byte term
        (its redistribute copies and the gloo collectives' CPU work grow with the tensor)."""
        return (self.tp_linear_forward_s + self.tp_linear_forward_s_per_byte * activation_bytes,
                self.tp_linear_backward_s + self.tp_linear_backward_s_per_byte * activation_bytes)

    def __post_init__(self) -> None:
        for table in RATE_TABLES:
            for kind, dtype, points in getattr(self, table.field):
                key = f"framework.{table.yaml_key}.{kind}.{dtype}"
                require(re.fullmatch(table.kind_pattern, kind) is not None, key, f"unknown kind ({table.kinds_text})")
                require(dtype in ("fp32", "bf16"), key, "dtype must be fp32 or bf16")
                require(len(points) >= 1, key, f"needs at least one {table.point}")
                for point in points:
                    require(len(point) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                                    for v in point), key,
                            f"each point must be three finite numbers > 0 {table.point}")
                sizes = [pt[0] for pt in points]
                require(sizes == sorted(set(sizes)), key, f"points must have strictly increasing {table.x_name}")
        for name in self.number_fields():
            value = getattr(self, name)
            key = f"framework.{FRAMEWORK_YAML.get(name, (name,))[0]}"
            require(isinstance(value, (int, float)) and math.isfinite(value), key, "must be a finite number")
            require(value >= 0, key, "must be >= 0")
        require(self.fragmentation_fraction < 1, "framework.fragmentation_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class NodeSpec:
    """A node type: ``gpus_per_node`` devices joined by ``intra_node``, each with a NIC share
    ``inter_node`` to the cluster fabric. ``collectives`` holds measured overrides (CPU profile);
    ``framework`` the calibrated costs of the executor's building blocks (CPU profile; None
    elsewhere, and then nothing in the cost model changes)."""

    name: str
    description: str
    device: DeviceSpec
    gpus_per_node: int
    intra_node: LinkSpec
    inter_node: LinkSpec
    collectives: tuple[MeasuredCollective, ...] = ()
    measured_on: str = ""
    framework: FrameworkSpec | None = None

    def __post_init__(self) -> None:
        require(self.gpus_per_node >= 1, "node.gpus_per_node", "must be >= 1")

    def with_gpus_per_node(self, gpus_per_node: int) -> "NodeSpec":
        require(gpus_per_node >= 1, "gpus_per_node", "must be >= 1")
        return dataclasses.replace(self, gpus_per_node=gpus_per_node)

    def measured_collective(self, op: str, group_size: int) -> MeasuredCollective | None:
        """The measured entry for ``op`` at ``group_size`` (nearest measured size at or below,
        else the smallest above), or None when the profile has none for ``op``."""
        entries = sorted((c for c in self.collectives if c.op == op), key=lambda c: c.group_size)
        if not entries:
            return None
        below = [c for c in entries if c.group_size <= group_size]
        return below[-1] if below else entries[0]


@dataclass(frozen=True)
class NodeGroup:
    node: NodeSpec
    n_nodes: int

    def __post_init__(self) -> None:
        require(self.n_nodes >= 1, "nodes", "must be >= 1")


@dataclass(frozen=True)
class ClusterSpec:
    """Nodes of one or more types. Homogeneous clusters have one group; ranks are numbered
    group by group, node by node."""

    groups: tuple[NodeGroup, ...]
    name: str = ""

    def __post_init__(self) -> None:
        require(len(self.groups) >= 1, "cluster.nodes", "needs at least one node group")

    @classmethod
    def homogeneous(cls, node: NodeSpec, n_nodes: int) -> "ClusterSpec":
        return cls(groups=(NodeGroup(node, n_nodes),), name=f"{n_nodes}x{node.name}")

    @property
    def is_homogeneous(self) -> bool:
        return len(self.groups) == 1

    @property
    def node(self) -> NodeSpec:
        """The node type of a homogeneous cluster."""
        require(self.is_homogeneous, "cluster", "has several node types; use its groups")
        return self.groups[0].node

    @property
    def n_nodes(self) -> int:
        return sum(g.n_nodes for g in self.groups)

    @property
    def world_size(self) -> int:
        return sum(g.n_nodes * g.node.gpus_per_node for g in self.groups)


# ----- YAML parsing ---------------------------------------------------------------------------
_TOP_KEYS = {"name", "description", "device", "node", "collectives", "measured_on", "framework"}
# FrameworkSpec field -> (YAML key, factor from the YAML unit to SI)
FRAMEWORK_YAML: dict[str, tuple[str, float]] = {
    "op_forward_s": ("op_forward_us", MICRO),
    "op_backward_s": ("op_backward_us", MICRO),
    "op_optimizer_s": ("op_optimizer_us", MICRO),
    "tp_linear_forward_s": ("tp_linear_forward_us", MICRO),
    "tp_linear_backward_s": ("tp_linear_backward_us", MICRO),
    "tp_optimizer_param_s": ("tp_optimizer_param_us", MICRO),
    "fsdp_unit_forward_s": ("fsdp_unit_forward_us", MICRO),
    "fsdp_unit_backward_s": ("fsdp_unit_backward_us", MICRO),
    "fsdp_optimizer_param_s": ("fsdp_optimizer_param_us", MICRO),
    "zero1_param_s": ("zero1_param_us", MICRO),
    "fragmentation_fraction": ("fragmentation_fraction", 1.0),
    "training_overhead_bytes": ("training_overhead_mib", float(2**20)),
    "concurrent_slowdown": ("concurrent_slowdown", 1.0),
    "concurrent_gemm_slowdown": ("concurrent_gemm_slowdown", 1.0),
    "step_forward_slowdown": ("step_forward_slowdown", 1.0),
    "step_backward_slowdown": ("step_backward_slowdown", 1.0),
    "step_optimizer_slowdown": ("step_optimizer_slowdown", 1.0),
    "sp_block_forward_s": ("sp_block_forward_us", MICRO),
    "sp_block_backward_s": ("sp_block_backward_us", MICRO),
    "tp_linear_forward_s_per_byte": ("tp_linear_forward_us_per_mib", MICRO / 2**20),
    "tp_linear_backward_s_per_byte": ("tp_linear_backward_us_per_mib", MICRO / 2**20),
    "pp_action_s": ("pp_action_us", MICRO),
    "pp_compute_slowdown": ("pp_compute_slowdown", 1.0),
    "zb_split_slowdown": ("zb_split_slowdown", 1.0),
    "ddp_grad_s_per_byte": ("ddp_grad_us_per_mib", MICRO / 2**20),
    "ddp_param_s": ("ddp_param_us", MICRO),
    "fsdp_unit_forward_s_per_byte": ("fsdp_unit_forward_us_per_mib", MICRO / 2**20),
    "fsdp_unit_backward_s_per_byte": ("fsdp_unit_backward_us_per_mib", MICRO / 2**20),
}
_FRAMEWORK_OPTIONAL = {"concurrent_slowdown", "concurrent_gemm_slowdown", "sp_block_forward_s",
                       "sp_block_backward_s",
                       "tp_linear_forward_s_per_byte", "tp_linear_backward_s_per_byte", "pp_action_s",
                       "pp_compute_slowdown", "zb_split_slowdown",
                       "ddp_grad_s_per_byte", "ddp_param_s", "fsdp_unit_forward_s_per_byte",
                       "fsdp_unit_backward_s_per_byte", "step_forward_slowdown", "step_backward_slowdown",
                       "step_optimizer_slowdown"}
_DEVICE_KEYS = {"name", "peak_tflops", "hbm_gib", "hbm_bandwidth_gb_s", "matmul_efficiency",
                "memory_bound_efficiency", "kernel_overhead_us", "reserved_gib",
                "fragmentation_fraction", "host_cores"}
_NODE_KEYS = {"gpus_per_node", "intra_node", "inter_node"}
_LINK_KEYS = {"bandwidth_gb_s", "latency_us", "bus_efficiency"}
_COLLECTIVE_KEYS = {"op", "group_size", "latency_us", "bus_bandwidth_gb_s", "times_us"}


def _number(data: dict, key: str, where: str, *, optional: bool = False, default: float = 0.0) -> float:
    if key not in data:
        if optional:
            return default
        raise InputError(f"{where}.{key}", "missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}.{key}", f"must be a number, got {value!r}")
    return float(value)


def _mapping(data: Any, where: str) -> dict:
    if data is None:
        raise InputError(where, "missing")
    if not isinstance(data, dict):
        raise InputError(where, f"must be a mapping, got {type(data).__name__}")
    return data


def _parse_link(data: Any, where: str) -> LinkSpec:
    data = _mapping(data, where)
    reject_unknown_keys(data, _LINK_KEYS, where)
    try:
        return LinkSpec(
            bandwidth_bytes_per_s=_number(data, "bandwidth_gb_s", where) * GB,
            latency_s=_number(data, "latency_us", where) * MICRO,
            bus_efficiency=_number(data, "bus_efficiency", where),
        )
    except InputError as err:
        if err.field.startswith(where):
            raise
        raise InputError(f"{where}.{err.field}", err.reason) from None


def _parse_curve(data: Any, where: str) -> EfficiencyCurve:
    if not isinstance(data, list) or not data:
        raise InputError(where, "must be a non-empty list of [size, efficiency] pairs")
    points = []
    for i, point in enumerate(data):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
            raise InputError(f"{where}[{i}]", f"must be [size, efficiency], got {point!r}")
        points.append((float(point[0]), float(point[1])))
    try:
        return EfficiencyCurve(tuple(points))
    except InputError as err:
        raise InputError(where, err.reason) from None


def _parse_device(data: Any) -> DeviceSpec:
    where = "device"
    data = _mapping(data, where)
    reject_unknown_keys(data, _DEVICE_KEYS, where)
    peaks = _mapping(data.get("peak_tflops"), f"{where}.peak_tflops")
    reject_unknown_keys(peaks, set(DTYPES), f"{where}.peak_tflops")
    peak_pairs = []
    for dtype in DTYPES:
        if dtype in peaks and peaks[dtype] is not None:
            peak_pairs.append((dtype, _number(peaks, dtype, f"{where}.peak_tflops") * TERA))
    if "matmul_efficiency" not in data:
        raise InputError(f"{where}.matmul_efficiency", "missing")
    curve_data = data["matmul_efficiency"]
    by_dtype: tuple[tuple[str, EfficiencyCurve], ...] = ()
    if isinstance(curve_data, dict):  # one curve per dtype; the first listed is the default
        reject_unknown_keys(curve_data, set(DTYPES), f"{where}.matmul_efficiency")
        if not curve_data:
            raise InputError(f"{where}.matmul_efficiency", "needs at least one dtype's curve")
        by_dtype = tuple((dt, _parse_curve(c, f"{where}.matmul_efficiency.{dt}")) for dt, c in curve_data.items())
        default_curve = by_dtype[0][1]
    else:
        default_curve = _parse_curve(curve_data, f"{where}.matmul_efficiency")
    host_cores = data.get("host_cores", 0)
    if isinstance(host_cores, bool) or not isinstance(host_cores, int):
        raise InputError(f"{where}.host_cores", f"must be an integer, got {host_cores!r}")
    if not isinstance(data.get("name"), str):
        raise InputError(f"{where}.name", "missing or not a string")
    return DeviceSpec(
        name=data["name"],
        peak_flops_per_s=tuple(peak_pairs),
        hbm_bytes=_number(data, "hbm_gib", where) * GIB,
        hbm_bandwidth_bytes_per_s=_number(data, "hbm_bandwidth_gb_s", where) * GB,
        matmul_efficiency=default_curve,
        matmul_efficiency_by_dtype=by_dtype,
        memory_bound_efficiency=_number(data, "memory_bound_efficiency", where),
        kernel_overhead_s=_number(data, "kernel_overhead_us", where) * MICRO,
        reserved_bytes=_number(data, "reserved_gib", where) * GIB,
        fragmentation_fraction=_number(data, "fragmentation_fraction", where),
        host_cores=host_cores,
    )


def _parse_times(data: Any, where: str) -> tuple[tuple[float, float], ...]:
    """A collective's optional ``times_us: [[bytes, microseconds], ...]`` table."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise InputError(where, "must be a list of [bytes, microseconds] pairs")
    out = []
    for i, pair in enumerate(data):
        ok = (isinstance(pair, list) and len(pair) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair))
        if not ok:
            raise InputError(f"{where}[{i}]", f"must be [bytes, microseconds] (two numbers), got {pair!r}")
        out.append((float(pair[0]), float(pair[1]) * MICRO))
    return tuple(out)


def _parse_collectives(data: Any) -> tuple[MeasuredCollective, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise InputError("collectives", "must be a list")
    out = []
    for i, entry in enumerate(data):
        where = f"collectives[{i}]"
        entry = _mapping(entry, where)
        reject_unknown_keys(entry, _COLLECTIVE_KEYS, where)
        group = entry.get("group_size")
        if isinstance(group, bool) or not isinstance(group, int):
            raise InputError(f"{where}.group_size", f"must be an integer, got {group!r}")
        out.append(MeasuredCollective(
            op=str(entry.get("op")),
            group_size=group,
            latency_s=_number(entry, "latency_us", where) * MICRO,
            bus_bandwidth_bytes_per_s=_number(entry, "bus_bandwidth_gb_s", where) * GB,
            times_s=_parse_times(entry.get("times_us"), f"{where}.times_us"),
        ))
    return tuple(out)


def _parse_framework(data: Any) -> FrameworkSpec | None:
    """The optional ``framework:`` section: every key of :data:`FRAMEWORK_YAML` required but
    those in :data:`_FRAMEWORK_OPTIONAL` (their dataclass default when absent)."""
    if data is None:
        return None
    where = "framework"
    data = _mapping(data, where)
    reject_unknown_keys(data, {k for k, _ in FRAMEWORK_YAML.values()} | {t.yaml_key for t in RATE_TABLES}, where)
    values = {field: _number(data, key, where) * factor for field, (key, factor) in FRAMEWORK_YAML.items()
              if not (field in _FRAMEWORK_OPTIONAL and key not in data)}
    for table in RATE_TABLES:
        if table.yaml_key in data:
            values[table.field] = _parse_rate_table(table, data[table.yaml_key])
    return FrameworkSpec(**values)


@dataclass(frozen=True)
class RateTable:
    """How one of the framework's measured rate tables is spelt in YAML: ``framework.<yaml_key>:
    {kind: {dtype: [[x, forward rate, backward rate], ...]}}``, ``x`` in units of ``x_unit``,
    rates in units of ``rate_unit``, held in :class:`FrameworkSpec` ``field``."""

    field: str
    yaml_key: str
    kind_pattern: str
    kinds_text: str
    x_unit: float
    rate_unit: float
    x_name: str
    point: str


RATE_TABLES = (
    RateTable("elementwise_rates", "elementwise_gb_s", "|".join(ELEMENTWISE_CLASSES),
              f"one of {', '.join(ELEMENTWISE_CLASSES)}", 2**20, GB, "call sizes",
              "[call MiB, forward GB/s, backward GB/s]"),
    RateTable("attention_rates", "attention_gflops", rf"({'|'.join(ATTENTION_CLASSES)})_d[1-9][0-9]*",
              f"{' or '.join(ATTENTION_CLASSES)} and the head width, as mha_d64", 1.0, GIGA, "sequence lengths",
              "[sequence length, forward GFLOP/s, backward GFLOP/s]"),
)


def _parse_rate_table(table: RateTable, data: Any) -> tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...]:
    """``framework.<table.yaml_key>`` into ``FrameworkSpec.<table.field>`` (SI units)."""
    where = f"framework.{table.yaml_key}"
    out = []
    for kind, per_dtype in _mapping(data, where).items():
        for dtype, points in _mapping(per_dtype, f"{where}.{kind}").items():
            key = f"{where}.{kind}.{dtype}"
            require(isinstance(points, list) and all(
                isinstance(pt, list) and len(pt) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt) for pt in points),
                key, f"must be a list of {table.point}")
            out.append((str(kind), str(dtype), tuple(
                (float(x) * table.x_unit, float(f) * table.rate_unit, float(b) * table.rate_unit)
                for x, f, b in points)))
    return tuple(out)


def _loglog(points, x: float, column: int) -> float:
    """``points[i][column]`` interpolated in log-log at ``x`` over ``points[i][0]`` (sorted),
    the end values outside."""
    xs = [pt[0] for pt in points]
    if x <= xs[0]:
        return points[0][column]
    if x >= xs[-1]:
        return points[-1][column]
    i = bisect.bisect_right(xs, x)
    (x0, *r0), (x1, *r1) = points[i - 1], points[i]
    y0, y1 = r0[column - 1], r1[column - 1]
    w = math.log(x / x0) / math.log(x1 / x0)
    return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))


def parse_profile(data: Any, source: str = "profile") -> NodeSpec:
    """Build a :class:`NodeSpec` from a parsed YAML mapping; errors name the field."""
    data = _mapping(data, source)
    reject_unknown_keys(data, _TOP_KEYS, "profile")
    if not isinstance(data.get("name"), str):
        raise InputError("profile.name", "missing or not a string")
    node = _mapping(data.get("node"), "node")
    reject_unknown_keys(node, _NODE_KEYS, "node")
    gpus = node.get("gpus_per_node")
    if isinstance(gpus, bool) or not isinstance(gpus, int):
        raise InputError("node.gpus_per_node", f"must be an integer, got {gpus!r}")
    return NodeSpec(
        name=data["name"],
        description=str(data.get("description", "")),
        device=_parse_device(data.get("device")),
        gpus_per_node=gpus,
        intra_node=_parse_link(node.get("intra_node"), "node.intra_node"),
        inter_node=_parse_link(node.get("inter_node"), "node.inter_node"),
        collectives=_parse_collectives(data.get("collectives")),
        measured_on=str(data.get("measured_on", "")),
        framework=_parse_framework(data.get("framework")) if "framework" in data else None,
    )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def resolve_profile_path(name_or_path: str) -> Path:
    """A profile YAML path, or a name in ``hardware_profiles/``."""
    return resolve_named_yaml(name_or_path, PROFILES_DIR, field="hardware", kind="profile")


def load_profile(name_or_path: str) -> NodeSpec:
    """Load a profile by name (``hardware_profiles/<name>.yaml``) or path."""
    path = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError("hardware", f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_profile(data, source=str(path))
