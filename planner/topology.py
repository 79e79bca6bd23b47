"""The cluster as a graph, and where each parallel axis's rank groups land on it.

:func:`cluster_graph` builds a networkx graph: GPUs; one NVLink/NVSwitch island per node
(``nodeN.nvswitch``); one NIC per GPU; leaf switches (``fabric.nodes_per_leaf`` nodes each);
a spine per fabric domain when a domain has several leaves; and, when the cluster file gives
``fabric.between`` overrides, one domain per node type with spine-to-spine links of the given
bandwidth. Edge ``bandwidth_bytes_per_s`` is the **per-GPU share** of the link (NVLink and NIC
line rate per GPU from the NodeSpec links; a leaf uplink carries NIC bandwidth / oversubscription
per GPU), so the bandwidth between two GPUs is the widest-path bottleneck (:func:`pair_bandwidth`).

:func:`place_groups` assigns global ranks to GPUs and reports, per axis, whether its groups cross
nodes and their bottleneck bandwidth. GPUs are first put in a locality order by **greedy
recursive bisection by bandwidth** (:func:`gpu_order`): single-linkage clustering on link
bandwidth — at each bandwidth level (fastest first) the components joined by links at least that
fast are the islands, nested into the next slower level. For a tree-shaped fabric (GPU -> NVSwitch
-> NIC -> leaf -> spine), whose minimum bisection always cuts its weakest level, this is the order
a min-cut recursive bisection (METIS-style) produces, computed in O(V+E) per level instead of a
partitioner call per split; for the usual layouts it is the ClusterSpec numbering (group by group,
node by node), so the placement for ``ParallelConfig.order`` is exactly planner.plan.rank_layout.
Then the rank layout (order of axes, fastest first) puts the innermost axes inside islands;
:func:`place_groups` evaluates all 24 orders and suggests the best: first no pipeline stage mixing
node types, then — with ``axis_bytes`` (bytes each rank sends per step on each axis, e.g.
:func:`estimate_axis_bytes` or the cost model's) — the least sum of bytes / bottleneck bandwidth,
else the widest links for tp, then cp, dp, pp (Megatron-LM's priority, Narayanan et al. SC'21
Sec. 3.3: tensor parallel inside a node, pipeline point-to-point across nodes).
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from planner.cluster import as_cluster
from planner.errors import InputError
from planner.graph import activation_elem_bytes
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import AXES, DEFAULT_ORDER, ParallelConfig, axis_stride

PRIORITY = ("tp", "cp", "dp", "pp")
ALL_ORDERS = tuple("-".join(p) for p in itertools.permutations(AXES))


def cluster_graph(cluster: ClusterSpec, *, nodes_per_leaf: int | None = None,
                  oversubscription: float | None = None) -> nx.Graph:
    """The cluster as an undirected networkx graph (see the module docstring).

    Node attributes: ``kind`` (gpu, nvswitch, nic, leaf, spine); GPUs also ``gpu`` (global index,
    ClusterSpec numbering), ``node`` (global node index), ``node_type`` (profile name), ``local``.
    Edge attributes: ``bandwidth_bytes_per_s`` (per-GPU share), ``latency_s``, ``kind``.
    ``graph.graph``: ``cluster`` (the Cluster), ``world_size``, ``node_types`` ({name: NodeSpec}).
    """
    c = as_cluster(cluster)
    fabric = c.fabric
    if nodes_per_leaf is not None or oversubscription is not None:
        fabric = dataclasses.replace(
            fabric,
            nodes_per_leaf=fabric.nodes_per_leaf if nodes_per_leaf is None else nodes_per_leaf,
            oversubscription=fabric.oversubscription if oversubscription is None else oversubscription)
        c = dataclasses.replace(c, fabric=fabric)
    types = {node.name: node for node in c.node_types}
    g = nx.Graph(cluster=c, world_size=c.world_size, node_types=types)
    split_domains = bool(fabric.between) and len(types) > 1
    domain_names = list(types) if split_domains else ["all"]
    domain_nodes: dict[str, list[tuple[int, Any]]] = {d: [] for d in domain_names}
    gpu = node_index = 0
    for group in c.groups:
        spec = group.node
        for _ in range(group.n_nodes):
            island = f"node{node_index}.nvswitch"
            g.add_node(island, kind="nvswitch", node=node_index, node_type=spec.name)
            for local in range(spec.gpus_per_node):
                name, nic = f"gpu{gpu}", f"node{node_index}.nic{local}"
                g.add_node(name, kind="gpu", gpu=gpu, node=node_index, node_type=spec.name, local=local)
                g.add_node(nic, kind="nic", node=node_index, node_type=spec.name)
                g.add_edge(name, island, kind="nvlink", bandwidth_bytes_per_s=spec.intra_node.bandwidth_bytes_per_s,
                           latency_s=spec.intra_node.latency_s / 2)
                g.add_edge(name, nic, kind="pcie", bandwidth_bytes_per_s=spec.inter_node.bandwidth_bytes_per_s,
                           latency_s=0.0)
                gpu += 1
            domain_nodes[spec.name if split_domains else "all"].append((node_index, spec))
            node_index += 1
    spines = {}
    for d, members in domain_nodes.items():
        per_leaf = fabric.nodes_per_leaf or max(1, len(members))
        n_leaves = math.ceil(len(members) / per_leaf)
        leaves = []
        for li in range(n_leaves):
            leaf = f"leaf.{d}.{li}"
            g.add_node(leaf, kind="leaf", domain=d)
            leaves.append(leaf)
            under = members[li * per_leaf:(li + 1) * per_leaf]
            for n, spec in under:
                for local in range(spec.gpus_per_node):
                    g.add_edge(f"node{n}.nic{local}", leaf, kind="ib",
                               bandwidth_bytes_per_s=spec.inter_node.bandwidth_bytes_per_s,
                               latency_s=spec.inter_node.latency_s / 2)
            g.nodes[leaf]["uplink_bytes_per_s"] = (
                min(spec.inter_node.bandwidth_bytes_per_s for _, spec in under) / fabric.oversubscription)
        if n_leaves > 1 or split_domains:
            spine = f"spine.{d}"
            g.add_node(spine, kind="spine", domain=d)
            spines[d] = spine
            for leaf in leaves:
                g.add_edge(leaf, spine, kind="uplink", bandwidth_bytes_per_s=g.nodes[leaf]["uplink_bytes_per_s"],
                           latency_s=0.0)
    if split_domains:
        for a, b in itertools.combinations(domain_names, 2):
            link = fabric.link_between(types[a], types[b])
            g.add_edge(spines[a], spines[b], kind="interdomain", bandwidth_bytes_per_s=link.bandwidth_bytes_per_s,
                       latency_s=0.0)
    return g


# ----- bandwidth between GPUs -------------------------------------------------------------------
def widest_path_bandwidth(g: nx.Graph, src: str, dst: str) -> float:
    """Bottleneck bandwidth of the widest path from ``src`` to ``dst`` (max-min Dijkstra)."""
    if src == dst:
        return math.inf
    best = {src: math.inf}
    heap = [(-math.inf, src)]
    while heap:
        neg, u = heapq.heappop(heap)
        width = -neg
        if u == dst:
            return width
        if width < best.get(u, 0.0):
            continue
        for v, data in g[u].items():
            w = min(width, data["bandwidth_bytes_per_s"])
            if w > best.get(v, 0.0):
                best[v] = w
                heapq.heappush(heap, (-w, v))
    return 0.0


@dataclass(frozen=True)
class _Arrays:
    node: np.ndarray        # per GPU: global node index
    type_index: np.ndarray  # per GPU: index into type_names
    leaf: np.ndarray        # per GPU: leaf index
    intra: np.ndarray       # per GPU: NVLink bandwidth
    nic: np.ndarray         # per GPU: NIC bandwidth
    leaf_bw: np.ndarray     # leaf x leaf widest-path bandwidth through the switches (inf on the diagonal)
    type_names: tuple[str, ...]
    order: np.ndarray       # gpu_order


def _arrays(g: nx.Graph) -> _Arrays:
    cached = g.graph.get("_arrays")
    if cached is not None:
        return cached
    gpus = sorted((d["gpu"], n) for n, d in g.nodes(data=True) if d["kind"] == "gpu")
    type_names = tuple(g.graph["node_types"])
    leaves = sorted(n for n, d in g.nodes(data=True) if d["kind"] == "leaf")
    leaf_index = {name: i for i, name in enumerate(leaves)}
    node, tix, leaf, intra, nic = [], [], [], [], []
    for _, name in gpus:
        d = g.nodes[name]
        node.append(d["node"])
        tix.append(type_names.index(d["node_type"]))
        nic_name = f"node{d['node']}.nic{d['local']}"
        leaf_name = next(v for v in g[nic_name] if g.nodes[v]["kind"] == "leaf")
        leaf.append(leaf_index[leaf_name])
        intra.append(g.edges[name, f"node{d['node']}.nvswitch"]["bandwidth_bytes_per_s"])
        nic.append(g.edges[name, nic_name]["bandwidth_bytes_per_s"])
    switches = g.subgraph([n for n, d in g.nodes(data=True) if d["kind"] in ("leaf", "spine")])
    leaf_bw = np.full((len(leaves), len(leaves)), math.inf)
    for i, a in enumerate(leaves):
        for j, b in enumerate(leaves):
            if i < j:
                leaf_bw[i, j] = leaf_bw[j, i] = widest_path_bandwidth(switches, a, b)
    arrays = _Arrays(np.array(node), np.array(tix), np.array(leaf), np.array(intra, dtype=float),
                     np.array(nic, dtype=float), leaf_bw, type_names, gpu_order(g))
    g.graph["_arrays"] = arrays
    return arrays


def pair_bandwidth(g: nx.Graph, gpus_a, gpus_b) -> np.ndarray:
    """Per-GPU bandwidth between GPU indices ``gpus_a[i]`` and ``gpus_b[i]`` (vectorised widest
    path on the tree: same node -> NVLink; else the slower NIC, and the switch path between
    their leaves)."""
    arr = _arrays(g)
    a, b = np.asarray(gpus_a), np.asarray(gpus_b)
    same_node = arr.node[a] == arr.node[b]
    net = np.minimum(arr.nic[a], arr.nic[b])
    across = np.minimum(net, arr.leaf_bw[arr.leaf[a], arr.leaf[b]])
    out = np.where(same_node, np.maximum(arr.intra[a], net), across)
    return np.where(a == b, math.inf, out)


def gpu_order(g: nx.Graph) -> np.ndarray:
    """GPU indices in locality order by greedy recursive bisection by bandwidth (module doc)."""
    names = list(g.nodes)
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[u], index[v], d["bandwidth_bytes_per_s"]) for u, v, d in g.edges(data=True)]
    u = np.array([e[0] for e in edges])
    v = np.array([e[1] for e in edges])
    w = np.array([e[2] for e in edges])
    gpu_nodes = sorted((d["gpu"], index[n]) for n, d in g.nodes(data=True) if d["kind"] == "gpu")
    gpu_ids = np.array([gi for gi, _ in gpu_nodes])
    gpu_idx = np.array([ni for _, ni in gpu_nodes])
    keys = []
    for level in sorted(set(w.tolist())):  # slowest level (coarsest islands) first
        keep = w >= level
        m = coo_matrix((np.ones(keep.sum()), (u[keep], v[keep])), shape=(len(names), len(names)))
        _, labels = connected_components(m, directed=False)
        comp = labels[gpu_idx]
        first = {}
        for gid, c in zip(gpu_ids, comp):  # number components by their smallest GPU index
            first.setdefault(c, gid)
        keys.append(np.array([first[c] for c in comp]))
    keys.append(gpu_ids)
    return gpu_ids[np.lexsort(keys[::-1])]


# ----- placement ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisPlacement:
    """Where one axis's groups land.

    crosses_nodes: some group of this axis spans more than one node.
    max_nodes_spanned: the most nodes one group spans.
    bottleneck_bandwidth_bytes_per_s: slowest per-GPU link between ring neighbours of any group
        (pp: between consecutive stages); inf for a size-1 axis.
    """

    axis: str
    size: int
    crosses_nodes: bool
    max_nodes_spanned: int
    bottleneck_bandwidth_bytes_per_s: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Placement:
    """Ranks on GPUs for one rank-layout order.

    rank_to_gpu: GPU index (ClusterSpec numbering) of each global rank.
    axes: one :class:`AxisPlacement` per axis, in planner.plan.AXES order.
    stage_node_types: node types (profile names) under each pipeline stage.
    mixed_stages: pipeline stages whose GPUs are of more than one node type.
    comm_time_s: sum over axes of axis_bytes / bottleneck bandwidth when axis_bytes was given.
    suggested_order: the best order found (== order when it is already the best).
    """

    order: str
    rank_to_gpu: tuple[int, ...]
    axes: tuple[AxisPlacement, ...]
    stage_node_types: tuple[tuple[str, ...], ...]
    mixed_stages: int
    comm_time_s: float
    suggested_order: str

    def axis(self, name: str) -> AxisPlacement:
        for a in self.axes:
            if a.axis == name:
                return a
        raise KeyError(name)

    def groups(self, parallel: ParallelConfig, axis: str) -> list[list[int]]:
        """GPU indices of each group along ``axis`` (planner.plan.axis_groups mapped to GPUs)."""
        from planner.plan import axis_groups

        p = dataclasses.replace(parallel, order=self.order)
        return [[self.rank_to_gpu[r] for r in grp] for grp in axis_groups(p, axis)]

    def to_dict(self) -> dict:
        return {
            "order": self.order,
            "suggested_order": self.suggested_order,
            "axes": [a.to_dict() for a in self.axes],
            "stage_node_types": [list(t) for t in self.stage_node_types],
            "mixed_stages": self.mixed_stages,
            "comm_time_s": self.comm_time_s,
        }


def _place(g: nx.Graph, parallel: ParallelConfig, order: str,
           axis_bytes: dict[str, float] | None, full: bool = True) -> Placement:
    arr = _arrays(g)
    p = parallel if parallel.order == order else dataclasses.replace(parallel, order=order)
    world = p.world_size
    ranks = np.arange(world)
    gpu = arr.order[:world]
    axes, comm = [], 0.0
    for axis in AXES:
        size = getattr(p, axis)
        if size == 1:
            axes.append(AxisPlacement(axis, 1, False, 1, math.inf))
            continue
        stride = axis_stride(p, axis)
        coord = (ranks // stride) % size
        if axis == "pp":
            src = ranks[coord < size - 1]
            dst = src + stride
        else:
            src = ranks
            dst = np.where(coord < size - 1, ranks + stride, ranks - (size - 1) * stride)
        bw = float(pair_bandwidth(g, gpu[src], gpu[dst]).min())
        key = ranks - coord * stride
        pairs = np.unique(key * (arr.node.max() + 1) + arr.node[gpu])
        spans = int(np.bincount(pairs // (arr.node.max() + 1)).max())
        axes.append(AxisPlacement(axis, size, spans > 1, spans, bw))
        if axis_bytes:
            comm += axis_bytes.get(axis, 0.0) / bw
    pp_coord = (ranks // axis_stride(p, "pp")) % p.pp
    n_types = len(arr.type_names)
    present = np.bincount(pp_coord * n_types + arr.type_index[gpu], minlength=p.pp * n_types)
    present = present.reshape(p.pp, n_types) > 0
    stage_types = [tuple(arr.type_names[i] for i in np.flatnonzero(row)) for row in present]
    mixed = int((present.sum(axis=1) > 1).sum()) if p.pp > 1 else 0
    return Placement(order=order, rank_to_gpu=tuple(gpu.tolist()) if full else (), axes=tuple(axes),
                     stage_node_types=tuple(stage_types), mixed_stages=mixed,
                     comm_time_s=comm, suggested_order=order)


def _score(pl: Placement, axis_bytes, current: str) -> tuple:
    tie = (pl.order != current, pl.order != DEFAULT_ORDER, pl.order)
    if axis_bytes:
        return (pl.mixed_stages, pl.comm_time_s, *tie)
    widths = tuple(-pl.axis(a).bottleneck_bandwidth_bytes_per_s for a in PRIORITY)
    return (pl.mixed_stages, *widths, *tie)


def place_groups(cluster_graph: nx.Graph, parallel: ParallelConfig,
                 axis_bytes: dict[str, float] | None = None, *, suggest: bool = True) -> Placement:
    """Place ``parallel``'s ranks on the cluster for ``parallel.order`` and suggest a better order.

    The placement for ``parallel.order`` maps rank r to the r-th GPU of :func:`gpu_order` —
    for the usual clusters GPU r, i.e. exactly planner.plan.rank_layout. With ``suggest`` every
    order is evaluated and ``suggested_order`` names the best (see the module docstring for the
    criteria); ``axis_bytes`` maps axis -> bytes each rank sends per step on that axis.
    """
    world = cluster_graph.graph["world_size"]
    if parallel.world_size != world:
        raise InputError("dp", f"tp*pp*dp*cp = {parallel.world_size} != the cluster's {world} GPUs")
    chosen = _place(cluster_graph, parallel, parallel.order, axis_bytes)
    if not suggest:
        return chosen
    best = min((_place(cluster_graph, parallel, o, axis_bytes, full=False) if o != parallel.order else chosen
                for o in ALL_ORDERS), key=lambda pl: _score(pl, axis_bytes, parallel.order))
    return dataclasses.replace(chosen, suggested_order=best.order)


def stage_peak_flops(cluster_graph: nx.Graph, placement: Placement, dtype: str) -> tuple[float, ...]:
    """Per pipeline stage, the slowest device's dense peak FLOP/s for ``dtype`` (a stage runs at
    the pace of its slowest GPU): speed factors for planner.partition.partition_chain."""
    types = cluster_graph.graph["node_types"]
    return tuple(min(types[t].device.peak_flops(dtype) for t in names) for names in placement.stage_node_types)


def estimate_axis_bytes(model: ModelSpec, parallel: ParallelConfig) -> dict[str, float]:
    """Bytes one rank sends per optimizer step on each axis — for ranking placements only; the
    cost model (planner.cost.comm) times them properly.

    Ring collectives on n ranks of S bytes send 2(n-1)/n·S (all-reduce) or (n-1)/n·S (all-gather,
    reduce-scatter) per rank. tp (Megatron, Shoeybi et al. 2019): 2 all-reduces forward and 2
    backward per layer of s·b·h activations (+2 forward with full recomputation; the same bytes as
    all-gather + reduce-scatter under sequence parallelism). cp (ring attention, Liu et al. 2023):
    K and V of the other cp-1 chunks forward, and K, V and their gradients backward, per layer. pp:
    one activation forward and one gradient backward per micro-batch. dp: the gradient all-reduce
    (reduce-scatter + all-gather under ZeRO; ZeRO-3/FSDP adds an all-gather of the weights in
    forward and backward: 1.5x), in 2-byte gradients (4 for fp32).
    """
    e = activation_elem_bytes(parallel.precision)
    m = parallel.num_micro_batches
    layers = model.n_layers / parallel.pp
    s_local = parallel.seq_len / parallel.cp
    act = s_local * parallel.micro_batch * model.hidden_size * e
    out = {a: 0.0 for a in AXES}
    t = parallel.tp
    if t > 1:
        per_layer = 6 if parallel.recompute == "full" else 4
        out["tp"] = layers * m * per_layer * 2 * (t - 1) / t * act
    c = parallel.cp
    if c > 1:
        kv = s_local * parallel.micro_batch * model.kv_dim * e / t
        out["cp"] = layers * m * (c - 1) * (2 * kv + 4 * kv)
    if parallel.pp > 1:
        out["pp"] = m * 2 * act / (t if parallel.sequence_parallel else 1)
    d = parallel.dp
    if d > 1:
        params = model.total_params() / (t * parallel.pp)
        grad = 4 if parallel.precision == "fp32" else 2
        factor = 1.5 if parallel.sharding in ("zero3", "fsdp") else 1.0
        out["dp"] = factor * 2 * (d - 1) / d * params * grad
    return out
