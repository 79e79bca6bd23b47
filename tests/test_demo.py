"""`clusterplan demo` and the closed-loop helpers of planner.demo: argument handling, the pipeline
with the slow parts (calibration, search, torchrun) replaced by recorded stand-ins, and one real
one-rank run of `execute` on a tiny model."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from planner import demo
from planner.cli import main
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan
from planner.records import write_summary

PROFILE = """\
name: test-cpu
description: a two-core CPU for tests
device:
  name: cpu-rank
  peak_tflops: {fp32: 0.1, bf16: 0.2}
  hbm_gib: 8
  hbm_bandwidth_gb_s: 50
  matmul_efficiency: [[1.0e+6, 0.5], [1.0e+9, 0.9]]
  memory_bound_efficiency: 0.5
  kernel_overhead_us: 2.0
  reserved_gib: 0.01
  fragmentation_fraction: 0.0
  host_cores: 2
node:
  gpus_per_node: 2
  intra_node: {bandwidth_gb_s: 3.0, latency_us: 90, bus_efficiency: 0.3}
  inter_node: {bandwidth_gb_s: 3.0, latency_us: 90, bus_efficiency: 0.3}
collectives:
  - {op: all_reduce, group_size: 2, latency_us: 270, bus_bandwidth_gb_s: 1.5}
  - {op: send_recv, group_size: 2, latency_us: 90, bus_bandwidth_gb_s: 3.5}
