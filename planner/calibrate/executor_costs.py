"""The executor's building blocks -> :class:`planner.hardware.FrameworkSpec`: per-op costs,
element-wise and attention rates, TP / FSDP2 / ZeRO-1 / DDP terms, memory overheads, from the
framework benchmarks (``executor/bench/framework.py``)."""
from __future__ import annotations

import dataclasses

from planner.calibrate.executor_fits import (CONCURRENCY_PAIRS, STEP_SHAPES, constant_and_per_byte,
                                             ep_dispatch_costs, fit_concurrency, fit_oversubscription, fit_pipeline,
                                             fit_step_slowdowns, measured_step_memory, moe_block_costs,
                                             reference_prediction, two_point_line, wide_config)
from planner.cost.stacks import stack_for
from planner.errors import require
from planner.executor_rules import fsdp_units
from planner.framework_spec import FrameworkSpec
from planner.hardware import NodeSpec
from planner.units import GB


def elementwise_rates(rows: list[dict], per_op_s: dict[str, float]) -> tuple[tuple, list[str]]:
    """:attr:`FrameworkSpec.elementwise_rates` from ``executor.bench.elementwise`` rows and the
    per-op costs (``per_op_s["forward"]``, ``["backward"]``): each row's bytes (the cost model's
    count per element, :func:`planner.cost.framework.elementwise_bytes_per_element`, times its
    elements) over its time less its counted ops' per-op cost (the cost model charges that per
    op; at most 3/4 of the time is taken off, so a noisy small case cannot go to zero), kept at
    the size of one call (a row's ``elements`` over its ``calls``: the AdamW case steps many
    tensors of one size). The add
    has no backward kernel: its forward rate stands for the backward's gradient sums; the AdamW
    step (direction ``optimizer``, its per-op cost ``per_op_s["optimizer"]``) has one rate, kept
    as both. Returns (rates, header lines)."""
    from planner.cost.framework import elementwise_bytes_per_element

    rate: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in rows:
        bpe = 4 if row["dtype"] == "fp32" else 2
        fwd_bpe, bwd_bpe = elementwise_bytes_per_element(row["kind"], bpe)
        per_element = bwd_bpe if row["direction"] == "backward" else fwd_bpe
        data_s = max(0.25 * row["median_s"], row["median_s"] - row["ops"] * per_op_s[row["direction"]])
        key = (row["kind"], row["dtype"], row["elements"] / row.get("calls", 1) * fwd_bpe)  # one call's bytes
        stored = "backward" if row["direction"] == "backward" else "forward"  # optimizer: its one rate
        rate.setdefault(key, {})[stored] = per_element * row["elements"] / data_s
    by_kind: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for (kind, dtype, call_bytes), r in sorted(rate.items()):
        by_kind.setdefault((kind, dtype), []).append(
            (float(call_bytes), r["forward"], r.get("backward", r["forward"])))
    lines = []
    if by_kind:
        lines.append("element-wise rates of the executor's code, GB/s forward / backward over the "
                     "sizes of one call (executor/bench/elementwise.py; per-op costs taken off):")
        for (kind, dtype), pts in by_kind.items():
            lines.append(f"  {kind}/{dtype}: " + ", ".join(
                f"{b / 2**20:.2g} MiB {f / GB:.1f}/{w / GB:.1f}" for b, f, w in pts))
    return tuple((kind, dtype, tuple(pts)) for (kind, dtype), pts in by_kind.items()), lines


