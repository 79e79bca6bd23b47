"""The executor's step-level terms fitted to its reference steps: the pipelining runtime, the
in-step slowdowns and the concurrency of ranks sharing a host (:func:`planner.calibrate.executor_costs.build_framework`
calls them)."""
from __future__ import annotations

import dataclasses

import numpy as np

from planner.framework_spec import FrameworkSpec
from planner.hardware import NodeSpec


def reference_prediction(model, node: NodeSpec, parallel, ranks_busy: int | None = None) -> dict[str, float]:
    """Per-phase prediction (one micro-batch forward, backward, optimizer) of the reference
    step with ``node``'s framework terms, DP gradient all-reduce in backward (DDP hooks) and
    ZeRO-1's parameter broadcast in the optimizer, as the executor's phases fall.
    ``ranks_busy``: ranks computing at once on the host (default: the plan's ranks on it), e.g.
    2 for a one-rank plan run on both ranks at once."""
    from planner.cost.comm import collective_time
    from planner.cost.compute import make_rates
    from planner.cost.block import group_shape
    from planner.cost.memory import stage_parameters
    from planner.cost.optimizer import optimizer_s
    from planner.cost.framework import param_tensors
    from planner.cost.runtime import EXECUTOR_RUNTIME, effective_runtime
    from planner.cost.step import plan_sites, stage_times
    from planner.hardware import ClusterSpec

    P = parallel
    world = P.world_size
    runtime = effective_runtime(EXECUTOR_RUNTIME, node.device, min(node.gpus_per_node, world) if world > 1 else 0)
    busy = min(node.gpus_per_node, world) if ranks_busy is None else ranks_busy
    rates = make_rates(node.device, P.precision, busy, node.framework)
    cluster = ClusterSpec.homogeneous(node, 1)  # one node type: the layout comes from P
    st = stage_times(model, cluster, plan_sites(cluster, P), (runtime,), (rates,))
    fwd, bwd, opt = st.fwd_s[0], st.sched_b[0], optimizer_s(model, P, rates)
    if P.dp > 1 and P.sharding in ("none", "zero1") and P.tp == 1:
        g = group_shape(P, "dp", node.gpus_per_node)
        params = max(stage_parameters(model, P))
        bwd += collective_time("all_reduce", 4.0 * params, g, node)
        if node.framework is not None:
            bwd += rates.ops(1, node.framework.ddp_reducer_s(param_tensors(model, P), 4.0 * params))
        if P.sharding == "zero1":
            opt += collective_time("all_gather", 4.0 * params, g, node)
    return {"forward": fwd, "backward": bwd, "optimizer": opt}


def measured_step_memory(result: dict) -> int:
    """What the executor reports as a rank's peak on CPU: the allocator peak when measured."""
    return result.get("allocator_peak_bytes") or result["peak_minus_baseline_bytes"]


def wide_config(reference: dict, tp: int, dp: int, sharding: str = "none"):
    """The ParallelConfig of a reference-shape dict (``reference`` of a bench result): one
    micro-batch per rank, fp32."""
    from planner.plan import ParallelConfig

    b = reference["micro_batch"]
    return ParallelConfig(tp=tp, dp=dp, micro_batch=b, global_batch=b * dp, seq_len=reference["seq_len"],
                          precision="fp32", sharding=sharding)


def two_point_line(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float]:
    """(intercept, slope), both >= 0, of the line through (x1, y1) and (x2, y2), x1 < x2: where
    the exact line has a negative slope the data show no growth (intercept: the mean, slope 0);
    where it has a negative intercept, the least-squares line through the origin."""
    slope = (y2 - y1) / (x2 - x1)
    const = y1 - slope * x1
    if slope < 0:
        return max(0.0, 0.5 * (y1 + y2)), 0.0
    if const < 0:
        return 0.0, max(0.0, (x1 * y1 + x2 * y2) / (x1 * x1 + x2 * x2))
    return const, slope


