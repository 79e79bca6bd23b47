"""``clusterplan plan``: JSON shape, files written, nothing-fits message, error paths."""
import json

from planner.cli import main

BASE = ["plan", "--model", "llama3-8b", "--hardware", "dgx-a100-80gb", "--nodes", "1", "--gpus-per-node", "4",
        "--global-batch", "8", "--seq-len", "2048"]


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_shape(capsys):
    rc, out, _ = run(BASE + ["--top", "3", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["fits"] and len(d["ranked"]) == 3
    assert {"step_time_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_gib", "headroom_gib", "bubble_pct",
            "exposed_comm_pct", "plan", "id", "parallel"} <= set(d["ranked"][0])
    assert d["total_candidates"] >= sum(r["count"] for r in d["rejections"].values())
    steps = [r["step_time_s"] for r in d["ranked"]]
    assert steps == sorted(steps)
    check = d["mfu_check"]  # plan 1 against the best published A100 run (reports/published-validation.csv)
    assert check is None or (check["excess_points"] > 3 and check["mechanisms"])


def test_table_reason_and_files(capsys, tmp_path):
    out_file = tmp_path / "best.json"
    rc, out, _ = run(BASE + ["--top", "3", "--out", str(out_file), "--out-dir", str(tmp_path / "top"),
                             "--fix", "tp=2"], capsys)
    assert rc == 0
    assert "faster than the runner-up" in out and "candidates:" in out
    best = json.loads(out_file.read_text())
    assert best["parallel"]["tp"] == 2 and best["prediction"]["fits"]
    files = sorted(p.name for p in (tmp_path / "top").iterdir())
    assert len(files) == 3 and files[0].startswith("rank-01-") and best["id"] in files[0]


def test_nothing_fits_says_what_would(capsys):
    rc, out, _ = run(["plan", "--model", "gpt3-175b", "--hardware", "dgx-a100-80gb", "--nodes", "2",
                      "--global-batch", "64"], capsys)
    assert rc == 1
    assert "No plan fits." in out and "Closest:" in out and "What would fit:" in out and "nodes" in out


def test_errors_one_line_exit_2(capsys):
    for extra, field in ((["--fix", "foo=1"], "fix"), (["--fix", "tp=abc"], "fix"), (["--fix", "tp"], "fix")):
        rc, _, err = run(BASE + extra, capsys)
        assert rc == 2 and err.count("\n") == 1 and field in err
    rc, _, err = run(["plan", "--model", "llama3-8b", "--hardware", "dgx-a100-80gb", "--global-batch", "8"], capsys)
    assert rc == 2 and "nodes" in err
    rc, _, err = run(["plan", "--model", "llama3-8b", "--cluster", "nope.yaml", "--global-batch", "8"], capsys)
    assert rc == 2 and "cluster" in err


def test_ranking_says_which_plans_it_cannot_tell_apart(capsys):
    from planner.commands.plan import ties_text
    from planner.trust import Trust

    rc, out, _ = run(BASE + ["--top", "3", "--json", "--runtime", "megatron-lm-2021"], capsys)
    trust = json.loads(out)["trust"]
    assert rc == 0 and len(trust) == 3 and all(not t["extrapolation"] for t in trust)
    rc, out, _ = run(BASE + ["--top", "3", "--json"], capsys)  # no published A100 run of the default stack
    trust = json.loads(out)["trust"]
    assert rc == 0 and all(t["extrapolation"] and t["low_s"] is not None for t in trust)
    best = Trust(9.0, 11.0, (1, 2, 3), "p", False)
    apart = Trust(12.0, 13.0, (1, 2, 3), "p", False)
    overlapping = Trust(10.5, 12.0, (1, 2, 3), "p", False)
    assert "Plans 1, 3 have ranges that overlap" in ties_text([best, apart, overlapping])
    assert "No other listed plan" in ties_text([best, apart])
    rc, out, _ = run(BASE[:4] + ["dgx-b200-192gb"] + BASE[5:] + ["--top", "2"], capsys)
    assert rc == 0 and "extrapolation" in out
