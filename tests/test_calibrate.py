"""calibrate: benchmark results -> profile (schema), alpha-beta fit, CLI, a tiny real bench."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from planner.calibrate.profile import SCHEMA, build_profile, bus_bytes, fit_alpha_beta, load_results
from planner.cli import main
from planner.cost.stacks import stack_for
from planner.profile_yaml import load_profile, parse_profile
from planner.profile_write import profile_yaml
from planner.units import GB

FIXTURE = Path(__file__).parent / "fixtures" / "runs" / "bench" / "quick-results.json"


@pytest.fixture(scope="module")
def results():
    return load_results(FIXTURE)


def test_profile_schema_and_values(results, tmp_path):
    cal = build_profile(results)
    path = tmp_path / "local-cpu.yaml"
    path.write_text(cal.to_yaml())
    node = load_profile(str(path))
    d = node.device
    for dtype in ("fp32", "bf16"):
        best = max(r["flops_per_s"] for r in results["matmul"] if r["dtype"] == dtype)
        assert d.peak_flops(dtype) == pytest.approx(best, rel=1e-4)
    assert d.hbm_bandwidth_bytes_per_s == pytest.approx(max(r["bytes_per_s"] for r in results["memory_bound"]), rel=1e-4)
    assert 0 < d.memory_bound_efficiency <= 1
    assert all(0 < e <= 1 for _, e in d.matmul_efficiency.points)
    assert 0 < d.kernel_overhead_s < 1e-3
    mem = results["memory"]
    assert d.reserved_bytes == pytest.approx(mem["rss_after_warmup_bytes"] - mem["rss_after_init_bytes"], rel=1e-3)
    assert d.host_cores == results["env"]["affinity_cores"]
    assert node.gpus_per_node == d.host_cores
    ops = {(c.op, c.group_size) for c in node.collectives}
    assert ops == {(op, g) for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv") for g in (2, 4)}
    p2p = node.measured_collective("send_recv", 2)
    assert node.intra_node.bandwidth_bytes_per_s == pytest.approx(p2p.bus_bandwidth_bytes_per_s, rel=1e-4)
    assert node.inter_node == node.intra_node
    env = results["env"]
    for part in (env["hostname"], env["cpu_model"], env["torch_version"], env["date"]):
        assert part in node.measured_on
    text = path.read_text()
    # this recorded run was taken while other processes used the cores: it must say so
    assert "contended: true" in text
    assert cal.contended


def test_quiet_run_is_not_flagged(results):
    quiet = copy.deepcopy(results)
    for section in ("matmul", "memory_bound"):
        for r in quiet[section]:
            r["cpu_ratio"] = 1.0
    rate = quiet["contention"][0]["per_rank"][0]["flops_per_s"]
    for row in quiet["contention"]:
        k = row["ranks"]
        for p in row["per_rank"]:
            p["cpu_ratio"] = min(1.0, 2 / k)
            p["flops_per_s"] = rate * min(1.0, 2 / k)
    cal = build_profile(quiet)
    assert not cal.contended
    assert "contended: false" in cal.to_yaml()
    assert cal.node.device.host_cores == 2


def test_alpha_beta_fit_recovers_synthetic():
    lat, bw = 150e-6, 1.3e9
    sizes = [4 ** i for i in range(1, 14)]
    times = [lat + s / bw for s in sizes]
    got_lat, got_bw = fit_alpha_beta(sizes, times)
    assert got_lat == pytest.approx(lat, rel=1e-6)
    assert got_bw == pytest.approx(bw, rel=1e-6)
    # two regimes: latency from <= 1 KiB, bandwidth from >= 1 MiB, even when mid sizes are off
    times[5] *= 3  # a 4 KiB outlier
    got_lat, got_bw = fit_alpha_beta(sizes, times, sizes)
    assert got_lat == pytest.approx(lat, rel=1e-3)
    assert got_bw == pytest.approx(bw, rel=1e-2)


def test_bus_bytes_ring_correction():
    assert bus_bytes("all_reduce", 4, 1000) == pytest.approx(1500)
    assert bus_bytes("all_gather", 4, 1000) == pytest.approx(750)
    assert bus_bytes("reduce_scatter", 2, 1000) == pytest.approx(500)
    assert bus_bytes("send_recv", 2, 1000) == 1000


def test_yaml_round_trip_of_a_gpu_profile():
    node = load_profile("dgx-a100-80gb")
    back = parse_profile(yaml.safe_load(profile_yaml(node)))
    assert back.device.peak_flops("bf16") == pytest.approx(node.device.peak_flops("bf16"))
    flat = [v for pt in node.device.matmul_efficiency.points for v in pt]
    assert [v for pt in back.device.matmul_efficiency.points for v in pt] == pytest.approx(flat, rel=1e-5)
    assert back.intra_node.latency_s == pytest.approx(node.intra_node.latency_s)


def test_cli_from_results(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--from-results", str(FIXTURE), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["host_cores"] == 2
    node = load_profile(str(out))
    assert node.name == "local-cpu"
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]  # no temp file left behind


def test_cli_bad_results(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema": "other"}))
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--from-results", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.schema" in err[0]
    assert not out.exists()
    assert main(["calibrate", "--nproc", "1"]) == 2


def test_tiny_real_compute_bench(results, tmp_path):
    """The real GEMM / overhead benchmarks in-process (fp32, quick shapes) feed the builder."""
    torch = pytest.importorskip("torch")
    from executor.bench import SCHEMA as BENCH_SCHEMA
    from executor.bench import compute

    assert BENCH_SCHEMA == SCHEMA
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = compute.matmul_bench(quick=True, reps=5, dtypes=("fp32",), hidden=(64, 256), tokens=(64, 1024))
        overhead = compute.overhead_bench(reps=5)
    finally:
        torch.set_num_threads(threads)
    assert all(r["flops"] == 2.0 * r["m"] * r["k"] * r["n"] and len(r["times_s"]) == 5 for r in rows)
    assert all(1e8 < r["flops_per_s"] < 1e13 for r in rows)
    mixed = copy.deepcopy(results)
    mixed["matmul"] = rows
    mixed["overhead"] = overhead
    node = build_profile(mixed).node
    assert node.device.peak_flops("fp32") == pytest.approx(max(r["flops_per_s"] for r in rows), rel=1e-9)
    assert not node.device.supports("bf16")
    path = tmp_path / "x.yaml"
    path.write_text(profile_yaml(node))
    assert load_profile(str(path)).device.kernel_overhead_s > 0


def test_matmul_bench_stops_a_dtype_at_its_time_budget():
    """Shapes run in ascending FLOPs; with no time left after the first, only the smallest runs."""
    pytest.importorskip("torch")
    from executor.bench import compute

    rows = compute.matmul_bench(quick=True, reps=5, dtypes=("fp32",), hidden=(64, 256), tokens=(64, 1024),
                                budget_s=0.0)
    smallest = min(2.0 * t * i * o for t, _, _, i, o in compute._matmul_shapes((64, 256), (64, 1024),
                                                                               ("proj", "mlp_up", "mlp_down")))
    assert [r["flops"] for r in rows] == [smallest]
    assert rows[0]["budget_s"] == 0.0


def test_repeated_passes_keep_the_gemm_shapes_every_pass_measured(results):
    """A pass that stopped a dtype one shape earlier: the medians are over the common shapes."""
    from planner.calibrate.runner import combine_passes, common_matmul_shapes, median_results

    short = copy.deepcopy(results)
    short["matmul"] = short["matmul"][:-1]
    passes = common_matmul_shapes([copy.deepcopy(results), short, copy.deepcopy(results)])
    assert all(len(p["matmul"]) == len(results["matmul"]) - 1 for p in passes)
    merged = median_results(passes)
    assert merged["matmul"] == results["matmul"][:-1]
    build_profile(merged)
    # what `calibrate --repeat 3` records (and the sweep builds from one pass per round)
    combined = combine_passes([copy.deepcopy(results), short, copy.deepcopy(results)])
    assert combined["repeat"] == 3 and len(combined["passes"]) == 3
    assert combined["matmul"] == results["matmul"][:-1]
    assert combine_passes([results]) is results


# ----- framework section: the executor's building blocks -------------------------------------
def _quiet(results):
    quiet = copy.deepcopy(results)
    for section in ("matmul", "memory_bound"):
        for r in quiet[section]:
            r["cpu_ratio"] = 1.0
    rate = quiet["contention"][0]["per_rank"][0]["flops_per_s"]
    for row in quiet["contention"]:
        for p in row["per_rank"]:
            p["cpu_ratio"] = min(1.0, 2 / row["ranks"])
            p["flops_per_s"] = rate * min(1.0, 2 / row["ranks"])
    return quiet


def _synthetic_framework(node, planted, wide: bool = False, concurrency: bool = False, pipeline: bool = False):
    """Bench results a machine with the ``planted`` FrameworkSpec would give: op timings from
    counts, reference steps as the cost model predicts them with the planted costs, memory as
    (1 + fragmentation) * tensors + overhead; with ``concurrency`` the plain step also on both
    ranks at once at the reference, wide and concurrency shapes; with ``pipeline`` the pp=2 steps
    (1F1B at the reference and wide shapes, zero bubble at the wide one) as predicted."""
    import dataclasses as dc

    from planner.calibrate.executor_fits import reference_prediction
    from planner.cost.memory import stage_memories
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig

    ref = {"hidden_size": 128, "n_layers": 2, "seq_len": 128, "micro_batch": 4, "vocab_size": 512}
    model = ModelSpec(name="ref", n_layers=2, hidden_size=128, n_heads=4, n_kv_heads=4, ffn_hidden_size=512,
                      vocab_size=512, seq_len=128, mlp="gelu", norm="layernorm", position="learned",
                      tied_embeddings=False, bias=True, dropout=0.0, activation="gelu")
    counts = {"forward": 93, "backward": 208, "optimizer": 372}
    ops = [{"style": st, "ops": counts, "cpu_ratio": 1.0, "params": 37,
            "median_s": {"forward": 93 * planted.op_forward_s, "backward": 208 * planted.op_backward_s,
                         "optimizer": 372 * planted.op_optimizer_s}} for st in ("gpt", "llama")]
    reference = []
    for case, tp, dp, sharding in (("plain", 1, 1, "none"), ("tp", 2, 1, "none"), ("ddp", 1, 2, "none"),
                                   ("zero1", 1, 2, "zero1"), ("fsdp", 1, 2, "fsdp")):
        cfg = ParallelConfig(tp=tp, dp=dp, micro_batch=4, global_batch=4 * dp, seq_len=128, precision="fp32",
                             sharding=sharding)
        n = dc.replace(node, framework=planted).with_gpus_per_node(tp * dp)
        reference.append({"case": case, "tp": tp, "dp": dp, "model": model.to_dict(), "reference": ref,
                          "median_s": reference_prediction(model, n, cfg), "cpu_ratio": 1.0, "steps": 5})
    wref = {"hidden_size": 256, "n_layers": 2, "seq_len": 128, "micro_batch": 8, "vocab_size": 512}
    if wide:  # plain, DDP and FSDP2 at the wider reference shape
        wmodel = dc.replace(model, name="ref-wide", hidden_size=256, ffn_hidden_size=1024)
        for case, dp, sharding in (("plain_wide", 1, "none"), ("ddp_wide", 2, "none"), ("fsdp_wide", 2, "fsdp")):
            cfg = ParallelConfig(dp=dp, micro_batch=8, global_batch=8 * dp, seq_len=128, precision="fp32",
                                 sharding=sharding)
            n = dc.replace(node, framework=planted).with_gpus_per_node(dp)
            reference.append({"case": case, "tp": 1, "dp": dp, "model": wmodel.to_dict(), "reference": wref,
                              "median_s": reference_prediction(wmodel, n, cfg), "cpu_ratio": 1.0, "steps": 5})
    if concurrency:
        shapes = (("plain", "plain_both", model, ref),
                  ("plain_wide", "plain_wide_both", dc.replace(model, name="ref-wide", hidden_size=256,
                                                               ffn_hidden_size=1024), wref),
                  ("plain_alone_interleaved", "plain_concurrent",
                   dc.replace(model, name="ref-conc", hidden_size=256, ffn_hidden_size=1024, seq_len=256,
                              vocab_size=2048),
                   {"hidden_size": 256, "n_layers": 2, "seq_len": 256, "micro_batch": 4, "vocab_size": 2048}))
        for alone, together, m, shape in shapes:
            cfg = ParallelConfig(micro_batch=shape["micro_batch"], global_batch=shape["micro_batch"],
                                 seq_len=shape["seq_len"], precision="fp32")
            for case, ranks in ((alone, 1), (together, 2)):
                n = dc.replace(node, framework=planted).with_gpus_per_node(ranks)
                row = {"case": case, "tp": 1, "dp": 1, "model": m.to_dict(), "reference": shape,
                       "median_s": reference_prediction(m, n, cfg, ranks_busy=ranks), "cpu_ratio": 1.0, "steps": 5}
                reference = [r for r in reference if r["case"] != case] + [row]
        # the Llama-style plain step (one of the in-step fit's shapes)
        lmodel = ModelSpec(name="ref-llama", n_layers=2, hidden_size=256, n_heads=8, n_kv_heads=4,
                           ffn_hidden_size=768, vocab_size=512, seq_len=128, mlp="swiglu", norm="rmsnorm",
                           position="rope", tied_embeddings=False, bias=False, dropout=0.0, activation="silu")
        cfg = ParallelConfig(micro_batch=8, global_batch=8, seq_len=128, precision="fp32")
        reference.append({"case": "plain_llama", "tp": 1, "dp": 1, "model": lmodel.to_dict(), "reference": wref,
                          "median_s": reference_prediction(lmodel, dc.replace(node, framework=planted)
                                                            .with_gpus_per_node(1), cfg),
                          "cpu_ratio": 1.0, "steps": 5})
    if pipeline:
        from planner.cost.step import predict
        from planner.hardware import ClusterSpec

        wmodel = dc.replace(model, name="ref-wide", hidden_size=256, ffn_hidden_size=1024)
        for case, m, shape, schedule in (("pp", model, ref, "1f1b"), ("pp_wide", wmodel, wref, "1f1b"),
                                         ("pp_zb", wmodel, wref, "zb")):
            b = shape["micro_batch"]
            par = ParallelConfig(pp=2, micro_batch=b, global_batch=4 * b, seq_len=128, precision="fp32",
                                 schedule=schedule)
            n = dc.replace(node, framework=planted).with_gpus_per_node(2)
            reference.append({"case": case, "tp": 1, "dp": 1, "model": m.to_dict(), "reference": shape,
                              "micro_batches": 4, "parallel": par.to_dict(), "steps": 3,
                              "step_s": predict(m, ClusterSpec.homogeneous(n, 1), par).step_time_s})
    no_mem = dc.replace(planted, fragmentation_fraction=0.0, training_overhead_bytes=0.0)
    memory = []
    for b in (2, 8):
        cfg = ParallelConfig(micro_batch=b, global_batch=b, seq_len=128, precision="fp32")
        (_, _, sm), = stage_memories(model, cfg, node.device, [1], "flash", stack=stack_for(no_mem))
        memory.append({"micro_batch": b, "peak_minus_baseline_bytes":
                       (1 + planted.fragmentation_fraction) * sm.total_bytes + planted.training_overhead_bytes})
    return {"ops": ops, "reference": reference, "memory": memory}


def test_framework_section_recovers_planted_costs(results, tmp_path):
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    assert node.framework is None
    planted = FrameworkSpec(op_forward_s=4e-6, op_backward_s=3e-6, op_optimizer_s=2.5e-6,
                            tp_linear_forward_s=300e-6, tp_linear_backward_s=200e-6, tp_optimizer_param_s=50e-6,
                            fsdp_unit_forward_s=400e-6, fsdp_unit_backward_s=700e-6, fsdp_optimizer_param_s=60e-6,
                            zero1_param_s=150e-6, fragmentation_fraction=0.45, training_overhead_bytes=9e6)
    quiet["framework"] = _synthetic_framework(node, planted)
    cal = build_profile(quiet)
    got = cal.node.framework
    for f in ("op_forward_s", "op_backward_s", "op_optimizer_s", "tp_linear_forward_s", "tp_linear_backward_s",
              "tp_optimizer_param_s", "fsdp_unit_forward_s", "fsdp_unit_backward_s", "fsdp_optimizer_param_s",
              "zero1_param_s", "fragmentation_fraction", "training_overhead_bytes"):
        assert getattr(got, f) == pytest.approx(getattr(planted, f), rel=1e-6, abs=1e-12), f
    # the written profile reads back with the same section, with its comments
    path = tmp_path / "p.yaml"
    path.write_text(cal.to_yaml())
    back = load_profile(str(path))
    assert back.framework is not None
    assert back.framework.tp_linear_forward_s == pytest.approx(got.tp_linear_forward_s, rel=1e-5)
    text = path.read_text()
    assert "framework:" in text and "tp=2: residual" in text


def test_framework_ddp_and_fsdp_split_constant_and_per_byte_with_the_wide_reference(results):
    """DDP and FSDP2 at two widths (same parameter tensors and units, 3.4x the bytes) recover
    both planted terms of each; with the narrow DDP step alone all of its residual is charged
    per byte."""
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    planted = FrameworkSpec(**{**zero, "op_forward_s": 4e-6, "op_backward_s": 3e-6, "op_optimizer_s": 2.5e-6,
                               "ddp_param_s": 80e-6, "ddp_grad_s_per_byte": 1e-9,
                               "fsdp_unit_forward_s": 300e-6, "fsdp_unit_backward_s": 500e-6,
                               "fsdp_unit_forward_s_per_byte": 0.5e-9, "fsdp_unit_backward_s_per_byte": 2e-9})
    quiet["framework"] = _synthetic_framework(node, planted, wide=True)
    got = build_profile(quiet).node.framework
    for f in ("ddp_param_s", "ddp_grad_s_per_byte", "fsdp_unit_forward_s", "fsdp_unit_backward_s",
              "fsdp_unit_forward_s_per_byte", "fsdp_unit_backward_s_per_byte"):
        assert getattr(got, f) == pytest.approx(getattr(planted, f), rel=1e-6), f
    narrow = [r for r in quiet["framework"]["reference"] if r["case"] != "ddp_wide"]
    quiet["framework"] = {**quiet["framework"], "reference": narrow}
    only_bytes = build_profile(quiet).node.framework
    assert only_bytes.ddp_param_s == 0.0 and only_bytes.ddp_grad_s_per_byte > 1e-9


def test_framework_fits_both_concurrency_slowdowns_and_keeps_them_out_of_the_wrappers(results):
    """The plain step alone and on both ranks at once at three shapes recover the planted GEMM
    and non-GEMM slowdowns of ranks at once; the 2-rank wrapper cases, predicted with those
    slowdowns, leave DDP, FSDP2 and TP their planted costs (nothing of the slowdown in them)."""
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    planted = FrameworkSpec(**{**zero, "op_forward_s": 4e-6, "op_backward_s": 3e-6, "op_optimizer_s": 2.5e-6,
                               "concurrent_gemm_slowdown": 0.12, "concurrent_slowdown": 0.3,
                               "ddp_param_s": 80e-6, "ddp_grad_s_per_byte": 1e-9,
                               "tp_linear_forward_s": 300e-6, "tp_linear_backward_s": 200e-6,
                               "fsdp_unit_forward_s": 300e-6, "fsdp_unit_backward_s": 500e-6,
                               "fsdp_unit_forward_s_per_byte": 0.5e-9, "fsdp_unit_backward_s_per_byte": 2e-9})
    quiet["framework"] = _synthetic_framework(node, planted, wide=True, concurrency=True)
    cal = build_profile(quiet)
    got = cal.node.framework
    assert got.concurrent_gemm_slowdown == pytest.approx(0.12, rel=1e-3)
    assert got.concurrent_slowdown == pytest.approx(0.3, rel=1e-3)
    for f in ("ddp_param_s", "ddp_grad_s_per_byte", "tp_linear_forward_s", "tp_linear_backward_s",
              "fsdp_unit_forward_s", "fsdp_unit_backward_s", "fsdp_unit_forward_s_per_byte",
              "fsdp_unit_backward_s_per_byte"):
        assert getattr(got, f) == pytest.approx(getattr(planted, f), rel=1e-3, abs=1e-12), f
    assert "concurrent_gemm_slowdown" in cal.to_yaml()
    # one pair only: the GEMMs are taken as unslowed, the non-GEMM part carries it all
    one = [r for r in quiet["framework"]["reference"] if r["case"] not in ("plain_both", "plain_wide_both")]
    quiet["framework"] = {**quiet["framework"], "reference": one}
    single = build_profile(quiet).node.framework
    assert single.concurrent_gemm_slowdown == 0.0 and single.concurrent_slowdown > 0.3


def test_framework_recovers_the_planted_in_step_slowdowns(results):
    """A machine whose training step computes 30% / 15% / 40% slower (forward, backward,
    optimizer) than its benches' rates, with per-op costs on top: the plain one-rank steps at
    the three GPT-style shapes and the Llama-style one give those slowdowns back, per-op costs and wrapper costs untouched; with
    no slowdown planted the fit finds none."""
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    plain = {**zero, "op_forward_s": 4e-6, "op_backward_s": 3e-6, "op_optimizer_s": 2.5e-6,
             "concurrent_gemm_slowdown": 0.12, "concurrent_slowdown": 0.3, "ddp_grad_s_per_byte": 1e-9}
    planted = FrameworkSpec(**{**plain, "step_forward_slowdown": 0.3, "step_backward_slowdown": 0.15,
                               "step_optimizer_slowdown": 0.4})
    quiet["framework"] = _synthetic_framework(node, planted, wide=True, concurrency=True)
    cal = build_profile(quiet)
    got = cal.node.framework
    for phase, want in (("forward", 0.3), ("backward", 0.15), ("optimizer", 0.4)):
        assert getattr(got, f"step_{phase}_slowdown") == pytest.approx(want, rel=1e-3), phase
    assert got.concurrent_slowdown == pytest.approx(0.3, rel=1e-3)
    assert got.ddp_grad_s_per_byte == pytest.approx(1e-9, rel=1e-3)
    assert "in-step compute" in cal.to_yaml() and "step_forward_slowdown: 0.3" in cal.to_yaml()
    assert "ref-llama s=128 mb=8" in cal.to_yaml()
    quiet["framework"] = _synthetic_framework(node, FrameworkSpec(**plain), wide=True, concurrency=True)
    none = build_profile(quiet).node.framework
    assert max(none.step_forward_slowdown, none.step_backward_slowdown, none.step_optimizer_slowdown) < 1e-9


def test_concurrency_fit_is_robust_to_one_outlying_pair(results):
    """One pair measured in a burst of outside load (the at-once step 1.5x its planted value)
    moves the soft-L1 fit less than a plain least-squares fit (here by about a third)."""
    import dataclasses as dc

    import planner.calibrate.executor_fits as cal
    from planner.calibrate.executor_fits import fit_concurrency
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    planted = FrameworkSpec(**{**zero, "op_forward_s": 4e-6, "op_backward_s": 3e-6, "op_optimizer_s": 2.5e-6,
                               "concurrent_gemm_slowdown": 0.12, "concurrent_slowdown": 0.3})
    refs = {r["case"]: r for r in _synthetic_framework(node, planted, wide=True, concurrency=True)["reference"]}
    burst = {**refs["plain_concurrent"], "median_s": {k: 1.5 * v for k, v in refs["plain_concurrent"]["median_s"].items()}}
    pairs = [("reference shape", refs["plain"], refs["plain_both"]),
             ("wide shape", refs["plain_wide"], refs["plain_wide_both"]),
             ("concurrency shape", refs["plain_alone_interleaved"], burst)]
    base = dc.replace(planted, concurrent_gemm_slowdown=0.0, concurrent_slowdown=0.0)
    robust, lines = fit_concurrency(pairs, node, base)
    scale = cal.CONCURRENCY_FIT_SCALE
    try:
        cal.CONCURRENCY_FIT_SCALE = 1e3  # soft-L1 with a huge scale is plain least squares
        plain, _ = fit_concurrency(pairs, node, base)
    finally:
        cal.CONCURRENCY_FIT_SCALE = scale

    def off(f):
        return abs(f.concurrent_gemm_slowdown - 0.12) + abs(f.concurrent_slowdown - 0.3)
    assert off(robust) < 0.8 * off(plain), (off(robust), off(plain))
    assert any("concurrency shape" in line for line in lines)


def test_framework_recovers_the_pipelining_runtime_from_the_pp_steps(results, tmp_path):
    """1F1B at two shapes separate the per-action constant from the part proportional to the
    action's work; the zero-bubble step then gives the split backward's extra share; all three
    are written to the profile and read back."""
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    planted = FrameworkSpec(op_forward_s=4e-6, op_backward_s=3e-6, op_optimizer_s=2.5e-6,
                            tp_linear_forward_s=0.0, tp_linear_backward_s=0.0, tp_optimizer_param_s=0.0,
                            fsdp_unit_forward_s=0.0, fsdp_unit_backward_s=0.0, fsdp_optimizer_param_s=0.0,
                            zero1_param_s=0.0, fragmentation_fraction=0.1, training_overhead_bytes=1e6,
                            pp_action_s=400e-6, pp_compute_slowdown=0.08, zb_split_slowdown=0.12)
    quiet["framework"] = _synthetic_framework(node, planted, pipeline=True)
    cal = build_profile(quiet)
    got = cal.node.framework
    for f in ("pp_action_s", "pp_compute_slowdown", "zb_split_slowdown"):
        assert getattr(got, f) == pytest.approx(getattr(planted, f), rel=1e-3), f
    path = tmp_path / "p.yaml"
    path.write_text(cal.to_yaml())
    back = load_profile(str(path)).framework
    for f in ("pp_action_s", "pp_compute_slowdown", "zb_split_slowdown"):
        assert getattr(back, f) == pytest.approx(getattr(got, f), rel=1e-5), f
    # the reference-shape 1F1B step alone: the whole residual is read as the per-action constant
    quiet["framework"]["reference"] = [r for r in quiet["framework"]["reference"]
                                       if r["case"] not in ("pp_wide", "pp_zb")]
    alone = build_profile(quiet).node.framework
    assert alone.pp_compute_slowdown == 0.0 and alone.zb_split_slowdown == 0.0
    assert alone.pp_action_s > planted.pp_action_s


def test_framework_residuals_below_zero_clip_to_zero(results):
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    planted = FrameworkSpec(**{k: 0.0 for k in ("op_forward_s", "op_backward_s", "op_optimizer_s",
                                                "tp_linear_forward_s", "tp_linear_backward_s",
                                                "tp_optimizer_param_s", "fsdp_unit_forward_s",
                                                "fsdp_unit_backward_s", "fsdp_optimizer_param_s",
                                                "zero1_param_s", "fragmentation_fraction",
                                                "training_overhead_bytes")})
    fw_results = _synthetic_framework(node, planted)
    for r in fw_results["reference"]:
        if r["case"] == "tp":
            r["median_s"] = {k: 0.5 * v for k, v in r["median_s"].items()}  # faster than predicted
    quiet["framework"] = fw_results
    got = build_profile(quiet).node.framework
    assert got.tp_linear_forward_s == 0.0 and got.tp_linear_backward_s == 0.0


def test_median_results_takes_each_measurement_median_over_passes():
    from planner.calibrate.runner import median_results

    passes = [{"env": {"date": d}, "quick": False, "contended": c,
               "rows": [{"case": "tp", "median_s": t, "steps": 40}, {"case": "fsdp", "median_s": 2 * t, "steps": 40}]}
              for d, c, t in (("a", False, 1.0), ("b", True, 3.0), ("c", False, 2.0))]
    merged = median_results(passes)
    assert merged["env"] == {"date": "a"}              # strings: the first pass's
    assert merged["contended"] is True                  # flags: any pass
    assert [r["median_s"] for r in merged["rows"]] == [2.0, 4.0]
    assert merged["rows"][0]["steps"] == 40 and merged["rows"][0]["case"] == "tp"
    assert median_results(passes[:1]) is passes[0]


def test_calibrate_rejects_repeat_below_one(tmp_path):
    from planner.calibrate.runner import calibrate
    from planner.errors import InputError

    with pytest.raises(InputError, match="repeat"):
        calibrate(2, repeat=0, out=None)


def test_two_point_line_keeps_intercept_and_slope_non_negative():
    from planner.calibrate.executor_fits import two_point_line

    assert two_point_line(1.0, 3.0, 3.0, 7.0) == pytest.approx((1.0, 2.0))
    assert two_point_line(1.0, 5.0, 3.0, 3.0) == pytest.approx((4.0, 0.0))    # no growth: the mean
    const, slope = two_point_line(1.0, 1.0, 2.0, 4.0)                           # through the origin
    assert const == 0.0 and slope == pytest.approx((1 * 1 + 2 * 4) / 5)


@pytest.mark.parametrize("rate2, expected", [(1.33, 2), (1.1, 1), (2.05, 2)])
def test_effective_cores_round_up_from_a_quarter(rate2, expected):
    from planner.calibrate.profile import contention

    rows = [{"ranks": 1, "per_rank": [{"flops_per_s": 1.0, "cpu_ratio": 1.0}]},
            {"ranks": 2, "per_rank": [{"flops_per_s": rate2 / 2, "cpu_ratio": 1.0}] * 2}]
    host_cores, _, _ = contention(rows, 2)
    assert host_cores == expected


def _elementwise_rows(planted, rate_gb_s):
    """executor.bench.elementwise rows a machine with per-kind rates ``rate_gb_s[kind](call_bytes)``
    (forward, backward GB/s) and ``planted``'s per-op costs would give: bytes / rate + ops x cost."""
    from planner.cost.framework import elementwise_bytes_per_element
    from planner.framework_spec import ELEMENTWISE_CLASSES

    rows = []
    for kind in ELEMENTWISE_CLASSES:
        fwd_bpe, bwd_bpe = elementwise_bytes_per_element(kind, 4)
        for batch in (1, 2, 4, 8):
            elements = batch * 256 * 256
            fwd_gb_s, bwd_gb_s = rate_gb_s(kind, elements * fwd_bpe)
            directions = [("optimizer" if kind == "adamw" else "forward", fwd_bpe, fwd_gb_s, 3,
                           planted.op_optimizer_s if kind == "adamw" else planted.op_forward_s)]
            if kind not in ("arith", "adamw"):
                directions.append(("backward", bwd_bpe, bwd_gb_s, 7, planted.op_backward_s))
            for direction, per_element, gb_s, ops, op_s in directions:
                t = per_element * elements / (gb_s * GB) + ops * op_s
                rows.append({"kind": kind, "dtype": "fp32", "direction": direction, "micro_batch": batch,
                             "elements": elements, "ops": ops, "times_s": [t] * 5, "median_s": t,
                             "cpu_ratio": 1.0, "inner": 1, "attempts": 1})
    return rows


