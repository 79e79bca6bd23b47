"""Plans for clusters mixing node types (e.g. ``clusters/mixed-a100-h100.yaml``).

Following Metis (Um et al., ATC'24) and AMP (Li et al., NeurIPS'22): pipeline stages map to node
groups (each node type holds a contiguous run of stages, in the cluster file's group order, so no
stage mixes device types); every type may use
its own tensor-parallel degree (``pp_i = GPUs_i / (dp * tp_i)`` stages on type i, one dp for all);
the layers are cut by the exact chain DP (:func:`planner.partition.partition_chain`) with each
stage's own per-layer time (its device and tp) and memory limit, so faster devices get more layers.

Every candidate is priced by the one assembler, :func:`planner.cost.step.predict`, with a
tensor-parallel degree per stage (its sites: each stage's node type and tp); the chain DP cuts
the layers with the search's memoised per-block costs (:class:`planner.search.Costs`).
The baseline is the best *homogeneous split* on the same cluster: one tp everywhere and the
balanced layer split, evaluated the same way; the result reports the gain over it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass

from planner.cluster import Cluster, as_cluster
from planner.cost.memory import logits_bytes_per_token, shard_divisors
from planner.cost.precision import state_bytes_per_param
from planner.cost.prediction import Prediction
from planner.cost.runtime import Runtime, bind_runtime
from planner.cost.step import peak_memory, predict
from planner.errors import require
from planner.model import ModelSpec
from planner.partition import StageCut, partition_chain
from planner.plan import ParallelConfig, Plan
from planner.search.costs import Costs
from planner.search.results import RankedPlan, Rejected, RejectionCount, SearchResult, same_plan_but_storage
from planner.search.space import divisors, normalise_fixed


@dataclass(frozen=True)
class HeteroConfig:
    """One heterogeneous candidate: per node type (group order) its tp and stage count."""

    dp: int
    tps: tuple[int, ...]
    pps: tuple[int, ...]
    micro_batch: int
    recompute: str
    sharding: str
    sequence_parallel: bool
    schedule: str
    stage_layers: tuple[int, ...]

    @property
    def stage_tp(self) -> tuple[int, ...]:
        """Tensor-parallel degree of each pipeline stage."""
        return tuple(tp for tp, n in zip(self.tps, self.pps) for _ in range(n))

    @property
    def uniform_tp(self) -> bool:
        return len(set(self.tps)) == 1

    def label(self, types: tuple[str, ...]) -> str:
        groups = " + ".join(f"{t.split('-')[1] if '-' in t else t}: tp{tp} pp{pp}"
                            for t, tp, pp in zip(types, self.tps, self.pps))
        extra = [f"mb{self.micro_batch}", self.recompute]
        if self.sequence_parallel:
            extra.append("sp")
        if self.sharding != "none":
            extra.append(self.sharding)
        extra.append(self.schedule)
        return f"dp{self.dp} [{groups}] " + " ".join(extra) + f" layers {','.join(map(str, self.stage_layers))}"


@dataclass(frozen=True)
class HeteroEval:
    config: HeteroConfig
    prediction: Prediction
    parallel: ParallelConfig | None  # the Plan-file form when tp is uniform


def _type_runs(cluster: Cluster):
    """(node type, GPUs) per contiguous run of one type in rank order."""
    runs: list[list] = []
    for g in cluster.groups:
        n = g.n_nodes * g.node.gpus_per_node
        if runs and runs[-1][0].name == g.node.name:
            runs[-1][1] += n
        else:
            runs.append([g.node, n])
    return [(node, n) for node, n in runs]


def hetero_parallel(cfg: HeteroConfig, global_batch: int, seq_len: int, precision: str) -> ParallelConfig:
    """The plan of ``cfg`` as a :class:`ParallelConfig` (a tp per stage where they differ)."""
    tp = max(cfg.tps)
    pp = sum(cfg.pps)
    return ParallelConfig(tp=tp, pp=pp, dp=cfg.dp, micro_batch=cfg.micro_batch, global_batch=global_batch,
                          seq_len=seq_len, recompute=cfg.recompute, sharding=cfg.sharding,
                          sequence_parallel=cfg.sequence_parallel and tp > 1, precision=precision,
                          schedule=cfg.schedule if pp > 1 else "1f1b", stage_layers=cfg.stage_layers,
                          stage_tp=cfg.stage_tp)


def evaluate(model: ModelSpec, cluster: Cluster, cfg: HeteroConfig, seq: int, precision: str,
             gbs: int, runtime: Runtime | None = None) -> Prediction:
    """Predict one heterogeneous plan with the one assembler (:func:`planner.cost.step.predict`)."""
    return predict(model, cluster, hetero_parallel(cfg, gbs, seq, precision), runtime, timeline=False)


def _cut(model, cluster, cfg, seq, precision, gbs, runtime, costs) -> tuple[int, ...] | None:
    """Chain-DP layers per stage with each stage's own per-layer time and memory limit."""
    runs = _type_runs(cluster)
    pp = sum(cfg.pps)
    stage_type = [i for i, n in enumerate(cfg.pps) for _ in range(n)]
    m = gbs // (cfg.dp * cfg.micro_batch)
    L = model.n_layers
    w_b, g_b, o_b = state_bytes_per_param(precision)
    sharding = runtime.priced_sharding(cfg.sharding, pp)
    w_div, g_div, o_div = shard_divisors(sharding, cfg.dp)  # cp is 1 on mixed clusters
    state = w_b / w_div + g_b / g_div + o_b / o_div
    times, mems, limits = [], [], []
    first = last = None
    for k in range(pp):
        node = runs[stage_type[k]][0]
        if node.name not in costs:
            costs[node.name] = Costs(model, node, cluster.world_size, seq, precision, runtime)
        c = costs[node.name]
        tp = cfg.tps[stage_type[k]]
        lc = c.layer(tp, 1, cfg.micro_batch, cfg.recompute, cfg.sequence_parallel and tp > 1)
        flight = m if cfg.schedule == "gpipe" else min(pp - k, m)
        times.append([lc.f + lc.bi + lc.w] * L)
        mems.append([c.layer_params / tp * state + lc.layer_act * flight] * L)
        dev = node.device
        limits.append((dev.hbm_bytes - dev.reserved_bytes) / (1 + dev.fragmentation_fraction) - lc.layer_act_full)
        if k == 0:
            first = (lc.emb_f + lc.emb_b, c.embedding_params / tp * state)
        if k == pp - 1:
            head_p = c.head_params if (model.tied_embeddings and pp > 1) else c.head_params_untied
            fp32_loss = c.stack.executor or c.rt.fp32_cross_entropy
            logits = logits_bytes_per_token(model, tp, precision, fp32_loss) * cfg.micro_batch * seq
            last = (lc.head_f + lc.head_bi + lc.head_w, head_p / tp * state + logits)
    cut = partition_chain(times, mems, pp, limits, first_extra=first, last_extra=last)
    return tuple(cut.layers_per_stage) if isinstance(cut, StageCut) else None