def constant_and_per_byte(values: dict, prefix: str, narrow: tuple, wide: tuple) -> str:
    """Set ``values[prefix_{forward,backward}_s]`` and ``..._s_per_byte`` to the two-point line
    through the per-unit residuals of the narrow and the wide reference, each given as
    (bytes per unit, residual per phase, units); returns the fit in words."""
    words = []
    for ph in ("forward", "backward"):
        key = f"{prefix}_{ph}_s"
        (x1, r1, n1), (x2, r2, n2) = narrow, wide
        values[key], values[key + "_per_byte"] = two_point_line(x1, r1[ph] / n1, x2, r2[ph] / n2)
        words.append(f"{1e6 * values[key]:.0f} us + {1e6 * values[key + '_per_byte'] * 2**20:.0f} us/MiB {ph}")
    return ", ".join(words)


PIPELINE_1F1B_CASES = ("pp", "pp_wide")
"""The pp=2 1F1B reference steps (reference and wide shape) the pipelining runtime is fitted to."""


def fit_pipeline(refs: dict, node: NodeSpec, values: dict) -> list[str]:
    """Fit the executor's pipelining runtime (:func:`planner.cost.framework.pipeline_actions`)
    to the pp=2 reference steps, setting ``values``; returns the fit in words.

    The cost model's step is linear in the runtime's terms (makespan of fixed task orders),
    each slope from a trial value: with 1F1B steps at two shapes the per-action constant
    ``pp_action_s`` and the proportional ``pp_compute_slowdown`` are the non-negative least-squares
    solution (scipy ``nnls``; one shape: the constant alone); then the zero-bubble step's
    residual over its split backward's slope gives ``zb_split_slowdown``."""
    from scipy.optimize import nnls

    from planner.cost.step import predict
    from planner.hardware import ClusterSpec
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig

    fr = FrameworkSpec(**values)

    def step_s(case: str, **terms: float) -> float:
        par = ParallelConfig.from_dict(refs[case]["parallel"])
        n = dataclasses.replace(node, framework=dataclasses.replace(fr, **terms))
        model = ModelSpec.from_dict(refs[case]["model"])
        return predict(model, ClusterSpec.homogeneous(n.with_gpus_per_node(par.world_size), 1), par).step_time_s

    zero = {"pp_action_s": 0.0, "pp_compute_slowdown": 0.0, "zb_split_slowdown": 0.0}
    cases = [c for c in PIPELINE_1F1B_CASES if c in refs]
    rows, residuals, words = [], [], []
    for case in cases:
        p0 = step_s(case, **zero)
        per_action = (step_s(case, **{**zero, "pp_action_s": 1e-3}) - p0) / 1e-3
        per_slowdown = (step_s(case, **{**zero, "pp_compute_slowdown": 0.1}) - p0) / 0.1
        rows.append([per_action, per_slowdown if len(cases) > 1 else 0.0])
        residuals.append(refs[case]["step_s"] - p0)
        words.append(f"{case}: measured {refs[case]['step_s'] * 1e3:.2f} ms, cost model {p0 * 1e3:.2f} ms "
                     "without the pipelining runtime")
    (action_s, slowdown), _ = nnls(np.array(rows), np.array(residuals))
    values["pp_action_s"], values["pp_compute_slowdown"] = float(action_s), float(slowdown)
    lines = [f"pp=2 1F1B ({'; '.join(words)}): {1e6 * action_s:.0f} us per schedule action + "
             f"{100 * slowdown:.1f}% of its work"]
    if "pp_zb" in refs:
        fitted = {"pp_action_s": values["pp_action_s"], "pp_compute_slowdown": values["pp_compute_slowdown"]}
        p0 = step_s("pp_zb", **fitted, zb_split_slowdown=0.0)
        slope = (step_s("pp_zb", **fitted, zb_split_slowdown=0.1) - p0) / 0.1
        values["zb_split_slowdown"] = max(0.0, (refs["pp_zb"]["step_s"] - p0) / slope) if slope > 0 else 0.0
        lines.append(f"pp=2 zero bubble: measured {refs['pp_zb']['step_s'] * 1e3:.2f} ms, cost model "
                     f"{p0 * 1e3:.2f} ms with a fused backward's cost; split backward "
                     f"+{100 * values['zb_split_slowdown']:.1f}% of the fused one")
    return lines


CONCURRENCY_PAIRS = (("reference shape", "plain", "plain_both"),
                     ("wide shape", "plain_wide", "plain_wide_both"),
                     ("concurrency shape", "plain_alone_interleaved", "plain_concurrent"))
