"""Collective communication times: ring alpha-beta over intra- and inter-node links.

Ring collectives on n ranks and S bytes (Thakur et al. 2005; Patarasuk & Yuan 2009; nccl-tests
PERFORMANCE.md): all-reduce moves ``2(n-1)/n * S`` bytes per rank, all-gather and reduce-scatter
``(n-1)/n * S`` (S = the full, gathered tensor), all-to-all ``(n-1)/n * S`` (S = one rank's
buffer; off-node shares cross the rank's own NIC, the others NVLink, at once); send/recv ``S``.
nccl-tests call ``S/t`` the algorithm bandwidth and the ring-corrected figure the bus bandwidth.

A group spanning several nodes runs NCCL's rings, one channel per NIC (multi-rail): each ring
leaves a node once, so a rank's ring traffic ``f * S`` goes ``1/k`` over the NICs and
``(k-1)/k`` over NVLink at once, with k ranks of the group per node; the slower of the two
bounds it: ``f * S * max((k-1)/k / intra, 1/(k * inter))``. Without rails (a runtime's
``multi_rail=False``) the intra-node part and then every rank's inter-node share cross in turn:
``intra(S) + inter(S)``. Latency follows NCCL's ring model
(src/graph/tuning.cc): ``n-1`` steps for all-gather/reduce-scatter (``2(n-1)`` for all-reduce), of
which ``N-1`` (``2(N-1)``) cross the network at the inter-node per-step latency, the rest at the
intra-node one. An all-reduce over nodes takes NCCL's double binary tree instead where that is
faster: ``2 (log2 N inter + (k-1) intra)`` latency at 0.92 of the ring's bus bandwidth.

CPU ranks (gloo) over several nodes run gloo's own algorithms instead (:mod:`planner.cost.gloo`).

A profile's measured ``collectives`` entry for (op, group size) replaces the link formula for a
group inside one node (the host's tables), and an entry measured across nodes
(``ranks_per_node`` k, ``calibrate --emulated``) for a group of that size with k ranks on each
of its nodes:
``time = latency + bus_bytes / bus_bandwidth`` (:meth:`NodeSpec.measured_collective`), or, where
the entry carries its measured table, the table interpolated in log-log
(:meth:`planner.hardware.MeasuredCollective.time_s`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from planner.cost import gloo
from planner.errors import require
from planner.hardware import COLLECTIVE_OPS, DeviceSpec, NodeSpec

COLLECTIVE_SMS = 16
"""SMs a running NCCL collective holds: "If you are on DGX with 8 NICs and a top speed of 190
GB/s, then it would use 16 SMs", and "NCCL CTAs won't share an SM with compute kernels"
(S. Jeaugey, NVIDIA/nccl#689). The same count is taken for NVLink-only groups and for RCCL."""


def comm_sm_fraction(device: DeviceSpec) -> float:
    """Share of the device's SMs a collective overlapped with compute takes from it (0 where
    the profile states no SM count: CPU ranks, where nothing overlaps anyway)."""
    return min(1.0, COLLECTIVE_SMS / device.sm_count) if device.sm_count else 0.0


def overlapped_exposed_s(device: DeviceSpec, comm_s: float, compute_s: float) -> float:
    """What ``comm_s`` of communication run beside ``compute_s`` of compute adds to the compute:
    while both run the compute has ``1 - f`` of the SMs (f: :func:`comm_sm_fraction`), so
    they end at ``max(comm, compute + f * comm)`` and the step sees
    ``max(comm - compute, f * comm)``."""
    if comm_s <= 0.0:
        return 0.0
    return max(comm_s - compute_s, comm_sm_fraction(device) * comm_s)


@dataclass(frozen=True)
class GroupShape:
    """Where a communication group lands: ``size`` ranks, at most ``ranks_per_node`` of them
    on one node, spread over ``nodes`` nodes (from :func:`planner.layout.group_node_spread`)."""

    size: int
    ranks_per_node: int
    nodes: int

    def __post_init__(self) -> None:
        require(self.size >= 1 and self.ranks_per_node >= 1 and self.nodes >= 1, "group",
                "size, ranks_per_node and nodes must be >= 1")


def ring_bus_factor(op: str, n: int) -> float:
    """Bytes each rank moves per byte of S in a ring ``op`` over ``n`` ranks."""
    require(op in COLLECTIVE_OPS, "op", f"must be one of {COLLECTIVE_OPS}")
    if op == "send_recv":
        return 1.0
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


def _ring_steps(op: str, n: int) -> int:
    if op == "send_recv":
        return 1
    return 2 * (n - 1) if op == "all_reduce" else (n - 1)


def collective_time(op: str, size_bytes: float, group: GroupShape, node: NodeSpec,
                    multi_rail: bool = True) -> float:
    """Seconds for one ``op`` of ``size_bytes`` (the full tensor) over ``group`` on ``node`` links.

    send_recv: one message between two ranks (intra-node when ``group.nodes == 1``).
    multi_rail=False: the inter-node phase is not split over the node's k NICs (a flat ring).
    """
    n = group.size
    if size_bytes <= 0 or (n <= 1 and op != "send_recv"):
        return 0.0
    if group.nodes <= 1:  # the host's tables price groups inside a node
        measured = node.measured_collective(op, n if op != "send_recv" else 2)
    else:  # tables measured across nodes price only the layout they were measured on
        spread = group.size == group.ranks_per_node * group.nodes
        measured = node.measured_collective(op, n, group.ranks_per_node) if spread else None
    if measured is not None:
        return measured.time_s(size_bytes, ring_bus_factor(op, n))
    intra, inter = node.intra_node, node.inter_node
    if node.device.host_cores > 0 and group.nodes > 1 and op in ("all_reduce", "all_gather", "reduce_scatter"):
        return gloo.ring_time(op, size_bytes, group, node)  # CPU ranks: gloo's one flat ring, no rails
    if op == "send_recv":
        link = inter if group.nodes > 1 else intra
        return link.latency_s + size_bytes / link.effective_bandwidth_bytes_per_s
    k = min(group.ranks_per_node, n)
    if op == "all_to_all":
        # each rank sends S/n to every peer at once (NCCL grouped send/recv): the k-1 shares to
        # its node's peers over NVLink while the n-k others leave through its own NIC
        local = (k - 1) / n * size_bytes / intra.effective_bandwidth_bytes_per_s
        remote = (n - k) / n * size_bytes / inter.effective_bandwidth_bytes_per_s
        return (inter.latency_s if group.nodes > 1 else intra.latency_s) + max(local, remote)
    N = group.nodes
    if N <= 1:
        return (_ring_steps(op, n) * intra.latency_s
                + ring_bus_factor(op, n) * size_bytes / intra.effective_bandwidth_bytes_per_s)
    inter_steps = 2 * (N - 1) if op == "all_reduce" else (N - 1)
    intra_steps = max(0, _ring_steps(op, n) - inter_steps)
    latency = intra_steps * intra.latency_s + inter_steps * inter.latency_s
    if multi_rail:
        # NCCL's rings, one channel per NIC: each ring leaves a node once, through its own NIC,
        # so a NIC carries 1/k of every rank's ring traffic and NVLink the other (k-1)/k; both
        # stream at once and the slower bounds the ring (busbw = k NICs: "a top speed of 190
        # GB/s" with 8 HDR NICs per DGX A100, NVIDIA/nccl#689; nccl-tests#119: 4 HDR NICs per
        # 8 A100 reach 85-96 of 100 GB/s)
        per_byte = max((k - 1) / k / intra.effective_bandwidth_bytes_per_s,
                       1.0 / (k * inter.effective_bandwidth_bytes_per_s))
        ring = latency + ring_bus_factor(op, n) * size_bytes * per_byte
        if op != "all_reduce":
            return ring
        # NCCL's double binary tree where it is faster (small messages at many nodes): a chain
        # through the node's k ranks and a tree over the nodes, up and down; NCCL's tuning model
        # gives it 0.92 of the ring's bus bandwidth (src/graph/tuning.cc)
        tree_latency = 2 * (math.ceil(math.log2(N)) * inter.latency_s + (k - 1) * intra.latency_s)
        return min(ring, tree_latency + ring_bus_factor(op, n) * size_bytes * per_byte / 0.92)
    # hierarchical without rails: intra-node part on S, then every rank's inter-node share over its own NIC
    bw_time = (ring_bus_factor(op, k) * size_bytes / intra.effective_bandwidth_bytes_per_s
               + ring_bus_factor(op, N) * size_bytes / inter.effective_bandwidth_bytes_per_s)
    return latency + bw_time


def p2p_time(size_bytes: float, crosses_nodes: bool, node: NodeSpec, senders_per_node: float | None = None) -> float:
    """One send/recv of ``size_bytes`` between neighbouring ranks; across nodes while
    ``senders_per_node`` of a node's ranks send across at once (None: all of them), which matters
    where they share one link (:meth:`NodeSpec.inter_node_share`)."""
    if not crosses_nodes:
        return collective_time("send_recv", size_bytes, GroupShape(2, 2, 1), node)
    link = node.inter_node
    share = node.inter_node_share(node.gpus_per_node if senders_per_node is None else senders_per_node)
    return link.latency_s + size_bytes / (link.effective_bandwidth_bytes_per_s * share)
