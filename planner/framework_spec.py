"""The executor's measured costs: a calibrated profile's ``framework:`` section
(:class:`FrameworkSpec`), the kinds of element-wise and attention work it rates apart, and how
each field is spelt in YAML. Written by ``clusterplan calibrate`` (:mod:`planner.calibrate`), read
by :mod:`planner.profile_yaml`, priced by :class:`planner.cost.executor_stack.ExecutorStack`."""
from __future__ import annotations

import bisect
import dataclasses
import math
import re
from dataclasses import dataclass

from planner.errors import require
from planner.units import GB, GIGA, MICRO


ELEMENTWISE_CLASSES = ("arith", "rmsnorm", "layernorm", "gelu", "swiglu", "rope", "adamw")
"""Kinds of the executor's element-wise work that run at their own rate on a CPU (one thread,
eager): ``arith`` the plain binary ops (residual adds, the gradient sums of tensors read twice,
bias-gradient sums, dropout), the two norms, the two activations (per FFN element; SwiGLU is
``silu(gate) * up``), RoPE (per rotated element) and the optimizer's ``AdamW(foreach=False)``
update (per parameter, fp32 master weights in both precisions; one rate, its "forward").
``executor/bench/elementwise.py`` times each on the executor's own code; the profile keeps a
forward and a backward rate per class, dtype and size (``framework.elementwise_gb_s``);
``planner.cost.framework.elementwise_bytes_per_element`` counts their bytes."""

ATTENTION_CLASSES = ("mha", "gqa")
"""Kinds of the executor's attention core (``F.scaled_dot_product_attention``, causal) timed
apart: every query head with its own K/V (``mha``) and grouped-query K/V (``gqa``, fewer K/V
heads than query heads, ``enable_gqa``). ``executor/bench/attention.py`` times both at several
head widths; the profile keeps a forward and a backward rate per kind and head width (``mha_d64``),
dtype and sequence length (``framework.attention_gflops``)."""


# FrameworkSpec field -> (YAML key, factor from the YAML unit to SI)
FRAMEWORK_YAML: dict[str, tuple[str, float]] = {
    "op_forward_s": ("op_forward_us", MICRO),
    "op_backward_s": ("op_backward_us", MICRO),
    "op_optimizer_s": ("op_optimizer_us", MICRO),
    "tp_linear_forward_s": ("tp_linear_forward_us", MICRO),
    "tp_linear_backward_s": ("tp_linear_backward_us", MICRO),
    "tp_optimizer_param_s": ("tp_optimizer_param_us", MICRO),
    "fsdp_unit_forward_s": ("fsdp_unit_forward_us", MICRO),
    "fsdp_unit_backward_s": ("fsdp_unit_backward_us", MICRO),
    "fsdp_optimizer_param_s": ("fsdp_optimizer_param_us", MICRO),
    "zero1_param_s": ("zero1_param_us", MICRO),
    "fragmentation_fraction": ("fragmentation_fraction", 1.0),
    "training_overhead_bytes": ("training_overhead_mib", float(2**20)),
    "concurrent_slowdown": ("concurrent_slowdown", 1.0),
    "concurrent_gemm_slowdown": ("concurrent_gemm_slowdown", 1.0),
    "oversubscribed_slowdown": ("oversubscribed_slowdown", 1.0),
    "step_forward_slowdown": ("step_forward_slowdown", 1.0),
    "step_backward_slowdown": ("step_backward_slowdown", 1.0),
    "step_optimizer_slowdown": ("step_optimizer_slowdown", 1.0),
    "sp_block_forward_s": ("sp_block_forward_us", MICRO),
    "sp_block_backward_s": ("sp_block_backward_us", MICRO),
    "tp_linear_forward_s_per_byte": ("tp_linear_forward_us_per_mib", MICRO / 2**20),
    "tp_linear_backward_s_per_byte": ("tp_linear_backward_us_per_mib", MICRO / 2**20),
    "pp_action_s": ("pp_action_us", MICRO),
    "pp_compute_slowdown": ("pp_compute_slowdown", 1.0),
    "zb_split_slowdown": ("zb_split_slowdown", 1.0),
    "ddp_grad_s_per_byte": ("ddp_grad_us_per_mib", MICRO / 2**20),
    "ddp_param_s": ("ddp_param_us", MICRO),
    "fsdp_unit_forward_s_per_byte": ("fsdp_unit_forward_us_per_mib", MICRO / 2**20),
    "fsdp_unit_backward_s_per_byte": ("fsdp_unit_backward_us_per_mib", MICRO / 2**20),
    "ep_dispatch_forward_s": ("ep_dispatch_forward_us", MICRO),
    "ep_dispatch_backward_s": ("ep_dispatch_backward_us", MICRO),
    "ep_dispatch_forward_s_per_token": ("ep_dispatch_forward_us_per_ktoken", MICRO / 1000),
    "ep_dispatch_backward_s_per_token": ("ep_dispatch_backward_us_per_ktoken", MICRO / 1000),
    "moe_block_forward_s": ("moe_block_forward_us", MICRO),
    "moe_block_backward_s": ("moe_block_backward_us", MICRO),
    "moe_expert_forward_s": ("moe_expert_forward_us", MICRO),
    "moe_expert_backward_s": ("moe_expert_backward_us", MICRO),
}
PER_OP_COST_FIELDS = ("op_forward_s", "op_backward_s", "op_optimizer_s")
"""The CPU cost of one aten op under autograd (dispatch, autograd bookkeeping), per phase: what
a faster or slower host's Python and dispatcher scale together. The wrappers' costs (TP, SP,
FSDP, ZeRO, DDP) are residuals of reference steps that include waits on their collectives, so
they are not scaled with it; the pipeline's per-action cost is its own fit parameter."""


