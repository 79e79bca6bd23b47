"""Pipeline-stage cuts: the exact optimum for chains, METIS for general DAGs.

* :func:`partition_chain` cuts a chain of layers into ``n_stages`` contiguous stages minimising
  the slowest stage's time (the pipeline's bottleneck: in steady state 1F1B/GPipe advance at the
  pace of the slowest stage, Narayanan et al. SC'21 Sec. 2.2) subject to every stage's memory
  limit, by dynamic programming over (stage, last layer) — exact, O(n_stages * L^2), vectorised.
  Stages may differ (heterogeneous devices): per-stage speed factors, per-stage layer times and
  memories, per-stage limits. The embedding and the LM head are fixed extras of the first and
  last stage.
* :func:`partition_dag` handles general DAGs (encoder-decoder, vision tower + decoder):
  pymetis k-way partitioning (node weight = time, edge weight = bytes) finds communication-light
  groups, a repair makes the stage graph acyclic and the stages contiguous in a topological order,
  and the exact chain DP then re-places the cut points in that order where balance needs it.
* :func:`stage_module_names` (torchtitan style: a pure function) gives each stage's module names
  for the executor.

An infeasible cut is a value, :class:`CutRejected`, never an exception.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import networkx as nx
import numpy as np

from planner.graph import CostFn, chain_nodes, layer_graph
from planner.model import ModelSpec
from planner.plan import ParallelConfig

_REL_EPS = 1e-12  # relative slack on memory limits (prefix-sum rounding)


@dataclass(frozen=True)
class StageCut:
    """A feasible cut into stages.

    layers_per_stage: chain cuts: transformer layers per stage (ParallelConfig.stage_layers);
        DAG cuts: nodes per stage, consecutive in ``order``.
    stage_times_s: each stage's time (sum of its nodes' times / its speed, extras included).
    stage_memory_bytes: each stage's memory (sum of its nodes' bytes, extras included).
    order: DAG cuts: the topological order the stages are contiguous in; empty for chain cuts.
    cross_stage_bytes: DAG cuts: bytes on edges between different stages (per micro-batch).
    method: how it was found (``dp``, ``metis``, ``metis+dp``, ``topo+dp``, ``given``).
    """

    layers_per_stage: tuple[int, ...]
    stage_times_s: tuple[float, ...]
    stage_memory_bytes: tuple[float, ...]
    order: tuple[str, ...] = ()
    cross_stage_bytes: float = 0.0
    method: str = "dp"

    @property
    def n_stages(self) -> int:
        return len(self.layers_per_stage)

    @property
    def bottleneck_s(self) -> float:
        return max(self.stage_times_s)

    @property
    def bottleneck_stage(self) -> int:
        return int(np.argmax(self.stage_times_s))

    @property
    def imbalance(self) -> float:
        """Bottleneck over mean stage time (1.0 = perfectly balanced)."""
        mean = sum(self.stage_times_s) / len(self.stage_times_s)
        return self.bottleneck_s / mean if mean > 0 else 1.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(bottleneck_s=self.bottleneck_s, bottleneck_stage=self.bottleneck_stage)
        for key in ("layers_per_stage", "stage_times_s", "stage_memory_bytes", "order"):
            data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class CutRejected:
    """No cut fits. ``reason`` is a short code the search counts (``out_of_memory``,
    ``too_many_stages``); ``detail`` says it for a person; ``memory_ratio`` is the smallest
    achievable (fullest stage's bytes / its limit) over all cuts — above 1 means that much more
    memory (or that much less per layer) would be needed."""

    reason: str
    detail: str
    memory_ratio: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


# ----- the exact chain DP ---------------------------------------------------------------------
def _per_stage(values, n_stages: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n_stages, arr.shape[0]))
    if arr.ndim != 2 or arr.shape[0] != n_stages:
        raise ValueError(f"{name}: expected L values or an (n_stages={n_stages}) x L array, got shape {arr.shape}")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: values must be finite and >= 0")
    return arr


def _per_stage_scalar(value, n_stages: int, name: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(n_stages, default)
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return np.full(n_stages, float(arr))
    if arr.shape != (n_stages,):
        raise ValueError(f"{name}: expected one value or {n_stages} (one per stage), got {arr.shape}")
    return arr


def _minmax_dp(cost: np.ndarray, first: float, last: float, mem: np.ndarray | None,
               mem_first: float, mem_last: float, limits: np.ndarray) -> tuple[float, list[int]]:
    """min over cuts of max stage cost, stages non-empty and within their memory limit.

    ``cost``/``mem``: (n, L) per-stage per-layer values; ``first``/``last`` (and mem_*) are added
    to stage 0 and stage n-1. Returns (optimum, end index of each stage) or (inf, []).
    best[k][j] = optimum for layers [0, j) in stages 0..k, stage k ending at j.
    """
    n, L = cost.shape
    pc = np.zeros((n, L + 1))
    pc[:, 1:] = np.cumsum(cost, axis=1)
    pm = None
    if mem is not None:
        pm = np.zeros((n, L + 1))
        pm[:, 1:] = np.cumsum(mem, axis=1)
    idx = np.arange(L + 1)
    inf = math.inf
    # stage 0 ends at j = 1 .. L-(n-1)
    best = np.full(L + 1, inf)
    c0 = pc[0] + first + (last if n == 1 else 0.0)
    ok = (idx >= 1) & (idx <= L - (n - 1))
    if n == 1:
        ok &= idx == L
    if pm is not None:
        m0 = pm[0] + mem_first + (mem_last if n == 1 else 0.0)
        ok &= m0 <= limits[0] * (1 + _REL_EPS)
    best[ok] = c0[ok]
    back = []
    for k in range(1, n):
        is_last = k == n - 1
        cols = np.array([L]) if is_last else idx
        c = pc[k][cols][None, :] - pc[k][:, None] + (last if is_last else 0.0)   # [i, j]
        feasible = (idx[:, None] < cols[None, :]) & (idx[:, None] >= k)
        feasible &= (cols[None, :] <= L - (n - 1 - k))
        if pm is not None:
            m = pm[k][cols][None, :] - pm[k][:, None] + (mem_last if is_last else 0.0)
            feasible &= m <= limits[k] * (1 + _REL_EPS)
        value = np.where(feasible, np.maximum(best[:, None], c), inf)
        arg = value.argmin(axis=0)
        new = value[arg, np.arange(len(cols))]
        if is_last:
            best = np.full(L + 1, inf)
            best[L] = new[0]
            back.append(np.full(L + 1, -1))
            back[-1][L] = arg[0]
        else:
            best = new
            back.append(arg)
    if not math.isfinite(best[L]):
        return inf, []
    ends = [L]
    j = L
    for k in range(n - 1, 0, -1):
        j = int(back[k - 1][j])
        ends.append(j)
    return float(best[L]), ends[::-1]


def _cut_from_ends(ends: Sequence[int], cost: np.ndarray, first: float, last: float,
                   mem: np.ndarray, mem_first: float, mem_last: float, method: str) -> StageCut:
    n = len(ends)
    starts = [0, *ends[:-1]]
    times, mems = [], []
    for k, (a, b) in enumerate(zip(starts, ends)):
        t = float(cost[k, a:b].sum()) + (first if k == 0 else 0.0) + (last if k == n - 1 else 0.0)
        m = float(mem[k, a:b].sum()) + (mem_first if k == 0 else 0.0) + (mem_last if k == n - 1 else 0.0)
        times.append(t)
        mems.append(m)
    return StageCut(layers_per_stage=tuple(int(b - a) for a, b in zip(starts, ends)),
                    stage_times_s=tuple(times), stage_memory_bytes=tuple(mems), method=method)


def _prepare(times, memories, n_stages, memory_limit_bytes, first_extra, last_extra, speeds):
    if not isinstance(n_stages, (int, np.integer)) or n_stages < 1:
        raise ValueError(f"n_stages must be a positive integer, got {n_stages!r}")
    cost = _per_stage(times, n_stages, "times")
    mem = _per_stage(memories, n_stages, "memories")
    if cost.shape != mem.shape:
        raise ValueError(f"times {cost.shape} and memories {mem.shape} differ in shape")
    speed = _per_stage_scalar(speeds, n_stages, "speeds", 1.0)
    if np.any(speed <= 0):
        raise ValueError("speeds must be > 0")
    limits = _per_stage_scalar(memory_limit_bytes, n_stages, "memory_limit_bytes", math.inf)
    cost = cost / speed[:, None]
    ft, fm = (float(v) for v in first_extra)
    lt, lm = (float(v) for v in last_extra)
    return cost, mem, ft / float(speed[0]), fm, lt / float(speed[-1]), lm, limits


def partition_chain(times, memories, n_stages: int, memory_limit_bytes=math.inf,
                    first_extra: tuple[float, float] = (0.0, 0.0),
                    last_extra: tuple[float, float] = (0.0, 0.0), *,
                    speeds: Sequence[float] | None = None) -> StageCut | CutRejected:
    """Exact bottleneck-minimising cut of a layer chain into ``n_stages`` non-empty stages.

    times: per-layer time (L values), or an (n_stages x L) array when a layer's time depends on
        the stage it lands on (heterogeneous devices).
    memories: per-layer bytes (L values) or (n_stages x L) (e.g. activations x the stage's
        in-flight micro-batches under 1F1B, which differ per stage).
    memory_limit_bytes: one limit or one per stage.
    first_extra / last_extra: (time, bytes) added to the first / last stage (embedding; final
        norm + LM head). Their time is divided by that stage's speed too.
    speeds: per-stage speed factors: stage time = sum(times) / speeds[i].

    Minimises ``max_i stage_time_i`` subject to ``stage_memory_i <= limit_i`` by DP; ties go to
    the cut with the earliest boundaries. Infeasible -> :class:`CutRejected`.
    """
    cost, mem, ft, fm, lt, lm, limits = _prepare(times, memories, n_stages, memory_limit_bytes,
                                                 first_extra, last_extra, speeds)
    L = cost.shape[1]
    if n_stages > L:
        return CutRejected("too_many_stages", f"{n_stages} stages for {L} layers: every stage needs a layer")
    value, ends = _minmax_dp(cost, ft, lt, mem, fm, lm, limits)
    if not ends:
        ratio_cost = mem / limits[:, None]
        ratio, _ = _minmax_dp(ratio_cost, fm / limits[0], lm / limits[-1], None, 0.0, 0.0, limits)
        return CutRejected(
            "out_of_memory",
            f"no cut of {L} layers into {n_stages} stages fits: at best the fullest stage needs "
            f"{ratio:.2f}x its memory limit", memory_ratio=ratio)
    return _cut_from_ends(ends, cost, ft, lt, mem, fm, lm, "dp")


def evaluate_chain(times, memories, layers_per_stage: Sequence[int], memory_limit_bytes=math.inf,
                   first_extra: tuple[float, float] = (0.0, 0.0),
                   last_extra: tuple[float, float] = (0.0, 0.0), *,
                   speeds: Sequence[float] | None = None) -> StageCut | CutRejected:
    """The same accounting as :func:`partition_chain` for a given split (e.g. the balanced one),
    so a search can report what the optimal cut gains over it."""
    n = len(layers_per_stage)
    cost, mem, ft, fm, lt, lm, limits = _prepare(times, memories, n, memory_limit_bytes,
                                                 first_extra, last_extra, speeds)
    if sum(layers_per_stage) != cost.shape[1] or min(layers_per_stage) < 1:
        raise ValueError(f"layers_per_stage {tuple(layers_per_stage)} does not split {cost.shape[1]} layers")
    ends = [int(x) for x in np.cumsum(layers_per_stage)]
    cut = _cut_from_ends(ends, cost, ft, lt, mem, fm, lm, "given")
    over = [k for k in range(n) if cut.stage_memory_bytes[k] > limits[k] * (1 + _REL_EPS)]
    if over:
        ratio = max(cut.stage_memory_bytes[k] / limits[k] for k in range(n))
        return CutRejected("out_of_memory", f"stage {over[0]} needs {ratio:.2f}x its memory limit",
                           memory_ratio=ratio)
    return cut


# ----- memory model for stage cuts -------------------------------------------------------------
def optimizer_state_bytes_per_param(parallel: ParallelConfig) -> float:
    """Weights + gradients + optimizer state per parameter on one rank, Adam.

    Mixed precision: 2 (weights) + 2 (grads) + 12 (fp32 master, m, v) = 16 bytes; fp32: 4 + 4 + 8.
    ZeRO (Rajbhandari et al. SC'20, Sec. 5): zero1 shards the optimizer state over dp, zero2 also
    the gradients, zero3/fsdp also the weights.
    """
    w, g, o = (4.0, 4.0, 8.0) if parallel.precision == "fp32" else (2.0, 2.0, 12.0)
    d = parallel.dp
    return {"none": w + g + o, "zero1": w + g + o / d, "zero2": w + (g + o) / d,
            "zero3": (w + g + o) / d, "fsdp": (w + g + o) / d}[parallel.sharding]


def in_flight_micro_batches(parallel: ParallelConfig) -> tuple[float, ...]:
    """Micro-batches whose activations a (virtual) stage holds at its peak, per stage in order.

    GPipe: all m. 1F1B (Narayanan et al. SC'21 Sec. 2.2.1) and ZB-H1 (Qi et al. ICLR'24, same
    peak as 1F1B): stage i holds min(p - i, m). Interleaved with v chunks per rank (Korthikanti et
    al. 2022 Sec. 4.2.3: the first stage holds p·(1 + (p-1)/(p·v)) micro-batches' worth of its
    layers): every chunk of rank r is charged min(m, (p - r) + (p - 1)/v).
    """
    p, v, m = parallel.pp, parallel.vpp, parallel.num_micro_batches
    if parallel.schedule == "gpipe":
        return tuple(float(m) for _ in range(p * v))
    if parallel.schedule == "interleaved":
        return tuple(float(min(m, (p - j % p) + (p - 1) / v)) for j in range(p * v))
    return tuple(float(min(p - i, m)) for i in range(p))


def node_stage_bytes(attrs: dict, state_bytes_per_param: float, in_flight: float) -> float:
    """Bytes a layer-graph node costs on a stage: ``params * state_bytes + activations * in_flight``."""
    return attrs["params"] * state_bytes_per_param + attrs["activation_bytes"] * in_flight


def partition_model(model: ModelSpec, parallel: ParallelConfig, memory_limit_bytes, *,
                    cost_fn: CostFn | None = None, speeds: Sequence[float] | None = None,
                    graph: nx.DiGraph | None = None) -> StageCut | CutRejected:
    """Optimal transformer-layer split for ``parallel`` (pp*vpp virtual stages).

    memory_limit_bytes: usable bytes per pipeline rank for weights, optimizer state and
        activations (HBM minus reserved/fragmentation — the caller's cost model decides), one
        value or one per pipeline rank (heterogeneous). With vpp > 1 a rank's limit binds the sum
        of its v chunks: the DP first lets every chunk use the whole limit (a relaxation — when
        its optimum fits per rank it is exact), else holds each chunk to limit / v (feasible,
        possibly not optimal; ``method="dp-per-chunk-limit"``).
    speeds: per pipeline rank (e.g. peak FLOP/s relative to the slowest device).
    Memory per node is :func:`node_stage_bytes` with :func:`optimizer_state_bytes_per_param` and
    :func:`in_flight_micro_batches`. Node times are forward times; backward is proportional in
    this model (2x), so the argmin is the same as for the whole step.
    """
    graph = graph if graph is not None else layer_graph(model, parallel, cost_fn)
    first, layers, last = chain_nodes(graph)
    p, v = parallel.pp, parallel.vpp
    n = p * v
    state = optimizer_state_bytes_per_param(parallel)
    flight = in_flight_micro_batches(parallel)
    nodes = graph.nodes
    times = [nodes[name]["time_s"] for name in layers]
    mem = np.array([[node_stage_bytes(nodes[name], state, flight[k]) for name in layers] for k in range(n)])
    first_extra = (nodes[first]["time_s"], node_stage_bytes(nodes[first], state, flight[0]))
    last_extra = (sum(nodes[x]["time_s"] for x in last),
                  sum(node_stage_bytes(nodes[x], state, flight[-1]) for x in last))
    rank_limits = _per_stage_scalar(memory_limit_bytes, p, "memory_limit_bytes", math.inf)
    stage_speeds = None if speeds is None else [_per_stage_scalar(speeds, p, "speeds", 1.0)[k % p] for k in range(n)]
    if v == 1:
        return partition_chain(times, mem, n, rank_limits, first_extra, last_extra, speeds=stage_speeds)
    # Interleaved: a rank holds v chunks, so its limit binds their sum. Relaxation first (each chunk
    # may use the whole rank limit): if its optimum fits per rank it is the exact optimum.
    relaxed = partition_chain(times, mem, n, [rank_limits[k % p] for k in range(n)], first_extra,
                              last_extra, speeds=stage_speeds)
    if isinstance(relaxed, StageCut):
        per_rank = [sum(relaxed.stage_memory_bytes[k] for k in range(r, n, p)) for r in range(p)]
        if all(m <= lim * (1 + _REL_EPS) for m, lim in zip(per_rank, rank_limits)):
            return relaxed
    # Else each chunk gets limit / v: feasible for the rank, possibly not optimal.
    safe = partition_chain(times, mem, n, [rank_limits[k % p] / v for k in range(n)], first_extra,
                           last_extra, speeds=stage_speeds)
    if isinstance(safe, StageCut):
        return dataclasses.replace(safe, method="dp-per-chunk-limit")
    if not isinstance(relaxed, StageCut):
        return relaxed
    # safe.memory_ratio bounds the rank-level need from above (chunks <= ratio * limit / v).
    return CutRejected(safe.reason, f"no interleaved cut found within the rank limit with {v} chunks "
                       f"per rank: the time-optimal cut overflows a rank and holding each chunk to "
                       f"limit/{v} needs up to {safe.memory_ratio:.2f}x", memory_ratio=safe.memory_ratio)


# ----- general DAGs ------------------------------------------------------------------------------
def _topo_order(graph: nx.DiGraph) -> list[str]:
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n].get("order", 0)))


def _metis_parts(graph: nx.DiGraph, nodes: list[str], n_parts: int, seed: int) -> list[int]:
    """k-way METIS labels for ``nodes`` (undirected view; integer weights scaled to <= 1e6)."""
    import pymetis

    index = {name: i for i, name in enumerate(nodes)}
    t = np.array([graph.nodes[x]["time_s"] for x in nodes], dtype=float)
    t_scale = 1e6 / t.sum() if t.sum() > 0 else 0.0
    vweights = [max(1, int(round(x * t_scale))) for x in t]
    und: dict[int, dict[int, float]] = {i: {} for i in range(len(nodes))}
    for a, b, data in graph.edges(data=True):
        i, j = index[a], index[b]
        w = data.get("bytes", 0.0)
        und[i][j] = und[i].get(j, 0.0) + w
        und[j][i] = und[j].get(i, 0.0) + w
    max_w = max((w for nbrs in und.values() for w in nbrs.values()), default=0.0)
    e_scale = 1e6 / max_w if max_w > 0 else 0.0
    xadj, adjncy, eweights = [0], [], []
    for i in range(len(nodes)):
        for j in sorted(und[i]):
            adjncy.append(j)
            eweights.append(max(1, int(round(und[i][j] * e_scale))))
        xadj.append(len(adjncy))
    options = pymetis.Options(seed=seed)
    _, parts = pymetis.part_graph(n_parts, adjacency=pymetis.CSRAdjacency(xadj, adjncy),
                                  vweights=vweights, eweights=eweights, options=options)
    return list(parts)


def _repair(graph: nx.DiGraph, topo: list[str], labels: list[int], n_stages: int) -> dict[str, int]:
    """METIS labels -> stages that respect the edges.

    Parts are numbered by their mean topological position; then, in topological order, each
    node's stage is raised to the largest stage of its predecessors. Every edge then goes from a
    stage to the same or a later one, so the stage graph is acyclic, and sorting by (stage,
    topological index) is a topological order in which every stage is contiguous.
    """
    pos = {name: i for i, name in enumerate(topo)}
    sums: dict[int, list[float]] = {}
    for name, lab in zip(topo, labels):
        sums.setdefault(lab, []).append(pos[name])
    ranking = sorted(sums, key=lambda lab: (sum(sums[lab]) / len(sums[lab]), lab))
    relabel = {lab: min(k, n_stages - 1) for k, lab in enumerate(ranking)}
    stage = {}
    for name, lab in zip(topo, labels):
        s = relabel[lab]
        for pred in graph.predecessors(name):
            s = max(s, stage[pred])
        stage[name] = s
    return stage


def _cross_bytes(graph: nx.DiGraph, stage_of: dict[str, int]) -> float:
    return float(sum(d.get("bytes", 0.0) for a, b, d in graph.edges(data=True) if stage_of[a] != stage_of[b]))


def partition_dag(graph: nx.DiGraph, n_stages: int, *, memory_limit_bytes=math.inf,
                  memory_fn: Callable[[str, dict], float] | None = None,
                  speeds: Sequence[float] | None = None, seed: int = 0,
                  balance_tolerance: float = 0.02) -> StageCut | CutRejected:
    """Cut a DAG layer graph into ``n_stages`` pipeline stages that form a chain.

    1. pymetis k-way partition of the undirected graph, node weight = ``time_s``, edge weight =
       ``bytes`` (Karypis & Kumar 1998): balanced parts with little traffic between them.
    2. :func:`_repair`: acyclic, contiguous stages in a topological order.
    3. The exact chain DP (:func:`partition_chain`) on that order, and on the plain topological
       order, re-places the cut points for balance and memory.
    Of the feasible candidates (repaired METIS cut, DP on the METIS order, DP on the plain order)
    the one with the least cross-stage bytes among those within ``balance_tolerance`` of the best
    bottleneck wins. ``memory_fn(name, attrs)`` gives a node's bytes (default weight_bytes +
    activation_bytes). Result: a :class:`StageCut` with ``order`` set.
    """
    if not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages must be a positive integer, got {n_stages!r}")
    topo = _topo_order(graph)
    if n_stages > len(topo):
        return CutRejected("too_many_stages", f"{n_stages} stages for {len(topo)} graph nodes")
    mem_of = memory_fn or (lambda name, a: a["weight_bytes"] + a["activation_bytes"])
    limits = _per_stage_scalar(memory_limit_bytes, n_stages, "memory_limit_bytes", math.inf)

    def chain_cut(order: list[str], method: str) -> StageCut | CutRejected:
        times = [graph.nodes[x]["time_s"] for x in order]
        mems = [mem_of(x, graph.nodes[x]) for x in order]
        cut = partition_chain(times, mems, n_stages, limits, speeds=speeds)
        if isinstance(cut, CutRejected):
            return cut
        stage_of = _stage_map(order, cut.layers_per_stage)
        return StageCut(cut.layers_per_stage, cut.stage_times_s, cut.stage_memory_bytes,
                        order=tuple(order), cross_stage_bytes=_cross_bytes(graph, stage_of), method=method)

    candidates: list[StageCut] = []
    rejected: CutRejected | None = None
    if n_stages > 1:
        labels = _metis_parts(graph, topo, n_stages, seed)
        stage = _repair(graph, topo, labels, n_stages)
        pos = {name: i for i, name in enumerate(topo)}
        order = sorted(topo, key=lambda x: (stage[x], pos[x]))
        sizes = [sum(1 for x in order if stage[x] == k) for k in range(n_stages)]
        if min(sizes) >= 1:
            times = [graph.nodes[x]["time_s"] for x in order]
            mems = [mem_of(x, graph.nodes[x]) for x in order]
            given = evaluate_chain(times, mems, sizes, limits, speeds=speeds)
            if isinstance(given, StageCut):
                candidates.append(StageCut(given.layers_per_stage, given.stage_times_s,
                                           given.stage_memory_bytes, order=tuple(order),
                                           cross_stage_bytes=_cross_bytes(graph, stage), method="metis"))
        for result in (chain_cut(order, "metis+dp"), chain_cut(topo, "topo+dp")):
            if isinstance(result, StageCut):
                candidates.append(result)
            else:
                rejected = result
    else:
        result = chain_cut(topo, "topo+dp")
        if isinstance(result, StageCut):
            candidates.append(result)
        else:
            rejected = result
    if not candidates:
        return rejected if rejected is not None else CutRejected("out_of_memory", "no stage cut fits")
    best = min(c.bottleneck_s for c in candidates)
    near = [c for c in candidates if c.bottleneck_s <= best * (1 + balance_tolerance)]
    return min(near, key=lambda c: (c.cross_stage_bytes, c.bottleneck_s))


def _stage_map(order: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    out, i = {}, 0
    for k, size in enumerate(sizes):
        for name in order[i:i + size]:
            out[name] = k
        i += size
    return out


def stage_graph(graph: nx.DiGraph, cut: StageCut) -> nx.DiGraph:
    """The stages as a graph (edge bytes summed): acyclic for every cut this module returns."""
    stage_of = {name: k for k, names in enumerate(stage_module_names(graph, cut)) for name in names}
    out = nx.DiGraph()
    out.add_nodes_from(range(cut.n_stages))
    for a, b, data in graph.edges(data=True):
        sa, sb = stage_of[a], stage_of[b]
        if sa != sb:
            prev = out.edges[sa, sb]["bytes"] if out.has_edge(sa, sb) else 0.0
            out.add_edge(sa, sb, bytes=prev + data.get("bytes", 0.0))
    return out


def stage_module_names(graph: nx.DiGraph, cut: StageCut | Sequence[int]) -> list[list[str]]:
    """Module names of each stage, in execution order (torchtitan's pipeline splitter returns the
    same shape). ``cut`` is a :class:`StageCut` or, for a chain layer graph, layers per stage
    (e.g. ``ParallelConfig.layers_per_stage(L)``): ``embed`` joins the first stage,
    ``final_norm``/``lm_head`` the last."""
    if isinstance(cut, StageCut) and cut.order:
        order, sizes = list(cut.order), list(cut.layers_per_stage)
        stage_of = _stage_map(order, sizes)
        return [[x for x in order if stage_of[x] == k] for k in range(len(sizes))]
    sizes = list(cut.layers_per_stage if isinstance(cut, StageCut) else cut)
    first, layers, last = chain_nodes(graph)
    if sum(sizes) != len(layers) or min(sizes) < 1:
        raise ValueError(f"layers per stage {sizes} do not split the graph's {len(layers)} layers")
    out, i = [], 0
    for size in sizes:
        out.append(layers[i:i + size])
        i += size
    out[0] = [first, *out[0]]
    out[-1] = [*out[-1], *last]
    return out
