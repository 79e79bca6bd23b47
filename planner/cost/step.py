"""One training step's time and memory: :func:`predict` -> :class:`Prediction`.

Step time = simulated pipeline makespan (per-stage forward/backward built from per-block compute
plus exposed TP/CP/ZeRO-3 communication, PP send/recv between stages; :mod:`planner.schedule`)
+ the exposed part of the data-parallel gradient reduction (overlapped with the last
micro-batch's backward where the framework does, :class:`planner.cost.runtime.Runtime`)
+ the optimizer step (memory-bound over the local parameter shard).

On a CPU host whose ranks occupy every core the framework's overlap does not exist: gloo's
copies and reductions run on the same cores as the compute, so DP / ZeRO / FSDP communication is
exposed in full (:func:`effective_runtime`).

Tensor parallel (Shoeybi et al. 2019; Narayanan et al. SC'21 Sec. 3.3): 2 all-reduces of
``b*s*h`` activations per block forward and 2 in backward (with sequence parallel, Korthikanti
et al. 2022 Sec. 4.2.2: the same bytes as all-gather + reduce-scatter), not overlapped; full
recomputation repeats the forward ones. Context parallel (ring attention, Liu et al. 2023):
``cp-1`` K/V exchanges per block forward (K/V and their gradients backward), overlapped with the
attention core. Pipeline: one ``b*s*h`` send per micro-batch and stage boundary (``/t`` with
Megatron's scatter-gather optimisation, SC'21 Sec. 4.1).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from planner.cost import framework as fw
from planner.cost.comm import GroupShape, collective_time, p2p_time
from planner.cost.compute import (activation_bytes_per_element, block_gemm_forward_times,
                                  embedding_times, head_times, layer_times, make_rates)
from planner.cost.flops import FLOP_CONVENTION, step_flops
from planner.cost.memory import (StageMemory, shard_divisors, stage_memories, stage_parameters)
from planner.cost.runtime import DEFAULT_RUNTIME, Runtime
from planner.errors import InputError, require
from planner.hardware import ClusterSpec, NodeSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan, group_node_spread
from planner.schedule import estimate

OPTIMIZER_BYTES_PER_PARAM = 28.0
"""Adam step traffic per local parameter: read fp32 master, m, v and the fp32 gradient (16),
write master, m, v (12) -- the bf16 weight copy is written from the master in the same pass."""

TIMELINE_TASK_LIMIT = 20000


@dataclass(frozen=True)
class StagePrediction:
    stage: int
    layers: int
    time_s: float
    memory_bytes: float
    memory: StageMemory

    def to_dict(self) -> dict:
        return {"stage": self.stage, "layers": self.layers, "time_s": self.time_s,
                "memory_bytes": self.memory_bytes}


@dataclass(frozen=True)
class TimeBreakdown:
    forward_s: float
    backward_s: float
    recompute_s: float
    optimizer_s: float
    tp_s: float
    cp_s: float
    dp_s: float
    pp_s: float
    bubble_s: float

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s

    def to_dict(self) -> dict:
        return {"compute_s": self.compute_s, "forward_s": self.forward_s,
                "backward_s": self.backward_s, "optimizer_s": self.optimizer_s,
                "recompute_s": self.recompute_s,
                "exposed_comm_s": {"tp": self.tp_s, "cp": self.cp_s, "dp": self.dp_s, "pp": self.pp_s},
                "bubble_s": self.bubble_s}


@dataclass(frozen=True)
class Prediction:
    """Predicted step of one plan. ``to_dict()`` is the JSON of ``clusterplan predict --json``."""

    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    hardware_tflops_per_gpu: float
    mfu: float
    hfu: float
    peak_memory_bytes: float
    fits: bool
    hbm_bytes: float
    per_stage: tuple[StagePrediction, ...]
    time: TimeBreakdown
    memory: StageMemory
    timeline: tuple = field(default=(), repr=False)
    timeline_micro_batches: int = 0
    num_micro_batches: int = 0
    runtime: Runtime = DEFAULT_RUNTIME

    def to_dict(self) -> dict:
        return {
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "model_tflops_per_gpu": self.model_tflops_per_gpu,
            "hardware_tflops_per_gpu": self.hardware_tflops_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "peak_memory_bytes": self.peak_memory_bytes,
            "hbm_bytes": self.hbm_bytes,
            "fits": self.fits,
            "num_micro_batches": self.num_micro_batches,
            "per_stage": [s.to_dict() for s in self.per_stage],
            "breakdown": {"time": self.time.to_dict(), "memory": self.memory.to_dict()},
            "timeline": [t.to_dict() for t in self.timeline],
            "timeline_micro_batches": self.timeline_micro_batches,
            "runtime": self.runtime.to_dict(),
            "flop_convention": FLOP_CONVENTION,
        }


def _param_tensor_sizes(model: ModelSpec, tp: int) -> list[int]:
    """Elements of each parameter tensor of one block on one tp rank (fused QKV as Megatron
    stores it): what per-tensor ZeRO-3 gathers one by one."""
    h = model.hidden_size
    qkv_out = (model.q_dim + 2 * model.kv_dim) // tp
    experts = model.n_experts if model.is_moe else 1
    ffn = model.expert_ffn if model.is_moe else model.ffn_hidden_size
    up_out = (model.mlp_matrices - 1) * ffn // tp
    sizes = [h * qkv_out, (model.q_dim // tp) * h]
    sizes += experts * [h * up_out, (ffn // tp) * h]
    if model.bias:
        sizes += [qkv_out, h] + experts * [up_out, h]
    if model.is_moe:
        sizes.append(h * model.n_experts)
    norm_tensors = 2 if model.norm == "layernorm" else 1
    sizes += 2 * norm_tensors * [h]
    return sizes


def _gathered_tensors_per_layer(model: ModelSpec, tp: int, runtime: Runtime) -> int:
    """Collectives per block and direction for ZeRO-3/FSDP: 1 flat parameter per block, or one
    per tensor above DeepSpeed's persistence threshold."""
    if runtime.gather_granularity != "per_tensor":
        return 1
    sizes = _param_tensor_sizes(model, tp)
    return max(1, sum(1 for n in sizes if n > runtime.param_persistence_threshold))