"""

TINY = ModelSpec(name="t", n_layers=2, hidden_size=32, n_heads=2, n_kv_heads=2, ffn_hidden_size=64,
                 vocab_size=64, seq_len=16, mlp="gelu", norm="layernorm", position="learned",
                 tied_embeddings=True, bias=True, dropout=0.0, activation="gelu")


@pytest.fixture
def profile(tmp_path) -> str:
    path = tmp_path / "test-cpu.yaml"
    path.write_text(PROFILE)
    return str(path)


def _three_plans(profile: str) -> list[Plan]:
    configs = [ParallelConfig(dp=2, micro_batch=2, global_batch=4, seq_len=16, precision="fp32"),
               ParallelConfig(tp=2, micro_batch=2, global_batch=4, seq_len=16, precision="fp32"),
               ParallelConfig(pp=2, micro_batch=1, global_batch=4, seq_len=16, precision="fp32")]
    return [demo.predicted_plan(TINY, profile, 2, c) for c in configs]


def test_predicted_plan_stores_the_cost_model_prediction(profile):
    from planner.cost.step import predict_plan

    plan = _three_plans(profile)[0]
    assert plan.prediction is not None
    assert plan.prediction["step_time_s"] == pytest.approx(predict_plan(plan).step_time_s)
    # the id does not depend on the prediction, so measurements join to it
    assert plan.id == plan.with_prediction(None).id


def test_bad_profile_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "--profile", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "hardware" in err[0]
    assert not (tmp_path / "d").exists()


def test_steps_not_above_warmup_is_rejected(tmp_path, capsys, profile):
    rc = main(["demo", "--out", str(tmp_path / "d"), "--profile", profile, "--steps", "3", "--warmup", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "steps" in err[0]


def _fake_execute(measured: dict[str, float]):
    """Stand-in for `clusterplan run`: writes a summary with a known measured step time."""

    def execute(plan_path, out_dir, *, steps, warmup, log_path=None, **_):
        plan = Plan.load(plan_path)
        m = measured[plan.id]
        write_summary(out_dir, {
            "schema_version": 1, "plan_id": plan.id, "parallel": plan.parallel.megatron_notation(),
            "status": "ok", "steps": steps, "warmup": warmup, "prediction": plan.prediction,
            "predicted": {"step_time_s": plan.prediction["step_time_s"],
                          "peak_memory_bytes": plan.prediction["peak_memory_bytes"],
                          "tokens_per_s": plan.prediction["tokens_per_s"]},
            "measured": {"n_steps": steps - warmup, "step_time_s": m, "step_time_s_p10": m * 0.98,
                         "step_time_s_p90": m * 1.02, "tokens_per_s": 64 / m,
                         "peak_memory_bytes": plan.prediction["peak_memory_bytes"] * 1.1, "phases": {}},
            "env": {"world_size": plan.world_size}})
        return json.loads((Path(out_dir) / "summary.json").read_text())

    return execute


def test_demo_pipeline_writes_report_and_prints_its_path(tmp_path, capsys, monkeypatch, profile):
    plans = _three_plans(profile)
    measured = {p.id: p.prediction["step_time_s"] * f for p, f in zip(plans, (1.10, 0.95, 1.30))}
    assert len(measured) == 3
    monkeypatch.setattr(demo, "search_top", lambda model, prof, world, gbs, top: plans[:top])
    monkeypatch.setattr(demo, "execute", _fake_execute(measured))
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--profile", profile, "--steps", "4", "--warmup", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = Path(captured.out.strip().splitlines()[-1])
    assert report == out / "report.md" and report.exists()
    text = report.read_text()
    for p in plans:
        assert p.id in text
    # error math: median of |+10%|, |-5%|, |+30%| with error = (pred - meas) / meas
    errs = sorted(abs(100 * (1 / f - 1)) for f in (1.10, 0.95, 1.30))
    assert f"{errs[1]:.3g}%" in text
    fastest = min(range(3), key=lambda i: measured[plans[i].id])
    assert f"search's first plan measured fastest: {fastest == 0}" in text
    assert (out / "compare" / "scatter.png").exists()
    assert "## Fit to these runs" in text and (out / "fitted.yaml").exists()  # the demo shows the fit step
    progress = captured.err
    assert "1/4" in progress and "3/4" in progress and "4/4" in progress


def test_demo_run_failure_is_one_line_nonzero(tmp_path, capsys, monkeypatch, profile):
    plans = _three_plans(profile)

    def failing(plan_path, out_dir, **_):
        plan = Plan.load(plan_path)
        summary = {"plan_id": plan.id, "status": "failed", "error": "RuntimeError: boom", "measured": {}}
        write_summary(out_dir, summary)
        return summary

    monkeypatch.setattr(demo, "search_top", lambda *a: plans)
    monkeypatch.setattr(demo, "execute", failing)
    rc = main(["demo", "--out", str(tmp_path / "d"), "--profile", profile])
    err = [l for l in capsys.readouterr().err.splitlines() if "failed" in l]
    assert rc == 1 and len(err) == 1 and "boom" in err[0]


def test_busy_processes_names_a_busy_process_and_not_itself():
    import subprocess
    import sys

    marker = "-m executor"  # a command line like an executor rank's (demo.BUSY_MARKERS)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        cmdline = Path(f"/proc/{child.pid}/cmdline")
        for _ in range(500):  # until the child has exec'd (before, /proc shows the forked parent)
            if marker.encode() in cmdline.read_bytes():
                break
            time.sleep(0.01)
        busy = demo.busy_processes()
        assert any(b.startswith(f"{child.pid} ") and marker in b for b in busy), busy
        assert not any(b.startswith(f"{__import__('os').getpid()} ") for b in busy)
    finally:
        child.kill()
        child.wait()


@pytest.mark.timeout(120)
def test_execute_runs_a_tiny_plan_with_clusterplan_run(tmp_path, profile):
    plan = demo.predicted_plan(TINY, profile, 1, ParallelConfig(micro_batch=2, global_batch=2, seq_len=16,
                                                               precision="fp32"))
    path = plan.save(tmp_path / "plan.json")
    summary = demo.execute(path, tmp_path / "run", steps=3, warmup=1, log_path=tmp_path / "run.log",
                           timeout_s=100)
    assert summary is not None and summary["status"] in ("ok", "contended"), (tmp_path / "run.log").read_text()
    assert summary["prediction"]["step_time_s"] == plan.prediction["step_time_s"]
    assert summary["measured"]["n_steps"] == 2
    assert math.isfinite(summary["measured"]["step_time_s"]) and summary["measured"]["step_time_s"] > 0
