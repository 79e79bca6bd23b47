"""The makespan the cost model uses (:func:`estimate`): the schedule's closed form where one
reproduces :func:`planner.schedule.simulate` exactly (equal stages), else the simulation, with
a linear extension in the number of micro-batches for long 1F1B / GPipe / interleaved steps."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.schedule import Timeline, simulate


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
    if pp == 1 and m > 3:
        # one stage: the tasks run back to back, the makespan is their sum (closed form, any m);
        # the timeline shows the first three micro-batches
        f, b = sum(stage_fwd_s), sum(stage_bwd_s)
        w = sum(stage_wgrad_s) if stage_wgrad_s is not None else 0.0
        mk = m * (f + b + w)
        tl = (simulate(schedule, pp, 3, vpp, stage_fwd_s, stage_bwd_s, stage_wgrad_s, p2p_s, True) if rec
              else Timeline((), 0.0, (0.0,), 0.0, (0,), 0))
        return PipelineEstimate(mk, (mk,), 0.0, closed_form_in_flight(schedule, pp, m, vpp), tl, True)
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
