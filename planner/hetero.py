"""Plans for clusters mixing node types (e.g. ``clusters/mixed-a100-h100.yaml``).

Following Metis (Um et al., ATC'24) and AMP (Li et al., NeurIPS'22): pipeline stages map to node
groups (each node type holds a contiguous run of stages, in the cluster file's group order, so no
stage mixes device types — planner.topology.place_groups' first criterion); every type may use
its own tensor-parallel degree (``pp_i = GPUs_i / (dp * tp_i)`` stages on type i, one dp for all);
the layers are cut by the exact chain DP (:func:`planner.partition.partition_chain`) with each
stage's own per-layer time (its device and tp) and memory limit, so faster devices get more layers.

Evaluation uses the cost model's pieces per device type (the same per-block times, exposed TP
communication, memory arithmetic and optimizer step as :func:`planner.cost.step.predict`, through
:class:`planner.search._Costs`) and combines the stages with
:func:`planner.schedule.estimate` (per-stage times); the pipeline send uses the slowest boundary
link, the cross-type one from the cluster fabric (:meth:`planner.cluster.FabricSpec.link_between`).
The baseline is the best *homogeneous split* on the same cluster: one tp everywhere and the
balanced layer split, evaluated the same way; the result reports the gain over it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from planner.cluster import Cluster, as_cluster
from planner.cost.comm import GroupShape, collective_time, p2p_time
from planner.cost.memory import StageMemory, shard_divisors, state_bytes_per_param
from planner.cost.runtime import DEFAULT_RUNTIME, Runtime
from planner.cost.step import OPTIMIZER_BYTES_PER_PARAM, Prediction, StagePrediction, TimeBreakdown
from planner.cost.flops import step_flops
from planner.errors import InputError, require
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan, strided_group_spread
from planner.schedule import estimate
from planner.search import (RankedPlan, Rejected, RejectionCount, SearchResult, _Costs, _divisors,
                            normalise_fixed)


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


def evaluate(model: ModelSpec, cluster: Cluster, cfg: HeteroConfig, seq: int, precision: str,
             gbs: int, runtime: Runtime = DEFAULT_RUNTIME, costs: dict | None = None,
             stage_layers: tuple[int, ...] | None = None) -> Prediction:
    """Predict one heterogeneous plan (see the module docstring)."""
    runs = _type_runs(cluster)
    costs = costs if costs is not None else {}
    world = cluster.world_size
    pp = sum(cfg.pps)
    layers = stage_layers or cfg.stage_layers
    m = gbs // (cfg.dp * cfg.micro_batch)
    stage_type = [i for i, n in enumerate(cfg.pps) for _ in range(n)]
    F, B, W, lcs = [], [], [], []
    for k in range(pp):
        node, _ = runs[stage_type[k]]
        key = node.name
        if key not in costs:
            costs[key] = _Costs(model, node, world, seq, precision, runtime)
        tp = cfg.tps[stage_type[k]]
        lc = costs[key].layer(tp, 1, cfg.micro_batch, cfg.recompute, cfg.sequence_parallel and tp > 1)
        lcs.append(lc)
        f, bi, w = layers[k] * lc.f, layers[k] * lc.bi, layers[k] * lc.w
        if k == 0:
            f, bi = f + lc.emb_f, bi + lc.emb_b
        if k == pp - 1:
            f, bi, w = f + lc.head_f, bi + lc.head_bi, w + lc.head_w
        F.append(f)
        B.append(bi)
        W.append(w)
    # pipeline send: the slowest boundary (cross-type through the fabric link)
    p2p = 0.0
    for k in range(pp - 1):
        a, b = runs[stage_type[k]][0], runs[stage_type[k + 1]][0]
        size = lcs[k].act_bytes / min(cfg.tps[stage_type[k]], cfg.tps[stage_type[k + 1]])
        if a.name == b.name:
            t = p2p_time(size, True, a)
        else:
            link = cluster.fabric.link_between(a, b)
            t = p2p_time(size, True, dataclasses.replace(a, inter_node=link))
        p2p = max(p2p, t)
    if cfg.schedule == "zb":
        pipe = estimate("zb", pp, m, 1, F, B, W, p2p)
    else:
        pipe = estimate(cfg.schedule, pp, m, 1, F, [x + y for x, y in zip(B, W)], None, p2p)
    # memory, dp reduction, optimizer per stage on its own device
    w_b, g_b, o_b = state_bytes_per_param(precision)
    w_div, g_div, o_div = shard_divisors(cfg.sharding, cfg.dp)
    per_stage, dp_exposed, opt_s = [], 0.0, 0.0
    peak_ratio, peak_mem, hbm_at_peak = -1.0, None, 0.0
    for k in range(pp):
        node, _ = runs[stage_type[k]]
        c = costs[node.name]
        tp = cfg.tps[stage_type[k]]
        params = layers[k] * c.layer_params
        if k == 0:
            params += c.embedding_params
        if k == pp - 1:
            params += c.head_params if (model.tied_embeddings and pp > 1) else c.head_params_untied
        params /= tp
        lc = lcs[k]
        flight = pipe.peak_in_flight[k]
        act = flight * layers[k] * lc.layer_act + lc.layer_act_full
        logits = (4 + c.bpe) * cfg.micro_batch * seq * model.vocab_size / tp if k == pp - 1 else 0.0
        weights = params * w_b / w_div + (2 * c.layer_params / tp * w_b if w_div > 1 else 0.0)
        grads, opt = params * g_b / g_div, params * o_b / o_div
        tensors = weights + grads + opt + act + logits
        dev = node.device
        reserved = dev.reserved_bytes + dev.fragmentation_fraction * tensors
        mem = StageMemory(weights, grads, opt, act, logits, reserved)
        per_stage.append(StagePrediction(k, layers[k], pipe.busy_s[k], mem.total_bytes, mem))
        ratio = mem.total_bytes / dev.hbm_bytes
        if ratio > peak_ratio:
            peak_ratio, peak_mem, hbm_at_peak = ratio, mem, dev.hbm_bytes
        if cfg.dp > 1:
            g = GroupShape(cfg.dp, *strided_group_spread(cfg.dp, tp * 1, node.gpus_per_node))
            grad_bytes = params * (2.0 if precision in ("fp16", "fp8") else 4.0)
            if cfg.sharding == "none":
                red, gather = collective_time("all_reduce", grad_bytes, g, node), 0.0
            else:
                red = collective_time("reduce_scatter", grad_bytes, g, node)
                gather = collective_time("all_gather", params * c.w_bytes, g, node)
            window = (B[k] + W[k]) if runtime.overlap_grad_reduce else 0.0
            dp_exposed = max(dp_exposed, max(0.0, red - window) + (0.0 if runtime.overlap_param_gather else gather))
        opt_s = max(opt_s, c.rates.memory(params / o_div * OPTIMIZER_BYTES_PER_PARAM, 2))
    step = pipe.makespan_s + dp_exposed + opt_s
    model_flops, hw_flops = step_flops(model, gbs, seq, cfg.recompute)
    peak = sum(costs[runs[stage_type[k]][0].name].rates.peak_flops * cfg.dp * cfg.tps[stage_type[k]]
               for k in range(pp)) / world
    crit = max(range(pp), key=lambda r: pipe.busy_s[r])
    tokens = gbs * seq
    time_bd = TimeBreakdown(forward_s=m * F[crit], backward_s=m * (B[crit] + W[crit]), recompute_s=0.0,
                            optimizer_s=opt_s, tp_s=0.0, cp_s=0.0, dp_s=dp_exposed, pp_s=0.0,
                            bubble_s=max(0.0, pipe.makespan_s - pipe.busy_s[crit]))
    return Prediction(step_time_s=step, tokens_per_s=tokens / step, tokens_per_s_per_gpu=tokens / step / world,
                      model_tflops_per_gpu=model_flops / step / world / 1e12,
                      hardware_tflops_per_gpu=hw_flops / step / world / 1e12,
                      mfu=model_flops / step / world / peak, hfu=hw_flops / step / world / peak,
                      peak_memory_bytes=peak_mem.total_bytes, fits=bool(peak_ratio <= 1.0),
                      hbm_bytes=hbm_at_peak, per_stage=tuple(per_stage), time=time_bd, memory=peak_mem,
                      num_micro_batches=m, runtime=runtime)


def _cut(model, cluster, cfg, seq, precision, gbs, runtime, costs) -> tuple[int, ...] | None:
    """Chain-DP layers per stage with each stage's own per-layer time and memory limit."""
    from planner.partition import StageCut, partition_chain

    runs = _type_runs(cluster)
    pp = sum(cfg.pps)
    stage_type = [i for i, n in enumerate(cfg.pps) for _ in range(n)]
    m = gbs // (cfg.dp * cfg.micro_batch)
    L = model.n_layers
    w_b, g_b, o_b = state_bytes_per_param(precision)
    w_div, g_div, o_div = shard_divisors(cfg.sharding, cfg.dp)
    state = w_b / w_div + g_b / g_div + o_b / o_div
    times, mems, limits = [], [], []
    first = last = None
    for k in range(pp):
        node = runs[stage_type[k]][0]
        c = costs.setdefault(node.name, _Costs(model, node, cluster.world_size, seq, precision, runtime))
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
            logits = (4 + c.bpe) * cfg.micro_batch * seq * model.vocab_size / tp
            last = (lc.head_f + lc.head_bi + lc.head_w, head_p / tp * state + logits)
    cut = partition_chain(times, mems, pp, limits, first_extra=first, last_extra=last)
    return tuple(cut.layers_per_stage) if isinstance(cut, StageCut) else None