def attention_rates(rows: list[dict], per_op_s: dict[str, float]) -> tuple[tuple, list[str]]:
    """:attr:`FrameworkSpec.attention_rates` from ``executor.bench.attention`` rows and the
    per-op costs: each row's counted forward FLOPs (the cost model's ``4 b s^2 (heads d_head)``
    per call, :func:`planner.cost.flops.layer_forward_flops`, no causal discount) over its time
    less its counted ops' per-op cost (at most 3/4 of the time taken off), forward and backward
    alike, per kind and head width (``gqa_d32``), dtype and length. Returns (rates, header lines)."""
    rate: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in rows:
        data_s = max(0.25 * row["median_s"], row["median_s"] - row["ops"] * per_op_s[row["direction"]])
        flops = row["calls"] * 4.0 * row["batch"] * row["seq_len"] ** 2 * row["heads"] * row["d_head"]
        key = (f"{row['kind']}_d{row['d_head']}", row["dtype"], row["seq_len"])
        rate.setdefault(key, {})[row["direction"]] = flops / data_s
    by_kind: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for (kind, dtype, seq_len), r in sorted(rate.items()):
        if "forward" in r and "backward" in r:
            by_kind.setdefault((kind, dtype), []).append((float(seq_len), r["forward"], r["backward"]))
    lines = []
    if by_kind:
        lines.append("attention core (the executor's causal SDPA call), GFLOP/s forward / backward per counted "
                     "forward FLOP (4 b s^2 heads d_head; executor/bench/attention.py; per-op costs taken off):")
        for (kind, dtype), pts in by_kind.items():
            lines.append(f"  {kind}/{dtype}: " + ", ".join(f"s={s:.0f} {f / 1e9:.1f}/{w / 1e9:.1f}" for s, f, w in pts))
    return tuple((kind, dtype, tuple(pts)) for (kind, dtype), pts in by_kind.items()), lines