"""(label, alone case, at-once case) of the framework bench: the plain step on one rank and on
both ranks at once, at shapes whose GEMM share of the step differs (the first two measured in
the wrappers' interleaved rounds, the third in alternating blocks of its own)."""


CONCURRENCY_FIT_SCALE = 0.05
"""Residual scale of the concurrency fit's soft-L1 loss, in at-once / alone ratio: a pair off
by more than this (one block in a burst of outside load: x1.73 seen in a --quick run where the
other two pairs said x1.03 and x1.15) weighs linearly, not quadratically."""


STEP_SHAPES = tuple(alone for _, alone, _ in CONCURRENCY_PAIRS) + ("plain_llama",)
"""The plain one-rank reference steps the in-step slowdowns are fitted to: the GPT-style ones
of the concurrency pairs and a Llama-style one (its norms, activation, RoPE and GQA attention)."""


def fit_step_slowdowns(alone: list[dict], node: NodeSpec,
                        base: FrameworkSpec) -> tuple[FrameworkSpec, list[str]]:
    """``base`` with ``step_{forward,backward,optimizer}_slowdown``: per phase, the plain
    one-rank reference steps' measured time less the cost model's per-op costs, over the cost
    model's compute time of the same steps (summed over the shapes, so the largest weighs
    most), minus one; clipped to [0, 2] (a model that over-predicts keeps its rates). The
    per-op costs are measured inside autograd already and stay as they are."""
    from planner.model import ModelSpec

    phases = ("forward", "backward", "optimizer")
    no_ops = dataclasses.replace(base, op_forward_s=0.0, op_backward_s=0.0, op_optimizer_s=0.0)
    measured = dict.fromkeys(phases, 0.0)
    compute = dict.fromkeys(phases, 0.0)
    for case in alone:
        model = ModelSpec.from_dict(case["model"])
        cfg = wide_config(case["reference"], 1, 1)
        with_ops = reference_prediction(model, dataclasses.replace(node, framework=base).with_gpus_per_node(1), cfg)
        bare = reference_prediction(model, dataclasses.replace(node, framework=no_ops).with_gpus_per_node(1), cfg)
        for ph in phases:
            measured[ph] += case["median_s"][ph] - (with_ops[ph] - bare[ph])
            compute[ph] += bare[ph]
    slow = {ph: min(2.0, max(0.0, measured[ph] / compute[ph] - 1.0)) if compute[ph] > 0 else 0.0 for ph in phases}
    fitted = dataclasses.replace(base, **{f"step_{ph}_slowdown": slow[ph] for ph in phases})
    shapes = ", ".join(f"{c['model'].get('name', 'ref')} s={c['reference']['seq_len']} "
                       f"mb={c['reference']['micro_batch']}" for c in alone)
    lines = [f"in-step compute: the plain one-rank step ({shapes}) less its per-op costs over the cost model's "
             f"compute: forward x{1 + slow['forward']:.3f}, backward x{1 + slow['backward']:.3f}, optimizer "
             f"x{1 + slow['optimizer']:.3f} (step_*_slowdown)"]
    return fitted, lines


OVERSUBSCRIPTION_PAIR = ("plain_alone_interleaved", "plain_concurrent")
"""The framework bench's alone / at-once pair at the oversubscription bench's shape."""


def fit_oversubscription(over: dict, refs: dict, host_cores: float, base: FrameworkSpec) -> tuple[FrameworkSpec, list[str]]:
    """``base`` with ``oversubscribed_slowdown``: the plain step on ``over["ranks"]`` ranks at once
    over alone (the bench's own ranks, more than the host's cores), divided by the fair share
    ranks / cores and by the same shape's 2-rank at-once ratio (the framework bench's pair,
    what ``concurrent_*_slowdown`` already charge), minus one; clipped to [0, 2]."""
    phases = ("forward", "backward", "optimizer")
    alone, together = (refs.get(c) for c in OVERSUBSCRIPTION_PAIR)
    k = over["ranks"]
    if alone is None or together is None or not host_cores or k <= host_cores:
        return base, []

    def ratio(a: dict, t: dict) -> float:
        return sum(t["median_s"][ph] for ph in phases) / sum(a["median_s"][ph] for ph in phases)

    r_k, r_2 = ratio(over["alone"], over["together"]), ratio(alone, together)
    fair = k / host_cores
    value = min(2.0, max(0.0, r_k / (fair * r_2) - 1.0))
    line = (f"plain step on {k} ranks at once over alone on {host_cores:g} cores: x{r_k:.3f}, against a fair "
            f"share x{fair:.2f} times the 2-rank at-once x{r_2:.3f}: oversubscribing the host "
            f"{100 * value:.1f}% slower (oversubscribed_slowdown)")
    return dataclasses.replace(base, oversubscribed_slowdown=value), [line]


