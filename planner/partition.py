"""Pipeline-stage cuts: the exact optimum for a chain of layers.

* :func:`partition_chain` cuts a chain of layers into ``n_stages`` contiguous stages minimising
  the slowest stage's time (the pipeline's bottleneck: in steady state 1F1B/GPipe advance at the
  pace of the slowest stage, Narayanan et al. SC'21 Sec. 2.2) subject to every stage's memory
  limit, by dynamic programming over (stage, last layer) — exact, O(n_stages * L^2), vectorised.
  Stages may differ (heterogeneous devices): per-stage speed factors, per-stage layer times and
  memories, per-stage limits. The embedding and the LM head are fixed extras of the first and
  last stage.

An infeasible cut is a value, :class:`CutRejected`, never an exception.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

_REL_EPS = 1e-12  # relative slack on memory limits (prefix-sum rounding)


@dataclass(frozen=True)
class StageCut:
    """A feasible cut into stages.

    layers_per_stage: transformer layers per stage (ParallelConfig.stage_layers).
    stage_times_s: each stage's time (sum of its nodes' times / its speed, extras included).
    stage_memory_bytes: each stage's memory (sum of its nodes' bytes, extras included).
    method: how it was found (``dp``: the optimum; ``given``: a split evaluated as given).
    """

    layers_per_stage: tuple[int, ...]
    stage_times_s: tuple[float, ...]
    stage_memory_bytes: tuple[float, ...]
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
        for key in ("layers_per_stage", "stage_times_s", "stage_memory_bytes"):
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
