"""What differs between the two kinds of stack the cost model prices, behind one interface.

* :class:`FusedStack`: a production stack (Megatron-Core, torchtitan, DeepSpeed, ...): fused
  element-wise kernels (Korthikanti et al. 2022, Sec. 4), no per-op framework costs.
* :class:`ExecutorStack`: this project's executor at the costs ``clusterplan calibrate`` measured
  (:class:`planner.hardware.FrameworkSpec`): its eager element-wise ops at their calibrated rates,
  its in-step slowdowns, per-op and DTensor costs (:mod:`planner.cost.framework` has the counts).

:func:`stack_of` is the one place that picks: the executor stack where the rates carry a
framework section, which :func:`planner.cost.runtime.bind_runtime` leaves only under the executor
runtime. The pricing code calls the stack; it does not ask which one it has.
"""
from __future__ import annotations

from planner.cost import framework as fw
from planner.hardware import FrameworkSpec
from planner.model import ModelSpec


class FusedStack:
    """A fused production stack (see the module docstring)."""

    executor = False

    def block_elementwise_s(self, model: ModelSpec, tokens: float, rows: float, tp: int, bpe: int,
                            rates) -> tuple[float, float]:
        """One block's memory-bound work (forward, backward): two norms (read x, write y), two
        fused bias-dropout-adds, the MLP activation (GELU; SwiGLU reads gate and up), RoPE on Q
        and K; backward moves twice the bytes over the same kernels."""
        h, f = model.hidden_size, (model.expert_ffn if model.is_moe else model.ffn_hidden_size)
        mask = 1 if model.dropout > 0 else 0
        ew_bytes = 2 * (2 * bpe * rows * h) + 2 * ((3 * bpe + mask) * rows * h)
        kernels = 4
        experts = model.top_k if model.is_moe else 1
        ew_bytes += (3 if model.mlp == "swiglu" else 2) * bpe * tokens * f / tp * experts
        kernels += 1
        if model.position == "rope":
            ew_bytes += 2 * bpe * tokens * (model.q_dim + model.kv_dim) / tp
            kernels += 1
        return rates.memory(ew_bytes, kernels), rates.memory(2 * ew_bytes, kernels)

    def in_step(self, phase: str, *times: float) -> tuple[float, ...]:
        """Compute times as they run inside a training step (the benches' rates already are)."""
        return times

    def block_extras_s(self, model: ModelSpec, recompute: str, tp: int, sequence_parallel: bool,
                       tp_bytes: float, rates) -> tuple[float, float]:
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


class ExecutorStack:
    """This project's executor at its measured costs ``frame`` (see the module docstring)."""

    executor = True

    def __init__(self, frame: FrameworkSpec):
        self.frame = frame

    def block_elementwise_s(self, model: ModelSpec, tokens: float, rows: float, tp: int, bpe: int,
                            rates) -> tuple[float, float]:
        """The executor's own eager ops, counted (:func:`planner.cost.framework.block_elementwise_bytes`),
        each kind at its calibrated rate."""
        return rates.elementwise(fw.block_elementwise_bytes(model, tokens, rows, tp, bpe), bpe)

    def in_step(self, phase: str, *times: float) -> tuple[float, ...]:
        """The executor computes slower inside its step than in the benches (the profile's in-step
        factor of ``phase``, :meth:`planner.hardware.FrameworkSpec.step_scale`)."""
        scale = self.frame.step_scale(phase)
        return tuple(t * scale for t in times)

    def block_extras_s(self, model: ModelSpec, recompute: str, tp: int, sequence_parallel: bool,
                       tp_bytes: float, rates) -> tuple[float, float]:
        """The block's counted aten ops (recomputed ones in the backward count) and, under TP, the
        DTensor cost of each sharded linear (and of sequence parallel's redistribution)."""
        n_f, n_b = fw.block_ops(model, recompute)
        fwd = rates.ops(n_f, self.frame.op_forward_s)
        bwd = rates.ops(n_b, self.frame.op_backward_s)
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


FUSED = FusedStack()


def stack_of(rates) -> FusedStack | ExecutorStack:
    """The stack the rates price (module docstring)."""
    return FUSED if rates.framework is None else ExecutorStack(rates.framework)