def fit_concurrency(pairs: list[tuple[str, dict, dict]], node: NodeSpec,
                     base: FrameworkSpec) -> tuple[FrameworkSpec, list[str]]:
    """``base`` with ``concurrent_gemm_slowdown`` and ``concurrent_slowdown`` fitted so that the
    cost model's step on two ranks at once over the same step on one rank matches each pair's
    measured ratio (bounded least squares with a soft-L1 loss, scipy; both in [0, 2]). With one
    pair only the non-GEMM slowdown is fitted (GEMMs unchanged). The ratio leaves out what the
    model misses of the one-rank step itself (the plain residual, charged to the wrappers apart)."""
    from scipy.optimize import least_squares

    from planner.model import ModelSpec

    phases = ("forward", "backward", "optimizer")
    rows = []
    for label, alone, together in pairs:
        model = ModelSpec.from_dict(alone["model"])
        cfg = wide_config(alone["reference"], 1, 1)
        solo_pred = sum(reference_prediction(
            model, dataclasses.replace(node, framework=base).with_gpus_per_node(1), cfg).values())
        ratio = sum(together["median_s"][ph] for ph in phases) / sum(alone["median_s"][ph] for ph in phases)
        rows.append((label, model, cfg, solo_pred, ratio, alone, together))

    def with_slowdowns(x) -> FrameworkSpec:
        gemm, other = (x[0], x[1]) if len(x) == 2 else (0.0, x[0])
        return dataclasses.replace(base, concurrent_gemm_slowdown=float(gemm), concurrent_slowdown=float(other))

    def at_once_ratios(x) -> list[float]:
        n = dataclasses.replace(node, framework=with_slowdowns(x)).with_gpus_per_node(2)
        return [sum(reference_prediction(model, n, cfg, ranks_busy=2).values()) / solo
                for _, model, cfg, solo, _, _, _ in rows]

    x0 = [0.05, 0.1] if len(rows) >= 2 else [0.1]
    fit = least_squares(lambda x: np.array(at_once_ratios(x)) - [r[4] for r in rows], x0,
                        bounds=(0.0, 2.0), method="trf", loss="soft_l1", f_scale=CONCURRENCY_FIT_SCALE)
    fitted = with_slowdowns(fit.x)
    predicted = at_once_ratios(fit.x)
    lines = []
    for (label, _, _, _, ratio, alone, together), pred in zip(rows, predicted):
        ref = alone["reference"]
        lines.append(f"plain step at {label} (h={ref['hidden_size']}, s={ref['seq_len']}, micro-batch "
                     f"{ref['micro_batch']}) alone / on both ranks at once: "
                     f"{1e3 * sum(alone['median_s'][ph] for ph in phases):.2f} / "
                     f"{1e3 * sum(together['median_s'][ph] for ph in phases):.2f} ms "
                     f"(x{ratio:.3f}, fitted model x{pred:.3f})")
    lines.append(f"ranks at once: GEMMs {100 * fitted.concurrent_gemm_slowdown:.1f}% slower "
                 f"(concurrent_gemm_slowdown), memory-bound and per-op work "
                 f"{100 * fitted.concurrent_slowdown:.1f}% slower (concurrent_slowdown)")
    return fitted, lines