@dataclass(frozen=True)
class FrameworkSpec:
    """Costs of the executor's own building blocks on this machine (``clusterplan calibrate``
    measures them on the executor's real modules at a small reference shape; optional: GPU
    profiles have none and predict without it). Seconds and bytes.

    op_forward_s: per aten op of a forward under autograd (dispatch + autograd graph recording),
        replacing ``kernel_overhead_s`` for the ops the executor's blocks run.
    op_backward_s: per aten op the autograd engine runs in backward.
    op_optimizer_s: per aten op of ``AdamW(foreach=False).step`` (about 10 per parameter tensor).
    tp_linear_forward_s / tp_linear_backward_s: DTensor cost per tensor-parallel linear
        (ColwiseParallel / RowwiseParallel) per micro-batch, beyond its local GEMM and the
        profile's collective times (``from_local`` / ``redistribute`` dispatch, functional
        collectives and their waits on gloo); the constant part.
    ep_dispatch_forward_s / ep_dispatch_backward_s (and ``_per_token``): the executor's
        expert-parallel dispatch and combine (``executor.parallel.ep.dispatch_combine``) per MoE
        layer and micro-batch beyond its token all-to-alls as the profile prices them: routing
        bookkeeping, the counts and expert-id all-to-alls, the functional collectives' waits, the
        index ops; measured on two ranks at two token counts (``executor/bench/ep_dispatch.py``),
        a constant and a part per routed token copy: at half the width and the same tokens it costs
        as much (hidden 64 vs 128 at 256 tokens: 2.8 vs 2.6 ms forward on the calibration host),
        so it follows the tokens, not the bytes; optional (0: priced as counted ops, ``planner.cost.framework.EP_DISPATCH_OPS``).
    moe_block_forward_s / moe_block_backward_s, moe_expert_forward_s / moe_expert_backward_s: an
        executor MoE block's cost beyond what the cost model prices (its GEMMs, element-wise work
        and counted ops: the routing's index ops, the experts' small GEMMs), a constant per block
        and a part per expert the rank holds; one rank, every expert local, 4 and 8 experts at
        hidden 128 (``executor/bench/ep_dispatch.py``); optional (0).
    tp_linear_forward_s_per_byte / tp_linear_backward_s_per_byte: the part that grows with the
        module's activation (tokens x hidden x bytes per element), from the TP reference at two
        widths; optional (0). :meth:`tp_module_s` adds both.
    pp_action_s: ``torch.distributed.pipelining``'s own cost per schedule action (one forward,
        backward or weight-gradient step of one micro-batch on one stage: the stage's input
        and output bookkeeping, ``autograd.backward`` on the stage outputs, posting its
        sends / receives); the constant part, from pp=2 1F1B reference steps at two shapes;
        optional (0).
    pp_compute_slowdown: how much longer a stage's work takes inside a pipeline action than
        the same work in the plain step, minus one (the part of the pipelining runtime's cost
        that grows with the action: its autograd calls on the stage outputs, the stage's inputs
        and outputs kept and freed per micro-batch); with ``pp_action_s`` the slope and
        intercept of the 1F1B reference residual at two shapes; optional (0).
    zb_split_slowdown: the zero-bubble schedule's split backward (input gradients, then weight
        gradients from the retained graph) over the fused backward of the same stage, minus
        one, from a pp=2 zero-bubble reference step; optional (0).
    ddp_grad_s_per_byte: DDP's reducer beyond its all-reduce time, per gradient byte per step
        (bucketing, and the gloo transfer's own CPU work, which with every core running a rank
        comes out of compute); optional (0).
    ddp_param_s: DDP's reducer cost per parameter tensor per step (its autograd hook marks the
        gradient ready and books it into a bucket); with ``ddp_grad_s_per_byte`` the constant and
        the slope of the DDP reference step's residual at two widths; optional (0).
    tp_optimizer_param_s: extra optimizer time per DTensor parameter tensor (per-op DTensor
        dispatch of the AdamW update).
    sp_block_forward_s / sp_block_backward_s: with sequence parallelism, the extra cost per
        block per micro-batch beyond its TP linears (the norms' ``SequenceParallel`` and the
        inputs' ``Shard(1)`` -> ``Replicate`` redistributions); optional (0).
    fsdp_unit_forward_s / fsdp_unit_backward_s: FSDP2 ``fully_shard`` cost per wrapped unit per
        micro-batch (pre/post hooks, copy-in/copy-out of the flat all-gather and
        reduce-scatter buffers) beyond the profile's collective times.
    fsdp_unit_forward_s_per_byte / fsdp_unit_backward_s_per_byte: the part of that cost that
        grows with the unit's parameter bytes (copy-in to the all-gather buffer and copy-out to
        the unsharded parameters, the gradients' reduce-scatter buffers), from the FSDP2
        reference at two widths; optional (0). :meth:`fsdp_unit_s` adds both.
    fsdp_optimizer_param_s: extra optimizer time per FSDP2 (DTensor) parameter tensor.
    zero1_param_s: ZeroRedundancyOptimizer cost per parameter tensor per step beyond the
        AdamW update of its shard (per-parameter broadcast bookkeeping and waits).
    fragmentation_fraction: a training step's measured peak (the CPU allocator's live bytes, as
        the executor reports it) per byte of the cost model's tensors, minus one (transient
        tensors the model does not itemise), from real training steps at two batch sizes.
    training_overhead_bytes: the intercept of that fit (memory beyond the tensors).
    concurrent_slowdown: how much longer a rank's memory-bound and per-op work takes while
        several ranks run at once on the host (shared caches and memory bandwidth) than alone,
        minus one: the reference training step on every rank at once (no communication)
        against the same step on one rank, over its non-GEMM part. Applies when more than one
        rank shares the host; optional (0).
    concurrent_gemm_slowdown: the same for the GEMMs' arithmetic (two ranks on the cores of
        one host share its last-level cache and, on a VM, possibly the physical cores under
        the virtual ones); fitted together with ``concurrent_slowdown`` from the alone / at
        once steps at several shapes, whose GEMM shares differ; optional (0).
    oversubscribed_slowdown: how much longer the step takes when more ranks compute at once than
        the host has cores, beyond the fair share of a core (``cores / ranks``) and the two
        slowdowns above, minus one: the plain step on 2 x cores ranks at once (the bench's own
        ranks) against it alone, over ranks / cores times the 2-rank at-once ratio (context
        switches; each rank's working set evicted by the others'). Applies in proportion to the
        busy ranks beyond the cores, in full at twice the cores (where it was measured);
        optional (0).
    step_forward_slowdown / step_backward_slowdown / step_optimizer_slowdown: how much longer
        the compute of a training step's forward, backward and optimizer step (GEMMs, attention,
        element-wise and optimizer traffic; not the per-op costs) takes in the executor's own
        plain step than the microbenchmarks' rates predict, minus one (among other causes,
        operands a tight loop keeps in the core's caches come from further away between a
        step's other work: GEMMs 5-10% slower over a pool of operands on one host). From
        the plain reference step at up to three shapes (none of them a sweep shape); optional (0).
    elementwise_rates: per kind of element-wise work (:data:`ELEMENTWISE_CLASSES`) and
        activation dtype, (kind, dtype, points): each point (bytes of one call's forward,
        forward bytes/s, backward bytes/s), bytes read + written as ``planner.cost.framework``
        counts them, measured on the executor's own code at several sizes with the counted ops'
        per-op cost taken off (it is charged apart); :meth:`elementwise_rate` interpolates.
        Optional (empty: the device's pooled ``memory_bound_efficiency`` for all of them).
    attention_rates: per kind of attention core (:data:`ATTENTION_CLASSES`) and dtype, (kind,
        dtype, points): each point (sequence length, forward FLOP/s, backward FLOP/s), both
        rates per counted forward FLOP (the cost model's full ``4 s^2 d`` per head and sequence,
        ``planner.cost.flops``: a causal kernel that skips masked tiles shows as a higher rate),
        measured on the executor's own SDPA call with its per-op cost taken off;
        :meth:`attention_rate` interpolates. Optional (empty: the GEMM curve and a softmax pass).
    """

    op_forward_s: float
    op_backward_s: float
    op_optimizer_s: float
    tp_linear_forward_s: float
    tp_linear_backward_s: float
    tp_optimizer_param_s: float
    fsdp_unit_forward_s: float
    fsdp_unit_backward_s: float
    fsdp_optimizer_param_s: float
    zero1_param_s: float
    fragmentation_fraction: float
    training_overhead_bytes: float
    concurrent_slowdown: float = 0.0
    sp_block_forward_s: float = 0.0
    sp_block_backward_s: float = 0.0
    tp_linear_forward_s_per_byte: float = 0.0
    tp_linear_backward_s_per_byte: float = 0.0
    pp_action_s: float = 0.0
    pp_compute_slowdown: float = 0.0
    zb_split_slowdown: float = 0.0
    ddp_grad_s_per_byte: float = 0.0
    ddp_param_s: float = 0.0
    fsdp_unit_forward_s_per_byte: float = 0.0
    fsdp_unit_backward_s_per_byte: float = 0.0
    concurrent_gemm_slowdown: float = 0.0
    oversubscribed_slowdown: float = 0.0
    step_forward_slowdown: float = 0.0
    step_backward_slowdown: float = 0.0
    step_optimizer_slowdown: float = 0.0
    ep_dispatch_forward_s: float = 0.0
    ep_dispatch_backward_s: float = 0.0
    ep_dispatch_forward_s_per_token: float = 0.0
    ep_dispatch_backward_s_per_token: float = 0.0
    moe_block_forward_s: float = 0.0
    moe_block_backward_s: float = 0.0
    moe_expert_forward_s: float = 0.0
    moe_expert_backward_s: float = 0.0
    elementwise_rates: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = ()
    attention_rates: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = ()

    @staticmethod
    def number_fields() -> tuple[str, ...]:
        """The fields that hold one number (all but the rate tables)."""
        return tuple(f.name for f in dataclasses.fields(FrameworkSpec)
                     if f.name not in ("elementwise_rates", "attention_rates"))

    def with_op_costs_scaled(self, scale: float) -> "FrameworkSpec":
        """This spec with the per-op CPU costs (:data:`PER_OP_COST_FIELDS`) times ``scale``: the
        host's dispatcher and Python speed relative to the calibration."""
        return dataclasses.replace(self, **{f: getattr(self, f) * scale for f in PER_OP_COST_FIELDS})

    def with_attention_scaled(self, scale: float) -> "FrameworkSpec":
        """This spec with every measured attention rate (forward and backward) times ``scale``."""
        return dataclasses.replace(self, attention_rates=tuple(
            (kind, dtype, tuple((n, f * scale, b * scale) for n, f, b in points))
            for kind, dtype, points in self.attention_rates))

    def attention_rate(self, kind: str, d_head: float, dtype: str, seq_len: float) -> tuple[float, float] | None:
        """(forward, backward) FLOP/s per counted forward FLOP of the ``kind`` attention core
        (:data:`ATTENTION_CLASSES`) with heads of ``d_head`` on ``dtype`` at ``seq_len``: the
        measured head width nearest ``d_head`` (in ratio), log-log interpolation between its
        measured lengths, the end point's rate outside them; None if the kind is unmeasured."""
        widths = [(abs(math.log(int(k.rsplit("_d", 1)[1]) / d_head)), points)
                  for k, d, points in self.attention_rates if k.rsplit("_d", 1)[0] == kind and d == dtype]
        if not widths:
            return None
        points = min(widths, key=lambda w: w[0])[1]
        return tuple(loglog_interpolate(points, seq_len, column) for column in (1, 2))

    def elementwise_points(self, kind: str, dtype: str) -> tuple[tuple[float, float, float], ...] | None:
        """The measured (call bytes, forward bytes/s, backward bytes/s) of ``kind`` on ``dtype``
        activations, None if unmeasured."""
        for k, d, points in self.elementwise_rates:
            if k == kind and d == dtype:
                return points
        return None

    def elementwise_rate(self, kind: str, dtype: str, call_bytes: float) -> tuple[float, float] | None:
        """(forward, backward) bytes/s of ``kind`` on ``dtype`` activations for calls moving
        ``call_bytes`` forward: log-log interpolation between the measured sizes, the end
        point's rate outside them; None if unmeasured."""
        points = self.elementwise_points(kind, dtype)
        return None if points is None else tuple(loglog_interpolate(points, call_bytes, column) for column in (1, 2))

    def step_scale(self, phase: str) -> float:
        """The factor on a step's compute time in ``phase`` (forward, backward, optimizer):
        one plus its measured ``step_*_slowdown``."""
        return 1.0 + getattr(self, f"step_{phase}_slowdown")

    def fsdp_unit_s(self, param_bytes: float) -> tuple[float, float]:
        """(forward, backward) FSDP2 cost of one ``fully_shard`` unit per micro-batch holding
        ``param_bytes`` of (unsharded) parameters, beyond its collectives."""
        return (self.fsdp_unit_forward_s + self.fsdp_unit_forward_s_per_byte * param_bytes,
                self.fsdp_unit_backward_s + self.fsdp_unit_backward_s_per_byte * param_bytes)

    def ddp_reducer_s(self, param_tensors: int, grad_bytes: float) -> float:
        """DDP's reducer beyond its all-reduce, per step: hooks per tensor plus per-byte work."""
        return self.ddp_param_s * param_tensors + self.ddp_grad_s_per_byte * grad_bytes

    @property
    def ep_dispatch_measured(self) -> bool:
        """Whether the profile measured the expert-parallel dispatch (else it is priced by ops)."""
        return self.ep_dispatch_forward_s > 0 or self.ep_dispatch_backward_s > 0

    def ep_dispatch_s(self, routed_tokens: float) -> tuple[float, float]:
        """(forward, backward) cost of one MoE layer's expert-parallel dispatch and combine per
        micro-batch beyond its two token all-to-alls each way, ``routed_tokens`` (token copies,
        tokens x top_k) sent by the rank."""
        return (self.ep_dispatch_forward_s + self.ep_dispatch_forward_s_per_token * routed_tokens,
                self.ep_dispatch_backward_s + self.ep_dispatch_backward_s_per_token * routed_tokens)

    def moe_block_s(self, local_experts: int) -> tuple[float, float]:
        """(forward, backward) cost of one MoE block per micro-batch beyond its GEMMs, element-wise
        work and counted ops, with ``local_experts`` experts on the rank."""
        return (self.moe_block_forward_s + self.moe_expert_forward_s * local_experts,
                self.moe_block_backward_s + self.moe_expert_backward_s * local_experts)

    def tp_module_s(self, activation_bytes: float) -> tuple[float, float]:
        """(forward, backward) DTensor cost of one TP module per micro-batch whose activation
        (tokens x hidden) has ``activation_bytes``: a per-module constant plus a per-byte term
        (its redistribute copies and the gloo collectives' CPU work grow with the tensor)."""
        return (self.tp_linear_forward_s + self.tp_linear_forward_s_per_byte * activation_bytes,
                self.tp_linear_backward_s + self.tp_linear_backward_s_per_byte * activation_bytes)

    def __post_init__(self) -> None:
        for table in RATE_TABLES:
            for kind, dtype, points in getattr(self, table.field):
                key = f"framework.{table.yaml_key}.{kind}.{dtype}"
                require(re.fullmatch(table.kind_pattern, kind) is not None, key, f"unknown kind ({table.kinds_text})")
                require(dtype in ("fp32", "bf16"), key, "dtype must be fp32 or bf16")
                require(len(points) >= 1, key, f"needs at least one {table.point}")
                for point in points:
                    require(len(point) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                                    for v in point), key,
                            f"each point must be three finite numbers > 0 {table.point}")
                sizes = [pt[0] for pt in points]
                require(sizes == sorted(set(sizes)), key, f"points must have strictly increasing {table.x_name}")
        for name in self.number_fields():
            value = getattr(self, name)
            key = f"framework.{FRAMEWORK_YAML.get(name, (name,))[0]}"
            require(isinstance(value, (int, float)) and math.isfinite(value), key, "must be a finite number")
            require(value >= 0, key, "must be >= 0")
        require(self.fragmentation_fraction < 1, "framework.fragmentation_fraction", "must be in [0, 1)")




