"""Plan search: enumerate, prune, evaluate, rank.

The space is every ``ParallelConfig`` of the cluster's world size: tp, cp, pp (dp the rest),
micro-batch (divisors of the global batch), recompute none/selective/full, sharding
none/zero1/zero2/zero3, sequence parallel on/off, schedule gpipe/1f1b/zb/interleaved (vpp 2..8)
and the layout order (tp then cp innermost, Megatron-LM's rule, Narayanan et al. SC'21 Sec. 3.3;
then either dp or pp inside the remaining node span: ``tp-cp-dp-pp`` or ``tp-cp-pp-dp``).

How it stays fast without losing the optimum (branch and bound, best first):

1. **Divisibility** (heads/ffn by tp, seq by cp and tp*cp, global batch by dp*micro-batch,
   micro-batches by pp for interleaving, stages <= layers) rejects whole subtrees in O(1); options
   that produce an identical plan (sequence parallel with tp=1, ZeRO with dp=1, a schedule or
   layout order with pp=1) are counted as ``redundant``.
2. **Memory** first (cheap): per "core" node (tp, cp, pp, dp, micro-batch, recompute, sp) the
   least memory any of its leaves can need (the best sharding, 1F1B's in-flight count) is
   computed from the cost model's own pieces (:func:`planner.cost.memory.stage_memory`,
   :func:`planner.cost.memory.layer_activation_bytes`); above the device memory the whole subtree
   is rejected as out of memory, with the stage and the bytes it needs.
3. **Lower bounds** on the step time: for every rank r of a pipeline, any schedule must run r
   forward stages before r can start and (except ZB, whose last tasks may be deferred weight
   gradients) r backward stages after it ends, and rank r itself is busy ``m * sum of its chunk
   times``:  ``T >= sum_{j<r} (F_j + B_j) + 2 r t_p2p + m * sum_{k on r} (F_k + B_k)`` — tight
   for 1F1B with equal stages ((m + p - 1)(F + B), Narayanan et al. SC'21 Sec. 2.2) — plus the
   optimizer step. ZB-H1 gets its own bound (:func:`_zb_bound`): the head above, plus the
   drain chain of the last micro-batch's input gradients down to rank 0 and the W the schedule
   must have run before it (within one W of Qi et al.'s (p-1)(F+B-W) bubble with equal stages). Per-layer F/B are the cost model's (:func:`planner.cost.compute.layer_times`
   plus the exposed TP / CP / ZeRO-3 communication as :func:`planner.cost.step.predict` adds
   it). Nodes are expanded in order of their bound; the full cost model
   (:func:`planner.cost.step.predict`) runs only on leaves whose bound is below the K-th best
   step time found so far, so the top K are exactly those of brute force over the same space.
   predict() runs with ``timeline=False`` (same numbers; the ranked plans get their task
   timeline afterwards) and planner.schedule memoises pipelines with identical stage times.
4. **Uneven stages**: for the top candidates with pp > 1 the exact chain DP
   (:func:`planner.partition.partition_chain`) re-cuts the layers with the cost model's per-layer
   times and memories (embedding and LM head as first/last-stage extras); the cut is kept when
   the cost model predicts it faster.

Every candidate lands in exactly one bucket: rejected (with a reason), pruned by the bound,
or evaluated; :class:`SearchResult` keeps the counts.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time
import types
from typing import Callable

from planner.cost.memory import logits_bytes_per_token, rank_layer_params, shard_divisors
from planner.cost.precision import state_bytes_per_param
from planner.cost.prediction import Prediction
from planner.cost.runtime import Runtime, bind_runtime
from planner.cost.step import TIMELINE_TASK_LIMIT, predict
from planner.errors import InputError, require
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig, PRECISIONS
from planner.search.branch_bound import BranchAndBound
from planner.search.costs import Costs, LayerCost
from planner.search.results import RankedPlan, SearchResult
from planner.search.space import ORDERS, candidate_space, layout_strides, normalise_fixed


REFINE_TOP = 5


def uneven_split(model: ModelSpec, cluster: ClusterSpec, P: ParallelConfig,
                 runtime: Runtime | None = None) -> tuple[int, ...] | None:
    """The exact chain-DP cut (planner.partition.partition_chain) of ``model``'s layers for
    ``P`` (vpp == 1), with the cost model's per-layer time and memory and the embedding / LM
    head as first / last stage extras; None when it equals the balanced split or fails."""
    from planner.partition import StageCut, partition_chain  # numpy on first use, not at start-up

    if P.pp == 1 or P.vpp != 1:
        return None
    cluster, runtime = bind_runtime(cluster, runtime)
    node = cluster.node
    costs = Costs(model, node, cluster.world_size, P.seq_len, P.precision, runtime, P.ep)
    lc = costs.layer(P.tp, P.cp, P.micro_batch, P.recompute, P.sequence_parallel)
    dp_stride, _ = layout_strides(P.order if P.order in ORDERS else ORDERS[0], P.tp, P.cp, P.pp, P.dp)
    pp, m, L = P.pp, P.num_micro_batches, model.n_layers
    sharding = runtime.priced_sharding(P.sharding, P.pp)
    w_div, g_div, o_div = shard_divisors(sharding, P.data_parallel_ranks)
    wb, gb, ob = state_bytes_per_param(P.precision)
    state = wb / w_div + gb / g_div + ob / o_div
    flight = [float(m) if P.schedule == "gpipe" else float(min(pp - k, m)) for k in range(pp)]

    def layer_terms(kind: ModelSpec, c: LayerCost) -> tuple[float, float, list[float]]:
        """(time, parameters per tp rank, memory per pipeline rank) of one block of ``kind``."""
        f, bi = c.f, c.bi
        if costs.fsdp_blocks(sharding, P.tp, P.data_parallel_ranks):
            zf, zb = costs.z3(c, P.tp, P.dp, dp_stride, P.recompute, sharding, block=kind, cp=P.cp)
            f, bi = f + zf, bi + zb
        params = rank_layer_params(kind, P.tp, P.ep, P.etp)
        return f + bi + c.w, params, [params * state + c.layer_act * flight[k] for k in range(pp)]

    kinds = ((model, lc),) + (((model.alt_block(), lc.dense),) if lc.dense else ())
    terms = [layer_terms(kind, c) for kind, c in kinds]  # the model's block, then its second kind (alt_block)
    per_block = [terms[-1] if model.is_alt_layer(i) else terms[0] for i in range(L)]
    mem = [[t[2][k] for t in per_block] for k in range(pp)]
    lp = max(t[1] for t in terms)
    dev = node.device
    reserved, frag = costs.stack.reserved_bytes(dev), costs.stack.fragmentation(dev)
    act_full = max(c.layer_act_full for _, c in kinds)
    limits = [(dev.hbm_bytes - reserved) / (1 + frag) - act_full - (2 * lp * wb if w_div > 1 else 0.0)] * pp
    emb_p = model.embedding_params() / P.tp
    head_p = (model.head_params() + (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)) / P.tp
    # conservative: the logits are charged on top of the block working set (predict() takes the
    # larger of the two, planner.cost.memory.peak_transients)
    logits = (logits_bytes_per_token(model, P.tp, P.precision, costs.stack.executor or costs.rt.fp32_cross_entropy)
              * P.micro_batch * (P.seq_len / P.cp))
    cut = partition_chain([t[0] for t in per_block], mem, pp, limits,
                          first_extra=(lc.emb_f + lc.emb_b, emb_p * state),
                          last_extra=(lc.head_f + lc.head_bi + lc.head_w, head_p * state + logits))
    if not isinstance(cut, StageCut):
        return None
    split = tuple(cut.layers_per_stage)
    if split == tuple(P.layers_per_stage(L)):
        return None
    return split


def refine_uneven(result_top: list[RankedPlan], model, cluster, runtime, n: int = REFINE_TOP) -> tuple[list[RankedPlan], int]:
    """Try the chain-DP cut on the first ``n`` plans; keep each where predict says faster."""
    out, calls = [], 0
    for i, e in enumerate(result_top):
        if i >= n or e.parallel.pp == 1 or e.parallel.vpp != 1:
            out.append(e)
            continue
        split = uneven_split(model, cluster, e.parallel, runtime)
        if split is None:
            out.append(e)
            continue
        P2 = dataclasses.replace(e.parallel, stage_layers=split)
        pred = predict(model, cluster, P2, runtime, timeline=False)
        calls += 1
        if pred.fits and pred.step_time_s < e.step_time_s:
            gain = 100 * (1 - pred.step_time_s / e.step_time_s)
            out.append(RankedPlan(P2, pred, e.lower_bound_s,
                                  f"uneven stages {','.join(map(str, split))} ({gain:.1f}% faster than balanced)"))
        else:
            out.append(e)
    out.sort(key=lambda e: e.step_time_s)
    return out, calls


def _timeline_tasks(P: ParallelConfig) -> int:
    """Tasks in the timeline predict() would simulate for ``P`` (planner.schedule.estimate:
    all m micro-batches up to 3*pp, else 3*pp)."""
    m = P.num_micro_batches
    m_sim = m if (P.pp == 1 or m <= 3 * P.pp) else 3 * P.pp
    kinds = 3 if (P.schedule == "zb" and P.pp > 1) else 2
    return kinds * P.pp * P.vpp * m_sim


def _with_timeline(e: RankedPlan, model: ModelSpec, cluster: ClusterSpec, runtime: Runtime) -> RankedPlan:
    """The search evaluates with ``predict(..., timeline=False)`` (same numbers, no task list);
    a ranked plan gets the task timeline predict() would attach (none above
    planner.cost.step.TIMELINE_TASK_LIMIT tasks, so then nothing is recomputed)."""
    if e.prediction.timeline or _timeline_tasks(e.parallel) > TIMELINE_TASK_LIMIT:
        return e
    return dataclasses.replace(e, prediction=predict(model, cluster, e.parallel, runtime))


def search(model: ModelSpec, cluster: ClusterSpec, global_batch: int, seq_len: int | None = None,
           precision: str = "bf16", fixed: dict | None = None, top_k: int = 10,
           progress: Callable[[float], None] | None = None, runtime: Runtime | None = None,
           hardware: str | None = None, refine: bool = True) -> SearchResult:
    """Search the full space (module docstring) for ``model`` on ``cluster`` (homogeneous; see
    :mod:`planner.search.hetero` for mixed clusters) and return the ``top_k`` fastest fitting plans.

    fixed: options held fixed, ``{"tp": 8, "recompute": "full", "sp": True, ...}`` (keys as
    ``--fix``: tp pp dp cp vpp mb recompute sharding sp schedule order). progress: called with
    a fraction in [0, 1] now and then. hardware: the profile name stored in the plans.
    """
    t0 = time.perf_counter()
    cluster, runtime = bind_runtime(cluster, runtime)
    require(isinstance(global_batch, int) and global_batch >= 1, "global_batch", "must be a positive integer")
    require(isinstance(top_k, int) and top_k >= 1, "top", "must be >= 1")
    require(precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
    require(cluster.is_homogeneous, "cluster", "has several node types: use planner.search.hetero.search_hetero")
    seq = seq_len or model.seq_len
    require(seq <= model.seq_len or model.position != "learned", "seq_len",
            f"{seq} exceeds the model's learned positions ({model.seq_len})")
    if not cluster.node.device.supports(precision):
        cluster.node.device.peak_flops(precision)
    fixed_n = normalise_fixed(fixed or {})
    s = BranchAndBound(model, cluster, global_batch, seq, precision, fixed_n, top_k, progress, runtime)
    s.run()
    top = s.top
    if refine and top:
        top, calls = refine_uneven(top, model, cluster, runtime)
        s.evaluated += calls
    top = [_with_timeline(e, model, cluster, runtime) for e in top]
    if progress:
        progress(1.0)
    closest = s.closest[1] if (s.closest and not top) else None
    return SearchResult(model=model, cluster=cluster, hardware=hardware or cluster.node.name,
                        global_batch=global_batch, ranked=top, rejections=s.rej, total_candidates=s.total,
                        evaluated=s.evaluated, bounded=s.bounded, elapsed_s=time.perf_counter() - t0,
                        closest=closest, fixed=fixed_n)


def brute_force(model: ModelSpec, cluster: ClusterSpec, global_batch: int, seq_len: int | None = None,
                precision: str = "bf16", fixed: dict | None = None,
                runtime: Runtime | None = None) -> list[tuple[ParallelConfig, Prediction]]:
    """Every valid candidate of the same space through predict() (for tests and small cases):
    fitting plans, fastest first."""
    seq = seq_len or model.seq_len
    cluster, runtime = bind_runtime(cluster, runtime)
    S = candidate_space(model, cluster.world_size, global_batch, normalise_fixed(fixed or {}))
    out = []
    world = cluster.world_size
    for tp in S.tp:
        for cp in S.cp:
            for pp in S.pp:
                if world % (tp * cp * pp) or tp > cluster.node.gpus_per_node:
                    continue
                dp = world // (tp * cp * pp)
                if S.dp is not None and dp not in S.dp:
                    continue
                for mb in S.mb:
                    for rc in S.rc:
                        for sp in S.sp:
                            if sp and tp == 1:
                                continue
                            for sh in S.sh:
                                if dp == 1 and sh != "none":
                                    continue
                                for sched, v in S.sched:
                                    if pp == 1 and (sched != "1f1b" or v > 1):
                                        continue
                                    for order, ep, etp in itertools.product(S.orders, S.ep, S.etp):
                                        if order != ORDERS[0] and (pp == 1 or dp == 1):
                                            continue
                                        if etp and tp == 1:  # the same plan as etp 0
                                            continue
                                        if runtime.refusal_of(sh, pp, dp, sched, cp, ep):
                                            continue
                                        try:
                                            P = ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=v, micro_batch=mb,
                                                               global_batch=global_batch, seq_len=seq, recompute=rc,
                                                               sharding=sh, sequence_parallel=sp, precision=precision,
                                                               schedule=sched, order=order, ep=ep, etp=etp)
                                            pred = predict(model, cluster, P, runtime)
                                        except InputError:
                                            continue
                                        if pred.fits:
                                            out.append((P, pred))
    out.sort(key=lambda x: x[1].step_time_s)
    return out


__all__ = ["search", "brute_force", "uneven_split", "refine_uneven"]


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`search`: ``from planner import search`` (the package, as
    Python resolves a subpackage's name) then ``search(model, cluster, ...)``."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
