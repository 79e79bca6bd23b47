"""Bad input, one line: every reader goes through planner.io (size, UTF-8, depth, YAML aliases),
specs bound their sizes, exports and report names take nothing executable from data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import main

TINY = ["--model", "tiny-gpt", "--hardware", "local-cpu", "--nodes", "1", "--gpus-per-node", "2"]
ROOT = Path(__file__).resolve().parent.parent


def _one_line_exit_2(capsys, argv, field: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    return err[0]


@pytest.fixture()
def plan(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["predict", *TINY, "--dp", "2", "--micro-batch", "2", "--global-batch", "8", "--precision", "fp32",
                 "--out", str(path)]) == 0
    capsys.readouterr()
    return path


def test_unreadable_plan_files(tmp_path, capsys):
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00\x80")
    assert "UTF-8" in _one_line_exit_2(capsys, ["predict", str(binary)], "plan")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested" in _one_line_exit_2(capsys, ["predict", str(deep)], "plan")
    assert "directory" in _one_line_exit_2(capsys, ["predict", str(tmp_path)], "plan")
    if Path("/dev/zero").exists():
        assert "regular file" in _one_line_exit_2(capsys, ["predict", "/dev/zero"], "plan")


@pytest.mark.parametrize("change, field", [({"n_nodes": "two"}, "n_nodes"), ({"parallel": None}, "parallel"),
                                           ({"prediction": "fast"}, "prediction"),
                                           ({"parallel": {"tp": "2"}}, "tp")])
def test_plan_fields_of_the_wrong_type(plan, tmp_path, capsys, change, field):
    data = json.loads(plan.read_text())
    if isinstance(change.get("parallel"), dict):
        change = {"parallel": {**data["parallel"], **change["parallel"]}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, **change}))
    _one_line_exit_2(capsys, ["predict", str(bad)], field)


def test_a_run_is_refused_before_it_launches(plan, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(plan.read_text()), "prediction": "fast"}))
    _one_line_exit_2(capsys, ["run", str(bad), "--out", str(tmp_path / "r")], "prediction")
    assert not (tmp_path / "r").exists()


def test_profiles_parse_strictly(tmp_path, capsys):
    text = (ROOT / "hardware_profiles" / "dgx-a100-80gb.yaml").read_text()
    inf = tmp_path / "inf.yaml"
    inf.write_text(text.replace("bf16: 312", "bf16: .inf"))
    assert "finite" in _one_line_exit_2(capsys, ["predict", "--model", "tiny-gpt", "--hardware", str(inf), "--nodes",
                                                  "1", "--global-batch", "8"], "peak_tflops")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a, *a, *a]\n" for i in range(20)))
    assert "aliases" in _one_line_exit_2(capsys, ["predict", "--model", "tiny-gpt", "--hardware", str(bomb),
                                                   "--nodes", "1", "--global-batch", "8"], "hardware")


def test_sizes_beyond_any_real_cluster(capsys):
    _one_line_exit_2(capsys, ["predict", *TINY, "--global-batch", str(10**18)], "global_batch")
    _one_line_exit_2(capsys, ["plan", "--model", "tiny-gpt", "--hardware", "dgx-a100-80gb", "--nodes", str(10**12),
                              "--global-batch", "8"], "nodes")


def test_outputs_are_checked(plan, tmp_path, capsys):
    assert "directory" in _one_line_exit_2(capsys, ["predict", str(plan), "--out", str(tmp_path)], "out")
    _one_line_exit_2(capsys, ["predict", str(plan), "--out", str(plan / "x.json")], "out")


def test_exports_take_nothing_executable_from_a_model_name(plan, tmp_path, capsys):
    data = json.loads(plan.read_text())
    data["model"]["name"] = "tiny\ntouch /tmp/clusterplan-pwned"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    for fmt in ("torchrun", "slurm", "megatron", "torchtitan"):
        assert main(["export", str(bad), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert not any(line.lstrip().startswith("touch") for line in out.splitlines()), fmt


def test_report_names_come_from_a_clean_plan_id(tmp_path):
    from planner.report import Run

    run = Run(run_dir=tmp_path, summary={"plan_id": "x/../../etc"}, records=())
    assert run.plan_id == ""
    assert Run(run_dir=tmp_path, summary={"plan_id": "0123abcd"}, records=()).plan_id == "0123abcd"


def test_a_records_line_that_is_not_an_object_is_skipped(tmp_path):
    from planner.io import read_jsonl

    path = tmp_path / "records.jsonl"
    path.write_text('{"kind": "step"}\n[1, 2]\n"text"\n{"kind": "end"}\n{"torn": ')
    assert [r["kind"] for r in read_jsonl(path)] == ["step", "end"]


def test_run_refuses_before_touching_the_folder(plan, tmp_path, capsys):
    """Unsupported precision, a missing --data file and a plan predicted not to fit are refused
    in one line before anything is launched; a folder holding a run needs --overwrite."""
    data = json.loads(plan.read_text())
    fp16 = tmp_path / "fp16.json"
    fp16.write_text(json.dumps({**data, "parallel": {**data["parallel"], "precision": "fp16"}, "prediction": None}))
    _one_line_exit_2(capsys, ["run", str(fp16), "--out", str(tmp_path / "a")], "precision")
    _one_line_exit_2(capsys, ["run", str(plan), "--out", str(tmp_path / "b"), "--data", str(tmp_path / "none")],
                     "data")
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({**data, "prediction": {**data["prediction"], "fits": False,
                                                       "peak_memory_bytes": 978 * 2**30}}))
    assert "not to fit" in _one_line_exit_2(capsys, ["run", str(huge), "--out", str(tmp_path / "c")], "plan")
    for name in "abc":
        assert not (tmp_path / name).exists()
    held = tmp_path / "held"
    held.mkdir()
    (held / "records.jsonl").write_text('{"kind": "step"}\n')
    assert "--overwrite" in _one_line_exit_2(capsys, ["run", str(plan), "--out", str(held)], "out")
    assert (held / "records.jsonl").read_text() == '{"kind": "step"}\n'  # nothing lost


def test_a_live_lock_stops_a_second_run(tmp_path):
    import os

    from planner.commands.run import run_lock
    from planner.errors import InputError

    with run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(InputError) as err:
            with run_lock(tmp_path):
                pass
        assert "in use" in str(err.value)
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("999999999")  # a dead process's lock is taken over
    with run_lock(tmp_path):
        pass


def test_a_rank_never_rewrites_the_launchers_final_summary(tmp_path):
    from planner import records

    records.write_summary(tmp_path, {"schema_version": 1, "status": "failed", "launcher": {"final": True}})
    assert not records.write_rank_summary(tmp_path, {"schema_version": 1, "status": "ok"})
    assert records.read_summary(tmp_path)["status"] == "failed"
    other = tmp_path / "other"
    other.mkdir()
    assert records.write_rank_summary(other, {"schema_version": 1, "status": "ok"})