def build_framework(fw_results: dict, node: NodeSpec,
                    oversubscription: dict | None = None) -> tuple[FrameworkSpec, dict[str, str], list[str]]:
    """The profile's ``framework:`` section from ``executor.bench.framework`` results (and the
    main bench's ``oversubscription`` measurement, when its ranks outnumbered the cores).

    Per-op costs: phase time / dispatched aten ops at a degenerate shape (pooled over the GPT
    and Llama blocks). Wrapper costs: at the reference shape, the measured phase minus the cost
    model's prediction of the same step (with the per-op costs, the profile's collectives) minus
    the plain step's own residual (scaled to the rank's share of the work), divided by the units
    the executor runs: TP modules (linears, embedding, head) per micro-batch, FSDP2 units per
    micro-batch, parameter tensors per optimizer step (ZeRO-1: the whole step's residual). Memory: the peak the executor
    reports (CPU allocator peak live bytes; RSS high-water minus baseline for results without
    it) of real steps at two batch sizes against the cost model's tensor bytes: slope - 1 is the
    allocator / transient-tensor overhead, the intercept the per-process training overhead.
    Negative residuals (within noise) are clipped to 0. Returns (spec, comments, header lines)."""
    from planner.cost import framework as fw
    from planner.cost.memory import stage_memories
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig

    ops = fw_results["ops"]
    per_op = {}
    for phase in ("forward", "backward", "optimizer"):
        per_op[phase] = sum(o["median_s"][phase] for o in ops) / sum(o["ops"][phase] for o in ops)
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    ew_rates, ew_lines = elementwise_rates(fw_results.get("elementwise") or [], per_op)
    attn_rates, attn_lines = attention_rates(fw_results.get("attention") or [], per_op)
    ew_lines += attn_lines
    base = FrameworkSpec(**{**zero, "op_forward_s": per_op["forward"], "op_backward_s": per_op["backward"],
                            "op_optimizer_s": per_op["optimizer"]}, elementwise_rates=ew_rates,
                         attention_rates=attn_rates)
    refs = {r["case"]: r for r in fw_results["reference"] if r.get("median_s") or r.get("step_s")}
    require("plain" in refs, "results.framework.reference", "needs the plain reference step")
    plain = refs["plain"]
    model = ModelSpec.from_dict(plain["model"])
    ref = plain["reference"]
    b, s = ref["micro_batch"], ref["seq_len"]

    def config(tp: int, dp: int, sharding: str, sp: bool = False) -> ParallelConfig:
        return ParallelConfig(tp=tp, dp=dp, micro_batch=b, global_batch=b * dp, seq_len=s,
                              precision="fp32", sharding=sharding, sequence_parallel=sp)

    def predicted(case: str, fr: FrameworkSpec) -> dict[str, float]:
        tp, dp = (2, 1) if case in ("tp", "tp_sp") else ((1, 2) if case != "plain" else (1, 1))
        sharding = {"zero1": "zero1", "fsdp": "fsdp"}.get(case, "none")
        n = dataclasses.replace(node, framework=fr).with_gpus_per_node(tp * dp)
        return reference_prediction(model, n, config(tp, dp, sharding, sp=case == "tp_sp"))

    phases = ("forward", "backward", "optimizer")
    defaults: list[str] = []
    step_lines: list[str] = []
    alone = [refs[c] for c in STEP_SHAPES if c in refs and refs[c].get("median_s")]
    if alone:
        base, step_lines = fit_step_slowdowns(alone, node, base)
    else:
        defaults.append("step")
    pairs = [(label, refs[a], refs[t]) for label, a, t in CONCURRENCY_PAIRS if a in refs and t in refs]
    conc_lines: list[str] = []
    if pairs:
        base, conc_lines = fit_concurrency(pairs, node, base)
    if oversubscription:
        base, over_lines = fit_oversubscription(oversubscription, refs, node.device.host_cores, base)
        conc_lines += over_lines
    p_plain = predicted("plain", base)
    plain_res = {ph: plain["median_s"][ph] - p_plain[ph] for ph in phases}
    wide_res = None  # the same at the wide shape, for its TP, DDP and FSDP2 cases
    if "plain_wide" in refs:
        pw = refs["plain_wide"]
        wp = reference_prediction(ModelSpec.from_dict(pw["model"]),
                                   dataclasses.replace(node, framework=base).with_gpus_per_node(1),
                                   wide_config(pw["reference"], 1, 1))
        wide_res = {ph: pw["median_s"][ph] - wp[ph] for ph in phases}

    # a 2-rank case's framework costs are charged as rates.ops (x this while ranks run at
    # once), so its residual is divided by it before it is shared out per unit
    at_once = 1.0 + base.concurrent_slowdown

    def residual(case: str, share: float) -> dict[str, float]:
        pred = predicted(case, base)
        return {ph: (refs[case]["median_s"][ph] - pred[ph] - share * plain_res[ph]) / at_once for ph in phases}

    def wide_residual(case: str, tp: int, dp: int, share: float, sharding: str = "none"):
        """``case`` at the wide shape: its model, reference and per-phase residual beyond the
        cost model and ``share`` of the plain wide step's residual (not yet over ``at_once``)."""
        wm = ModelSpec.from_dict(refs[case]["model"])
        wr = refs[case]["reference"]
        pred = reference_prediction(wm, dataclasses.replace(node, framework=base).with_gpus_per_node(2),
                                    wide_config(wr, tp, dp, sharding))
        return wm, wr, {ph: refs[case]["median_s"][ph] - pred[ph] - share * wide_res[ph] for ph in phases}

    tensors = fw.model_param_tensors(model, False)
    ddp_line = None
    if "ddp" in refs:
        # DDP's reducer beyond its all-reduce (no TP/FSDP case uses DDP): per gradient byte,
        # and with the wider reference also per parameter tensor (the two-point line's
        # intercept over the same tensor count)
        from planner.cost.memory import stage_parameters

        res = sum(residual("ddp", 1.0).values())
        grad_bytes = 4.0 * max(stage_parameters(model, config(1, 2, "none")))
        wide_refs = ("ddp_wide" in refs and "plain_wide" in refs
                     and refs["ddp_wide"]["model"]["n_layers"] == model.n_layers)
        if wide_refs:
            wm, wr, wd = wide_residual("ddp_wide", 1, 2, 1.0)
            w_res = sum(wd.values()) / at_once
            w_grad = 4.0 * max(stage_parameters(wm, wide_config(wr, 1, 2)))
            const, slope = two_point_line(grad_bytes, res, w_grad, w_res)
            base = dataclasses.replace(base, ddp_param_s=const / tensors, ddp_grad_s_per_byte=slope)
            ddp_line = (f"ddp dp=2: residual of the step {res * 1e3:.2f} ms for {grad_bytes / 2**20:.2f} MiB of "
                        f"gradients, {w_res * 1e3:.2f} ms for {w_grad / 2**20:.2f} MiB at h={wm.hidden_size}: "
                        f"{1e6 * base.ddp_param_s:.0f} us per parameter tensor ({tensors}) + "
                        f"{1e6 * base.ddp_grad_s_per_byte * 2**20:.0f} us/MiB")
        else:
            base = dataclasses.replace(base, ddp_grad_s_per_byte=max(0.0, res) / grad_bytes)
            ddp_line = (f"ddp dp=2: residual of the step {res * 1e3:.2f} ms for {grad_bytes / 2**20:.2f} MiB of "
                        f"gradients: {1e6 * base.ddp_grad_s_per_byte * 2**20:.0f} us/MiB")
    else:
        defaults.append("ddp")
    values = dataclasses.asdict(base)
    lines = list(conc_lines) + ew_lines + step_lines
    if not pairs:
        defaults.append("concurrent")
    lines += [f"plain reference step: measured fwd/bwd/opt {plain['median_s']['forward'] * 1e3:.2f}/"
             f"{plain['median_s']['backward'] * 1e3:.2f}/{plain['median_s']['optimizer'] * 1e3:.2f} ms, "
             f"cost model {p_plain['forward'] * 1e3:.2f}/{p_plain['backward'] * 1e3:.2f}/"
             f"{p_plain['optimizer'] * 1e3:.2f} ms (residual subtracted from the wrapper cases)"]
    comments: dict[str, str] = {}
    L = model.n_layers
    if "tp" in refs:
        res = residual("tp", 0.5)
        linears = fw.tp_modules(model, L)
        values["tp_linear_forward_s"] = max(0.0, res["forward"]) / linears
        values["tp_linear_backward_s"] = max(0.0, res["backward"]) / linears
        values["tp_optimizer_param_s"] = max(0.0, res["optimizer"]) / tensors
        lines.append(f"tp=2: residual fwd/bwd/opt {res['forward'] * 1e3:.2f}/{res['backward'] * 1e3:.2f}/"
                     f"{res['optimizer'] * 1e3:.2f} ms over {linears} TP modules, {tensors} parameter tensors")
        if "tp_wide" in refs and "plain_wide" in refs:
            # the same at a wider shape: per TP module, constant + per-byte of its activation
            wm, wr, wt = wide_residual("tp_wide", 2, 1, 0.5)
            wres = {ph: wt[ph] / at_once for ph in phases}
            w_linears = fw.tp_modules(wm, wm.n_layers)
            x_ref = 4.0 * b * s * model.hidden_size
            x_wide = 4.0 * wr["micro_batch"] * wr["seq_len"] * wm.hidden_size
            fit = constant_and_per_byte(values, "tp_linear", (x_ref, res, linears), (x_wide, wres, w_linears))
            lines.append(f"tp=2 at h={wm.hidden_size}, s={wr['seq_len']}, micro-batch {wr['micro_batch']}: residual "
                         f"fwd/bwd {wres['forward'] * 1e3:.2f}/{wres['backward'] * 1e3:.2f} ms over {w_linears} "
                         f"TP modules; per module {fit} (activation {x_ref / 2**20:.2f} and {x_wide / 2**20:.2f} MiB)")
    else:
        defaults.append("tp")
    if "tp_sp" in refs and "tp" in refs:
        # sequence parallelism on top: what the TP+SP step costs beyond the TP modules, per block
        fr = FrameworkSpec(**values)
        pred = predicted("tp_sp", fr)
        res = {ph: (refs["tp_sp"]["median_s"][ph] - pred[ph] - 0.5 * plain_res[ph]) / at_once for ph in phases}
        values["sp_block_forward_s"] = max(0.0, res["forward"]) / L
        values["sp_block_backward_s"] = max(0.0, res["backward"]) / L
        lines.append(f"tp=2 + sp: residual beyond the TP modules fwd/bwd/opt {res['forward'] * 1e3:.2f}/"
                     f"{res['backward'] * 1e3:.2f}/{res['optimizer'] * 1e3:.2f} ms over {L} blocks")
    else:
        defaults.append("sp")
    if "fsdp" in refs:
        res = residual("fsdp", 1.0)
        units = fsdp_units(L, True, False)
        values["fsdp_unit_forward_s"] = max(0.0, res["forward"]) / units
        values["fsdp_unit_backward_s"] = max(0.0, res["backward"]) / units
        values["fsdp_optimizer_param_s"] = max(0.0, res["optimizer"]) / tensors
        lines.append(f"fsdp dp=2: residual fwd/bwd/opt {res['forward'] * 1e3:.2f}/{res['backward'] * 1e3:.2f}/"
                     f"{res['optimizer'] * 1e3:.2f} ms over {units} units, {tensors} parameter tensors")
        if "fsdp_wide" in refs and "plain_wide" in refs:
            # the same at the wider shape (same units, more bytes each): per unit, a constant
            # plus a part per byte of its parameters; the residual is units x constant +
            # slope x all parameter bytes, so the line runs through the per-unit means
            wm, wr, wf = wide_residual("fsdp_wide", 1, 2, 1.0, "fsdp")
            wres = {ph: wf[ph] / at_once for ph in phases}
            w_units = fsdp_units(wm.n_layers, True, False)
            x_ref = 4.0 * model.total_params() / units
            x_wide = 4.0 * wm.total_params() / w_units
            fit = constant_and_per_byte(values, "fsdp_unit", (x_ref, res, units), (x_wide, wres, w_units))
            lines.append(f"fsdp dp=2 at h={wm.hidden_size}: residual fwd/bwd {wres['forward'] * 1e3:.2f}/"
                         f"{wres['backward'] * 1e3:.2f} ms over {w_units} units; per unit {fit} "
                         f"(parameters {x_ref / 2**20:.2f} and {x_wide / 2**20:.2f} MiB per unit)")
    else:
        defaults.append("fsdp")
    if "zero1" in refs:
        res = residual("zero1", 1.0)
        total = sum(res.values())
        values["zero1_param_s"] = max(0.0, total) / tensors
        lines.append(f"zero1 dp=2: residual of the whole step {total * 1e3:.2f} ms over {tensors} parameter tensors")
    else:
        defaults.append("zero1")
    if ddp_line:
        lines.append(ddp_line)
    if "pp" in refs:
        lines += fit_pipeline(refs, node, values)
    else:
        defaults.append("pp")
    moe = moe_block_costs(fw_results.get("moe_block") or [], node, FrameworkSpec(**values), values)
    lines += moe
    if not moe:
        defaults.append("moe block")
    dispatch = ep_dispatch_costs(fw_results.get("ep_dispatch") or [], node, values)
    lines += dispatch
    if not dispatch:
        defaults.append("ep dispatch")
    # memory: fit RSS growth = (1 + frag) * tensors + overhead on the two batch sizes
    mem = sorted(fw_results.get("memory") or [], key=lambda m: m["micro_batch"])
    if len(mem) >= 2:
        no_mem = FrameworkSpec(**{**values, "fragmentation_fraction": 0.0, "training_overhead_bytes": 0.0})
        pts = []
        for m in mem:
            cfg = ParallelConfig(micro_batch=m["micro_batch"], global_batch=m["micro_batch"], seq_len=s,
                                 precision="fp32")
            (_, _, sm), = stage_memories(model, cfg, node.device, [1], "flash", stack=stack_for(no_mem))
            pts.append((sm.total_bytes, float(measured_step_memory(m))))
        (t1, m1), (t2, m2) = pts[0], pts[-1]
        slope = (m2 - m1) / (t2 - t1) if t2 > t1 else 1.0
        frag = min(0.9, max(0.0, slope - 1.0))
        values["fragmentation_fraction"] = frag
        values["training_overhead_bytes"] = max(0.0, m1 - (1.0 + frag) * t1)
        source = "CPU allocator peak" if all(m.get("allocator_peak_bytes") for m in mem) else "RSS high-water - baseline"
        lines.append(f"training-step memory ({source} vs the cost model's tensors): " + ", ".join(
            f"mb {m['micro_batch']}: {mm / 2**20:.1f} MiB for {t / 2**20:.1f} MiB" for m, (t, mm) in zip(mem, pts)))
    else:
        defaults.append("memory")
    spec = FrameworkSpec(**values)
    r = fw_results["reference"][0]["reference"]
    comments["framework"] = (f"executor building blocks; per-op costs at h=16, wrappers at h={r['hidden_size']}, "
                             f"{r['n_layers']} layers, s={r['seq_len']}, micro-batch {r['micro_batch']}"
                             + (f"; not measured (kept 0): {', '.join(defaults)}" if defaults else ""))
    counts = "; ".join(f"{o['style']}: " + ", ".join(f"{k} {o['ops'][k]} ops {o['median_s'][k] * 1e6 / o['ops'][k]:.2f} us"
                                                     for k in phases) for o in ops)
    comments["framework.op_forward_us"] = "per aten op under autograd, whole model at h=16 (" + counts + ")"
    comments["framework.tp_linear_forward_us"] = "TP=2 reference residual / TP modules (linears, embedding, head) per micro-batch (header)"
    comments["framework.ddp_grad_us_per_mib"] = "DDP dp=2 reference step residual per MiB of gradients (header)"
    comments["framework.ddp_param_us"] = ("per parameter tensor: the intercept of that residual at two widths "
                                          "(header)")
    comments["framework.pp_action_us"] = ("pp=2 1F1B reference steps at two shapes: residual per schedule "
                                          "action (intercept; header)")
    comments["framework.pp_compute_slowdown"] = "the same residual's part proportional to each action's work"
    comments["framework.zb_split_slowdown"] = ("pp=2 zero-bubble reference step: split backward over the fused "
                                               "one, minus one (header)")
    comments["framework.tp_linear_forward_us_per_mib"] = ("growth of that per MiB of the module's activation, "
                                                          "from the TP reference at two widths (header)")
    comments["framework.sp_block_forward_us"] = "TP=2+SP reference residual beyond the TP modules / blocks (header)"
    comments["framework.fsdp_unit_forward_us"] = "FSDP2 dp=2 reference residual / fully_shard units (header)"
    comments["framework.fsdp_unit_forward_us_per_mib"] = ("growth of that per MiB of the unit's parameters, from "
                                                          "the FSDP2 reference at two widths (header)")
    comments["framework.moe_block_forward_us"] = ("an executor MoE block beyond its priced work, one rank, every "
                                                  "expert local, 4 and 8 experts: per block (header)")
    comments["framework.moe_expert_forward_us"] = "the same per expert the rank holds"
    comments["framework.ep_dispatch_forward_us"] = ("ep=2 dispatch + combine per MoE layer and micro-batch beyond "
                                                    "its token all-to-alls, at two token counts (header)")
    comments["framework.zero1_param_us"] = "ZeRO-1 dp=2 reference step residual / parameter tensors (header)"
    comments["framework.fragmentation_fraction"] = ("slope - 1 of measured training-step memory vs the cost model's "
                                                    "tensor bytes at two batch sizes (header)")
    comments["framework.training_overhead_mib"] = "intercept of that fit (per-process training overhead)"
    comments["framework.concurrent_slowdown"] = ("memory-bound and per-op work on both ranks at once over alone, "
                                                 "minus one: fitted with concurrent_gemm_slowdown to the plain step alone / at "
                                                 "once at up to three shapes (shared caches, memory bandwidth; header)")
    comments["framework.concurrent_gemm_slowdown"] = "the same for the GEMMs' arithmetic (header)"
    comments["framework.oversubscribed_slowdown"] = ("the plain step on more ranks than cores at once over alone, "
                                                     "beyond the fair share and the 2-rank slowdowns, minus one (header)")
    comments["framework.step_forward_slowdown"] = ("the plain one-rank step's compute over the benches' rates, "
                                                   "minus one, per phase: forward, backward, optimizer (header)")
    return spec, comments, lines
