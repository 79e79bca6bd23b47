"""Collectives of CPU ranks over several nodes: torch.distributed's gloo backend, by its algorithms.

gloo runs one ring in group-rank order, with no hierarchy over nodes and no second channel:

* all-reduce: ``gloo/allreduce.cc`` ``ring`` (the default algorithm): a reduce-scatter then an
  all-gather, ``2(n-1)`` steps, each moving one chunk of ``S/n`` over every ring edge at once;
* all-gather: ``gloo/allgather.cc``, a ring of ``n-1`` such steps;
* reduce-scatter: ``ProcessGroupGloo::reduce_scatter_tensor_coalesced`` all-reduces the whole
  input and keeps its chunk, so it costs an all-reduce of ``S``;
* broadcast: ``gloo/broadcast.cc``, a binomial tree from the root: in round ``i`` the virtual
  ranks below ``2^i`` send the whole message to the rank ``2^i`` above them.

Between nodes: every rank of a node is in one group of each axis, and the groups of an axis run
their collective at once (the executor issues them in the same step), so where the node's ranks
share one link (``NodeSpec.inter_node_shared``) the ``ranks_per_node/k`` groups with ``k`` members
on it each get ``k`` ranks' share of it; with a NIC per rank, one rank's. A ring step lasts as
long as its slowest edge: an edge between nodes carries one chunk at that share, an edge inside a
node one chunk over the intra-node link. A tree's messages leaving one node share the same link.
"""
from __future__ import annotations

from functools import lru_cache

from planner.hardware import LinkSpec, NodeSpec


def _step_s(link: LinkSpec, chunk_bytes: float, share: float) -> float:
    return link.latency_s + chunk_bytes / (link.effective_bandwidth_bytes_per_s * share)


def _layout(group, node: NodeSpec) -> tuple[int, int, float, float]:
    """(ranks n, ranks per node k, the axis's groups on a node crossing at once, the share of the
    per-rank ``inter_node`` bandwidth each of them gets: :meth:`NodeSpec.inter_node_share`) of a
    :class:`planner.cost.comm.GroupShape` spanning nodes."""
    n = group.size
    k = min(group.ranks_per_node, n)
    groups = node.gpus_per_node / k
    return n, k, groups, node.inter_node_share(groups)


def ring_time(op: str, size_bytes: float, group, node: NodeSpec) -> float:
    """One gloo ``op`` of ``size_bytes`` (the full tensor) over ``group`` (spanning nodes); an
    edge between nodes runs at its share of the node's link.

    With the host CPU a byte costs (``NodeSpec.link_cpu_s_per_byte``: between nodes, inside one)
    the ring is also bounded by a node's cores: each step its rings (the axis's groups, running at
    once) move a chunk over one edge leaving it and ``k-1`` edges inside it."""
    n, k, groups, share = _layout(group, node)
    if op == "reduce_scatter":
        op = "all_reduce"
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    chunk = size_bytes / n
    between = _step_s(node.inter_node, chunk, share)
    within = _step_s(node.intra_node, chunk, 1.0) if k > 1 else 0.0
    link_s = steps * max(between, within)
    across, inside = node.link_cpu_s_per_byte
    node_cores = node.device.host_cores
    if node_cores <= 0 or not (across or inside):
        return link_s
    cpu_s = steps * chunk * groups * (across + (k - 1) * inside) / node_cores
    return max(link_s, cpu_s)


@lru_cache(maxsize=4096)
def _tree_messages(n: int, k: int, root: int) -> tuple[int, int, int]:
    """(most messages leaving one node, most messages one rank sends inside its node, rounds) of
    a binomial tree broadcast from group rank ``root`` over ``n`` ranks, ``k`` per node in group
    order."""
    rounds = max(0, (n - 1).bit_length())
    leaving: dict[int, int] = {}
    sent: dict[int, int] = {}
    for i in range(rounds):
        for v in range(min(1 << i, n)):
            if v + (1 << i) >= n:
                continue
            src, dst = (v + root) % n, (v + (1 << i) + root) % n
            if src // k != dst // k:
                leaving[src // k] = leaving.get(src // k, 0) + 1
            else:
                sent[src] = sent.get(src, 0) + 1
    return max(leaving.values(), default=0), max(sent.values(), default=0), rounds


def broadcast_all_s(size_bytes: float, calls: int, group, node: NodeSpec) -> float:
    """Every rank of ``group`` (spanning nodes) broadcasting its ``1/n`` share of ``size_bytes``
    to the others, in ``calls`` broadcasts of equal size (ZeroRedundancyOptimizer's parameter
    sync: each owner broadcasts its parameters one tensor at a time). The roots take turns
    evenly; each broadcast's time is its busiest node link (at its share of the link) or rank,
    inside a node, plus one latency per round."""
    n, k, _, share = _layout(group, node)
    if n <= 1 or size_bytes <= 0:
        return 0.0
    intra, inter = node.intra_node, node.inter_node
    message = size_bytes / max(1, calls)
    roots = range(min(n, k)) if n % k == 0 else range(n)  # periodic in the root by whole nodes
    total = 0.0
    for root in roots:
        leaving, sent, rounds = _tree_messages(n, k, root)
        link_s = leaving * message / (inter.effective_bandwidth_bytes_per_s * share)
        rank_s = sent * message / intra.effective_bandwidth_bytes_per_s
        total += rounds * max(inter.latency_s, intra.latency_s) + max(link_s, rank_s)
    return total / len(roots) * max(1, calls)
