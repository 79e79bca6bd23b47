"""Bus bandwidth of a gloo all-reduce across two emulated nodes (one rank each), to check the
emulated profile's inter-node link against what the shaped path delivers.

    sudo .venv/bin/python benchmarks/emulated_link.py [--mbit 1000] [--mib 1 8 32]

Brings up two nodes (``planner.emulate``), runs this file as a two-node torchrun job (c10d
rendezvous on node 0, gloo on eth0), prints per size the median of 5 all-reduces after 2 warm-ups
and the bus bandwidth ``2 (n-1)/n * S / t`` (nccl-tests' convention), then tears the nodes down.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rank_job(mibs: list[int]) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = {}
    for mib in mibs:
        t = torch.ones(mib * 262144)  # fp32
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        s = sorted(times)[2]
        out[mib] = {"median_s": s, "bus_bandwidth_MB_per_s": 2 * 0.5 * mib * 2**20 / s / 1e6}
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbit", type=float, default=1000.0)
    ap.add_argument("--mib", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rank_job:
        rank_job(a.mib)
        return 0
    from planner import emulate

    c = emulate.up(2, a.mbit)
    try:
        procs = []
        for i in range(2):
            cmd = c.in_node(i, [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(i),
                                "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                f"{c.address(0)}:29500", "--rdzv-conf", f"is_host={1 if i == 0 else 0}",
                                "--local-addr", c.address(i), str(Path(__file__).resolve()), "--rank-job",
                                "--mib", *map(str, a.mib)])
            env = dict(os.environ, GLOO_SOCKET_IFNAME="eth0", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
        for p in procs:
            out, _ = p.communicate(timeout=300)
            for line in out.splitlines():
                if line.startswith("{"):
                    res = json.loads(line)
                    print(f"{a.mbit:g} Mbit/s shaped ({c.bytes_per_s / 1e6:.1f} MB/s): "
                          + ", ".join(f"{k} MiB {v['bus_bandwidth_MB_per_s']:.1f} MB/s" for k, v in res.items()))
    finally:
        emulate.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
