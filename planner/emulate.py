"""An emulated multi-node cluster on this machine (``clusterplan emulate up|down``).

N network namespaces ``cpn0..cpn{N-1}`` are the nodes; each has one interface ``eth0`` with the
private address ``10.213.0.{i+1}/24``, the end of a veth pair whose other end sits on the bridge
``cpbr0`` in the root namespace. The bridge has no address, so the nodes reach one another and
nothing else. Each node's link is shaped in both directions with the ``tbf`` qdisc (token bucket:
rate, burst, queueing limit; Linux tc-tbf(8)): on ``eth0`` inside the node (what it sends) and on
its bridge port (what it receives). ``tbf`` shapes bandwidth only; it adds no propagation delay
(that needs ``netem``), so the emulated latency is the veth/bridge path's own.

Everything created carries these prefixes, so ``down`` removes exactly it, also after a crash.
The state (nodes, rate, addresses) is kept in :data:`STATE_PATH` for ``run --emulated``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError, require
from planner.io import atomic_write_text, read_input_text

NAMESPACE_PREFIX = "cpn"
BRIDGE = "cpbr0"
PORT_PREFIX = "cpv"
SUBNET = "10.213.0"
IFACE = "eth0"
STATE_PATH = Path("/run/clusterplan-emulated.json")
MAX_NODES = 16
BURST_S = 0.0005
MIN_BURST_BYTES = 65536
"""tbf bucket: 0.5 ms of traffic at the rate, at least 64 KiB. A bucket lets a message that finds
it full through at the veth's own speed, which no NIC does: measured on this VM with 256 KiB
messages 50 ms apart, a 10 ms bucket (250 kB at 200 Mbit/s) passed each in 1.1 ms instead of
the rate's 10.9 ms. The bucket still has to refill between timer events to carry the full rate:
at 1000 Mbit/s a 16 KiB bucket carried 82 MB/s, 64 KiB 118 MB/s of 125 (one TCP sender and
receiver between two emulated nodes, 2026-12-05)."""


@dataclass(frozen=True)
class EmulatedCluster:
    nodes: int
    mbit: float

    def namespace(self, i: int) -> str:
        return f"{NAMESPACE_PREFIX}{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def bytes_per_s(self) -> float:
        return self.mbit * 1e6 / 8

    def node_cpus(self, i: int, host_cpus: list[int] | None = None) -> list[int]:
        """The host CPUs node ``i`` runs on: ``host_cpus`` (default: this process's affinity) in
        ``nodes`` contiguous parts, so the nodes compute on cores of their own as real nodes do
        (the node profile gives each its share, :func:`node_profile`); with fewer CPUs than
        nodes, CPU ``i mod n``."""
        cpus = sorted(os.sched_getaffinity(0) if host_cpus is None else host_cpus)
        if len(cpus) < self.nodes:
            return [cpus[i % len(cpus)]]
        per, extra = divmod(len(cpus), self.nodes)
        start = i * per + min(i, extra)
        return cpus[start:start + per + (1 if i < extra else 0)]

    def in_node(self, i: int, cmd: list[str]) -> list[str]:
        """``cmd`` run inside node ``i``: in its namespace, on its CPUs (``taskset``)."""
        cpus = ",".join(str(c) for c in self.node_cpus(i))
        return ["ip", "netns", "exec", self.namespace(i), "taskset", "-c", cpus, *cmd]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"addresses": [self.address(i) for i in range(self.nodes)],
                                           "iface": IFACE}


def _require_tools() -> None:
    require(os.geteuid() == 0, "emulate", "needs root (network namespaces and tc); run it as root")
    for tool in ("ip", "tc", "taskset"):
        require(shutil.which(tool) is not None, "emulate",
                f"needs the {tool!r} command ({'util-linux' if tool == 'taskset' else 'iproute2'})")


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise InputError("emulate", f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[:200]}")
    return proc


def _shape(dev: list[str], rate_bytes_per_s: float) -> list[str]:
    burst = max(MIN_BURST_BYTES, int(rate_bytes_per_s * BURST_S))
    return ["tc", "qdisc", "replace", "dev", *dev, "root", "tbf", "rate", f"{int(rate_bytes_per_s * 8)}bit",
            "burst", str(burst), "latency", "50ms"]


def up(nodes: int, mbit: float) -> EmulatedCluster:
    """Create the cluster (after removing any earlier one) and record it."""
    require(isinstance(nodes, int) and 2 <= nodes <= MAX_NODES, "nodes", f"must be 2..{MAX_NODES}")
    require(mbit > 0 and mbit <= 100_000, "inter-node-mbit", "must be in (0, 100000]")
    _require_tools()
    down()
    c = EmulatedCluster(nodes, float(mbit))
    try:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for i in range(nodes):
            ns, port, peer = c.namespace(i), f"{PORT_PREFIX}{i}", f"{PORT_PREFIX}{i}p"
            _run(["ip", "netns", "add", ns])
            _run(c.in_node(i, ["ip", "link", "set", "lo", "up"]))
            _run(["ip", "link", "add", port, "type", "veth", "peer", "name", peer])
            _run(["ip", "link", "set", peer, "netns", ns])
            _run(c.in_node(i, ["ip", "link", "set", peer, "name", IFACE]))
            _run(c.in_node(i, ["ip", "addr", "add", f"{c.address(i)}/24", "dev", IFACE]))
            _run(c.in_node(i, ["ip", "link", "set", IFACE, "up"]))
            _run(["ip", "link", "set", port, "master", BRIDGE])
            _run(["ip", "link", "set", port, "up"])
            _run(c.in_node(i, _shape([IFACE], c.bytes_per_s)))   # what node i sends
            _run(_shape([port], c.bytes_per_s))                  # what node i receives
    except InputError:
        down()
        raise
    atomic_write_text(STATE_PATH, json.dumps(c.to_dict(), indent=2) + "\n")
    return c


def down() -> list[str]:
    """Remove every namespace, port and bridge this module creates; returns what was removed."""
    _require_tools()
    removed = []
    listed = _run(["ip", "netns", "list"], check=False).stdout.split()
    for ns in sorted({w for w in listed if w.startswith(NAMESPACE_PREFIX) and w[len(NAMESPACE_PREFIX):].isdigit()}):
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if name == BRIDGE or (name.startswith(PORT_PREFIX) and name[len(PORT_PREFIX):].rstrip("p").isdigit()):
            _run(["ip", "link", "del", name], check=False)
            removed.append(name)
    STATE_PATH.unlink(missing_ok=True)
    return removed


def current() -> EmulatedCluster:
    """The cluster ``up`` recorded; an error when there is none."""
    require(STATE_PATH.exists(), "emulated", "no emulated cluster is up (clusterplan emulate up --nodes N "
                                             "--inter-node-mbit X)")
    try:
        data = json.loads(read_input_text(STATE_PATH, "emulated"))
        return EmulatedCluster(int(data["nodes"]), float(data["mbit"]))
    except (ValueError, KeyError, TypeError):
        raise InputError("emulated", f"{STATE_PATH} is not a cluster state (clusterplan emulate down, then up)") from None


def node_profile(base, cluster: EmulatedCluster, gpus_per_node: int):
    """``base`` (a CPU profile) as a node of ``cluster`` with ``gpus_per_node`` ranks: each rank's
    share of the node's shaped link is its inter-node link (a profile's ``inter_node`` is per GPU)."""
    # TCP carries 1448 payload bytes per 1514-byte frame at a 1500-byte MTU (timestamps on)
    link = dataclasses.replace(base.inter_node, bandwidth_bytes_per_s=cluster.bytes_per_s / gpus_per_node,
                               bus_efficiency=1448 / 1514)
    # every emulated node runs on this one host: each has its share of the host's cores
    device = dataclasses.replace(base.device, host_cores=base.device.host_cores / cluster.nodes)
    return dataclasses.replace(base.with_gpus_per_node(gpus_per_node), device=device, inter_node=link,
                               inter_node_shared=True,
                               name=f"{base.name}-emulated-{cluster.nodes}x{cluster.mbit:g}mbit")
