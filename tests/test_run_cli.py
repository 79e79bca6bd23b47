"""`clusterplan run`: refusal before launch, the printed torchrun/srun lines, torchrun failure
parsing, and an end-to-end run that leaves records.jsonl and summary.json."""
import json

import pytest

from executor.testing import make_plan, tiny_spec
from planner.cli import main
from planner.commands.run import LaunchConfig, check_machine, root_cause, srun_command, torchrun_command
from planner.errors import InputError


@pytest.fixture
def plan_path(tmp_path):
    return make_plan(tiny_spec("gpt"), dp=2, global_batch=4).save(tmp_path / "plan.json")


def test_refuses_too_many_cpu_ranks(tmp_path, capsys):
    big = make_plan(tiny_spec("gpt"), dp=64, global_batch=64).save(tmp_path / "big.json")
    rc = main(["run", str(big), "--device", "cpu", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "world_size" in err and "usable cores" in err
    assert not (tmp_path / "r").exists()  # refused before anything was launched or written


def test_machine_limits():
    cfg = LaunchConfig(plan_path="p", out="o", device="cpu")
    assert check_machine(8, cfg, gpus=0, cores=2) == "cpu"
    with pytest.raises(InputError, match="world_size"):
        check_machine(9, cfg, gpus=0, cores=2)
    with pytest.raises(InputError, match="threads"):
        check_machine(4, LaunchConfig(plan_path="p", out="o", device="cpu", threads=4), gpus=0, cores=2)
    assert check_machine(9, LaunchConfig(plan_path="p", out="o", device="cpu", oversubscribe=True), gpus=0, cores=2)
    gpu = LaunchConfig(plan_path="p", out="o", device="auto")
    assert check_machine(8, gpu, gpus=8) == "cuda"
    with pytest.raises(InputError, match="GPUs"):
        check_machine(16, gpu, gpus=8)
    assert check_machine(16, LaunchConfig(plan_path="p", out="o", nnodes=2, rdzv_endpoint="h:1"), gpus=8) == "cuda"
    with pytest.raises(InputError, match="nnodes"):
        check_machine(6, LaunchConfig(plan_path="p", out="o", nnodes=4), gpus=8)


def test_commands():
    cfg = LaunchConfig(plan_path="plan.json", out="runs/x", steps=6, warmup=2)
    cmd = torchrun_command(4, cfg, python="python")
    assert cmd[:4] == ["python", "-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("-m", 3) + 1] == "executor" and "plan.json" in cmd
    multi = LaunchConfig(plan_path="plan.json", out="o", nnodes=2, node_rank=1, rdzv_endpoint="head:29500")
    cmd = torchrun_command(16, multi, python="python")
    assert "--standalone" not in cmd
    for flag, value in (("--nnodes", "2"), ("--node-rank", "1"), ("--rdzv-endpoint", "head:29500"),
                        ("--nproc-per-node", "8")):
        assert cmd[cmd.index(flag) + 1] == value
    srun = srun_command(16, multi)
    assert srun[0] == "srun" and "--nodes=2" in srun and "executor" in srun


def test_print_command(plan_path, capsys):
    assert main(["run", str(plan_path), "--print-command", "--steps", "6", "--out", "runs/x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("torchrun: ") and "--nproc-per-node 2" in out[0] and "-m executor" in out[0]
    assert out[1].startswith("srun: ") and "--steps 6" in out[1]


def test_root_cause_parsing():
    text = """
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : vm
  rank      : 3 (local_rank: 3)
  exitcode  : -9 (pid: 123)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 123
"""
    assert root_cause(text) == (3, -9)
    assert root_cause("no failure here") == (None, None)


@pytest.mark.distributed
def test_end_to_end(plan_path, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", str(plan_path), "--steps", "5", "--warmup", "2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kinds = {(r["kind"], r["rank"]) for r in records}
    for rank in (0, 1):
        for kind in ("env", "step", "trace", "memory", "end"):
            assert (kind, rank) in kinds
    m = summary["measured"]
    assert summary["status"] in ("ok", "contended")
    assert m["n_steps"] == 3
    assert m["step_time_s_p10"] <= m["step_time_s"] <= m["step_time_s_p90"]
    assert m["tokens_per_s"] == pytest.approx(4 * 16 / m["step_time_s"])
    # CPU: the allocator's peak live tensor bytes (model build + 2 warm-up steps); RSS kept aside
    assert m["peak_memory_source"] == "cpu_allocated" and m["rss_peak_memory_bytes"] > 0
    for mem in m["memory"]:
        assert mem["cpu_allocator_peak_bytes"] >= mem["params_bytes"] + mem["optimizer_bytes"]
    assert m["peak_memory_bytes"] == max(mem["cpu_allocator_peak_bytes"] for mem in m["memory"])
    assert all(mem["params_bytes"] > 0 and mem["optimizer_bytes"] == 2 * mem["params_bytes"] for mem in m["memory"])
    assert m["phases"]["forward_s"] > 0 and m["phases"]["backward_s"] > 0 and m["phases"]["optimizer_s"] > 0
    assert set(summary["predicted"]) >= {"step_time_s", "peak_memory_bytes"}
    assert summary["env"]["backend"] == "gloo" and summary["env"]["world_size"] == 2
    assert summary["status"] in ("ok", "contended")
    assert capsys.readouterr().out.startswith(f"{summary['status']}: plan {summary['plan_id']}")


def test_sockets_bind_to_loopback_on_one_node_and_to_the_named_interface_on_several():
    from planner.launch import socket_env

    one = LaunchConfig(plan_path="p", out="o")
    assert socket_env(one, {}) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    assert socket_env(one, {"GLOO_SOCKET_IFNAME": "eth1"}) == {"NCCL_SOCKET_IFNAME": "lo"}  # the user's wins
    several = LaunchConfig(plan_path="p", out="o", nnodes=2, rdzv_endpoint="h:1")
    assert socket_env(several, {}) == {}
    named = LaunchConfig(plan_path="p", out="o", nnodes=2, rdzv_endpoint="h:1", bind="veth0")
    assert socket_env(named, {}) == {"GLOO_SOCKET_IFNAME": "veth0", "NCCL_SOCKET_IFNAME": "veth0"}


def test_printed_commands_quote_every_value_the_user_gave():
    from planner.launch import shell_join

    cfg = LaunchConfig(plan_path="/tmp/$(touch x).json", out="o $(id)", nnodes=2, rdzv_endpoint="$(id):1")
    for cmd in (torchrun_command(4, cfg), srun_command(4, cfg)):
        line = shell_join(cmd)
        assert "'$(id):1'" in line and "'/tmp/$(touch x).json'" in line and "'o $(id)'" in line
    default = shell_join(srun_command(4, LaunchConfig(plan_path="p", out="o", nnodes=2)))
    assert "--rdzv-endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500" in default


def test_printed_commands_carry_the_socket_interface(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    plan = make_plan(tiny_spec(), dp=2, global_batch=4)
    path = tmp_path / "plan.json"
    plan.save(path)
    assert main(["run", str(path), "--print-command", "--nnodes", "2", "--rdzv-endpoint", "h:1",
                 "--bind", "veth0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.split(":", 1)[1].strip().startswith("env GLOO_SOCKET_IFNAME=veth0 NCCL_SOCKET_IFNAME=veth0 ")
               for line in out)


def test_run_shows_rank_0s_steps_on_a_terminal_only(tmp_path):
    import io
    import json
    import threading

    from planner.commands.run import watch_steps

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    path = tmp_path / "records.jsonl"
    lines = [json.dumps({"kind": "step", "rank": r, "step": s}) for s in range(3) for r in (0, 1)]
    path.write_text("\n".join(lines) + '\n{"kind": "step", "rank": 0, "st')  # a line still being written
    stop = threading.Event()
    stop.set()
    shown = Terminal()
    assert watch_steps(path, 6, stop, 0.01, shown) == 3
    assert "3/6" in shown.getvalue()
    piped = io.StringIO()
    assert watch_steps(path, 6, stop, 0.01, piped) == 3 and piped.getvalue() == ""
