"""Fast path for the search: closed-form schedules, lower bound, memory without simulation."""
import dataclasses
import itertools

import pytest

from planner.catalog import load_model
from planner.cost.runtime import RUNTIME_PRESETS, Runtime
from planner.cost.step import cluster_for, lower_bound_step_time_s, peak_memory, predict
from planner.plan import ParallelConfig
from planner.schedule import simulate
from planner.schedule_estimate import closed_form_in_flight, closed_form_makespan, estimate

TIMES = [(1.0, 2.0, 0.0), (1.0, 1.0, 0.7), (0.5, 2.0, 3.0), (2.0, 1.0, 0.2), (0.3, 0.9, 0.05)]


@pytest.mark.parametrize("sched", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 8])
def test_closed_form_equals_simulation(sched, p):
    for m in range(1, 3 * p + 3):
        for f, b, c in TIMES:
            tl = simulate(sched, p, m, 1, [f] * p, [b] * p, None, c)
            cf = closed_form_makespan(sched, p, m, 1, f, b, 0.0, c)
            assert cf == pytest.approx(tl.makespan_s, rel=1e-9, abs=0), (p, m, f, b, c)
            assert closed_form_in_flight(sched, p, m) == tl.peak_in_flight


@pytest.mark.parametrize("p,v", [(2, 2), (3, 2), (4, 3), (8, 2)])
def test_interleaved_closed_form(p, v):
    n = p * v
    for m in (p, 2 * p, 3 * p, 5 * p):
        for f, b, c in TIMES:
            tl = simulate("interleaved", p, m, v, [f] * n, [b] * n, None, c)
            cf = closed_form_makespan("interleaved", p, m, v, f, b, 0.0, c)
            if c <= min(f, b) or m == p:
                assert cf == pytest.approx(tl.makespan_s, rel=1e-9, abs=0), (p, v, m, f, b, c)
            else:
                assert cf is None
            assert closed_form_in_flight("interleaved", p, m, v) == tl.peak_in_flight


def test_estimate_fast_path_matches_simulation():
    p, m = 4, 64
    slow = estimate("1f1b", p, m, 1, [1.0] * p, [2.0] * p, None, 0.1)
    fast = estimate("1f1b", p, m, 1, [1.0] * p, [2.0] * p, None, 0.1, need_timeline=False)
    assert fast.makespan_s == pytest.approx(slow.makespan_s, rel=1e-9)
    assert fast.busy_s == pytest.approx(slow.busy_s, rel=1e-9)
    assert fast.peak_in_flight == slow.peak_in_flight
    assert fast.timeline.tasks == ()


def test_zb_small_m_terminates():
    tl = simulate("zb", 2, 1, 1, [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], 0.1)
    assert tl.makespan_s == pytest.approx(5.2)


GPT = load_model("gpt3-175b")
A100 = cluster_for("dgx-a100-80gb", 16)


def _close(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], (where, k))
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for x, y in zip(a, b):
            _close(x, y, where)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), where
    else:
        assert a == b, where


def _plans():
    for tp, pp, sched, rc, sh in itertools.product((1, 8), (1, 2, 4, 8), ("1f1b", "gpipe", "interleaved", "zb"),
                                                   ("none", "selective", "full"), ("none", "zero1", "zero3")):
        v = 2 if sched == "interleaved" else 1
        dp = 128 // (tp * pp)
        yield ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=v, schedule=sched, micro_batch=1,
                             global_batch=dp * 2 * pp, recompute=rc, sharding=sh)


def test_fast_predict_same_output_and_bounds():
    every = Runtime()  # its pricing on every schedule and sharding, whether Megatron runs them or not
    rt = dataclasses.replace(RUNTIME_PRESETS["megatron-lm-2021"], shardings=every.shardings,
                             pipeline_shardings=every.pipeline_shardings, schedules=every.schedules)
    for P in _plans():
        full = predict(GPT, A100, P, rt)
        fast = predict(GPT, A100, P, rt, timeline=False)
        a, b = full.to_dict(), fast.to_dict()
        for key in ("timeline", "timeline_micro_batches"):
            a.pop(key), b.pop(key)
        _close(a, b, P)
        assert lower_bound_step_time_s(GPT, A100, P, rt) <= full.step_time_s * (1 + 1e-12)
        mem = peak_memory(GPT, A100, P, rt).peak_bytes
        if P.schedule == "zb" and P.pp > 1:
            assert mem >= full.peak_memory_bytes * (1 - 1e-12)
        else:
            assert mem == pytest.approx(full.peak_memory_bytes, rel=1e-12)


def _captured_pipeline(monkeypatch, P):
    """predict(P) with planner.cost.step.estimate spied: (prediction, the stage times it passed)."""
    import planner.cost.step as step

    seen = []
    real = step.estimate

    def spy(*args, **kw):
        seen.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(step, "estimate", spy)
    pred = predict(GPT, A100, P)
    fast = predict(GPT, A100, P, timeline=False)
    monkeypatch.setattr(step, "estimate", real)
    assert len(seen) == 2 and seen[0] == seen[1]
    return pred, fast, seen[0]


def test_predict_zb_pipeline_equals_reference_simulation(monkeypatch):
    """predict()'s ZB-H1 pipeline is the reference greedy schedule (tests/test_schedule.py) on
    the stage times predict() hands to planner.schedule.estimate: same tasks, makespan and
    per-stage busy time, with and without the timeline; for m > 3 pp the exact simulation
    at m (no extension) and a timeline of 3 pp micro-batches."""
    from tests.test_schedule import reference_zb

    checked = 0
    for pp, mb, gm, rc in ((2, 1, 3, "none"), (4, 1, 2, "full"), (8, 2, 1, "selective"), (4, 2, 3, "none"),
                           (4, 1, 7, "none"), (2, 1, 11, "selective")):
        dp = 128 // (8 * pp)
        P = ParallelConfig(tp=8, pp=pp, dp=dp, schedule="zb", micro_batch=mb, global_batch=dp * mb * pp * gm,
                           recompute=rc)
        pred, fast, args = _captured_pipeline(monkeypatch, P)
        sched, p_, m, v, F, B, W, hop = args
        assert (sched, p_, m, v) == ("zb", pp, P.num_micro_batches, 1)
        mk, busy, peak, ref = reference_zb(pp, m, F, B, W, hop)
        assert [s.time_s for s in pred.per_stage] == pytest.approx(busy, rel=1e-9)
        assert fast.step_time_s == pred.step_time_s
        crit = max(range(pp), key=lambda r: busy[r])
        assert pred.time.bubble_s + pred.time.pp_s == pytest.approx(mk - busy[crit], rel=1e-9, abs=1e-12)
        tasks = pred.timeline
        if m <= 3 * pp:
            mine = sorted((t.stage, t.micro_batch, t.kind, t.start_s) for t in tasks)
            theirs = sorted((r, j, k, s) for r, j, k, s, _ in ref)
            assert [x[:3] for x in mine] == [x[:3] for x in theirs]
            assert [x[3] for x in mine] == pytest.approx([x[3] for x in theirs], rel=1e-9, abs=1e-12)
        else:
            assert pred.timeline_micro_batches == 3 * pp and len(tasks) == 3 * pp * 3 * pp
        checked += 1
    assert checked == 6
