"""An emulated two-node cluster (network namespaces, tbf-shaped links): a plan runs across it,
a failing rank stops every node, ``down`` leaves nothing behind. Skipped where namespaces
cannot be created (not root, no iproute2, or a sandbox that forbids them)."""
import json
import os
import shutil
import subprocess
import time

import pytest

from executor.testing import tiny_spec
from planner import emulate
from planner.commands.run import LaunchConfig, launch
from planner.errors import InputError
from planner.plan import ParallelConfig, Plan
from planner.profile_yaml import load_profile
from planner.profile_write import write_profile

pytestmark = pytest.mark.distributed
TIMEOUT_S = 20.0


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "needs iproute2 (ip, tc)"
    probe = subprocess.run(["ip", "netns", "add", "cpnprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces not permitted here: {probe.stderr.strip()[:80]}"
    subprocess.run(["ip", "netns", "del", "cpnprobe"], capture_output=True)
    return ""


@pytest.fixture(scope="module")
def cluster():
    why = _why_not()
    if why:
        pytest.skip(why)
    c = emulate.up(2, 1000)
    yield c
    emulate.down()


def _plan(tmp_path, c) -> Plan:
    profile = tmp_path / "emulated.yaml"
    write_profile(emulate.node_profile(load_profile("local-cpu"), c, 1), profile)
    parallel = ParallelConfig(dp=2, micro_batch=2, global_batch=4, seq_len=16, precision="fp32")
    return Plan(model=tiny_spec("gpt"), hardware=str(profile), n_nodes=2, gpus_per_node=1, parallel=parallel)


def _launch(tmp_path, plan, fault=None):
    path = plan.save(tmp_path / "plan.json")
    cfg = LaunchConfig(plan_path=str(path), out=str(tmp_path / "run"), steps=4, warmup=1, timeout_s=TIMEOUT_S,
                       device="cpu", inject_fault=fault, emulated=True, oversubscribe=True)
    start = time.monotonic()
    rc, summary = launch(str(path), cfg, echo=None)
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    return rc, summary, records, time.monotonic() - start


def test_a_plan_runs_across_the_emulated_nodes(tmp_path, cluster):
    rc, summary, records, _ = _launch(tmp_path, _plan(tmp_path, cluster))
    # contended: finished, but the ranks waited for a core (a busy machine); still a completed run
    assert rc == 0 and summary["status"] in ("ok", "contended"), summary.get("error")
    envs = {r["rank"]: r for r in records if r["kind"] == "env"}
    assert sorted(envs) == [0, 1] and all(e["world_size"] == 2 for e in envs.values())
    assert {r["rank"] for r in records if r["kind"] == "step"} == {0, 1}


def test_a_failing_rank_stops_every_node(tmp_path, cluster):
    rc, summary, records, elapsed = _launch(tmp_path, _plan(tmp_path, cluster), fault="raise:1:2")
    assert rc == 1 and summary["status"] == "failed" and summary["rank"] == 1
    assert elapsed < TIMEOUT_S + 60
    for i in range(cluster.nodes):  # no agent or rank left in any node
        pids = subprocess.run(["ip", "netns", "pids", cluster.namespace(i)], capture_output=True, text=True).stdout
        assert not pids.strip(), (cluster.namespace(i), pids)


def test_a_plan_for_another_node_count_is_refused(tmp_path, cluster):
    plan = _plan(tmp_path, cluster)
    three = Plan(model=plan.model, hardware=plan.hardware, n_nodes=1, gpus_per_node=2, parallel=plan.parallel)
    with pytest.raises(InputError, match="emulated"):
        _launch(tmp_path, three)


def test_up_checks_its_input_and_down_is_idempotent():
    with pytest.raises(InputError, match="nodes"):
        emulate.up(1, 100)
    with pytest.raises(InputError, match="inter-node-mbit"):
        emulate.up(2, 0)
    if _why_not():
        pytest.skip(_why_not())
    emulate.down()
    emulate.down()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(w.startswith(emulate.NAMESPACE_PREFIX) and w[3:].isdigit() for w in listed.split())
    assert not emulate.STATE_PATH.exists()


def test_calibrate_emulated_measures_the_shaped_link(cluster, tmp_path, capsys):
    """The profile's inter-node link comes from gloo collectives across the shaped path: about the
    shaped rate (TCP/IP headers take ~4%), a latency of the veth path, provenance recorded."""
    from planner.cli import main

    cluster = emulate.up(2, cluster.mbit)  # an earlier test may have taken it down
    out = tmp_path / "measured.yaml"
    rc = main(["calibrate", "--emulated", "--quick", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    node = load_profile(str(out))
    link = node.inter_node
    assert link.bandwidth_bytes_per_s == pytest.approx(cluster.bytes_per_s)
    assert 0.7 < link.bus_efficiency <= 1.0
    assert 0 < link.latency_s < 0.01
    assert "calibrate --emulated" in node.measured_on
    across_nodes = {(c.op, c.group_size) for c in node.collectives if c.ranks_per_node == 1}
    assert {("all_reduce", 2), ("all_gather", 2), ("reduce_scatter", 2)} <= across_nodes  # measured, one per node
    across, inside = node.link_cpu_s_per_byte  # TCP through veth, bridge and tbf costs host CPU
    assert 0 < across < 1e-6 and 0 < inside < 1e-6
    assert "fitted" in capsys.readouterr().out


def test_each_node_runs_on_cores_of_its_own():
    """Nodes split the host's CPUs in contiguous parts (as real nodes own theirs); with fewer CPUs
    than nodes they take turns; every command inside a node is pinned to its part."""
    c = emulate.EmulatedCluster(2, 1000)
    assert [c.node_cpus(i, [0, 1, 2, 3]) for i in range(2)] == [[0, 1], [2, 3]]
    assert [emulate.EmulatedCluster(3, 1000).node_cpus(i, [4, 5, 6, 7]) for i in range(3)] == [[4, 5], [6], [7]]
    assert [emulate.EmulatedCluster(4, 1000).node_cpus(i, [0, 1]) for i in range(4)] == [[0], [1], [0], [1]]
    cmd = c.in_node(1, ["python", "-V"])
    assert cmd[:4] == ["ip", "netns", "exec", "cpn1"] and cmd[4:6] == ["taskset", "-c"] and cmd[-2:] == ["python", "-V"]


def test_each_agent_is_bound_to_its_node():
    """No root needed: node i's agent runs in namespace cpn<i> on its cores, meets the others at
    node 0's address, publishes its own address, and its gloo / NCCL sockets use the shaped eth0."""
    from planner.commands.run_emulated import node_commands
    from planner.launch import RDZV_PORT

    c = emulate.EmulatedCluster(2, 1000)
    plan = Plan(model=tiny_spec("gpt"), hardware="local-cpu", n_nodes=2, gpus_per_node=1,
                parallel=ParallelConfig(dp=2, micro_batch=2, global_batch=4, seq_len=16, precision="fp32"))
    cfg = LaunchConfig(plan_path="plan.json", out="run", steps=2, warmup=1, device="cpu", emulated=True)
    commands = node_commands(plan, cfg, c)
    assert len(commands) == 2
    for i, (cmd, env) in enumerate(commands):
        assert cmd[:4] == ["ip", "netns", "exec", c.namespace(i)] and cmd[4:6] == ["taskset", "-c"]
        assert cmd[cmd.index("--rdzv-endpoint") + 1] == f"{c.address(0)}:{RDZV_PORT}"
        assert cmd[cmd.index("--local-addr") + 1] == c.address(i)
        assert cmd[cmd.index("--rdzv-conf") + 1] == f"is_host={1 if i == 0 else 0}"
        assert env["GLOO_SOCKET_IFNAME"] == emulate.IFACE and env["NCCL_SOCKET_IFNAME"] == emulate.IFACE
