import pytest

from planner.errors import InputError
from planner.schedule import simulate
from planner.schedule_estimate import estimate


@pytest.mark.parametrize("sched", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 8), (4, 16), (8, 8)])
def test_bubble_fraction_equal_stages(sched, p, m):
    tl = simulate(sched, p, m, 1, [1.0] * p, [2.0] * p)
    assert tl.bubble_fraction == pytest.approx((p - 1) / m)


@pytest.mark.parametrize("v", [2, 4])
def test_interleaved_bubble(v):
    p, m = 4, 16
    tl = simulate("interleaved", p, m, v, [1.0 / v] * (p * v), [2.0 / v] * (p * v))
    assert tl.bubble_fraction == pytest.approx((p - 1) / (v * m))


def test_zero_bubble_third_of_1f1b():
    p, m = 4, 16
    one = simulate("1f1b", p, m, 1, [1.0] * p, [2.0] * p)
    zb = simulate("zb", p, m, 1, [1.0] * p, [1.0] * p, [1.0] * p)
    assert zb.bubble_s == pytest.approx(one.bubble_s / 3, rel=0.05)
    assert zb.makespan_s < one.makespan_s


def test_in_flight():
    p, m = 4, 16
    assert simulate("1f1b", p, m, 1, [1.0] * p, [2.0] * p).peak_in_flight[0] == min(p, m)
    assert simulate("1f1b", p, 2, 1, [1.0] * p, [2.0] * p).peak_in_flight[0] == 2
    assert simulate("gpipe", p, m, 1, [1.0] * p, [2.0] * p).peak_in_flight[0] == m


def test_uneven_stages_and_tasks():
    f = [1.0, 1.5, 1.0, 2.0]
    b = [2.0, 3.0, 2.0, 4.0]
    tl = simulate("1f1b", 4, 8, 1, f, b, p2p_s=0.1)
    # the slowest stage bounds the makespan from below
    assert tl.makespan_s >= 8 * (2.0 + 4.0)
    assert len(tl.tasks) == 2 * 4 * 8
    for t in tl.tasks:
        assert t.end_s >= t.start_s >= 0
    # tasks on one rank never overlap
    for r in range(4):
        mine = sorted((t for t in tl.tasks if t.stage == r), key=lambda t: t.start_s)
        assert all(a.end_s <= b_.start_s + 1e-12 for a, b_ in zip(mine, mine[1:]))


@pytest.mark.parametrize("sched,v", [("1f1b", 1), ("interleaved", 2), ("zb", 1), ("gpipe", 1)])
def test_estimate_matches_simulation(sched, v):
    p, m = 4, 40
    f = [1.0, 1.2, 0.9, 1.4] * v
    b = [2.0, 2.5, 1.8, 2.9] * v
    exact = simulate(sched, p, m, v, f, b, p2p_s=0.05)
    est = estimate(sched, p, m, v, f, b, p2p_s=0.05)
    assert est.makespan_s == pytest.approx(exact.makespan_s, rel=1e-3)


def test_interleaved_needs_multiple_of_pp():
    with pytest.raises(InputError):
        simulate("interleaved", 4, 6, 2, [1.0] * 8, [1.0] * 8)


# ----- ZB-H1: the fast event simulation against an independent reference -----------------------
import random  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402

from planner.schedule_estimate import ZB_EXACT_LIMIT, _estimate  # noqa: E402


def reference_zb(p, m, F, B, W, c, cap=None):
    """The ZB-H1 greedy list schedule written the slow, obvious way: every step computes each
    rank's decision time (its free time, or later when nothing is ready: the earliest known
    readiness of its next B / F) and lets the earliest rank (lowest on ties) choose, in
    priority, a forced W (more than ``cap`` pending), a ready B, a ready F (fewer than p - r in
    flight), a pending W. O(p) per task, no heap, no wake-ups. Runs in exact fractions (the
    inputs' decimal values), so a dependency ready exactly at t is ready."""
    F, B, W, c = ([Fraction(repr(x)) for x in xs] for xs in (F, B, W, [c]))
    c = c[0]
    cap = p if cap is None else cap
    zero = Fraction(0)
    hop = c if p > 1 else zero
    inf = float("inf")
    nf, nb, nw = [0] * p, [0] * p, [0] * p
    free, busy, peak = [zero] * p, [zero] * p, [0] * p
    f_end, b_end = {}, {}
    tasks = []
    while any(x < m for x in nw):
        best = None
        for r in range(p):
            if nw[r] == m:
                continue
            rb = rf = inf
            if nb[r] < nf[r]:
                rb = f_end[r, nb[r]] if r == p - 1 else (b_end[r + 1, nb[r]] + hop if (r + 1, nb[r]) in b_end else inf)
            if nf[r] < m and nf[r] - nb[r] < p - r:
                rf = zero if r == 0 else (f_end[r - 1, nf[r]] + hop if (r - 1, nf[r]) in f_end else inf)
            rw = -inf if nb[r] > nw[r] else inf
            d = max(free[r], min(rb, rf, rw))
            if best is None or d < best[0]:
                best = (d, r, rb, rf)
        t, r, rb, rf = best
        assert t < inf, "deadlock"
        if nb[r] - nw[r] > cap:
            kind = "W"
        elif rb <= t:
            kind = "B"
        elif rf <= t:
            kind = "F"
        else:
            kind = "W"
        if kind == "F":
            j, dur = nf[r], F[r]
            f_end[r, j] = t + dur
            nf[r] += 1
            peak[r] = max(peak[r], nf[r] - nb[r])
        elif kind == "B":
            j, dur = nb[r], B[r]
            b_end[r, j] = t + dur
            nb[r] += 1
        else:
            j, dur = nw[r], W[r]
            nw[r] += 1
        free[r] = t + dur
        busy[r] += dur
        tasks.append((r, j, kind, float(t), float(t + dur)))
    return float(max(free)), [float(x) for x in busy], peak, tasks