def test_a_pooled_adamw_row_keeps_its_rate_at_one_tensor_size():
    """The AdamW case steps many tensors of one size (``calls``): its rate is the whole pool's
    bytes over its time, kept at the bytes of one tensor's update."""
    from planner.calibrate.executor_costs import elementwise_rates
    from planner.cost.framework import ADAMW_BYTES_PER_PARAM

    per_tensor, calls, op_s = 65536, 64, 2e-6
    elements = per_tensor * calls
    ops = 10 * calls + 2
    t = ADAMW_BYTES_PER_PARAM * elements / (30 * GB) + ops * op_s
    row = {"kind": "adamw", "dtype": "fp32", "direction": "optimizer", "micro_batch": 1,
           "elements": elements, "calls": calls, "ops": ops, "median_s": t}
    (kind, dtype, points), = elementwise_rates([row], {"optimizer": op_s})[0]
    (call_bytes, fwd, bwd), = points
    assert (kind, dtype) == ("adamw", "fp32")
    assert call_bytes == ADAMW_BYTES_PER_PARAM * per_tensor
    assert fwd / GB == pytest.approx(30.0, rel=1e-9) and bwd == fwd


def test_elementwise_rates_are_recovered_per_kind_and_size_and_written(results, tmp_path):
    """Per-kind rates that fall with the call's size: calibrate takes the planted per-op cost off
    each time, keeps one point per size, and the profile reads back with them; the add's
    backward (no kernel of its own) takes its forward rate."""
    import math

    from planner.cost.framework import elementwise_bytes_per_element
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    planted = FrameworkSpec(**{**dict.fromkeys(FrameworkSpec.number_fields(), 0.0), "op_forward_s": 2e-6,
                               "op_backward_s": 1.5e-6, "op_optimizer_s": 2.5e-6})
    base = {"arith": 80.0, "rmsnorm": 50.0, "layernorm": 15.0, "gelu": 4.0, "swiglu": 20.0, "rope": 7.0,
            "adamw": 30.0}

    def rate(kind, call_bytes):  # 20% slower per quadrupling of the call size
        scale = 0.8 ** math.log(call_bytes / 2**20, 4)
        return base[kind] * scale, 0.5 * base[kind] * scale

    fw_results = _synthetic_framework(node, planted)
    fw_results["elementwise"] = _elementwise_rows(planted, rate)
    quiet["framework"] = fw_results
    cal = build_profile(quiet)
    got = cal.node.framework
    # at every measured size exactly, and clamped outside them
    for kind in base:
        per = elementwise_bytes_per_element(kind, 4)[0]
        for batch in (1, 2, 4, 8):
            call = batch * 256 * 256 * per
            fwd, bwd = got.elementwise_rate(kind, "fp32", call)
            want_f, want_b = rate(kind, call)
            assert fwd / GB == pytest.approx(want_f, rel=1e-6)
            assert bwd / GB == pytest.approx(want_f if kind in ("arith", "adamw") else want_b, rel=1e-6)
        assert got.elementwise_rate(kind, "fp32", 1.0) == got.elementwise_rate(kind, "fp32", 256 * 256 * per)
    assert got.elementwise_rate("gelu", "bf16", 2**20) is None
    path = tmp_path / "p.yaml"
    path.write_text(cal.to_yaml())
    text = path.read_text()
    assert "elementwise_gb_s:" in text and "element-wise rates of the executor's code" in text
    back = load_profile(str(path)).framework
    assert back.elementwise_rate("rope", "fp32", 3e6) == pytest.approx(got.elementwise_rate("rope", "fp32", 3e6),
                                                                        rel=1e-5)


