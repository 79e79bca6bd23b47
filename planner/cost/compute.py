"""Compute time of one transformer block (and of the embedding / LM head) on one rank.

Every kernel is timed by the roofline with achieved efficiencies (Williams et al. 2009;
Calculon, Isaev et al. SC'23): ``max(flops / (peak * eff(flops)), bytes / (hbm_bw * mem_eff))
+ kernel_overhead``, where ``eff`` is the profile's matmul efficiency curve at the GEMM's FLOPs
and ``mem_eff`` its memory-bound efficiency. Element-wise ops (norms, bias-dropout-add,
activations, softmax, RoPE) have no FLOPs in this model: they are pure memory traffic.

On CPU profiles (``device.host_cores > 0``) ranks of one host share cores: every rate is scaled
by ``min(1, host_cores / ranks_per_node)`` (measured in DESIGN.md: 4 ranks on 2 cores run at half),
GEMMs use the profile's efficiency curve of their own dtype (``DeviceSpec.matmul_curve``), and the
CPU flash-attention kernel pays one element-wise pass over the scores for its online softmax.
With a calibrated ``framework:`` section the attention core runs at the measured rate of the
executor's own SDPA call where the profile has one (``FrameworkSpec.attention_rate``), and each
phase's compute (not the per-op costs) is scaled by the profile's in-step factor,
``FrameworkSpec.step_scale``: the executor's own plain step measured against these rates at the
calibration's reference shapes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from planner.cost.flops import layer_forward_flops, op_sac_applies, op_sac_recomputed_gemms
from planner.cost.precision import activation_bytes_per_element, compute_dtype
from planner.cost.routing import busiest_rank_load
from planner.cost.runtime import Runtime
from planner.cost.stacks import stack_for, stack_of
from planner.framework_spec import FrameworkSpec
from planner.hardware import DeviceSpec
from planner.model import ModelSpec


@dataclass(frozen=True)
class Rates:
    """What one rank achieves: peak FLOP/s of the compute dtype, HBM bandwidth, per-op overhead,
    all already scaled by the CPU-sharing factor ``share``; memory-bound work and per-op
    framework costs also by ``concurrent`` (>= 1: ranks running at once share caches and
    memory bandwidth), the GEMMs' arithmetic by ``gemm_concurrent`` (>= 1, measured apart:
    less than the memory-bound work, not zero on a shared host)."""

    device: DeviceSpec
    peak_flops: float
    unquantized_peak_flops: float
    mem_bw: float
    overhead_s: float
    share: float
    dtype: str = ""
    unquantized_dtype: str = ""
    framework: FrameworkSpec | None = None
    concurrent: float = 1.0
    gemm_concurrent: float = 1.0

    def ops(self, n_ops: float, per_op_s: float) -> float:
        """Framework time of ``n_ops`` ops at ``per_op_s`` each (CPU time: scaled by the share)."""
        return n_ops * per_op_s * self.concurrent / self.share

    def gemm(self, flops: float, bytes_moved: float, unquantized: bool = False,
             shape: tuple[float, float, float] | None = None) -> float:
        """A GEMM's time; ``unquantized``: one an FP8 recipe leaves in BF16 (the attention core,
        the output layer), at that dtype's peak; ``shape``: its (M, N, K), where the profile
        measured GEMMs by shape (:meth:`planner.hardware.DeviceSpec.gemm_efficiency`)."""
        peak = self.unquantized_peak_flops if unquantized else self.peak_flops
        dtype = self.unquantized_dtype if unquantized else self.dtype
        # the profile's GEMM efficiency curve of the dtype the GEMM runs in (pooled curve if none)
        eff = self.device.gemm_efficiency(dtype, flops, shape) if dtype else self.device.matmul_efficiency(flops)
        t_compute = flops * self.gemm_concurrent / (peak * eff * self.share)
        t_memory = bytes_moved * self.concurrent / (self.mem_bw * self.share)
        return (t_compute if t_compute > t_memory else t_memory) + self.overhead_s

    def attention_core(self, model: ModelSpec, seq_len: float, flops: float) -> tuple[float, float] | None:
        """(forward, backward) time of an attention core of ``flops`` counted forward FLOPs at
        the framework's measured rate of the executor's own SDPA call (kind, head width,
        dtype, length: :meth:`FrameworkSpec.attention_rate`); its tiles are GEMMs, so ranks at
        once slow it as they slow the GEMMs. None where the profile has no such rate."""
        if self.framework is None:
            return None
        kind = "gqa" if model.n_kv_heads < model.n_heads else "mha"
        dtype = "fp32" if self.unquantized_dtype == "fp32" else "bf16"
        rate = self.framework.attention_rate(kind, model.d_head, dtype, seq_len)
        if rate is None:
            return None
        scale = self.gemm_concurrent / self.share
        return flops * scale / rate[0], flops * scale / rate[1]

    def memory(self, bytes_moved: float, kernels: int = 1) -> float:
        return bytes_moved * self.concurrent / (self.mem_bw * self.share) + kernels * self.overhead_s

    def elementwise(self, bytes_by_kind: dict[str, tuple[float, float, float]], bpe: int) -> tuple[float, float]:
        """(forward, backward) time of element-wise work given per kind of
        ``ELEMENTWISE_CLASSES`` as (forward bytes, backward bytes, forward bytes of one call) on
        activations of ``bpe`` bytes: each kind at the framework's rate measured for it at that
        call size (fp32, or bf16 for half-precision activations), the pooled memory-bound rate
        where the profile has none. No kernel overhead: the executor's counted ops pay the
        framework's per-op costs."""
        dtype = "fp32" if bpe == 4 else "bf16"
        fwd = bwd = 0.0
        for kind, (fwd_bytes, bwd_bytes, call_bytes) in bytes_by_kind.items():
            rate = self.framework.elementwise_rate(kind, dtype, call_bytes) if self.framework else None
            fwd_bw, bwd_bw = rate if rate is not None else (self.mem_bw, self.mem_bw)
            fwd += fwd_bytes * self.concurrent / (fwd_bw * self.share)
            bwd += bwd_bytes * self.concurrent / (bwd_bw * self.share)
        return fwd, bwd


