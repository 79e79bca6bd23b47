"""Branch and bound over the space (:class:`BranchAndBound`): core nodes pruned by memory and a
lower bound, leaves priced by :func:`planner.cost.step.predict` best first (the package
docstring has the bounds)."""
from __future__ import annotations

import dataclasses
import heapq
import math
import time

from planner.cost import framework as fw
from planner.cost.data_parallel import dp_reduction_s, exposed_s
from planner.cost.memory import (executor_saved_logits_bytes_per_token, executor_untied_head_params,
                                 logits_bytes_per_token, peak_transients, shard_divisors)
from planner.cost.optimizer import optimizer_lower_bound_s
from planner.cost.precision import state_bytes_per_param
from planner.cost.step import predict
from planner.executor_rules import ties_embeddings
from planner.plan import ParallelConfig
from planner.search.costs import (Costs, LayerActivations, LayerCost, balanced_layers, core_shape, rank_layers, rank_layers_min,
                                  zb_bound)
from planner.search.results import RankedPlan, Rejected, RejectionCount, same_plan_but_storage, twin_note
from planner.search.space import ORDERS, candidate_space, layout_strides, leaf_set


@dataclasses.dataclass
class _EpPricing:
    """One expert layout's costs (expert-parallel degree, experts split by tp or whole: ``etp``
    0 or 1) and the search's memos under it."""

    ep: int
    etp: int
    costs: Costs
    maxparams: dict = dataclasses.field(default_factory=dict)
    rankparams: dict = dataclasses.field(default_factory=dict)
    reductions: dict = dataclasses.field(default_factory=dict)