def _zb_cases(p, rng):
    yield [1.0] * p, [1.0] * p, [1.0] * p, 0.0
    yield [1.0] * p, [2.0] * p, [0.5] * p, 0.1
    yield [0.7] * p, [1.3] * p, [0.9] * p, 0.02
    for _ in range(3):
        base = rng.uniform(0.5, 1.5)
        yield ([base * rng.uniform(0.8, 1.25) for _ in range(p)], [2 * base * rng.uniform(0.8, 1.25) for _ in range(p)],
               [base * rng.uniform(0.8, 1.25) for _ in range(p)], rng.choice([0.0, 0.01, 0.1]))
    yield ([rng.uniform(0.2, 2) for _ in range(p)], [rng.uniform(0.2, 3) for _ in range(p)],
           [rng.uniform(0.0, 2) for _ in range(p)], rng.choice([0.0, 0.3, 1.5]))


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8])
def test_zb_fast_simulation_equals_reference(p):
    rng = random.Random(p)
    for m in range(1, 3 * p + 3):
        for f, b, w, c in _zb_cases(p, rng):
            ref_mk, ref_busy, ref_peak, ref_tasks = reference_zb(p, m, f, b, w, c)
            tl = simulate("zb", p, m, 1, f, b, w, c)
            assert tl.makespan_s == pytest.approx(ref_mk, rel=1e-9, abs=0), (p, m, f, b, w, c)
            assert tl.busy_s == pytest.approx(tuple(ref_busy), rel=1e-9)
            assert tl.peak_in_flight == tuple(ref_peak)
            got = sorted((t.stage, t.micro_batch, t.kind, t.start_s, t.end_s) for t in tl.tasks)
            want = sorted(ref_tasks)
            assert [g[:3] for g in got] == [x[:3] for x in want]
            assert [g[3] for g in got] == pytest.approx([x[3] for x in want], rel=1e-9, abs=1e-12)
            fast = simulate("zb", p, m, 1, f, b, w, c, record=False)
            assert fast.makespan_s == tl.makespan_s and fast.tasks == ()


def test_zb_paper_bubble_equal_stages():
    """F = B = W, no hop: the simulated ZB-H1 meets Qi et al.'s m(F+B+W) + (p-1)(F+B-W) for m >= p."""
    for p in range(1, 9):
        for m in range(p, 3 * p + 3):
            tl = simulate("zb", p, m, 1, [1.0] * p, [1.0] * p, [1.0] * p)
            assert tl.makespan_s == pytest.approx(3 * m + (p - 1), rel=1e-12)
            assert tl.peak_in_flight == tuple(min(p - r, m) for r in range(p))


def test_zb_estimate_is_exact_below_limit():
    rng = random.Random(11)
    for p in (2, 4, 8):
        for f, b, w, c in _zb_cases(p, rng):
            for m in (3 * p + 1, 5 * p + 3, 8 * p):
                exact = simulate("zb", p, m, 1, f, b, w, c, record=False)
                est = estimate("zb", p, m, 1, f, b, w, c, need_timeline=False)
                assert est.exact and est.makespan_s == exact.makespan_s
                assert est.busy_s == exact.busy_s and est.peak_in_flight == exact.peak_in_flight
                with_tl = estimate("zb", p, m, 1, f, b, w, c)
                assert with_tl.makespan_s == exact.makespan_s
                assert with_tl.timeline.num_micro_batches == 3 * p and with_tl.timeline.tasks


def test_zb_extension_beyond_limit_within_bound():
    """Above ZB_EXACT_LIMIT (pp*m) the makespan is extended linearly from the two latest
    affordable multiples of pp; the greedy schedule is not periodic, so this is only close:
    within 6% here (16 periods simulated)."""
    rng = random.Random(7)
    worst = 0.0
    for p in (2, 4, 8):
        limit = 16 * p * p
        for f, b, w, c in list(_zb_cases(p, rng))[:6]:
            for m in (17 * p, 20 * p + 1, 32 * p):
                ex = simulate("zb", p, m, 1, f, b, w, c, record=False).makespan_s
                est = _estimate("zb", p, m, 1, f, b, w, c, False, limit)
                assert not est.exact
                worst = max(worst, abs(est.makespan_s - ex) / ex)
    assert worst < 0.06