@pytest.mark.parametrize("key, value, reason", [
    ("elementwise_gb_s", "{gelu: {fp32: [[1.0, 4.0]]}}", "call MiB, forward GB/s, backward GB/s"),
    ("elementwise_gb_s", "{gelu: {fp32: [[1.0, 4.0, -5.0]]}}", "> 0"),
    ("elementwise_gb_s", "{gelu: {fp32: [[4.0, 4.0, 5.0], [1.0, 4.0, 5.0]]}}", "increasing call sizes"),
    ("elementwise_gb_s", "{softmax: {fp32: [[1.0, 4.0, 5.0]]}}", "unknown kind"),
    ("elementwise_gb_s", "{gelu: {fp16: [[1.0, 4.0, 5.0]]}}", "fp32 or bf16"),
    ("attention_gflops", "{mha_d32: {fp32: [[256, 40.0]]}}", "sequence length, forward GFLOP/s, backward GFLOP/s"),
    ("attention_gflops", "{mha_d32: {fp32: [[256, 40.0, 0.0]]}}", "> 0"),
    ("attention_gflops", "{mha_d32: {fp32: [[256, 4.0, 5.0], [128, 4.0, 5.0]]}}", "increasing sequence lengths"),
    ("attention_gflops", "{mha: {fp32: [[256, 4.0, 5.0]]}}", "unknown kind"),
    ("attention_gflops", "{mqa_d32: {fp32: [[256, 4.0, 5.0]]}}", "unknown kind"),
])
def test_malformed_rate_tables_name_the_field(results, key, value, reason):
    from planner.errors import InputError
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    planted = FrameworkSpec(**{**dict.fromkeys(FrameworkSpec.number_fields(), 0.0), "op_forward_s": 1e-5,
                               "op_backward_s": 1e-5, "op_optimizer_s": 1e-6})
    quiet["framework"] = _synthetic_framework(node, planted)
    data = yaml.safe_load(build_profile(quiet).to_yaml())
    data["framework"][key] = yaml.safe_load(value)
    with pytest.raises(InputError) as err:
        parse_profile(data, "p.yaml")
    assert f"framework.{key}" in str(err.value) and reason in str(err.value)


