"""A rank that raises, is killed, or runs out of memory ends the run within the timeout with a
failed summary naming the rank, the records so far intact, and a non-zero exit."""
import json
import time

import pytest

from executor.testing import make_plan, tiny_spec
from planner.commands.run import LaunchConfig, launch

pytestmark = pytest.mark.distributed
TIMEOUT_S = 20.0


def _run(tmp_path, fault):
    plan = make_plan(tiny_spec("gpt"), dp=2, global_batch=4)
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    cfg = LaunchConfig(plan_path=str(path), out=str(out), steps=5, warmup=1, timeout_s=TIMEOUT_S, device="cpu",
                       inject_fault=fault)
    start = time.monotonic()
    rc, summary = launch(str(path), cfg, echo=None)
    elapsed = time.monotonic() - start
    lines = (out / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line intact
    assert json.loads((out / "summary.json").read_text()) == summary
    return rc, summary, records, elapsed, plan


def _steps_before(records, step):
    return {(r["rank"], r["step"]) for r in records if r["kind"] == "step" and r["step"] < step}


def test_rank_raises(tmp_path):
    rc, summary, records, elapsed, plan = _run(tmp_path, "raise:1:3")
    assert rc == 1
    assert summary["status"] == "failed" and summary["rank"] == 1
    assert "injected fault" in summary["error"]
    assert summary["plan_id"] == plan.id and not summary["oom"]
    assert _steps_before(records, 3) == {(r, s) for r in (0, 1) for s in range(3)}
    assert any(r["kind"] == "error" and r["rank"] == 1 for r in records)
    assert elapsed < TIMEOUT_S + 30


def test_rank_killed(tmp_path):
    rc, summary, records, elapsed, _ = _run(tmp_path, "kill:1:2")
    assert rc == 1
    assert summary["status"] == "failed" and summary["rank"] == 1
    assert "SIGKILL" in summary["error"], summary["error"]
    assert summary["launcher"]["exit_code"] != 0
    assert _steps_before(records, 2) == {(r, s) for r in (0, 1) for s in range(2)}
    assert summary["measured"]["n_steps"] == 1  # step 1 was measured before the kill
    assert elapsed < TIMEOUT_S + 30


def test_out_of_memory_reported(tmp_path):
    rc, summary, records, _, _ = _run(tmp_path, "oom:0:1")
    assert rc == 1
    assert summary["status"] == "failed" and summary["oom"] is True and summary["rank"] == 0
    assert summary["error"].startswith("out of memory")


def _ranks_of(out) -> list[str]:
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmd and "-m executor" in cmd:
                found.append(cmd)
    return found


def _wait_stepping(out, proc=None) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until the ranks are stepping
        records = out / "records.jsonl"
        if records.exists() and '"kind": "step"' in records.read_text():
            return
        time.sleep(0.2)
    if proc is not None:
        proc.kill()
    pytest.fail("the run never started stepping")


def test_torchrun_killed_takes_its_ranks_with_it(tmp_path):
    """SIGKILL to torchrun (its agent cannot forward anything): the ranks, each in a session of
    its own, get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop; the launcher's failed
    summary is final."""
    import os
    import signal
    import threading
    from pathlib import Path

    plan = make_plan(tiny_spec("gpt"), dp=2, global_batch=4)
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    cfg = LaunchConfig(plan_path=str(path), out=str(out), steps=400, warmup=1, timeout_s=TIMEOUT_S, device="cpu")
    result = {}
    runner = threading.Thread(target=lambda: result.update(zip(("rc", "summary"), launch(str(path), cfg, echo=None))))
    runner.start()

    _wait_stepping(out)
    agents = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
              and b"torch.distributed.run" in _cmdline(p) and str(out).encode() in _cmdline(p)]
    assert agents, "no torchrun agent found"
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=60)
    assert not runner.is_alive()
    deadline = time.monotonic() + 10
    while _ranks_of(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ranks_of(out), "ranks outlived their torchrun"
    assert result["rc"] == 1 and result["summary"]["status"] == "failed"
    assert json.loads((out / "summary.json").read_text())["launcher"]["final"] is True


def _cmdline(proc_dir) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_sigterm_to_the_launcher_stops_every_rank(tmp_path):
    """SIGTERM to `clusterplan run` stops torchrun and both ranks within seconds; the summary says
    failed with the signal, and no rank outlives the launcher to rewrite it."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    plan = make_plan(tiny_spec("gpt"), dp=2, global_batch=4)
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-m", "planner.cli", "run", str(path), "--out", str(out), "--steps",
                             "400", "--warmup", "1", "--device", "cpu"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=root))
    _wait_stepping(out, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 1
    time.sleep(1.0)
    assert not _ranks_of(out), "ranks outlived the launcher"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGTERM" in summary["error"]
    assert summary["launcher"]["final"] is True
    for line in (out / "records.jsonl").read_text().splitlines():
        json.loads(line)  # every line intact
