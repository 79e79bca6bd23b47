"""``clusterplan run PLAN --emulated``: one torchrun agent per node of the emulated cluster
(:mod:`planner.emulate`), inside its network namespace, meeting at node 0's address through the
c10d rendezvous, gloo / NCCL sockets bound to the node's shaped interface. Every node writes into
the one run folder (records are appended line by line; global rank 0 writes the summary). When an
agent fails, or this launcher gets a signal, every node's agent and ranks are stopped."""
from __future__ import annotations

import dataclasses
import subprocess
import threading
from pathlib import Path

from planner.errors import require
from planner.launch import (RDZV_PORT, LaunchConfig, kill_group, socket_env, stop_group_on_signals, subprocess_env,
                            torchrun_command)


def node_commands(plan, cfg: LaunchConfig, cluster) -> list[tuple[list[str], dict[str, str]]]:
    """(command, extra environment) of every node's agent."""
    require(plan.n_nodes == cluster.nodes, "emulated",
            f"the plan is for {plan.n_nodes} nodes, the emulated cluster has {cluster.nodes} "
            "(plan it with --nodes equal to the emulated nodes)")
    endpoint = f"{cluster.address(0)}:{RDZV_PORT}"
    out = []
    for i in range(cluster.nodes):
        node_cfg = dataclasses.replace(cfg, nnodes=cluster.nodes, node_rank=i, rdzv_endpoint=endpoint,
                                       bind=cfg.bind or "eth0")
        cmd = torchrun_command(plan.world_size, node_cfg)
        # the nodes share one hostname: say which hosts the rendezvous store, and give each agent its
        # own address to publish (the ranks' MASTER_ADDR), not the hostname's
        at = cmd.index("--nproc-per-node")
        cmd[at:at] = ["--rdzv-conf", f"is_host={1 if i == 0 else 0}", "--local-addr", cluster.address(i)]
        out.append((cluster.in_node(i, cmd), socket_env(node_cfg, {})))
    return out


def launch_nodes(plan, cfg: LaunchConfig, out: Path, echo, cluster) -> tuple[int, str, list[str], str | None]:
    """Run every node's agent to the end: (exit status, their output, node 0's command, the
    signal that stopped them or None)."""
    procs, captured, commands = [], [], node_commands(plan, cfg, cluster)
    lock = threading.Lock()
    for cmd, extra in commands:
        env = subprocess_env(OMP_NUM_THREADS=str(cfg.threads), PYTHONUNBUFFERED="1")
        env.update(extra)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      start_new_session=True))

    def pump(proc, node):
        for line in proc.stdout:
            with lock:
                captured.append(line)
                if echo is not None:
                    echo.write(f"[node {node}] {line}")
                    echo.flush()

    readers = [threading.Thread(target=pump, args=(p, i), daemon=True) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    with stop_group_on_signals(*procs) as stopped:
        rc = 0
        pending = list(procs)
        while pending:
            for p in list(pending):
                try:
                    code = p.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(p)
                if code != 0 and rc == 0:  # one node failed: the others cannot finish
                    rc = code
                    for q in pending:
                        kill_group(q)
    for p in procs:  # what a dead agent left running
        kill_group(p)
    for t in readers:
        t.join(timeout=5)
    return rc, "".join(captured), commands[0][0], (stopped[0] if stopped else None)