def _balanced(n: int, k: int) -> tuple[int, ...]:
    base, extra = divmod(n, k)
    return tuple(base + (1 if i < extra else 0) for i in range(k))


def _bound_s(model: ModelSpec, cluster: Cluster, cfg: HeteroConfig, seq: int, precision: str, gbs: int,
             runtime: Runtime, costs: dict) -> float:
    """A lower bound of every layer split's step time for ``cfg``: each rank is busy ``m`` times
    its stage's per-micro-batch work (the same per-block costs :func:`planner.cost.step.predict`
    adds up, :class:`planner.search.Costs`), and the best any split can do is the continuous
    relaxation of the chain cut: the least ``T`` with ``sum_k (T - e_k) / t_k >= L`` (stage k's
    per-layer time t_k, its embedding / head extra e_k)."""
    runs = _type_runs(cluster)
    pp = sum(cfg.pps)
    m = gbs // (cfg.dp * cfg.micro_batch)
    per_layer, extra = [], []
    stage_type = [i for i, n in enumerate(cfg.pps) for _ in range(n)]
    for k in range(pp):
        node = runs[stage_type[k]][0]
        if node.name not in costs:
            costs[node.name] = Costs(model, node, cluster.world_size, seq, precision, runtime)
        tp = cfg.tps[stage_type[k]]
        lc = costs[node.name].layer(tp, 1, cfg.micro_batch, cfg.recompute, cfg.sequence_parallel and tp > 1)
        per_layer.append(lc.f + lc.bi + lc.w)
        extra.append((lc.emb_f + lc.emb_b if k == 0 else 0.0) + (lc.head_f + lc.head_bi + lc.head_w if k == pp - 1 else 0.0))
    # the water level T with sum over stages below it of (T - e_k) / t_k = L
    active = list(range(pp))
    while True:
        level = ((model.n_layers + sum(extra[k] / per_layer[k] for k in active))
                 / sum(1.0 / per_layer[k] for k in active))
        above = [k for k in active if extra[k] >= level]
        if not above:
            return m * level * (1 - 1e-9)
        active = [k for k in active if extra[k] < level]


