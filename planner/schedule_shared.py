"""A pipeline schedule on CPU hosts with more ranks than cores: :func:`simulate_shared`.

:func:`planner.schedule.simulate` gives every task a fixed duration. On an oversubscribed host a
task's duration depends on how many ranks compute beside it: 1F1B's steady state keeps every
stage busy, its warm-up and drain leave most of them waiting. Here each task's CPU work advances,
at every instant, at its rank's share of the host's cores, ``min(1, cores / ranks computing)``
(egalitarian processor sharing: Kleinrock, "Time-shared systems: a theoretical treatment", J. ACM
14(2), 1967), as a fluid event simulation of the schedule's task order with the dependencies of
:func:`planner.schedule.simulate`. A rank waiting for a dependency, a send or another node sleeps
(a blocked gloo receive uses no CPU) and leaves its core to the others.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.errors import InputError
from planner.schedule import Task, Timeline, task_orders

_DONE = 1e-12
"""A phase with less than this (seconds, or core-seconds) left is finished (float remainders)."""


@dataclass(frozen=True)
class TaskCost:
    """One task of one virtual stage: ``work_s`` of CPU at a whole core (slowed by sharing),
    ``busy_s`` on a core at any share (host-side communication, priced as it was measured),
    ``sleep_s`` waiting on another node (the core is free)."""

    work_s: float
    busy_s: float = 0.0
    sleep_s: float = 0.0


@dataclass(frozen=True)
class Host:
    """One host's cores and, per pipeline rank, how many of that rank's processes run on it.
    ``link_senders``: how many of its processes the tasks' sleeps were priced as crossing its
    one link at once; a sleep then runs ``link_senders / processes sleeping`` times as fast
    (the link shared equally by those on it, as the cores are), at most ``link_alone`` times.
    0: sleeps are fixed."""

    cores: float
    ranks: tuple[int, ...]
    link_senders: float = 0.0
    link_alone: float = float("inf")


def simulate_shared(schedule: str, pp: int, num_micro_batches: int, vpp: int, fwd: list[TaskCost],
                    bwd: list[TaskCost], p2p_s: float, hosts: tuple[Host, ...], record: bool = True) -> Timeline:
    """Run ``schedule`` (gpipe, 1f1b or interleaved: a fixed task order per rank) with per-virtual-
    stage task costs on ``hosts``. A pipeline rank whose processes span hosts computes at the
    slowest host's share (its processes meet in collectives). ``busy_s`` of the timeline: per rank,
    the time it held a core (work and busy phases)."""
    require_fixed_order(schedule)
    m, stages = num_micro_batches, pp * vpp
    orders = task_orders(schedule, pp, m, vpp)
    f_end = [[-1.0] * m for _ in range(stages)]
    b_end = [[-1.0] * m for _ in range(stages)]
    pos, busy, in_flight, peak = [0] * pp, [0.0] * pp, [0] * pp, [0] * pp
    phases: list[list | None] = [None] * pp   # the running task's phases left: [kind, amount left]
    started = [0.0] * pp
    tasks: list[Task] = []
    remaining = sum(len(o) for o in orders)
    hop = p2p_s if pp > 1 else 0.0
    t = 0.0

    def ready_at(r: int) -> float | None:
        kind, mb, chunk = orders[r][pos[r]]
        vs = chunk * pp + r
        if kind == "F":
            if vs == 0:
                return 0.0
            dep = f_end[vs - 1][mb]
            return None if dep < 0 else dep + hop
        if f_end[vs][mb] < 0:
            return None
        if vs == stages - 1:
            return f_end[vs][mb]
        dep = b_end[vs + 1][mb]
        return None if dep < 0 else dep + hop

    def finish(r: int) -> None:
        nonlocal remaining
        kind, mb, chunk = orders[r][pos[r]]
        vs = chunk * pp + r
        if kind == "F":
            f_end[vs][mb] = t
            in_flight[r] += 1
            peak[r] = max(peak[r], in_flight[r])
        else:
            b_end[vs][mb] = t
            in_flight[r] -= 1
        if record:
            tasks.append(Task(r, mb, kind, chunk, started[r], t))
        phases[r] = None
        pos[r] += 1
        remaining -= 1

    while remaining:
        next_ready = float("inf")
        changed = True
        while changed:  # start every task ready now (a task of no cost ends at once)
            changed = False
            for r in range(pp):
                if phases[r] is not None or pos[r] >= len(orders[r]):
                    continue
                ready = ready_at(r)
                if ready is None:
                    continue
                if ready > t:
                    next_ready = min(next_ready, ready)
                    continue
                kind, _, chunk = orders[r][pos[r]]
                c = (fwd if kind == "F" else bwd)[chunk * pp + r]
                started[r] = t
                phases[r] = [[k, a] for k, a in (("work", c.work_s), ("busy", c.busy_s), ("sleep", c.sleep_s))
                             if a > _DONE]
                if not phases[r]:
                    finish(r)
                    changed = True
        if not remaining:
            break
        running = [r for r in range(pp) if phases[r] is not None]
        if not running and next_ready == float("inf"):
            raise InputError("schedule", f"{schedule} order deadlocks for pp={pp}, m={m}, vpp={vpp}")
        rate = _rates(running, phases, hosts, pp)
        dt = next_ready - t
        for r in running:
            kind, left = phases[r][0]
            dt = min(dt, left / rate[r] if kind != "busy" else left)
        t += dt
        for r in running:
            phase = phases[r][0]
            if phase[0] != "sleep":
                busy[r] += dt
            phase[1] -= dt * rate[r] if phase[0] != "busy" else dt
            if phase[1] <= _DONE:
                phases[r].pop(0)
                if not phases[r]:
                    finish(r)
    makespan = t
    tasks.sort(key=lambda x: (x.start_s, x.stage))
    return Timeline(tasks=tuple(tasks), makespan_s=makespan, busy_s=tuple(busy),
                    bubble_s=max(0.0, makespan - max(busy)), peak_in_flight=tuple(peak), num_micro_batches=m)


def _rates(running: list[int], phases, hosts: tuple[Host, ...], pp: int) -> dict[int, float]:
    """Each running rank's rate: working, its share of a core (on each of its hosts the cores
    over the processes holding one there, not sleeping); sleeping, its speed on the link
    (:attr:`Host.link_senders` over the processes sleeping there); the smallest over its hosts."""
    sleeping = [phases[r] is not None and phases[r][0][0] == "sleep" for r in range(pp)]
    holding = [phases[r] is not None and not sleeping[r] for r in range(pp)]
    share_on = [min(1.0, h.cores / max(1, sum(n for n, held in zip(h.ranks, holding) if held))) for h in hosts]
    link_on = [min(h.link_alone, h.link_senders / max(1, sum(n for n, z in zip(h.ranks, sleeping) if z)))
               if h.link_senders else 1.0 for h in hosts]
    return {r: min((link_on if sleeping[r] else share_on)[i] for i, h in enumerate(hosts) if h.ranks[r])
            for r in running}


def require_fixed_order(schedule: str) -> None:
    """ZB-H1 is a greedy list schedule (:mod:`planner.schedule_zb`), not a fixed order."""
    if schedule not in ("gpipe", "1f1b", "interleaved"):
        raise InputError("schedule", f"{schedule} has no fixed task order to share cores over")