def make_rates(device: DeviceSpec, precision: str, ranks_per_node: float,
               framework: FrameworkSpec | None = None) -> Rates:
    """Per-rank rates. CPU hosts: a rank gets ``min(1, host_cores / ranks)`` of a core
    (``ranks_per_node``: the ranks computing at once, fractional where some of them wait); its
    memory-bound and per-op work is slowed further by the framework's measured
    ``concurrent_slowdown`` when ranks run at once, its GEMMs by ``concurrent_gemm_slowdown``. With a
    calibrated ``framework`` (CPU profile) the per-kernel overhead is not added per GEMM /
    element-wise kernel: the executor's counted ops pay the framework's per-op costs instead
    (:mod:`planner.cost.framework`)."""
    stack = stack_for(framework)
    share = concurrent = gemm_concurrent = 1.0
    if device.host_cores > 0:
        share = min(1.0, device.host_cores / max(1, ranks_per_node))
        concurrent, gemm_concurrent = stack.concurrency(ranks_per_node, device.host_cores)  # ranks share caches
    peak = device.peak_flops(compute_dtype(precision))
    # FP8 recipes (Transformer Engine) quantize only TE's linear layers: the attention core and
    # Megatron-Core's output layer (a tensor_parallel.ColumnParallelLinear, not a TE module) run in BF16
    attn_dtype = "bf16" if precision == "fp8" and device.supports("bf16") else compute_dtype(precision)
    return Rates(device=device, peak_flops=peak, unquantized_peak_flops=device.peak_flops(attn_dtype),
                 mem_bw=device.hbm_bandwidth_bytes_per_s * device.memory_bound_efficiency,
                 overhead_s=stack.kernel_overhead_s(device), share=share,
                 dtype=compute_dtype(precision), unquantized_dtype=attn_dtype, framework=framework,
                 concurrent=concurrent, gemm_concurrent=gemm_concurrent)


@dataclass(frozen=True)
class LayerTimes:
    """One block, one micro-batch, one rank (seconds), TP/CP communication excluded.

    fwd_s: forward. bwd_input_s: input-gradient part of backward (zero-bubble B).
    bwd_weight_s: weight-gradient GEMMs (zero-bubble W). recompute_s: forward work redone in
    backward (full: the forward; selective: the attention core). core_fwd_s: attention core
    forward (what context-parallel K/V exchange overlaps with).
    """

    fwd_s: float
    bwd_input_s: float
    bwd_weight_s: float
    recompute_s: float
    core_fwd_s: float
    core_bwd_s: float

    @property
    def bwd_s(self) -> float:
        return self.bwd_input_s + self.bwd_weight_s


