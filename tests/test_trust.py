"""Step-time intervals from the cross-validated residuals of the nearest published runs."""
import pytest

from planner.plan import ParallelConfig
from planner.trust import Residual, describe, family_of, step_time_error, trust


def cfg(**kw):
    base = dict(tp=1, pp=1, dp=8, micro_batch=1, global_batch=64)
    base.update(kw)
    return ParallelConfig(**base)


def test_family_of_a_plan_label():
    assert family_of(cfg(tp=2, dp=4).megatron_notation()) == "model parallel"
    assert family_of(cfg(sharding="zero3").megatron_notation()) == "sharded data parallel"
    assert family_of(cfg(sharding="zero1").megatron_notation()) == "data parallel"


def test_rate_errors_become_step_time_errors():
    assert step_time_error("step_time_s", 0.1) == pytest.approx(0.1)
    assert step_time_error("mfu_pct", 0.25) == pytest.approx(1 / 1.25 - 1)


def rows(errors, profile="p", family="data parallel", num_gpus=8, runtime="rt"):
    return tuple(Residual(i, profile, runtime, family, num_gpus, e) for i, e in enumerate(errors))


def test_interval_spans_the_nearest_rows_errors():
    t = trust(10.0, "p", "rt", cfg(), rows([0.0, 0.0, 0.0]))
    assert (t.low_s, t.high_s, t.extrapolation) == (pytest.approx(10.0), pytest.approx(10.0), False)
    t = trust(10.0, "p", "rt", cfg(), rows([-0.5, 0.0, 1.0]))  # 10th/90th percentile: -0.4 and +0.8
    assert t.low_s == pytest.approx(10.0 / 1.8)
    assert t.high_s == pytest.approx(10.0 / 0.6)
    assert "3 published runs" in describe(t)


def test_nearer_tier_wins_and_far_scale_is_not_near():
    near = rows([0.1, 0.1, 0.1], num_gpus=8)
    far = tuple(Residual(10 + i, "p", "rt", "data parallel", 1024, -0.3) for i in range(3))
    t = trust(1.0, "p", "rt", cfg(), near + far)
    assert set(t.rows) == {0, 1, 2}
    t = trust(1.0, "p", "rt", cfg(), far)  # no row within 8x: same family at any scale
    assert "any scale" in t.basis and t.high_s == pytest.approx(1 / 0.7)


def test_no_rows_on_the_profile_is_an_extrapolation():
    t = trust(1.0, "other", "rt", cfg(), rows([0.1, 0.2, 0.3]))
    assert t.extrapolation and t.low_s is None and "extrapolation" in describe(t)
    assert trust(1.0, "p", "rt", cfg(), rows([0.1, 0.2])).extrapolation


def test_another_stack_on_the_profile_gives_an_interval_flagged_as_extrapolation():
    own = rows([0.1, 0.1, 0.1], runtime="rt")
    other = tuple(Residual(10 + i, "p", "old", "data parallel", 8, -0.3) for i in range(3))
    assert set(trust(1.0, "p", "rt", cfg(), own + other).rows) == {0, 1, 2}  # its own stack first
    t = trust(1.0, "p", "new", cfg(), own + other)
    assert t.extrapolation and t.low_s is not None and "priced as new" in t.basis
    assert describe(t).startswith("extrapolation, ")


def test_a_profile_without_rows_borrows_those_of_its_die_as_an_extrapolation():
    from planner.trust import same_die_profiles
    assert same_die_profiles("dgx-h200-141gb") == ("dgx-h100-80gb", "gh200-96gb-quad")
    assert same_die_profiles("dgx-a100-80gb") == ("dgx-a100-40gb",)
    assert same_die_profiles("dgx-b200-192gb") == ()
    assert same_die_profiles("no-such-profile") == ()
    h100 = rows([0.1, 0.1, 0.1], profile="dgx-h100-80gb")
    t = trust(1.0, "dgx-h200-141gb", "rt", cfg(), h100)
    assert t.extrapolation and t.low_s == pytest.approx(1 / 1.1) and "the same die" in t.basis
    assert trust(1.0, "dgx-b200-192gb", "rt", cfg(), h100).low_s is None
    assert trust(1.0, "dgx-h200-141gb", "rt", cfg(), h100, kin=()).low_s is None
