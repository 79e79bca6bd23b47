import json

import pytest

from planner.cli import main
from planner.profile_yaml import available_profiles

KEYS = {"step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "model_tflops_per_gpu",
        "hardware_tflops_per_gpu", "mfu", "hfu", "peak_memory_bytes", "fits", "per_stage",
        "breakdown", "timeline", "flop_convention"}
BASE = ["predict", "--model", "gpt3-175b", "--hardware", "dgx-a100-80gb", "--nodes", "8",
        "--tp", "8", "--pp", "8", "--dp", "1", "--global-batch", "64"]


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_keys(capsys):
    rc, out, _ = run(BASE + ["--recompute", "selective", "--sequence-parallel", "--vpp", "3", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert KEYS <= set(d)
    assert set(d["breakdown"]["time"]) >= {"compute_s", "forward_s", "backward_s", "optimizer_s",
                                           "recompute_s", "exposed_comm_s", "bubble_s"}
    assert set(d["breakdown"]["time"]["exposed_comm_s"]) == {"tp", "cp", "dp", "pp", "ep"}
    assert set(d["breakdown"]["memory"]) == {"weights_bytes", "grads_bytes", "optimizer_bytes",
                                             "activations_bytes", "logits_bytes", "reserved_bytes"}
    assert len(d["per_stage"]) == 8 and sum(s["layers"] for s in d["per_stage"]) == 96
    assert {t["kind"] for t in d["timeline"]} == {"F", "B"}


def test_table_and_out_roundtrip(tmp_path, capsys):
    out_path = tmp_path / "plan.json"
    rc, out, _ = run(BASE + ["--stage-layers", "13,12,12,12,12,12,12,11", "--out", str(out_path)], capsys)
    assert rc == 0 and "step time" in out
    plan = json.loads(out_path.read_text())
    assert plan["prediction"]["step_time_s"] > 0
    rc, out, _ = run(["predict", str(out_path), "--json"], capsys)
    assert rc == 0
    assert json.loads(out)["step_time_s"] == pytest.approx(plan["prediction"]["step_time_s"])


def test_gpus_per_node_override(capsys):
    rc, out, _ = run(["predict", "--model", "tiny-gpt", "--hardware", "dgx-a100-80gb", "--nodes", "2",
                      "--gpus-per-node", "2", "--tp", "1", "--pp", "1", "--dp", "4",
                      "--global-batch", "8", "--json"], capsys)
    assert rc == 0 and json.loads(out)["step_time_s"] > 0


@pytest.mark.parametrize("argv,field", [
    (["--model", "no-such-model"], "model"),
    (["--hardware", "no-such-profile"], "hardware"),
    (["--tp", "7"], "dp"),
    (["--global-batch", "65", "--micro-batch", "2"], "micro_batch"),
    (["--stage-layers", "4,x"], "stage_layers"),
    (["--stage-layers", "10,10,10,10,10,10,10,10"], "stage_layers"),
])
def test_errors_one_line_exit_2(argv, field, capsys):
    args = list(BASE)
    for i in range(0, len(argv), 2):
        if argv[i] in args:
            args[args.index(argv[i]) + 1] = argv[i + 1]
        else:
            args += argv[i:i + 2]
    rc, out, err = run(args, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"error: {field}" in err


def test_heads_not_divisible(capsys):
    rc, _, err = run(["predict", "--model", "gpt3-175b", "--hardware", "dgx-a100-80gb", "--nodes", "7",
                      "--tp", "7", "--pp", "8", "--dp", "1", "--global-batch", "64"], capsys)
    assert rc == 2 and "tp" in err and len(err.strip().splitlines()) == 1


def test_every_preset_on_every_profile():
    from planner.cost.step import cluster_for, predict
    from planner.catalog import load_model
    from planner.plan import ParallelConfig
    from planner.presets import PRESETS

    for profile in available_profiles():
        cluster = cluster_for(profile, 1)
        world = cluster.world_size
        for name in PRESETS:
            model = load_model(name)
            tp = 1
            while tp * 2 <= world and model.n_heads % (tp * 2) == 0 and model.n_kv_heads % (tp * 2) == 0 \
                    and model.ffn_hidden_size % (tp * 2) == 0:
                tp *= 2
            par = ParallelConfig(tp=tp, pp=1, dp=world // tp, micro_batch=1,
                                 global_batch=world // tp, seq_len=min(model.seq_len, 2048),
                                 precision=next(d for d in ("bf16", "fp16", "fp32")
                                                if cluster.node.device.supports(d)))
            pred = predict(model, cluster, par)
            assert pred.step_time_s > 0 and isinstance(pred.fits, bool), (profile, name)


def test_version_list_and_the_package_api(capsys):
    import planner
    from planner.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("clusterplan ")
    for kind, expect in (("presets", "gpt3-175b"), ("profiles", "dgx-h100-80gb"), ("runtimes", "executor"),
                         ("clusters", "mixed-a100-h100")):
        assert main(["list", kind]) == 0
        assert expect in capsys.readouterr().out
    assert {"predict", "load_model", "load_hardware", "ParallelConfig", "cluster_for"} <= set(dir(planner))
    assert planner.load_hardware("dgx-h100-80gb") == planner.load_profile("dgx-h100-80gb")
    from planner.search import search

    model = planner.load_model("tiny-gpt")
    table = search(model, planner.cluster_for("local-cpu", 1, 2), global_batch=8, precision="fp32").table
    assert "parallel" not in table.columns and {"tp", "pp", "dp", "sharding"} <= set(table.columns)
    assert all(not isinstance(v, (dict, list)) for v in table.iloc[0].tolist())


def test_step_time_comes_with_the_nearest_published_runs_range(capsys):
    rc, out, _ = run(BASE + ["--json", "--runtime", "megatron-lm-2021"], capsys)
    d = json.loads(out)["trust"]
    assert rc == 0 and not d["extrapolation"] and len(d["rows"]) >= 3
    assert 0 < d["low_s"] <= d["high_s"]
    rc, out, _ = run(BASE, capsys)  # the default stack was never published on A100: other stacks' range
    assert rc == 0 and "extrapolation, " in out and "priced as default" in out
    rc, out, _ = run(["predict", "--model", "gpt2", "--hardware", "local-cpu", "--nodes", "1",
                      "--global-batch", "2", "--seq-len", "128"], capsys)
    assert rc == 0 and "extrapolation" in out
