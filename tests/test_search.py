"""The plan search: optimality against brute force, rejection counting, --fix, nothing fits."""
import dataclasses
import math

import pytest

from planner.catalog import load_model
from planner.cost.runtime import DEFAULT_RUNTIME
from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.plan import ParallelConfig
from planner.search import brute_force, search
from planner.search.branch_bound import BranchAndBound
from planner.search.space import normalise_fixed, parse_fix

FIX = {"recompute": "selective", "sharding": "zero1"}


@pytest.fixture(scope="module")
def small():
    model = load_model("llama3-8b", seq_len=2048)
    cluster = cluster_for("dgx-a100-80gb", 1, 4)
    return model, cluster


def _distinct(brute):
    """Brute force's list as the search ranks it: plans differing only in ZeRO stage or rank order
    at the same step time are one row (the leaner one)."""
    from planner.search.results import RankedPlan, same_plan_but_storage

    kept: list = []
    for P, pred in brute:
        entry = RankedPlan(P, pred, 0.0)
        twin = next((i for i, e in enumerate(kept) if same_plan_but_storage(e, entry)), None)
        if twin is None:
            kept.append(entry)
        elif pred.peak_memory_bytes < kept[twin].prediction.peak_memory_bytes:
            kept[twin] = entry
    return [(e.parallel, e.prediction) for e in kept]


def test_best_equals_brute_force(small):
    model, cluster = small
    res = search(model, cluster, 8, fixed=FIX, top_k=3, refine=False)
    brute = _distinct(brute_force(model, cluster, 8, fixed=FIX))
    assert res.ranked and brute
    assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:3]]
    # the search evaluated far fewer candidates than brute force
    assert res.evaluated < len(brute)


def test_counts_add_up(small):
    model, cluster = small
    # unsharded: an 8B model's state needs tp or pp, so some candidates cannot fit
    res = search(model, cluster, 8, fixed={**FIX, "sharding": "none"}, top_k=3, refine=False)
    n_rejected = sum(rc.count for rc in res.rejections.values())
    fitting = res.total_candidates - n_rejected
    assert fitting >= len(res.ranked)
    # every evaluated-and-fitting candidate is one predict() call that fit
    assert fitting <= res.evaluated
    # tp > 4 GPUs per node does not exist on 4 GPUs; tp=4 divides 32 heads and 8 kv heads
    assert "tp_crosses_nodes" not in res.rejections
    assert res.rejections["out_of_memory"].count > 0


def test_rejection_reasons_counted_exactly():
    # tiny-gpt has 4 heads: on 8 GPUs per node, tp=8 cannot split the heads.
    model = load_model("tiny-gpt")
    cluster = cluster_for("dgx-a100-80gb", 1)
    fixed = {"recompute": "none", "sharding": "none", "sp": False, "schedule": "1f1b", "mb": 1,
             "order": "tp-cp-dp-pp"}
    res = search(model, cluster, 8, fixed=fixed, top_k=1, refine=False)
    # space: (tp, cp, pp) with tp*cp*pp | 8 -> 10 ordered factorizations of 8 into 4 factors x 1 leaf...
    # ordered 4-factor factorizations of 8 = C(3+3, 3) = 20
    assert res.total_candidates == 20
    nd = res.rejections["not_divisible"]
    # tp=8: (cp, pp, dp) with product 1 -> 1 candidate; cp does not divide... seq 256 is divisible by all
    assert nd.details["tp does not divide heads / kv heads / ffn"] == 1
    # pp=8 > 4 layers: (tp, cp) with tp*cp = 1 -> 1; pp=8 only once
    assert res.rejections["too_many_stages"].count == 1
    # dp must divide the global batch 8: always true here; mb=1 fixed. The accounting closes: every
    # other candidate was priced once or pruned by its lower bound (nothing runs out of memory)
    assert "out_of_memory" not in res.rejections
    assert sum(rc.count for rc in res.rejections.values()) + res.evaluated == res.total_candidates
    assert res.evaluated >= len(res.ranked) == 1


def test_fix_is_honoured(small):
    model, cluster = small
    res = search(model, cluster, 8, fixed={"tp": 2, "sp": "on", "recompute": "full"}, top_k=5, refine=False)
    assert res.ranked
    for e in res.ranked:
        assert e.parallel.tp == 2 and e.parallel.sequence_parallel and e.parallel.recompute == "full"


