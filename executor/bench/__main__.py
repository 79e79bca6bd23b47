"""Entry point run by torchrun: ``python -m executor.bench --out RESULTS.json [--quick]``.

Every rank runs with one intra-op thread. Rank 0 measures the single-rank parts while the others
wait in a barrier; collectives run on groups of the first g ranks for each g in the group sizes;
the contention part runs the same GEMM on 1, 2, 4, ... ranks at once. Rank 0 writes the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time

from executor.bench.timing import rss_bytes

RSS_BEFORE_TORCH = rss_bytes()
import torch  # noqa: E402

RSS_AFTER_IMPORT = rss_bytes()
import torch.distributed as dist  # noqa: E402

from executor.bench import SCHEMA  # noqa: E402
from planner.hardware import host_cpu_model  # noqa: E402
from executor.bench import attention, collectives, compute, elementwise, ep_dispatch, framework, timing  # noqa: E402


def _mem_total_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing")


def group_sizes(world: int) -> list[int]:
    """2, 4, 8, ... below ``world``, and ``world`` itself."""
    sizes, g = [], 2
    while g < world:
        sizes.append(g)
        g *= 2
    if world >= 2:
        sizes.append(world)
    return sizes


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m executor.bench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=0, help="samples per measurement (default 5, >= 5)")
    parser.add_argument("--parts", default="compute,collectives,contention")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    reps = max(5, args.reps or 5)

    timing.DEFAULT_RETRIES = 0 if args.quick else 2  # --quick must stay fast: flag, don't rerun
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    rss_after_init = rss_bytes()
    # warm-up of the runtime a training step touches: a GEMM, autograd, a collective
    x = torch.randn(64, 64, requires_grad=True)
    (x @ x).sum().backward()
    dist.all_reduce(torch.ones(1024))
    rss_after_warmup = rss_bytes()
    t_start = time.perf_counter()
    result: dict = {
        "schema": SCHEMA,
        "quick": args.quick,
        "reps": reps,
        "env": {
            "hostname": socket.gethostname(),
            "cpu_model": host_cpu_model(),
            "cpu_count": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "world_size": world,
            "threads_per_rank": torch.get_num_threads(),
            "backend": "gloo",
            "mem_total_bytes": _mem_total_bytes(),
        },
    }

    if "compute" in parts:
        if rank == 0:
            allocator = compute.allocator_bench()  # first, before benchmarks leave freed heap behind
            _log("matmul")
            kinds = ("proj", "mlp_up", "mlp_down") + (() if args.quick else ("lm_head",))
            result["matmul"] = compute.matmul_bench(quick=args.quick, reps=reps, kinds=kinds)
            _log("memory-bound ops")
            result["memory_bound"] = compute.memory_bound_bench(quick=args.quick, reps=reps)
            _log("per-op overhead")
            result["overhead"] = compute.overhead_bench(reps=reps)
            result["memory"] = {
                "rss_before_torch_bytes": RSS_BEFORE_TORCH,
                "rss_after_import_torch_bytes": RSS_AFTER_IMPORT,
                "rss_after_init_bytes": rss_after_init,
                "rss_after_warmup_bytes": rss_after_warmup,
                "allocator": allocator,
            }
        dist.barrier()

    if "framework" in parts:  # the executor's building blocks (calibrate runs this on 2 ranks)
        if rank == 0:
            _log("framework: per-op cost under autograd")
            ops = framework.op_overhead_bench(reps=reps)
            _log("framework: element-wise work of the executor's code, per kind")
            ew = elementwise.elementwise_bench(quick=args.quick, reps=reps)
            _log("framework: the attention core (causal SDPA), per kind, head width and length")
            attn = attention.attention_bench(quick=args.quick, reps=reps)
        dist.barrier()
        if rank == 0:
            _log("framework: reference steps (plain, tp, ddp, zero1, fsdp)")
        ref = framework.reference_bench(quick=args.quick)
        dispatch = []
        if world >= 2:
            if rank == 0:
                _log("framework: the expert-parallel dispatch (2 ranks)")
            dispatch = ep_dispatch.ep_dispatch_bench(reps=5 if args.quick else 15)
        if rank == 0:
            _log("framework: an MoE block (every expert local)")
            moe = ep_dispatch.moe_block_bench(reps=5 if args.quick else 20)
            _log("framework: memory of training steps (fresh processes)")
            result["framework"] = {"ops": ops, "elementwise": ew, "attention": attn, "reference": ref,
                                   "ep_dispatch": dispatch, "moe_block": moe, "memory": framework.memory_bench()}
        dist.barrier()

    if "collectives" in parts and world >= 2:
        sizes = collectives.QUICK_SIZES if args.quick else collectives.FULL_SIZES
        rows = []
        for g in group_sizes(world):
            ranks = list(range(g))
            group = dist.new_group(ranks=ranks) if g < world else dist.group.WORLD
            if rank in ranks:
                if rank == 0:
                    _log(f"collectives on {g} ranks")
                rows += collectives.bench_group(group, ranks, sizes=sizes, reps=reps,
                                                **({"target_s": collectives.QUICK_TARGET_S} if args.quick else {}))
            dist.barrier()
        if rank == 0:
            result["collectives"] = rows

    if "contention" in parts:
        duration = 0.6 if args.quick else 1.5
        rows = []
        cores = len(os.sched_getaffinity(0))
        for k in [1] + group_sizes(world):
            best = None
            attempt = 0
            for attempt in range(1 if args.quick else 3):  # rerun while another process took a core
                dist.barrier()
                mine = compute.contention_matmul(duration) if rank < k else None
                gathered = [None] * world
                dist.all_gather_object(gathered, mine)
                per_rank = [dict(rank=r, **m) for r, m in enumerate(gathered) if m is not None]
                total = sum(m["flops_per_s"] for m in per_rank)
                clean = min(m["cpu_ratio"] for m in per_rank) >= 0.8 * min(1.0, cores / k)
                if best is None or total > best["total"]:
                    best = {"ranks": k, "per_rank": per_rank, "total": total, "attempts": attempt + 1,
                            "clean": clean}
                if clean:
                    break
            best.pop("total")
            best["attempts"] = attempt + 1
            rows.append(best)
            if rank == 0:
                _log(f"contention: {k} ranks -> "
                     + ", ".join(f"{m['flops_per_s'] / 1e9:.0f} GF/s ({m['cpu_ratio']:.2f} core)" for m in best["per_rank"])
                     + ("" if best["clean"] else " (contended)"))
        result["contention"] = rows
        if world > cores:  # the bench's own ranks oversubscribe the host: the training step's cost of it
            if rank == 0:
                _log(f"oversubscription: the plain step alone and on {world} ranks at once ({cores} cores)")
            over = framework.oversubscription_bench(quick=args.quick)
            if rank == 0:
                result["oversubscription"] = over

    if rank == 0:
        result["bench_wall_s"] = time.perf_counter() - t_start
        tmp = f"{args.out}.tmp.{os.getpid()}"
        with open(tmp, "w") as handle:
            json.dump(result, handle, indent=1, sort_keys=True)
        os.replace(tmp, args.out)
        _log(f"wrote {args.out} in {result['bench_wall_s']:.1f} s")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
