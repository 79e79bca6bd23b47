"""One transformer block and one micro-batch on one rank: compute plus the communication that
is not hidden. Every formula here is used by both :func:`planner.cost.step.predict` and the
search's bounds (:mod:`planner.search`), which memoise :func:`block_cost` per key.

Tensor parallel (Shoeybi et al. 2019; Narayanan et al. SC'21 Sec. 3.3): 2 all-reduces of
``b*s*h`` activations per block forward and 2 in backward (with sequence parallel, Korthikanti
et al. 2022 Sec. 4.2.2: the same bytes as all-gather + reduce-scatter), not overlapped; full
recomputation repeats the forward ones. Context parallel (ring attention, Liu et al. 2023):
``cp-1`` K/V exchanges per block forward (K/V and their gradients backward), overlapped with the
attention core. ZeRO-3 / FSDP: per block parameter all-gathers and gradient reduce-scatters,
hidden behind the neighbouring compute where the runtime prefetches.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.cost import framework as fw
from planner.cost.comm import GroupShape, collective_time, p2p_time
from planner.cost.compute import LayerTimes, Rates, embedding_times, head_times, layer_times
from planner.cost.precision import activation_bytes_per_element, weight_bytes_per_param
from planner.cost.runtime import Runtime
from planner.cost.zero3_prefetch import gathered_tensors_per_layer, per_tensor_prefetch_exposed
from planner.executor_rules import ties_embeddings, uses_fsdp
from planner.hardware import NodeSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig, group_node_spread


def group_shape(P: ParallelConfig, axis: str, gpus_per_node: int) -> GroupShape:
    """The ``axis`` group of ``P`` under its rank layout (:func:`planner.plan.group_node_spread`)."""
    per_node, nodes = group_node_spread(P, axis, gpus_per_node)
    return GroupShape(getattr(P, axis), per_node, nodes)


def shards_per_block(framework, sharding: str, tp: int, dp: int) -> bool:
    """Whether parameters are gathered block by block: ZeRO-3 / FSDP over dp > 1; under the
    executor's runtime (a profile's ``framework:`` section) its FSDP2 for any sharding the
    executor runs with FSDP2 (:func:`planner.cost.framework.uses_fsdp`)."""
    if framework is not None:
        return uses_fsdp(sharding, tp, dp)
    return sharding in ("zero3", "fsdp") and dp > 1


def tp_comm_s(model: ModelSpec, node: NodeSpec, act_bytes: float, g: GroupShape,
              sequence_parallel: bool) -> tuple[float, float]:
    """Exposed (forward, backward) tensor-parallel communication of one block.

    Megatron: 2 all-reduces each way (SP: all-gather + reduce-scatter each). The executor
    (``executor/parallel/tp.py``, profiles with a ``framework:`` section): 2 forward all-reduces
    (SP: all-gather + reduce-scatter each); backward one input-gradient all-reduce per
    column-parallel linear (Q, K, V, up, gate are separate), with SP also the forward
    reduce-scatters' all-gathers."""
    if g.size == 1:
        return 0.0, 0.0
    if node.framework is not None:
        ar = collective_time("all_reduce", act_bytes, g, node)
        if sequence_parallel:
            ag = collective_time("all_gather", act_bytes, g, node)
            rs = collective_time("reduce_scatter", act_bytes, g, node)
            return 2 * (ag + rs), fw.colwise_per_block(model) * ar + 2 * ag
        return 2 * ar, fw.colwise_per_block(model) * ar
    if sequence_parallel:
        one = (collective_time("all_gather", act_bytes, g, node)
               + collective_time("reduce_scatter", act_bytes, g, node))
    else:
        one = collective_time("all_reduce", act_bytes, g, node)
    return 2 * one, 2 * one


def cp_comm_s(model: ModelSpec, node: NodeSpec, lt: LayerTimes, g: GroupShape, *, tp: int,
              micro_batch: int, seq_len: int, precision: str) -> tuple[float, float]:
    """Exposed (forward, backward) ring-attention K/V exchange of one block: ``cp - 1`` hops
    forward, twice that backward (K/V and their gradients), overlapped with the attention core."""
    cp = g.size
    if cp == 1:
        return 0.0, 0.0
    kv_bytes = 2 * activation_bytes_per_element(precision) * micro_batch * (seq_len / cp) * model.kv_dim / tp
    hop = p2p_time(kv_bytes, g.nodes > 1, node)
    return max(0.0, (cp - 1) * hop - lt.core_fwd_s), max(0.0, 2 * (cp - 1) * hop - lt.core_bwd_s)


