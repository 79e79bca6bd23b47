"""Hardware specs: devices, nodes, links and clusters, in SI units (FLOP/s, bytes, bytes/s,
seconds). Profiles are read from and written to YAML by :mod:`planner.profile_yaml`."""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import platform
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError, require
from planner.framework_spec import FrameworkSpec, loglog_interpolate
from planner.gemm_shapes import ShapeTable

PROFILES_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")
MAX_NODES = 1 << 20
"""Nodes of the largest cluster the tool accepts: more is an input error, not an allocation."""


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

    @functools.cached_property
    def _sizes(self) -> list[float]:
        return [p[0] for p in self.points]

    def __call__(self, size: float) -> float:
        pts = self.points
        if size <= pts[0][0]:
            return pts[0][1]
        if size >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right(self._sizes, size)
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
    the line continues from the largest point with the bus bandwidth.

    ranks_per_node: 0 for a group inside one node (the host's calibration); k >= 1 for a group
    spanning nodes with k of its ranks on each, measured while the node's other groups of that
    shape ran the same op at once, as an axis's groups do in a step (``calibrate --emulated``)."""

    op: str
    group_size: int
    latency_s: float
    bus_bandwidth_bytes_per_s: float
    times_s: tuple[tuple[float, float], ...] = ()
    ranks_per_node: int = 0

    def __post_init__(self) -> None:
        require(self.op in COLLECTIVE_OPS, "collectives.op", f"must be one of {COLLECTIVE_OPS}")
        require(self.group_size >= 2, "collectives.group_size", "must be >= 2")
        require(self.latency_s >= 0, "collectives.latency_us", "must be >= 0")
        require(self.bus_bandwidth_bytes_per_s > 0, "collectives.bus_bandwidth_gb_s", "must be > 0")
        k = self.ranks_per_node
        require(k >= 0 and (k == 0 or (self.group_size > k and self.group_size % k == 0)),
                "collectives.ranks_per_node", "must be 0 (inside one node) or a divisor k < group_size "
                f"(k ranks on each node the group spans), got {k} for group_size {self.group_size}")
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
        return loglog_interpolate(pts, size_bytes, 1)


@dataclass(frozen=True)
class AttentionKernel:
    """A fused attention kernel's measured speed on a device, BF16/FP16, by sequence length (the
    curves' sizes), as a fraction of the device's 16-bit peak: ``forward_causal`` (FLOPs counted
    as the kernel benchmarks count them, half of the s x s product under a causal mask),
    ``forward`` and ``backward`` without a mask (backward FLOPs = 2.5 x forward)."""

    name: str
    forward_causal: EfficiencyCurve
    forward: EfficiencyCurve
    backward: EfficiencyCurve

    def causal_rates(self, seq_len: float, peak_flops: float) -> tuple[float, float]:
        """(forward, backward) FLOP/s of a causal attention of ``seq_len`` on its halved FLOPs;
        the causal backward at the unmasked backward's rate times the forward's causal/unmasked
        ratio at that length (the source measures the backward unmasked only)."""
        fwd = self.forward_causal(seq_len)
        return fwd * peak_flops, self.backward(seq_len) * fwd / self.forward(seq_len) * peak_flops

    def ring_rates(self, seq_len: float, cp: int, peak_flops: float) -> tuple[float, float]:
        """(forward, backward) FLOP/s of a causal attention of ``seq_len`` split over ``cp`` ranks
        as Megatron-Core / Transformer Engine run it (``AttnFuncWithCPAndKVP2P``: a ring of cp
        kernel calls per rank on blocks ``seq_len / cp`` long, each sequence cut into 2 cp
        chunks so that every rank does the same work): the block with its own keys is causal,
        1/cp of its work; the other cp - 1 are unmasked. Each at the measured rate of its length;
        cp = 1 is :meth:`causal_rates`."""
        if cp <= 1:
            return self.causal_rates(seq_len, peak_flops)
        block = seq_len / cp
        causal_f, causal_b = self.causal_rates(block, peak_flops)
        full_f, full_b = self.forward(block) * peak_flops, self.backward(block) * peak_flops
        own = 1.0 / cp
        return 1.0 / (own / causal_f + (1 - own) / full_f), 1.0 / (own / causal_b + (1 - own) / full_b)

    def scaled(self, scale: float) -> "AttentionKernel":
        """This kernel at ``scale`` times its measured speed (each point at most the peak)."""
        def curve(c: EfficiencyCurve) -> EfficiencyCurve:
            return EfficiencyCurve(tuple((n, min(1.0, v * scale)) for n, v in c.points))

        return AttentionKernel(self.name, curve(self.forward_causal), curve(self.forward), curve(self.backward))


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
        peak * min(1, host_cores / ranks_on_host). 0 for GPUs (no sharing). A fraction where
        emulated nodes share one host's cores (:func:`planner.emulate.node_profile`).
    sm_count: streaming multiprocessors (compute units) of a GPU; a running collective holds
        some of them (:func:`planner.cost.comm.comm_sm_fraction`). 0: not stated (CPU profiles),
        and overlapped communication then takes nothing from the compute.
    attention_kernels: fused attention kernels measured on this device (:class:`AttentionKernel`);
        a runtime's kernel found here prices the attention core, else its GEMM efficiency does.
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
    host_cores: float = 0
    sm_count: int = 0
    matmul_efficiency_by_dtype: tuple[tuple[str, EfficiencyCurve], ...] = ()
    attention_kernels: tuple[AttentionKernel, ...] = ()
    matmul_shapes_by_dtype: tuple[tuple[str, ShapeTable], ...] = ()

    def __hash__(self) -> int:
        """The fields' hash, kept once computed: the cost model's memoised functions take the
        device (inside their rates) as a key, and its curves make it slow to hash each time."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict:
        """Pickled without the kept hash (strings hash differently in another process)."""
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def attention_kernel(self, name: str) -> AttentionKernel | None:
        return next((k for k in self.attention_kernels if k.name == name), None)

    def __post_init__(self) -> None:
        for dtype, _ in self.matmul_efficiency_by_dtype:
            require(dtype in DTYPES, f"device.matmul_efficiency.{dtype}", f"unknown dtype (allowed: {DTYPES})")
        for dtype, _ in self.matmul_shapes_by_dtype:
            require(dtype in DTYPES, f"device.matmul_shapes.{dtype}", f"unknown dtype (allowed: {DTYPES})")
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
        require(self.sm_count >= 0, "device.sm_count", "must be >= 0")

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

    def gemm_efficiency(self, dtype: str, flops: float, shape: tuple[float, float, float] | None = None) -> float:
        """Fraction of ``dtype``'s peak a GEMM of ``flops`` reaches on its dtype's curve
        (:meth:`matmul_curve`), times how much faster or slower its ``shape`` (M, N, K) ran
        than the curve where the profile measured GEMMs of that dtype by shape
        (:class:`planner.gemm_shapes.ShapeTable`). An FP8 GEMM without a curve of its own takes the time of a 16-bit
        GEMM of half its FLOPs: twice the arithmetic rate, the same fixed costs (prologue,
        epilogue, wave tails). Checked on a public table that measured both (tile-ai/tilelang
        benchmark/matmul and matmul_fp8 READMEs, H800 SXM, M = N = 8192, K 256-16384: FP8 at K
        against FP16 at K/2 within about 10%)."""
        own = any(name == dtype for name, _ in self.matmul_efficiency_by_dtype)
        if dtype == "fp8" and not own:
            return self.matmul_curve(dtype)(flops / 2)
        curve = self.matmul_curve(dtype)
        eff = curve(flops)
        if shape is not None:
            table = next((t for name, t in self.matmul_shapes_by_dtype if name == dtype), None)
            if table is not None:
                eff = min(1.0, eff * table.ratio(curve, *shape))
        return eff

    def default_precision(self) -> str:
        """The training dtype a user gets without asking: bf16, else fp16 (V100), else fp32 (CPU)."""
        for dtype in ("bf16", "fp16", "fp32"):
            if self.supports(dtype):
                return dtype
        return self.peak_flops_per_s[0][0]

    def supports(self, dtype: str) -> bool:
        return any(name == dtype for name, _ in self.peak_flops_per_s)


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
    memory_sources: tuple[tuple[str, float, float], ...] = ()
    """Fitted by ``clusterplan fit``: (memory source, factor, offset bytes) with which a reading
    of that source relates to the cost model's peak: ``reading = factor * peak + offset``."""
    inter_node_shared: bool = False
    """The node's ranks share one inter-node link (an emulated node's veth, a host with one NIC)
    and ``inter_node`` is each rank's 1/gpus_per_node of it; False: a NIC per rank (DGX rails)."""
    link_cpu_s_per_byte: tuple[float, float] = (0.0, 0.0)
    """CPU ranks: host CPU seconds one byte costs (inter-node, intra-node), both TCP stacks and
    the path between included (measured by ``clusterplan calibrate --emulated``,
    :mod:`planner.calibrate.link_cpu`); 0 where not measured."""

    def __post_init__(self) -> None:
        require(self.gpus_per_node >= 1, "node.gpus_per_node", "must be >= 1")
        for source, factor, offset in self.memory_sources:
            require(math.isfinite(factor) and factor > 0 and math.isfinite(offset), f"memory_sources.{source}",
                    "factor must be > 0 and offset finite")

    def memory_reading_bytes(self, peak_bytes: float, source: str) -> float:
        """What ``source`` (allocated | reserved | device_used) would read for a predicted peak."""
        for name, factor, offset in self.memory_sources:
            if name == source:
                return factor * peak_bytes + offset
        raise InputError("memory_source", f"{self.name} has no fitted memory source {source!r} (fitted: "
                                          f"{', '.join(n for n, _, _ in self.memory_sources) or 'none'}; "
                                          "clusterplan fit --runs writes them)")

    def inter_node_share(self, senders: float) -> float:
        """How many times its ``inter_node`` bandwidth a rank gets while ``senders`` of the node's
        ranks send across nodes at once: 1 with a NIC per rank, ``gpus_per_node / senders`` on
        a shared link."""
        if not self.inter_node_shared:
            return 1.0
        return self.gpus_per_node / max(1.0, min(float(self.gpus_per_node), senders))

    def with_gpus_per_node(self, gpus_per_node: int) -> "NodeSpec":
        """This node with ``gpus_per_node`` ranks; its tables of groups spanning nodes were measured
        with the node's own rank count running at once, so another count drops them."""
        require(gpus_per_node >= 1, "gpus_per_node", "must be >= 1")
        if gpus_per_node == self.gpus_per_node:
            return self
        kept = tuple(c for c in self.collectives if not c.ranks_per_node)
        return dataclasses.replace(self, gpus_per_node=gpus_per_node, collectives=kept)

    def measured_collective(self, op: str, group_size: int, ranks_per_node: int = 0) -> MeasuredCollective | None:
        """The measured entry for ``op`` at ``group_size``: inside one node (``ranks_per_node``
        0) the nearest measured size at or below, else the smallest above; for a group spanning
        nodes with ``ranks_per_node`` ranks on each, only an entry measured on that very layout.
        None when the profile has none."""
        if ranks_per_node:
            return next((c for c in self.collectives if c.op == op and c.group_size == group_size
                         and c.ranks_per_node == ranks_per_node), None)
        entries = sorted((c for c in self.collectives if c.op == op and not c.ranks_per_node),
                         key=lambda c: c.group_size)
        if not entries:
            return None
        below = [c for c in entries if c.group_size <= group_size]
        return below[-1] if below else entries[0]


@dataclass(frozen=True)
class NodeGroup:
    node: NodeSpec
    n_nodes: int

    def __post_init__(self) -> None:
        require(isinstance(self.n_nodes, int) and not isinstance(self.n_nodes, bool), "nodes",
                f"must be an integer, got {self.n_nodes!r}")
        require(1 <= self.n_nodes <= MAX_NODES, "nodes", f"must be in 1..{MAX_NODES:,} (beyond any real cluster)")


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


def host_cpu_model() -> str:
    """This host's CPU model as ``/proc/cpuinfo`` names it (what ``calibrate`` records)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