def _space(model: ModelSpec, runs, global_batch: int, fx: dict, reject) -> tuple[list[HeteroConfig], int]:
    """Every candidate (per node type its tp, one dp, micro-batch, recompute, sharding, sequence
    parallel, schedule), the impossible ones counted by ``reject``; and the total."""
    gpus = [n for _, n in runs]
    mbs = [fx["micro_batch"]] if "micro_batch" in fx else [d for d in (1, 2, 4) if global_batch % d == 0]
    rcs = [fx["recompute"]] if "recompute" in fx else ["none", "selective", "full"]
    # zero1 needs less memory than none at nearly the same time; sequence parallel is never worse
    # in memory (Korthikanti et al. 2022) -- the dominated options are left out here
    shs = [fx["sharding"]] if "sharding" in fx else ["zero1", "zero2"]
    sps = [fx["sequence_parallel"]] if "sequence_parallel" in fx else [True]
    scheds = [fx["schedule"]] if "schedule" in fx else ["1f1b"]
    require(all(s != "interleaved" for s in scheds), "fix", "interleaving is not searched on heterogeneous clusters")
    tp_opts = []
    for node, _ in runs:
        tps = [t for t in divisors(node.gpus_per_node)
               if model.n_heads % t == 0 and model.ffn_hidden_size % t == 0
               and (model.n_kv_heads % t == 0 or t % model.n_kv_heads == 0)]
        tp_opts.append([t for t in tps if t == fx["tp"]] if "tp" in fx else tps)
    n_sub = len(mbs) * len(rcs) * len(shs) * len(sps) * len(scheds)
    total, out = 0, []
    for dp in ([fx["dp"]] if "dp" in fx else divisors(math.gcd(*gpus))):
        for tps in itertools.product(*tp_opts):
            pps = tuple(g // (dp * t) if g % (dp * t) == 0 else 0 for g, t in zip(gpus, tps))
            total += n_sub
            if 0 in pps:
                reject(Rejected("not_divisible", "a node type's GPUs not divisible by dp*tp"), n_sub)
            elif "pp" in fx and sum(pps) != fx["pp"]:
                reject(Rejected("not_divisible", "pp differs from --fix pp"), n_sub)
            elif sum(pps) > model.n_layers:
                reject(Rejected("too_many_stages", "pp exceeds the layers"), n_sub)
            elif global_batch % dp:
                reject(Rejected("not_divisible", "dp does not divide the global batch"), n_sub)
            else:
                for mb, rc, sh, sp, sched in itertools.product(mbs, rcs, shs, sps, scheds):
                    if global_batch % (dp * mb):
                        reject(Rejected("not_divisible", "dp*micro-batch does not divide the global batch"))
                    elif sh != "none" and dp == 1:
                        reject(Rejected("redundant", "ZeRO with dp=1"))
                    elif sum(pps) == 1 and sched != "1f1b":
                        reject(Rejected("redundant", "pipeline schedule with pp=1"))
                    else:
                        out.append(HeteroConfig(dp, tps, pps, mb, rc, sh, sp, sched, ()))
    return out, total


def search_hetero(model: ModelSpec, cluster, global_batch: int, seq_len: int | None = None,
                  precision: str = "bf16", fixed: dict | None = None, top_k: int = 10, progress=None,
                  runtime: Runtime | None = None, cluster_path: str = "", prune: bool = True) -> SearchResult:
    """Rank heterogeneous plans (uneven layers, tp per node type) and the homogeneous-split
    baseline; ``result.gain_text`` says how much the best beats the best homogeneous split.

    Best first: every candidate gets :func:`_bound_s`; candidates are priced in the order of
    their bounds (balanced split and chain-DP cut, each through :func:`evaluate`) until the
    bound reaches the K-th best step time (and, for one-tp candidates, the best balanced one's:
    the baseline), so the top K are those of pricing every candidate (``prune=False`` prices them
    all: the tests compare the two)."""
    t0 = time.perf_counter()
    cluster, runtime = bind_runtime(as_cluster(cluster), runtime)
    runs = _type_runs(cluster)
    seq = seq_len or model.seq_len
    fx = normalise_fixed(fixed or {})
    require(len({n.gpus_per_node for n, _ in runs}) == 1, "cluster",
            "node types with different GPUs per node are not supported yet")
    for node, _ in runs:
        if not node.device.supports(precision):
            node.device.peak_flops(precision)
    require("cp" not in fx or fx["cp"] == 1, "fix", "cp > 1 is not searched on heterogeneous clusters")
    L = model.n_layers
    rej: dict[str, RejectionCount] = {}

    def reject(r: Rejected, n: int = 1) -> None:
        rej.setdefault(r.reason, RejectionCount(r.reason)).add(r, n)

    space, total = _space(model, runs, global_batch, fx, reject)
    costs: dict = {}
    order = sorted(((_bound_s(model, cluster, cfg, seq, precision, global_batch, runtime, costs), i, cfg)
                    for i, cfg in enumerate(space)), key=lambda x: x[:2])
    evaluated = 0
    results: list[tuple[float, int, HeteroEval]] = []
    baseline: HeteroEval | None = None
    closest = None
    for n_done, (bound, index, cfg) in enumerate(order):
        if progress and n_done % 16 == 0:
            progress(n_done / max(1, len(order)))
        kth = results[top_k - 1][0] if len(results) >= top_k else math.inf
        need_top = bound < kth or not prune
        need_base = cfg.uniform_tp and (baseline is None or bound < baseline.prediction.step_time_s or not prune)
        if not need_top and not need_base:
            reject(Rejected("bound", "lower bound above the K-th best"))
            continue
        pp = sum(cfg.pps)
        bal = _balanced(L, pp)
        splits = [bal]
        cut = _cut(model, cluster, cfg, seq, precision, global_batch, runtime, costs) if need_top and pp > 1 else None
        if cut and cut != bal:
            splits.append(cut)
        best_here = None
        for layers in splits:
            c2 = dataclasses.replace(cfg, stage_layers=layers)
            par = hetero_parallel(c2, global_batch, seq, precision)
            mem = peak_memory(model, cluster, par, runtime)  # the assembler's memory, before its time
            if not mem.fits:
                if closest is None or mem.peak_bytes / mem.hbm_bytes < closest[0]:
                    closest = (mem.peak_bytes / mem.hbm_bytes, c2, par)
                continue
            pred = predict(model, cluster, par, runtime, timeline=False)
            evaluated += 1
            ev = HeteroEval(c2, pred, dataclasses.replace(par, stage_layers=() if layers == bal else layers))
            if layers == bal and c2.uniform_tp and (baseline is None or pred.step_time_s < baseline.prediction.step_time_s):
                baseline = ev
            if best_here is None or pred.step_time_s < best_here.prediction.step_time_s:
                best_here = ev
        if best_here is None:
            reject(Rejected("out_of_memory", "", mem.peak_bytes, mem.rank))
        elif need_top:
            mine = RankedPlan(best_here.parallel, best_here.prediction, math.nan)
            twin = next((i for i, (_, _, ev) in enumerate(results)
                         if same_plan_but_storage(RankedPlan(ev.parallel, ev.prediction, math.nan), mine)), None)
            if twin is None:
                results.append((best_here.prediction.step_time_s, index, best_here))
                results.sort(key=lambda x: x[:2])
            else:  # another ZeRO stage at the same speed: one row, the leaner one
                reject(Rejected("redundant", "same step time as a listed plan, more memory"))
                if best_here.prediction.peak_memory_bytes < results[twin][2].prediction.peak_memory_bytes:
                    results[twin] = (results[twin][0], results[twin][1], best_here)
        else:
            reject(Rejected("bound", "lower bound above the K-th best"))
    types = tuple(n.name for n, _ in runs)
    ranked = [RankedPlan(ev.parallel, ev.prediction, math.nan, ev.config.label(types)) for _, _, ev in results[:top_k]]
    if len(results) > top_k:
        reject(Rejected("bound", "ranked below the top K"), len(results) - top_k)
    res = HeteroResult(model=model, cluster=cluster, hardware=cluster_path or cluster.name, global_batch=global_batch,
                       ranked=ranked, rejections=rej, total_candidates=total, evaluated=evaluated,
                       bounded=len(order), elapsed_s=time.perf_counter() - t0, closest=None, fixed=fx)
    res.entries = [ev for _, _, ev in results[:top_k]]
    res.baseline = baseline
    if closest is not None and not ranked:
        _, cfg, par = closest
        res.closest = RankedPlan(par, predict(model, cluster, par, runtime), math.nan, cfg.label(types))
    if ranked and baseline is not None:
        best = res.entries[0]
        gain = baseline.prediction.step_time_s / best.prediction.step_time_s - 1
        res.gain = gain
        res.gain_text = (f"Gain over the best homogeneous split (one tp, equal layers per stage: "
                         f"{baseline.config.label(types)}, {baseline.prediction.step_time_s:.3f} s/step): "
                         f"{100 * gain:.1f}% faster ({best.config.label(types)}).")
    return res


class HeteroResult(SearchResult):
    """SearchResult plus ``entries`` (HeteroEval per ranked plan), ``baseline`` (best homogeneous
    split) and ``gain`` / ``gain_text``. Every ranked plan is a Plan on the cluster file
    (``Plan.cluster``), its tp per stage in ``ParallelConfig.stage_tp`` where the types differ."""

    entries: list
    baseline: HeteroEval | None = None
    gain: float = math.nan
    gain_text: str = ""

    def plan_for(self, entry: RankedPlan) -> Plan:
        gpn = self.cluster.groups[0].node.gpus_per_node
        return Plan(model=self.model, hardware="", cluster=self.hardware, n_nodes=self.cluster.n_nodes,
                    gpus_per_node=gpn, parallel=entry.parallel, prediction=entry.prediction.to_dict())

    def rows(self) -> list[dict]:
        rows = super().rows()
        types = tuple(n.name for n, _ in _type_runs(self.cluster))
        for row, e in zip(rows, self.entries):
            row["plan"] = e.config.label(types)
        return rows


__all__ = ["HeteroConfig", "HeteroEval", "HeteroResult", "evaluate", "hetero_parallel", "search_hetero"]