def _validate(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig) -> NodeSpec:
    require(cluster.is_homogeneous, "cluster", "the cost model handles one node type per cluster")
    node = cluster.node
    world = cluster.world_size
    require(parallel.world_size == world, "dp",
            f"tp*pp*dp*cp = {parallel.tp}*{parallel.pp}*{parallel.dp}*{parallel.cp} = "
            f"{parallel.world_size} != nodes*gpus_per_node = {cluster.n_nodes}*{node.gpus_per_node} = {world}")
    parallel.validate_for(model)
    require(parallel.seq_len <= model.seq_len or model.position != "learned", "seq_len",
            f"{parallel.seq_len} exceeds the model's learned positions ({model.seq_len})")
    if not node.device.supports(parallel.precision):
        node.device.peak_flops(parallel.precision)  # raises InputError naming precision
    return node


@dataclass(frozen=True)
class _StageTimes:
    """Per-virtual-stage task times of one plan (everything the pipeline schedule needs)."""

    fwd_s: tuple[float, ...]
    sched_b: tuple[float, ...]
    sched_w: tuple[float, ...] | None
    p2p_s: float
    schedule: str
    lt: object
    emb: tuple[float, float]
    head: tuple[float, float, float]
    per_layer_comm: tuple[float, float, float, float, float, float, float]  # tp_f tp_b tp_rc cp_f cp_b z3_f z3_b


def _stage_times(model: ModelSpec, node: NodeSpec, P: ParallelConfig, runtime: Runtime,
                 rates) -> _StageTimes:
    """Per-virtual-stage forward / backward (/ weight-grad for zb) times and the p2p hop."""
    gpn = node.gpus_per_node
    tp, pp, cp, v = P.tp, P.pp, P.cp, P.vpp
    b, s = P.micro_batch, P.seq_len
    bpe = activation_bytes_per_element(P.precision)
    lt = layer_times(model, b, s, tp, cp, P.sequence_parallel, P.recompute, P.precision, rates, runtime)
    emb_f, emb_b = embedding_times(model, b, s, tp, cp, P.sequence_parallel, P.precision, rates)
    head_f, head_bin, head_bw = head_times(model, b, s, tp, cp, P.sequence_parallel, P.precision, rates)
    comm = _layer_comm(model, node, P, runtime, lt, rates)
    tp_f, tp_b, tp_rc, cp_f, cp_b, z3_f, z3_b = comm
    layers = P.layers_per_stage(model.n_layers)
    n_vs = pp * v
    per_layer_f = lt.fwd_s + tp_f + cp_f + z3_f
    per_layer_b = lt.bwd_input_s + lt.recompute_s + tp_b + tp_rc + cp_b + z3_b
    if node.framework is not None:
        ef, eb, hf, hb = _executor_edge_costs(model, node, P, rates)
        emb_f, emb_b = emb_f + ef, emb_b + eb
        head_f, head_bin = head_f + hf, head_bin + hb
    fwd_s, bwd_s, w_s = [], [], []
    for k, n in enumerate(layers):
        f = n * per_layer_f
        bi = n * per_layer_b
        w = n * lt.bwd_weight_s
        if k == 0:
            f += emb_f
            bi += emb_b
        if k == n_vs - 1:
            f += head_f
            bi += head_bin
            w += head_bw
        fwd_s.append(f)
        bwd_s.append(bi)
        w_s.append(w)
    if pp > 1:  # the executor's pipelining runtime on every F, B (and W) action
        fwd_s, bwd_s, w_s = fw.pipeline_actions(fwd_s, bwd_s, w_s, node.framework, rates, P.schedule)
    if P.schedule == "zb":
        sched_b, sched_w = bwd_s, w_s
    else:
        sched_b, sched_w = [x + y for x, y in zip(bwd_s, w_s)], None
    p2p = 0.0
    if pp > 1:
        act_bytes = bpe * b * (s / cp) * model.hidden_size
        p2p = p2p_time(act_bytes / tp, _shape(P, "pp", gpn).nodes > 1, node)  # scatter-gather: 1/t each
    # a plain pp=1 step with v=1 is a single stage: any listed schedule runs the same order
    sched = P.schedule if pp > 1 else ("interleaved" if v > 1 else "1f1b")
    return _StageTimes(tuple(fwd_s), tuple(sched_b), tuple(sched_w) if sched_w else None, p2p, sched,
                       lt, (emb_f, emb_b), (head_f, head_bin, head_bw), comm)


