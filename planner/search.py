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
import heapq
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from planner.cost import framework as fw
from planner.cost.block import block_cost, shard_comm_s, shards_per_block
from planner.cost.comm import GroupShape, p2p_time
from planner.cost.compute import LayerTimes, activation_bytes_per_element, make_rates
from planner.cost.data_parallel import dp_exposed_s
from planner.cost.memory import (executor_saved_logits_bytes_per_token, executor_untied_head_params,
                                 layer_activation_bytes, logits_bytes_per_token,
                                 peak_transients, shard_divisors, state_bytes_per_param)
from planner.cost.runtime import Runtime, bind_runtime, effective_runtime
from planner.cost.optimizer import fused_optimizer_s, optimizer_traffic_s
from planner.cost.prediction import Prediction
from planner.cost.step import TIMELINE_TASK_LIMIT, predict
from planner.errors import InputError, require
from planner.hardware import ClusterSpec, NodeSpec
from planner.model import ModelSpec
from planner.plan import PRECISIONS, RECOMPUTE, ParallelConfig, Plan, strided_group_spread
from planner.executor_rules import ties_embeddings

GIB = 1024.0**3
ORDERS = ("tp-cp-dp-pp", "tp-cp-pp-dp")
SHARDINGS = ("none", "zero1", "zero2", "zero3")
VPP_OPTIONS = (2, 3, 4, 5, 6, 7, 8)
PLAIN_SCHEDULES = ("1f1b", "zb", "gpipe")
MAX_MICRO_BATCH = 64
REFINE_TOP = 5

FIX_KEYS = {"tp": "tp", "pp": "pp", "dp": "dp", "cp": "cp", "vpp": "vpp",
            "mb": "micro_batch", "micro_batch": "micro_batch", "micro-batch": "micro_batch",
            "recompute": "recompute", "sharding": "sharding", "zero": "sharding",
            "sp": "sequence_parallel", "sequence_parallel": "sequence_parallel",
            "sequence-parallel": "sequence_parallel", "schedule": "schedule", "order": "order"}

REASON_TEXT = {
    "out_of_memory": "out of memory",
    "not_divisible": "not divisible",
    "too_many_stages": "more stages than layers",
    "tp_crosses_nodes": "tp wider than a node",
    "redundant": "same plan as another candidate",
    "bound": "cannot beat the top K (lower bound)",
}


# ----- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejected:
    """Why a candidate (or a whole subtree of candidates) was not ranked.

    reason: short code (``out_of_memory``, ``not_divisible``, ``too_many_stages``,
    ``tp_crosses_nodes``, ``redundant``, ``bound``); detail: for a person; need_bytes / stage:
    out of memory only — the least memory the candidate needs on its fullest stage."""

    reason: str
    detail: str = ""
    need_bytes: float = math.nan
    stage: int = -1


@dataclass
class RejectionCount:
    """All rejections with one reason: how many, a typical detail per sub-reason, and for
    out-of-memory the least memory any of them needs (and on which stage)."""

    reason: str
    count: int = 0
    details: dict[str, int] = field(default_factory=dict)
    min_need_bytes: float = math.inf
    min_need_stage: int = -1
    by_stage: dict[str, int] = field(default_factory=dict)

    def add(self, rej: Rejected, n: int) -> None:
        self.count += n
        if rej.detail:
            self.details[rej.detail] = self.details.get(rej.detail, 0) + n
        if rej.reason == "out_of_memory":
            key = "stage 0" if rej.stage == 0 else ("last stage" if rej.stage > 0 else "stage ?")
            self.by_stage[key] = self.by_stage.get(key, 0) + n
            if rej.need_bytes < self.min_need_bytes:
                self.min_need_bytes = rej.need_bytes
                self.min_need_stage = rej.stage

    def to_dict(self) -> dict:
        return {"reason": self.reason, "count": self.count, "details": dict(self.details),
                "min_need_bytes": None if math.isinf(self.min_need_bytes) else self.min_need_bytes,
                "by_stage": dict(self.by_stage)}


@dataclass(frozen=True)
class RankedPlan:
    """One evaluated plan: its configuration, the cost model's prediction and how it was found."""

    parallel: ParallelConfig
    prediction: Prediction
    lower_bound_s: float
    note: str = ""

    @property
    def step_time_s(self) -> float:
        return self.prediction.step_time_s