def _attention_rows(planted, gflops):
    """executor.bench.attention rows a machine whose SDPA call runs at ``gflops(kind, d_head,
    seq_len)`` (forward, backward GFLOP/s per counted forward FLOP) with ``planted``'s per-op
    costs would give: counted FLOPs / rate + ops x cost, over two pooled calls."""
    rows = []
    for kind in ("mha", "gqa"):
        for d_head in (32, 64):
            for seq_len in (128, 256, 512):
                batch, heads, calls = 1024 // seq_len, 256 // d_head, 2
                flops = calls * 4.0 * batch * seq_len ** 2 * heads * d_head
                for direction, rate, ops, op_s in (("forward", gflops(kind, d_head, seq_len)[0], 6, planted.op_forward_s),
                                                   ("backward", gflops(kind, d_head, seq_len)[1], 9, planted.op_backward_s)):
                    t = flops / (rate * 1e9) + ops * op_s
                    rows.append({"kind": kind, "dtype": "fp32", "direction": direction, "d_head": d_head,
                                 "heads": heads, "kv_heads": heads if kind == "mha" else heads // 4,
                                 "seq_len": seq_len, "batch": batch, "calls": calls, "ops": ops,
                                 "times_s": [t] * 5, "median_s": t, "cpu_ratio": 1.0, "inner": 1, "attempts": 1})
    return rows


