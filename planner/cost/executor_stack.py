"""This project's executor as the cost model prices it: the costs ``clusterplan calibrate`` measured
(:class:`planner.hardware.FrameworkSpec`) for its eager element-wise ops, in-step slowdowns,
per-op and DTensor costs (:mod:`planner.cost.framework` has the counts). The interface is
:class:`planner.cost.stacks.FusedStack`'s; :func:`planner.cost.stacks.stack_of` picks."""
from __future__ import annotations

from planner.cost import framework as fw
from planner.cost import gloo
from planner.cost.comm import GroupShape, collective_time, overlapped_exposed_s
from planner.cost.precision import OPTIMIZER_BYTES_PER_PARAM, weight_bytes_per_param
from planner.cost.routing import busiest_rank_load
from planner.cost.runtime import Runtime
from planner.executor_rules import reshards_after_forward, ties_embeddings, uses_fsdp
from planner.framework_spec import FrameworkSpec
from planner.hardware import NodeSpec
from planner.model import ModelSpec


class ExecutorStack:
    """This project's executor at its measured costs ``frame`` (see the module docstring)."""

    executor = True

    def __init__(self, frame: FrameworkSpec):
        self.frame = frame

    def block_elementwise_s(self, model: ModelSpec, tokens: float, rows: float, tp: int, bpe: int,
                            rates, eager: bool = True) -> tuple[float, float]:
        """The executor's own eager ops, counted (:func:`planner.cost.framework.block_elementwise_bytes`),
        each kind at its calibrated rate (always eager)."""
        return rates.elementwise(fw.block_elementwise_bytes(model, tokens, rows, tp, bpe), bpe)

    def in_step(self, phase: str, *times: float) -> tuple[float, ...]:
        """The executor computes slower inside its step than in the benches (the profile's in-step
        factor of ``phase``, :meth:`planner.hardware.FrameworkSpec.step_scale`)."""
        scale = self.frame.step_scale(phase)
        return tuple(t * scale for t in times)

    def block_extras_s(self, model: ModelSpec, recompute: str, tp: int, sequence_parallel: bool,
                       tp_bytes: float, rates, ep: int = 1, tokens: float = 0.0) -> tuple[float, float]:
        """The block's counted aten ops (recomputed ones in the backward count), under TP the
        DTensor cost of each sharded linear (and of sequence parallel's redistribution), a MoE
        block's measured cost beyond its priced work, and under expert parallelism the measured
        dispatch beyond its token all-to-alls (both re-run in backward under full recomputation)."""
        measured = model.is_moe and ep > 1 and self.frame.ep_dispatch_measured
        n_f, n_b = fw.block_ops(model, recompute, ep, dispatch_measured=measured)
        fwd = rates.ops(n_f, self.frame.op_forward_s)
        bwd = rates.ops(n_b, self.frame.op_backward_s)
        measured_s = [self.frame.moe_block_s(model.n_experts // ep)] if model.is_moe else []
        if measured:  # the rank's tokens, top_k copies each
            routed = tokens * model.top_k
            measured_s.append(self.frame.ep_dispatch_s(routed * busiest_rank_load(model, routed, ep)))
        for m_f, m_b in measured_s:
            fwd += rates.ops(1, m_f)
            bwd += rates.ops(1, m_b + (m_f if recompute == "full" else 0.0))
        if tp > 1:
            lin = fw.linears_per_block(model)
            tp_f, tp_b = self.frame.tp_module_s(tp_bytes)
            fwd += rates.ops(lin, tp_f)
            bwd += rates.ops(lin, tp_b)
            if sequence_parallel:
                fwd += rates.ops(1, self.frame.sp_block_forward_s)
                bwd += rates.ops(1, self.frame.sp_block_backward_s)
        return fwd, bwd

    def embedding_extras_s(self, tp: int, tp_bytes: float, rates) -> tuple[float, float]:
        """Under TP the vocabulary-parallel embedding is a DTensor module."""
        if tp == 1:
            return 0.0, 0.0
        tp_f, tp_b = self.frame.tp_module_s(tp_bytes)
        return rates.ops(1, tp_f), rates.ops(1, tp_b)

    def final_norm_s(self, model: ModelSpec, rows: float, bpe: int, rates) -> tuple[float, float]:
        """The executor's final norm (eager RMSNorm or fused LayerNorm) at its calibrated rate."""
        fwd_bytes, bwd_bytes = fw.norm_bytes_per_element(model, bpe)
        h = model.hidden_size
        return rates.elementwise({fw.norm_kind(model): (fwd_bytes * rows * h, bwd_bytes * rows * h,
                                                        fwd_bytes * rows * h)}, bpe)

    def head_extras_s(self, model: ModelSpec, tp: int, tp_bytes: float, rates) -> tuple[float, float]:
        """Embedding + final norm + head + loss ops (counted here), the column-parallel head's
        DTensor cost under TP."""
        n_f, n_b = fw.edge_ops(model)
        fwd = rates.ops(n_f, self.frame.op_forward_s)
        bwd = rates.ops(n_b, self.frame.op_backward_s)
        if tp > 1:
            tp_f, tp_b = self.frame.tp_module_s(tp_bytes)
            fwd += rates.ops(1, tp_f)
            bwd += rates.ops(1, tp_b)
        return fwd, bwd

    # --- communication the stack adds per block and per step ---
    def shards_per_block(self, sharding: str, tp: int, dp: int) -> bool:
        """The executor runs FSDP2 (one unit per block) for zero2/zero3/fsdp and for any sharding
        under TP (:func:`planner.executor_rules.uses_fsdp`)."""
        return uses_fsdp(sharding, tp, dp)

    def tp_comm_s(self, model: ModelSpec, node: NodeSpec, act_bytes: float, g: GroupShape,
                  sequence_parallel: bool) -> tuple[float, float]:
        """``executor/parallel/tp.py``: 2 forward all-reduces (SP: all-gather + reduce-scatter
        each); backward one input-gradient all-reduce per column-parallel linear (Q, K, V, up,
        gate are separate DTensor modules), with SP also the forward reduce-scatters' all-gathers."""
        ar = collective_time("all_reduce", act_bytes, g, node)
        if sequence_parallel:
            ag = collective_time("all_gather", act_bytes, g, node)
            rs = collective_time("reduce_scatter", act_bytes, g, node)
            return 2 * (ag + rs), fw.colwise_per_block(model) * ar + 2 * ag
        return 2 * ar, fw.colwise_per_block(model) * ar

    def tp_edge_s(self, model: ModelSpec, tokens: float, bpe: int, g: GroupShape,
                  node: NodeSpec) -> tuple[float, float, float]:
        """The vocabulary-parallel embedding's and loss's all-reduces, the head's input gradient
        (:func:`planner.cost.framework.tp_edge_comm_s`)."""
        return fw.tp_edge_comm_s(model, tokens, bpe, g, node)

    def shard_comm_s(self, model: ModelSpec, node: NodeSpec, runtime: Runtime, lt, rates, g: GroupShape, *,
                     tp: int, precision: str, sharding: str, recompute: str,
                     gemm_s: tuple[float, ...] = ()) -> tuple[float, float]:
        """FSDP2, one unit per block: gather (again before backward unless ZeRO-2), reduce-scatter,
        and each unit's measured per-micro-batch CPU work at ``rates``."""
        size = model.layer_params() / tp * weight_bytes_per_param(precision)
        ag = collective_time("all_gather", size, g, node)
        rs = collective_time("reduce_scatter", size, g, node)
        unit_f, unit_b = self.frame.fsdp_unit_s(size)
        comm_f = ag + rates.ops(1, unit_f)
        comm_b = (ag if reshards_after_forward(sharding) else 0.0) + rs + rates.ops(1, unit_b)
        if runtime.shard_prefetch:
            dev = node.device
            return (overlapped_exposed_s(dev, comm_f, lt.fwd_s),
                    overlapped_exposed_s(dev, comm_b, lt.bwd_s + lt.recompute_s))
        return comm_f, comm_b

    def pipeline_send_bytes(self, act_bytes: float, tp: int, sequence_parallel: bool) -> float:
        """``torch.distributed.pipelining`` sends a stage's local output: the whole activation
        from every tp rank (replicated after the row-parallel linear), ``1/tp`` of it with
        sequence parallelism (sharded along the sequence)."""
        return act_bytes / tp if sequence_parallel else act_bytes

    def fsdp_edge_s(self, model: ModelSpec, node: NodeSpec, rates, g: GroupShape, *, tp: int, pp: int,
                    precision: str, sharding: str) -> tuple[float, float, float, float]:
        """(embedding forward, backward, head forward, backward) of the FSDP2 units outside the
        blocks: the root unit (and the untied embedding's) gather before forward (again before
        backward when resharding), reduce-scatter the gradients, plus each unit's own cost."""
        if not uses_fsdp(sharding, tp, g.size):
            return 0.0, 0.0, 0.0, 0.0
        w_b = weight_bytes_per_param(precision)
        tied = ties_embeddings(model, tp, pp)
        reshard = reshards_after_forward(sharding)

        def unit(params: float) -> tuple[float, float]:
            ag = collective_time("all_gather", params * w_b, g, node)
            rs = collective_time("reduce_scatter", params * w_b, g, node)
            unit_f, unit_b = self.frame.fsdp_unit_s(params * w_b)
            return ag + rates.ops(1, unit_f), (ag if reshard else 0.0) + rs + rates.ops(1, unit_b)

        emb_params = model.embedding_params() / tp
        # a tied model the executor unties (tp or pp > 1) gets its own LM head weight in the root unit
        untied_head = model.vocab_size * model.embed_dim if model.tied_embeddings and not tied else 0
        head_params = (model.head_params() + untied_head if not tied
                       else model.hidden_size * (2 if model.bias else 1)) / tp
        if tied:
            hf, hb = unit(emb_params + head_params)
            return 0.0, 0.0, hf, hb
        ef, eb = unit(emb_params)
        hf, hb = unit(head_params)
        return ef, eb, hf, hb

    def dp_reduction_s(self, node: NodeSpec, rates, g: GroupShape, *, precision: str, sharding: str, tp: int,
                       pp: int, params: float, param_tensors: int, grad_bytes: float,
                       grad_all_reduce: bool = False) -> tuple[float, float, float]:
        """DDP's all-reduce (ZeRO-1 too: DDP plus ZeroRedundancyOptimizer's parameter broadcasts)
        and, without pipelining, DDP's reducer (hooks, buckets) at its calibrated cost.

        The broadcasts (one per parameter tensor, each from its owner) move the bytes of an
        all-gather in all: inside one node they are priced by the measured all-gather; over
        several gloo nodes by gloo's broadcast tree (:func:`planner.cost.gloo.broadcast_all_s`),
        whose messages cross the node links more often than a ring's."""
        grads = params * grad_bytes
        red = collective_time("all_reduce", grads, g, node)
        weight_bytes = params * weight_bytes_per_param(precision)
        if sharding == "none":
            gather = 0.0
        elif g.nodes > 1 and node.device.host_cores > 0:
            gather = gloo.broadcast_all_s(weight_bytes, param_tensors, g, node)
        else:
            gather = collective_time("all_gather", weight_bytes, g, node)
        reducer = rates.ops(1, self.frame.ddp_reducer_s(param_tensors, grads)) if pp == 1 else 0.0
        return red, gather, reducer

    # --- the optimizer step ---
    def optimizer_traffic_s(self, rates, local_params: float, params_per_tensor: float | None) -> float:
        """``AdamW(foreach=False)``'s bytes (:data:`planner.cost.framework.ADAMW_BYTES_PER_PARAM`)
        at the profile's ``adamw`` rate for tensors of ``params_per_tensor`` (None: the fastest
        measured size, a lower bound), or the fused bytes at the pooled memory-bound rate without
        one; times the in-step factor."""
        points = self.frame.elementwise_points("adamw", "fp32")
        if points is None:
            traffic_s = rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 0)
        else:
            call_bytes = (max(points, key=lambda pt: pt[1])[0] if params_per_tensor is None
                          else fw.ADAMW_BYTES_PER_PARAM * params_per_tensor)
            traffic_s = rates.elementwise({"adamw": (fw.ADAMW_BYTES_PER_PARAM * local_params, 0.0, call_bytes)}, 4)[0]
        return traffic_s * self.frame.step_scale("optimizer")

    def optimizer_s(self, model: ModelSpec, P, rates, local_params: float, ranks) -> float:
        """Its traffic plus ~10 aten ops per parameter tensor, DTensor parameters under TP / FSDP2,
        ZeroRedundancyOptimizer's per-parameter bookkeeping (ZeRO-1 steps whole tensors per rank)."""
        tensors = fw.param_tensors(model, P, ranks)
        fsdp = uses_fsdp(P.sharding, P.tp, P.dp)
        zero1 = P.sharding == "zero1" and P.dp > 1 and not fsdp
        stepped = tensors / P.dp if zero1 else tensors
        t = self.optimizer_traffic_s(rates, local_params, local_params / max(1, stepped))
        t += rates.ops(stepped * fw.ADAM_OPS_PER_PARAM, self.frame.op_optimizer_s)
        if P.tp > 1:
            t += rates.ops(tensors, self.frame.tp_optimizer_param_s)
        elif fsdp:
            t += rates.ops(tensors, self.frame.fsdp_optimizer_param_s)
        if zero1:
            t += rates.ops(tensors, self.frame.zero1_param_s)
        return t

    def optimizer_lower_bound_s(self, rates, local_params: float, n_virtual_stages: int) -> float:
        """The traffic at the fastest measured tensor size (per-op costs are >= 0)."""
        return self.optimizer_traffic_s(rates, local_params, None)

    # --- the host, the pipelining runtime and memory ---
    def kernel_overhead_s(self, device) -> float:
        """None per kernel: the executor's counted ops pay its measured per-op costs instead."""
        return 0.0

    def concurrency(self, ranks_per_node: float, host_cores: float) -> tuple[float, float]:
        """The measured slowdown of ranks computing at once (shared caches and memory bandwidth),
        and beyond the host's cores the measured cost of oversubscribing it, in proportion to the
        busy ranks past the cores (in full from twice the cores, where it was measured)."""
        if ranks_per_node <= 1:
            return 1.0, 1.0
        f = self.frame
        over = 1.0
        if host_cores > 0 and ranks_per_node > host_cores:
            over += f.oversubscribed_slowdown * min(1.0, (ranks_per_node - host_cores) / host_cores)
        return (1.0 + f.concurrent_slowdown) * over, (1.0 + f.concurrent_gemm_slowdown) * over

    def pipeline_actions(self, fwd_s: list, bwd_s: list, w_s: list, rates, schedule: str) -> tuple[list, list, list]:
        """``torch.distributed.pipelining``'s costs per action (:func:`planner.cost.framework.pipeline_actions`)."""
        return fw.pipeline_actions(fwd_s, bwd_s, w_s, self.frame, rates, schedule)

    def in_flight(self, schedule: str, pp: int, num_micro_batches: int, counted: tuple[int, ...]) -> tuple[int, ...]:
        """The executor's zero-bubble schedule holds its graphs from F to W
        (:func:`planner.cost.framework.zb_in_flight`); other schedules the schedule's count."""
        return fw.zb_in_flight(pp, num_micro_batches) if schedule == "zb" else counted

    def reserved_bytes(self, device) -> float:
        """The measured per-process training overhead."""
        return self.frame.training_overhead_bytes

    def fragmentation(self, device) -> float:
        """The measured allocator fragmentation."""
        return self.frame.fragmentation_fraction
