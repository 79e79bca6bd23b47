"""benchmarks/local_sweep*.py pieces that need no run: the op-profile table, the speed lines, the
rounds and their median."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def sweep():
    """The sweep's runner (run_rounds, median_run; its plans' names re-read from it)."""
    return _load("local_sweep")


@pytest.fixture(scope="module")
def report():
    return _load("local_sweep_report")


@pytest.fixture(scope="module")
def plans():
    return _load("local_sweep_plans")


def _profile(model: str, fwd: float) -> dict:
    return {"model": model, "forward_s": fwd, "backward_s": 2 * fwd, "optimizer_s": 0.01,
            "predicted": {"forward_s": 0.1, "backward_s": 0.2, "optimizer_s": 0.01},
            "classes_s": {"gemm": 2.0 * fwd, "other": fwd}}


def test_op_profile_table_shows_before_and_after_with_their_errors(report):
    lines = report.op_profile_lines([_profile("tiny-gpt", 0.125)], [_profile("tiny-gpt", 0.1)])
    row = next(line for line in lines if line.startswith("| tiny-gpt | forward"))
    # predicted 100 ms; before 100 ms (+0.0%); after 125 ms (-20.0%)
    assert row == "| tiny-gpt | forward | 100.0 | 100.0 | +0.0% | 125.0 | -20.0% |"
    assert any("before the first" in line for line in lines)


def test_op_profile_table_without_a_start_profile_keeps_one_measured_column(report):
    lines = report.op_profile_lines([_profile("tiny-gpt", 0.125)])
    row = next(line for line in lines if line.startswith("| tiny-gpt | forward"))
    assert row == "| tiny-gpt | forward | 100.0 | 125.0 | -20.0% |"
    assert report.op_profile_lines([]) == []


def test_speed_lines_split_the_error_by_the_machine_speed_before_each_run(report):
    import pandas as pd

    df = pd.DataFrame({"status": ["ok", "ok", "ok", "contended"],
                       "speed_vs_calibration": [1.02, 0.97, 1.30, 1.0],
                       "error_pct": [2.0, -4.0, 25.0, 50.0]})
    (line, blank) = report.speed_lines(df, 80e9)
    assert blank == ""
    assert "80.0 GFLOP/s" in line and "x1.02 the calibration's (range x0.97–x1.30" in line
    assert "calibrated speed: 2, median \\|error\\| 3.0% (worst 4.0%); the others: 1, median \\|error\\| 25.0%" in line
    assert report.speed_lines(df, None) == []


def test_calibrated_speed_reads_the_one_rank_contention_gemm(plans, tmp_path):
    path = tmp_path / "cal.json"
    path.write_text('{"contention": [{"ranks": 1, "per_rank": [{"flops_per_s": 5e10}]}]}')
    assert plans.calibrated_speed_flops(path) == 5e10
    assert plans.calibrated_speed_flops(tmp_path / "missing.json") is None


def _run(pred_s: float | None, meas_s: float | None, tag: str):
    summary = {"measured": {"step_time_s": meas_s}, "predicted": {"step_time_s": pred_s}}
    return (f"runs/{tag}", summary, 1, [], [])


def test_median_run_keeps_the_round_with_the_median_error(sweep):
    # per-round predictions (a calibration pass per round): errors +10%, -20%, +0%
    runs = [_run(1.1, 1.0, "a"), _run(0.8, 1.0, "b"), _run(2.0, 2.0, "c")]
    assert sweep.median_run(runs)[0] == "runs/c"
    # one prediction for all rounds: the median error is the median step time
    runs = [_run(1.0, 1.3, "slow"), _run(1.0, 0.9, "fast"), _run(1.0, 1.1, "mid")]
    assert sweep.median_run(runs)[0] == "runs/mid"
    # a round without a measurement does not count; none measured: the first run
    assert sweep.median_run([_run(1.0, None, "x"), _run(1.0, 1.2, "y")])[0] == "runs/y"
    assert sweep.median_run([_run(1.0, None, "x"), _run(None, 1.0, "z")])[0] == "runs/x"


def test_run_rounds_predicts_each_round_anew_and_keeps_its_median_error(sweep, monkeypatch, tmp_path):
    """``before_round(k)`` supplies round k's plans (re-predicted from that round's calibration);
    the kept run carries its own round's prediction."""
    entry = sweep.SweepPlan("p", "tiny-gpt", {})
    measured = {1: 1.0, 2: 1.5, 3: 1.2}       # the machine slows down, then recovers a little
    predicted = {1: 1.0, 2: 1.8, 3: 1.08}      # each round's own calibration
    called = []

    def before_round(k):
        called.append(k)
        return [(entry, predicted[k], None)]

    def fake_run_all(todo, out_dir, steps, warmup, wait_s, log=print):
        (e, pred, _), = todo
        k = int(out_dir.name.removeprefix("round"))
        return {e.name: _run(pred, measured[k], f"round{k}")}

    monkeypatch.setattr(sweep, "run_all", fake_run_all)
    results, times, errors = sweep.run_rounds([(entry, None, None)], tmp_path, 3, 1, 0, log=lambda s: None,
                                              before_round=before_round)
    assert called == [1, 2, 3]
    assert times["p"] == [1.0, 1.5, 1.2]
    assert [round(x, 6) for x in errors["p"]] == [0.0, 20.0, -10.0]
    assert results["p"][0] == "runs/round1"   # the median error (0%), not the median time (1.2 s, round 3)


def test_profile_source_names_the_calibration_mode(report):
    from types import SimpleNamespace as NS

    each = NS(calibrate_each_round=True, pass_s=[250.0, 254.0, 248.0], out_dir="runs/x", rounds=3,
              profile="hardware_profiles/local-cpu.yaml", calibration_results="reports/local-cpu-calibration.json",
              quick_calibration=True)
    text = report.profile_source(each)
    assert "one pass just before each round" in text and "4.2 / 4.2 / 4.1 min" in text
    assert "`calibrate --repeat 3`" in text
    once = NS(calibrate_each_round=False, calibrated_s=840.0, calibrate=3,
              calibration_results="reports/local-cpu-calibration.json")
    assert "--repeat 3 --save-results reports/local-cpu-calibration.json`, 14 min" in report.profile_source(once)
    assert report.profile_source(NS(calibrate_each_round=False, calibrated_s=None)) == "`clusterplan calibrate`"


def test_op_profile_table_compares_the_start_profile_with_its_own_prediction(report):
    """With a calibration pass per round the profile before the first round is round 1's: its
    error is against round 1's prediction, shown beside the measurement."""
    start = _profile("tiny-gpt", 0.1)
    start["predicted"] = {**start["predicted"], "forward_s": 0.11}
    lines = report.op_profile_lines([_profile("tiny-gpt", 0.125)], [start])
    row = next(line for line in lines if line.startswith("| tiny-gpt | forward"))
    assert row == "| tiny-gpt | forward | 100.0 | 100.0 (predicted then 110.0) | +10.0% | 125.0 | -20.0% |"