def test_attention_rates_are_recovered_per_kind_width_and_length_and_written(results, tmp_path):
    """Planted SDPA rates (per counted forward FLOP; GQA slower, wider heads and longer
    sequences faster): calibrate takes the per-op cost off, keeps one point per length under
    ``<kind>_d<width>``, and the profile reads back with them; a width between the measured ones
    takes the nearer one's rates."""
    from planner.framework_spec import FrameworkSpec

    quiet = _quiet(results)
    node = build_profile(quiet).node
    planted = FrameworkSpec(**{**dict.fromkeys(FrameworkSpec.number_fields(), 0.0), "op_forward_s": 2e-6,
                               "op_backward_s": 1.5e-6, "op_optimizer_s": 2.5e-6})

    def gflops(kind, d_head, seq_len):
        f = (60.0 if kind == "mha" else 45.0) * (d_head / 32) ** 0.3 * (seq_len / 256) ** 0.2
        return f, 0.4 * f

    fw_results = _synthetic_framework(node, planted)
    fw_results["attention"] = _attention_rows(planted, gflops)
    quiet["framework"] = fw_results
    cal = build_profile(quiet)
    got = cal.node.framework
    assert sorted(k for k, _, _ in got.attention_rates) == ["gqa_d32", "gqa_d64", "mha_d32", "mha_d64"]
    for kind in ("mha", "gqa"):
        for d_head in (32, 64):
            for seq_len in (128, 256, 512):
                fwd, bwd = got.attention_rate(kind, d_head, "fp32", seq_len)
                want_f, want_b = gflops(kind, d_head, seq_len)
                assert fwd / 1e9 == pytest.approx(want_f, rel=1e-6) and bwd / 1e9 == pytest.approx(want_b, rel=1e-6)
    assert got.attention_rate("mha", 40, "fp32", 256) == got.attention_rate("mha", 32, "fp32", 256)
    assert got.attention_rate("mha", 56, "fp32", 256) == got.attention_rate("mha", 64, "fp32", 256)
    assert got.attention_rate("gqa", 32, "fp32", 64) == got.attention_rate("gqa", 32, "fp32", 128)
    assert got.attention_rate("gqa", 32, "bf16", 256) is None
    path = tmp_path / "p.yaml"
    path.write_text(cal.to_yaml())
    text = path.read_text()
    assert "attention_gflops:" in text and "attention core (the executor's causal SDPA call)" in text
    back = load_profile(str(path)).framework
    assert back.attention_rate("gqa", 64, "fp32", 300) == pytest.approx(got.attention_rate("gqa", 64, "fp32", 300),
                                                                         rel=1e-5)



