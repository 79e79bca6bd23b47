"""Waits on other nodes, and pipelines on CPU hosts with more ranks than cores.

A CPU rank blocked on the link sleeps: :func:`link_wait_s` is the part of a step's stage work
spent in collectives whose group spans nodes. On an oversubscribed host a pipeline's tasks run
at the share of a core the ranks computing beside them leave: :func:`shared_pipeline` prices the
schedule with :func:`planner.schedule_shared.simulate_shared`, each task split into its CPU work
(what a whole core would take), host-side communication and sleep.
"""
from __future__ import annotations

import dataclasses

from planner.cost.block import group_shape
from planner.cost.stacks import stack_of
from planner.hardware import NodeSpec
from planner.layout import expert_group_spreads, rank_layout
from planner.plan import ParallelConfig
from planner.schedule_estimate import PipelineEstimate
from planner.schedule_shared import Host, TaskCost, simulate_shared

SHARED_TASK_LIMIT = 4096
"""Pipelines with more tasks (pp x vpp x micro-batches x 2) keep the busy-fraction estimate:
the event simulation is exact but not closed-form, and CPU plans are small."""


def _crossing_axes(P: ParallelConfig, gpus_per_node: int) -> dict[str, bool]:
    crosses = {axis: getattr(P, axis) > 1 and group_shape(P, axis, gpus_per_node).nodes > 1
               for axis in ("tp", "cp", "dp")}
    crosses["ep"] = P.ep > 1 and expert_group_spreads(P, gpus_per_node)[0][1] > 1
    return crosses


def _waits(P: ParallelConfig, gpus_per_node: int):
    """(forward, backward) per-block link waits as functions of a SiteBlock, or None."""
    x = _crossing_axes(P, gpus_per_node)
    if not any(x.values()):
        return None

    def fwd(b) -> float:
        bc = b.block
        return bc.tp_f * x["tp"] + bc.cp_f * x["cp"] + bc.ep_f * x["ep"] + b.z3_f * x["dp"]

    def bwd(b) -> float:
        bc = b.block
        return ((bc.tp_b + bc.tp_rc) * x["tp"] + bc.cp_b * x["cp"] + (bc.ep_b + bc.ep_rc) * x["ep"]
                + b.z3_b * x["dp"])
    return fwd, bwd


def link_wait_s(P: ParallelConfig, st, gpus_per_node: int) -> float:
    """Mean over the pipeline ranks of the time their stage work spends in tp / cp / ep / sharded-dp
    collectives whose group spans nodes: waits on the link, on which a CPU rank sleeps."""
    waits = _waits(P, gpus_per_node)
    if waits is None:
        return 0.0
    fwd, bwd = waits
    total = sum(P.num_micro_batches * st.rank_blocks_sum(r, lambda b: fwd(b) + bwd(b)) for r in range(P.pp))
    return total / P.pp


def _stage_waits(P: ParallelConfig, st, gpus_per_node: int) -> tuple[list[float], list[float]]:
    """Per virtual stage, one micro-batch's forward and backward link waits."""
    n_vs = len(st.kinds)
    waits = _waits(P, gpus_per_node)
    if waits is None:
        return [0.0] * n_vs, [0.0] * n_vs
    out_f, out_b = [], []
    for k, (nd, n) in enumerate(st.kinds):
        site = st.site_of_rank[k % P.pp]
        b, d = st.blocks[site], st.dense_blocks[site]
        out_f.append(n * waits[0](b) + nd * waits[0](d))
        out_b.append(n * waits[1](b) + nd * waits[1](d))
    return out_f, out_b


def shares_cores(P: ParallelConfig, schedule: str, device, ranks_on_host: int, n_sites: int) -> bool:
    """Whether :func:`shared_pipeline` prices this plan: one site on an oversubscribed CPU host,
    a pipeline of a fixed task order, small enough to simulate."""
    return (n_sites == 1 and device.host_cores > 0 and ranks_on_host > device.host_cores and P.pp > 1
            and schedule in ("gpipe", "1f1b", "interleaved")
            and 2 * P.pp * P.vpp * P.num_micro_batches <= SHARED_TASK_LIMIT)


