"""Host CPU that moving bytes over TCP costs on the emulated cluster: across the shaped link (node
0 to node 1: both TCP stacks, the veths, the bridge and tbf) and over one node's loopback.

A sender streams a fixed number of bytes to a receiver over one TCP connection in 1 MiB writes;
the host's busy CPU time over the transfer (``/proc/stat``, all CPUs: everything but idle and
iowait), less the busy rate of an equal quiet interval just before, divided by the bytes, is the
cost per byte. Measured on this VM (2 cores): 5.2, 17 and 9.0 ns per byte across at 200, 500 and
1000 Mbit/s (1.07 cores busy for 119 MB/s at 1000; not monotonic in the rate: it follows how tbf
paces TCP), 0.4-0.7 ns over loopback. Every emulated node runs on this one host, so a
collective whose edges move more bytes per second than the cores can process runs at the cores'
pace, not the link's (:func:`planner.cost.gloo.ring_time`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from planner.emulate import EmulatedCluster
from planner.errors import InputError

PORT = 29611
CHUNK_BYTES = 1 << 20
RECEIVER = """
import socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); buf = memoryview(bytearray(1 << 20)); got = 0
while got < total:
    n = c.recv_into(buf)
    if n == 0:
        sys.exit(1)
    got += n
c.sendall(b"k")
"""
SENDER = """
import socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((host, port), timeout=60); data = b"x" * (1 << 20); sent = 0
while sent < total:
    c.sendall(data); sent += len(data)
c.recv(1)
"""


def _busy_s() -> float:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _transfer_cpu_s_per_byte(recv_prefix: list[str], send_prefix: list[str], address: str, total: int,
                             timeout_s: float) -> float:
    receiver = subprocess.Popen([*recv_prefix, sys.executable, "-c", RECEIVER, address, str(PORT), str(total)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise InputError("emulated", f"the TCP receiver did not start: {receiver.stderr.read()[-200:]}")
        quiet_start, busy_start = time.perf_counter(), _busy_s()
        time.sleep(0.5)
        idle_rate = (_busy_s() - busy_start) / (time.perf_counter() - quiet_start)
        t0, b0 = time.perf_counter(), _busy_s()
        done = subprocess.run([*send_prefix, sys.executable, "-c", SENDER, address, str(PORT), str(total)],
                              capture_output=True, text=True, timeout=timeout_s)
        wall, busy = time.perf_counter() - t0, _busy_s() - b0
        if done.returncode != 0 or receiver.wait(timeout=10) != 0:
            raise InputError("emulated", f"the TCP transfer failed: {done.stderr[-200:]}")
    except subprocess.TimeoutExpired:
        raise InputError("emulated", f"the TCP transfer did not finish in {timeout_s:.0f} s") from None
    finally:
        receiver.kill()
        receiver.wait()
    return max(0.0, busy - idle_rate * wall) / total


def link_cpu_costs(cluster: EmulatedCluster, seconds: float = 1.5) -> tuple[float, float]:
    """(CPU seconds per byte across the link from node 0 to node 1, per byte over node 0's
    loopback), each from a transfer of about ``seconds`` at the link's rate."""
    total = max(8 * CHUNK_BYTES, int(cluster.bytes_per_s * seconds) // CHUNK_BYTES * CHUNK_BYTES)
    across = _transfer_cpu_s_per_byte(cluster.in_node(1, []), cluster.in_node(0, []), cluster.address(1), total,
                                      timeout_s=30 * seconds + 30)
    loopback = _transfer_cpu_s_per_byte(cluster.in_node(0, []), cluster.in_node(0, []), "127.0.0.1",
                                        512 * CHUNK_BYTES, timeout_s=60)
    return across, loopback
