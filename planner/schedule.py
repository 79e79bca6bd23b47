"""Pipeline schedules as task timelines: GPipe, 1F1B, interleaved 1F1B and zero-bubble ZB-H1.

Each schedule is a fixed order of tasks per pipeline rank; :func:`simulate` runs that order with
the data dependencies between (virtual) stages and returns when every task starts and ends.

* GPipe (Huang et al. 2019): all forwards, then all backwards. Bubble (p-1)/m, m micro-batches
  of activations in flight.
* 1F1B (PipeDream-Flush, Narayanan et al. SC'21 Sec. 2.2.1): rank i runs ``p-i-1`` warm-up
  forwards, then alternates one forward / one backward. Bubble (p-1)/m, at most p in flight.
* Interleaved 1F1B (Narayanan et al. SC'21 Sec. 2.2.2): each rank holds ``v`` model chunks
  (virtual stage ``c*p + i`` on rank ``i``); order as Megatron-LM's
  ``forward_backward_pipelining_with_interleaving``. Bubble (p-1)/(v*m).
* ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism"): backward split into B (input
  gradient, on the critical path) and W (weight gradient, deferred to fill the drain bubble),
  same in-flight limit as 1F1B; bubble about (p-1)(F+B-W), a third of 1F1B's when F=B=W.

Virtual stage ``k`` is chunk ``k // p`` on rank ``k % p``. ``stage_fwd_s[k]`` etc. are per
virtual stage (length p*v), so uneven stages are just unequal entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.errors import InputError, require

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb")


@dataclass(frozen=True)
class Task:
    """One pipeline task on rank ``stage``: kind F (forward), B (backward; input-grad only for
    zb), W (weight-grad, zb only) of ``micro_batch`` for model chunk ``chunk``."""

    stage: int
    micro_batch: int
    kind: str
    chunk: int
    start_s: float
    end_s: float

    def to_dict(self) -> dict:
        return {"stage": self.stage, "micro_batch": self.micro_batch, "kind": self.kind,
                "chunk": self.chunk, "start_s": self.start_s, "end_s": self.end_s}


@dataclass(frozen=True)
class Timeline:
    """Result of :func:`simulate`.

    makespan_s: end of the last task.
    busy_s: per rank, sum of task durations.
    bubble_s: makespan minus the busiest rank's busy time (its idle time).
    peak_in_flight: per rank, most (chunk, micro-batch) activation sets held at once
        (forward done, backward not yet started... counted until the B task ends).
    """

    tasks: tuple[Task, ...]
    makespan_s: float
    busy_s: tuple[float, ...]
    bubble_s: float
    peak_in_flight: tuple[int, ...]
    num_micro_batches: int

    @property
    def bubble_fraction(self) -> float:
        """bubble / busiest rank's busy time: (p-1)/m for GPipe and 1F1B with equal stages."""
        busiest = max(self.busy_s)
        return self.bubble_s / busiest if busiest > 0 else 0.0

    def to_dicts(self) -> list[dict]:
        return [t.to_dict() for t in self.tasks]


def _mb_order_1f1b(rank: int, pp: int, m: int, split_w: bool) -> list[tuple[str, int, int]]:
    warm = min(pp - rank - 1, m)
    order: list[tuple[str, int, int]] = [("F", j, 0) for j in range(warm)]
    pending_w: list[int] = []
    # ZB-H1: W of a micro-batch is deferred while the rank's drain phase still has B work queued;
    # deferring at most (pp - rank - 1) W tasks keeps the in-flight limit of 1F1B.
    delay = (pp - rank - 1) if split_w else 0
    for k in range(m - warm):
        order.append(("F", warm + k, 0))
        order.append(("B", k, 0))
        if split_w:
            pending_w.append(k)
            if len(pending_w) > delay:
                order.append(("W", pending_w.pop(0), 0))
    for k in range(m - warm, m):
        order.append(("B", k, 0))
        if split_w:
            pending_w.append(k)
            order.append(("W", pending_w.pop(0), 0))
    if split_w:
        order.extend(("W", j, 0) for j in pending_w)
    return order