def _link_sharing(P: ParallelConfig, node: NodeSpec) -> tuple[float, float]:
    """(senders, alone): how many of a node's ranks its link waits were priced as sending across
    at once (the groups of a crossing axis on one node, :func:`planner.cost.gloo.ring_time`; the
    fewest over the crossing axes), and how many times faster one of them runs alone on the link.
    Alone it still needs the host CPU of its bytes, at the share of the node's cores its other
    processes leave it: a transfer the CPU bounds gains nothing. (0, 1) where the node's ranks do
    not share one link or expert groups cross: every wait as priced."""
    x = _crossing_axes(P, node.gpus_per_node)
    if not node.inter_node_shared or x["ep"] or not any(x.values()):
        return 0.0, 1.0
    gpn, cores = node.gpus_per_node, max(node.device.host_cores, 1e-9)
    senders = min(gpn / group_shape(P, a, gpn).ranks_per_node for a in ("tp", "cp", "dp") if x[a])
    bandwidth, across = node.inter_node.effective_bandwidth_bytes_per_s, node.link_cpu_s_per_byte[0]
    priced = max(1.0 / (bandwidth * node.inter_node_share(senders)), senders * across / cores)  # s per byte
    alone = max(1.0 / (bandwidth * node.inter_node_share(1)), across * gpn / cores)
    return senders, max(1.0, priced / alone)


def hosts(P: ParallelConfig, node: NodeSpec) -> tuple[Host, ...]:
    """Every node's cores, its processes per pipeline rank (:func:`planner.layout.rank_layout`)
    and the senders its link waits were priced for."""
    per_node: dict[int, list[int]] = {}
    for c in rank_layout(P):
        per_node.setdefault(c.rank // node.gpus_per_node, [0] * P.pp)[c.pp] += 1
    senders, alone = _link_sharing(P, node)
    return tuple(Host(node.device.host_cores, tuple(v), senders, alone) for _, v in sorted(per_node.items()))


def _send_cpu_s(P: ParallelConfig, node: NodeSpec, act_bytes: float) -> list[float]:
    """Per virtual stage, the host CPU its ranks' stage-boundary sends and receives of one
    micro-batch cost on their node: half of what a byte moved costs the host
    (``NodeSpec.link_cpu_s_per_byte``, measured over both ends of a TCP transfer) for each byte
    sent or received, at the rate across nodes where the neighbour is on another node."""
    across, inside = node.link_cpu_s_per_byte
    n_vs = P.pp * P.vpp
    if not (across or inside) or n_vs == 1:
        return [0.0] * n_vs
    size = stack_of(node).pipeline_send_bytes(act_bytes, P.tp, P.sequence_parallel)
    gpn = node.gpus_per_node
    layout = rank_layout(P)
    node_of = {(c.pp, c.tp, c.cp, c.dp): c.rank // gpn for c in layout}

    def crosses(r: int, s: int) -> bool:
        return any(node_of[(r, c.tp, c.cp, c.dp)] != node_of[(s, c.tp, c.cp, c.dp)] for c in layout if c.pp == r)

    per_byte = [(across if crosses(r, (r + 1) % P.pp) else inside) / 2 for r in range(P.pp)]
    out = []
    for k in range(n_vs):
        r = k % P.pp
        down = per_byte[r] if k < n_vs - 1 else 0.0          # to virtual stage k + 1
        up = per_byte[(r - 1) % P.pp] if k > 0 else 0.0       # from virtual stage k - 1
        out.append(size * (down + up))
    return out


def shared_pipeline(P: ParallelConfig, st, stage_times_at_share, node: NodeSpec, timeline: bool) -> PipelineEstimate:
    """The schedule of ``st`` on ``node``'s shared cores. ``stage_times_at_share(s)``: the stage
    times with every rank at share ``s`` of a core; compute scales as 1/s, communication does
    not, so two shares separate a task's CPU work from its fixed part, and the link waits split
    the fixed part into sleep and host-side communication. Each task also does the CPU work of
    its sends and receives (:func:`_send_cpu_s`: a forward receives and sends one activation, a
    backward one gradient)."""
    gpus_per_node = node.gpus_per_node
    whole, half = stage_times_at_share(1.0), stage_times_at_share(0.5)
    sleep_f, sleep_b = _stage_waits(P, st, gpus_per_node)
    send_cpu = _send_cpu_s(P, node, st.blocks[0].block.act_bytes)

    def costs(full: tuple, halved: tuple, sleep: list[float]) -> list[TaskCost]:
        out = []
        for a, b, z, c in zip(full, halved, sleep, send_cpu):
            work = max(0.0, b - a)
            fixed = max(0.0, a - work)
            out.append(TaskCost(work + c, max(0.0, fixed - z), min(z, fixed)))
        return out

    tl = simulate_shared(st.schedule, P.pp, P.num_micro_batches, P.vpp, costs(whole.fwd_s, half.fwd_s, sleep_f),
                         costs(whole.sched_b, half.sched_b, sleep_b), st.p2p_s, hosts(P, node), record=timeline)
    kept = tl if timeline else dataclasses.replace(tl, tasks=(), num_micro_batches=0)
    return PipelineEstimate(tl.makespan_s, tl.busy_s, tl.bubble_s, tl.peak_in_flight, kept, True)
