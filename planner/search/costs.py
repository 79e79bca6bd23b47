"""Per-block costs memoised for the search (:class:`Costs`, the terms of
:mod:`planner.cost.block` that :func:`planner.cost.step.predict` adds up) and the closed forms
its bounds use (layers per rank, the ZB-H1 makespan bound)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

from planner.cost.block import block_cost, pipeline_hop_s, shard_comm_s, shards_per_block
from planner.cost.comm import GroupShape
from planner.cost.compute import LayerTimes, make_rates
from planner.cost.memory import layer_activation_bytes, rank_layer_params
from planner.cost.precision import activation_bytes_per_element
from planner.cost.runtime import Runtime, effective_runtime
from planner.cost.stacks import stack_of
from planner.hardware import NodeSpec
from planner.layout import strided_group_spread, union_group_spread
from planner.model import ModelSpec


def blocks_lower_bound(n: int, value: float, dense_value: float, dense_layers: int) -> float:
    """A lower bound of a per-block ``value`` summed over ``n`` of a model's blocks, wherever they
    lie: at most ``dense_layers`` of them are dense (``dense_value`` each)."""
    d = min(n, dense_layers)
    return (n - d) * value + d * min(value, dense_value)


class _Blocks:
    """Sums over a model's blocks of a per-block cost (the model's block, or its second kind,
    ``dense``: :meth:`planner.model.ModelSpec.alt_block`)."""

    dense = None
    dense_layers = 0

    def blocks(self, n: int, value) -> float:
        """A lower bound of ``value(cost)`` summed over ``n`` of the model's blocks, wherever
        they lie: at most ``dense_layers`` of them are dense."""
        if self.dense is None:
            return n * value(self)
        return blocks_lower_bound(n, value(self), value(self.dense), self.dense_layers)


@dataclass(frozen=True)
class LayerActivations(_Blocks):
    """One block's activation bytes per micro-batch (what the memory bound needs first)."""

    layer_act: float      # activation bytes kept per layer per micro-batch
    layer_act_full: float  # full recompute: one block's activations live in its backward
    dense: "LayerActivations | None" = None
    dense_layers: int = 0


@dataclass(frozen=True)
class LayerCost(_Blocks):
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
    dense: "LayerCost | None" = None
    """A model with a second kind of block (:meth:`planner.model.ModelSpec.alt_block`: leading dense
    blocks of an MoE model, cross-attention blocks): that block's cost (this one is the other's)."""
    dense_layers: int = 0

    def stage_blocks(self, kinds: list[tuple[int, int]]) -> tuple[list[float], list[float], list[float]]:
        """Forward, backward-input and weight-gradient times summed over each stage's (dense,
        MoE) blocks."""
        f, bi, w = self.f, self.bi, self.w
        if self.dense is None:
            return [(d + n) * f for d, n in kinds], [(d + n) * bi for d, n in kinds], [(d + n) * w for d, n in kinds]
        df, dbi, dw = self.dense.f, self.dense.bi, self.dense.w
        return ([d * df + n * f for d, n in kinds], [d * dbi + n * bi for d, n in kinds],
                [d * dw + n * w for d, n in kinds])


