"""fit: recovers known parameters from synthetic measurements (predicted with a known profile)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.calibrate.fit_runs import (FIT_PARAMS, apply_params, fit_profile, load_measured_runs,
                                        predict_step_time)
from planner.calibrate.profile import build_profile, load_results
from planner.cli import main
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan
from planner.profile_yaml import load_profile
from planner.profile_write import profile_yaml

BENCH = Path(__file__).parent / "fixtures" / "runs" / "bench" / "quick-results.json"
TRUE = {"compute_scale": 0.8, "kernel_overhead_s": 4e-6, "memory_bound_efficiency": 0.5,
        "latency_scale": 1.6, "intra_bandwidth_scale": 0.7}
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
    # one node: nothing crosses the inter-node tier, so it is not fitted, and the fit says why
    assert "inter_bandwidth_scale" not in res.params
    assert "do not depend" in res.fixed["inter_bandwidth_scale"]


def test_fit_recovers_the_executor_framework_costs(tmp_path):
    """On a profile with the executor's measured framework costs: the per-op costs (one scale for
    the host's dispatcher) and the pipeline's cost per schedule action are recovered beside the
    compute rate; both are left alone on a profile without them."""
    node = load_profile("local-cpu")
    true = {"compute_scale": 0.9, "op_overhead_scale": 1.6, "pp_action_s": 2e-3}
    dirs = _write_runs(tmp_path, apply_params(node, true))
    runs, _ = load_measured_runs(dirs)
    res = fit_profile(runs, node, params=list(true), loo=False)
    for name, value in true.items():
        assert res.params[name] == pytest.approx(value, rel=0.02), name
    assert res.node.framework.op_forward_s == pytest.approx(1.6 * node.framework.op_forward_s, rel=0.02)
    assert res.node.framework.pp_action_s == pytest.approx(2e-3, rel=0.02)
    gpu_res = fit_profile(runs, load_profile("dgx-a100-80gb"), params=["compute_scale", "op_overhead_scale"],
                          loo=False)
    assert "do not depend" in gpu_res.fixed["op_overhead_scale"]


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


# ----- a table of measured runs (any framework) ----------------------------------------------------
TABLE_COLUMNS = ("name,model,nodes,gpus_per_node,tp,pp,dp,cp,micro_batch,global_batch,seq_len,precision,recompute,"
                 "sharding,schedule,vpp,stage_layers,measured_step_s,measured_peak_memory_bytes,memory_source").split(",")
TABLE_PLANS = [
    dict(model="tiny-gpt", tp=1, pp=1, dp=1, micro_batch=2, global_batch=4, seq_len=256),
    dict(model="tiny-gpt", tp=1, pp=1, dp=2, micro_batch=2, global_batch=8, seq_len=256),
    dict(model="tiny-gpt", tp=2, pp=1, dp=1, micro_batch=4, global_batch=4, seq_len=256),
    dict(model="tiny-gpt", tp=1, pp=2, dp=1, micro_batch=1, global_batch=8, seq_len=256, schedule="1f1b"),
    dict(model="tiny-llama", tp=1, pp=1, dp=2, micro_batch=8, global_batch=16, seq_len=128),
    dict(model="tiny-llama", tp=1, pp=1, dp=4, micro_batch=1, global_batch=8, seq_len=128, sharding="fsdp"),
    dict(model="tiny-llama", tp=1, pp=1, dp=1, micro_batch=1, global_batch=2, seq_len=64),
    dict(model="tiny-gpt", tp=2, pp=1, dp=2, micro_batch=2, global_batch=8, seq_len=128),
]
MEMORY_TRUTH = {"allocated": 0.9, "device_used": 1.25}
MEMORY_OFFSET = 3.0e8


def _table(path: Path, profile: str, true_node, n: int = len(TABLE_PLANS), memory: bool = True) -> Path:
    """A measured-runs table whose step times and memory readings a known profile predicts."""
    import csv

    from planner.calibrate.fit_runs import predict_run
    from planner.calibrate.runs_table import row_run

    rows = []
    for i, plan in enumerate(TABLE_PLANS[:n]):
        world = plan["tp"] * plan["pp"] * plan["dp"]
        row = {c: "" for c in TABLE_COLUMNS}
        row.update({k: str(v) for k, v in plan.items()}, name=f"r{i}", nodes="1", gpus_per_node=str(world),
                   precision="fp32", recompute="none", sharding=plan.get("sharding", "none"), measured_step_s="1")
        pred = predict_run(row_run(row, "t", profile), true_node)
        row["measured_step_s"] = repr(float(pred.step_time_s))
        if memory:
            source = ("allocated", "device_used")[i % 2]
            row.update(measured_peak_memory_bytes=repr(float(MEMORY_TRUTH[source] * pred.peak_memory_bytes + MEMORY_OFFSET)),
                       memory_source=source)
        rows.append(row)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS) + ["framework_note"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "framework_note": "ignored column"})
    return path


def test_table_fit_recovers_time_and_memory_and_records_its_runs(base, tmp_path, capsys):
    node, path = base
    table = _table(tmp_path / "runs.csv", str(path), apply_params(node, TRUE))
    out = tmp_path / "fitted.yaml"
    assert main(["fit", "--runs", str(table), "--hardware", str(path), "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for name, value in TRUE.items():
        assert data["params"][name] == pytest.approx(value, rel=0.02), name
    assert data["leave_one_out"]["max_abs_error_pct"] < 1.0
    mem = data["memory"]
    assert mem["factors"]["allocated"] == pytest.approx(0.9, rel=1e-6)
    assert mem["factors"]["device_used"] == pytest.approx(1.25, rel=1e-6)
    assert mem["offset_bytes"] == pytest.approx(MEMORY_OFFSET, rel=1e-4)
    fitted = load_profile(str(out))
    assert all(f"r{i}" in fitted.measured_on for i in range(len(TABLE_PLANS))) and "runs.csv" in fitted.measured_on
    assert fitted.memory_reading_bytes(1e9, "device_used") == pytest.approx(1.25e9 + MEMORY_OFFSET, rel=1e-4)
    # predict takes the fitted profile like any other and reads memory as a source would
    assert main(["predict", "--model", "tiny-gpt", "--hardware", str(out), "--nodes", "1", "--gpus-per-node", "2",
                 "--dp", "2", "--micro-batch", "2", "--global-batch", "8", "--precision", "fp32",
                 "--memory-source", "device_used", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["memory_reading_bytes"] == pytest.approx(1.25 * pred["peak_memory_bytes"] + MEMORY_OFFSET, rel=1e-6)


def test_leave_one_out_error_is_the_refit_without_that_run(base, tmp_path):
    from planner.calibrate.fit_runs import fit_profile, predict_run
    from planner.calibrate.runs_table import load_runs_table

    node, path = base
    runs = load_runs_table(_table(tmp_path / "runs.csv", str(path), apply_params(node, {"compute_scale": 0.6}),
                                  n=4, memory=False), str(path))
    noisy = [dataclasses.replace(r, measured_step_time_s=r.measured_step_time_s * f)
             for r, f in zip(runs, (1.05, 0.97, 1.02, 0.95))]
    res = fit_profile(noisy, node, params=["compute_scale"])
    alone = fit_profile(noisy[1:], node, params=["compute_scale"], loo=False)
    expect = 100 * (predict_run(noisy[0], alone.node).step_time_s / noisy[0].measured_step_time_s - 1)
    assert res.loo_errors_pct[0] == pytest.approx(expect, rel=1e-6)
    assert res.uncertainty["compute_scale"] > 0  # 4 runs, 1 parameter: a residual variance to report


def test_an_under_determined_fit_is_refused_or_narrowed(base, tmp_path, capsys):
    node, path = base
    one = _table(tmp_path / "one.csv", str(path), node, n=1)
    assert main(["fit", "--runs", str(one), "--hardware", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs" in err[0] and "at least 2" in err[0]
    three = _table(tmp_path / "three.csv", str(path), apply_params(node, TRUE), n=3)
    assert main(["fit", "--runs", str(three), "--hardware", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["params"]) <= 2  # fewer time parameters than timed runs
    assert any("identify at most 2" in why for why in data["fixed"].values())


def test_a_malformed_table_row_is_one_line_naming_row_and_column(base, tmp_path, capsys):
    node, path = base
    table = _table(tmp_path / "runs.csv", str(path), node, n=2)
    lines = table.read_text().splitlines()
    lines[2] = lines[2].replace(",1,2,", ",1,two,", 1)
    table.write_text("\n".join(lines) + "\n")
    assert main(["fit", "--runs", str(table), "--hardware", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2" in err[0] and "column" in err[0]


def test_attention_scale_is_recovered_apart_from_the_gemms_on_a_gpu_profile():
    """Runs whose attention share differs (sequence 2k to 16k) separate the attention kernels'
    speed from the GEMMs'; on a profile without attention tables the fit leaves it."""
    import dataclasses

    from planner.calibrate.runs_table import MeasuredRun
    from planner.cost.runtime import get_runtime

    h100 = load_profile("dgx-h100-80gb")
    true = apply_params(h100, {"compute_scale": 0.9, "attention_scale": 0.7})
    runtime = get_runtime("megatron-core")
    runs = []
    for seq, tp in ((2048, 1), (4096, 2), (8192, 2), (16384, 4), (8192, 8)):
        par = ParallelConfig(tp=tp, dp=8 // tp, global_batch=64, seq_len=seq)
        plan = Plan(model=LLAMA_8B, hardware="dgx-h100-80gb", n_nodes=1, gpus_per_node=8, parallel=par)
        runs.append(MeasuredRun(f"s{seq}-tp{tp}", plan, predict_step_time(plan, true, runtime)))
    res = fit_profile(runs, h100, params=["compute_scale", "attention_scale"], loo=False, runtime=runtime)
    assert res.params["compute_scale"] == pytest.approx(0.9, rel=0.02)
    assert res.params["attention_scale"] == pytest.approx(0.7, rel=0.02)
    a100 = load_profile("dgx-a100-80gb")  # no attention tables: the GEMM curve prices attention
    res = fit_profile([MeasuredRun(r.name, dataclasses.replace(r.plan, hardware="dgx-a100-80gb"), 1.0) for r in runs],
                      a100, params=["compute_scale", "attention_scale"], loo=False, runtime=runtime)
    assert "attention_scale" in res.fixed and "do not depend" in res.fixed["attention_scale"]



def test_fp8_gemm_scale_is_recovered_from_fp8_runs_and_left_without_them():
    """bf16 and fp8 runs of one cluster separate the FP8 GEMMs' rate from the 16-bit ones';
    runs without fp8 do not depend on it, so the fit keeps it and says so."""
    from planner.calibrate.runs_table import MeasuredRun
    from planner.cost.runtime import get_runtime

    h100 = load_profile("dgx-h100-80gb")
    true = apply_params(h100, {"compute_scale": 0.9, "fp8_compute_scale": 0.8})
    assert true.device.peak_flops("fp8") == pytest.approx(0.72 * h100.device.peak_flops("fp8"))
    assert true.device.peak_flops("bf16") == pytest.approx(0.9 * h100.device.peak_flops("bf16"))
    runtime = get_runtime("megatron-core")
    runs = []
    for precision, tp in (("bf16", 1), ("bf16", 2), ("fp8", 1), ("fp8", 4)):
        par = ParallelConfig(tp=tp, dp=8 // tp, global_batch=64, seq_len=4096, precision=precision)
        plan = Plan(model=LLAMA_8B, hardware="dgx-h100-80gb", n_nodes=1, gpus_per_node=8, parallel=par)
        runs.append(MeasuredRun(f"{precision}-tp{tp}", plan, predict_step_time(plan, true, runtime)))
    res = fit_profile(runs, h100, params=["compute_scale", "fp8_compute_scale"], loo=False, runtime=runtime)
    assert res.params["compute_scale"] == pytest.approx(0.9, rel=0.02)
    assert res.params["fp8_compute_scale"] == pytest.approx(0.8, rel=0.02)
    res = fit_profile(runs[:2], h100, params=["compute_scale", "fp8_compute_scale"], loo=False, runtime=runtime)
    assert "fp8_compute_scale" in res.fixed and "do not depend" in res.fixed["fp8_compute_scale"]


LLAMA_8B = ModelSpec(name="llama-8b-ish", n_layers=4, hidden_size=4096, n_heads=32, n_kv_heads=8,
                     ffn_hidden_size=14336, vocab_size=128256, seq_len=8192, mlp="swiglu", norm="rmsnorm",
                     position="rope", tied_embeddings=False, bias=False)


def test_the_memory_offset_is_kept_only_where_it_lowers_the_leave_one_out_error():
    """Readings proportional to the prediction with a few percent of scatter: the offset is the
    candidate with the lower leave-one-out error, and the note says which and why."""
    from planner.calibrate.fit_memory import _mean_abs, _memory_candidate, fit_memory
    from planner.calibrate.runs_table import MeasuredRun

    predicted = [1e8, 2e8, 3e8, 4e8, 6e8]
    for scatter in ((1.02, 0.97, 1.03, 0.98, 1.01), (1.0, 1.0, 1.0, 1.0, 1.0)):
        readings = [0.9 * p * f + 5e7 * (scatter[0] == 1.0) for p, f in zip(predicted, scatter)]
        runs = [MeasuredRun(f"r{i}", None, 1.0, m, "allocated") for i, m in enumerate(readings)]
        fit = fit_memory(runs, predicted)
        rows = [(p, m, "allocated") for p, m in zip(predicted, readings)]
        without = _mean_abs(_memory_candidate(rows, ["allocated"], False)[2])
        with_ = _mean_abs(_memory_candidate(rows, ["allocated"], True)[2])
        assert (fit.offset_bytes != 0.0) == (with_ < without), fit.note
        assert ("offset fitted" in fit.note) == (with_ < without)
    assert fit.offset_bytes == pytest.approx(5e7, rel=1e-6)  # the exact case: the offset is real and kept


def test_collective_tables_of_groups_wider_than_the_fitted_runs_keep_their_values(base, tmp_path):
    """Runs of at most 2 ranks fit the 2-rank collectives' latency; the 4-rank tables, which no
    fitted run exercised, stay as calibrated."""
    node, _ = base
    assert {c.group_size for c in node.collectives} >= {2, 4}
    dirs = _write_runs(tmp_path, apply_params(node, {"latency_scale": 1.8}))
    runs, _ = load_measured_runs(dirs)
    narrow = [r for r in runs if r.plan.world_size <= 2]
    res = fit_profile(narrow, node, params=["latency_scale"], loo=False)
    assert res.params["latency_scale"] == pytest.approx(1.8, rel=0.02)
    fitted = {(c.op, c.group_size): c for c in res.node.collectives}
    for c in node.collectives:
        f = fitted[(c.op, c.group_size)]
        expect = c.latency_s * (1.8 if c.group_size <= 2 else 1.0)
        assert f.latency_s == pytest.approx(expect, rel=0.02), (c.op, c.group_size)


def test_a_memory_offset_that_would_leave_the_factor_implausible_is_not_kept():
    """Readings that barely vary (runs sized to fill the memory) fit best as a constant: the
    factor that comes with it is outside the plausible range, so the offset stays at 0."""
    from planner.calibrate.fit_memory import MEMORY_FACTOR_RANGE, fit_memory
    from planner.calibrate.runs_table import MeasuredRun

    predicted = [40e9, 60e9, 75e9, 90e9, 120e9]
    readings = [80e9, 81e9, 79e9, 82e9, 80.5e9]
    runs = [MeasuredRun(f"r{i}", None, 1.0, m, "reserved") for i, m in enumerate(readings)]
    fit = fit_memory(runs, predicted)
    assert fit.offset_bytes == 0.0 and "outside" in fit.note
    assert not MEMORY_FACTOR_RANGE[0] <= 0.05 <= MEMORY_FACTOR_RANGE[1]


def test_the_table_reads_sequence_parallelism_and_names_a_bad_cell():
    from planner.calibrate.runs_table import row_run
    from planner.errors import InputError

    row = {c: "" for c in TABLE_COLUMNS}
    row.update(name="sp", model="tiny-gpt", nodes="1", gpus_per_node="2", tp="2", pp="1", dp="1", micro_batch="2",
               global_batch="4", seq_len="256", precision="fp32", recompute="none", sharding="none",
               measured_step_s="1.0")
    assert not row_run(row, "t row 1", "local-cpu").plan.parallel.sequence_parallel  # empty: off
    assert row_run(dict(row, sequence_parallel="yes"), "t row 1", "local-cpu").plan.parallel.sequence_parallel
    with pytest.raises(InputError) as err:
        row_run(dict(row, sequence_parallel="maybe"), "t row 1", "local-cpu")
    assert "sequence_parallel" in str(err.value) and "t row 1" in str(err.value)
    assert str(err.value).count("column") == 1  # named once, not wrapped again
    with pytest.raises(InputError) as err:
        row_run(dict(row, recompute="sometimes"), "t row 1", "local-cpu")
    assert str(err.value).count("column") == 1 and "recompute" in str(err.value)


def test_a_row_names_its_own_runtime_and_a_bad_one_is_named():
    from planner.calibrate.fit_runs import predict_run
    from planner.calibrate.runs_table import row_run
    from planner.cost.runtime import get_runtime
    from planner.errors import InputError

    row = {c: "" for c in TABLE_COLUMNS}
    row.update(name="t", model="llama3-8b", nodes="1", gpus_per_node="8", tp="1", pp="1", dp="8", micro_batch="2",
               global_batch="16", seq_len="8192", precision="bf16", recompute="selective", sharding="fsdp",
               measured_step_s="2.8")
    node = load_profile("dgx-h100-80gb")
    compiled = row_run(row, "t row 1", "dgx-h100-80gb")
    eager = row_run(dict(row, runtime="torchtitan-eager"), "t row 1", "dgx-h100-80gb")
    assert compiled.runtime == "" and eager.runtime == "torchtitan-eager"
    fused_s = predict_run(compiled, node, get_runtime("torchtitan")).step_time_s
    eager_s = predict_run(eager, node, get_runtime("torchtitan")).step_time_s  # the row's own runtime wins
    assert eager_s > fused_s
    with pytest.raises(InputError) as err:
        row_run(dict(row, runtime="jax"), "t row 1", "dgx-h100-80gb")
    assert "t row 1, column runtime" in str(err.value) and str(err.value).count("column") == 1
