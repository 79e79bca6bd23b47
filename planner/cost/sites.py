"""Where a plan runs: its *sites*, the pipeline ranks of one node type and tensor-parallel degree
(a homogeneous plan has one, a plan on a mixed cluster one per node type; Metis, Um et al.
ATC'24), the checks a plan must pass there, and each site's per-block costs."""
from __future__ import annotations

from dataclasses import dataclass

from planner.cost.block import BlockCost, block_cost, data_parallel_group, group_shape, shard_comm_s
from planner.cost.comm import GroupShape
from planner.cost.compute import Rates
from planner.cost.runtime import Runtime
from planner.cost.stacks import stack_of
from planner.errors import require
from planner.hardware import ClusterSpec, NodeSpec
from planner.layout import expert_group_spreads
from planner.model import ModelSpec
from planner.plan import DEFAULT_ORDER, ParallelConfig


@dataclass(frozen=True)
class Site:
    """Pipeline ranks ``ranks`` on node type ``node``; ``P`` is the plan as they run it (their tp)."""

    node: NodeSpec
    P: ParallelConfig
    ranks: tuple[int, ...]


def plan_sites(cluster: ClusterSpec, P: ParallelConfig) -> tuple[Site, ...]:
    """The sites of ``P`` on ``cluster``. On a mixed cluster (or with ``P.stage_tp``) the pipeline
    is the outermost axis (ranks numbered group by group), so stage r holds ``dp*cp*tp_r``
    consecutive GPUs, which must lie on one node type."""
    if cluster.is_homogeneous and not P.stage_tp:
        return (Site(cluster.node, P, tuple(range(P.pp))),)
    require(P.pp == 1 or P.order == DEFAULT_ORDER, "order",
            f"a pipeline over several node types needs {DEFAULT_ORDER} (pp outermost), got {P.order}")
    runs, start = [], 0
    for g in cluster.groups:
        n = g.n_nodes * g.node.gpus_per_node
        runs.append((g.node, start, start + n))
        start += n
    offset, by_key, configs = 0, {}, {}
    for r in range(P.pp):
        tp = P.stage_tp[r] if P.stage_tp else P.tp
        if tp not in configs:
            configs[tp] = P.stage_config(r)
        stage = configs[tp]
        n = P.dp * P.cp * tp
        run = next((i for i, (_, a, b) in enumerate(runs) if a <= offset < b), None)
        require(run is not None and offset + n <= runs[run][2], "parallel",
                f"pipeline stage {r} ({n} GPUs from rank {offset}) does not lie on one node type")
        by_key.setdefault((runs[run][0].name, stage.tp), (runs[run][0], stage, []))[2].append(r)
        offset += n
    require(offset == cluster.world_size, "dp",
            f"dp*cp*(tp of each stage) = {offset} GPUs != the cluster's {cluster.world_size}")
    return tuple(Site(node, stage, tuple(ranks)) for node, stage, ranks in by_key.values())


def validated_sites(model: ModelSpec, cluster: ClusterSpec, P: ParallelConfig, runtime: Runtime) -> tuple[Site, ...]:
    """The sites of ``P`` on ``cluster`` after every check a plan must pass before it is priced."""
    refusal = runtime.refusal(P)
    require(refusal is None, "runtime", refusal or "")
    require((P.ep == 1 and P.expert_tp == P.tp) or P.sharding not in ("zero3", "fsdp"), "sharding",
            "ZeRO-3 / FSDP with expert parallelism is not priced (use none, zero1 or zero2 with --ep / --etp)")
    if cluster.is_homogeneous and not P.stage_tp:
        node = cluster.node
        require(P.world_size == cluster.world_size, "dp",
                f"tp*pp*dp*cp = {P.tp}*{P.pp}*{P.dp}*{P.cp} = {P.world_size} != nodes*gpus_per_node = "
                f"{cluster.n_nodes}*{node.gpus_per_node} = {cluster.world_size}")
    sites = plan_sites(cluster, P)
    require(len(sites) == 1 or not any(stack_of(s.node).executor for s in sites), "cluster",
            "a profile with a calibrated framework section cannot be mixed with other node types")
    for s in sites:
        s.P.validate_for(model)
        if not s.node.device.supports(P.precision):
            s.node.device.peak_flops(P.precision)  # raises InputError naming precision
    require(P.seq_len <= model.seq_len or model.position != "learned", "seq_len",
            f"{P.seq_len} exceeds the model's learned positions ({model.seq_len})")
    return sites


@dataclass(frozen=True)
class SiteBlock:
    """A site's per-block and per-end-stage costs per micro-batch (seconds), ZeRO-3 included."""

    block: BlockCost
    z3_f: float
    z3_b: float
    emb_f: float
    emb_b: float
    head_f: float
    head_bi: float
    head_bw: float

    @property
    def layer_f(self) -> float:
        return self.block.fwd_s + self.z3_f

    @property
    def layer_b(self) -> float:
        return self.block.bwd_input_s + self.z3_b


def site_block(model: ModelSpec, site: Site, runtime: Runtime, rates: Rates) -> SiteBlock:
    P, node, gpn = site.P, site.node, site.node.gpus_per_node
    ep_group = GroupShape(P.ep, *expert_group_spreads(P, gpn)[0]) if P.ep > 1 else None
    bc = block_cost(model, node, runtime, rates, tp=P.tp, cp=P.cp, micro_batch=P.micro_batch,
                    seq_len=P.seq_len, recompute=P.recompute, sequence_parallel=P.sequence_parallel,
                    precision=P.precision, tp_group=group_shape(P, "tp", gpn), cp_group=group_shape(P, "cp", gpn),
                    ep_group=ep_group, expert_tp=P.expert_tp)
    dp_group = data_parallel_group(P, gpn)
    z3_f, z3_b = shard_comm_s(model, node, runtime, bc.lt, rates, dp_group, tp=P.tp, cp=P.cp,
                              micro_batch=P.micro_batch, seq_len=P.seq_len, precision=P.precision,
                              sharding=P.sharding, recompute=P.recompute)
    ef, eb, hf, hb = stack_of(node).fsdp_edge_s(model, node, rates, dp_group, tp=P.tp, pp=P.pp,
                                                precision=P.precision, sharding=P.sharding)
    return SiteBlock(bc, z3_f, z3_b, bc.emb_f + ef, bc.emb_b + eb, bc.head_f + hf, bc.head_bi + hb, bc.head_bw)
