"""What differs between the two kinds of stack the cost model prices, behind one interface.

* :class:`FusedStack`: a production stack (Megatron-Core, torchtitan, DeepSpeed, ...): fused
  element-wise kernels (Korthikanti et al. 2022, Sec. 4), no per-op framework costs.
* :class:`planner.cost.executor_stack.ExecutorStack`: this project's executor at the costs
  ``clusterplan calibrate`` measured (:class:`planner.hardware.FrameworkSpec`): its eager
  element-wise ops at their calibrated rates, its in-step slowdowns, per-op and DTensor costs
  (:mod:`planner.cost.framework` has the counts).

:func:`stack_of` is the one place that picks: the executor stack where the rates carry a
framework section, which :func:`planner.cost.runtime.bind_runtime` leaves only under the executor
runtime. The pricing code calls the stack; it does not ask which one it has.
"""
from __future__ import annotations

from planner.cost.comm import GroupShape, collective_time, overlapped_exposed_s
from planner.cost.eager_ops import eager_block_bytes
from planner.cost.executor_stack import ExecutorStack
from planner.cost.precision import OPTIMIZER_BYTES_PER_PARAM, weight_bytes_per_param
from planner.cost.runtime import Runtime
from planner.cost.zero3_prefetch import gathered_tensors_per_layer, per_tensor_prefetch_exposed
from planner.framework_spec import FrameworkSpec
from planner.hardware import NodeSpec
from planner.model import ModelSpec


def fp8_cast_bytes(model: ModelSpec, tokens: float, tp: int, bpe: int) -> tuple[float, float]:
    """(forward, backward) bytes of a Transformer Engine FP8 recipe's casts in one block: each
    GEMM operand that is not already FP8 is read in ``bpe`` bytes and written as FP8 plus its FP8
    transpose (TE ``cast_transpose``: the transpose feeds the wgrad GEMM). Forward: the inputs of
    the output projection and of the down projection (QKV's and the up projection's come out of
    TE's fused LayerNorm already in FP8); backward: the output gradient of each of the four
    linears. Weights are cast once per step (TE caches them across micro-batches)."""
    h = model.hidden_size
    width = model.token_mlp_width
    per_element = bpe + 2
    fwd = per_element * tokens * (model.attn_out_dim / tp + width / tp)
    bwd = per_element * (tokens * (model.q_dim + model.kv_dim + model.v_dim) / tp + 2 * tokens * h
                         + tokens * (model.mlp_matrices - 1) * width / tp)
    return fwd, bwd


