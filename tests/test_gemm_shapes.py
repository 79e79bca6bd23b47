"""GEMM efficiency by shape: a measured shape gets its own efficiency, a shape far from every
measured one the FLOP curve's, the profile round-trips the table, and the cost model prices the
three GEMMs of a linear layer at their own shapes."""
from __future__ import annotations

import dataclasses

import pytest

from planner.cost.compute import _block_passes, head_times, make_rates
from planner.cost.runtime import EXECUTOR_RUNTIME
from planner.errors import InputError
from planner.gemm_shapes import CURVE_DISTANCE, ShapeTable
from planner.hardware import EfficiencyCurve
from planner.presets import PRESETS
from planner.profile_yaml import load_profile
from planner.profile_write import profile_yaml, write_profile

CURVE = EfficiencyCurve(((1e6, 0.5), (1e9, 0.9)))
HEAD = (128.0, 50257.0, 768.0)
WGRAD = (50257.0, 768.0, 128.0)


def _table() -> ShapeTable:
    # a head's forward at 0.45 of peak, its weight gradient at 0.3; a square GEMM on the curve
    return ShapeTable(((*HEAD, 0.45), (*WGRAD, 0.3), (1024.0, 1024.0, 1024.0, 0.9)))


def test_a_measured_shape_gets_its_own_efficiency_and_a_far_one_the_curve():
    t = _table()
    assert CURVE(2 * 128 * 50257 * 768) * t.ratio(CURVE, *HEAD) == pytest.approx(0.45)
    assert CURVE(2 * 128 * 50257 * 768) * t.ratio(CURVE, *WGRAD) == pytest.approx(0.3)
    near = t.ratio(CURVE, 128, 65536, 768)           # a wider head: mostly the measured head's
    assert 0.45 / 0.9 < near < 0.8
    assert t.ratio(CURVE, 2 ** 20, 2 ** 20, 2 ** 20) == pytest.approx(1.0, abs=0.02)  # far: the curve
    assert CURVE_DISTANCE > 0


def test_bad_tables_are_refused():
    with pytest.raises(InputError):
        ShapeTable(())
    with pytest.raises(InputError):
        ShapeTable(((128.0, 128.0, 128.0, 1.5),))


def test_profile_round_trips_the_table(tmp_path):
    node = load_profile("local-cpu")
    device = dataclasses.replace(node.device, matmul_shapes_by_dtype=(("fp32", _table()),))
    node = dataclasses.replace(node, device=device)
    path = write_profile(node, tmp_path / "p.yaml")
    back = load_profile(str(path))
    assert back.device.matmul_shapes_by_dtype[0][1].points == _table().points
    text = profile_yaml(node)
    bad = text.replace("matmul_shapes:", "matmul_shapes:\n    fp64: [[1, 1, 1, 0.5]]\n    x:", 1)
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(InputError) as err:
        load_profile(str(tmp_path / "bad.yaml"))
    assert "matmul_shapes" in err.value.field


def test_the_head_and_each_backward_gemm_priced_at_their_shapes():
    node = load_profile("local-cpu")
    model = PRESETS["gpt2"]
    plain = make_rates(node.device, "fp32", 1, node.framework)
    device = dataclasses.replace(node.device, matmul_shapes_by_dtype=(("fp32", _table()),))
    shaped = make_rates(device, "fp32", 1, node.framework)
    f0, bi0, bw0 = head_times(model, 1, 128, 1, 1, False, "fp32", plain)
    f1, bi1, bw1 = head_times(model, 1, 128, 1, 1, False, "fp32", shaped)
    curve = node.device.gemm_efficiency("fp32", 2 * 128 * 50257 * 768)
    assert f1 > f0 and bw1 > bw0          # the head's forward and weight gradient run below the curve
    assert bw1 - bw0 > f1 - f0             # the weight gradient (K = 128) the more
    assert curve > 0.45
    # the block's GEMMs are far from the table's head shapes: within a few percent of the curve
    p0 = _block_passes(model, 1, 128, 1, 1, False, "fp32", plain, EXECUTOR_RUNTIME, 1, 0)
    p1 = _block_passes(model, 1, 128, 1, 1, False, "fp32", shaped, EXECUTOR_RUNTIME, 1, 0)
    assert p1[0] == pytest.approx(p0[0], rel=0.1)