def test_parse_fix_errors():
    assert parse_fix(["tp=8", "mb=2", "sp=off", "sharding=fsdp"]) == {
        "tp": 8, "micro_batch": 2, "sequence_parallel": False, "sharding": "zero3"}
    for bad in (["tp"], ["foo=1"], ["tp=x"], ["tp=0"], ["recompute=some"], ["schedule=fast"], ["sp=maybe"]):
        with pytest.raises(InputError) as err:
            parse_fix(bad)
        assert err.value.field == "fix"


def test_nothing_fits():
    model = load_model("gpt3-175b")
    cluster = cluster_for("dgx-a100-80gb", 1)
    res = search(model, cluster, 16, top_k=3)
    assert not res.fits and not res.ranked
    oom = res.rejections["out_of_memory"]
    assert oom.count > 0 and oom.min_need_bytes > cluster.node.device.hbm_bytes
    assert res.closest is not None and not res.closest.prediction.fits
    assert "out of memory" in res.rejection_summary()


def test_bounds_below_predict(small):
    """The leaf lower bound never exceeds predict(); the memory bound never exceeds its peak."""
    model, cluster = small
    s = BranchAndBound(model, cluster, 8, 2048, "bf16", normalise_fixed({}), 3, None, DEFAULT_RUNTIME)
    checked = 0
    for tp, pp, dp in ((1, 1, 4), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)):
        for mb in (1, 2):
            m = 8 // (dp * mb)
            for rc in ("none", "selective", "full"):
                for sp in ((False, True) if tp > 1 else (False,)):
                    lc = s.costs.layer(tp, 1, mb, rc, sp)
                    for sh in (("none", "zero1", "zero2", "zero3") if dp > 1 else ("none",)):
                        for sched, v in (("1f1b", 1), ("gpipe", 1), ("zb", 1), ("interleaved", 2)):
                            if pp == 1 and sched != "1f1b":
                                continue
                            if sched == "interleaved" and m % pp:
                                continue
                            for order in (("tp-cp-dp-pp", "tp-cp-pp-dp") if pp > 1 and dp > 1 else ("tp-cp-dp-pp",)):
                                P = ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=v, micro_batch=mb, global_batch=8,
                                                   seq_len=2048, recompute=rc, sharding=sh, sequence_parallel=sp,
                                                   schedule=sched, order=order)
                                pred = predict(model, cluster, P)
                                lb = s.leaf_bound(lc, tp, 1, pp, dp, m, rc, sh, sched, v, order)
                                mem, _ = s.memory(lc, tp, 1, pp, dp, mb, m, sh, sched, v)
                                assert lb <= pred.step_time_s * (1 + 1e-9), (P, lb, pred.step_time_s)
                                assert mem <= pred.peak_memory_bytes * (1 + 1e-9), (P, mem, pred.peak_memory_bytes)
                                checked += 1
    assert checked > 100


def test_uneven_stages_kept_only_when_faster():
    model = load_model("gpt3-175b")
    cluster = cluster_for("dgx-a100-80gb", 16)
    res = search(model, cluster, 256, fixed={"tp": 8, "pp": 8, "schedule": "1f1b"}, top_k=3)
    assert res.ranked
    for e in res.ranked:
        if e.parallel.stage_layers:
            balanced = dataclasses.replace(e.parallel, stage_layers=())
            assert e.step_time_s < predict(model, cluster, balanced).step_time_s
            assert sum(e.parallel.stage_layers) == model.n_layers


def test_table_and_plans(small):
    model, cluster = small
    res = search(model, cluster, 8, top_k=3, hardware="dgx-a100-80gb")
    df = res.table
    assert list(df["rank"]) == [1, 2, 3]
    assert {"step_time_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_gib", "headroom_gib",
            "bubble_pct", "exposed_comm_pct", "plan"} <= set(df.columns)
    assert df["step_time_s"].is_monotonic_increasing
    plans = res.best_plans
    assert plans[0].prediction["step_time_s"] == pytest.approx(df["step_time_s"][0])
    assert plans[0].hardware == "dgx-a100-80gb" and not math.isnan(plans[0].prediction["mfu"])