def _executor_edge_costs(model: ModelSpec, node: NodeSpec, P: ParallelConfig, rates):
    """Framework profiles: per micro-batch costs outside the blocks that the executor adds
    (:mod:`planner.cost.framework`): (embedding fwd, bwd, head fwd, bwd) extra seconds.

    TP (executor/parallel/tp.py): the vocabulary-parallel embedding all-reduces its output
    (forward); the vocabulary-parallel loss all-reduces three fp32 values per token (maximum,
    sum of exponentials, target logit; its backward is local); the LM head all-reduces its
    input gradient (backward). FSDP2: the root unit (and the untied embedding's unit) gather their parameters
    before forward (again before backward when resharding) and reduce-scatter the gradients,
    plus each unit's per-micro-batch cost."""
    frame = node.framework
    gpn = node.gpus_per_node
    tp, dp = P.tp, P.dp
    bpe = activation_bytes_per_element(P.precision)
    T = P.micro_batch * P.seq_len / P.cp
    ef = eb = hf = hb = 0.0
    if tp > 1:
        g = _shape(P, "tp", gpn)
        e_f, h_f, h_b = fw.tp_edge_comm_s(model, T, bpe, g, node)
        ef, hf, hb = ef + e_f, hf + h_f, hb + h_b
    if fw.uses_fsdp(P.sharding, tp, dp):
        g = _shape(P, "dp", gpn)
        w_b = 4.0 if P.precision == "fp32" else 2.0
        tied = fw.executor_tied(model, tp, P.pp)
        reshard = P.sharding in ("zero3", "fsdp")

        def unit(params: float) -> tuple[float, float]:
            ag = collective_time("all_gather", params * w_b, g, node)
            rs = collective_time("reduce_scatter", params * w_b, g, node)
            unit_f, unit_b = frame.fsdp_unit_s(params * w_b)
            return (ag + rates.ops(1, unit_f), (ag if reshard else 0.0) + rs + rates.ops(1, unit_b))

        emb_params = model.embedding_params() / tp
        head_params = (model.head_params() if not tied else model.hidden_size * (2 if model.bias else 1)) / tp
        if not tied:
            ef, eb = unit(emb_params)
            f, b = unit(head_params)
        else:
            f, b = unit(emb_params + head_params)
        hf += f
        hb += b
    return ef, eb, hf, hb


def _shape(P: ParallelConfig, axis: str, gpn: int) -> GroupShape:
    per_node, nodes = group_node_spread(P, axis, gpn)
    return GroupShape(getattr(P, axis), per_node, nodes)


def _layer_comm(model: ModelSpec, node: NodeSpec, P: ParallelConfig, runtime: Runtime, lt, rates):
    """Exposed TP / CP / ZeRO-3 communication per block and micro-batch (see module doc); the
    executor's FSDP2 per-unit CPU work at ``rates`` (as the embedding and head units')."""
    gpn = node.gpus_per_node
    tp, dp, cp = P.tp, P.dp, P.cp
    b, s = P.micro_batch, P.seq_len
    bpe = activation_bytes_per_element(P.precision)

    def shape(axis: str) -> GroupShape:
        return _shape(P, axis, gpn)

    # --- tensor parallel, per block and micro-batch (exposed) ---
    act_bytes = bpe * b * (s / cp) * model.hidden_size
    tp_f = tp_b = 0.0
    frame = node.framework
    if tp > 1 and frame is not None:
        # the executor (executor/parallel/tp.py): 2 forward all-reduces (SP: all-gather +
        # reduce-scatter each); backward one input-gradient all-reduce per column-parallel
        # linear (Q, K, V, up, gate are separate), with SP also the forward reduce-scatters'
        # all-gathers
        g = shape("tp")
        ar = collective_time("all_reduce", act_bytes, g, node)
        if P.sequence_parallel:
            ag = collective_time("all_gather", act_bytes, g, node)
            rs = collective_time("reduce_scatter", act_bytes, g, node)
            tp_f = 2 * (ag + rs)
            tp_b = fw.colwise_per_block(model) * ar + 2 * ag
        else:
            tp_f = 2 * ar
            tp_b = fw.colwise_per_block(model) * ar
    elif tp > 1:
        g = shape("tp")
        if P.sequence_parallel:
            one = collective_time("all_gather", act_bytes, g, node) + collective_time("reduce_scatter", act_bytes, g, node)
        else:
            one = collective_time("all_reduce", act_bytes, g, node)
        tp_f = 2 * one
        tp_b = 2 * one
    tp_rc = tp_f if P.recompute == "full" else 0.0

    # --- context parallel: ring K/V exchange overlapped with the attention core ---
    cp_f = cp_b = 0.0
    if cp > 1:
        g = shape("cp")
        kv_bytes = 2 * bpe * b * (s / cp) * model.kv_dim / tp
        hop = p2p_time(kv_bytes, g.nodes > 1, node)
        cp_f = max(0.0, (cp - 1) * hop - lt.core_fwd_s)
        cp_b = max(0.0, 2 * (cp - 1) * hop - lt.core_bwd_s)

    # --- ZeRO-3 / FSDP: per block parameter all-gathers and gradient reduce-scatter ---
    z3_f = z3_b = 0.0
    w_bytes_pp = 4.0 if P.precision == "fp32" else 2.0
    layer_params_rank = model.layer_params() / tp
    if frame is not None and fw.uses_fsdp(P.sharding, tp, dp):
        # executor FSDP2: one unit per block; every collective exposed on a CPU host
        g = shape("dp")
        size = layer_params_rank * w_bytes_pp
        ag = collective_time("all_gather", size, g, node)
        rs = collective_time("reduce_scatter", size, g, node)
        reshard = P.sharding in ("zero3", "fsdp")
        unit_f, unit_b = frame.fsdp_unit_s(size)
        comm_f = ag + rates.ops(1, unit_f)
        comm_b = (ag if reshard else 0.0) + rs + rates.ops(1, unit_b)
        if runtime.shard_prefetch:
            z3_f = max(0.0, comm_f - lt.fwd_s)
            z3_b = max(0.0, comm_b - (lt.bwd_s + lt.recompute_s))
        else:
            z3_f, z3_b = comm_f, comm_b
    elif P.sharding in ("zero3", "fsdp") and dp > 1:
        g = shape("dp")
        size = layer_params_rank * w_bytes_pp
        n_coll = _gathered_tensors_per_layer(model, tp, runtime)
        copies_s = dp * node.device.kernel_overhead_s if runtime.list_collective_copies else 0.0

        def coll(op: str) -> float:
            lat = collective_time(op, 1.0, g, node)
            return (collective_time(op, size, g, node, runtime.multi_rail) + (n_coll - 1) * lat
                    + n_coll * copies_s)

        ag = coll("all_gather")
        rs = coll("reduce_scatter")
        gathers_b = 1 + (1 if (runtime.recompute_gathers_again and P.recompute == "full") else 0)
        comm_f = ag
        comm_b = gathers_b * ag + rs
        if runtime.shard_prefetch and runtime.gather_granularity == "per_tensor":
            z3_f, z3_b = _per_tensor_prefetch_exposed(model, node, P, runtime, lt, g, copies_s)
        elif runtime.shard_prefetch:
            z3_f = max(0.0, comm_f - lt.fwd_s)
            z3_b = max(0.0, comm_b - (lt.bwd_s + lt.recompute_s))
        else:  # partial overlap: a fraction of the shorter of comm and compute hides
            eta = runtime.shard_overlap_fraction
            z3_f = comm_f - eta * min(comm_f, lt.fwd_s)
            z3_b = comm_b - eta * min(comm_b, lt.bwd_s + lt.recompute_s)
    return (tp_f, tp_b, tp_rc, cp_f, cp_b, z3_f, z3_b)