class FusedStack:
    """A fused production stack (see the module docstring)."""

    executor = False

    def block_elementwise_s(self, model: ModelSpec, tokens: float, rows: float, tp: int, bpe: int,
                            rates, eager: bool = False) -> tuple[float, float]:
        """One block's memory-bound work (forward, backward): its norms (two, or Gemma 2's four:
        read x, write y), two fused bias-dropout-adds, the MLP activation (GELU; SwiGLU reads
        gate and up), RoPE on Q and K; backward moves twice the bytes over the same kernels.
        ``eager``: the same ops as PyTorch eager runs them, kernel by kernel
        (:func:`planner.cost.eager_ops.eager_block_bytes`)."""
        if eager:
            ew_bytes, kernels = eager_block_bytes(model, tokens, rows, tp, bpe)
        else:
            h = model.hidden_size
            mask = 1 if model.dropout > 0 else 0
            norms = model.norms_per_block
            ew_bytes = norms * (2 * bpe * rows * h) + 2 * ((3 * bpe + mask) * rows * h)
            kernels = norms + 2
            ew_bytes += (3 if model.mlp == "swiglu" else 2) * bpe * tokens * model.token_mlp_width / tp
            kernels += 1
            if model.position == "rope":
                ew_bytes += 2 * bpe * tokens * model.rotary_dim / tp
                kernels += 1
        fwd_s, bwd_s = rates.memory(ew_bytes, kernels), rates.memory(2 * ew_bytes, kernels)
        if rates.dtype == "fp8":
            cast_f, cast_b = fp8_cast_bytes(model, tokens, tp, bpe)
            fwd_s += rates.memory(cast_f, 2)
            bwd_s += rates.memory(cast_b, 4)
        return fwd_s, bwd_s

    def in_step(self, phase: str, *times: float) -> tuple[float, ...]:
        """Compute times as they run inside a training step (the benches' rates already are)."""
        return times

    def block_extras_s(self, model: ModelSpec, recompute: str, tp: int, sequence_parallel: bool,
                       tp_bytes: float, rates, ep: int = 1, tokens: float = 0.0) -> tuple[float, float]:
        """Per-op framework costs of one block (none: fused kernels are priced by their work)."""
        return 0.0, 0.0

    def embedding_extras_s(self, tp: int, tp_bytes: float, rates) -> tuple[float, float]:
        return 0.0, 0.0

    def final_norm_s(self, model: ModelSpec, rows: float, bpe: int, rates) -> tuple[float, float]:
        """The final norm (forward, backward): one fused kernel, read x and write y."""
        norm_f = rates.memory(2 * bpe * rows * model.hidden_size)
        return norm_f, 2 * norm_f

    def head_extras_s(self, model: ModelSpec, tp: int, tp_bytes: float, rates) -> tuple[float, float]:
        return 0.0, 0.0

    # --- communication the stack adds per block and per step ---
    def shards_per_block(self, sharding: str, tp: int, dp: int) -> bool:
        """ZeRO-3 / FSDP gather parameters block by block over dp > 1."""
        return sharding in ("zero3", "fsdp") and dp > 1

    def tp_comm_s(self, model: ModelSpec, node: NodeSpec, act_bytes: float, g: GroupShape,
                  sequence_parallel: bool) -> tuple[float, float]:
        """Megatron (Shoeybi et al. 2019): 2 all-reduces each way per block (SP: all-gather +
        reduce-scatter each, Korthikanti et al. 2022 Sec. 4.2.2), not overlapped."""
        if sequence_parallel:
            one = (collective_time("all_gather", act_bytes, g, node)
                   + collective_time("reduce_scatter", act_bytes, g, node))
        else:
            one = collective_time("all_reduce", act_bytes, g, node)
        return 2 * one, 2 * one

    def tp_edge_s(self, model: ModelSpec, tokens: float, bpe: int, g: GroupShape,
                  node: NodeSpec) -> tuple[float, float, float]:
        """(embedding forward, head forward, head backward) TP communication besides the blocks':
        none priced (Megatron's vocabulary-parallel edges are small next to the blocks')."""
        return 0.0, 0.0, 0.0

    def shard_comm_s(self, model: ModelSpec, node: NodeSpec, runtime: Runtime, lt, rates, g: GroupShape, *,
                     tp: int, precision: str, sharding: str, recompute: str,
                     gemm_s: tuple[float, ...] = ()) -> tuple[float, float]:
        """Exposed (forward, backward) ZeRO-3 / FSDP communication of one block: one flat
        parameter per block or, DeepSpeed 2021, one collective per tensor
        (:mod:`planner.cost.zero3_prefetch`, which needs the block's GEMM times ``gemm_s``); hidden
        behind the neighbouring compute where the runtime prefetches."""
        params = model.layer_params() / tp
        w_b = weight_bytes_per_param(precision)
        grad_b = max(w_b, 4.0) if runtime.shard_grads_reduced_fp32 else w_b
        compute_b = lt.bwd_s + lt.recompute_s
        n_coll = gathered_tensors_per_layer(model, tp, runtime)
        copies_s = g.size * node.device.kernel_overhead_s if runtime.list_collective_copies else 0.0

        def coll(op: str, size: float) -> float:
            lat = collective_time(op, 1.0, g, node)
            return (collective_time(op, size, g, node, runtime.multi_rail) + (n_coll - 1) * lat
                    + n_coll * copies_s)

        ag = coll("all_gather", params * w_b)
        gathers_b = 1 + (1 if (runtime.recompute_gathers_again and recompute == "full") else 0)
        comm_f, comm_b = ag, gathers_b * ag + coll("reduce_scatter", params * grad_b)
        if runtime.shard_prefetch and runtime.gather_granularity == "per_tensor":
            return per_tensor_prefetch_exposed(model, node, runtime, lt, gemm_s, g, copies_s, tp=tp,
                                               precision=precision, recompute=recompute)
        if runtime.shard_prefetch:
            dev = node.device
            return overlapped_exposed_s(dev, comm_f, lt.fwd_s), overlapped_exposed_s(dev, comm_b, compute_b)
        eta = runtime.shard_overlap_fraction  # a fraction of the shorter of comm and compute hides
        return comm_f - eta * min(comm_f, lt.fwd_s), comm_b - eta * min(comm_b, compute_b)

    def pipeline_send_bytes(self, act_bytes: float, tp: int, sequence_parallel: bool) -> float:
        """Bytes each rank of a stage sends its neighbour per micro-batch: ``1/tp`` of the
        activations (Megatron's scatter-gather, SC'21 Sec. 4.1)."""
        return act_bytes / tp

    def fsdp_edge_s(self, model: ModelSpec, node: NodeSpec, rates, g: GroupShape, *, tp: int, pp: int,
                    precision: str, sharding: str) -> tuple[float, float, float, float]:
        """Sharding units outside the blocks (none: the embedding and head shard with the first and
        last block's gathers)."""
        return 0.0, 0.0, 0.0, 0.0

    # --- the host, the pipelining runtime and memory ---
    def kernel_overhead_s(self, device) -> float:
        """Launch and dispatch cost added per kernel (the device's)."""
        return device.kernel_overhead_s

    def concurrency(self, ranks_per_node: float, host_cores: float) -> tuple[float, float]:
        """(memory-bound, GEMM) slowdown of ranks computing at once on a host: none measured."""
        return 1.0, 1.0

    def pipeline_actions(self, fwd_s: list, bwd_s: list, w_s: list, rates, schedule: str) -> tuple[list, list, list]:
        """Per virtual stage (forward, backward-input, weight-gradient) action times: the work."""
        return fwd_s, bwd_s, w_s

    def in_flight(self, schedule: str, pp: int, num_micro_batches: int, counted: tuple[int, ...]) -> tuple[int, ...]:
        """Micro-batches whose activations each rank holds at its peak: the schedule's count."""
        return counted

    def reserved_bytes(self, device) -> float:
        """Memory a rank holds besides its tensors (CUDA context, workspaces: the device's)."""
        return device.reserved_bytes

    def fragmentation(self, device) -> float:
        """The allocator's share on top of the tensors (the device's)."""
        return device.fragmentation_fraction

    # --- the optimizer step ---
    def optimizer_s(self, model: ModelSpec, P, rates, local_params: float, ranks) -> float:
        """A fused (multi-tensor) AdamW: :data:`OPTIMIZER_BYTES_PER_PARAM` per local parameter at
        the memory-bound rate, two kernels per virtual stage's parameter group."""
        return rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 2 * max(1, P.pp * P.vpp))

    def optimizer_lower_bound_s(self, rates, local_params: float, n_virtual_stages: int) -> float:
        return rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 2 * max(1, n_virtual_stages))

    def dp_reduction_s(self, node: NodeSpec, rates, g: GroupShape, *, precision: str, sharding: str, tp: int,
                       pp: int, params: float, param_tensors: int, grad_bytes: float,
                       grad_all_reduce: bool = False) -> tuple[float, float, float]:
        """(gradient reduction, ZeRO parameter all-gather, reducer work): all-reduce for DDP;
        reduce-scatter (all-reduce with ``grad_all_reduce``) and all-gather for ZeRO-1/2."""
        grads = params * grad_bytes
        if sharding == "none":
            return collective_time("all_reduce", grads, g, node), 0.0, 0.0
        return (collective_time("all_reduce" if grad_all_reduce else "reduce_scatter", grads, g, node),
                collective_time("all_gather", params * weight_bytes_per_param(precision), g, node), 0.0)


FUSED = FusedStack()


def stack_for(frame: FrameworkSpec | None) -> FusedStack | ExecutorStack:
    """The stack of a node whose (bound) framework section is ``frame`` (module docstring)."""
    return FUSED if frame is None else ExecutorStack(frame)


def stack_of(priced) -> FusedStack | ExecutorStack:
    """The stack that ``priced`` (a node, or the rates made for it: both carry ``framework``)
    is priced with."""
    return stack_for(priced.framework)