def test_zb_simulation_is_fast_at_pp64():
    p, m = 64, 256
    f = [1.0 + 0.001 * r for r in range(p)]
    t0 = time.process_time()
    tl = simulate("zb", p, m, 1, f, [2.0] * p, [0.9] * p, 0.01, record=False)
    took = time.process_time() - t0
    assert p * m <= ZB_EXACT_LIMIT
    assert tl.makespan_s >= m * (f[0] + 2.0 + 0.9)
    assert took < 2.0, f"{took:.2f} s for {3 * p * m} tasks (measured ~0.06 s)"


# --- a schedule on shared cores (planner.schedule_shared) ---

from planner.schedule_shared import Host, TaskCost, simulate_shared  # noqa: E402


@pytest.mark.parametrize("schedule,pp,m,vpp", [("gpipe", 3, 4, 1), ("1f1b", 4, 8, 1), ("interleaved", 2, 4, 2)])
def test_a_core_per_rank_runs_the_plain_schedule(schedule, pp, m, vpp):
    fwd, bwd = [1.0 + 0.1 * k for k in range(pp * vpp)], [2.0 + 0.3 * k for k in range(pp * vpp)]
    plain = simulate(schedule, pp, m, vpp, fwd, bwd, None, 0.2)
    shared = simulate_shared(schedule, pp, m, vpp, [TaskCost(f) for f in fwd], [TaskCost(b) for b in bwd], 0.2,
                             (Host(pp, (1,) * pp),))
    assert shared.makespan_s == pytest.approx(plain.makespan_s, rel=1e-12)
    assert shared.busy_s == pytest.approx(plain.busy_s, rel=1e-12)
    assert shared.peak_in_flight == plain.peak_in_flight


def test_ranks_computing_at_once_share_the_cores():
    """GPipe, 2 ranks on one core, F = B = 1 s, 2 micro-batches: rank 0's F1 and rank 1's F0 run
    together at half speed (t 1-3), so do rank 1's B1 and rank 0's B0 (t 5-7): the makespan is the
    whole work, 8 s, on the one core; each rank is awake 6 s."""
    t = simulate_shared("gpipe", 2, 2, 1, [TaskCost(1.0)] * 2, [TaskCost(1.0)] * 2, 0.0, (Host(1, (1, 1)),))
    assert t.makespan_s == pytest.approx(8.0)
    assert t.busy_s == pytest.approx((6.0, 6.0))
    spans = {(x.stage, x.kind, x.micro_batch): (x.start_s, x.end_s) for x in t.tasks}
    assert spans[0, "F", 1] == pytest.approx((1.0, 3.0)) and spans[1, "F", 0] == pytest.approx((1.0, 3.0))


def test_a_sleeping_rank_leaves_its_core_and_hosts_are_apart():
    """1F1B, 2 ranks on one core, work 1 s per task; rank 0 then sleeps 1 s per task (a wait on
    another node). Its sleeps leave the core to rank 1 (B0 at t 4-5 and B1 at t 7-8 alone), the
    shared spans run at half speed: 10 s. Held instead of slept, rank 1 computes beside it: 11 s.
    On two hosts of one core each nobody shares: the plain schedule."""
    def run(kind: str, hosts) -> float:
        tasks = [TaskCost(1.0, **{kind: 1.0}), TaskCost(1.0)]
        return simulate_shared("1f1b", 2, 2, 1, tasks, tasks, 0.0, hosts).makespan_s

    assert run("sleep_s", (Host(1, (1, 1)),)) == pytest.approx(10.0)
    assert run("busy_s", (Host(1, (1, 1)),)) == pytest.approx(11.0)
    plain = simulate("1f1b", 2, 2, 1, [2.0, 1.0], [2.0, 1.0]).makespan_s
    assert run("sleep_s", (Host(1, (1, 0)), Host(1, (0, 1)))) == pytest.approx(plain)


def test_ranks_sleeping_on_one_link_share_it_and_one_alone_has_it_whole():
    """GPipe, 2 ranks on 2 cores of one host whose waits were priced with both on the link
    (link_senders 2), each task 1 s of work then 2 s of sleep. Rank 1's F0 waits for rank 0's,
    so their sleeps never meet in the fill: alone on the link each takes 1 s. Priced as fixed
    (link_senders 0) every sleep takes its 2 s."""
    tasks = [TaskCost(1.0, sleep_s=2.0)] * 2
    fixed = simulate_shared("gpipe", 2, 1, 1, tasks, tasks, 0.0, (Host(2, (1, 1)),))
    shared = simulate_shared("gpipe", 2, 1, 1, tasks, tasks, 0.0, (Host(2, (1, 1), link_senders=2),))
    assert fixed.makespan_s == pytest.approx(12.0)  # 4 tasks of 3 s one after the other
    assert shared.makespan_s == pytest.approx(8.0)  # 4 tasks of 1 s work + 1 s alone on the link
    both = simulate_shared("gpipe", 2, 1, 1, tasks, tasks, 0.0, (Host(2, (1, 0), link_senders=2),
                                                                Host(2, (0, 1), link_senders=2)))
    assert both.makespan_s == pytest.approx(8.0)  # apart: each alone on its host's link
