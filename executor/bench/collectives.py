"""Collective benchmarks on the process groups the executor uses (gloo on CPU).

For each op, group size g and message size S (bytes of the full tensor: the all-reduce buffer,
the all-gather output, the reduce-scatter input, the point-to-point message, the buffer each rank
sends in an all-to-all: S/g to every member, as an expert-parallel dispatch), every member times
``inner`` back-to-back calls after a barrier; a sample is the slowest member's mean (a collective
ends when its last rank does), and ``reps`` samples are kept. ``send_recv`` at g = 2 is a
ping-pong (one-way time = round trip / 2); at g > 2 every member sends S to its successor and
receives S from its predecessor at once (a pipeline's concurrent stage-to-stage transfers).
"""
from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.distributed as dist

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")
_SPLIT_OPS = ("all_gather", "reduce_scatter", "all_to_all")  # the tensor divides into g equal parts
FULL_SIZES = tuple(4 ** i for i in range(1, 14))            # 4 B .. 64 MiB
QUICK_SIZES = (4, 4096, 262144, 4 * 1024 ** 2)
"""``--quick``: up to 4 MiB (a 16 MiB all_gather on 4 ranks sharing 2 cores took ~3 s of the
60 s budget); beyond it the cost model extrapolates with the fitted bus bandwidth."""
QUICK_TARGET_S = 0.08
"""``--quick``: seconds per measurement (all samples), against 0.15 for a full calibration."""

warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def _op_fn(op: str, size_bytes: int, group, g: int, rank_in_group: int, ranks: list[int]):
    numel = max(1, size_bytes // 4)
    numel = max(g, numel - numel % g) if op in _SPLIT_OPS else numel
    if op == "all_reduce":
        buf = torch.ones(numel)
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        shard = torch.ones(numel // g)
        full = torch.empty(numel)
        return lambda: dist.all_gather_into_tensor(full, shard, group=group)
    if op == "reduce_scatter":
        full = torch.ones(numel)
        shard = torch.empty(numel // g)
        return lambda: dist.reduce_scatter_tensor(shard, full, group=group)
    if op == "all_to_all":
        send = torch.ones(numel)
        recv = torch.empty(numel)
        return lambda: dist.all_to_all_single(recv, send, group=group)
    if op == "send_recv":
        send = torch.ones(numel)
        recv = torch.empty(numel)
        nxt, prv = ranks[(rank_in_group + 1) % g], ranks[(rank_in_group - 1) % g]
        if g == 2:
            peer = nxt
            if rank_in_group == 0:
                def ping():
                    dist.send(send, peer, group=group)
                    dist.recv(recv, peer, group=group)
            else:
                def ping():
                    dist.recv(recv, peer, group=group)
                    dist.send(send, peer, group=group)
            return ping
        def shift():
            reqs = [dist.isend(send, nxt, group=group), dist.irecv(recv, prv, group=group)]
            for r in reqs:
                r.wait()
        return shift
    raise ValueError(op)


def _per_call_times(fn, inner: int, group, reduce_op, sync_group=None) -> list[float]:
    """Time ``inner`` calls, each started right after a barrier (of ``sync_group``, default the
    group itself), and combine each call's time over the members with ``reduce_op`` (MIN: the last
    rank to arrive sees the collective's own time, without the barrier-exit skew of the others)."""
    times = []
    for _ in range(inner):
        dist.barrier(group=sync_group or group)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    buf = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(buf, op=reduce_op, group=group)
    return buf.tolist()


def bench_group(group, ranks: list[int], *, sizes, reps: int, target_s: float = 0.15,
                max_inner: int = 40, sync_group=None) -> list[dict]:
    """Time every op and size on ``group`` (called by its members only).

    Calls are isolated (a barrier before each): gloo is several times slower for 1-256 KB messages
    issued back to back than one at a time, and the executor's collectives are separated by
    compute. A sample is the median over ``inner`` calls; ``reps`` samples are kept.
    ``sync_group``: several groups timed at once (every rank of ``sync_group`` calls this for its
    own group): each call starts after a barrier of all of them, and the call counts are rank 0's."""
    g = len(ranks)
    me = ranks.index(dist.get_rank())
    out = []
    for op in OPS:
        ping_pong = op == "send_recv" and g == 2
        reduce_op = dist.ReduceOp.MAX if ping_pong else dist.ReduceOp.MIN
        seen = set()
        for size in sizes:
            numel = max(1, size // 4)
            if op in _SPLIT_OPS:
                numel = max(g, numel - numel % g)
            if numel in seen:  # rounded up to one element per rank: already timed
                continue
            seen.add(numel)
            fn = _op_fn(op, size, group, g, me, ranks)
            first = _per_call_times(fn, 2, group, reduce_op, sync_group)[-1]  # warm-up: connections, first touch
            inner = max(3, min(max_inner, int(target_s / reps / max(first, 1e-7))))
            box = torch.tensor([inner])  # every member must run the same count: take rank 0's
            if sync_group is None:
                dist.broadcast(box, ranks[0], group=group)
            else:
                dist.broadcast(box, 0, group=sync_group)
            inner = int(box.item())
            times = []
            for _ in range(reps):
                calls = _per_call_times(fn, inner, group, reduce_op, sync_group)
                times.append(statistics.median(calls) / (2 if ping_pong else 1))
            out.append({"op": op, "group_size": g, "bytes": numel * 4, "times_s": times,
                        "median_s": statistics.median(times), "inner": inner})
    return out
