"""The collectives between the nodes of an emulated cluster: ``python -m executor.bench.links
--out RESULTS.json [--sizes BYTES ...]`` under torchrun on two nodes with g ranks each (gloo on the
node's shaped interface).

For each k dividing g, the ranks form g/k groups of 2k spanning both nodes, k on each (k = 1:
rank r of node 0 with rank r of node 1; k = g: the whole world), and the groups run every op of
:func:`executor.bench.collectives.bench_group` at once, so each group sees its share of the link
and of the host, as an axis's concurrent collectives do in a training step. Rank 0 writes its
groups' rows, each tagged with ``ranks_per_node`` k."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from executor.bench.collectives import bench_group

DEFAULT_SIZES = (4, 4096, 65536, 1 << 20, 4 << 20, 16 << 20)


def spanning_groups(g: int, k: int) -> list[list[int]]:
    """The g/k groups of 2k ranks, k on each of two nodes of g ranks (node-major rank order)."""
    return [[*range(j * k, j * k + k), *range(g + j * k, g + j * k + k)] for j in range(g // k)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        g = dist.get_world_size() // 2
        rows = []
        for k in (k for k in range(1, g + 1) if g % k == 0):
            groups = spanning_groups(g, k)
            handles = [dist.new_group(ranks) for ranks in groups]  # every rank creates every group, in order
            mine = (dist.get_rank() % g) // k
            results = bench_group(handles[mine], groups[mine], sizes=a.sizes, reps=a.reps, target_s=0.3,
                                  max_inner=10, sync_group=dist.group.WORLD)  # the groups' calls start together
            rows += [dict(r, ranks_per_node=k) for r in results]
        if dist.get_rank() == 0:
            Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
