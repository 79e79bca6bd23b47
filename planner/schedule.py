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
from planner.schedule_zb import simulate_zb

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
def task_orders(schedule: str, pp: int, m: int, vpp: int) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    """:func:`schedule_order` as tuples, cached."""
    return tuple(tuple(o) for o in schedule_order(schedule, pp, m, vpp))


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
        log, free, busy, peak = simulate_zb(pp, m, fwd, bwd, wgr, p2p_s, w_cap, record)
        tasks = [Task(r, j, k, 0, s, e) for r, j, k, s, e in log]
        makespan = max(free)
        tasks.sort(key=lambda t: (t.start_s, t.stage))
        return Timeline(tasks=tuple(tasks), makespan_s=makespan, busy_s=tuple(busy),
                        bubble_s=max(0.0, makespan - max(busy)), peak_in_flight=tuple(peak),
                        num_micro_batches=m)
    orders = task_orders(schedule, pp, m, vpp)

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
