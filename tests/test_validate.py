import csv
from pathlib import Path

import pytest

from planner.cli import main
from planner.validation import summary, validate

SRC = Path(__file__).resolve().parent.parent / "benchmarks" / "published_runs.csv"
KEEP = {"11", "24", "36", "37", "110", "162", "194", "197"}


@pytest.fixture()
def fixture_csv(tmp_path):
    with SRC.open() as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            if r["row_id"] in KEEP:
                w.writerow(r)
    return path


def test_validate_dataframe(fixture_csv):
    df = validate(fixture_csv)
    status = dict(zip(df["row_id"], df["status"]))
    assert status[36] == "predicted" and status[37] == "predicted" and status[110] == "predicted"
    assert status[24] == "assumed"      # micro-batch not stated
    assert status[162] == "assumed"     # node type without a profile
    assert status[194] == "skipped" and status[197] == "skipped"
    row37 = df[df["row_id"] == 37].iloc[0]
    assert row37["metric"] == "mfu_pct" and "vpp3" in row37["config"]
    assert df[df["row_id"] == 36].iloc[0]["metric"] == "step_time_s"
    assert df[df["row_id"] == 11].iloc[0]["metric"] == "hfu_tflops_per_gpu"
    skipped = df[df["status"] == "skipped"]
    assert all(skipped["note"].str.len() > 0)
    s = summary(df)
    assert s["rows"] == 4 and s["mean_abs_error"] >= 0


def test_validate_command_writes_report(fixture_csv, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["validate", "--dataset", str(fixture_csv), "--out-dir", str(out)]) == 0
    md = (out / "published-validation.md").read_text()
    assert "clusterplan validate --dataset" in md and "Skipped rows" in md
    assert (out / "published-validation.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "published-validation.csv").read_text().startswith("row_id")


def test_validate_bad_dataset(tmp_path, capsys):
    assert main(["validate", "--dataset", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and len(err.strip().splitlines()) == 1
