"""ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", Sec. 3) as a greedy list schedule,
simulated event by event."""
from __future__ import annotations

from heapq import heappop, heappush

from planner.errors import InputError

TIE_RESOLUTION = 1e-9
"""A dependency ready within this fraction of the longest task after t counts as ready at t: the
end times are float sums, and a dependency ready exactly at t in exact arithmetic can come out
one rounding step later; taking it as not ready made a different greedy choice (up to 10% on the
makespan against the same schedule run on exact fractions, tests/test_schedule.py)."""


def simulate_zb(pp: int, m: int, fwd: list[float], bwd: list[float], wgr: list[float],
                p2p_s: float, w_cap: list[int], record: bool = True
                ) -> tuple[list[tuple[int, int, str, float, float]], list[float], list[float], list[int]]:
    """ZB-H1 as a greedy list schedule: whenever a rank is free it runs, in priority, a ready B
    (keeps the critical input-gradient chain moving), a ready F (while fewer than ``pp - rank``
    micro-batches are in flight, 1F1B's memory limit), or a deferred W; W is forced first once more than ``w_cap[rank]`` (= pp) are pending, which
    bounds the extra memory held for deferred weight gradients. A rank with nothing ready
    waits exactly until the earliest time one of its next B / F becomes ready (its
    neighbour's task end plus the p2p hop) and then chooses again by the same priority.

    Event simulation in time order, O(p m log p): a heap of (time, rank) decision events,
    flat per-(rank, micro-batch) end-time arrays, the pending-W FIFO as two counters (B and
    W both run in micro-batch order). A waiting rank has no event until a neighbour's task
    makes one of its dependencies known (then it is woken at that dependency's ready time),
    so idle ranks are never polled. Decisions at one instant are independent (F and B take
    time > 0, so a task started at t makes nothing ready before t); ties go to the lower
    rank. Returns (tasks as (rank, micro-batch, kind, start, end) when ``record``, free time,
    busy time and peak in-flight micro-batches per rank)."""
    inf = float("inf")
    zero = fwd[0] * 0            # of the times' own type: fractions run the schedule exactly
    hop = p2p_s if pp > 1 else zero
    last = pp - 1
    f_end = [-1.0] * (pp * m)   # index r*m + j; -1: not scheduled yet
    b_end = [-1.0] * (pp * m)
    next_f = [0] * pp
    next_b = [0] * pp
    done_w = [0] * pp            # pending W = micro-batches done_w .. next_b-1
    free = [zero] * pp
    busy = [zero] * pp
    peak = [0] * pp
    stamp = [0] * pp             # only a rank's newest heap entry is live
    waiting = [False] * pp
    limit = [pp - r for r in range(pp)]
    heap = [(zero, r, 0) for r in range(pp)]   # sorted, hence a valid heap
    log: list[tuple[int, int, str, float, float]] = []
    tie = TIE_RESOLUTION * max(max(fwd), max(bwd), max(wgr), hop)

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
                best = zero
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
                if d >= 0 and d + hop <= t + tie:
                    kind = 2
        if nb - done_w[r] > w_cap[r]:
            kind = 3
        if kind == 0 and nf < m and nf - nb < limit[r]:
            if r == 0:
                kind = 1
            else:
                d = f_end[base - m + nf]
                if d >= 0 and d + hop <= t + tie:
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
    return log, free, busy, peak