def _mb_order_interleaved(rank: int, pp: int, m: int, v: int) -> list[tuple[str, int, int]]:
    """Megatron-LM's interleaved order (schedules.py, forward_backward_pipelining_with_interleaving)."""
    total = m * v
    group = pp * v

    def ident(k: int, forward: bool) -> tuple[int, int]:
        chunk = (k % group) // pp
        if not forward:
            chunk = v - 1 - chunk
        micro = (k // group) * pp + k % pp
        return micro, chunk

    if m == pp:
        warm = total
    else:
        warm = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    order: list[tuple[str, int, int]] = []
    for k in range(warm):
        mb, c = ident(k, True)
        order.append(("F", mb, c))
    for k in range(total - warm):
        mb, c = ident(warm + k, True)
        order.append(("F", mb, c))
        mb, c = ident(k, False)
        order.append(("B", mb, c))
    for k in range(total - warm, total):
        mb, c = ident(k, False)
        order.append(("B", mb, c))
    return order


def schedule_order(schedule: str, pp: int, num_micro_batches: int, vpp: int = 1
                   ) -> list[list[tuple[str, int, int]]]:
    """Per rank, the ordered (kind, micro_batch, chunk) tasks of ``schedule``."""
    require(schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
    require(pp >= 1 and num_micro_batches >= 1 and vpp >= 1, "schedule",
            "pp, num_micro_batches and vpp must be >= 1")
    m = num_micro_batches
    if schedule == "gpipe":
        require(vpp == 1, "vpp", "gpipe has one chunk per rank")
        return [[("F", j, 0) for j in range(m)] + [("B", j, 0) for j in range(m)] for _ in range(pp)]
    if schedule in ("1f1b", "zb"):
        require(vpp == 1, "vpp", f"{schedule} has one chunk per rank")
        return [_mb_order_1f1b(r, pp, m, schedule == "zb") for r in range(pp)]
    require(vpp >= 2 or pp == 1, "vpp", "interleaved needs vpp >= 2")
    if pp == 1:
        # one rank: chunks run back to back, forward through all chunks then backward
        return [[("F", j, c) for j in range(m) for c in range(vpp)]
                + [("B", j, c) for j in range(m) for c in reversed(range(vpp))]]
    require(m % pp == 0, "micro_batch",
            f"interleaved needs num_micro_batches ({m}) to be a multiple of pp={pp}")
    return [_mb_order_interleaved(r, pp, m, vpp) for r in range(pp)]


@lru_cache(maxsize=4096)
def _orders_cached(schedule: str, pp: int, m: int, vpp: int) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    return tuple(tuple(o) for o in schedule_order(schedule, pp, m, vpp))


def _simulate_zb(pp: int, m: int, fwd: list[float], bwd: list[float], wgr: list[float],
                 p2p_s: float, w_cap: list[int], record: bool = True) -> tuple[list[Task], list[float], list[float], list[int]]:
    """ZB-H1 as a greedy list schedule (Qi et al. 2023, Sec. 3): whenever a rank is free it
    runs, in priority, a ready B (keeps the critical input-gradient chain moving), a ready F
    (while fewer than ``pp - rank`` micro-batches are in flight, 1F1B's memory limit), or a
    deferred W; W is forced first once more than ``w_cap[rank]`` (= pp) are pending, which
    bounds the extra memory held for deferred weight gradients. A rank with nothing ready
    waits exactly until the earliest time one of its next B / F becomes ready (its
    neighbour's task end plus the p2p hop) and then chooses again by the same priority.

    Event simulation in time order, O(p m log p): a heap of (time, rank) decision events,
    flat per-(rank, micro-batch) end-time arrays, the pending-W FIFO as two counters (B and
    W both run in micro-batch order). A waiting rank has no event until a neighbour's task
    makes one of its dependencies known (then it is woken at that dependency's ready time),
    so idle ranks are never polled. Decisions at one instant are independent (F and B take
    time > 0, so a task started at t makes nothing ready before t); ties go to the lower
    rank."""
    from heapq import heappop, heappush

    inf = float("inf")
    hop = p2p_s if pp > 1 else 0.0
    last = pp - 1
    f_end = [-1.0] * (pp * m)   # index r*m + j; -1: not scheduled yet
    b_end = [-1.0] * (pp * m)
    next_f = [0] * pp
    next_b = [0] * pp
    done_w = [0] * pp            # pending W = micro-batches done_w .. next_b-1
    free = [0.0] * pp
    busy = [0.0] * pp
    peak = [0] * pp
    stamp = [0] * pp             # only a rank's newest heap entry is live
    waiting = [False] * pp
    limit = [pp - r for r in range(pp)]
    heap = [(0.0, r, 0) for r in range(pp)]   # sorted, hence a valid heap
    log: list[tuple[int, int, str, float, float]] = []

    def wake_time(r: int) -> float:
        """Earliest known ready time of rank r's next B or F (inf: neither known yet)."""
        nb, nf, base = next_b[r], next_f[r], r * m
        best = inf
        if nb < nf:
            if r == last:
                best = f_end[base + nb]
            else:
                d = b_end[base + m + nb]
                if d >= 0:
                    best = d + hop
        if nf < m and nf - nb < limit[r]:
            if r == 0:
                best = 0.0
            else:
                d = f_end[base - m + nf]
                if d >= 0 and d + hop < best:
                    best = d + hop
        return best

    while heap:
        t, r, s = heappop(heap)
        if s != stamp[r]:
            continue
        waiting[r] = False
        base = r * m
        nb = next_b[r]
        nf = next_f[r]
        kind = 0  # 1 F, 2 B, 3 W
        if nb < nf:
            if r == last:
                kind = 2
            else:
                d = b_end[base + m + nb]
                if d >= 0 and d + hop <= t:
                    kind = 2
        if nb - done_w[r] > w_cap[r]:
            kind = 3
        if kind == 0 and nf < m and nf - nb < limit[r]:
            if r == 0:
                kind = 1
            else:
                d = f_end[base - m + nf]
                if d >= 0 and d + hop <= t:
                    kind = 1
        if kind == 0 and nb > done_w[r]:
            kind = 3
        if kind == 0:  # nothing ready: wait for the next known readiness (or a neighbour)
            waiting[r] = True
            stamp[r] += 1
            w = wake_time(r)
            if w < inf:
                heappush(heap, (w if w > t else t, r, stamp[r]))
            continue
        if kind == 1:
            dur = fwd[r]
            e = t + dur
            f_end[base + nf] = e
            next_f[r] = nf + 1
            if nf + 1 - nb > peak[r]:
                peak[r] = nf + 1 - nb
            nbr = r + 1
            if record:
                log.append((r, nf, "F", t, e))
        elif kind == 2:
            dur = bwd[r]
            e = t + dur
            b_end[base + nb] = e
            next_b[r] = nb + 1
            nbr = r - 1
            if record:
                log.append((r, nb, "B", t, e))
        else:
            dur = wgr[r]
            e = t + dur
            j = done_w[r]
            done_w[r] = j + 1
            nbr = -1
            if record:
                log.append((r, j, "W", t, e))
        free[r] = e
        busy[r] += dur
        stamp[r] += 1
        if kind != 3 or done_w[r] < m:
            heappush(heap, (e, r, stamp[r]))
        if 0 <= nbr < pp and waiting[nbr]:
            w = wake_time(nbr)
            if w < inf:
                stamp[nbr] += 1
                fr = free[nbr]
                heappush(heap, (w if w > fr else fr, nbr, stamp[nbr]))
    if any(d < m for d in done_w):
        raise InputError("schedule", f"zb schedule deadlocks for pp={pp}, m={m}")
    tasks = [Task(r, j, k, 0, s, e) for r, j, k, s, e in log] if record else []
    return tasks, free, busy, peak


def simulate(schedule: str, pp: int, num_micro_batches: int, vpp: int,
             stage_fwd_s: list[float], stage_bwd_s: list[float],
             stage_wgrad_s: list[float] | None = None, p2p_s: float = 0.0,
             record: bool = True) -> Timeline:
    """Run ``schedule`` with per-virtual-stage task times and return the timeline.

    record=False skips building the task list (``tasks`` is empty); every other field is the same.

    stage_fwd_s / stage_bwd_s: per virtual stage (``pp*vpp`` entries; virtual stage k on rank
    k % pp), time of one micro-batch's forward / backward. For ``zb``, ``stage_bwd_s`` is the
    input-gradient part B and ``stage_wgrad_s`` the weight-gradient part W (without it, W is
    taken as half of ``stage_bwd_s`` and B as the other half). For other schedules a given
    ``stage_wgrad_s`` is added to the backward.
    p2p_s: activation/gradient send between consecutive virtual stages on different ranks.
    """
    stages = pp * vpp
    require(len(stage_fwd_s) == stages and len(stage_bwd_s) == stages, "stage_times",
            f"need pp*vpp = {stages} entries, got {len(stage_fwd_s)} and {len(stage_bwd_s)}")
    if stage_wgrad_s is not None:
        require(len(stage_wgrad_s) == stages, "stage_wgrad_s", f"needs {stages} entries")
    require(all(t >= 0 for t in list(stage_fwd_s) + list(stage_bwd_s)) and p2p_s >= 0,
            "stage_times", "must be >= 0")
    if schedule == "zb":
        if stage_wgrad_s is None:
            bwd = [0.5 * t for t in stage_bwd_s]
            wgr = [0.5 * t for t in stage_bwd_s]
        else:
            bwd, wgr = list(stage_bwd_s), list(stage_wgrad_s)
    else:
        bwd = list(stage_bwd_s) if stage_wgrad_s is None else [b + w for b, w in zip(stage_bwd_s, stage_wgrad_s)]
        wgr = [0.0] * stages
    fwd = list(stage_fwd_s)
    m = num_micro_batches
    if schedule == "zb":
        require(vpp == 1, "vpp", "zb has one chunk per rank")
        w_cap = [pp] * pp
        tasks, free, busy, peak = _simulate_zb(pp, m, fwd, bwd, wgr, p2p_s, w_cap, record)
        makespan = max(free)
        tasks.sort(key=lambda t: (t.start_s, t.stage))
        return Timeline(tasks=tuple(tasks), makespan_s=makespan, busy_s=tuple(busy),
                        bubble_s=max(0.0, makespan - max(busy)), peak_in_flight=tuple(peak),
                        num_micro_batches=m)
    orders = _orders_cached(schedule, pp, m, vpp)

    f_end = [[-1.0] * m for _ in range(stages)]
    b_end = [[-1.0] * m for _ in range(stages)]
    pos = [0] * pp
    free = [0.0] * pp
    busy = [0.0] * pp
    in_flight = [0] * pp
    peak = [0] * pp
    tasks: list[Task] = []
    last = stages - 1
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(pp):
            order = orders[r]
            while pos[r] < len(order):
                kind, mb, chunk = order[pos[r]]
                vs = chunk * pp + r
                if kind == "F":
                    if vs == 0:
                        ready = 0.0
                    else:
                        dep = f_end[vs - 1][mb]
                        if dep < 0:
                            break
                        ready = dep + (p2p_s if pp > 1 else 0.0)
                    dur = fwd[vs]
                elif kind == "B":
                    if f_end[vs][mb] < 0:
                        break
                    if vs == last:
                        ready = f_end[vs][mb]
                    else:
                        dep = b_end[vs + 1][mb]
                        if dep < 0:
                            break
                        ready = dep + (p2p_s if pp > 1 else 0.0)
                    dur = bwd[vs]
                else:  # W: after this stage's B of the same micro-batch (same rank)
                    if b_end[vs][mb] < 0:
                        break
                    ready = b_end[vs][mb]
                    dur = wgr[vs]
                start = free[r] if free[r] > ready else ready
                end = start + dur
                free[r] = end
                busy[r] += dur
                if kind == "F":
                    f_end[vs][mb] = end
                    in_flight[r] += 1
                    if in_flight[r] > peak[r]:
                        peak[r] = in_flight[r]
                elif kind == "B":
                    b_end[vs][mb] = end
                    in_flight[r] -= 1
                if record:
                    tasks.append(Task(r, mb, kind, chunk, start, end))
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise InputError("schedule", f"{schedule} order deadlocks for pp={pp}, m={m}, vpp={vpp}")
    makespan = max(free)
    bubble = makespan - max(busy)
    tasks.sort(key=lambda t: (t.start_s, t.stage))
    return Timeline(tasks=tuple(tasks), makespan_s=makespan, busy_s=tuple(busy),
                    bubble_s=max(0.0, bubble), peak_in_flight=tuple(peak), num_micro_batches=m)


@dataclass(frozen=True)
class PipelineEstimate:
    """Makespan of a schedule, exact for small m and extrapolated for large m.

    For m above ``3*pp`` the schedule is simulated at two micro-batch counts in its steady
    state (m1 = 2*pp, m2 = 3*pp; both multiples of pp) and the makespan extended linearly
    (the steady state repeats with a fixed period per micro-batch). ZB-H1 is simulated at
    the exact m up to ``pp * m <= ZB_EXACT_LIMIT`` (it is not periodic), beyond that extended
    from the two latest affordable multiples of pp. ``timeline`` is the simulation at
    ``timeline.num_micro_batches`` (m when m <= 3*pp, else 3*pp; empty without a timeline).
    ``exact``: the numbers are the simulation at m.
    """

    makespan_s: float
    busy_s: tuple[float, ...]
    bubble_s: float
    peak_in_flight: tuple[int, ...]
    timeline: Timeline
    exact: bool


def _p2p_count_1f1b(pp: int, m: int) -> int:
    """Transfers on the critical path of the simulated 1F1B order with equal stages.

    The warm-up and cool-down cross the ``p-1`` boundaries twice (``2(p-1)``); in the steady
    state every further micro-batch adds one forward-and-backward round trip on the
    neighbouring-stage dependency cycle (stage i runs one more warm-up forward than stage i+1),
    except once every ``p`` micro-batches, when the cycle has a full stage of slack."""
    if pp <= 1:
        return 0
    if m <= 1:
        return 2 * (pp - 1)
    return 2 * (pp - 1) + 2 * (m - 1) - 2 * ((m - 2) // pp + 1)


def closed_form_makespan(schedule: str, pp: int, num_micro_batches: int, vpp: int,
                         fwd_s: float, bwd_s: float, wgrad_s: float = 0.0,
                         p2p_s: float = 0.0) -> float | None:
    """Makespan of ``schedule`` with equal stages, in closed form, or None where no closed form
    reproduces :func:`simulate` exactly.

    fwd_s / bwd_s / wgrad_s: one micro-batch on one *virtual* stage (a chunk for interleaved);
    wgrad_s is added to the backward (it is only split out for zb). With ``t = fwd + bwd``:

    * GPipe (Huang et al. 2019): ``(m + p - 1) t + 2 (p - 1) c``.
    * 1F1B (Narayanan et al. SC'21 Sec. 2.2.1): ``(m + p - 1) t + K(p, m) c`` with ``K`` from
      :func:`_p2p_count_1f1b`; the bubble is the ``(p - 1)/m`` of Sec. 2.2.1 when ``c = 0``.
    * Interleaved 1F1B (SC'21 Sec. 2.2.2): ``(m v + p - 1) t_chunk + 2 (p v - 1) c`` while the
      transfer hides behind the other chunk's work (``c <= min(fwd, bwd)`` of a chunk, or
      ``m == p``: all warm-up); otherwise None (the transfer enters the steady state).
    * ZB-H1 (Qi et al. 2023): the simulated greedy list schedule only meets the paper's
      ``m (F + B + W) + (p - 1)(F + B - W)`` when F = B = W and c = 0, so None.
    """
    p, m, v, c = pp, num_micro_batches, vpp, p2p_s
    if p == 1:
        c = 0.0
    t = fwd_s + bwd_s + wgrad_s
    if schedule == "gpipe":
        return (m + p - 1) * t + 2 * (p - 1) * c
    if schedule == "1f1b":
        return (m + p - 1) * t + _p2p_count_1f1b(p, m) * c
    if schedule == "interleaved":
        if p == 1:
            return m * v * t
        if m % p:
            return None
        if m == p or c <= min(fwd_s, bwd_s + wgrad_s):
            return (m * v + p - 1) * t + 2 * (p * v - 1) * c
        return None
    return None


def closed_form_in_flight(schedule: str, pp: int, num_micro_batches: int, vpp: int = 1) -> tuple[int, ...]:
    """Per rank, the most micro-batch activation sets held at once (as :func:`simulate` counts
    them): GPipe m; 1F1B and ZB-H1 ``min(p - i, m)`` on rank i (SC'21 Sec. 2.2.1; Qi et al.
    keep 1F1B's limit); interleaved: Megatron's warm-up forwards + 1, at most ``m v``."""
    p, m, v = pp, num_micro_batches, vpp
    if schedule == "gpipe":
        return tuple(m for _ in range(p))
    if schedule in ("1f1b", "zb"):
        return tuple(min(p - r, m) for r in range(p))
    if p == 1:
        return (m * v,)
    total = m * v
    if m == p:
        return tuple(total for _ in range(p))
    return tuple(min(min((p - r - 1) * 2 + (v - 1) * p, total) + 1, total) for r in range(p))


ZB_EXACT_LIMIT = 65536
""":func:`estimate` simulates ZB-H1 at the exact m while ``pp * m`` is at most this (about
``3 * 65536`` tasks, ~0.2 s). The greedy ZB-H1 list schedule is not periodic in m (its
per-micro-batch increments keep changing with uneven F/B/W and the p2p hop), so the 2p/3p
linear extension the other schedules use misses it by up to ~10% (tests/test_schedule.py);
beyond the limit the extension uses the two latest affordable multiples of pp instead."""


def _equal(values) -> bool:
    first = values[0]
    return all(x == first for x in values)


def estimate(schedule: str, pp: int, num_micro_batches: int, vpp: int,
             stage_fwd_s: list[float], stage_bwd_s: list[float],
             stage_wgrad_s: list[float] | None = None, p2p_s: float = 0.0,
             need_timeline: bool = True) -> PipelineEstimate:
    """Fast makespan for the cost model (see :class:`PipelineEstimate`).

    With equal virtual stages and a schedule that has an exact closed form
    (:func:`closed_form_makespan`) and ``need_timeline=False``, no simulation runs; the
    returned ``timeline`` is then empty (``num_micro_batches == 0``)."""
    if not need_timeline:
        return _estimate_no_timeline(schedule, pp, num_micro_batches, vpp, tuple(stage_fwd_s),
                                     tuple(stage_bwd_s),
                                     None if stage_wgrad_s is None else tuple(stage_wgrad_s), p2p_s)
    return _estimate(schedule, pp, num_micro_batches, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s,
                     p2p_s, True)


@lru_cache(maxsize=2048)
def _estimate_no_timeline(schedule: str, pp: int, m: int, vpp: int, fwd: tuple, bwd: tuple,
                          wgr: tuple | None, p2p_s: float) -> PipelineEstimate:
    """:func:`estimate` without a timeline, memoised on the exact stage times: the search
    meets the same pipeline many times (leaves differing only in ZeRO stage 0-2 or layout
    order have identical stage times), and the result is immutable."""
    return _estimate(schedule, pp, m, vpp, list(fwd), list(bwd), None if wgr is None else list(wgr),
                     p2p_s, False)


def _estimate(schedule: str, pp: int, num_micro_batches: int, vpp: int,
              stage_fwd_s: list[float], stage_bwd_s: list[float],
              stage_wgrad_s: list[float] | None, p2p_s: float,
              need_timeline: bool, zb_exact_limit: int = ZB_EXACT_LIMIT) -> PipelineEstimate:
    m = num_micro_batches
    if (not need_timeline and schedule != "zb" and _equal(stage_fwd_s) and _equal(stage_bwd_s)
            and (stage_wgrad_s is None or _equal(stage_wgrad_s))):
        f, b = stage_fwd_s[0], stage_bwd_s[0]
        w = stage_wgrad_s[0] if stage_wgrad_s is not None else 0.0
        mk = closed_form_makespan(schedule, pp, m, vpp, f, b, w, p2p_s)
        if mk is not None:
            busy = tuple(m * vpp * (f + b + w) for _ in range(pp))
            empty = Timeline((), 0.0, tuple(0.0 for _ in range(pp)), 0.0, tuple(0 for _ in range(pp)), 0)
            return PipelineEstimate(mk, busy, max(0.0, mk - busy[0]),
                                    closed_form_in_flight(schedule, pp, m, vpp), empty, True)
    rec = need_timeline
    if pp == 1 or m <= 3 * pp:
        tl = simulate(schedule, pp, m, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, rec)
        return PipelineEstimate(tl.makespan_s, tl.busy_s, tl.bubble_s, tl.peak_in_flight, tl, True)
    if schedule == "zb" and pp * m <= zb_exact_limit:
        # the greedy ZB-H1 schedule is not periodic in m (see ZB_EXACT_LIMIT): simulate all m
        ex = simulate(schedule, pp, m, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, False)
        tl = simulate(schedule, pp, 3 * pp, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, True) if rec else ex
        return PipelineEstimate(ex.makespan_s, ex.busy_s, ex.bubble_s, ex.peak_in_flight, tl, True)
    m1, m2 = 2 * pp, 3 * pp
    if schedule == "zb" and zb_exact_limit // (pp * pp) >= 4:
        m2 = pp * (zb_exact_limit // (pp * pp))   # the latest affordable period: transients settled
        m1 = m2 - pp
    t1 = simulate(schedule, pp, m1, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, False)
    t2 = simulate(schedule, pp, m2, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, rec and m2 == 3 * pp)
    if rec and m2 != 3 * pp:
        t2_tl = simulate(schedule, pp, 3 * pp, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, True)
    else:
        t2_tl = t2
    scale = (m - m1) / (m2 - m1)
    makespan = t1.makespan_s + scale * (t2.makespan_s - t1.makespan_s)
    busy = tuple(b1 + scale * (b2 - b1) for b1, b2 in zip(t1.busy_s, t2.busy_s))
    if schedule == "gpipe":
        peak = tuple(m for _ in range(pp))
    else:
        peak = tuple(max(a, b) for a, b in zip(t1.peak_in_flight, t2.peak_in_flight))
    return PipelineEstimate(makespan, busy, max(0.0, makespan - max(busy)), peak, t2_tl, False)
