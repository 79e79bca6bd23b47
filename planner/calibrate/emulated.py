"""``clusterplan calibrate --emulated``: the emulated cluster's inter-node link measured, not
typed (:mod:`planner.emulate`).

Node 0 and node 1 each run ``gpus_per_node`` ranks (torchrun, c10d rendezvous at node 0's
address, gloo on the shaped ``eth0``) of ``executor.bench.links``: rank r of each node forms a
pair, and the pairs time every collective at every size at once, each on its share of the link
(and of the host's cores), as a step's concurrent collectives run. The link's latency and
achieved bandwidth are fitted to the all-reduce and ping-pong times in the forms the cost model
prices them with (:func:`planner.cost.comm.collective_time` for two ranks on two nodes:
``2 latency + S / B``; a send: ``latency + S / B``): the latency from the smallest messages, the
bandwidth from the largest. The profile is the base CPU profile with that link
(``bus_efficiency = B / (line rate / gpus_per_node)``: each rank's share).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.calibrate.profile import fit_collectives
from planner.emulate import EmulatedCluster, node_profile
from planner.errors import InputError, require
from planner.hardware import NodeSpec
from planner.launch import RDZV_PORT

QUICK_SIZES = (4, 65536, 1 << 20, 4 << 20)
SIZES = (4, 4096, 65536, 1 << 20, 4 << 20, 16 << 20)
STEPS = {"all_reduce": 2, "send_recv": 1}
"""Latency terms of each fitted op between two nodes (a 2-rank ring all-reduce: reduce-scatter
and all-gather, one step each)."""


@dataclass(frozen=True)
class LinkFit:
    latency_s: float
    bandwidth_bytes_per_s: float     # achieved (payload), one direction
    line_bytes_per_s: float          # the shaped rate
    rows: tuple[tuple[str, int, float, float], ...]  # (op, bytes, measured s, fitted s)

    @property
    def bus_efficiency(self) -> float:
        return self.bandwidth_bytes_per_s / self.line_bytes_per_s


SMALL_BYTES = 4096
LARGE_BYTES = 1 << 20
"""Latency from messages of at most SMALL_BYTES, bandwidth from those of at least LARGE_BYTES: in
between, tbf's bucket (``planner.emulate.BURST_S`` of traffic) lets a message pass unshaped."""


def fit_link(results: list[dict], line_bytes_per_s: float) -> LinkFit:
    """Latency and bandwidth from the two-node ``all_reduce`` and ``send_recv`` medians: the
    latency per step from the small messages (the least of them: a busy host only adds), then
    the bandwidth from the large ones (least squares on ``t - steps * latency = S / B``)."""
    rows = [(r["op"], int(r["bytes"]), float(r["median_s"])) for r in results
            if r.get("op") in STEPS and r.get("group_size") == 2 and r.get("ranks_per_node", 1) == 1
            and r.get("median_s", 0) > 0]
    small = [(op, b, t) for op, b, t in rows if b <= SMALL_BYTES]
    large = [(op, b, t) for op, b, t in rows if b >= LARGE_BYTES]
    require(bool(small) and bool(large), "emulated",
            f"need sizes of at most {SMALL_BYTES} B and of at least {LARGE_BYTES} B to fit the link")
    latency_s = min(t / STEPS[op] for op, _, t in small)  # noise only adds to a latency
    sizes = np.array([b for _, b, _ in large], dtype=float)
    transfer = np.array([t - STEPS[op] * latency_s for op, _, t in large])
    per_byte_s = float(sizes @ transfer / (sizes @ sizes))
    require(per_byte_s > 0, "emulated", "the measured times do not grow with the message size")
    fitted = tuple((op, b, t, STEPS[op] * latency_s + b * per_byte_s) for op, b, t in rows)
    return LinkFit(latency_s, 1.0 / per_byte_s, line_bytes_per_s, fitted)


def measure(cluster: EmulatedCluster, sizes, ranks_per_node: int = 1, timeout_s: float = 600.0) -> list[dict]:
    """Run ``executor.bench.links`` on nodes 0 and 1 of ``cluster`` with ``ranks_per_node`` ranks
    each: every op and size on each layout of groups spanning the two nodes, the layout's groups
    at once (:func:`executor.bench.links.spanning_groups`); rank 0's rows."""
    with tempfile.TemporaryDirectory(prefix="clusterplan-links-") as tmp:
        out = Path(tmp) / "links.json"
        procs = []
        for i in range(2):
            cmd = cluster.in_node(i, [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(i),
                "--nproc-per-node", str(ranks_per_node), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                f"{cluster.address(0)}:{RDZV_PORT}", "--rdzv-conf", f"is_host={1 if i == 0 else 0}",
                "--local-addr", cluster.address(i), "-m", "executor.bench.links", "--out", str(out),
                "--sizes", *map(str, sizes)])
            env = dict(os.environ, GLOO_SOCKET_IFNAME="eth0", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=env, start_new_session=True))
        outputs = []
        try:
            for p in procs:
                outputs.append(p.communicate(timeout=timeout_s)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise InputError("emulated", f"the link benchmark did not finish in {timeout_s:.0f} s") from None
        if any(p.returncode for p in procs) or not out.exists():
            last = next((line for text in outputs for line in reversed(text.splitlines()) if "Error" in line), "")
            raise InputError("emulated", f"the link benchmark failed{': ' + last[:200] if last else ''}")
        return json.loads(out.read_text())


def emulated_node(base: NodeSpec, cluster: EmulatedCluster, gpus_per_node: int, fit: LinkFit,
                  results: list[dict] = ()) -> NodeSpec:
    """``base`` as a node of ``cluster`` whose inter-node link is ``fit`` (each rank's share),
    with the measured tables of its groups spanning nodes (``results``: :func:`measure`'s rows)
    next to the base's tables of groups inside a node."""
    node = node_profile(base, cluster, gpus_per_node)
    efficiency = min(1.0, fit.bus_efficiency)
    link = dataclasses.replace(node.inter_node, latency_s=fit.latency_s, bus_efficiency=efficiency)
    spanning, _ = fit_collectives([r for r in results if r.get("median_s", 0) > 0]) if results else ([], {})
    inside = tuple(c for c in node.collectives if not c.ranks_per_node)
    return dataclasses.replace(node, inter_node=link, collectives=inside + tuple(spanning))