def shard_comm_s(model: ModelSpec, node: NodeSpec, runtime: Runtime, lt: LayerTimes, rates: Rates,
                 g: GroupShape, *, tp: int, cp: int, micro_batch: int, seq_len: int, precision: str,
                 sharding: str, recompute: str) -> tuple[float, float]:
    """Exposed (forward, backward) ZeRO-3 / FSDP communication of one block over the dp group
    ``g`` (zero when :func:`shards_per_block` is false).

    The executor's FSDP2 (a ``framework:`` section): one unit per block, its per-unit CPU work
    at ``rates``; ZeRO-2 does not gather again before backward. Otherwise one flat parameter per
    block or, DeepSpeed 2021, one collective per tensor (:mod:`planner.cost.zero3_prefetch`)."""
    frame = node.framework
    if not shards_per_block(frame, sharding, tp, g.size):
        return 0.0, 0.0
    size = model.layer_params() / tp * weight_bytes_per_param(precision)
    compute_b = lt.bwd_s + lt.recompute_s
    if frame is not None:
        ag = collective_time("all_gather", size, g, node)
        rs = collective_time("reduce_scatter", size, g, node)
        unit_f, unit_b = frame.fsdp_unit_s(size)
        comm_f = ag + rates.ops(1, unit_f)
        comm_b = (ag if sharding in ("zero3", "fsdp") else 0.0) + rs + rates.ops(1, unit_b)
        if runtime.shard_prefetch:
            return max(0.0, comm_f - lt.fwd_s), max(0.0, comm_b - compute_b)
        return comm_f, comm_b
    n_coll = gathered_tensors_per_layer(model, tp, runtime)
    copies_s = g.size * node.device.kernel_overhead_s if runtime.list_collective_copies else 0.0

    def coll(op: str) -> float:
        lat = collective_time(op, 1.0, g, node)
        return (collective_time(op, size, g, node, runtime.multi_rail) + (n_coll - 1) * lat
                + n_coll * copies_s)

    ag = coll("all_gather")
    gathers_b = 1 + (1 if (runtime.recompute_gathers_again and recompute == "full") else 0)
    comm_f, comm_b = ag, gathers_b * ag + coll("reduce_scatter")
    if runtime.shard_prefetch and runtime.gather_granularity == "per_tensor":
        return per_tensor_prefetch_exposed(model, node, runtime, lt, rates, g, copies_s, tp=tp, cp=cp,
                                           micro_batch=micro_batch, seq_len=seq_len,
                                           precision=precision, recompute=recompute)
    if runtime.shard_prefetch:
        return max(0.0, comm_f - lt.fwd_s), max(0.0, comm_b - compute_b)
    eta = runtime.shard_overlap_fraction  # a fraction of the shorter of comm and compute hides
    return comm_f - eta * min(comm_f, lt.fwd_s), comm_b - eta * min(comm_b, compute_b)


def fsdp_edge_s(model: ModelSpec, node: NodeSpec, rates: Rates, g: GroupShape, *, tp: int, pp: int,
                precision: str, sharding: str) -> tuple[float, float, float, float]:
    """The executor's FSDP2 units outside the blocks, per micro-batch: (embedding forward,
    backward, head forward, backward) seconds. The root unit (and the untied embedding's unit)
    gather their parameters before forward (again before backward when resharding) and
    reduce-scatter the gradients, plus each unit's per-micro-batch cost."""
    frame = node.framework
    if frame is None or not uses_fsdp(sharding, tp, g.size):
        return 0.0, 0.0, 0.0, 0.0
    w_b = weight_bytes_per_param(precision)
    tied = ties_embeddings(model, tp, pp)
    reshard = sharding in ("zero3", "fsdp")

    def unit(params: float) -> tuple[float, float]:
        ag = collective_time("all_gather", params * w_b, g, node)
        rs = collective_time("reduce_scatter", params * w_b, g, node)
        unit_f, unit_b = frame.fsdp_unit_s(params * w_b)
        return ag + rates.ops(1, unit_f), (ag if reshard else 0.0) + rs + rates.ops(1, unit_b)

    emb_params = model.embedding_params() / tp
    head_params = (model.head_params() if not tied else model.hidden_size * (2 if model.bias else 1)) / tp
    if tied:
        hf, hb = unit(emb_params + head_params)
        return 0.0, 0.0, hf, hb
    ef, eb = unit(emb_params)
    hf, hb = unit(head_params)
    return ef, eb, hf, hb


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

    @property
    def fwd_s(self) -> float:
        return self.lt.fwd_s + self.tp_f + self.cp_f

    @property
    def bwd_input_s(self) -> float:
        """Backward input gradient with recomputation and exposed TP / CP communication."""
        return self.lt.bwd_input_s + self.lt.recompute_s + self.tp_b + self.tp_rc + self.cp_b

    @property
    def bwd_weight_s(self) -> float:
        return self.lt.bwd_weight_s


def block_cost(model: ModelSpec, node: NodeSpec, runtime: Runtime, rates: Rates, *, tp: int, cp: int,
               micro_batch: int, seq_len: int, recompute: str, sequence_parallel: bool, precision: str,
               tp_group: GroupShape, cp_group: GroupShape) -> BlockCost:
    """:class:`BlockCost` of one rank with its tp and cp groups laid out as given."""
    b, s, sp = micro_batch, seq_len, sequence_parallel
    lt = layer_times(model, b, s, tp, cp, sp, recompute, precision, rates, runtime)
    emb_f, emb_b = embedding_times(model, b, s, tp, cp, sp, precision, rates)
    head_f, head_bi, head_bw = head_times(model, b, s, tp, cp, sp, precision, rates)
    bpe = activation_bytes_per_element(precision)
    act = bpe * b * (s / cp) * model.hidden_size
    tp_f, tp_b = tp_comm_s(model, node, act, tp_group, sp)
    if tp > 1 and node.framework is not None:  # the executor's vocabulary-parallel edges
        e_f, h_f, h_b = fw.tp_edge_comm_s(model, b * s / cp, bpe, tp_group, node)
        emb_f, head_f, head_bi = emb_f + e_f, head_f + h_f, head_bi + h_b
    cp_f, cp_b = cp_comm_s(model, node, lt, cp_group, tp=tp, micro_batch=b, seq_len=s, precision=precision)
    return BlockCost(lt, tp_f, tp_b, tp_f if recompute == "full" else 0.0, cp_f, cp_b,
                     emb_f, emb_b, head_f, head_bi, head_bw, act)