class Costs:
    """Memoised per-layer costs for one model / node type / runtime."""

    def __init__(self, model: ModelSpec, node: NodeSpec, world: int, seq_len: int, precision: str,
                 runtime: Runtime, ep: int = 1, dense_costs: dict | None = None, etp: int = 0):
        """dense_costs: a memo of the dense blocks' costs to share between the Costs of one model
        at several ep (a dense block does not depend on ep); ``etp`` 1: the experts whole below tp
        (0: split by tp)."""
        self.model, self.node, self.seq, self.prec, self.ep, self.etp = model, node, seq_len, precision, ep, etp
        self.world = world
        # the runtime as predict() applies it on this host (no overlap where gloo shares the cores)
        self.rt = effective_runtime(runtime, node.device, min(node.gpus_per_node, world) if world > 1 else 0)
        self.gpn = node.gpus_per_node
        # the node's stack as predict() prices it, so the bounds charge the same terms
        self.stack = stack_of(node)
        # an oversubscribed CPU host: predict() gives a busy rank up to a whole core while
        # others wait (its busy-fraction fixed point); a bound may not assume less
        ranks = min(self.gpn, world)
        if node.device.host_cores > 0:
            ranks = min(ranks, node.device.host_cores)
        self.rates = make_rates(node.device, precision, ranks, node.framework)
        self.bpe = activation_bytes_per_element(precision)
        self._layer: dict = {}
        self._acts: dict = {}
        self._dense: dict = {} if dense_costs is None else dense_costs
        self._z3: dict = {}
        self._p2p: dict = {}
        m = model
        # its experts over ep (a rank's, times tp; with etp 1 a lower bound: the experts are not over tp)
        self.layer_params = rank_layer_params(m, 1, ep)
        self.dense_layer_params = rank_layer_params(m.alt_block(), 1)  # the second kind's (alt_block)
        # the share of a rank's parameters reduced over the whole dp group (routed experts are
        # reduced over their dp/ep holders): what the dp bound may charge
        self.dense_share = (m.layer_params() - m.expert_params_per_layer()) / self.layer_params
        self.embedding_params = float(m.embedding_params())
        self.head_params = float(m.head_params() + m.vocab_size * m.hidden_size)  # + tied copy (pp > 1)
        self.head_params_untied = float(m.head_params())

    def dp_group(self, dp: int, stride: int, cp: int = 1, cp_stride: int = 1) -> GroupShape:
        """The dp x cp group (:func:`planner.layout.data_parallel_spread`): dp ranks ``stride``
        apart, each with its cp ranks ``cp_stride`` apart."""
        return GroupShape(dp * cp, *union_group_spread(((cp, cp_stride), (dp, stride)), self.gpn))

    def layer(self, tp: int, cp: int, mb: int, rc: str, sp: bool) -> LayerCost:
        key = (tp, cp, mb, rc, sp)
        hit = self._layer.get(key)
        if hit is not None:
            return hit
        cost = self._block(self.model, tp, cp, mb, rc, sp)
        if self.model.alt_layers:
            dense = self._dense.get(key)
            if dense is None:
                dense = self._dense[key] = self._block(self.model.alt_block(), tp, cp, mb, rc, sp)
            cost = dataclasses.replace(cost, dense=dense, dense_layers=self.model.alt_layers)
        self._layer[key] = cost
        return cost

    def activations(self, tp: int, cp: int, mb: int, rc: str, sp: bool) -> LayerActivations:
        """The activation terms of :meth:`layer` alone (no timing): what the memory bound reads."""
        key = (tp, cp, mb, rc, sp)
        hit = self._layer.get(key) or self._acts.get(key)
        if hit is not None:
            return hit
        acts = self._block_activations(self.model, tp, cp, mb, rc, sp)
        if self.model.alt_layers:
            dense = self._block_activations(self.model.alt_block(), tp, cp, mb, rc, sp)
            acts = dataclasses.replace(acts, dense=dense, dense_layers=self.model.alt_layers)
        self._acts[key] = acts
        return acts

    def _block_activations(self, m: ModelSpec, tp: int, cp: int, mb: int, rc: str, sp: bool) -> LayerActivations:
        executor, attention, s = self.stack.executor, self.rt.attention, self.seq
        kept = layer_activation_bytes(m, mb, s, tp, cp, sp, rc, self.prec, attention, executor,
                                      self.rt.selective_recompute)
        full = (layer_activation_bytes(m, mb, s, tp, cp, sp, "none", self.prec, attention, executor)
                if rc == "full" else 0.0)
        return LayerActivations(kept, full)

    def block_params(self, n: int) -> float:
        """A lower bound of the parameters (times tp) of ``n`` blocks: at most the model's
        ``dense_layers`` of them dense."""
        return blocks_lower_bound(n, self.layer_params, self.dense_layer_params, self.model.alt_layers)

    def _block(self, m: ModelSpec, tp: int, cp: int, mb: int, rc: str, sp: bool) -> LayerCost:
        s = self.seq
        # the densest expert-parallel group: neighbouring dp ranks (tp-cp-dp-pp); folded (etp 1),
        # neighbouring ranks
        ep = self.ep
        ep_stride = 1 if self.etp else tp * cp
        bc = block_cost(m, self.node, self.rt, self.rates, tp=tp, cp=cp, micro_batch=mb, seq_len=s,
                        recompute=rc, sequence_parallel=sp, precision=self.prec,
                        tp_group=GroupShape(tp, *strided_group_spread(tp, 1, self.gpn)),
                        cp_group=GroupShape(cp, *strided_group_spread(cp, tp, self.gpn)),
                        ep_group=GroupShape(ep, *strided_group_spread(ep, ep_stride, self.gpn)) if ep > 1 else None,
                        expert_tp=self.etp)
        acts = self._block_activations(m, tp, cp, mb, rc, sp)
        return LayerCost(f=bc.fwd_s, bi=bc.bwd_input_s, w=bc.bwd_weight_s, lt=bc.lt, cp=cp, mb=mb,
                         emb_f=bc.emb_f, emb_b=bc.emb_b, head_f=bc.head_f, head_bi=bc.head_bi,
                         head_w=bc.head_bw, act_bytes=bc.act_bytes, layer_act=acts.layer_act,
                         layer_act_full=acts.layer_act_full)

    def z3(self, lc: LayerCost, tp: int, dp: int, dp_stride: int, rc: str,
           sharding: str = "zero3", block: ModelSpec | None = None, cp: int = 1) -> tuple[float, float]:
        """Exposed ZeRO-3 / FSDP (forward, backward) per layer over the dp x cp group, dp ranks
        ``dp_stride`` apart and cp ranks next to tp (:func:`planner.cost.block.shard_comm_s`, as
        predict() charges it), of the ``block`` kind (default the model's) whose cost ``lc`` is."""
        key = (id(lc), tp, dp, dp_stride, rc, sharding, cp)
        hit = self._z3.get(key)
        if hit is None:
            g = self.dp_group(dp, dp_stride, cp, tp)
            hit = self._z3[key] = shard_comm_s(block or self.model, self.node, self.rt, lc.lt, self.rates, g, tp=tp,
                                               cp=lc.cp, micro_batch=lc.mb, seq_len=self.seq, precision=self.prec,
                                               sharding=sharding, recompute=rc)
        return hit

    def fsdp_blocks(self, sharding: str, tp: int, dp: int) -> bool:
        """Whether predict() charges per-block parameter gathers (:func:`planner.cost.block.shards_per_block`)."""
        return shards_per_block(self.node, sharding, tp, dp)

    def p2p(self, act: float, tp: int, pp: int, pp_stride: int) -> float:
        """A lower bound of the stage-boundary send predict() charges
        (:func:`planner.cost.block.pipeline_hop_s`): as with sequence parallelism, the fewer bytes."""
        key = (act, tp, pp, pp_stride)
        hit = self._p2p.get(key)
        if hit is None:
            hit = 0.0
            if pp > 1:
                _, nodes = strided_group_spread(pp, pp_stride, self.gpn)
                hit = pipeline_hop_s(self.node, act, tp, tp > 1, self.world // pp, nodes > 1)
            self._p2p[key] = hit
        return hit


def balanced_layers(n_layers: int, stages: int) -> list[int]:
    base, extra = divmod(n_layers, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


@lru_cache(maxsize=4096)
def rank_layers(n_layers: int, pp: int, v: int) -> tuple[int, ...]:
    """Layers held by rank 0 and (pp > 1) rank pp-1 under the balanced split of pp*v chunks."""
    n_vs = pp * v
    layers = balanced_layers(n_layers, n_vs)
    ranks = (0, pp - 1) if pp > 1 else (0,)
    return tuple(sum(layers[k] for k in range(r, n_vs, pp)) for r in ranks)


@lru_cache(maxsize=4096)
def rank_layers_min(n_layers: int, pp: int, vs: tuple[int, ...]) -> tuple[int, ...]:
    """Per end rank, the fewest layers over the vpp options ``vs`` (a memory lower bound)."""
    per_v = [rank_layers(n_layers, pp, v) for v in vs]
    return tuple(min(x[i] for x in per_v) for i in range(len(per_v[0])))


@lru_cache(maxsize=4096)
def core_shape(n_layers: int, pp: int, vs: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """Per vpp option: (layers on rank 0, layers on rank pp-1, layers of the virtual stages
    before rank pp-1's first chunk)."""
    out = []
    for v in vs:
        ends = rank_layers(n_layers, pp, v)
        layers = balanced_layers(n_layers, pp * v)
        out.append((ends[0], ends[-1], sum(layers[: pp - 1])))
    return tuple(out)


def zb_bound(F: list[float], B: list[float], W: list[float], m: int, c: float, pp: int) -> float:
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