def ep_dispatch_costs(rows: list[dict], node: NodeSpec, values: dict) -> list[str]:
    """Set ``values[ep_dispatch_*]`` from ``executor.bench.ep_dispatch`` rows (two token counts,
    two ranks): each phase's time less its two token all-to-alls as the profile prices them
    (:func:`planner.cost.comm.collective_time`, ``all_to_all`` over 2 ranks on one node), as a
    constant and a part per routed token copy; returns the fit in words ([] without rows)."""
    from planner.cost.comm import GroupShape, collective_time

    rows = sorted((r for r in rows if r.get("forward_s") and r.get("backward_s")), key=lambda r: r["tokens"])
    if len(rows) < 2:
        return []
    points = []
    for r in (rows[0], rows[-1]):
        a2a = 2 * collective_time("all_to_all", r["routed_bytes"], GroupShape(2, 2, 1), node)
        points.append((float(r["tokens"] * r["top_k"]), {ph: r[f"{ph}_s"] - a2a for ph in ("forward", "backward")}))
    words = []
    for ph in ("forward", "backward"):
        (x1, r1), (x2, r2) = points
        values[f"ep_dispatch_{ph}_s"], values[f"ep_dispatch_{ph}_s_per_token"] = two_point_line(x1, r1[ph], x2, r2[ph])
        words.append(f"{1e6 * values[f'ep_dispatch_{ph}_s']:.0f} us + "
                     f"{1e9 * values[f'ep_dispatch_{ph}_s_per_token']:.0f} us per 1000 routed tokens {ph}")
    fit = ", ".join(words)
    measured = "; ".join(f"{r['tokens'] * r['top_k']} routed tokens: fwd/bwd {r['forward_s'] * 1e3:.2f}/"
                         f"{r['backward_s'] * 1e3:.2f} ms" for r in (rows[0], rows[-1]))
    return [f"ep=2 dispatch + combine per MoE layer and micro-batch ({measured}); beyond the token "
            f"all-to-alls: {fit}"]


def moe_block_costs(rows: list[dict], node: NodeSpec, framework: FrameworkSpec, values: dict) -> list[str]:
    """Set ``values[moe_block_*]`` and ``values[moe_expert_*]`` from ``executor.bench.ep_dispatch``'s
    MoE block rows (one rank, every expert local, two expert counts): each phase's time less the
    cost model's price of the same block (:func:`planner.cost.compute.layer_times`: its GEMMs,
    element-wise work and counted ops with the per-op costs of ``framework``), as a constant per
    MoE block and a part per expert the rank holds; returns the fit in words ([] without rows)."""
    from planner.cost.compute import layer_times, make_rates
    from planner.cost.runtime import EXECUTOR_RUNTIME
    from planner.model import ModelSpec

    rows = sorted((r for r in rows if r.get("forward_s") and r.get("backward_s")), key=lambda r: r["experts"])
    if len(rows) < 2 or rows[0]["experts"] == rows[-1]["experts"]:
        return []
    rates = make_rates(node.device, "fp32", 1, framework)
    points = []
    for r in (rows[0], rows[-1]):
        lt = layer_times(ModelSpec.from_dict(r["model"]), r["micro_batch"], r["seq_len"], 1, 1, False, "none",
                         "fp32", rates, EXECUTOR_RUNTIME)
        priced = {"forward": lt.fwd_s, "backward": lt.bwd_input_s + lt.bwd_weight_s}
        points.append((float(r["experts"]), {ph: r[f"{ph}_s"] - priced[ph] for ph in priced}, priced))
    words = []
    for ph in ("forward", "backward"):
        (e1, r1, _), (e2, r2, _) = points
        values[f"moe_block_{ph}_s"], values[f"moe_expert_{ph}_s"] = two_point_line(e1, r1[ph], e2, r2[ph])
        words.append(f"{1e6 * values[f'moe_block_{ph}_s']:.0f} us + {1e6 * values[f'moe_expert_{ph}_s']:.0f} us "
                     f"per expert {ph}")
    measured = "; ".join(f"{r['experts']} experts: fwd/bwd {r['forward_s'] * 1e3:.2f}/{r['backward_s'] * 1e3:.2f} ms "
                         f"(priced {p['forward'] * 1e3:.2f}/{p['backward'] * 1e3:.2f})"
                         for r, (_, _, p) in zip((rows[0], rows[-1]), points))
    return [f"MoE block, every expert local ({measured}); beyond the cost model: {', '.join(words)}"]
