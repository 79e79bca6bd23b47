"""compare: joins, error math and report files on the recorded run fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import main
from planner.report import compare_runs, error_pct
from planner.report_files import write_report

RUNS = Path(__file__).parent / "fixtures" / "runs"
OK = ["dp2", "pp2", "tp2", "dp2-fsdp"]
ALL = OK + ["contended", "failed"]


@pytest.fixture(scope="module")
def comp():
    return compare_runs([RUNS / n for n in ALL])


def test_error_convention():
    assert error_pct(1.1, 1.0) == pytest.approx(10.0)
    assert error_pct(None, 1.0) is None
    assert error_pct(1.0, 0.0) is None


def test_join_and_error_math(comp):
    df = comp.runs.set_index(comp.runs["run_dir"].map(lambda p: Path(p).name))
    assert list(df.index) == OK + ["contended"]
    expected = {"dp2": (0.200, 0.210), "pp2": (0.300, 0.280), "tp2": (0.150, 0.160), "dp2-fsdp": (0.250, 0.330)}
    for name, (p, m) in expected.items():
        assert df.loc[name, "predicted_step_time_s"] == pytest.approx(p)
        assert df.loc[name, "measured_step_time_s"] == pytest.approx(m)
        assert df.loc[name, "error_pct"] == pytest.approx(100 * (p - m) / m)
    assert df.loc["dp2", "memory_error_pct"] == pytest.approx(100 * (100 - 110) / 110)
    assert df.loc["pp2", "measured_step_time_s_p90"] == pytest.approx(0.290)
    # same tokens per step: tokens/s error is -step error / (1 + step error)
    assert df.loc["dp2", "predicted_tokens_per_s"] == pytest.approx(2048 / 0.2)
    plan = json.loads((RUNS / "pp2" / "plan.json").read_text())
    assert df.loc["pp2", "plan_id"] == plan["id"]


def test_aggregates_exclude_contended_and_failed(comp):
    st = comp.stats
    errs = sorted(abs(100 * (p - m) / m) for p, m in ((0.2, 0.21), (0.3, 0.28), (0.15, 0.16), (0.25, 0.33)))
    assert st["n_ok"] == 4
    assert st["median_abs_error_pct"] == pytest.approx((errs[1] + errs[2]) / 2)
    assert st["max_abs_error_pct"] == pytest.approx(errs[-1])
    # throughput ranks: predicted tp2 > dp2 > fsdp > pp2, measured tp2 > dp2 > pp2 > fsdp
    assert st["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert [f["status"] for f in comp.failed] == ["failed"]
    assert comp.failed[0]["rank"] == 1 and "fixture failure" in comp.failed[0]["error"]


def test_phases_from_trace(comp):
    row = comp.runs[comp.runs["run_dir"].str.endswith("pp2")].iloc[0]
    summary = json.loads((RUNS / "pp2" / "summary.json").read_text())
    assert row["measured_forward_s"] == pytest.approx(summary["measured"]["phases"]["forward_s"])
    t = summary["prediction"]["breakdown"]["time"]
    assert row["predicted_backward_s"] == pytest.approx(t["backward_s"] + t["recompute_s"])
    assert row["predicted_comm_bubble_s"] == pytest.approx(sum(t["exposed_comm_s"].values()) + t["bubble_s"])
    # measured comm+bubble = wall - busy phases, > 0 on a pipelined run
    assert row["measured_comm_bubble_s"] > 0


def test_report_files(comp, tmp_path):
    paths = write_report(comp, tmp_path)
    names = sorted(p.name for p in paths)
    assert {"compare.md", "compare.csv", "compare.html", "scatter.png", "breakdown.png"} <= set(names)
    timelines = [n for n in names if n.startswith("timeline_")]
    plan_id = json.loads((RUNS / "pp2" / "summary.json").read_text())["plan_id"]
    assert timelines == [f"timeline_{plan_id}.png"]  # only the pipelined run
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "compare.md").read_text()
    assert "Failed runs" in md and "fixture failure" in md
    assert len((tmp_path / "compare.csv").read_text().splitlines()) == 1 + 5


def test_cli_json(capsys, tmp_path):
    assert main(["compare", *[str(RUNS / n) for n in ALL], "--json", "--out", str(tmp_path / "r")]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("runs", "median_abs_error_pct", "max_abs_error_pct", "spearman"):
        assert key in data
    run = data["runs"][0]
    for key in ("plan_id", "predicted_step_time_s", "measured_step_time_s", "error_pct",
                "predicted_peak_memory_bytes", "measured_peak_memory_bytes", "memory_error_pct"):
        assert key in run
    assert (tmp_path / "r" / "compare.md").exists()


def test_cli_bad_run_dir(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run_dir" in err[0]
