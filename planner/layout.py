"""The rank layout, defined once: which global rank holds which pp/dp/cp/tp coordinate, the
groups along each axis and the expert groups, and where a group lands on the nodes. The cost
model uses it to decide which groups cross nodes, and the executor builds its device mesh from
it, so the predicted and the launched layout cannot drift apart.

Default order is Megatron-LM's: tp varies fastest, then cp, then dp, then pp
(``rank = ((pp_i * dp + dp_i) * cp + cp_i) * tp + tp_i``), which is also the row-major order of
``init_device_mesh(shape=(pp, dp, cp, tp), mesh_dim_names=("pp", "dp", "cp", "tp"))``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from planner.errors import require
from planner.plan import AXES, ParallelConfig


@dataclass(frozen=True)
class RankCoord:
    rank: int
    pp: int
    dp: int
    cp: int
    tp: int

    def get(self, axis: str) -> int:
        return getattr(self, axis)


def mesh_dims(parallel: ParallelConfig) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(mesh_dim_names, mesh_shape), slowest axis first: the arguments for ``init_device_mesh``."""
    require(not parallel.stage_tp, "stage_tp", "a tp per pipeline stage has no single device mesh")
    names = tuple(reversed(parallel.order.split("-")))
    return names, tuple(getattr(parallel, n) for n in names)


def rank_layout(parallel: ParallelConfig) -> tuple[RankCoord, ...]:
    """Coordinate of every global rank (row-major over :func:`mesh_dims`)."""
    names, shape = mesh_dims(parallel)
    coords = []
    for rank in range(parallel.world_size):
        rem = rank
        values = {}
        for name, size in zip(reversed(names), reversed(shape)):
            values[name] = rem % size
            rem //= size
        coords.append(RankCoord(rank=rank, **values))
    return tuple(coords)


def axis_groups(parallel: ParallelConfig, axis: str) -> list[list[int]]:
    """The rank groups along ``axis`` (ranks that differ only in that coordinate)."""
    require(axis in AXES, "axis", f"must be one of {AXES}")
    groups: dict[tuple, list[int]] = {}
    for coord in rank_layout(parallel):
        key = tuple(coord.get(a) for a in AXES if a != axis)
        groups.setdefault(key, []).append(coord.rank)
    return list(groups.values())


def expert_groups(parallel: ParallelConfig) -> tuple[list[list[int]], list[list[int]]]:
    """(expert-parallel groups, expert-data-parallel groups) of global ranks: within each dp
    group, ``ep`` neighbouring dp ranks hold one full set of experts between them; the ranks at
    the same position of each such block hold the same experts (Megatron-Core's layout)."""
    ep = parallel.ep
    ep_groups, edp_groups = [], []
    if parallel.expert_tp != parallel.tp:  # folded: a stage's tp x dp ranks as etp x ep x expert-dp
        etp, edp = parallel.expert_tp, parallel.expert_dp
        stages: dict[int, dict[int, int]] = {}
        for c in rank_layout(parallel):  # cp == 1: position t + tp*d in Megatron's expert order
            stages.setdefault(c.pp, {})[c.tp + parallel.tp * c.dp] = c.rank
        for at in stages.values():
            for a in range(etp):
                ep_groups += [[at[a + etp * (j + ep * k)] for j in range(ep)] for k in range(edp)]
                edp_groups += [[at[a + etp * (j + ep * k)] for k in range(edp)] for j in range(ep)]
        return ep_groups, edp_groups
    for dp_group in axis_groups(parallel, "dp"):  # ordered by dp coordinate
        ep_groups += [dp_group[i:i + ep] for i in range(0, len(dp_group), ep)]
        edp_groups += [dp_group[i::ep] for i in range(ep)]
    return ep_groups, edp_groups


def axis_stride(parallel: ParallelConfig, axis: str) -> int:
    """Distance in global rank between neighbours along ``axis``."""
    stride = 1
    for name in parallel.order.split("-"):
        if name == axis:
            return stride
        stride *= getattr(parallel, name)
    raise AssertionError(axis)