def test_oversubscription_is_what_more_ranks_than_cores_cost_beyond_a_fair_share(results):
    """The plain step on 4 ranks at once on 2 cores against alone, over the fair x2 and the
    2-rank at-once ratio, recovers a planted 10%; the cost model then slows ranks beyond the
    cores in proportion (half at 3 busy ranks, all of it from 4), not at or below the cores."""
    import dataclasses as dc

    from planner.calibrate.executor_fits import fit_oversubscription
    from planner.cost.compute import make_rates
    from planner.framework_spec import FrameworkSpec

    step = {"forward": 0.06, "backward": 0.12, "optimizer": 0.01}

    def scaled(x):
        return {"median_s": {k: x * v for k, v in step.items()}}

    refs = {"plain_alone_interleaved": scaled(1.0), "plain_concurrent": scaled(1.02)}
    over = {"ranks": 4, "alone": scaled(1.0), "together": scaled(2 * 1.02 * 1.10)}
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    base = FrameworkSpec(**{**zero, "concurrent_slowdown": 0.02, "concurrent_gemm_slowdown": 0.02})
    fitted, lines = fit_oversubscription(over, refs, 2, base)
    assert fitted.oversubscribed_slowdown == pytest.approx(0.10, abs=1e-9) and "oversubscribing" in lines[0]
    assert fit_oversubscription(dict(over, ranks=2), refs, 2, base)[0] is base  # not oversubscribed: nothing
    node = build_profile(_quiet(results)).node
    device = dc.replace(node.device, host_cores=2)
    conc = {k: make_rates(device, "fp32", k, fitted).gemm_concurrent for k in (2, 3, 4, 8)}
    assert conc[2] == pytest.approx(1.02)
    assert conc[3] == pytest.approx(1.02 * 1.05) and conc[4] == conc[8] == pytest.approx(1.02 * 1.10)


