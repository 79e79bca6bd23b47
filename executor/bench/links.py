"""The collectives between the nodes of an emulated cluster: ``python -m executor.bench.links
--out RESULTS.json [--sizes BYTES ...]``, one rank per node under torchrun (gloo on the node's
shaped interface). Every op of :func:`executor.bench.collectives.bench_group` on the world group;
rank 0 writes the JSON list."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from executor.bench.collectives import bench_group

DEFAULT_SIZES = (4, 4096, 65536, 1 << 20, 4 << 20, 16 << 20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        results = bench_group(dist.group.WORLD, list(range(dist.get_world_size())), sizes=a.sizes, reps=a.reps,
                              target_s=0.3, max_inner=10)
        if dist.get_rank() == 0:
            Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