def _gemm(rates: Rates, m: float, n: float, k: float, bpe: int,
          unquantized: bool = False) -> tuple[float, float, float]:
    """(forward, input gradient, weight gradient) times of a linear layer whose forward is an
    m x k @ k x n GEMM: the input gradient m x n @ n x k, the weight gradient n x m @ m x k
    (PyTorch's ``grad_output^T @ input``); the same FLOPs and traffic, each at its own shape's
    efficiency where the profile measured GEMMs by shape (M, N, K)."""
    flops = 2.0 * m * n * k
    bytes_moved = bpe * (m * k + k * n + m * n)
    if not rates.device.matmul_shapes_by_dtype:  # by FLOPs alone: the three take one time
        t = rates.gemm(flops, bytes_moved, unquantized)
        return t, t, t
    return tuple(rates.gemm(flops, bytes_moved, unquantized, shape)  # type: ignore[return-value]
                 for shape in ((m, n, k), (m, k, n), (n, k, m)))


def _measured_kernel(rates: Rates, runtime: Runtime):
    """The runtime's attention kernel as measured on the device (16-bit attention only), or None."""
    if rates.unquantized_dtype not in ("bf16", "fp16"):
        return None
    return rates.device.attention_kernel(runtime.attention_kernel)


@lru_cache(maxsize=65536)
def layer_times(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int,
                sequence_parallel: bool, recompute: str, precision: str, rates: Rates,
                runtime: Runtime, ep: int = 1, etp: int = 0) -> LayerTimes:
    """Per-block compute times (memoised: the search calls this with few distinct keys); ``etp``:
    the experts' tensor-parallel degree (0: ``tp``). What ``recompute`` adds to the block's
    passes (:func:`_block_passes`, shared by every recompute choice)."""
    bpe = activation_bytes_per_element(precision)
    fwd, bwd_in, bwd_w, core_f, core_b, ew_fwd_s = _block_passes(model, micro_batch, seq_len, tp, cp, sequence_parallel,
                                                                 precision, rates, runtime, ep, etp)
    T = micro_batch * seq_len / cp
    if recompute == "full":
        recompute_s = fwd
    elif recompute == "selective" and op_sac_applies(model, runtime.selective_recompute):
        recompute_s = ew_fwd_s + sum(_gemm(rates, m_, n_, k_, bpe)[0] for m_, n_, k_ in op_sac_recomputed_gemms(model, T, tp))
    elif recompute == "selective":
        recompute_s = core_f
    else:
        recompute_s = 0.0
    extra_f, extra_b = stack_of(rates).block_extras_s(model, recompute, tp, sequence_parallel,
                                                      bpe * T * model.hidden_size, rates, ep, T)
    return LayerTimes(fwd_s=fwd + extra_f, bwd_input_s=bwd_in + extra_b, bwd_weight_s=bwd_w, recompute_s=recompute_s,
                      core_fwd_s=core_f, core_bwd_s=core_b)