def test_ep_dispatch_costs_recover_a_planted_line_beyond_the_priced_all_to_alls(results):
    """Dispatch rows a machine with a planted constant + per-token cost would give (its two token
    all-to-alls each way priced by the profile's table on top) give back that line, and the cost
    model then prices an ep=2 MoE block with it instead of the counted-op estimate."""
    import dataclasses as dc

    from planner.calibrate.executor_fits import ep_dispatch_costs
    from planner.cost.comm import GroupShape, collective_time
    from planner.cost.framework import EP_DISPATCH_OPS, block_ops
    from planner.model import ModelSpec

    node = load_profile("local-cpu")
    rows = []
    for tokens in (256, 2048):
        routed_bytes = tokens * 2 * 128 * 4
        a2a = 2 * collective_time("all_to_all", routed_bytes, GroupShape(2, 2, 1), node)
        rows.append({"tokens": tokens, "top_k": 2, "routed_bytes": routed_bytes,
                     "forward_s": a2a + 1e-3 + 2e-6 * 2 * tokens, "backward_s": a2a + 4e-4 + 1e-6 * 2 * tokens})
    values: dict = {}
    assert "beyond the token all-to-alls" in ep_dispatch_costs(rows, node, values)[0]
    assert values["ep_dispatch_forward_s"] == pytest.approx(1e-3) and values["ep_dispatch_backward_s"] == pytest.approx(4e-4)
    assert values["ep_dispatch_forward_s_per_token"] == pytest.approx(2e-6)
    assert ep_dispatch_costs(rows[:1], node, {}) == []  # one size: no line, the op estimate stays

    moe = ModelSpec(name="m", n_layers=2, hidden_size=128, n_heads=4, n_kv_heads=4, ffn_hidden_size=256,
                    vocab_size=512, seq_len=128, mlp="swiglu", norm="rmsnorm", position="rope", n_experts=4, top_k=2)
    frame = dc.replace(node.framework, **values)
    assert frame.ep_dispatch_measured and not dc.replace(frame, ep_dispatch_forward_s=0.0,
                                                         ep_dispatch_backward_s=0.0).ep_dispatch_measured
    f_est, b_est = block_ops(moe, "none", 2)
    f_meas, b_meas = block_ops(moe, "none", 2, dispatch_measured=True)
    assert (f_est - f_meas, b_est - b_meas) == EP_DISPATCH_OPS
    assert frame.ep_dispatch_s(1000) == pytest.approx((1e-3 + 2e-6 * 1000, 4e-4 + 1e-6 * 1000))