def test_zb_bound_below_simulation_and_tight():
    """planner.search.zb_bound never exceeds the simulated ZB-H1 makespan, and with equal
    stages (F = B = W, no hop, m >= p) it is within one W of it (Qi et al.'s (p-1)(F+B-W))."""
    import random

    from planner.schedule import simulate
    from planner.search.costs import zb_bound

    rng = random.Random(3)
    for p in range(2, 9):
        for m in list(range(1, 3 * p + 3)) + [5 * p, 8 * p + 1]:
            cases = [([1.0] * p, [1.0] * p, [1.0] * p, 0.0), ([1.0] * p, [2.0] * p, [0.6] * p, 0.05)]
            for _ in range(4):
                base = rng.uniform(0.5, 1.5)
                cases.append(([base * rng.uniform(0.8, 1.25) for _ in range(p)],
                              [2 * base * rng.uniform(0.8, 1.25) for _ in range(p)],
                              [base * rng.uniform(0.5, 1.25) for _ in range(p)], rng.choice([0.0, 0.01, 0.1])))
            for F, B, W, c in cases:
                mk = simulate("zb", p, m, 1, F, B, W, c, record=False).makespan_s
                lb = zb_bound(F, B, W, m, c, p)
                assert lb <= mk * (1 + 1e-12), (p, m, F, B, W, c, lb, mk)
            if m >= p:
                assert zb_bound([1.0] * p, [1.0] * p, [1.0] * p, m, 0.0, p) >= 3 * m + (p - 1) - 1 - 1e-9


def test_zb_leaf_bound_below_predict_on_a_large_cluster():
    """The leaf bound of ZB-H1 candidates at pp 8..32 (64-256 micro-batches) stays below
    predict() and is close to it."""
    model = load_model("llama3-70b", seq_len=4096)
    cluster = cluster_for("dgx-h100-80gb", 64)
    s = BranchAndBound(model, cluster, 512, 4096, "bf16", normalise_fixed({}), 3, None, DEFAULT_RUNTIME)
    n = 0
    for tp, pp, mb in ((8, 8, 1), (4, 16, 1), (8, 16, 2), (2, 32, 1), (8, 32, 1)):
        dp = 512 // (tp * pp)
        m = 512 // (dp * mb)
        for rc in ("none", "full"):
            lc = s.costs.layer(tp, 1, mb, rc, True if tp > 1 else False)
            for order in ("tp-cp-dp-pp", "tp-cp-pp-dp"):
                P = ParallelConfig(tp=tp, pp=pp, dp=dp, micro_batch=mb, global_batch=512, seq_len=4096, recompute=rc,
                                   sharding="zero1", sequence_parallel=tp > 1, schedule="zb", order=order)
                pred = predict(model, cluster, P, timeline=False)
                lb = s.leaf_bound(lc, tp, 1, pp, dp, m, rc, "zero1", "zb", 1, order)
                assert lb <= pred.step_time_s * (1 + 1e-9), (P, lb, pred.step_time_s)
                # tight where the greedy ZB-H1 reaches the (p-1)(F+B-W) bubble (pp <= 16 here);
                # at pp 32 the greedy itself loses up to ~11% to it (measured 0.89-0.99)
                assert lb >= (0.999 if pp <= 16 else 0.85) * pred.step_time_s, (P, lb, pred.step_time_s)
                n += 1
    assert n == 20


