"""The collectives between the nodes of an emulated cluster: ``python -m executor.bench.links
--out RESULTS.json [--sizes BYTES ...]`` under torchrun on two nodes with g ranks each (gloo on the
node's shaped interface). Rank r of node 0 and rank r of node 1 form a pair; the g pairs run every
op of :func:`executor.bench.collectives.bench_group` at once, so each pair sees its share of the
link as a training step's concurrent collectives do. Rank 0 writes its pair's JSON list."""
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
        g = dist.get_world_size() // 2
        pairs = [[r, r + g] for r in range(g)]
        groups = [dist.new_group(pair) for pair in pairs]  # every rank creates every group, in order
        mine = dist.get_rank() % g
        results = bench_group(groups[mine], pairs[mine], sizes=a.sizes, reps=a.reps, target_s=0.3, max_inner=10,
                              sync_group=dist.group.WORLD)  # the pairs' calls start together
        if dist.get_rank() == 0:
            Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
