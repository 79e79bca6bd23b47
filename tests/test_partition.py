import itertools
import math
import random

import numpy as np
import pytest

from planner.partition import CutRejected, StageCut, evaluate_chain, partition_chain


def brute_force(cost, mem, n, limits, first, last):
    """Optimum over every composition of L into n positive parts."""
    L = cost.shape[1]
    best, best_ratio = math.inf, math.inf
    for cuts in itertools.combinations(range(1, L), n - 1):
        ends = [*cuts, L]
        starts = [0, *cuts]
        times, ratios, ok = [], [], True
        for k, (a, b) in enumerate(zip(starts, ends)):
            t = cost[k, a:b].sum() + (first[0] if k == 0 else 0) + (last[0] if k == n - 1 else 0)
            m = mem[k, a:b].sum() + (first[1] if k == 0 else 0) + (last[1] if k == n - 1 else 0)
            times.append(t)
            ratios.append(m / limits[k])
            ok &= m <= limits[k]
        best_ratio = min(best_ratio, max(ratios))
        if ok:
            best = min(best, max(times))
    return best, best_ratio


@pytest.mark.parametrize("seed", range(6))
def test_chain_dp_matches_brute_force(seed):
    rng = random.Random(seed)
    checked = feasible = 0
    for _ in range(60):
        L = rng.randint(1, 8)
        n = rng.randint(1, L)
        per_stage = rng.random() < 0.4
        shape = (n, L) if per_stage else (L,)
        times = np.array([rng.randint(1, 20) for _ in range(int(np.prod(shape)))], float).reshape(shape)
        mems = np.array([rng.randint(1, 10) for _ in range(int(np.prod(shape)))], float).reshape(shape)
        speeds = [rng.choice([1.0, 2.0, 0.5, 3.0]) for _ in range(n)] if rng.random() < 0.5 else None
        limits = [float(rng.randint(5, 40)) for _ in range(n)]
        first = (float(rng.randint(0, 10)), float(rng.randint(0, 5)))
        last = (float(rng.randint(0, 10)), float(rng.randint(0, 5)))
        cut = partition_chain(times, mems, n, limits, first, last, speeds=speeds)
        cost = np.broadcast_to(times, (n, L)) / np.array(speeds or [1.0] * n)[:, None]
        mem2 = np.broadcast_to(mems, (n, L))
        fs = (first[0] / (speeds or [1.0])[0], first[1])
        ls = (last[0] / (speeds or [1.0] * n)[-1], last[1])
        expected, ratio = brute_force(cost, mem2, n, limits, fs, ls)
        checked += 1
        if math.isinf(expected):
            assert isinstance(cut, CutRejected) and cut.reason == "out_of_memory"
            assert cut.memory_ratio == pytest.approx(ratio) and cut.memory_ratio > 1
            continue
        feasible += 1
        assert isinstance(cut, StageCut)
        assert cut.bottleneck_s == pytest.approx(expected, rel=1e-12)
        assert sum(cut.layers_per_stage) == L and min(cut.layers_per_stage) >= 1
        assert all(m <= lim for m, lim in zip(cut.stage_memory_bytes, limits))
        again = evaluate_chain(times, mems, cut.layers_per_stage, limits, first, last, speeds=speeds)
        assert again.stage_times_s == pytest.approx(cut.stage_times_s)
    assert checked == 60 and feasible >= 10


def test_faster_stages_get_more_layers():
    cut = partition_chain([1.0] * 6, [0.0] * 6, 2, speeds=[1.0, 2.0])
    assert cut.layers_per_stage == (2, 4) and cut.stage_times_s == (2.0, 2.0)
    # a per-stage time matrix says the same thing
    times = np.array([[1.0] * 6, [0.5] * 6])
    assert partition_chain(times, [0.0] * 6, 2).layers_per_stage == (2, 4)


def test_embedding_and_head_make_end_stages_lighter():
    cut = partition_chain([1.0] * 8, [0.0] * 8, 4, first_extra=(1.0, 0.0), last_extra=(2.0, 0.0))
    assert cut.layers_per_stage[0] < cut.layers_per_stage[1]
    assert cut.layers_per_stage[-1] == 1
    balanced = evaluate_chain([1.0] * 8, [0.0] * 8, (2, 2, 2, 2), first_extra=(1.0, 0.0), last_extra=(2.0, 0.0))
    assert cut.bottleneck_s < balanced.bottleneck_s


def test_rejections_are_values():
    too_many = partition_chain([1.0] * 3, [1.0] * 3, 4)
    assert isinstance(too_many, CutRejected) and too_many.reason == "too_many_stages"
    oom = partition_chain([1.0] * 8, [1.0] * 8, 4, 1.5)
    assert isinstance(oom, CutRejected) and oom.reason == "out_of_memory"
    assert oom.memory_ratio == pytest.approx(2 / 1.5)
    assert "1.33x" in oom.detail
    over = evaluate_chain([1.0] * 4, [1.0] * 4, (3, 1), 2.0)
    assert isinstance(over, CutRejected) and over.memory_ratio == pytest.approx(1.5)


def test_memory_limit_moves_layers():
    # stage 0 may hold only 2 layers' memory; the optimum without limit would be (3, 3)
    cut = partition_chain([1.0] * 6, [1.0] * 6, 2, [2.0, 10.0])
    assert cut.layers_per_stage == (2, 4)