def test_moe_block_costs_recover_a_planted_per_expert_cost():
    """MoE block rows a machine with a planted per-block and per-expert cost would give (the cost
    model's price of each block on top) give back both, and the cost model then adds them to an
    executor MoE block with as many experts as the rank holds."""
    import dataclasses as dc

    from planner.calibrate.executor_fits import moe_block_costs
    from planner.cost.compute import layer_times, make_rates
    from planner.cost.runtime import EXECUTOR_RUNTIME
    from planner.model import ModelSpec

    node = load_profile("local-cpu")
    frame = dc.replace(node.framework, moe_block_forward_s=0.0, moe_block_backward_s=0.0, moe_expert_forward_s=0.0,
                       moe_expert_backward_s=0.0)
    base = ModelSpec(name="m", n_layers=1, hidden_size=128, n_heads=4, n_kv_heads=2, ffn_hidden_size=384,
                     vocab_size=512, seq_len=128, mlp="swiglu", norm="rmsnorm", position="rope", bias=False,
                     top_k=2, expert_ffn_hidden_size=256)
    rates = make_rates(node.device, "fp32", 1, frame)
    rows = []
    for e in (4, 8):
        m = dc.replace(base, n_experts=e)
        lt = layer_times(m, 2, 128, 1, 1, False, "none", "fp32", rates, EXECUTOR_RUNTIME)
        rows.append({"model": m.to_dict(), "micro_batch": 2, "seq_len": 128, "experts": e,
                     "forward_s": lt.fwd_s + 3e-4 + 1e-4 * e, "backward_s": lt.bwd_input_s + lt.bwd_weight_s + 2e-4 * e})
    values: dict = {}
    assert "per expert" in moe_block_costs(rows, node, frame, values)[0]
    assert values["moe_block_forward_s"] == pytest.approx(3e-4) and values["moe_expert_forward_s"] == pytest.approx(1e-4)
    assert values["moe_block_backward_s"] == pytest.approx(0.0, abs=1e-9)
    assert values["moe_expert_backward_s"] == pytest.approx(2e-4)
    assert moe_block_costs(rows[:1], node, frame, {}) == []
    # the cost model adds them, per expert the rank holds (ep 2: half of them)
    planted = dc.replace(frame, **values)
    m8 = dc.replace(base, n_experts=8)
    for ep in (1, 2):
        before = layer_times(m8, 2, 128, 1, 1, False, "none", "fp32", make_rates(node.device, "fp32", 1, frame),
                             EXECUTOR_RUNTIME, ep)
        after = layer_times(m8, 2, 128, 1, 1, False, "none", "fp32", make_rates(node.device, "fp32", 1, planted),
                            EXECUTOR_RUNTIME, ep)
        assert after.fwd_s - before.fwd_s == pytest.approx(3e-4 + 1e-4 * (8 // ep), rel=1e-6)