class BranchAndBound:
    def __init__(self, model, cluster, gbs, seq, precision, fixed, top_k, progress, runtime):
        self.model, self.cluster, self.gbs, self.seq, self.prec = model, cluster, gbs, seq, precision
        self.k = top_k
        self.progress = progress
        self.rt = runtime
        self.node = cluster.node
        self.world = cluster.world_size
        self.gpn = self.node.gpus_per_node
        self.hbm = self.node.device.hbm_bytes
        self.ep, self.etp = 1, 0
        self.costs = Costs(model, self.node, self.world, seq, precision, runtime)
        self.space = candidate_space(model, self.world, gbs, fixed)
        self.rej: dict[str, RejectionCount] = {}
        self.total = 0
        self.evaluated = 0
        self.bounded = 0
        self.top: list[RankedPlan] = []
        self.closest: tuple[float, RankedPlan] | None = None
        self._seq = 0  # heap tie-break: first pushed, first popped
        self._leafsets: dict = {}
        self.n_leaf_per_core = len(self.space.sh) * len(self.space.sched) * len(self.space.orders)
        self._maxparams: dict = {}
        self._rankparams: dict = {}
        self._reductions: dict = {}
        self._kinds: dict = {}  # (dense, MoE) blocks per stage of the balanced split, by stage count
        self.state_bytes = state_bytes_per_param(precision)
        stack = self.costs.stack  # its fragmentation / overhead, as stage_memories() charges them
        self.frag = stack.fragmentation(self.node.device)
        self.reserved = stack.reserved_bytes(self.node.device)

    def reject(self, rej: Rejected, n: int) -> None:
        if n <= 0:
            return
        rc = self.rej.get(rej.reason)
        if rc is None:
            rc = self.rej[rej.reason] = RejectionCount(rej.reason)
        rc.add(rej, n)

    # --- leaf sets per (pp, dp, m) --------------------------------------------------------------
    def leafset(self, pp: int, dp: int, m: int):
        """Valid (sharding, schedule, vpp, order) for a core node, the others counted by reason
        (memoised: they depend on the expert layout only through ep > 1 and etp)."""
        key = (pp, dp, m, self.ep > 1, self.etp)
        hit = self._leafsets.get(key)
        if hit is None:
            hit = self._leafsets[key] = leaf_set(self.space, self.model.n_layers, self.rt, self.ep, pp, dp, m,
                                                 bool(self.etp))
        return hit

    # --- memory ---------------------------------------------------------------------------------
    def rank_params(self, tp: int, pp: int, layers_r: int, r: int) -> float:
        """Parameters held by pipeline rank ``r`` of ``pp`` with ``layers_r`` blocks, per tp rank."""
        key = (tp, pp, layers_r, r == 0, r == pp - 1)
        hit = self._rankparams.get(key)
        if hit is None:
            c = self.costs
            p = c.block_params(layers_r)
            if r == 0:
                p += c.embedding_params
            if r == pp - 1:
                p += c.head_params if (self.model.tied_embeddings and pp > 1) else c.head_params_untied
            hit = self._rankparams[key] = p / tp
        return hit

    def memory(self, lc: LayerActivations | LayerCost, tp: int, cp: int, pp: int, dp: int, mb: int, m: int, sh: str,
               sched: str, v: int, vs: tuple[int, ...] = ()) -> tuple[float, int]:
        """(peak bytes lower bound, its stage) over ranks 0 and pp-1: the arithmetic of
        planner.cost.memory.stage_memory (exact for non-interleaved schedules; interleaved is
        charged 1F1B's in-flight count, a lower bound)."""
        return self.least_memory(lc, tp, cp, pp, dp, mb, m, (sh,), sched, v, vs)

    def least_memory(self, lc: LayerActivations | LayerCost, tp: int, cp: int, pp: int, dp: int, mb: int, m: int,
                     shardings: tuple[str, ...], sched: str, v: int, vs: tuple[int, ...] = ()) -> tuple[float, int]:
        """The least :meth:`memory` over ``shardings``: the terms no sharding changes counted once."""
        mdl = self.model
        ends = rank_layers(mdl.n_layers, pp, v) if v else rank_layers_min(mdl.n_layers, pp, vs)
        w_b, g_b, o_b = self.state_bytes
        layer_act_full = lc.blocks(1, lambda c: c.layer_act_full)
        executor = self.costs.stack.executor
        ranks = []  # (rank, parameters, bytes no sharding changes, logits)
        r = 0
        for n_r in ends:
            params = self.rank_params(tp, pp, n_r, r)
            logits = 0.0
            if r == pp - 1:
                params += executor_untied_head_params(mdl, tp, pp, executor)
            if sched == "gpipe":
                flight = m
            elif sched == "zb" and executor:  # the executor's ZB holds graphs from F to W
                flight = fw.zb_in_flight(pp, m)[r]
            else:
                flight = min(pp - r, m)
            saved_loss = 0.0
            if r == pp - 1:
                tokens = mb * (self.seq / cp)
                logits = logits_bytes_per_token(mdl, tp, self.prec, executor or self.costs.rt.fp32_cross_entropy) * tokens
                saved_loss = max(0, flight - 1) * executor_saved_logits_bytes_per_token(mdl, tp, executor) * tokens
            ranks.append((r, params, flight * lc.blocks(n_r, lambda c: c.layer_act) + saved_loss, logits))
            r = pp - 1
        least = None
        for sh in shardings:
            w_div, g_div, o_div = shard_divisors(self.costs.rt.priced_sharding(sh, pp), dp * cp)
            per_param = w_b / w_div + g_b / g_div + o_b / o_div
            gathered = 2 * self.costs.block_params(1) / tp * w_b if w_div > 1 else 0.0
            best, stage = 0.0, 0
            for r, params, fixed, logits in ranks:
                tensors = params * per_param + fixed + sum(peak_transients(logits, gathered, layer_act_full))
                total = tensors * (1 + self.frag) + self.reserved
                if total > best:
                    best, stage = total, r
            if least is None or (best, stage) < least:
                least = (best, stage)
        return least

    # --- time bounds ----------------------------------------------------------------------------
    def max_rank_params(self, tp: int, pp: int, v: int) -> tuple[float, int]:
        """(largest parameter count of a pipeline rank, that rank) as predict() finds it."""
        key = (tp, pp, v)
        hit = self._maxparams.get(key)
        if hit is None:
            layers = balanced_layers(self.model.n_layers, pp * v)
            per = [self.rank_params(tp, pp, sum(layers[k] for k in range(r, pp * v, pp)), r) for r in range(pp)]
            best = max(per)
            hit = self._maxparams[key] = (best, per.index(best))
        return hit

    def optimizer_s(self, tp: int, pp: int, v: int, o_div: int) -> float:
        most, _ = self.max_rank_params(tp, pp, v)
        return optimizer_lower_bound_s(self.costs.rates, most / o_div, pp * v)

    def dp_exposed(self, tp: int, pp: int, dp: int, v: int, sh: str, dp_stride: int,
                   window_of_rank, cp: int = 1) -> float:
        """Exposed data-parallel gradient reduction (non-ZeRO-3) over the dp x cp group as
        predict() charges it (:mod:`planner.cost.data_parallel`; the reduction memoised per layout)."""
        if dp * cp == 1:
            return 0.0
        params, r_max = self.max_rank_params(tp, pp, v)
        params *= min(1.0, self.costs.dense_share)  # at most the rank's dense part over the whole dp group
        key = (tp, pp, dp, v, sh, dp_stride, cp)
        reduction = self._reductions.get(key)
        if reduction is None:
            c = self.costs
            tensors = fw.model_param_tensors(self.model, ties_embeddings(self.model, tp, pp))
            reduction = self._reductions[key] = dp_reduction_s(
                self.node, c.rates, c.dp_group(dp, dp_stride, cp, tp), precision=self.prec, sharding=sh, tp=tp, pp=pp,
                params=params, param_tensors=tensors, grad_bytes=c.rt.grad_bytes(self.prec))
        if not any(reduction):
            return 0.0
        return exposed_s(self.costs.rt, reduction, window_of_rank(r_max), self.costs.rates)

    def leaf_bound(self, lc: LayerCost, tp, cp, pp, dp, m, rc, sh, sched, v, order, memo: dict | None = None) -> float:
        """Below predict()'s step time of this leaf; ``memo`` (one per core node) keeps the
        pipeline part, which leaves differing only in a sharding without per-block gathers share."""
        dp_stride, pp_stride = layout_strides(order, tp, cp, pp, dp)
        sh = self.costs.rt.priced_sharding(sh, pp)
        z3 = self.costs.fsdp_blocks(sh, tp, dp * cp)
        if z3:
            lc = self._with_z3(lc, tp, dp, dp_stride, rc, sh, cp)
        p2p = self.costs.p2p(lc.act_bytes, tp, pp, pp_stride)
        key = None if z3 or memo is None else (sched, v, p2p)
        hit = memo.get(key) if key is not None else None
        if hit is None:
            hit = self._pipeline_bound(lc, pp, m, sched, v, p2p)
            if key is not None:
                memo[key] = hit
        best, B, W = hit
        n_vs = pp * v
        o_div = shard_divisors(sh, dp * cp)[2]

        def window(r: int) -> float:
            return sum(B[k] + W[k] for k in range(r, n_vs, pp))

        return best + self.optimizer_s(tp, pp, v, o_div) + self.dp_exposed(tp, pp, dp, v, sh, dp_stride, window, cp)

    def _pipeline_bound(self, lc: LayerCost, pp, m, sched, v, p2p) -> tuple[float, list[float], list[float]]:
        """(lower bound of the pipeline's makespan, per-stage B, per-stage W) of the balanced split."""
        n_vs = pp * v
        kinds = self._kinds.get(n_vs)
        if kinds is None:
            kinds = self._kinds[n_vs] = self.model.block_kinds(balanced_layers(self.model.n_layers, n_vs))
        F, B, W = lc.stage_blocks(kinds)
        F[0] += lc.emb_f
        B[0] += lc.emb_b
        F[-1] += lc.head_f
        B[-1] += lc.head_bi
        W[-1] += lc.head_w
        if pp > 1:  # the pipelining runtime, as _stage_times adds it
            F, B, W = self.costs.stack.pipeline_actions(F, B, W, self.costs.rates, sched)
        if sched == "zb":
            return zb_bound(F, B, W, m, p2p, pp), B, W
        best = 0.0
        pre = 0.0
        for r in range(pp):
            busy = m * sum(F[k] + B[k] + W[k] for k in range(r, n_vs, pp))
            t = pre + busy
            if t > best:
                best = t
            pre += F[r] + B[r] + W[r] + 2 * p2p
        return best, B, W

    def _with_z3(self, lc: LayerCost, tp, dp, dp_stride, rc, sh, cp: int = 1) -> LayerCost:
        """``lc`` (and its dense block's cost) with the exposed ZeRO-3 / FSDP gathers added."""
        zf, zb = self.costs.z3(lc, tp, dp, dp_stride, rc, sh, cp=cp)
        dense = lc.dense
        if dense is not None:
            dzf, dzb = self.costs.z3(dense, tp, dp, dp_stride, rc, sh, block=self.model.alt_block(), cp=cp)
            dense = dataclasses.replace(dense, f=dense.f + dzf, bi=dense.bi + dzb)
        return dataclasses.replace(lc, f=lc.f + zf, bi=lc.bi + zb, dense=dense)

    def core_bound(self, lc: LayerCost, tp, cp, pp, dp, m, info) -> float:
        """Below every leaf_bound of this core node: no ZeRO-3 / p2p / dp terms, the smallest
        pipeline fill over the node's vpp options, the best optimizer sharding."""
        emb = lc.emb_f + lc.emb_b
        head = lc.head_f + lc.head_bi + lc.head_w

        def per(c: LayerCost) -> float:
            return c.f + c.bi + c.w

        best = math.inf
        for n0, nl, pre_l in core_shape(self.model.n_layers, pp, info.vs):
            if pp == 1:
                t = m * (lc.blocks(n0, per) + emb + head)
            else:
                t0 = m * (lc.blocks(n0, per) + emb)
                tl = lc.blocks(pre_l, lambda c: c.f) + m * (lc.blocks(nl, per) + head)
                t = t0 if t0 > tl else tl
            if t < best:
                best = t
        o_min = info.o_min * cp if info.o_min > 1 else 1  # a sharded optimizer spans dp x cp
        return best + min(self.optimizer_s(tp, pp, v, o_min) for v in info.vs)

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Every expert-parallel degree's core nodes in one best-first heap (one for a dense
        model): the K-th best found under any degree prunes the nodes of all of them, so a
        leaf is priced only when its bound is below the K-th best of the whole space so far."""
        t_start = time.perf_counter()
        layouts = [(ep, etp) for ep in self.space.ep for etp in self.space.etp]
        progress, n = self.progress, len(layouts)
        dense_costs: dict = {}
        degrees: list[_EpPricing] = []
        heap: list = []
        for i, (ep, etp) in enumerate(layouts):
            degrees.append(_EpPricing(ep, etp, Costs(self.model, self.node, self.world, self.seq, self.prec, self.rt,
                                                     ep, dense_costs, etp)))
            self._enter(degrees[i])
            if progress:
                self.progress = lambda x, i=i: progress(0.5 * (i + x) / n)
            heap.extend(self._core_nodes(i))
        self.progress = progress
        self._best_first(heap, degrees)
        self.elapsed = time.perf_counter() - t_start

    def _enter(self, p: _EpPricing) -> None:
        """Price with expert-parallel degree ``p.ep`` (its costs and memos)."""
        self.ep, self.etp, self.costs = p.ep, p.etp, p.costs
        self._maxparams, self._rankparams, self._reductions = p.maxparams, p.rankparams, p.reductions

    def _core_nodes(self, degree: int) -> list:
        """Heap entries (bound, tie-break, 0, degree index, core node) of the current degree's core nodes
        that fit in memory; every other candidate counted with its reason."""
        mdl, S = self.model, self.space
        L = mdl.n_layers
        n_sub_core = len(S.rc) * len(S.sp) * self.n_leaf_per_core
        entries: list = []
        cores = []
        for tp in S.tp:
            for cp in S.cp:
                if self.world % (tp * cp):
                    continue
                for pp in S.pp:
                    if self.world % (tp * cp * pp):
                        continue
                    dp = self.world // (tp * cp * pp)
                    if S.dp is not None and dp not in S.dp:
                        continue
                    n_here = len(S.mb) * n_sub_core
                    self.total += n_here
                    r = None
                    if tp > self.gpn:
                        r = Rejected("tp_crosses_nodes", f"tp > {self.gpn} GPUs per node")
                    elif mdl.n_heads % tp or mdl.ffn_hidden_size % tp or not (
                            mdl.n_kv_heads % tp == 0 or tp % mdl.n_kv_heads == 0) or (
                            mdl.is_moe and mdl.expert_ffn % tp):
                        r = Rejected("not_divisible", "tp does not divide heads / kv heads / ffn")
                    elif self.etp and (tp == 1 or cp > 1):
                        r = (Rejected("redundant", "experts whole below tp with tp=1") if tp == 1 else
                             Rejected("unsupported", "experts whole below tp with context parallelism is not priced"))
                    elif (dp * tp if self.etp else dp) % self.ep:
                        r = Rejected("not_divisible", "ep does not divide dp (dp*tp with experts whole)")
                    elif self.seq % cp:
                        r = Rejected("not_divisible", "cp does not divide the sequence length")
                    elif cp > 1 and not self.rt.context_parallel:
                        r = Rejected("unsupported", f"the {self.rt.name} runtime has no context parallelism")
                    elif pp > L:
                        r = Rejected("too_many_stages", "pp exceeds the layers")
                    elif self.gbs % dp:
                        r = Rejected("not_divisible", "dp does not divide the global batch")
                    if r is not None:
                        self.reject(r, n_here)
                        continue
                    for mb in S.mb:
                        if self.gbs % (dp * mb):
                            self.reject(Rejected("not_divisible", "dp*micro-batch does not divide the global batch"),
                                        n_sub_core)
                            continue
                        m = self.gbs // (dp * mb)
                        leaves, rejected, info = self.leafset(pp, dp, m)
                        for sp in S.sp:
                            n_rc = len(S.rc) * self.n_leaf_per_core
                            if sp and tp == 1:
                                self.reject(Rejected("redundant", "sequence parallel with tp=1"), n_rc)
                                continue
                            if self.etp and not sp:
                                self.reject(Rejected("unsupported", "experts whole below tp need sequence parallelism"),
                                            n_rc)
                                continue
                            if sp and self.seq % (tp * cp):
                                self.reject(Rejected("not_divisible", "sequence parallel needs seq divisible by tp*cp"), n_rc)
                                continue
                            for rj, n in rejected:
                                self.reject(rj, n * len(S.rc))
                            if not leaves:
                                continue
                            for rc in S.rc:
                                cores.append((tp, cp, pp, dp, mb, m, sp, rc, leaves, info))
        n_cores = len(cores)
        for i, (tp, cp, pp, dp, mb, m, sp, rc, leaves, info) in enumerate(cores):
            if self.progress and i % 2048 == 0:
                self.progress(i / max(1, n_cores))
            acts = self.costs.activations(tp, cp, mb, rc, sp)
            # memory first: least memory over the node's shardings with 1F1B's in-flight count
            mem, stage = self.least_memory(acts, tp, cp, pp, dp, mb, m, info.shs, "1f1b", 0, info.vs)
            if mem > self.hbm:
                self.reject(Rejected("out_of_memory", "", mem, stage), len(leaves))
                self._near_miss(mem, (tp, cp, pp, dp, mb, m, sp, rc, leaves))
                continue
            self.bounded += 1
            lb = self.core_bound(self.costs.layer(tp, cp, mb, rc, sp), tp, cp, pp, dp, m, info)
            entries.append((lb, self._seq, 0, degree, (tp, cp, pp, dp, mb, m, sp, rc, leaves)))
            self._seq += 1
        return entries

    def _best_first(self, heap: list, degrees: list[_EpPricing]) -> None:
        """Pop the least bound: a core node yields its leaves' bounds, a leaf is priced; stop at
        the first bound at or above the K-th best."""
        heapq.heapify(heap)
        n_heap0 = max(1, len(heap))
        popped = 0
        while heap:
            lb, _, kind, i, item = heapq.heappop(heap)
            popped += 1
            if self.progress and popped % 256 == 0:
                self.progress(min(0.99, 0.5 + 0.5 * popped / n_heap0))
            if len(self.top) >= self.k and lb >= self.top[-1].step_time_s:
                heapq.heappush(heap, (lb, 0, kind, i, item))
                break
            if degrees[i].costs is not self.costs:
                self._enter(degrees[i])
            if kind == 0:
                tp, cp, pp, dp, mb, m, sp, rc, leaves = item
                lc = self.costs.layer(tp, cp, mb, rc, sp)
                mems: dict = {}  # the layout order changes no memory
                pipes: dict = {}
                for sh, sched, v, order in leaves:
                    hit = mems.get((sh, sched, v))
                    if hit is None:
                        hit = mems[sh, sched, v] = self.memory(lc, tp, cp, pp, dp, mb, m, sh, sched, v)
                    mem, stage = hit
                    if mem > self.hbm:
                        self.reject(Rejected("out_of_memory", "", mem, stage), 1)
                        continue
                    self.bounded += 1
                    b = self.leaf_bound(lc, tp, cp, pp, dp, m, rc, sh, sched, v, order, pipes)
                    heapq.heappush(heap, (b, self._seq, 1, i, (tp, cp, pp, dp, mb, sp, rc, sh, sched, v, order)))
                    self._seq += 1
            else:
                self.evaluate(lb, item)
        # whatever is left cannot beat the K-th best
        left = 0
        for lb, _, kind, i, item in heap:
            left += len(item[-1]) if kind == 0 else 1
        self.reject(Rejected("bound", "lower bound above the K-th best"), left)

    def config(self, item) -> ParallelConfig:
        tp, cp, pp, dp, mb, sp, rc, sh, sched, v, order = item
        return ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=v, micro_batch=mb, global_batch=self.gbs,
                              seq_len=self.seq, recompute=rc, sharding=sh, sequence_parallel=sp,
                              precision=self.prec, schedule=sched if pp > 1 else "1f1b", order=order, ep=self.ep,
                              etp=self.etp)

    def evaluate(self, lb: float, item) -> None:
        P = self.config(item)
        pred = predict(self.model, self.cluster, P, self.rt, timeline=False)
        self.evaluated += 1
        entry = RankedPlan(P, pred, lb)
        if not pred.fits:
            stage = max(pred.per_stage, key=lambda s: s.memory_bytes).stage
            self.reject(Rejected("out_of_memory", "", pred.peak_memory_bytes, stage), 1)
            if self.closest is None or pred.peak_memory_bytes < self.closest[0]:
                self.closest = (pred.peak_memory_bytes, entry)
            return
        twin = next((i for i, e in enumerate(self.top) if same_plan_but_storage(e, entry)), None)
        if twin is not None:  # ZeRO stage or rank order changes only memory: one row, the leaner
            kept, other = sorted((self.top[twin], entry), key=lambda e: e.prediction.peak_memory_bytes)
            self.reject(Rejected("redundant", "same step time as a listed plan, more memory"), 1)
            self.top[twin] = dataclasses.replace(kept, note=twin_note(kept, other))
            return
        self.top.append(entry)
        self.top.sort(key=lambda e: e.step_time_s)
        if len(self.top) > self.k:
            self.top.pop()

    def _near_miss(self, mem: float, core) -> None:
        """Remember the core node needing the least memory (for 'what is closest')."""
        if self.closest is not None and self.closest[0] <= mem:
            return
        tp, cp, pp, dp, mb, m, sp, rc, leaves = core
        sh = max(leaves, key=lambda x: sum(shard_divisors(x[0], dp * cp)[::2]))[0]
        sched = "1f1b" if pp > 1 else "1f1b"
        order = next((x[3] for x in leaves), ORDERS[0])
        P = self.config((tp, cp, pp, dp, mb, sp, rc, sh, sched, 1, order))
        pred = predict(self.model, self.cluster, P, self.rt, timeline=False)
        self.evaluated += 1
        self.closest = (min(mem, pred.peak_memory_bytes), RankedPlan(P, pred, math.nan))