@lru_cache(maxsize=65536)
def _block_passes(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int, sequence_parallel: bool,
                  precision: str, rates: Rates, runtime: Runtime, ep: int,
                  etp: int) -> tuple[float, float, float, float, float, float]:
    """(forward, backward input, backward weight, attention core forward, its backward, element-wise
    forward) of one block without recomputation: the GEMMs, the attention core and the
    element-wise ops at the stack's in-step speed."""
    bpe = activation_bytes_per_element(precision)
    s_local = seq_len / cp
    T = micro_batch * s_local                 # tokens this rank computes
    rows = T / tp if sequence_parallel else T  # tokens of the replicated element-wise ops
    q, kv = model.q_dim, model.kv_dim
    fwd = 0.0
    bwd_in = 0.0
    bwd_w = 0.0

    # --- projection GEMMs (Megatron column/row parallel: N or K split by tp) ---
    encoder_rows = micro_batch * model.cross_attention_tokens  # a cross-attention block's keys and values
    shapes = block_gemm_shapes(model, T, tp, ep, etp, encoder_rows)
    for (m_, n_, k_), count in Counter(shapes).items():  # experts: one shape
        tf, t_in, t_w = _gemm(rates, m_, n_, k_, bpe)
        fwd += count * tf
        bwd_in += count * t_in
        bwd_w += count * t_w

    # --- attention core (a cross-attention block: every query to all encoder states, no ring over cp) ---
    heads = model.n_heads / tp
    attended, ring = (model.cross_attention_tokens, 1) if model.is_cross_block else (seq_len, cp)
    core_flops = layer_forward_flops(model, T, seq_len).core / tp
    measured_core = rates.attention_core(model, attended, core_flops) if runtime.attention == "flash" else None
    if measured_core is not None:  # the executor's own SDPA call, timed by calibrate
        core_f, core_b = measured_core
    elif runtime.attention == "flash" and (kernel := _measured_kernel(rates, runtime)) is not None:
        # the stack's fused kernel at its measured causal rates (over cp ranks: the ring's blocks,
        # AttentionKernel.ring_rates); a causal mask does half of
        # the s x s product the FLOP count holds (the benchmarks' convention)
        # (a sliding window keeps fewer pairs: ModelSpec.causal_pairs_fraction)
        fwd_rate, bwd_rate = kernel.ring_rates(attended, ring, rates.unquantized_peak_flops)
        scale = rates.gemm_concurrent / rates.share
        computed = core_flops * model.causal_pairs_fraction(seq_len)
        core_f = computed * scale / fwd_rate + rates.overhead_s
        core_b = 2.5 * computed * scale / bwd_rate + rates.overhead_s
    elif runtime.attention == "flash":
        # fused kernel; reads Q, K, V, writes O (no s x s traffic). Backward recomputes the
        # scores: 5 matmuls vs 2 forward (Dao et al. 2022, Alg. 2/4) -> 2.5x forward FLOPs.
        read = T * q + encoder_rows * (kv + model.v_dim) if model.is_cross_block else T * (q + kv + model.v_dim) * cp
        io = bpe * read / tp + bpe * T * model.attn_out_dim / tp
        # a window's share of the full product (causal: the whole one, as these kernels compute it)
        windowed = core_flops * (1.0 if model.is_cross_block else 2 * model.causal_pairs_fraction(seq_len))
        core_f = rates.gemm(windowed, io, unquantized=True)
        core_b = rates.gemm(2.5 * windowed, 2 * io, unquantized=True)
        if rates.device.host_cores > 0:
            # CPU flash kernel (PyTorch _scaled_dot_product_flash_attention_for_cpu): the online
            # softmax (scale, max, exp, sum, rescale) over every score tile runs on the same
            # vector units as the tile GEMMs instead of hiding under tensor-core math: one
            # element-wise pass over the b*heads*s_local*s scores (read + write, fp32
            # accumulators) forward, again in the backward's recomputation (x2.5 like the GEMMs).
            scores = micro_batch * heads * s_local * attended
            softmax = rates.memory(2 * 4 * scores, 0)
            core_f += softmax
            core_b += 2.5 * softmax
    else:
        # QK^T and AV as batched GEMMs writing / reading the s x s scores, plus fused
        # scale-mask-softmax and (with dropout) a dropout kernel over the scores.
        scores = micro_batch * heads * s_local * attended  # elements
        qk_f = rates.gemm(core_flops / 2, bpe * (scores + 2 * T * q / tp), unquantized=True)
        av_f = rates.gemm(core_flops / 2, bpe * (scores + 2 * T * q / tp), unquantized=True)
        softmax_f = rates.memory(2 * bpe * scores)
        dropout_f = rates.memory((2 * bpe + 1) * scores) if model.dropout > 0 else 0.0
        core_f = qk_f + av_f + softmax_f + dropout_f
        softmax_b = rates.memory(3 * bpe * scores)
        dropout_b = rates.memory((2 * bpe + 1) * scores) if model.dropout > 0 else 0.0
        core_b = 2 * qk_f + 2 * av_f + softmax_b + dropout_b
    fwd += core_f
    bwd_in += core_b

    # --- element-wise ops (memory-bound), the stack's in-step speed and its per-op costs ---
    stack = stack_of(rates)
    ew_fwd_s, ew_bwd_s = stack.block_elementwise_s(model, T, rows, tp, bpe, rates, runtime.eager_elementwise)
    fwd += ew_fwd_s
    bwd_in += ew_bwd_s
    fwd, core_f = stack.in_step("forward", fwd, core_f)
    bwd_in, bwd_w, core_b = stack.in_step("backward", bwd_in, bwd_w, core_b)
    return fwd, bwd_in, bwd_w, core_f, core_b, ew_fwd_s


@lru_cache(maxsize=16384)
def embedding_times(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int,
                    sequence_parallel: bool, precision: str, rates: Rates) -> tuple[float, float]:
    """(forward, backward) of the token (+ position) embedding on the first stage: a gather of
    T rows of h (memory-bound), embedding dropout; backward scatter-adds into the table."""
    bpe = activation_bytes_per_element(precision)
    T = micro_batch * seq_len / cp
    h = model.hidden_size
    pos = 2 if model.position == "learned" else 1
    fwd = rates.memory((pos + 1) * bpe * T * h + (1 if model.dropout > 0 else 0) * T * h, 2)
    bwd = rates.memory(2 * pos * bpe * T * h, 2)
    stack = stack_of(rates)
    (fwd,), (bwd,) = stack.in_step("forward", fwd), stack.in_step("backward", bwd)
    extra_f, extra_b = stack.embedding_extras_s(tp, bpe * T * h, rates)
    return fwd + extra_f, bwd + extra_b


