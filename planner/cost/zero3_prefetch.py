"""ZeRO-3 parameter gathers per tensor: DeepSpeed's 2021 stage-3 coordinator, simulated module by
module over one block's trace (:func:`per_tensor_prefetch_exposed`), and the tensor counts a
per-tensor gather pays latency for."""
from __future__ import annotations

from planner.cost.comm import GroupShape, collective_time
from planner.cost.precision import weight_bytes_per_param
from planner.cost.runtime import Runtime
from planner.hardware import NodeSpec
from planner.model import ModelSpec


def _attention_tensors(model: ModelSpec, tp: int) -> list[tuple[int, int, int]]:
    """(weight, bias, latent norm) elements of each attention projection on one tp rank
    (:meth:`planner.model.ModelSpec.attention_projections`; MLA's down projections end in the
    latents' RMSNorms)."""
    latent_norms = [model.q_lora_rank] if model.q_lora_rank else []
    latent_norms.append(model.kv_lora_rank)  # the down projections' norms, in order
    out = []
    for i, o, split in model.attention_projections():
        local = i * o // tp if split != "none" else i * o
        bias = o // tp if split == "column" else o
        out.append((local, bias, latent_norms.pop(0) if split == "none" else 0))
    return out


def block_modules(model: ModelSpec, tp: int, threshold: int) -> list[int]:
    """Gathered elements of each weight-bearing module of one block in execution order (QKV,
    output projection, per expert up (+gate) and down, MoE router): the weight plus its bias
    when that is above DeepSpeed's persistence threshold (smaller tensors stay resident)."""
    h = model.hidden_size
    experts = model.n_experts if model.is_moe else 1
    ffn = model.expert_ffn if model.is_moe else model.ffn_hidden_size
    up_out = (model.mlp_matrices - 1) * ffn // tp
    mods = [(w, b) for w, b, _ in _attention_tensors(model, tp)]
    mods += experts * [(h * up_out, up_out), ((ffn // tp) * h, h)]
    if model.is_moe:
        mods.append((h * model.n_experts, 0))
    if model.shared_expert_ffn_hidden_size:
        shared = model.shared_expert_ffn_hidden_size
        mods += [(h * ((model.mlp_matrices - 1) * shared // tp), 0), ((shared // tp) * h, h)]
    out = []
    for w, b in mods:
        n = (w if w > threshold else 0) + (b if (model.bias and b > threshold) else 0)
        out.append(n)
    return out




def per_tensor_prefetch_exposed(model: ModelSpec, node: NodeSpec, runtime: Runtime, lt, gemm_s: tuple[float, ...],
                                g: GroupShape, copies_s: float, *, tp: int, precision: str, recompute: str
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
    the element-wise remainder is spread evenly over the modules. ``lt``: the block's
    :class:`planner.cost.compute.LayerTimes`; ``gemm_s``: its projection GEMMs' forward times
    (:func:`planner.cost.compute.block_gemm_forward_times`)."""
    gemm = list(gemm_s)
    sizes = block_modules(model, tp, runtime.param_persistence_threshold)
    n = len(sizes)
    if not any(sizes):
        return 0.0, 0.0
    bpe_w = weight_bytes_per_param(precision)
    rest_f = max(0.0, lt.fwd_s - sum(gemm) - lt.core_fwd_s) / n
    rest_b = max(0.0, lt.bwd_s - 2 * sum(gemm) - lt.core_bwd_s) / n
    mp = runtime.multi_rail

    def gather_s(numel: int) -> float:
        return collective_time("all_gather", numel * bpe_w, g, node, mp) + copies_s

    def rs_s(numel: int) -> float:
        return collective_time("reduce_scatter", numel * bpe_w, g, node, mp) + copies_s

    fwd_c = [gemm[i] + rest_f + (lt.core_fwd_s if i == 0 else 0.0) for i in range(n)]
    bwd_c = [2 * gemm[i] + rest_b + (lt.core_bwd_s if i == min(1, n - 1) else 0.0) for i in range(n)]
    if recompute == "selective":
        bwd_c[min(1, n - 1)] += lt.recompute_s
    # trace steps: (module, compute seconds, reduce-scatter after it)
    fwd_trace = [(i, fwd_c[i], False) for i in range(n)]
    bwd_trace = []
    if recompute == "full":
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




def param_tensor_sizes(model: ModelSpec, tp: int) -> list[int]:
    """Elements of each parameter tensor of one block on one tp rank (fused QKV as Megatron
    stores it): what per-tensor ZeRO-3 gathers one by one."""
    h = model.hidden_size
    experts = model.n_experts if model.is_moe else 1
    ffn = model.expert_ffn if model.is_moe else model.ffn_hidden_size
    up_out = (model.mlp_matrices - 1) * ffn // tp
    attention = _attention_tensors(model, tp)
    sizes = [w for w, _, _ in attention] + [n for _, _, n in attention if n]
    sizes += experts * [h * up_out, (ffn // tp) * h]
    if model.bias:
        sizes += [b for _, b, _ in attention] + experts * [up_out, h]
    if model.is_moe:
        sizes.append(h * model.n_experts)
    if model.shared_expert_ffn_hidden_size:
        shared = model.shared_expert_ffn_hidden_size
        sizes += [h * ((model.mlp_matrices - 1) * shared // tp), (shared // tp) * h] + ([h] if model.shared_expert_gate else [])
    norm_tensors = 2 if model.norm == "layernorm" else 1
    sizes += model.norms_per_block * norm_tensors * [h]
    return sizes




def gathered_tensors_per_layer(model: ModelSpec, tp: int, runtime: Runtime) -> int:
    """Collectives per block and direction for ZeRO-3/FSDP: 1 flat parameter per block, or one
    per tensor above DeepSpeed's persistence threshold."""
    if runtime.gather_granularity != "per_tensor":
        return 1
    sizes = param_tensor_sizes(model, tp)
    return max(1, sum(1 for n in sizes if n > runtime.param_persistence_threshold))
