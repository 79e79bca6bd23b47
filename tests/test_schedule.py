import pytest

from planner.errors import InputError
from planner.schedule import estimate, simulate


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
