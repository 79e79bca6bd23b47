"""The one assembler: a training step's time and memory for any plan, :func:`predict`.

A plan runs on *sites* (:mod:`planner.cost.sites`: the pipeline ranks of one node type and
tensor-parallel degree). Per site the block costs (:mod:`planner.cost.block`), then:

step time = simulated pipeline makespan (per-stage forward / backward from the blocks on that
stage's site, embedding and LM head on the end stages, send/recv between stages over the slowest
boundary link; :mod:`planner.schedule`)
+ the exposed data-parallel reduction (:mod:`planner.cost.data_parallel`), worst site
+ the optimizer step (:mod:`planner.cost.optimizer`), worst site.

Memory per pipeline rank with its own device (:mod:`planner.cost.memory`); a plan fits when
every rank fits. On a CPU host whose ranks occupy every core the runtime's overlap does not
exist (:func:`planner.cost.runtime.effective_runtime`); on an oversubscribed one the ranks'
busy fraction is iterated to its fixed point (:func:`predict`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.cluster import as_cluster, load_cluster
from planner.cost.block import data_parallel_group, group_shape, pipeline_hop_s
from planner.cost.comm import GroupShape
from planner.cost.compute import Rates, make_rates
from planner.cost.data_parallel import dp_reduction_s, exposed_s, tied_embedding_sync_s
from planner.cost.flops import step_flops
from planner.cost.framework import param_tensors
from planner.cost.memory import StageMemory, stage_memories, stage_parameters
from planner.cost.optimizer import optimizer_s
from planner.cost.prediction import Prediction, StagePrediction, TimeBreakdown
from planner.cost.runtime import Runtime, bind_runtime, effective_runtime
from planner.cost.shared_host import link_wait_s, shared_pipeline, shares_cores
from planner.cost.sites import Site, SiteBlock, plan_sites, site_block, validated_sites
from planner.cost.stacks import stack_of
from planner.errors import InputError
from planner.hardware import ClusterSpec
from planner.layout import expert_group_spreads
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan
from planner.profile_yaml import load_profile
from planner.schedule_estimate import PipelineEstimate, closed_form_in_flight, estimate

TIMELINE_TASK_LIMIT = 20000
BUSY_FIXED_POINT_ITERATIONS = 8
"""At most this many re-evaluations of an oversubscribed CPU host's busy fraction (it settles
to 0.1% in two or three: the idle share of a pipeline scales with its compute)."""


@dataclass(frozen=True)
class StageTimes:
    """Per-virtual-stage task times of one plan (everything the pipeline schedule needs)."""

    fwd_s: tuple[float, ...]
    sched_b: tuple[float, ...]
    sched_w: tuple[float, ...] | None
    p2p_s: float
    schedule: str
    blocks: tuple[SiteBlock, ...]
    site_of_rank: tuple[int, ...]
    dense_blocks: tuple[SiteBlock, ...]
    """Each site's block of the model's second kind (:meth:`planner.model.ModelSpec.alt_block`: an MoE
    model's leading dense blocks, or its cross-attention blocks; ``blocks`` where it has none)."""
    kinds: tuple[tuple[int, int], ...]
    """(second kind, first kind) blocks of each virtual stage (:meth:`planner.model.ModelSpec.block_kinds`)."""

    def rank_blocks_sum(self, rank: int, per_block) -> float:
        """``per_block(SiteBlock)`` summed over the blocks of pipeline rank ``rank``'s chunks."""
        pp = len(self.site_of_rank)
        site = self.site_of_rank[rank]
        b, d = self.blocks[site], self.dense_blocks[site]
        n_dense = sum(self.kinds[k][0] for k in range(rank, len(self.kinds), pp))
        n_other = sum(self.kinds[k][1] for k in range(rank, len(self.kinds), pp))
        return n_other * per_block(b) + (n_dense * per_block(d) if n_dense else 0.0)


def _rank_sites(sites: tuple[Site, ...], pp: int) -> tuple[int, ...]:
    of = [0] * pp
    for i, s in enumerate(sites):
        for r in s.ranks:
            of[r] = i
    return tuple(of)


def _p2p_s(cluster: ClusterSpec, sites: tuple[Site, ...], site_of: tuple[int, ...], act_bytes: float) -> float:
    """The slowest stage-boundary send of one micro-batch's activations
    (:func:`planner.cost.block.pipeline_hop_s`); between node types over the fabric's link
    (:meth:`planner.cluster.FabricSpec.link_between`)."""
    P0 = sites[0].P
    if P0.pp == 1:
        return 0.0

    def hop(s: Site, node, crosses: bool, tp: int) -> float:
        return pipeline_hop_s(node, act_bytes, tp, s.P.sequence_parallel, s.P.tp * s.P.cp * s.P.dp, crosses)

    if len(sites) == 1:
        s = sites[0]
        return hop(s, s.node, group_shape(s.P, "pp", s.node.gpus_per_node).nodes > 1, s.P.tp)
    fabric = as_cluster(cluster).fabric
    worst = 0.0
    for r in range(P0.pp - 1 + (1 if P0.vpp > 1 else 0)):
        a, b = sites[site_of[r]], sites[site_of[(r + 1) % P0.pp]]
        tp = min(a.P.tp, b.P.tp)
        if a.node.name == b.node.name:
            t = hop(a, a.node, group_shape(a.P, "pp", a.node.gpus_per_node).nodes > 1, tp)
        else:
            t = hop(a, dataclasses.replace(a.node, inter_node=fabric.link_between(a.node, b.node)), True, tp)
        worst = max(worst, t)
    return worst


def stage_times(model: ModelSpec, cluster: ClusterSpec, sites: tuple[Site, ...], runtimes, rates) -> StageTimes:
    """Per-virtual-stage forward / backward (/ weight-grad for zb) times and the p2p hop."""
    P = sites[0].P
    pp, v = P.pp, P.vpp
    blocks = tuple(site_block(model, s, rt, r) for s, rt, r in zip(sites, runtimes, rates))
    kinds = tuple(model.block_kinds(P.layers_per_stage(model.n_layers)))
    if model.alt_layers:
        dense = model.alt_block()
        dense_blocks = tuple(site_block(dense, s, rt, r) for s, rt, r in zip(sites, runtimes, rates))
    else:
        dense_blocks, kinds = blocks, tuple((0, nd + nm) for nd, nm in kinds)
    site_of = _rank_sites(sites, pp)
    n_vs = pp * v
    fwd_s, bwd_s, w_s = [], [], []
    for k, (nd, n) in enumerate(kinds):
        b, d = blocks[site_of[k % pp]], dense_blocks[site_of[k % pp]]
        f, bi, w = n * b.layer_f, n * b.layer_b, n * b.block.bwd_weight_s
        if nd:
            f, bi, w = f + nd * d.layer_f, bi + nd * d.layer_b, w + nd * d.block.bwd_weight_s
        if k == 0:
            f, bi = f + b.emb_f, bi + b.emb_b
        if k == n_vs - 1:
            f, bi, w = f + b.head_f, bi + b.head_bi, w + b.head_bw
        fwd_s.append(f)
        bwd_s.append(bi)
        w_s.append(w)
    if pp > 1:  # the executor's pipelining runtime on every F, B (and W) action
        fwd_s, bwd_s, w_s = stack_of(sites[0].node).pipeline_actions(fwd_s, bwd_s, w_s, rates[0], P.schedule)
    if P.schedule == "zb":
        sched_b, sched_w = bwd_s, w_s
    else:
        sched_b, sched_w = [x + y for x, y in zip(bwd_s, w_s)], None
    # a plain pp=1 step with v=1 is a single stage: any listed schedule runs the same order
    sched = P.schedule if pp > 1 else ("interleaved" if v > 1 else "1f1b")
    p2p = _p2p_s(cluster, sites, site_of, blocks[0].block.act_bytes)
    return StageTimes(tuple(fwd_s), tuple(sched_b), tuple(sched_w) if sched_w else None, p2p, sched,
                      blocks, site_of, dense_blocks, kinds)


@dataclass(frozen=True)
class TimedStep:
    """The rate-dependent part of a prediction, for ``ranks_busy`` ranks computing at once on
    a host (``make_rates``)."""

    ranks_busy: float
    rates: tuple[Rates, ...]
    st: StageTimes
    pipe: PipelineEstimate
    dp_exposed_s: float
    optimizer_s: float
    step_s: float
    link_wait_s: float = 0.0

    @property
    def busy_fraction(self) -> float:
        """The share of a rank's time out of lockstep waits that it computes (stage work and the
        optimizer): what it leaves of the host's cores to the others. The exposed data-parallel
        reduction and the collectives of its stage work whose group spans nodes
        (``link_wait_s``) are waited by the ranks of a stage at once (SPMD ranks reach them
        together), so they free no core for a peer's compute and leave the share's base; the
        pipeline's bubbles and sends do free cores (stages alternate)."""
        busy = sum(self.pipe.busy_s) / len(self.pipe.busy_s) - self.link_wait_s + self.optimizer_s
        unlocked = self.step_s - self.dp_exposed_s - self.link_wait_s
        return min(1.0, max(0.0, busy) / max(unlocked, 1e-30))


def _site_dp_exposed_s(model: ModelSpec, site: Site, runtime: Runtime, rates: Rates, st: StageTimes,
                       stage_params: list[float]) -> float:
    """The dp reduction of the site's rank holding the most parameters, overlapped with that
    rank's backward of the last micro-batch, and the tied embedding's gradient sync after it."""
    P = site.P
    most = max(stage_params[r] for r in site.ranks)
    r_max = next(r for r in site.ranks if stage_params[r] == most)
    window = sum(st.sched_b[k] + (st.sched_w[k] if st.sched_w else 0.0)
                 for k in range(r_max, P.pp * P.vpp, P.pp))
    gpn = site.node.gpus_per_node
    tensors = param_tensors(model, P, site.ranks)
    experts = _rank_expert_params(model, P, r_max)
    all_reduce = runtime.pipeline_grad_all_reduce and P.pp > 1
    grad_b = runtime.grad_bytes(P.precision)
    reduction = dp_reduction_s(site.node, rates, data_parallel_group(P, gpn), precision=P.precision,
                               sharding=P.sharding, tp=P.tp, pp=P.pp, params=most - experts, param_tensors=tensors,
                               grad_bytes=grad_b, grad_all_reduce=all_reduce)
    if experts:  # an expert's gradients over the ranks holding it
        edp = GroupShape(P.expert_dp, *expert_group_spreads(P, gpn)[1])
        more = dp_reduction_s(site.node, rates, edp, precision=P.precision, sharding=P.sharding, tp=P.tp,
                              pp=P.pp, params=experts, param_tensors=0, grad_bytes=grad_b,
                              grad_all_reduce=all_reduce)
        reduction = tuple(a + b for a, b in zip(reduction, more))
    return exposed_s(runtime, reduction, window, rates) + tied_embedding_sync_s(model, site.node, P, grad_b)


def _rank_expert_params(model: ModelSpec, P: ParallelConfig, rank: int) -> float:
    """Routed-expert parameters pipeline rank ``rank`` holds where they are reduced apart from the
    dense ones (expert parallelism, or experts split below tp; 0 otherwise)."""
    if (P.ep == 1 and P.expert_tp == P.tp) or not model.is_moe:
        return 0.0
    kinds = model.block_kinds(P.layers_per_stage(model.n_layers))
    n_layers = sum(kinds[k][1] for k in range(rank, P.pp * P.vpp, P.pp))
    return n_layers * model.expert_params_per_layer() / (P.expert_tp * P.ep)


def timed_step(model: ModelSpec, cluster: ClusterSpec, sites: tuple[Site, ...], runtimes,
               stage_params: list, ranks_busy: float, timeline: bool, ranks_on_host: int = 0) -> TimedStep:
    """Stage times, the pipeline schedule, exposed DP reduction, optimizer and step time with
    ``ranks_busy`` ranks sharing the host's cores.

    Oversubscribed CPU host (ranks > host_cores): a rank blocked in a receive or a collective
    sleeps, so the others share the cores among fewer; with a mean busy fraction u over the
    ranks, each busy rank gets min(1, host_cores / (ranks x u)) of a core (egalitarian
    processor sharing: the runnable jobs share the servers equally; Kleinrock, "Time-shared
    systems: a theoretical treatment", J. ACM 14(2), 1967; :func:`predict` iterates u to its
    fixed point). The measured waits are taken to use no CPU (a blocked gloo receive sleeps).
    A pipeline of ``ranks_on_host`` ranks on such a host runs its schedule on shared cores
    (:func:`planner.cost.shared_host.shared_pipeline`); ``ranks_busy`` then only sets the
    measured slowdown of ranks computing at once."""
    P = sites[0].P
    rates = tuple(make_rates(s.node.device, P.precision, ranks_busy, s.node.framework) for s in sites)
    st = stage_times(model, cluster, sites, runtimes, rates)
    device, gpn = sites[0].node.device, sites[0].node.gpus_per_node
    shared = shares_cores(P, st.schedule, device, ranks_on_host, len(sites))
    if shared:
        def at_share(share: float) -> StageTimes:
            return stage_times(model, cluster, sites, runtimes, tuple(dataclasses.replace(r, share=share) for r in rates))
        pipe = shared_pipeline(P, st, at_share, sites[0].node, timeline)
    else:
        pipe = estimate(st.schedule, P.pp, P.num_micro_batches, P.vpp, list(st.fwd_s), list(st.sched_b),
                        list(st.sched_w) if st.sched_w else None, st.p2p_s, need_timeline=timeline)
    dp = max(_site_dp_exposed_s(model, s, rt, r, st, sp) for s, rt, r, sp in zip(sites, runtimes, rates, stage_params))
    opt = max(optimizer_s(model, s.P, r, s.ranks) for s, r in zip(sites, rates))
    wait = link_wait_s(P, st, gpn) if len(sites) == 1 and not shared else 0.0  # shared: busy_s is awake time
    return TimedStep(ranks_busy, rates, st, pipe, dp, opt, pipe.makespan_s + dp + opt, wait)


def priced_parallel(P: ParallelConfig, runtime: Runtime) -> ParallelConfig:
    """``P`` with its sharding as the runtime runs it (:meth:`Runtime.priced_sharding`)."""
    sharding = runtime.priced_sharding(P.sharding, P.pp)
    return P if sharding == P.sharding else dataclasses.replace(P, sharding=sharding)


def _bind(model: ModelSpec, cluster: ClusterSpec, P: ParallelConfig,
          runtime: Runtime | None) -> tuple[ClusterSpec, tuple[Site, ...], int, tuple[Runtime, ...]]:
    """What every pricing entry point starts from: the cluster with its runtime bound
    (:func:`bind_runtime`), the plan's sites, the ranks sharing one host and each site's runtime."""
    cluster, runtime = bind_runtime(cluster, runtime)
    sites = validated_sites(model, cluster, P, runtime)
    if runtime.priced_sharding(P.sharding, P.pp) != P.sharding:
        sites = tuple(dataclasses.replace(s, P=priced_parallel(s.P, runtime)) for s in sites)
    world = cluster.world_size
    ranks_on_host = min(sites[0].node.gpus_per_node, world)
    runtimes = tuple(effective_runtime(runtime, s.node.device, ranks_on_host if world > 1 else 0) for s in sites)
    return cluster, sites, ranks_on_host, runtimes


def predict(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig,
            runtime: Runtime | None = None, *, timeline: bool = True) -> Prediction:
    """Predict step time and per-rank memory of ``parallel`` for ``model`` on ``cluster``
    (homogeneous or mixed, a tp per pipeline stage too: :func:`plan_sites`).

    runtime: the stack modelled (:mod:`planner.cost.runtime`; None: the profile's default,
    :func:`planner.cost.runtime.bind_runtime`).

    Raises :class:`InputError` for impossible plans (degrees vs world size, heads vs tp, batch
    divisibility, stage layers). A plan that does not fit in memory is a value: ``fits=False``.
    timeline=False (the search's fast path) leaves ``Prediction.timeline`` empty and lets equal
    pipeline stages use the schedule's closed form; every other field is the same.
    """
    cluster, sites, ranks_on_host, runtimes = _bind(model, cluster, parallel, runtime)
    P = priced_parallel(parallel, runtimes[0])
    device = sites[0].node.device
    world = cluster.world_size
    pp, m = P.pp, P.num_micro_batches
    stage_params = [stage_parameters(model, s.P) for s in sites]
    timed = timed_step(model, cluster, sites, runtimes, stage_params, ranks_on_host, timeline, ranks_on_host)
    if len(sites) == 1 and device.host_cores > 0 and ranks_on_host > device.host_cores:
        # oversubscribed CPU host: a rank waiting in a receive or a collective sleeps, so the
        # busy ones get more than host_cores / ranks of a core; iterate on the busy fraction
        for _ in range(BUSY_FIXED_POINT_ITERATIONS):
            busy = max(device.host_cores, ranks_on_host * timed.busy_fraction)
            if abs(busy - timed.ranks_busy) <= 1e-3 * busy:
                break
            timed = timed_step(model, cluster, sites, runtimes, stage_params, busy, timeline, ranks_on_host)
    st, pipe = timed.st, timed.pipe

    per_rank = rank_memories(model, sites, runtimes, st.schedule, pipe.peak_in_flight)
    peak_rank = max(range(pp), key=lambda r: per_rank[r][1].total_bytes / per_rank[r][2])
    peak_mem, hbm = per_rank[peak_rank][1], per_rank[peak_rank][2]

    time = _breakdown(P, timed)
    model_flops, hw_flops = step_flops(model, P.global_batch, P.seq_len, P.recompute,
                                       runtimes[0].selective_recompute)
    if len(sites) == 1:
        peak = timed.rates[0].peak_flops
    else:
        peak = sum(timed.rates[st.site_of_rank[r]].peak_flops * sites[st.site_of_rank[r]].P.tp
                   for r in range(pp)) * P.dp * P.cp / world
    step = timed.step_s
    tokens = P.global_batch * P.seq_len
    tasks = pipe.timeline.tasks if len(pipe.timeline.tasks) <= TIMELINE_TASK_LIMIT else ()
    return Prediction(
        step_time_s=step,
        tokens_per_s=tokens / step,
        tokens_per_s_per_gpu=tokens / step / world,
        model_tflops_per_gpu=model_flops / step / world / 1e12,
        hardware_tflops_per_gpu=hw_flops / step / world / 1e12,
        mfu=model_flops / step / world / peak,
        hfu=hw_flops / step / world / peak,
        peak_memory_bytes=peak_mem.total_bytes,
        fits=all(mem.total_bytes <= cap for _, mem, cap in per_rank),
        hbm_bytes=hbm,
        per_stage=tuple(StagePrediction(r, n, pipe.busy_s[r], mem.total_bytes, mem)
                        for r, (n, mem, _) in enumerate(per_rank)),
        time=time,
        memory=peak_mem,
        timeline=tasks,
        timeline_micro_batches=pipe.timeline.num_micro_batches if tasks else 0,
        num_micro_batches=m,
        runtime=runtimes[0],
    )


def rank_memories(model: ModelSpec, sites: tuple[Site, ...], runtimes, schedule: str,
                  in_flight: tuple[int, ...]) -> list[tuple[int, StageMemory, float]]:
    """Per pipeline rank (its layers, its peak memory, its device's memory) with ``in_flight``
    micro-batches' activations held per rank (the schedule's count; the executor's own where
    its runtime differs, :meth:`planner.cost.executor_stack.ExecutorStack.in_flight`)."""
    P = sites[0].P
    per_rank: list = [None] * P.pp
    for s, rt in zip(sites, runtimes):
        stack = stack_of(s.node)
        flight = stack.in_flight(schedule, P.pp, P.num_micro_batches, in_flight)
        rows = stage_memories(model, s.P, s.node.device, flight, rt.attention, stack=stack,
                              selective=rt.selective_recompute, fp32_loss=rt.fp32_cross_entropy,
                              grad_bytes=rt.accumulated_grad_bytes(s.P))
        for r in s.ranks:
            per_rank[r] = (rows[r][1], rows[r][2], s.node.device.hbm_bytes)
    return per_rank


@dataclass(frozen=True)
class MemoryPeak:
    """The fullest pipeline rank relative to its device: its bytes, its device's, whether every
    rank fits."""

    peak_bytes: float
    hbm_bytes: float
    rank: int
    fits: bool


def peak_memory(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig,
                runtime: Runtime | None = None) -> MemoryPeak:
    """The plan's memory without pricing time: what :func:`predict` says for GPipe, 1F1B and interleaved, whose in-flight
    counts depend only on the order (:func:`planner.schedule.closed_form_in_flight`); for ZB-H1
    1F1B's count ``p - i``, an upper bound of the simulated one."""
    P = parallel
    cluster, sites, ranks, runtimes = _bind(model, cluster, P, runtime)
    sched = P.schedule if P.pp > 1 else ("interleaved" if P.vpp > 1 else "1f1b")
    per_rank = rank_memories(model, sites, runtimes, sched,
                             closed_form_in_flight(sched, P.pp, P.num_micro_batches, P.vpp))
    r = max(range(P.pp), key=lambda k: per_rank[k][1].total_bytes / per_rank[k][2])
    return MemoryPeak(per_rank[r][1].total_bytes, per_rank[r][2], r,
                      all(mem.total_bytes <= cap for _, mem, cap in per_rank))


def _breakdown(P: ParallelConfig, timed: TimedStep) -> TimeBreakdown:
    """Where the critical pipeline rank's time goes (its share of the makespan split over its
    work in proportion), plus the bubble, the exposed dp reduction and the optimizer."""
    st, pipe = timed.st, timed.pipe
    pp, m = P.pp, P.num_micro_batches
    n_vs = pp * P.vpp
    crit = max(range(pp), key=lambda r: pipe.busy_s[r])
    b = st.blocks[st.site_of_rank[crit]]
    chunks = range(crit, n_vs, pp)
    has_emb, has_head = 0 in chunks, (n_vs - 1) in chunks

    def blocks(per_block) -> float:
        return m * st.rank_blocks_sum(crit, per_block)

    fwd_c = blocks(lambda x: x.block.lt.fwd_s) + m * ((b.emb_f if has_emb else 0.0) + (b.head_f if has_head else 0.0))
    bwd_c = blocks(lambda x: x.block.lt.bwd_s) + m * ((b.emb_b if has_emb else 0.0)
                                                      + ((b.head_bi + b.head_bw) if has_head else 0.0))
    rc_c = blocks(lambda x: x.block.lt.recompute_s)
    tp_c = blocks(lambda x: x.block.tp_f + x.block.tp_b + x.block.tp_rc)
    cp_c = blocks(lambda x: x.block.cp_f + x.block.cp_b)
    ep_c = blocks(lambda x: x.block.ep_f + x.block.ep_b + x.block.ep_rc)
    z3_c = blocks(lambda x: x.z3_f + x.z3_b)
    scale = pipe.busy_s[crit] / max(1e-30, fwd_c + bwd_c + rc_c + tp_c + cp_c + ep_c + z3_c)
    idle = max(0.0, pipe.makespan_s - pipe.busy_s[crit])
    pp_c = min(idle, 2 * (n_vs - 1) * st.p2p_s) if pp > 1 else 0.0
    return TimeBreakdown(forward_s=fwd_c * scale, backward_s=bwd_c * scale, recompute_s=rc_c * scale,
                         optimizer_s=timed.optimizer_s, tp_s=tp_c * scale, cp_s=cp_c * scale,
                         dp_s=z3_c * scale + timed.dp_exposed_s, pp_s=pp_c, bubble_s=idle - pp_c,
                         ep_s=ep_c * scale)


def lower_bound_step_time_s(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig,
                            runtime: Runtime | None = None) -> float:
    """A cheap lower bound of ``predict(...).step_time_s`` (no schedule simulation): the busiest
    pipeline rank must run all its tasks (``m`` micro-batches of each of its chunks) and then
    the optimizer step; the bubble and the exposed DP reduction are >= 0."""
    P = parallel
    cluster, sites, ranks, runtimes = _bind(model, cluster, P, runtime)
    rates = tuple(make_rates(s.node.device, P.precision, ranks, s.node.framework) for s in sites)
    st = stage_times(model, cluster, sites, runtimes, rates)
    busy = [0.0] * P.pp
    for k in range(len(st.fwd_s)):
        busy[k % P.pp] += P.num_micro_batches * (st.fwd_s[k] + st.sched_b[k] + (st.sched_w[k] if st.sched_w else 0.0))
    return max(busy) + max(optimizer_s(model, s.P, r, s.ranks) for s, r in zip(sites, rates))


def cluster_for(hardware: str, n_nodes: int, gpus_per_node: int | None = None) -> ClusterSpec:
    """Homogeneous cluster of ``n_nodes`` of profile ``hardware`` (name or path), optionally
    with the node size overridden."""
    node = load_profile(hardware)
    if gpus_per_node is not None and gpus_per_node != node.gpus_per_node:
        node = node.with_gpus_per_node(gpus_per_node)
    return ClusterSpec.homogeneous(node, n_nodes)


def predict_plan(plan: Plan, runtime: Runtime | None = None) -> Prediction:
    """Predict a :class:`Plan` on its cluster file or on ``plan.n_nodes`` nodes of its hardware
    profile (``plan.gpus_per_node`` GPUs each)."""
    if plan.cluster:
        return predict(plan.model, load_cluster(plan.cluster), plan.parallel, runtime)
    return predict(plan.model, cluster_for(plan.hardware, plan.n_nodes, plan.gpus_per_node),
                   plan.parallel, runtime)


__all__ = ["Prediction", "StagePrediction", "TimeBreakdown", "Site", "plan_sites", "predict",
           "predict_plan", "cluster_for", "lower_bound_step_time_s", "peak_memory", "stage_times", "timed_step",
           "InputError"]