def _balanced(n: int, k: int) -> tuple[int, ...]:
    base, extra = divmod(n, k)
    return tuple(base + (1 if i < extra else 0) for i in range(k))


def search_hetero(model: ModelSpec, cluster, global_batch: int, seq_len: int | None = None,
                  precision: str = "bf16", fixed: dict | None = None, top_k: int = 10, progress=None,
                  runtime: Runtime = DEFAULT_RUNTIME, cluster_path: str = "") -> SearchResult:
    """Rank heterogeneous plans (uneven layers, tp per node type) and the homogeneous-split
    baseline; ``result.gain_text`` says how much the best beats the best homogeneous split."""
    t0 = time.perf_counter()
    cluster = as_cluster(cluster)
    runs = _type_runs(cluster)
    seq = seq_len or model.seq_len
    fx = normalise_fixed(fixed or {})
    gpn = {n.gpus_per_node for n, _ in runs}
    require(len(gpn) == 1, "cluster", "node types with different GPUs per node are not supported yet")
    for node, _ in runs:
        if not node.device.supports(precision):
            node.device.peak_flops(precision)
    require("cp" not in fx or fx["cp"] == 1, "fix", "cp > 1 is not searched on heterogeneous clusters")
    L = model.n_layers
    rej: dict[str, RejectionCount] = {}

    def reject(r: Rejected, n: int = 1) -> None:
        rej.setdefault(r.reason, RejectionCount(r.reason)).add(r, n)

    costs: dict = {}
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
        tps = [t for t in _divisors(node.gpus_per_node)
               if model.n_heads % t == 0 and model.ffn_hidden_size % t == 0
               and (model.n_kv_heads % t == 0 or t % model.n_kv_heads == 0)]
        if "tp" in fx:
            tps = [t for t in tps if t == fx["tp"]]
        tp_opts.append(tps)
    import itertools

    total = evaluated = 0
    results: list[tuple[float, HeteroEval]] = []
    baseline: HeteroEval | None = None
    closest = None
    dps = [fx["dp"]] if "dp" in fx else _divisors(math.gcd(*gpus))
    combos = []
    for dp in dps:
        for tps in itertools.product(*tp_opts):
            pps = tuple(g // (dp * t) if g % (dp * t) == 0 else 0 for g, t in zip(gpus, tps))
            n_sub = len(mbs) * len(rcs) * len(shs) * len(sps) * len(scheds)
            total += n_sub
            if 0 in pps:
                reject(Rejected("not_divisible", "a node type's GPUs not divisible by dp*tp"), n_sub)
                continue
            if "pp" in fx and sum(pps) != fx["pp"]:
                reject(Rejected("not_divisible", "pp differs from --fix pp"), n_sub)
                continue
            if sum(pps) > L:
                reject(Rejected("too_many_stages", "pp exceeds the layers"), n_sub)
                continue
            if global_batch % dp:
                reject(Rejected("not_divisible", "dp does not divide the global batch"), n_sub)
                continue
            combos.append((dp, tps, pps))
    for i, (dp, tps, pps) in enumerate(combos):
        if progress:
            progress(i / max(1, len(combos)))
        for mb, rc, sh, sp, sched in itertools.product(mbs, rcs, shs, sps, scheds):
            if global_batch % (dp * mb):
                reject(Rejected("not_divisible", "dp*micro-batch does not divide the global batch"))
                continue
            if sh != "none" and dp == 1:
                reject(Rejected("redundant", "ZeRO with dp=1"))
                continue
            if sum(pps) == 1 and sched != "1f1b":
                reject(Rejected("redundant", "pipeline schedule with pp=1"))
                continue
            cfg = HeteroConfig(dp, tps, pps, mb, rc, sh, sp, sched, ())
            pp = sum(pps)
            bal = _balanced(L, pp)
            cands = [bal]
            cut = _cut(model, cluster, cfg, seq, precision, global_batch, runtime, costs) if pp > 1 else None
            if cut and cut != bal:
                cands.append(cut)
            best_here = None
            for layers in cands:
                c2 = dataclasses.replace(cfg, stage_layers=layers)
                pred = evaluate(model, cluster, c2, seq, precision, global_batch, runtime, costs)
                evaluated += 1
                if not pred.fits:
                    if closest is None or pred.peak_memory_bytes / pred.hbm_bytes < closest[0]:
                        closest = (pred.peak_memory_bytes / pred.hbm_bytes, c2, pred)
                    continue
                par = None
                if c2.uniform_tp:
                    par = ParallelConfig(tp=tps[0], pp=pp, dp=dp, micro_batch=mb, global_batch=global_batch,
                                         seq_len=seq, recompute=rc, sharding=sh,
                                         sequence_parallel=sp and tps[0] > 1, precision=precision,
                                         schedule=sched if pp > 1 else "1f1b",
                                         stage_layers=layers if layers != bal else ())
                ev = HeteroEval(c2, pred, par)
                if layers == bal and c2.uniform_tp and (baseline is None or pred.step_time_s < baseline.prediction.step_time_s):
                    baseline = ev
                if best_here is None or pred.step_time_s < best_here.prediction.step_time_s:
                    best_here = ev
            if best_here is None:
                stage = max(pred.per_stage, key=lambda s: s.memory_bytes / 1).stage
                reject(Rejected("out_of_memory", "", pred.peak_memory_bytes, stage))
                continue
            results.append((best_here.prediction.step_time_s, best_here))
    results.sort(key=lambda x: x[0])
    types = tuple(n.name for n, _ in runs)
    ranked = []
    for _, ev in results[:top_k]:
        note = ev.config.label(types)
        ranked.append(RankedPlan(ev.parallel if ev.parallel is not None else _placeholder(ev, global_batch, seq, precision),
                                 ev.prediction, math.nan, note))
    if len(results) > top_k:
        reject(Rejected("bound", "ranked below the top K"), len(results) - top_k)
    res = HeteroResult(model=model, cluster=cluster, hardware=cluster_path or cluster.name, global_batch=global_batch,
                       ranked=ranked, rejections=rej, total_candidates=total, evaluated=evaluated, bounded=0,
                       elapsed_s=time.perf_counter() - t0, closest=None, fixed=fx)
    res.entries = [ev for _, ev in results[:top_k]]
    res.baseline = baseline
    if closest is not None and not ranked:
        res.closest = RankedPlan(_placeholder(HeteroEval(closest[1], closest[2], None), global_batch, seq, precision),
                                 closest[2], math.nan, closest[1].label(types))
    if ranked and baseline is not None:
        best = res.entries[0]
        gain = baseline.prediction.step_time_s / best.prediction.step_time_s - 1
        res.gain = gain
        res.gain_text = (f"Gain over the best homogeneous split (one tp, equal layers per stage: "
                         f"{baseline.config.label(types)}, {baseline.prediction.step_time_s:.3f} s/step): "
                         f"{100 * gain:.1f}% faster ({best.config.label(types)}).")
    return res


def _placeholder(ev: HeteroEval, gbs, seq, precision) -> ParallelConfig:
    """A ParallelConfig standing for a per-type-tp plan in tables (tp = the first group's)."""
    c = ev.config
    world_tp = c.tps[0]
    pp = sum(c.pps)
    return ParallelConfig(tp=world_tp, pp=pp, dp=c.dp, micro_batch=c.micro_batch, global_batch=gbs, seq_len=seq,
                          recompute=c.recompute, sharding=c.sharding,
                          sequence_parallel=c.sequence_parallel and world_tp > 1, precision=precision,
                          schedule=c.schedule if pp > 1 else "1f1b", stage_layers=c.stage_layers)


class HeteroResult(SearchResult):
    """SearchResult plus ``entries`` (HeteroEval per ranked plan), ``baseline`` (best homogeneous
    split) and ``gain`` / ``gain_text``. Plans with one tp everywhere become Plan files whose
    ``hardware`` is the cluster file path; per-type-tp plans are listed but not written."""

    entries: list
    baseline: HeteroEval | None = None
    gain: float = math.nan
    gain_text: str = ""

    def plan_for(self, entry: RankedPlan) -> Plan:
        gpn = self.cluster.groups[0].node.gpus_per_node
        return Plan(model=self.model, hardware=self.hardware, n_nodes=self.cluster.n_nodes,
                           gpus_per_node=gpn, parallel=entry.parallel, prediction=entry.prediction.to_dict())

    @property
    def best_plans(self) -> list[Plan]:
        return [self.plan_for(r) for r, e in zip(self.ranked, self.entries) if e.parallel is not None]

    def rows(self) -> list[dict]:
        from planner.search import ranked_row

        rows = [ranked_row(i + 1, r, self.plan_for(r).id if e.parallel is not None else "-")
                for i, (r, e) in enumerate(zip(self.ranked, self.entries))]
        for row, e in zip(rows, self.entries):
            row["plan"] = e.config.label(tuple(n.name for n, _ in _type_runs(self.cluster)))
            row["note"] = "" if e.parallel is not None else "tp differs per node type (not a Plan file yet)"
        return rows


def predict_hetero_plan(plan: Plan, runtime: Runtime = DEFAULT_RUNTIME) -> Prediction:
    """Predict a Plan whose ``hardware`` is a cluster file (uniform tp, its stage_layers)."""
    from planner.cluster import load_cluster

    cluster = load_cluster(plan.hardware)
    P = plan.parallel
    runs = _type_runs(cluster)
    per_type = []
    for node, n in runs:
        if n % (P.dp * P.tp):
            raise InputError("plan.parallel", f"{node.name}: {n} GPUs not divisible by dp*tp = {P.dp * P.tp}")
        per_type.append(n // (P.dp * P.tp))
    require(sum(per_type) == P.pp, "plan.parallel.pp", f"the cluster gives {sum(per_type)} stages, plan says {P.pp}")
    cfg = HeteroConfig(P.dp, tuple(P.tp for _ in runs), tuple(per_type), P.micro_batch, P.recompute,
                       "zero3" if P.sharding == "fsdp" else P.sharding, P.sequence_parallel, P.schedule,
                       tuple(P.layers_per_stage(plan.model.n_layers)))
    return evaluate(plan.model, cluster, cfg, P.seq_len, P.precision, P.global_batch, runtime)


__all__ = ["HeteroConfig", "HeteroEval", "HeteroResult", "evaluate", "search_hetero", "predict_hetero_plan"]
