"""fit: recovers known parameters from synthetic measurements (predicted with a known profile)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.calibrate.fit_runs import (FIT_PARAMS, apply_params, fit_profile, load_measured_runs,
                                        predict_step_time)
from planner.calibrate.profile import build_profile, load_results
from planner.profile_yaml import profile_yaml
from planner.cli import main
from planner.profile_yaml import load_profile
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan

BENCH = Path(__file__).parent / "fixtures" / "runs" / "bench" / "quick-results.json"
TRUE = {"compute_scale": 0.8, "kernel_overhead_s": 4e-6, "memory_bound_efficiency": 0.5,
        "latency_scale": 1.6, "bandwidth_scale": 0.7}
GPT = ModelSpec(name="tiny-gpt", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                vocab_size=1024, seq_len=256)
LLAMA = ModelSpec(name="tiny-llama", n_layers=4, hidden_size=128, n_heads=4, n_kv_heads=2, ffn_hidden_size=384,
                  vocab_size=512, seq_len=128, mlp="swiglu", norm="rmsnorm", position="rope",
                  tied_embeddings=False, bias=False)
CONFIGS = [
    (GPT, dict(global_batch=4, micro_batch=2, seq_len=256)),
    (GPT, dict(dp=2, global_batch=8, micro_batch=2, seq_len=256)),
    (GPT, dict(tp=2, global_batch=4, micro_batch=4, seq_len=256)),
    (GPT, dict(pp=2, global_batch=8, micro_batch=1, seq_len=256)),
    (LLAMA, dict(dp=2, global_batch=16, micro_batch=8, seq_len=128, precision="fp32")),
    (LLAMA, dict(dp=4, global_batch=8, micro_batch=1, seq_len=128, sharding="fsdp")),
    (LLAMA, dict(global_batch=2, micro_batch=1, seq_len=64, precision="fp32")),
    (GPT, dict(tp=2, dp=2, global_batch=8, micro_batch=2, seq_len=128, precision="fp32")),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    node = build_profile(load_results(BENCH)).node
    path = tmp_path_factory.mktemp("prof") / "base.yaml"
    path.write_text(profile_yaml(node))
    return load_profile(str(path)), path


def _write_runs(root: Path, true_node) -> list[Path]:
    dirs = []
    for i, (model, cfg) in enumerate(CONFIGS):
        par = ParallelConfig(**cfg)
        plan = Plan(model=model, hardware="local-cpu", n_nodes=1, gpus_per_node=par.world_size, parallel=par)
        step = predict_step_time(plan, true_node)
        d = root / f"run{i}"
        d.mkdir()
        plan.save(d / "plan.json")
        (d / "summary.json").write_text(json.dumps({
            "schema_version": 1, "plan_id": plan.id, "status": "ok", "parallel": par.megatron_notation(),
            "measured": {"step_time_s": step, "step_time_s_p10": step, "step_time_s_p90": step}}))
        dirs.append(d)
    return dirs


def test_fit_recovers_known_parameters(base, tmp_path):
    node, _ = base
    dirs = _write_runs(tmp_path, apply_params(node, TRUE))
    runs, skipped = load_measured_runs(dirs)
    assert not skipped and len(runs) == len(CONFIGS)
    res = fit_profile(runs, node, loo=False)
    assert max(abs(e) for e in res.errors_before_pct) > 10  # the base profile is really off
    for name, value in TRUE.items():
        assert res.params[name] == pytest.approx(value, rel=0.02), name
    assert max(abs(e) for e in res.errors_after_pct) < 0.5


def test_fit_cli_writes_profile_and_loo(base, tmp_path, capsys):
    node, path = base
    true = {"compute_scale": 0.7, "kernel_overhead_s": 3e-6}
    dirs = _write_runs(tmp_path, apply_params(node, true))
    out = tmp_path / "fitted.yaml"
    rc = main(["fit", *map(str, dirs), "--profile", str(path), "--params", "compute_scale,kernel_overhead_s",
               "--out", str(out), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["compute_scale"] == pytest.approx(0.7, rel=0.01)
    assert data["leave_one_out"]["max_abs_error_pct"] < 1.0
    assert all(r["loo_error_pct"] is not None for r in data["runs"])
    fitted = load_profile(str(out))
    assert fitted.device.peak_flops("fp32") == pytest.approx(0.7 * node.device.peak_flops("fp32"), rel=0.01)
    assert fitted.device.kernel_overhead_s == pytest.approx(3e-6, rel=0.02)
    # unfitted parameters are untouched
    assert fitted.device.memory_bound_efficiency == pytest.approx(node.device.memory_bound_efficiency, rel=1e-4)
    assert fitted.collectives[0].latency_s == pytest.approx(node.collectives[0].latency_s, rel=1e-4)


def test_fit_skips_failed_and_rejects_bad_params(base, tmp_path, capsys):
    node, path = base
    dirs = _write_runs(tmp_path, node)[:2]
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"plan_id": "x", "status": "failed", "measured": {}}))
    runs, skipped = load_measured_runs([*dirs, failed])
    assert len(runs) == 2 and len(skipped) == 1
    assert main(["fit", str(dirs[0]), "--profile", str(path), "--params", "warp_factor"]) == 2
    assert "params" in capsys.readouterr().err
    nodir = tmp_path / "noplan"
    nodir.mkdir()
    (nodir / "summary.json").write_text(json.dumps({"plan_id": "abc", "status": "ok",
                                                    "measured": {"step_time_s": 0.1}}))
    assert main(["fit", str(nodir), "--profile", str(path)]) == 2
    assert set(FIT_PARAMS) >= set(TRUE)