@dataclass(frozen=True)
class RateTable:
    """How one of the framework's measured rate tables is spelt in YAML: ``framework.<yaml_key>:
    {kind: {dtype: [[x, forward rate, backward rate], ...]}}``, ``x`` in units of ``x_unit``,
    rates in units of ``rate_unit``, held in :class:`FrameworkSpec` ``field``."""

    field: str
    yaml_key: str
    kind_pattern: str
    kinds_text: str
    x_unit: float
    rate_unit: float
    x_name: str
    point: str


RATE_TABLES = (
    RateTable("elementwise_rates", "elementwise_gb_s", "|".join(ELEMENTWISE_CLASSES),
              f"one of {', '.join(ELEMENTWISE_CLASSES)}", 2**20, GB, "call sizes",
              "[call MiB, forward GB/s, backward GB/s]"),
    RateTable("attention_rates", "attention_gflops", rf"({'|'.join(ATTENTION_CLASSES)})_d[1-9][0-9]*",
              f"{' or '.join(ATTENTION_CLASSES)} and the head width, as mha_d64", 1.0, GIGA, "sequence lengths",
              "[sequence length, forward GFLOP/s, backward GFLOP/s]"),
)


def loglog_interpolate(points, x: float, column: int) -> float:
    """``points[i][column]`` interpolated in log-log at ``x`` over ``points[i][0]`` (sorted),
    the end values outside."""
    xs = [pt[0] for pt in points]
    if x <= xs[0]:
        return points[0][column]
    if x >= xs[-1]:
        return points[-1][column]
    i = bisect.bisect_right(xs, x)
    (x0, *r0), (x1, *r1) = points[i - 1], points[i]
    y0, y1 = r0[column - 1], r1[column - 1]
    w = math.log(x / x0) / math.log(x1 / x0)
    return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))
