"""One transformer block and one micro-batch on one rank: compute plus the communication that
is not hidden. Every formula here is used by both :func:`planner.cost.step.predict` and the
search's bounds (:mod:`planner.search`), which memoise :func:`block_cost` per key; what the
stack adds (its TP, ZeRO-3 / FSDP and edge communication) comes from :mod:`planner.cost.stacks`.

Tensor parallel (Shoeybi et al. 2019; Narayanan et al. SC'21 Sec. 3.3): 2 all-reduces of
``b*s*h`` activations per block forward and 2 in backward (with sequence parallel, Korthikanti
et al. 2022 Sec. 4.2.2: the same bytes as all-gather + reduce-scatter), not overlapped unless
the runtime pipelines them with the GEMMs (``Runtime.tp_comm_overlap``); full recomputation
repeats the forward ones. Expert parallel (MoE): the routed tokens' dispatch and combine are
all-to-alls over the expert-parallel group (:func:`ep_comm_s`). Context parallel (ring attention, Liu et al. 2023):
``cp-1`` K/V exchanges per block forward (K/V and their gradients backward), overlapped with the
attention core. ZeRO-3 / FSDP: per block parameter all-gathers and gradient reduce-scatters,
hidden behind the neighbouring compute where the runtime prefetches. Whatever overlaps still
holds SMs the compute beside it loses (:func:`planner.cost.comm.overlapped_exposed_s`).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.cost.comm import GroupShape, collective_time, overlapped_exposed_s, p2p_time
from planner.cost.compute import (LayerTimes, Rates, block_gemm_forward_times, embedding_times, head_times,
                                  layer_times)
from planner.cost.precision import activation_bytes_per_element
from planner.cost.routing import busiest_rank_load
from planner.cost.runtime import Runtime
from planner.cost.stacks import stack_of
from planner.hardware import NodeSpec
from planner.layout import data_parallel_spread, group_node_spread
from planner.model import ModelSpec
from planner.plan import ParallelConfig


def group_shape(P: ParallelConfig, axis: str, gpus_per_node: int) -> GroupShape:
    """The ``axis`` group of ``P`` under its rank layout (:func:`planner.layout.group_node_spread`)."""
    per_node, nodes = group_node_spread(P, axis, gpus_per_node)
    return GroupShape(getattr(P, axis), per_node, nodes)


def data_parallel_group(P: ParallelConfig, gpus_per_node: int) -> GroupShape:
    """The dp x cp group of ``P`` (:func:`planner.layout.data_parallel_spread`)."""
    return GroupShape(P.data_parallel_ranks, *data_parallel_spread(P, gpus_per_node))


def shards_per_block(node: NodeSpec, sharding: str, tp: int, dp: int) -> bool:
    """Whether the stack ``node`` is priced with gathers parameters block by block (ZeRO-3 / FSDP;
    the executor's FSDP2, :mod:`planner.cost.stacks`)."""
    return stack_of(node).shards_per_block(sharding, tp, dp)


def shard_comm_s(model: ModelSpec, node: NodeSpec, runtime: Runtime, lt: LayerTimes, rates: Rates,
                 g: GroupShape, *, tp: int, cp: int, micro_batch: int, seq_len: int, precision: str,
                 sharding: str, recompute: str) -> tuple[float, float]:
    """Exposed (forward, backward) ZeRO-3 / FSDP communication of one block over the dp group
    ``g``, as the node's stack runs it (zero when it does not gather block by block)."""
    stack = stack_of(node)
    if not stack.shards_per_block(sharding, tp, g.size):
        return 0.0, 0.0
    per_tensor = runtime.shard_prefetch and runtime.gather_granularity == "per_tensor"
    gemm_s = block_gemm_forward_times(model, micro_batch, seq_len, tp, cp, precision, rates) if per_tensor else ()
    return stack.shard_comm_s(model, node, runtime, lt, rates, g, tp=tp, precision=precision, sharding=sharding,
                              recompute=recompute, gemm_s=gemm_s)


def pipeline_hop_s(node: NodeSpec, act_bytes: float, tp: int, sequence_parallel: bool, stage_ranks: int,
                   crosses_nodes: bool) -> float:
    """One stage-boundary send of one micro-batch's activations ``act_bytes``: the stack's bytes
    per rank (:meth:`planner.cost.stacks.FusedStack.pipeline_send_bytes`), the stage's
    ``stage_ranks`` ranks on a node sending at once."""
    size = stack_of(node).pipeline_send_bytes(act_bytes, tp, sequence_parallel)
    return p2p_time(size, crosses_nodes, node, min(node.gpus_per_node, stage_ranks))


def cp_comm_s(model: ModelSpec, node: NodeSpec, lt: LayerTimes, g: GroupShape, *, tp: int,
              micro_batch: int, seq_len: int, precision: str) -> tuple[float, float]:
    """Exposed (forward, backward) ring-attention K/V exchange of one block: ``cp - 1`` hops
    forward, twice that backward (K/V and their gradients), overlapped with the attention core."""
    cp = g.size
    if cp == 1 or model.is_cross_block:  # a cross-attention block's keys are the encoder's, on every rank
        return 0.0, 0.0
    kv_bytes = (activation_bytes_per_element(precision) * micro_batch * (seq_len / cp)
                * (model.kv_dim + model.v_dim) / tp)
    hop = p2p_time(kv_bytes, g.nodes > 1, node)
    dev = node.device
    return (overlapped_exposed_s(dev, (cp - 1) * hop, lt.core_fwd_s),
            overlapped_exposed_s(dev, 2 * (cp - 1) * hop, lt.core_bwd_s))


def ep_comm_s(model: ModelSpec, node: NodeSpec, g: GroupShape | None, tp_group: GroupShape, *, micro_batch: int,
              seq_len: int, cp: int, sequence_parallel: bool, precision: str, expert_tp: int = 0) -> float:
    """One token exchange of a block's routed tokens (the dispatch, or the combine) as
    Megatron-Core's all-to-all dispatcher runs it: each rank sends its ``tokens * top_k`` hidden
    vectors to the ranks of the expert-parallel group ``g`` holding their experts, and the
    exchange lasts as long as the busiest rank's (:func:`planner.cost.routing.busiest_rank_load`); under sequence parallelism a tp rank exchanges its own sequence shard and the
    routed tokens are then all-gathered over the experts' tensor-parallel group (``expert_tp``
    ranks, default tp: the first of the tp group under Megatron's folded order) and
    reduce-scattered back on the combine (also without expert parallelism: ``g`` None or of one
    rank; Megatron-Core v0.15 ``MoEAlltoAllTokenDispatcher``). One dispatch and one combine
    forward, both again backward; not overlapped, as every runtime preset here runs them:
    Megatron-Core overlaps them only when asked (``--moe-shared-expert-overlap`` hides them behind
    the shared expert, ``--overlap-moe-expert-parallel-comm`` behind another micro-batch's
    compute), torchtitan 0.3.0's default ``standard`` MoE backend does not, DeepSeek-V3's DualPipe
    does (arXiv:2412.19437 Sec. 3.2.1; no preset or schedule here)."""
    if not model.is_moe:
        return 0.0
    tp = tp_group.size
    etp = expert_tp or tp
    if etp != tp:
        per_node = min(etp, tp_group.ranks_per_node)
        etp_group = GroupShape(etp, per_node, -(-etp // per_node))
    else:
        etp_group = tp_group
    tokens = micro_batch * seq_len / cp / (tp if sequence_parallel else 1)
    ep = g.size if g is not None else 1
    # the exchange waits for the busiest rank's share (padded to capacity: the padding is sent too)
    routed_bytes = (activation_bytes_per_element(precision) * tokens * model.top_k * model.hidden_size
                    * busiest_rank_load(model, tokens * model.top_k, ep))
    a2a = collective_time("all_to_all", routed_bytes, g, node) if ep > 1 else 0.0
    if etp > 1 and sequence_parallel:
        a2a += collective_time("all_gather", routed_bytes * etp, etp_group, node)
    return a2a


@dataclass(frozen=True)
class BlockCost:
    """One block and one micro-batch on one rank (seconds), ZeRO-3 / FSDP excluded (it depends
    on the dp group: :func:`shard_comm_s`): compute ``lt``, the exposed tensor- and
    context-parallel communication, and the embedding / LM head work of the end stages
    (with the executor's TP communication there)."""

    lt: LayerTimes
    tp_f: float
    tp_b: float
    tp_rc: float
    cp_f: float
    cp_b: float
    emb_f: float
    emb_b: float
    head_f: float
    head_bi: float
    head_bw: float
    act_bytes: float
    """``b*s/cp*h`` activations: the pipeline send (``/tp`` with Megatron's scatter-gather)."""
    ep_f: float = 0.0
    ep_b: float = 0.0
    ep_rc: float = 0.0

    @property
    def fwd_s(self) -> float:
        return self.lt.fwd_s + self.tp_f + self.cp_f + self.ep_f

    @property
    def bwd_input_s(self) -> float:
        """Backward input gradient with recomputation and exposed TP / CP / EP communication."""
        return (self.lt.bwd_input_s + self.lt.recompute_s + self.tp_b + self.tp_rc + self.cp_b
                + self.ep_b + self.ep_rc)

    @property
    def bwd_weight_s(self) -> float:
        return self.lt.bwd_weight_s


def block_cost(model: ModelSpec, node: NodeSpec, runtime: Runtime, rates: Rates, *, tp: int, cp: int,
               micro_batch: int, seq_len: int, recompute: str, sequence_parallel: bool, precision: str,
               tp_group: GroupShape, cp_group: GroupShape, ep_group: GroupShape | None = None,
               expert_tp: int = 0) -> BlockCost:
    """:class:`BlockCost` of one rank with its tp, cp (and expert-parallel) groups laid out as
    given; ``expert_tp``: the routed experts' tensor-parallel degree (0: tp)."""
    b, s, sp = micro_batch, seq_len, sequence_parallel
    ep = ep_group.size if ep_group is not None else 1
    etp = 0 if expert_tp in (0, tp) else expert_tp
    lt = layer_times(model, b, s, tp, cp, sp, recompute, precision, rates, runtime, ep, etp)
    emb_f, emb_b = embedding_times(model, b, s, tp, cp, sp, precision, rates)
    head_f, head_bi, head_bw = head_times(model, b, s, tp, cp, sp, precision, rates)
    bpe = activation_bytes_per_element(precision)
    act = bpe * b * (s / cp) * model.hidden_size
    stack = stack_of(node)
    # Megatron-Core's MoE layer under sequence parallelism: the dispatcher all-gathers the routed
    # tokens over the experts' tp group (ep_comm_s), the MLP's own gather / scatter pair is gone;
    # a shared expert keeps it (a dense MLP beside the routed ones)
    dispatcher_tp = (model.is_moe and sp and tp > 1 and not stack.executor
                     and not model.shared_expert_ffn_hidden_size)
    tp_f = tp_b = 0.0
    if tp > 1:
        tp_f, tp_b = stack.tp_comm_s(model, node, act, tp_group, sp)
        if dispatcher_tp:  # only the attention's tp collectives remain
            tp_f, tp_b = tp_f / 2, tp_b / 2
        if runtime.tp_comm_overlap and sp and not runtime.executor:
            gemm_f = sum(block_gemm_forward_times(model, b, s, tp, cp, precision, rates, ep, etp))
            tp_f = overlapped_exposed_s(node.device, tp_f, gemm_f)
            tp_b = overlapped_exposed_s(node.device, tp_b, 2 * gemm_f)  # dgrad + wgrad GEMMs
        e_f, h_f, h_b = stack.tp_edge_s(model, b * s / cp, bpe, tp_group, node)
        emb_f, head_f, head_bi = emb_f + e_f, head_f + h_f, head_bi + h_b
    cp_f, cp_b = cp_comm_s(model, node, lt, cp_group, tp=tp, micro_batch=b, seq_len=s, precision=precision)
    a2a = (ep_comm_s(model, node, ep_group, tp_group, micro_batch=b, seq_len=s, cp=cp, sequence_parallel=sp,
                     precision=precision, expert_tp=etp) if ep > 1 or dispatcher_tp else 0.0)
    return BlockCost(lt, tp_f, tp_b, tp_f if recompute == "full" else 0.0, cp_f, cp_b,
                     emb_f, emb_b, head_f, head_bi, head_bw, act,
                     ep_f=2 * a2a, ep_b=2 * a2a, ep_rc=2 * a2a if recompute == "full" else 0.0)