def _block_modules(model: ModelSpec, tp: int, threshold: int) -> list[int]:
    """Gathered elements of each weight-bearing module of one block in execution order (QKV,
    output projection, per expert up (+gate) and down, MoE router): the weight plus its bias
    when that is above DeepSpeed's persistence threshold (smaller tensors stay resident)."""
    h = model.hidden_size
    qkv_out = (model.q_dim + 2 * model.kv_dim) // tp
    experts = model.n_experts if model.is_moe else 1
    ffn = model.expert_ffn if model.is_moe else model.ffn_hidden_size
    up_out = (model.mlp_matrices - 1) * ffn // tp
    mods = [(h * qkv_out, qkv_out), ((model.q_dim // tp) * h, h)]
    mods += experts * [(h * up_out, up_out), ((ffn // tp) * h, h)]
    if model.is_moe:
        mods.append((h * model.n_experts, 0))
    out = []
    for w, b in mods:
        n = (w if w > threshold else 0) + (b if (model.bias and b > threshold) else 0)
        out.append(n)
    return out


def _per_tensor_prefetch_exposed(model: ModelSpec, node: NodeSpec, P: ParallelConfig,
                                 runtime: Runtime, lt, g: GroupShape, copies_s: float
                                 ) -> tuple[float, float]:
    """Exposed ZeRO-3 time per block (forward, backward) of DeepSpeed's 2021 stage-3 parameter
    coordinator, simulated module by module over the block's trace.

    Structure (DeepSpeed v0.3.13-v0.5 ``runtime/zero/stage3.py``, ``partition_parameters.py``):
    each weight-bearing sub-module's pre-forward / pre-backward hook fetches its parameters
    (``fetch_sub_module``: if they are in flight, ``_synchronize_communication`` waits and calls
    ``torch.cuda.synchronize()``; if not gathered, it all-gathers them there and waits), then
    ``prefetch_next_sub_modules`` issues, only when no prefetch is in flight and fewer than
    ``max_live_parameters`` elements are gathered, the all-gather of the next not-gathered
    parameters in the recorded trace up to ``prefetch_bucket_size`` elements (at least one
    tensor); ``_allgather_param`` calls ``torch.cuda.synchronize()`` before issuing it. So every
    fetch and every issue is a device-wide barrier: the compute of module j overlaps only the
    gather of the next tensor (depth-1 pipelining per module, not per block). The post hooks
    release a module's parameters unless they are used again within ``max_reuse_distance``
    elements of trace (with full recomputation the last forward module is reused at once by its
    backward and stays gathered). Each weight gradient is reduce-scattered after its backward
    on the reduction stream (``overlap_comm``), sharing the network with the gathers.

    Compute per module: its projection GEMM (x2 in backward: dgrad and wgrad); the attention
    core runs in the QKV module's forward phase and in the output projection's backward phase;
    the element-wise remainder is spread evenly over the modules."""
    rates_gemm = _gemm_times_cache(model, P, node)
    sizes = _block_modules(model, P.tp, runtime.param_persistence_threshold)
    n = len(sizes)
    if not any(sizes):
        return 0.0, 0.0
    bpe_w = 4.0 if P.precision == "fp32" else 2.0
    gemm = list(rates_gemm)
    rest_f = max(0.0, lt.fwd_s - sum(gemm) - lt.core_fwd_s) / n
    rest_b = max(0.0, lt.bwd_s - 2 * sum(gemm) - lt.core_bwd_s) / n
    mp = runtime.multi_rail

    def gather_s(numel: int) -> float:
        return collective_time("all_gather", numel * bpe_w, g, node, mp) + copies_s

    def rs_s(numel: int) -> float:
        return collective_time("reduce_scatter", numel * bpe_w, g, node, mp) + copies_s

    fwd_c = [gemm[i] + rest_f + (lt.core_fwd_s if i == 0 else 0.0) for i in range(n)]
    bwd_c = [2 * gemm[i] + rest_b + (lt.core_bwd_s if i == min(1, n - 1) else 0.0) for i in range(n)]
    if P.recompute == "selective":
        bwd_c[min(1, n - 1)] += lt.recompute_s
    # trace steps: (module, compute seconds, reduce-scatter after it)
    fwd_trace = [(i, fwd_c[i], False) for i in range(n)]
    bwd_trace = []
    if P.recompute == "full":
        bwd_trace += [(i, fwd_c[i] * (lt.recompute_s / max(lt.fwd_s, 1e-30)), False) for i in range(n)]
    bwd_trace += [(i, bwd_c[i], True) for i in reversed(range(n))]

    def run(trace) -> float:
        """Steady-state time of one block: the cyclic trace (block after block) run three
        times, the middle pass measured."""
        L = len(trace)
        full = trace * 3
        # a module's parameters stay gathered after use when the same module runs again in
        # this block's trace within max_reuse_distance elements (DeepSpeed _keep_for_later)
        keep = []
        for k, (mod, _, _) in enumerate(full):
            pos = k % L
            nxt = next((k + (q - pos) for q in range(pos + 1, L) if trace[q][0] == mod), None)
            dist = None if nxt is None else sum(sizes[full[j][0]] for j in range(k + 1, nxt))
            keep.append(dist is not None and dist < runtime.max_reuse_distance)
        avail: set[int] = set()     # modules whose parameters are gathered
        inflight: set[int] = set()
        live = 0
        T = comp = comm = 0.0
        marks = []
        for k, (mod, c, rs_after) in enumerate(full):
            if k % L == 0:
                marks.append(max(comp, comm))
            need = sizes[mod] > 0
            if need and mod in inflight:
                T = max(comp, comm)
                comp = comm = T
                avail |= inflight
                inflight.clear()
            elif need and mod not in avail:
                T = max(comp, comm)        # torch.cuda.synchronize() before the gather
                T += gather_s(sizes[mod])  # ... and the fetch waits for it
                comp = comm = T
                avail.add(mod)
                live += sizes[mod]
            if not inflight and (runtime.max_live_parameters <= 0
                                 or live < runtime.max_live_parameters):
                total, pick = 0, []
                for j in range(k, len(full)):
                    m2 = full[j][0]
                    if sizes[m2] > 0 and m2 not in avail and m2 not in pick:
                        pick.append(m2)
                        total += sizes[m2]
                        if total >= runtime.prefetch_bucket_numel:
                            break
                if pick:
                    T = max(comp, comm)     # _allgather_param: torch.cuda.synchronize()
                    comp = T
                    comm = T + sum(gather_s(sizes[m2]) for m2 in pick)
                    inflight.update(pick)
                    live += total
            comp += c
            if rs_after and sizes[mod] > 0:
                comm = max(comm, comp) + rs_s(sizes[mod])
            if need and not keep[k] and mod in avail:
                avail.discard(mod)
                live -= sizes[mod]
        marks.append(max(comp, comm))
        return marks[2] - marks[1]

    t_f = run(fwd_trace)
    t_b = run(bwd_trace)
    return (max(0.0, t_f - lt.fwd_s), max(0.0, t_b - (lt.bwd_s + lt.recompute_s)))


def _gemm_times_cache(model: ModelSpec, P: ParallelConfig, node: NodeSpec) -> tuple[float, ...]:
    rates = make_rates(node.device, P.precision, min(node.gpus_per_node, P.world_size), node.framework)
    return block_gemm_forward_times(model, P.micro_batch, P.seq_len, P.tp, P.cp, P.precision, rates)


def lower_bound_step_time_s(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig,
                            runtime: Runtime = DEFAULT_RUNTIME) -> float:
    """A cheap lower bound of ``predict(...).step_time_s`` for pruning (no schedule simulation).

    The busiest pipeline rank must run all its tasks (``m`` micro-batches of each of its chunks,
    exposed TP/CP/ZeRO-3 communication included) and then the optimizer step; the pipeline
    bubble and the exposed DP reduction are >= 0. Raises InputError like :func:`predict`."""
    node = _validate(model, cluster, parallel)
    P = parallel
    runtime = effective_runtime(runtime, node.device,
                                min(node.gpus_per_node, P.world_size) if P.world_size > 1 else 0)
    rates = make_rates(node.device, P.precision, min(node.gpus_per_node, P.world_size), node.framework)
    st = _stage_times(model, node, P, runtime, rates)
    pp, m = P.pp, P.num_micro_batches
    n_vs = len(st.fwd_s)
    busy = [0.0] * pp
    for k in range(n_vs):
        busy[k % pp] += m * (st.fwd_s[k] + st.sched_b[k] + (st.sched_w[k] if st.sched_w else 0.0))
    return max(busy) + _optimizer_s(model, P, rates)


def _param_tensors(model: ModelSpec, P: ParallelConfig) -> int:
    """Parameter tensors of the busiest pipeline rank in the executor."""
    layers = P.layers_per_stage(model.n_layers)
    n_vs, pp = P.pp * P.vpp, P.pp
    first, last = fw.edge_param_tensors(model, fw.executor_tied(model, P.tp, pp))
    best = 0
    for r in range(pp):
        ks = list(range(r, n_vs, pp))
        n = sum(layers[k] for k in ks) * fw.block_param_tensors(model)
        n += (first if 0 in ks else 0) + (last if n_vs - 1 in ks else 0)
        best = max(best, n)
    return best


def optimizer_traffic_s(rates, local_params: float, params_per_tensor: float | None) -> float:
    """Memory traffic of the optimizer step over ``local_params``: with a framework ``adamw``
    rate, the executor's AdamW(foreach=False) bytes
    (:data:`planner.cost.framework.ADAMW_BYTES_PER_PARAM`) at its rate for tensors of
    ``params_per_tensor`` (None: the fastest measured size, a lower bound for the search), times
    the profile's in-step factor (:meth:`planner.hardware.FrameworkSpec.step_scale`); else
    the fused :data:`OPTIMIZER_BYTES_PER_PARAM` at the pooled memory-bound rate (times that
    factor too with a framework profile)."""
    frame = rates.framework
    points = frame.elementwise_points("adamw", "fp32") if frame else None
    if points is None:
        traffic_s = rates.memory(local_params * OPTIMIZER_BYTES_PER_PARAM, 0)
    else:
        call_bytes = (max(points, key=lambda pt: pt[1])[0] if params_per_tensor is None
                      else fw.ADAMW_BYTES_PER_PARAM * params_per_tensor)
        traffic_s = rates.elementwise({"adamw": (fw.ADAMW_BYTES_PER_PARAM * local_params, 0.0, call_bytes)}, 4)[0]
    return traffic_s * frame.step_scale("optimizer") if frame else traffic_s


def _optimizer_s(model: ModelSpec, P: ParallelConfig, rates) -> float:
    """AdamW over the local shard: memory-bound traffic plus, with a framework profile, the
    executor's per-op costs (AdamW(foreach=False): ~10 ops per parameter tensor; DTensor
    parameters under TP / FSDP2, ZeroRedundancyOptimizer's per-parameter bookkeeping)."""
    params = stage_parameters(model, P)
    _, _, o_div = shard_divisors(P.sharding, P.dp)
    n_vs = P.pp * P.vpp
    frame = rates.framework
    if frame is None:
        return rates.memory(max(params) / o_div * OPTIMIZER_BYTES_PER_PARAM, 2 * max(1, n_vs))
    tensors = _param_tensors(model, P)
    fsdp = fw.uses_fsdp(P.sharding, P.tp, P.dp)
    zero1 = P.sharding == "zero1" and P.dp > 1 and not fsdp
    stepped = tensors / P.dp if zero1 else tensors  # ZeRO-1 partitions whole tensors over dp
    local = max(params) / o_div
    t = optimizer_traffic_s(rates, local, local / max(1, stepped))
    t += rates.ops(stepped * fw.ADAM_OPS_PER_PARAM, frame.op_optimizer_s)
    if P.tp > 1:
        t += rates.ops(tensors, frame.tp_optimizer_param_s)
    elif fsdp:
        t += rates.ops(tensors, frame.fsdp_optimizer_param_s)
    if zero1:
        t += rates.ops(tensors, frame.zero1_param_s)
    return t


def collectives_share_cores(device, ranks_per_node: int) -> bool:
    """True on a CPU host whose ranks occupy every core (``ranks >= host_cores``).

    gloo runs a collective's copies and reductions on CPU threads of the calling process
    (Gloo ``allreduce_ring_chunked``, PyTorch ``ProcessGroupGloo`` work threads), so on CPU a
    collective "overlapped" with backward (DDP buckets, Li et al. VLDB 2020; FSDP prefetch,
    Zhao et al. VLDB 2023) competes with the compute thread for the same core instead of
    running on a separate engine as NCCL does on a GPU: with no idle core the communication
    time adds to the step. (A rank *waiting* for its peers uses no CPU; DESIGN.md.)"""
    return device.host_cores > 0 and ranks_per_node >= device.host_cores


def effective_runtime(runtime: Runtime, device, ranks_per_node: int) -> Runtime:
    """``runtime`` as it can behave on this device: no comm/compute overlap where the
    collectives share the cores with compute (:func:`collectives_share_cores`)."""
    if not collectives_share_cores(device, ranks_per_node):
        return runtime
    return dataclasses.replace(runtime, overlap_grad_reduce=False, overlap_param_gather=False,
                               shard_prefetch=False, shard_overlap_fraction=0.0)


BUSY_FIXED_POINT_ITERATIONS = 8
"""At most this many re-evaluations of an oversubscribed CPU host's busy fraction (it settles
to 0.1% in two or three: the idle share of a pipeline scales with its compute)."""


@dataclass(frozen=True)
class _Timed:
    """The rate-dependent part of a prediction, for ``ranks_busy`` ranks computing at once on
    a host (``make_rates``)."""

    ranks_busy: float
    rates: object
    st: _StageTimes
    pipe: object
    dp_exposed_s: float
    optimizer_s: float
    step_s: float

    @property
    def busy_fraction(self) -> float:
        """Mean over the pipeline ranks of the time they compute (stage work and the
        optimizer) per step; the rest they wait for a peer or a collective."""
        busy = sum(self.pipe.busy_s) / len(self.pipe.busy_s) + self.optimizer_s
        return min(1.0, busy / self.step_s)


def _timed_step(model: ModelSpec, node: NodeSpec, P: ParallelConfig, runtime: Runtime,
                stage_params: list, ranks_busy: float, timeline: bool) -> _Timed:
    """Stage times, the pipeline schedule, exposed DP reduction, optimizer and step time with
    ``ranks_busy`` ranks sharing the host's cores.

    Oversubscribed CPU host (ranks > host_cores): a rank blocked in a receive or a collective
    sleeps, so the others share the cores among fewer; with a mean busy fraction u over the
    ranks, each busy rank gets min(1, host_cores / (ranks x u)) of a core (egalitarian
    processor sharing: the runnable jobs share the servers equally; Kleinrock, "Time-shared
    systems: a theoretical treatment", J. ACM 14(2), 1967; :func:`predict` iterates u to its
    fixed point). The measured waits are taken to use no CPU (a blocked gloo receive sleeps)."""
    rates = make_rates(node.device, P.precision, ranks_busy, node.framework)
    st = _stage_times(model, node, P, runtime, rates)
    pipe = estimate(st.schedule, P.pp, P.num_micro_batches, P.vpp, list(st.fwd_s), list(st.sched_b),
                    list(st.sched_w) if st.sched_w else None, st.p2p_s, need_timeline=timeline)
    dp_exposed = _dp_exposed_s(model, node, P, runtime, rates, st, stage_params)
    optimizer_s = _optimizer_s(model, P, rates)
    return _Timed(ranks_busy, rates, st, pipe, dp_exposed, optimizer_s,
                  pipe.makespan_s + dp_exposed + optimizer_s)


def _dp_exposed_s(model: ModelSpec, node: NodeSpec, P: ParallelConfig, runtime: Runtime, rates,
                  st: _StageTimes, stage_params: list) -> float:
    """Data-parallel gradient reduction (non-ZeRO-3) not hidden behind the last backward (and
    ZeRO's parameter all-gather unless overlapped); with a framework profile the executor's
    ZeRO-1 (DDP all-reduce + parameter broadcasts) and DDP reducer cost."""
    tp, pp, dp = P.tp, P.pp, P.dp
    executor_fsdp = node.framework is not None and fw.uses_fsdp(P.sharding, tp, dp)
    if dp == 1 or P.sharding in ("zero3", "fsdp") or executor_fsdp:
        return 0.0
    g = _shape(P, "dp", node.gpus_per_node)
    w_bytes_pp = 4.0 if P.precision == "fp32" else 2.0
    params_max = max(stage_params)
    r_max = stage_params.index(params_max)
    grad_bytes = params_max * (2.0 if P.precision in ("fp16", "fp8") else 4.0)
    if P.sharding == "none":
        red = collective_time("all_reduce", grad_bytes, g, node)
        gather = 0.0
    elif node.framework is not None:  # executor ZeRO-1: DDP all-reduce + parameter broadcasts
        red = collective_time("all_reduce", grad_bytes, g, node)
        gather = collective_time("all_gather", params_max * w_bytes_pp, g, node)
    else:
        red = collective_time("reduce_scatter", grad_bytes, g, node)
        gather = collective_time("all_gather", params_max * w_bytes_pp, g, node)
    window = 0.0
    if runtime.overlap_grad_reduce:
        chunks = [k for k in range(pp * P.vpp) if k % pp == r_max]
        window = sum(st.sched_b[k] + (st.sched_w[k] if st.sched_w else 0.0) for k in chunks)
    exposed = max(0.0, red - window) + (0.0 if runtime.overlap_param_gather else gather)
    if node.framework is not None and pp == 1:  # the executor's DDP reducer (hooks, buckets)
        exposed += rates.ops(1, node.framework.ddp_reducer_s(_param_tensors(model, P), grad_bytes))
    return exposed


def predict(model: ModelSpec, cluster: ClusterSpec, parallel: ParallelConfig,
            runtime: Runtime = DEFAULT_RUNTIME, *, timeline: bool = True) -> Prediction:
    """Predict step time and per-rank memory of ``parallel`` for ``model`` on ``cluster``.

    Raises :class:`InputError` for impossible plans (degrees vs world size, heads vs tp, batch
    divisibility, stage layers). A plan that does not fit in memory is a value: ``fits=False``.
    timeline=False (the search's fast path) leaves ``Prediction.timeline`` empty and lets equal
    pipeline stages use the schedule's closed form; every other field is the same.
    """
    node = _validate(model, cluster, parallel)
    device = node.device
    gpn = node.gpus_per_node
    P = parallel
    pp, v = P.pp, P.vpp
    s = P.seq_len
    m = P.num_micro_batches
    ranks_on_host = min(gpn, P.world_size)
    runtime = effective_runtime(runtime, device, ranks_on_host if P.world_size > 1 else 0)
    stage_params = stage_parameters(model, P)
    timed = _timed_step(model, node, P, runtime, stage_params, ranks_on_host, timeline)
    if device.host_cores > 0 and ranks_on_host > device.host_cores:
        # oversubscribed CPU host: a rank waiting in a receive or a collective sleeps, so the
        # busy ones get more than host_cores / ranks of a core; iterate on the busy fraction
        for _ in range(BUSY_FIXED_POINT_ITERATIONS):
            busy = max(device.host_cores, ranks_on_host * timed.busy_fraction)
            if abs(busy - timed.ranks_busy) <= 1e-3 * busy:
                break
            timed = _timed_step(model, node, P, runtime, stage_params, busy, timeline)
    rates, st, pipe = timed.rates, timed.st, timed.pipe
    dp_exposed, optimizer_s, step = timed.dp_exposed_s, timed.optimizer_s, timed.step_s
    lt = st.lt
    emb_f, emb_b = st.emb
    head_f, head_bin, head_bw = st.head
    tp_f, tp_b, tp_rc, cp_f, cp_b, z3_f, z3_b = st.per_layer_comm
    layers = P.layers_per_stage(model.n_layers)
    n_vs = pp * v
    p2p = st.p2p_s

    # --- per physical stage: memory ---
    in_flight = fw.executor_in_flight(node.framework, st.schedule, pp, m, pipe.peak_in_flight)
    per_stage = stage_memories(model, P, device, in_flight, runtime.attention,
                               framework=node.framework)
    crit = max(range(pp), key=lambda r: pipe.busy_s[r])

    # --- breakdown on the critical rank ---
    chunks = [k for k in range(n_vs) if k % pp == crit]
    n_crit = sum(layers[k] for k in chunks)
    has_emb = 0 in chunks
    has_head = (n_vs - 1) in chunks
    fwd_c = m * (n_crit * lt.fwd_s + (emb_f if has_emb else 0.0) + (head_f if has_head else 0.0))
    bwd_c = m * (n_crit * lt.bwd_s + (emb_b if has_emb else 0.0)
                 + ((head_bin + head_bw) if has_head else 0.0))
    rc_c = m * n_crit * lt.recompute_s
    tp_c = m * n_crit * (tp_f + tp_b + tp_rc)
    cp_c = m * n_crit * (cp_f + cp_b)
    z3_c = m * n_crit * (z3_f + z3_b)
    scale = pipe.busy_s[crit] / max(1e-30, fwd_c + bwd_c + rc_c + tp_c + cp_c + z3_c)
    idle = max(0.0, pipe.makespan_s - pipe.busy_s[crit])
    pp_c = min(idle, 2 * (n_vs - 1) * p2p) if pp > 1 else 0.0
    time = TimeBreakdown(forward_s=fwd_c * scale, backward_s=bwd_c * scale, recompute_s=rc_c * scale,
                         optimizer_s=optimizer_s, tp_s=tp_c * scale, cp_s=cp_c * scale,
                         dp_s=z3_c * scale + dp_exposed, pp_s=pp_c, bubble_s=idle - pp_c)

    model_flops, hw_flops = step_flops(model, P.global_batch, s, P.recompute)
    world = P.world_size
    peak = rates.peak_flops
    tokens = P.global_batch * s
    peak_stage = max(per_stage, key=lambda x: x[2].total_bytes)
    peak_mem = peak_stage[2].total_bytes
    tasks = pipe.timeline.tasks if len(pipe.timeline.tasks) <= TIMELINE_TASK_LIMIT else ()
    return Prediction(
        step_time_s=step,
        tokens_per_s=tokens / step,
        tokens_per_s_per_gpu=tokens / step / world,
        model_tflops_per_gpu=model_flops / step / world / 1e12,
        hardware_tflops_per_gpu=hw_flops / step / world / 1e12,
        mfu=model_flops / step / world / peak,
        hfu=hw_flops / step / world / peak,
        peak_memory_bytes=peak_mem,
        fits=bool(peak_mem <= device.hbm_bytes),
        hbm_bytes=device.hbm_bytes,
        per_stage=tuple(StagePrediction(r, n, pipe.busy_s[r], mem.total_bytes, mem) for r, n, mem in per_stage),
        time=time,
        memory=peak_stage[2],
        timeline=tasks,
        timeline_micro_batches=pipe.timeline.num_micro_batches if tasks else 0,
        num_micro_batches=m,
        runtime=runtime,
    )


def cluster_for(hardware: str, n_nodes: int, gpus_per_node: int | None = None) -> ClusterSpec:
    """Homogeneous cluster of ``n_nodes`` of profile ``hardware`` (name or path), optionally
    with the node size overridden."""
    from planner.hardware import load_profile

    node = load_profile(hardware)
    if gpus_per_node is not None and gpus_per_node != node.gpus_per_node:
        node = node.with_gpus_per_node(gpus_per_node)
    return ClusterSpec.homogeneous(node, n_nodes)


def predict_plan(plan: Plan, runtime: Runtime = DEFAULT_RUNTIME) -> Prediction:
    """Predict a :class:`Plan`: loads ``plan.hardware`` with ``plan.gpus_per_node`` nodes; a plan
    on a heterogeneous cluster file goes to :func:`planner.hetero.predict_hetero_plan`."""
    from planner.cluster import is_cluster_file

    if is_cluster_file(plan.hardware):
        from planner.hetero import predict_hetero_plan

        return predict_hetero_plan(plan, runtime)
    return predict(plan.model, cluster_for(plan.hardware, plan.n_nodes, plan.gpus_per_node),
                   plan.parallel, runtime)


__all__ = ["Prediction", "StagePrediction", "TimeBreakdown", "predict", "predict_plan",
           "cluster_for", "lower_bound_step_time_s", "InputError"]