def group_node_spread(parallel: ParallelConfig, axis: str, gpus_per_node: int) -> tuple[int, int]:
    """(most ranks of one ``axis`` group on a node, nodes that group spans) under the rank layout.

    Uses the group holding rank 0 (all groups have the same shape when the node size is a
    multiple or a divisor of the inner axes' product, the usual case); O(size)."""
    return strided_group_spread(getattr(parallel, axis), axis_stride(parallel, axis), gpus_per_node)


def expert_group_spreads(parallel: ParallelConfig, gpus_per_node: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(ranks per node, nodes) of the expert-parallel group (``ep`` neighbouring dp ranks) and of
    the expert-data-parallel group (the ``dp/ep`` ranks holding the same experts, ``ep`` dp
    ranks apart)."""
    if parallel.expert_tp != parallel.tp:  # the groups of rank 0, from their members (see expert_groups)
        tp, etp, ep = parallel.tp, parallel.expert_tp, parallel.ep
        s_tp, s_dp = axis_stride(parallel, "tp"), axis_stride(parallel, "dp")

        def spread(positions) -> tuple[int, int]:
            per_node = Counter((i % tp * s_tp + i // tp * s_dp) // gpus_per_node for i in positions)
            return max(per_node.values()), len(per_node)
        return (spread(etp * j for j in range(ep)), spread(etp * ep * k for k in range(parallel.expert_dp)))
    stride = axis_stride(parallel, "dp")
    return (strided_group_spread(parallel.ep, stride, gpus_per_node),
            strided_group_spread(parallel.dp // parallel.ep, stride * parallel.ep, gpus_per_node))


@lru_cache(maxsize=65536)
def data_parallel_spread(parallel: ParallelConfig, gpus_per_node: int) -> tuple[int, int]:
    """(most ranks on a node, nodes spanned) of the ranks that hold the same parameters: the
    dp x cp group, over which gradients are reduced and ZeRO / FSDP state is sharded
    (Megatron-Core's data-parallel group with context parallelism; torchtitan's ``dp_shard_cp``
    mesh): context-parallel ranks see other tokens of the same sequences, not other weights."""
    return union_group_spread(((parallel.cp, axis_stride(parallel, "cp")), (parallel.dp, axis_stride(parallel, "dp"))),
                              gpus_per_node)


@lru_cache(maxsize=65536)
def union_group_spread(axes: tuple[tuple[int, int], ...], gpus_per_node: int) -> tuple[int, int]:
    """(most ranks on a node, nodes spanned) of the group spanned by several strided axes
    ``((size, stride), ...)`` from rank 0: one strided run where the outer axis continues the
    inner one, else counted."""
    axes = sorted(((n, s) for n, s in axes if n > 1), key=lambda a: a[1])
    if not axes:
        return 1, 1
    if len(axes) == 1:
        return strided_group_spread(axes[0][0], axes[0][1], gpus_per_node)
    (n1, s1), (n2, s2) = axes
    if s2 == n1 * s1:
        return strided_group_spread(n1 * n2, s1, gpus_per_node)
    per_node: dict[int, int] = {}
    for j in range(n2):
        for i in range(n1):
            node = (i * s1 + j * s2) // gpus_per_node
            per_node[node] = per_node.get(node, 0) + 1
    return max(per_node.values()), len(per_node)


@lru_cache(maxsize=65536)
def strided_group_spread(size: int, stride: int, gpus_per_node: int) -> tuple[int, int]:
    """(most ranks on a node, nodes spanned) of ``size`` ranks ``stride`` apart from rank 0;
    arithmetic when stride and node size divide each other, else counted (the search's hot path)."""
    if size == 1:
        return 1, 1
    if stride >= gpus_per_node and stride % gpus_per_node == 0:
        return 1, size
    if stride < gpus_per_node and gpus_per_node % stride == 0:
        per = min(size, gpus_per_node // stride)
        return per, -(-size // per)
    per_node: dict[int, int] = {}
    for i in range(size):
        node = (i * stride) // gpus_per_node
        per_node[node] = per_node.get(node, 0) + 1
    return max(per_node.values()), len(per_node)
