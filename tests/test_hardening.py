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
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50_000 + "]" * 50_000 + "\n")  # refused on the token stream, before composing
    assert "nested too deeply" in _one_line_exit_2(capsys, ["predict", "--model", "tiny-gpt", "--hardware", str(deep),
                                                             "--nodes", "1", "--global-batch", "8"], "hardware")
    passwd = tmp_path / "passwd"  # not a .yaml: never read as a profile, from a flag or from a plan
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    line = _one_line_exit_2(capsys, ["predict", "--model", "tiny-gpt", "--hardware", str(passwd), "--nodes", "1",
                                     "--global-batch", "8"], "hardware")
    assert "not a profile" in line and "root:x" not in line


def test_sizes_beyond_any_real_cluster(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10**9, "hidden_size": 4096,
                                  "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
                                  "max_position_embeddings": 4096}))
    assert "beyond any real model" in _one_line_exit_2(capsys, ["predict", "--model", str(config), "--hardware",
                                                                "local-cpu", "--nodes", "1", "--global-batch", "8"],
                                                       "n_layers")
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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (writes to it fail with ENOSPC)")
def test_a_records_write_the_disk_refuses_is_one_error_and_the_lines_before_stay(tmp_path):
    import os

    from planner import records
    from planner.errors import InputError

    writer = records.RecordWriter(tmp_path, "abc", 0)
    writer.write("step", step=0)
    writer.write("step", step=1)
    os.close(writer._fd)
    writer._fd = os.open("/dev/full", os.O_WRONLY)  # the disk is now full
    with pytest.raises(InputError) as err:
        writer.write("step", step=2)
    assert err.value.field == "records" and "No space left" in str(err.value)
    with pytest.raises(InputError):  # nothing more is attempted
        writer.write("step", step=3)
    writer.close()
    assert [r["step"] for r in records.read_records(tmp_path)] == [0, 1]


def _mount_tmpfs(path: Path, size_kib: int, read_only: bool = False) -> bool:
    import subprocess

    path.mkdir()
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_every_out_on_a_read_only_file_system_is_one_line_before_any_work(tmp_path, capsys, plan):
    """A read-only mount stops root too (a chmod does not): each verb names ``out`` and exits 2."""
    import subprocess

    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, 64, read_only=True):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    fixture_run = str(ROOT / "tests" / "fixtures" / "runs" / "pp2")
    try:
        for argv in (["predict", str(plan), "--out", str(ro / "p.json")],
                     ["compare", fixture_run, "--out", str(ro / "c")],
                     ["fit", fixture_run, "--hardware", "local-cpu", "--out", str(ro / "f.yaml")],
                     ["demo", "--out", str(ro / "d")],
                     ["run", str(plan), "--out", str(ro / "r")]):
            _one_line_exit_2(capsys, argv, "out")
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.distributed
def test_a_run_that_fills_the_disk_ends_failed_with_its_summary_and_records(tmp_path):
    """A folder with room for the plan, the summary's reserve and a few records: the rank whose
    write fails is named, the launcher writes the failed summary in the space it held, every
    complete line before stays readable."""
    import subprocess

    from executor.testing import make_plan, tiny_spec
    from planner import records
    from planner.commands.run import LaunchConfig, launch

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, records.SUMMARY_RESERVE_BYTES // 1024 + 16):
        pytest.skip("cannot mount a tmpfs here (needs root and a mount namespace that allows it)")
    try:
        plan = make_plan(tiny_spec("gpt"), dp=2, global_batch=4)
        path = plan.save(tmp_path / "plan.json")
        out = disk / "run"
        cfg = LaunchConfig(plan_path=str(path), out=str(out), steps=400, warmup=1, timeout_s=20.0, device="cpu")
        rc, summary = launch(str(path), cfg, echo=None)
        assert rc == 1 and summary["status"] == "failed"
        assert "records" in summary["error"] and ("No space left" in summary["error"] or "full" in summary["error"])
        assert records.read_summary(out) == summary
        assert not (out / records.SUMMARY_RESERVE).exists()
        assert any(r["kind"] == "step" for r in records.read_records(out))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_compare_refuses_a_summary_of_another_schema(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"schema_version": 99, "status": "ok"}))
    assert "schema_version 99" in _one_line_exit_2(capsys, ["compare", str(run)], "run_dir")


def test_a_single_node_run_sees_only_loopback():
    """Under the launcher's prefix a process has a network namespace with loopback alone (torch's
    rendezvous store listens on the wildcard address: there it is reachable from this host only)."""
    import subprocess
    import sys

    from planner.loopback_only import isolation_prefix

    prefix = isolation_prefix()
    if not prefix:
        pytest.skip("user namespaces are not allowed here: runs use the host's network")
    probe = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             "c = socket.create_connection(s.getsockname(), timeout=5); "
             "print(sorted(name for _, name in socket.if_nameindex()))")
    done = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['lo']"