@lru_cache(maxsize=16384)
def head_times(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int,
               sequence_parallel: bool, precision: str, rates: Rates) -> tuple[float, float, float]:
    """(forward, backward input-grad, backward weight-grad) of final norm + LM head + fp32
    vocab-parallel cross-entropy on the last stage (Megatron: logits cast to fp32, softmax,
    loss; backward writes the logits gradient)."""
    bpe = activation_bytes_per_element(precision)
    T = micro_batch * seq_len / cp
    h = model.hidden_size
    V = model.vocab_size
    rows = T / tp if sequence_parallel else T
    tf, tb, tw = _gemm(rates, T, V / tp, h, bpe, unquantized=True)
    stack = stack_of(rates)
    norm_f, norm_b = stack.final_norm_s(model, rows, bpe, rates)
    logits = T * V / tp
    ce_f = rates.memory((bpe + 4 + 4) * logits, 3)   # cast to fp32, exp/sum, loss
    ce_b = rates.memory((4 + bpe) * logits, 1)       # softmax - onehot -> grad in compute dtype
    fwd = tf + norm_f + ce_f
    bwd_in = tb + norm_b + ce_b
    (fwd,), (bwd_in, tw) = stack.in_step("forward", fwd), stack.in_step("backward", bwd_in, tw)
    extra_f, extra_b = stack.head_extras_s(model, tp, bpe * T * h, rates)
    fwd += extra_f
    bwd_in += extra_b
    return fwd, bwd_in, tw


def block_gemm_forward_times(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int,
                             precision: str, rates: Rates, ep: int = 1, etp: int = 0) -> tuple[float, ...]:
    """Forward time of each projection GEMM of one block, in execution order (QKV, output
    projection, then per expert the up (+gate) and down projections, then the MoE router):
    the same GEMMs :func:`layer_times` sums, one per weight tensor."""
    bpe = activation_bytes_per_element(precision)
    T = micro_batch * seq_len / cp
    shapes = block_gemm_shapes(model, T, tp, ep, etp, micro_batch * model.cross_attention_tokens)
    return tuple(_gemm(rates, m_, n_, k_, bpe)[0] for m_, n_, k_ in shapes)


def block_gemm_shapes(model: ModelSpec, tokens: float, tp: int, ep: int = 1,
                      etp: int = 0, encoder_rows: float = 0.0) -> list[tuple[float, float, float]]:
    """(M, N, K) of each projection GEMM of one block on one tp rank, in execution order: QKV
    and the output projection, then per local expert the up (+gate) and down projections and
    the (replicated) MoE router (Megatron column / row parallel: N or K split by tp). With
    expert parallelism a rank runs ``n_experts/ep`` experts on the tokens its ``ep`` group routes
    to them (``tokens * top_k * ep / n_experts`` each, times the busiest rank's load:
    :func:`planner.cost.routing.busiest_rank_load`). With expert tensor parallelism
    ``etp`` below tp the experts are split by etp and see the tokens of their etp group only
    (``tokens * etp / tp`` of the tp group's, each rank dispatching its own sequence shard). A
    cross-attention block's key/value projection runs on the ``encoder_rows`` encoder states."""
    h = model.hidden_size
    T = tokens

    def mlp(tokens: float, width: int, split: int = tp) -> list[tuple[float, float, float]]:
        """Up (+gate) and down projections of an MLP of ``width`` split ``split`` ways on ``tokens``."""
        return [(tokens, (model.mlp_matrices - 1) * width / split, h), (tokens, h, width / split)]

    split = {"column": lambda i, o: (T, o / tp, i), "row": lambda i, o: (T, o, i / tp), "none": lambda i, o: (T, o, i)}
    gemms = [split[kind](i, o) for i, o, kind in model.attention_projections()]
    if model.is_cross_block:
        gemms[1] = (encoder_rows, *gemms[1][1:])
    if model.is_moe:
        e_tp = etp or tp
        routed = T * e_tp / tp * model.top_k
        tokens_per_expert = routed * ep / model.n_experts * busiest_rank_load(model, routed, ep)
        gemms += (model.n_experts // ep) * mlp(tokens_per_expert, model.expert_ffn, e_tp)
        gemms.append((T, model.n_experts, h))
        if model.shared_expert_ffn_hidden_size:  # every token, like a dense MLP
            gemms += mlp(T, model.shared_expert_ffn_hidden_size)
    else:
        gemms += mlp(T, model.ffn_hidden_size)
    return gemms