@dataclass
class SearchResult:
    """What :func:`search` found.

    ranked: the top K fitting plans, fastest first. rejections: reason -> :class:`RejectionCount`.
    closest: when nothing fits, the evaluated plan needing the least memory (else None).
    total_candidates: size of the space searched; evaluated: cost-model calls; bounded: lower
    bounds computed; elapsed_s: wall time of the search.
    """

    model: ModelSpec
    cluster: ClusterSpec
    hardware: str
    global_batch: int
    ranked: list[RankedPlan]
    rejections: dict[str, RejectionCount]
    total_candidates: int
    evaluated: int
    bounded: int
    elapsed_s: float
    closest: RankedPlan | None = None
    fixed: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return bool(self.ranked)

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.groups[0].node.gpus_per_node

    def plan_for(self, entry: RankedPlan) -> Plan:
        return Plan(model=self.model, hardware=self.hardware, n_nodes=self.cluster.n_nodes,
                    gpus_per_node=self.gpus_per_node, parallel=entry.parallel,
                    prediction=entry.prediction.to_dict())

    @property
    def best_plans(self) -> list[Plan]:
        """The ranked plans as :class:`planner.plan.Plan` objects carrying their prediction."""
        return [self.plan_for(e) for e in self.ranked]

    def rows(self) -> list[dict]:
        return [ranked_row(i + 1, e, self.plan_for(e).id) for i, e in enumerate(self.ranked)]

    @property
    def table(self):
        """The ranked plans as a pandas DataFrame (one row per plan)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def rejection_summary(self) -> str:
        return rejection_summary(self)

    def to_dict(self) -> dict:
        return {"model": self.model.name, "cluster": self.hardware, "world_size": self.cluster.world_size,
                "global_batch": self.global_batch, "fits": self.fits, "ranked": self.rows(),
                "rejections": {k: v.to_dict() for k, v in self.rejections.items()},
                "total_candidates": self.total_candidates, "evaluated": self.evaluated,
                "bounded": self.bounded, "elapsed_s": self.elapsed_s,
                "closest": None if self.closest is None else ranked_row(0, self.closest, self.plan_for(self.closest).id)
                if self.closest.parallel.world_size == self.cluster.world_size else None}


def ranked_row(rank: int, e: RankedPlan, plan_id: str) -> dict:
    p = e.prediction
    t = p.time
    step = p.step_time_s
    exposed = t.tp_s + t.cp_s + t.dp_s + t.pp_s
    return {
        "rank": rank, "id": plan_id, "plan": e.parallel.megatron_notation(),
        "step_time_s": step, "tokens_per_s_per_gpu": p.tokens_per_s_per_gpu, "mfu": p.mfu,
        "peak_memory_gib": p.peak_memory_bytes / GIB,
        "headroom_gib": (p.hbm_bytes - p.peak_memory_bytes) / GIB,
        "bubble_pct": 100.0 * t.bubble_s / step if step > 0 else 0.0,
        "exposed_comm_pct": 100.0 * exposed / step if step > 0 else 0.0,
        "fits": p.fits, "order": e.parallel.order,
        "stage_layers": list(e.parallel.stage_layers), "note": e.note,
        "parallel": e.parallel.to_dict(),
    }


def rejection_summary(result: SearchResult) -> str:
    """``N candidates: X out of memory (on stage 0 needing at least Y GiB), Z not divisible ...``."""
    parts = []
    order = ("out_of_memory", "not_divisible", "too_many_stages", "tp_crosses_nodes", "redundant", "bound")
    for key in order:
        rc = result.rejections.get(key)
        if not rc or not rc.count:
            continue
        text = f"{rc.count:,} {REASON_TEXT[key]}"
        if key == "out_of_memory" and not math.isinf(rc.min_need_bytes):
            where = "stage 0" if rc.min_need_stage == 0 else "the last stage"
            stages = ", ".join(f"{n:,} on {s}" for s, n in sorted(rc.by_stage.items()))
            text += f" ({stages}; the smallest needs at least {rc.min_need_bytes / GIB:.1f} GiB on {where})"
        elif rc.details and key in ("not_divisible", "too_many_stages"):
            top = sorted(rc.details.items(), key=lambda kv: -kv[1])[:3]
            text += " (" + "; ".join(f"{n:,} {d}" for d, n in top) + ")"
        parts.append(text)
    n_ok = result.total_candidates - sum(rc.count for rc in result.rejections.values())
    head = (f"{result.total_candidates:,} candidates: {n_ok:,} evaluated and fit"
            f" ({result.evaluated:,} cost-model calls, {result.bounded:,} lower bounds)")
    return head + ("; " + ", ".join(parts) if parts else "")


# ----- per-layer costs (the cost model's pieces) ---------------------------------------------------
@dataclass(frozen=True)
class LayerCost:
    """One block and one micro-batch on one rank (:class:`planner.cost.block.BlockCost`, seconds):
    f forward, bi backward input-grad (+ recompute, + exposed TP/CP), w weight-grad; lt its
    compute; emb/head extras; the activation bytes the memory bound needs."""

    f: float
    bi: float
    w: float
    lt: LayerTimes
    cp: int
    mb: int
    emb_f: float
    emb_b: float
    head_f: float
    head_bi: float
    head_w: float
    act_bytes: float      # b*s/cp*h*bpe: the pipeline send
    layer_act: float      # activation bytes kept per layer per micro-batch
    layer_act_full: float  # full recompute: one block's activations live in its backward


class Costs:
    """Memoised per-layer costs for one model / node type / runtime."""

    def __init__(self, model: ModelSpec, node: NodeSpec, world: int, seq_len: int, precision: str,
                 runtime: Runtime):
        self.model, self.node, self.seq, self.prec = model, node, seq_len, precision
        # the runtime as predict() applies it on this host (no overlap where gloo shares the cores)
        self.rt = effective_runtime(runtime, node.device, min(node.gpus_per_node, world) if world > 1 else 0)
        self.gpn = node.gpus_per_node
        # the node's calibrated framework section (CPU profile) as predict() uses it, so the
        # bounds below charge the same per-op / TP-linear costs the prediction does
        self.fw = node.framework
        # an oversubscribed CPU host: predict() gives a busy rank up to a whole core while
        # others wait (its busy-fraction fixed point); a bound may not assume less
        ranks = min(self.gpn, world)
        if node.device.host_cores > 0:
            ranks = min(ranks, node.device.host_cores)
        self.rates = make_rates(node.device, precision, ranks, self.fw)
        self.bpe = activation_bytes_per_element(precision)
        self._layer: dict = {}
        self._z3: dict = {}
        self._p2p: dict = {}
        m = model
        self.layer_params = float(m.layer_params())
        self.embedding_params = float(m.embedding_params())
        self.head_params = float(m.head_params() + m.vocab_size * m.hidden_size)  # + tied copy (pp > 1)
        self.head_params_untied = float(m.head_params())

    def dp_group(self, dp: int, stride: int) -> GroupShape:
        return GroupShape(dp, *strided_group_spread(dp, stride, self.gpn))

    def layer(self, tp: int, cp: int, mb: int, rc: str, sp: bool) -> LayerCost:
        key = (tp, cp, mb, rc, sp)
        hit = self._layer.get(key)
        if hit is not None:
            return hit
        m, s = self.model, self.seq
        bc = block_cost(m, self.node, self.rt, self.rates, tp=tp, cp=cp, micro_batch=mb, seq_len=s,
                        recompute=rc, sequence_parallel=sp, precision=self.prec,
                        tp_group=GroupShape(tp, *strided_group_spread(tp, 1, self.gpn)),
                        cp_group=GroupShape(cp, *strided_group_spread(cp, tp, self.gpn)))
        executor = self.fw is not None
        la = layer_activation_bytes(m, mb, s, tp, cp, sp, rc, self.prec, self.rt.attention, executor)
        la_full = (layer_activation_bytes(m, mb, s, tp, cp, sp, "none", self.prec, self.rt.attention, executor)
                   if rc == "full" else 0.0)
        cost = LayerCost(f=bc.fwd_s, bi=bc.bwd_input_s, w=bc.bwd_weight_s, lt=bc.lt, cp=cp, mb=mb,
                         emb_f=bc.emb_f, emb_b=bc.emb_b, head_f=bc.head_f, head_bi=bc.head_bi,
                         head_w=bc.head_bw, act_bytes=bc.act_bytes, layer_act=la, layer_act_full=la_full)
        self._layer[key] = cost
        return cost

    def z3(self, lc: LayerCost, tp: int, dp: int, dp_stride: int, rc: str,
           sharding: str = "zero3") -> tuple[float, float]:
        """Exposed ZeRO-3 / FSDP (forward, backward) per layer over a dp group ``dp_stride``
        ranks apart (:func:`planner.cost.block.shard_comm_s`, as predict() charges it)."""
        key = (id(lc), tp, dp, dp_stride, rc, sharding)
        hit = self._z3.get(key)
        if hit is None:
            g = GroupShape(dp, *strided_group_spread(dp, dp_stride, self.gpn))
            hit = self._z3[key] = shard_comm_s(self.model, self.node, self.rt, lc.lt, self.rates, g, tp=tp,
                                               cp=lc.cp, micro_batch=lc.mb, seq_len=self.seq,
                                               precision=self.prec, sharding=sharding, recompute=rc)
        return hit

    def fsdp_blocks(self, sharding: str, tp: int, dp: int) -> bool:
        """Whether predict() charges per-block parameter gathers (:func:`planner.cost.block.shards_per_block`)."""
        return shards_per_block(self.fw, sharding, tp, dp)

    def p2p(self, act: float, tp: int, pp: int, pp_stride: int) -> float:
        key = (act, tp, pp, pp_stride)
        hit = self._p2p.get(key)
        if hit is None:
            hit = 0.0
            if pp > 1:
                _, nodes = strided_group_spread(pp, pp_stride, self.gpn)
                hit = p2p_time(act / tp, nodes > 1, self.node)
            self._p2p[key] = hit
        return hit


def _balanced(n_layers: int, stages: int) -> list[int]:
    base, extra = divmod(n_layers, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


@lru_cache(maxsize=4096)
def _rank_layers(n_layers: int, pp: int, v: int) -> tuple[int, ...]:
    """Layers held by rank 0 and (pp > 1) rank pp-1 under the balanced split of pp*v chunks."""
    n_vs = pp * v
    layers = _balanced(n_layers, n_vs)
    ranks = (0, pp - 1) if pp > 1 else (0,)
    return tuple(sum(layers[k] for k in range(r, n_vs, pp)) for r in ranks)


@lru_cache(maxsize=4096)
def _rank_layers_min(n_layers: int, pp: int, vs: tuple[int, ...]) -> tuple[int, ...]:
    """Per end rank, the fewest layers over the vpp options ``vs`` (a memory lower bound)."""
    per_v = [_rank_layers(n_layers, pp, v) for v in vs]
    return tuple(min(x[i] for x in per_v) for i in range(len(per_v[0])))


@lru_cache(maxsize=4096)
def _core_shape(n_layers: int, pp: int, vs: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """Per vpp option: (layers on rank 0, layers on rank pp-1, layers of the virtual stages
    before rank pp-1's first chunk)."""
    out = []
    for v in vs:
        ends = _rank_layers(n_layers, pp, v)
        layers = _balanced(n_layers, pp * v)
        out.append((ends[0], ends[-1], sum(layers[: pp - 1])))
    return tuple(out)


def _least_memory_shardings(present: set[str]) -> list[str]:
    """The shardings that can need the least memory: zero2 <= zero1 <= none always (same
    weights, fewer gradient / optimizer bytes); zero3 vs zero2 depends on the stage size."""
    out = [s for s in ("zero3",) if s in present]
    for s in ("zero2", "zero1", "none"):
        if s in present:
            out.append(s)
            break
    return out


def _zb_bound(F: list[float], B: list[float], W: list[float], m: int, c: float, pp: int) -> float:
    """Lower bound of the ZB-H1 makespan (:func:`planner.schedule.simulate`, ``"zb"``) with
    per-stage times F (forward), B (input gradient), W (weight gradient) and p2p hop ``c``.

    Rank r cannot start before ``head_r = sum_{j<r} (F_j + c)`` (micro-batch 0's forward
    chain). (1) It is then busy ``m (F_r + B_r + W_r)``. (2) Its last B (micro-batch m-1) comes
    after all its m forwards, its other m-1 B and at least ``m-1-p`` W (the schedule forces a W
    once more than p are pending), so it ends no earlier than
    ``own_r = head_r + m (F_r + B_r) + max(0, m-1-p) W_r``; it also waits for the last B on rank
    r+1 and the hop: ``E_r = max(own_r, E_{r+1} + c + B_r)``; that micro-batch's W follows on
    rank r: ``T >= E_r + W_r``. With equal stages and c = 0 this is
    ``m (F+B+W) + (p-1)(F+B-W) - W`` for large m, one W below ZB-H1's makespan
    (Qi et al. 2023, Sec. 3: bubble (p-1)(F+B-W))."""
    head = 0.0
    heads = []
    best = 0.0
    extra_w = max(0, m - 1 - pp)
    for r in range(pp):
        heads.append(head)
        t = head + m * (F[r] + B[r] + W[r])
        if t > best:
            best = t
        head += F[r] + c
    e = -math.inf
    for r in range(pp - 1, -1, -1):
        own = heads[r] + m * (F[r] + B[r]) + extra_w * W[r]
        e = own if own > e + c + B[r] else e + c + B[r]
        if e + W[r] > best:
            best = e + W[r]
    return best


def _strides(order: str, tp: int, cp: int, pp: int, dp: int) -> tuple[int, int]:
    """(dp stride, pp stride) for the two layout orders."""
    if order == "tp-cp-dp-pp":
        return tp * cp, tp * cp * dp
    return tp * cp * pp, tp * cp


# ----- the search -----------------------------------------------------------------------------------
def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def normalise_fixed(fixed: dict) -> dict[str, Any]:
    """Map ``--fix`` style keys (tp, mb, sp, ...) to ParallelConfig fields and check the values."""
    out: dict[str, Any] = {}
    for key, value in (fixed or {}).items():
        name = FIX_KEYS.get(str(key))
        if name is None:
            raise InputError("fix", f"unknown key {key!r} (allowed: {', '.join(sorted(set(FIX_KEYS)))})")
        if name in ("tp", "pp", "dp", "cp", "vpp", "micro_batch"):
            try:
                v = int(value)
            except (TypeError, ValueError):
                raise InputError("fix", f"{key}={value!r}: must be a positive integer") from None
            if isinstance(value, bool) or v < 1 or (isinstance(value, float) and v != value):
                raise InputError("fix", f"{key}={value!r}: must be a positive integer")
            out[name] = v
        elif name == "recompute":
            require(value in RECOMPUTE, "fix", f"recompute={value!r}: must be one of {', '.join(RECOMPUTE)}")
            out[name] = value
        elif name == "sharding":
            value = "zero3" if value == "fsdp" else value
            require(value in SHARDINGS, "fix", f"sharding={value!r}: must be one of {', '.join(SHARDINGS)} (or fsdp)")
            out[name] = value
        elif name == "sequence_parallel":
            if isinstance(value, bool):
                out[name] = value
            elif str(value).lower() in ("on", "true", "1", "yes"):
                out[name] = True
            elif str(value).lower() in ("off", "false", "0", "no"):
                out[name] = False
            else:
                raise InputError("fix", f"sp={value!r}: must be on or off")
        elif name == "schedule":
            require(value in ("gpipe", "1f1b", "interleaved", "zb"), "fix",
                    f"schedule={value!r}: must be one of gpipe, 1f1b, interleaved, zb")
            out[name] = value
        elif name == "order":
            parts = str(value).split("-")
            require(sorted(parts) == sorted(["tp", "cp", "dp", "pp"]), "fix",
                    f"order={value!r}: must be a permutation of tp-cp-dp-pp")
            out[name] = str(value)
    return out


def parse_fix(items: list[str] | None) -> dict[str, Any]:
    """``["tp=8", "recompute=full"]`` -> a normalised fixed dict; bad items raise InputError."""
    raw: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError("fix", f"{item!r}: expected KEY=VALUE, e.g. tp=8")
        k, v = item.split("=", 1)
        raw[k.strip()] = v.strip()
    return normalise_fixed(raw)


@dataclass(frozen=True)
class _LeafInfo:
    vs: tuple[int, ...]
    shs: tuple[str, ...]
    o_min: int


@dataclass
class _Space:
    tp: list[int]
    cp: list[int]
    pp: list[int]
    dp: list[int] | None
    mb: list[int]
    rc: list[str]
    sp: list[bool]
    sh: list[str]
    sched: list[tuple[str, int]]
    orders: list[str]


def _space(model: ModelSpec, world: int, gbs: int, fixed: dict) -> _Space:
    divs = divisors(world)
    mb = [d for d in divisors(gbs) if d <= MAX_MICRO_BATCH]
    sched = [(s, 1) for s in PLAIN_SCHEDULES] + [("interleaved", v) for v in VPP_OPTIONS]
    sp = [False, True]
    sh = list(SHARDINGS)
    orders = list(ORDERS)
    sp_ = _Space(tp=divs, cp=divs, pp=divs, dp=None, mb=mb, rc=list(RECOMPUTE), sp=sp, sh=sh,
                 sched=sched, orders=orders)
    for name, attr in (("tp", "tp"), ("cp", "cp"), ("pp", "pp")):
        if name in fixed:
            setattr(sp_, attr, [fixed[name]])
    if "dp" in fixed:
        sp_.dp = [fixed["dp"]]
    if "micro_batch" in fixed:
        sp_.mb = [fixed["micro_batch"]]
    if "recompute" in fixed:
        sp_.rc = [fixed["recompute"]]
    if "sequence_parallel" in fixed:
        sp_.sp = [fixed["sequence_parallel"]]
    if "sharding" in fixed:
        sp_.sh = [fixed["sharding"]]
    if "schedule" in fixed:
        sp_.sched = [x for x in sp_.sched if x[0] == fixed["schedule"]]
    if "vpp" in fixed:
        v = fixed["vpp"]
        sp_.sched = [x for x in sp_.sched if x[1] == v] or (
            [("interleaved", v)] if v > 1 and fixed.get("schedule", "interleaved") == "interleaved" else [])
        if not sp_.sched:
            raise InputError("fix", f"vpp={v} needs the interleaved schedule (vpp=1 otherwise)")
    if "order" in fixed:
        sp_.orders = [fixed["order"]]
    return sp_


class _Search:
    def __init__(self, model, cluster, gbs, seq, precision, fixed, top_k, progress, runtime):
        self.model, self.cluster, self.gbs, self.seq, self.prec = model, cluster, gbs, seq, precision
        self.k = top_k
        self.progress = progress
        self.rt = runtime
        self.node = cluster.node
        self.world = cluster.world_size
        self.gpn = self.node.gpus_per_node
        self.hbm = self.node.device.hbm_bytes
        self.costs = Costs(model, self.node, self.world, seq, precision, runtime)
        self.space = _space(model, self.world, gbs, fixed)
        self.rej: dict[str, RejectionCount] = {}
        self.total = 0
        self.evaluated = 0
        self.bounded = 0
        self.top: list[RankedPlan] = []
        self.closest: tuple[float, RankedPlan] | None = None
        self._leafsets: dict = {}
        self.n_leaf_per_core = len(self.space.sh) * len(self.space.sched) * len(self.space.orders)
        self._maxparams: dict = {}
        self.state_bytes = state_bytes_per_param(precision)
        frame = self.node.framework  # its measured fragmentation / overhead, as stage_memories()
        self.frag = self.node.device.fragmentation_fraction if frame is None else frame.fragmentation_fraction
        self.reserved = self.node.device.reserved_bytes if frame is None else frame.training_overhead_bytes

    def reject(self, rej: Rejected, n: int) -> None:
        if n <= 0:
            return
        rc = self.rej.get(rej.reason)
        if rc is None:
            rc = self.rej[rej.reason] = RejectionCount(rej.reason)
        rc.add(rej, n)

    # --- leaf sets per (pp, dp, m) --------------------------------------------------------------
    def leafset(self, pp: int, dp: int, m: int):
        """Valid (sharding, schedule, vpp, order) for a core node; counts the others."""
        key = (pp, dp, m)
        hit = self._leafsets.get(key)
        if hit is None:
            valid, rejected = [], []
            L = self.model.n_layers
            for sh in self.space.sh:
                for sched, v in self.space.sched:
                    for order in self.space.orders:
                        r = None
                        if dp == 1 and sh != "none":
                            r = Rejected("redundant", "ZeRO with dp=1")
                        elif pp == 1 and (sched != "1f1b" or v > 1):
                            r = Rejected("redundant", "pipeline schedule with pp=1")
                        elif order != ORDERS[0] and (pp == 1 or dp == 1):
                            r = Rejected("redundant", "layout order with pp=1 or dp=1")
                        elif sched == "interleaved" and pp * v > L:
                            r = Rejected("too_many_stages", "pp*vpp exceeds the layers")
                        elif sched == "interleaved" and m % pp != 0:
                            r = Rejected("not_divisible", "interleaving needs micro-batches divisible by pp")
                        if r is None:
                            valid.append((sh, sched, v, order))
                        else:
                            rejected.append(r)
            counts: dict[Rejected, int] = {}
            for r in rejected:
                counts[r] = counts.get(r, 0) + 1
            rejected = list(counts.items())
            info = _LeafInfo(vs=tuple(sorted({x[2] for x in valid})),
                             shs=tuple(_least_memory_shardings({x[0] for x in valid})),
                             o_min=max((shard_divisors(x[0], dp)[2] for x in valid), default=1))
            self._leafsets[key] = (valid, rejected, info)
            hit = self._leafsets[key]
        return hit

    # --- memory ---------------------------------------------------------------------------------
    def rank_params(self, tp: int, pp: int, layers_r: int, r: int) -> float:
        c = self.costs
        p = layers_r * c.layer_params
        if r == 0:
            p += c.embedding_params
        if r == pp - 1:
            p += c.head_params if (self.model.tied_embeddings and pp > 1) else c.head_params_untied
        return p / tp

    def memory(self, lc: LayerCost, tp: int, cp: int, pp: int, dp: int, mb: int, m: int, sh: str,
               sched: str, v: int, vs: tuple[int, ...] = ()) -> tuple[float, int]:
        """(peak bytes lower bound, its stage) over ranks 0 and pp-1: the arithmetic of
        planner.cost.memory.stage_memory (exact for non-interleaved schedules; interleaved is
        charged 1F1B's in-flight count, a lower bound)."""
        mdl = self.model
        ends = _rank_layers(mdl.n_layers, pp, v) if v else _rank_layers_min(mdl.n_layers, pp, vs)
        w_b, g_b, o_b = self.state_bytes
        w_div, g_div, o_div = shard_divisors(sh, dp)
        per_param = w_b / w_div + g_b / g_div + o_b / o_div
        gathered = 2 * self.costs.layer_params / tp * w_b if w_div > 1 else 0.0
        executor = self.costs.fw is not None
        best, stage = 0.0, 0
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
                logits = logits_bytes_per_token(mdl, tp, self.prec, executor) * tokens
                saved_loss = max(0, flight - 1) * executor_saved_logits_bytes_per_token(mdl, tp, executor) * tokens
            tensors = params * per_param + flight * n_r * lc.layer_act + saved_loss + sum(
                peak_transients(logits, gathered, lc.layer_act_full))
            total = tensors * (1 + self.frag) + self.reserved
            if total > best:
                best, stage = total, r
            r = pp - 1
        return best, stage

    # --- time bounds ----------------------------------------------------------------------------
    def max_rank_params(self, tp: int, pp: int, v: int) -> tuple[float, int]:
        """(largest parameter count of a pipeline rank, that rank) as predict() finds it."""
        key = (tp, pp, v)
        hit = self._maxparams.get(key)
        if hit is None:
            layers = _balanced(self.model.n_layers, pp * v)
            per = [self.rank_params(tp, pp, sum(layers[k] for k in range(r, pp * v, pp)), r) for r in range(pp)]
            best = max(per)
            hit = self._maxparams[key] = (best, per.index(best))
        return hit

    def optimizer_s(self, tp: int, pp: int, v: int, o_div: int) -> float:
        most, _ = self.max_rank_params(tp, pp, v)
        rates = self.costs.rates
        if rates.framework is not None:  # predict's traffic at its fastest size (per-op costs are >= 0)
            return optimizer_traffic_s(rates, most / o_div, None)
        return fused_optimizer_s(rates, most / o_div, pp * v)

    def dp_exposed(self, tp: int, pp: int, dp: int, v: int, sh: str, dp_stride: int,
                   window_of_rank) -> float:
        """Exposed data-parallel gradient reduction (non-ZeRO-3) as predict() charges it
        (:func:`planner.cost.data_parallel.dp_exposed_s`)."""
        if dp == 1:
            return 0.0
        params, r_max = self.max_rank_params(tp, pp, v)
        c = self.costs
        g = c.dp_group(dp, dp_stride)
        tensors = fw.model_param_tensors(self.model, ties_embeddings(self.model, tp, pp))
        return dp_exposed_s(self.node, c.rt, c.rates, g, precision=self.prec, sharding=sh, tp=tp, pp=pp,
                            params=params, window_s=window_of_rank(r_max), param_tensors=tensors)

    def leaf_bound(self, lc: LayerCost, tp, cp, pp, dp, m, rc, sh, sched, v, order) -> float:
        f, bi, w = lc.f, lc.bi, lc.w
        dp_stride, pp_stride = _strides(order, tp, cp, pp, dp)
        if self.costs.fsdp_blocks(sh, tp, dp):
            zf, zb = self.costs.z3(lc, tp, dp, dp_stride, rc, sh)
            f, bi = f + zf, bi + zb
        p2p = self.costs.p2p(lc.act_bytes, tp, pp, pp_stride)
        n_vs = pp * v
        layers = _balanced(self.model.n_layers, n_vs)
        F = [n * f for n in layers]
        B = [n * bi for n in layers]
        W = [n * w for n in layers]
        F[0] += lc.emb_f
        B[0] += lc.emb_b
        F[-1] += lc.head_f
        B[-1] += lc.head_bi
        W[-1] += lc.head_w
        if pp > 1:  # the pipelining runtime, as _stage_times adds it
            F, B, W = fw.pipeline_actions(F, B, W, self.costs.fw, self.costs.rates, sched)
        best = 0.0
        pre = 0.0
        if sched == "zb":
            best = _zb_bound(F, B, W, m, p2p, pp)
        else:
            for r in range(pp):
                busy = m * sum(F[k] + B[k] + W[k] for k in range(r, n_vs, pp))
                t = pre + busy
                if t > best:
                    best = t
                pre += F[r] + B[r] + W[r] + 2 * p2p
        o_div = shard_divisors(sh, dp)[2]

        def window(r: int) -> float:
            return sum(B[k] + W[k] for k in range(r, n_vs, pp))

        return best + self.optimizer_s(tp, pp, v, o_div) + self.dp_exposed(tp, pp, dp, v, sh, dp_stride, window)

    def core_bound(self, lc: LayerCost, tp, cp, pp, dp, m, info) -> float:
        """Below every leaf_bound of this core node: no ZeRO-3 / p2p / dp terms, the smallest
        pipeline fill over the node's vpp options, the best optimizer sharding."""
        f = lc.f
        per = lc.f + lc.bi + lc.w
        emb = lc.emb_f + lc.emb_b
        head = lc.head_f + lc.head_bi + lc.head_w
        best = math.inf
        for n0, nl, pre_l in _core_shape(self.model.n_layers, pp, info.vs):
            if pp == 1:
                t = m * (n0 * per + emb + head)
            else:
                t0 = m * (n0 * per + emb)
                tl = pre_l * f + m * (nl * per + head)
                t = t0 if t0 > tl else tl
            if t < best:
                best = t
        return best + min(self.optimizer_s(tp, pp, v, info.o_min) for v in info.vs)

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> None:
        mdl, S = self.model, self.space
        L = mdl.n_layers
        t_start = time.perf_counter()
        n_sub_core = len(S.rc) * len(S.sp) * self.n_leaf_per_core
        heap: list = []
        seq_counter = 0
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
                            mdl.n_kv_heads % tp == 0 or tp % mdl.n_kv_heads == 0):
                        r = Rejected("not_divisible", "tp does not divide heads / kv heads / ffn")
                    elif self.seq % cp:
                        r = Rejected("not_divisible", "cp does not divide the sequence length")
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
                self.progress(0.5 * i / max(1, n_cores))
            lc = self.costs.layer(tp, cp, mb, rc, sp)
            # memory first: least memory over the node's shardings with 1F1B's in-flight count
            mem, stage = min(self.memory(lc, tp, cp, pp, dp, mb, m, sh, "1f1b", 0, info.vs) for sh in info.shs)
            if mem > self.hbm:
                self.reject(Rejected("out_of_memory", "", mem, stage), len(leaves))
                self._near_miss(mem, lc, (tp, cp, pp, dp, mb, m, sp, rc, leaves))
                continue
            self.bounded += 1
            lb = self.core_bound(lc, tp, cp, pp, dp, m, info)
            heap.append((lb, seq_counter, 0, (tp, cp, pp, dp, mb, m, sp, rc, leaves)))
            seq_counter += 1
        heapq.heapify(heap)
        n_heap0 = max(1, len(heap))
        popped = 0
        while heap:
            lb, _, kind, item = heapq.heappop(heap)
            popped += 1
            if self.progress and popped % 256 == 0:
                self.progress(min(0.99, 0.5 + 0.5 * popped / n_heap0))
            if len(self.top) >= self.k and lb >= self.top[-1].step_time_s:
                heapq.heappush(heap, (lb, 0, kind, item))
                break
            if kind == 0:
                tp, cp, pp, dp, mb, m, sp, rc, leaves = item
                lc = self.costs.layer(tp, cp, mb, rc, sp)
                for sh, sched, v, order in leaves:
                    mem, stage = self.memory(lc, tp, cp, pp, dp, mb, m, sh, sched, v)
                    if mem > self.hbm:
                        self.reject(Rejected("out_of_memory", "", mem, stage), 1)
                        continue
                    self.bounded += 1
                    b = self.leaf_bound(lc, tp, cp, pp, dp, m, rc, sh, sched, v, order)
                    heapq.heappush(heap, (b, seq_counter, 1, (tp, cp, pp, dp, mb, sp, rc, sh, sched, v, order)))
                    seq_counter += 1
            else:
                self.evaluate(lb, item)
        # whatever is left cannot beat the K-th best
        left = 0
        for lb, _, kind, item in heap:
            left += len(item[-1]) if kind == 0 else 1
        self.reject(Rejected("bound", "lower bound above the K-th best"), left)
        self.elapsed = time.perf_counter() - t_start

    def config(self, item) -> ParallelConfig:
        tp, cp, pp, dp, mb, sp, rc, sh, sched, v, order = item
        return ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=v, micro_batch=mb, global_batch=self.gbs,
                              seq_len=self.seq, recompute=rc, sharding=sh, sequence_parallel=sp,
                              precision=self.prec, schedule=sched if pp > 1 else "1f1b", order=order)

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
        self.top.append(entry)
        self.top.sort(key=lambda e: e.step_time_s)
        if len(self.top) > self.k:
            self.top.pop()

    def _near_miss(self, mem: float, lc, core) -> None:
        """Remember the core node needing the least memory (for 'what is closest')."""
        if self.closest is not None and self.closest[0] <= mem:
            return
        tp, cp, pp, dp, mb, m, sp, rc, leaves = core
        sh = max(leaves, key=lambda x: shard_divisors(x[0], dp)[0] + shard_divisors(x[0], dp)[2])[0]
        sched = "1f1b" if pp > 1 else "1f1b"
        order = next((x[3] for x in leaves), ORDERS[0])
        P = self.config((tp, cp, pp, dp, mb, sp, rc, sh, sched, 1, order))
        pred = predict(self.model, self.cluster, P, self.rt, timeline=False)
        self.evaluated += 1
        self.closest = (min(mem, pred.peak_memory_bytes), RankedPlan(P, pred, math.nan))


