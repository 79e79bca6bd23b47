"""Summary statistics from records: medians and spread over measured steps, contention flag,
peak memory choice, failed summaries of partial records; model naming; single-rank executor."""
import json
import subprocess
import sys

import pytest

from planner.records import expected_cpu_ratio, percentile, summarize
from executor.testing import make_plan, tiny_spec


def _plan():
    return make_plan(tiny_spec("gpt"), dp=2, global_batch=4).to_dict()


def _records(plan, walls, ratios=(1.0, 1.0)):
    recs = [{"kind": "env", "plan_id": plan["id"], "rank": r, "threads": 1, "device": "cpu"} for r in (0, 1)]
    for step, wall in enumerate(walls):
        for rank in (0, 1):
            recs.append({"kind": "step", "plan_id": plan["id"], "rank": rank, "step": step, "warmup": step == 0,
                         "wall_s": wall * (1 + 0.1 * rank), "cpu_ratio": ratios[rank], "loss": 1.0 + step})
    recs.append({"kind": "memory", "plan_id": plan["id"], "rank": 1, "rss_peak_minus_baseline_bytes": 7,
                 "cuda_max_allocated_bytes": None})
    return recs


def test_percentile_matches_numpy_convention():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)


def test_summary_statistics():
    plan = _plan()
    s = summarize(_records(plan, [9.0, 1.0, 2.0, 3.0]), plan, 4, 1, {"step_time_s": 1.5}, cores=2)
    m = s["measured"]
    assert s["status"] == "ok" and m["n_steps"] == 3
    assert m["step_time_s"] == pytest.approx(2.2)  # slowest rank per step, warm-up (9.0) dropped
    assert m["step_time_s_p10"] < m["step_time_s"] < m["step_time_s_p90"]
    assert m["tokens_per_s"] == pytest.approx(4 * 16 / 2.2)
    assert m["peak_memory_bytes"] == 7 and m["peak_memory_rank"] == 1
    assert s["predicted"]["step_time_s"] == 1.5 and s["predicted"]["peak_memory_bytes"] is None


def test_contended_flag():
    plan = _plan()
    s = summarize(_records(plan, [1.0, 1.0, 1.0], ratios=(1.0, 0.3)), plan, 3, 1, None, cores=2)
    assert s["status"] == "contended"
    assert expected_cpu_ratio({"pp": 2, "dp": 1, "global_batch": 2, "micro_batch": 1}, 2, 1, 2) == pytest.approx(2 / 3)
    assert expected_cpu_ratio({"pp": 1}, 4, 1, 2) == 0.5


@pytest.mark.parametrize("cores,n_nodes,wait,status", [
    (2, 1, 0.15, "ok"), (2, 1, 0.3, "contended"),   # a core per rank: any wait is someone else's
    (1, 1, 0.6, "ok"), (1, 1, 0.8, "contended"),    # 2 ranks on 1 core wait half the step by design
    (1, 2, 0.15, "ok"), (1, 2, 0.3, "contended"),   # 2 nodes of one rank on a core each (emulated)
])
def test_only_waits_beyond_the_plans_own_oversubscription_flag_a_run(cores, n_nodes, wait, status):
    plan = dict(_plan(), n_nodes=n_nodes)
    recs = _records(plan, [1.0, 1.0, 1.0])
    for r in recs:
        if r["kind"] == "step":
            r["run_queue_wait_s"] = wait * r["wall_s"]
    assert summarize(recs, plan, 3, 1, None, cores=cores)["status"] == status


def test_failed_summary_of_partial_records():
    plan = _plan()
    recs = _records(plan, [1.0, 1.0])[:-1]
    s = summarize(recs, plan, 10, 1, None, status="failed", error="boom", rank=1)
    assert s["status"] == "failed" and s["rank"] == 1 and s["measured"]["peak_memory_bytes"] is None


def test_module_names_match_the_layer_graph():
    from executor.model import build_model

    model = build_model(tiny_spec("llama", n_layers=3))
    top = {name for name, _ in model.named_children()}
    assert top == {"embed", "layers", "final_norm", "lm_head"}
    assert [n for n, _ in model.layers.named_children()] == ["0", "1", "2"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == tiny_spec("llama", n_layers=3).total_params()
    gpt = tiny_spec("gpt", experts=4, top_k=2)
    assert sum(p.numel() for p in build_model(gpt).parameters()) == gpt.total_params()


def test_single_rank_executor(tmp_path):
    plan = make_plan(tiny_spec("gpt"), global_batch=2, micro_batch=1, recompute="full", precision="bf16")
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "executor", str(path), "--out", str(out), "--steps", "3",
                           "--warmup", "1"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29731"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] in ("ok", "contended") and summary["measured"]["n_steps"] == 2
    mem = summary["measured"]["memory"][0]
    assert mem["activations_peak_bytes"] > 0 and mem["grads_bytes"] == mem["params_bytes"]


def test_bad_plan_for_executor(tmp_path):
    plan = make_plan(tiny_spec("gpt"), global_batch=1, precision="fp8")
    path = plan.save(tmp_path / "plan.json")
    proc = subprocess.run([sys.executable, "-m", "executor", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "precision" in proc.stderr


def test_allocator_peak_counts_live_tensor_bytes():
    """AllocatorPeak reports the largest total of bytes live at once inside it (frees count)."""
    import torch

    from executor.measure import AllocatorPeak

    mib = 2**20
    with AllocatorPeak() as probe:
        a = torch.empty(4 * mib, dtype=torch.uint8)
        b = torch.empty(8 * mib, dtype=torch.uint8)
        del a
        c = torch.empty(2 * mib, dtype=torch.uint8)
        del b, c
    assert 12 * mib <= probe.peak_bytes < 12 * mib + 64 * 1024