def test_bounds_below_predict_with_framework_profile():
    """On the calibrated CPU profile (its ``framework:`` section) the search's rates, TP,
    FSDP2 and ZeRO-1 terms are predict()'s: leaf bounds and memory bounds stay below predict()
    and the bound of a plain DP plan is within a few percent of it."""
    from planner.cost.runtime import EXECUTOR_RUNTIME

    model = load_model("tiny-llama")
    cluster = cluster_for("local-cpu", 1, 4)
    assert cluster.node.framework is not None
    seq = model.seq_len
    s = BranchAndBound(model, cluster, 8, seq, "fp32", normalise_fixed({}), 3, None, EXECUTOR_RUNTIME)
    assert s.costs.rates.framework is cluster.node.framework
    checked = 0
    ratios = []
    for tp, pp, dp in ((1, 1, 4), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2), (4, 1, 1)):
        for mb in (1, 2):
            m = 8 // (dp * mb)
            for rc in ("none", "selective", "full"):
                for sp in ((False, True) if tp > 1 else (False,)):
                    lc = s.costs.layer(tp, 1, mb, rc, sp)
                    for sh in (("none", "zero1", "zero2", "zero3") if dp > 1 else ("none",)):
                        for sched, v in (("1f1b", 1), ("gpipe", 1), ("zb", 1), ("interleaved", 2)):
                            if pp == 1 and sched != "1f1b":
                                continue
                            if sched == "interleaved" and (m % pp or pp * v > model.n_layers):
                                continue
                            P = ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=v, micro_batch=mb, global_batch=8,
                                               seq_len=seq, recompute=rc, sharding=sh, sequence_parallel=sp,
                                               schedule=sched, precision="fp32")
                            pred = predict(model, cluster, P)
                            lb = s.leaf_bound(lc, tp, 1, pp, dp, m, rc, sh, sched, v, "tp-cp-dp-pp")
                            mem, _ = s.memory(lc, tp, 1, pp, dp, mb, m, sh, sched, v)
                            assert lb <= pred.step_time_s * (1 + 1e-9), (P, lb, pred.step_time_s)
                            assert mem <= pred.peak_memory_bytes * (1 + 1e-9), (P, mem, pred.peak_memory_bytes)
                            if pp == 1 and tp == 1 and sh == "none":
                                ratios.append(lb / pred.step_time_s)
                            checked += 1
    assert checked > 60
    # 4 ranks on the 2 calibrated cores: predict() lets a busy rank take up to a core while
    # others wait (its busy-fraction fixed point), so the bound assumes whole cores: at worst half
    # of predict(), less the measured cost of oversubscribing the host that the bound leaves out
    over = cluster.node.framework.oversubscribed_slowdown
    assert min(ratios) > 0.5 / (1 + over), (ratios, over)
    # with a core per rank the framework's per-op costs are in the bound: a pp=1 DP plan's
    # bound is nearly its prediction
    two = cluster_for("local-cpu", 1, 2)
    s2 = BranchAndBound(model, two, 8, seq, "fp32", normalise_fixed({}), 3, None, DEFAULT_RUNTIME)
    tight = []
    for mb in (1, 2, 4):
        for rc in ("none", "selective", "full"):
            lc = s2.costs.layer(1, 1, mb, rc, False)
            P = ParallelConfig(dp=2, micro_batch=mb, global_batch=8, seq_len=seq, recompute=rc, precision="fp32")
            pred = predict(model, two, P).step_time_s
            lb = s2.leaf_bound(lc, 1, 1, 1, 2, 8 // (2 * mb), rc, "none", "1f1b", 1, "tp-cp-dp-pp")
            assert lb <= pred * (1 + 1e-9)
            tight.append(lb / pred)
    assert min(tight) > 0.9, tight


def test_best_equals_brute_force_on_framework_profile():
    """With the framework-aware bounds the search still returns brute force's top plans on
    the calibrated CPU profile, evaluating fewer of them."""
    model = load_model("tiny-llama")
    # a core per rank, and 4 ranks on 2 cores (weaker bounds: a busy rank may take a whole core)
    for ranks, share_evaluated in ((2, 0.3), (4, 0.6)):
        cluster = cluster_for("local-cpu", 1, ranks)
        res = search(model, cluster, 8, precision="fp32", fixed={"cp": 1}, top_k=5, refine=False)
        brute = _distinct(brute_force(model, cluster, 8, precision="fp32", fixed={"cp": 1}))
        assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:5]]
        assert res.evaluated < share_evaluated * len(brute)


def test_same_speed_variants_are_one_row():
    """ZeRO-1 and ZeRO-2 (and the two rank orders) often price the same step: the ranking lists
    the leaner one and names the other."""
    model = load_model("llama3-8b")
    res = search(model, cluster_for("dgx-h100-80gb", 2), 64, 4096, top_k=10, refine=False)
    for i, a in enumerate(res.ranked):
        for b in res.ranked[i + 1:]:
            from planner.search.results import same_plan_but_storage
            assert not same_plan_but_storage(a, b), (a.parallel, b.parallel)
    assert any("same time with" in e.note for e in res.ranked)