# ----- uneven stages --------------------------------------------------------------------------------
def uneven_split(model: ModelSpec, cluster: ClusterSpec, P: ParallelConfig,
                 runtime: Runtime | None = None) -> tuple[int, ...] | None:
    """The exact chain-DP cut (planner.partition.partition_chain) of ``model``'s layers for
    ``P`` (vpp == 1), with the cost model's per-layer time and memory and the embedding / LM
    head as first / last stage extras; None when it equals the balanced split or fails."""
    from planner.partition import StageCut, partition_chain

    if P.pp == 1 or P.vpp != 1:
        return None
    cluster, runtime = bind_runtime(cluster, runtime)
    node = cluster.node
    costs = Costs(model, node, cluster.world_size, P.seq_len, P.precision, runtime)
    lc = costs.layer(P.tp, P.cp, P.micro_batch, P.recompute, P.sequence_parallel)
    f, bi = lc.f, lc.bi
    if costs.fsdp_blocks(P.sharding, P.tp, P.dp):
        dp_stride, _ = _strides(P.order if P.order in ORDERS else ORDERS[0], P.tp, P.cp, P.pp, P.dp)
        zf, zb = costs.z3(lc, P.tp, P.dp, dp_stride, P.recompute, P.sharding)
        f, bi = f + zf, bi + zb
    per_layer = f + bi + lc.w
    pp, m, L = P.pp, P.num_micro_batches, model.n_layers
    w_b = {"fp32": 16.0}.get(P.precision, 16.0)
    w_div, g_div, o_div = shard_divisors(P.sharding, P.dp)
    wb, gb, ob = (4.0, 4.0, 8.0) if P.precision == "fp32" else (2.0, 2.0, 12.0)
    state = wb / w_div + gb / g_div + ob / o_div
    del w_b
    lp = model.layer_params() / P.tp
    flight = [float(m) if P.schedule == "gpipe" else float(min(pp - k, m)) for k in range(pp)]
    mem = [[lp * state + lc.layer_act * flight[k]] * L for k in range(pp)]
    dev = node.device
    frame = node.framework
    reserved = dev.reserved_bytes if frame is None else frame.training_overhead_bytes
    frag = dev.fragmentation_fraction if frame is None else frame.fragmentation_fraction
    limits = [(dev.hbm_bytes - reserved) / (1 + frag)
              - lc.layer_act_full - (2 * lp * wb if w_div > 1 else 0.0)] * pp
    emb_p = model.embedding_params() / P.tp
    head_p = (model.head_params() + (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)) / P.tp
    # conservative: the logits are charged on top of the block working set (predict() takes the
    # larger of the two, planner.cost.memory.peak_transients)
    logits = (logits_bytes_per_token(model, P.tp, P.precision, frame is not None)
              * P.micro_batch * (P.seq_len / P.cp))
    cut = partition_chain([per_layer] * L, mem, pp, limits,
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
    :mod:`planner.hetero` for mixed clusters) and return the ``top_k`` fastest fitting plans.

    fixed: options held fixed, ``{"tp": 8, "recompute": "full", "sp": True, ...}`` (keys as
    ``--fix``: tp pp dp cp vpp mb recompute sharding sp schedule order). progress: called with
    a fraction in [0, 1] now and then. hardware: the profile name stored in the plans.
    """
    t0 = time.perf_counter()
    cluster, runtime = bind_runtime(cluster, runtime)
    require(isinstance(global_batch, int) and global_batch >= 1, "global_batch", "must be a positive integer")
    require(isinstance(top_k, int) and top_k >= 1, "top", "must be >= 1")
    require(precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
    require(cluster.is_homogeneous, "cluster", "has several node types: use planner.hetero.search_hetero")
    seq = seq_len or model.seq_len
    require(seq <= model.seq_len or model.position != "learned", "seq_len",
            f"{seq} exceeds the model's learned positions ({model.seq_len})")
    if not cluster.node.device.supports(precision):
        cluster.node.device.peak_flops(precision)
    fixed_n = normalise_fixed(fixed or {})
    s = _Search(model, cluster, global_batch, seq, precision, fixed_n, top_k, progress, runtime)
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
    S = _space(model, cluster.world_size, global_batch, normalise_fixed(fixed or {}))
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
                                    for order in S.orders:
                                        if order != ORDERS[0] and (pp == 1 or dp == 1):
                                            continue
                                        try:
                                            P = ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=v, micro_batch=mb,
                                                               global_batch=global_batch, seq_len=seq, recompute=rc,
                                                               sharding=sh, sequence_parallel=sp, precision=precision,
                                                               schedule=sched, order=order)
                                            pred = predict(model, cluster, P, runtime)
                                        except InputError:
                                            continue
                                        if pred.fits:
                                            out.append((P, pred))
    out.sort(key=lambda x: x[1].step_time_s)
    return out


__all__ = ["Rejected", "RejectionCount", "RankedPlan", "SearchResult", "search", "brute_force",
           "parse_fix", "normalise_fixed", "uneven_split", "rejection_summary", "FIX_KEYS"]
