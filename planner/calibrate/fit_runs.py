"""Fitting a profile's physical parameters to measured runs (``clusterplan fit``): the runs of a
table from any framework (:mod:`planner.calibrate.runs_table`) or this project's run folders.

Time: bounded least squares on the relative step-time errors (scipy.optimize.least_squares
'trf') over the parameters the runs can identify: a parameter is fitted only if the step times
depend on it, it is not collinear with the ones already chosen (the design's rank, from the
Jacobian at the profile's values), and fewer time parameters than timed runs remain; the others
stay at the profile's values and the fit says why. Measured collective tables of groups wider
than every fitted run keep their calibrated values (the runs did not exercise them).
Uncertainty: the linearised covariance ``s^2 (J^T J)^-1`` at the solution, ``s^2`` the residual
variance with n - p degrees of freedom.
Memory: ``reading = factor[source] * predicted peak + offset`` by linear least squares on the
readings' relative errors, with fewer memory parameters than readings (else the offset is fixed
at 0, or the memory fit is refused) and the offset only where it lowers the leave-one-out error.
Leave-one-out errors for both.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from planner.calibrate.fit_memory import MemoryFit, fit_memory
from planner.calibrate.runs_table import MeasuredRun, run_folder_run
from planner.errors import InputError, require
from planner.hardware import ClusterSpec, LinkSpec, MeasuredCollective, NodeSpec
from planner.io import read_json_object
from planner.profile_write import profile_yaml

FIT_PARAMS = ("compute_scale", "fp8_compute_scale", "op_overhead_scale", "memory_bound_efficiency", "kernel_overhead_s",
              "pp_action_s", "intra_bandwidth_scale", "inter_bandwidth_scale", "latency_scale", "attention_scale")
"""Physical parameters, in the order they are tried: GEMM and attention rate (a scale of the
peak), FP8 GEMMs' rate apart (a further scale of the fp8 peak: FP8 GEMMs are kernels of their
own, which runs in fp8 identify and others leave), the framework's per-op CPU costs (a scale of the calibrated ones,
``FrameworkSpec.with_op_costs_scaled``; a profile without an executor framework has none, so the
fit leaves it), memory-bound efficiency, per-kernel overhead, the pipeline's cost per schedule
action (the framework's ``pp_action_s``), bandwidth of each link tier (within a node, between
nodes; a CPU profile's measured collectives are the within-node tier), latency, and the attention
kernels' rate apart from the GEMMs' (a scale of the profile's measured attention tables: its fused
kernels', or the executor's SDPA's; without tables the GEMM curve prices attention and this
parameter changes nothing, so the fit leaves it)."""
_LOG_PARAMS = {"compute_scale", "fp8_compute_scale", "op_overhead_scale", "latency_scale", "intra_bandwidth_scale",
               "inter_bandwidth_scale", "attention_scale"}
_BOUNDS = {"compute_scale": (0.2, 5.0), "fp8_compute_scale": (0.2, 5.0), "op_overhead_scale": (0.2, 5.0), "kernel_overhead_s": (0.0, 1e-3),
           "memory_bound_efficiency": (0.01, 1.0), "pp_action_s": (0.0, 0.05),
           "latency_scale": (0.05, 20.0), "intra_bandwidth_scale": (0.05, 20.0),
           "inter_bandwidth_scale": (0.05, 20.0), "attention_scale": (0.2, 5.0)}
_UNIT = {"kernel_overhead_s": 1e-6, "pp_action_s": 1e-4}  # optimise small times in us / 100 us (conditioning)
COLLINEAR_RATIO = 1e-3
"""A parameter joins the fit only if the smallest singular value of the column-normalised
Jacobian with it stays above this fraction of the largest (Golub & Van Loan, numerical rank)."""


def base_params(node: NodeSpec) -> dict[str, float]:
    """The parameter values of ``node`` itself (scales 1)."""
    return {"compute_scale": 1.0, "fp8_compute_scale": 1.0, "kernel_overhead_s": node.device.kernel_overhead_s,
            "memory_bound_efficiency": node.device.memory_bound_efficiency,
            "latency_scale": 1.0, "intra_bandwidth_scale": 1.0, "inter_bandwidth_scale": 1.0,
            "attention_scale": 1.0, "op_overhead_scale": 1.0,
            "pp_action_s": node.framework.pp_action_s if node.framework is not None else 0.0}


def apply_params(node: NodeSpec, params: dict[str, float]) -> NodeSpec:
    """A copy of ``node`` with the given physical parameters (missing ones unchanged);
    frozen specs are copied with ``dataclasses.replace``."""
    unknown = sorted(set(params) - set(FIT_PARAMS))
    require(not unknown, "params", f"unknown parameter {unknown[:1]} (allowed: {', '.join(FIT_PARAMS)})")
    p = {**base_params(node), **params}
    d = node.device
    device = dataclasses.replace(
        d,
        peak_flops_per_s=tuple((dt, f * p["compute_scale"] * (p["fp8_compute_scale"] if dt == "fp8" else 1.0))
                               for dt, f in d.peak_flops_per_s),
        kernel_overhead_s=p["kernel_overhead_s"],
        memory_bound_efficiency=min(1.0, p["memory_bound_efficiency"]),
        attention_kernels=tuple(k.scaled(p["attention_scale"]) for k in d.attention_kernels),
    )
    framework = node.framework
    if framework is not None and p["attention_scale"] != 1.0:
        framework = framework.with_attention_scaled(p["attention_scale"])
    if framework is not None and p["op_overhead_scale"] != 1.0:
        framework = framework.with_op_costs_scaled(p["op_overhead_scale"])
    if framework is not None and p["pp_action_s"] != framework.pp_action_s:
        framework = dataclasses.replace(framework, pp_action_s=max(0.0, p["pp_action_s"]))
    ls = p["latency_scale"]

    def link(l: LinkSpec, bs: float) -> LinkSpec:
        return dataclasses.replace(l, latency_s=l.latency_s * ls, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * bs)

    bs = p["intra_bandwidth_scale"]

    def scaled(c: MeasuredCollective) -> MeasuredCollective:
        # each measured time: its latency part scaled by ls, the rest by 1/scale of its link
        scale = p["inter_bandwidth_scale"] if c.ranks_per_node else bs
        table = tuple((b, ls * min(t, c.latency_s) + max(0.0, t - c.latency_s) / scale) for b, t in c.times_s)
        return dataclasses.replace(c, latency_s=c.latency_s * ls, times_s=table,
                                   bus_bandwidth_bytes_per_s=c.bus_bandwidth_bytes_per_s * scale)

    colls = tuple(scaled(c) for c in node.collectives)
    return dataclasses.replace(node, device=device, intra_node=link(node.intra_node, bs),
                               inter_node=link(node.inter_node, p["inter_bandwidth_scale"]), collectives=colls,
                               framework=framework)


def find_plan(run_dir: str | os.PathLike, summary: dict, extra_plans: Iterable[str | os.PathLike] = ()):
    """The Plan of a run: ``RUN_DIR/plan.json``, a ``plan`` object inside summary.json, a plan file
    named on the launcher's command line, or one of ``extra_plans`` whose id matches."""
    from planner.plan import Plan

    run_dir = Path(run_dir)
    want = summary.get("plan_id")
    candidates: list[Any] = []
    if (run_dir / "plan.json").exists():
        candidates.append(run_dir / "plan.json")
    if isinstance(summary.get("plan"), dict):
        candidates.append(summary["plan"])
    for arg in (summary.get("launcher") or {}).get("command") or []:
        if isinstance(arg, str) and arg.endswith(".json") and Path(arg).exists():
            candidates.append(Path(arg))
    candidates += [Path(p) for p in extra_plans]
    for cand in candidates:
        try:
            plan = Plan.from_dict(cand) if isinstance(cand, dict) else Plan.load(cand)
        except InputError:
            continue
        if not want or plan.id == want:
            return plan
    raise InputError("run_dir", f"{run_dir}: no plan with id {want} (looked for plan.json, summary.plan, "
                                f"the launcher's plan file{', --plan files' if extra_plans else ''})")


def load_measured_runs(run_dirs: Iterable[str | os.PathLike], extra_plans: Iterable[str | os.PathLike] = (),
                       statuses: tuple[str, ...] = ("ok",)) -> tuple[list[MeasuredRun], list[str]]:
    """Run folders as rows of the measured-runs table (a status in ``statuses``, a measured step
    time, a plan), and the skipped ones with the reason. ``contended`` runs (a rank waited for a
    CPU) are left out unless asked for: more ranks than cores flag every run of a plan so."""
    runs, skipped = [], []
    extra_plans = list(extra_plans)
    for d in run_dirs:
        if not (Path(d) / "summary.json").is_file():  # e.g. runs/demo among runs/*: not a run folder
            skipped.append(f"{d}: not a run folder (no summary.json)")
            continue
        summary = read_json_object(Path(d) / "summary.json", "run_dir", f"{d} has no summary.json")
        if summary.get("status") not in statuses:
            skipped.append(f"{d}: status {summary.get('status')}")
            continue
        run = run_folder_run(d, find_plan(d, summary, extra_plans), statuses)
        if isinstance(run, str):
            skipped.append(run)
        else:
            runs.append(run)
    return runs, skipped


def predict_run(run: MeasuredRun, node: NodeSpec, runtime=None):
    """The cost model's prediction of ``run``'s plan on ``node`` (its node count and size), under
    the run's own runtime where its row names one, else ``runtime``."""
    from planner.cost.runtime import get_runtime
    from planner.cost.step import predict

    plan = run.plan
    cluster = ClusterSpec.homogeneous(node.with_gpus_per_node(plan.gpus_per_node), plan.n_nodes)
    return predict(plan.model, cluster, plan.parallel, get_runtime(run.runtime) if run.runtime else runtime,
                   timeline=False)


def predict_step_time(plan, node: NodeSpec, runtime=None) -> float:
    """Step time of ``plan`` on ``node`` (the plan's node count and ranks per node)."""
    return predict_run(MeasuredRun("", plan, 1.0), node, runtime).step_time_s


def _to_x(name: str, value: float) -> float:
    return math.log(value) if name in _LOG_PARAMS else value / _UNIT.get(name, 1.0)


def _from_x(name: str, x: float) -> float:
    return math.exp(x) if name in _LOG_PARAMS else x * _UNIT.get(name, 1.0)


def _residuals(runs: list[MeasuredRun], base: NodeSpec, names: tuple[str, ...], x, runtime) -> np.ndarray:
    node = apply_params(base, {n: _from_x(n, v) for n, v in zip(names, x)})
    return np.array([predict_run(r, node, runtime).step_time_s / r.measured_step_time_s - 1.0 for r in runs])


def _jacobian(runs, base, names, x, runtime, step: float = 1e-3) -> np.ndarray:
    """d(relative residual)/dx by central differences (x: log scales, microseconds, fractions)."""
    cols = []
    for i in range(len(names)):
        up, down = np.array(x, dtype=float), np.array(x, dtype=float)
        up[i] += step
        down[i] -= step
        cols.append((_residuals(runs, base, names, up, runtime) - _residuals(runs, base, names, down, runtime))
                    / (2 * step))
    return np.array(cols).T if cols else np.zeros((len(runs), 0))


def choose_params(runs: list[MeasuredRun], base: NodeSpec, requested: Iterable[str] = FIT_PARAMS,
                  runtime=None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The requested parameters the runs can identify, in order, and why each other one stays
    at the profile's value: the step times do not depend on it, it is collinear with the chosen
    ones (numerical rank, :data:`COLLINEAR_RATIO`), or there must be fewer time parameters than
    timed runs."""
    requested = tuple(requested)
    x0 = [_to_x(n, base_params(base)[n]) for n in requested]
    J = _jacobian(runs, base, requested, x0, runtime)
    chosen: list[int] = []
    fixed: dict[str, str] = {}
    for i, name in enumerate(requested):
        col = J[:, i]
        if not np.all(np.isfinite(col)) or np.linalg.norm(col) < 1e-6:
            fixed[name] = "the step times do not depend on it"
            continue
        if len(chosen) + 1 >= len(runs):
            fixed[name] = f"{len(runs)} timed run(s) identify at most {max(0, len(runs) - 1)} parameter(s)"
            continue
        trial = J[:, chosen + [i]]
        trial = trial / np.linalg.norm(trial, axis=0)
        sv = np.linalg.svd(trial, compute_uv=False)
        if sv[-1] < COLLINEAR_RATIO * sv[0]:
            fixed[name] = ("not separable from " + ", ".join(requested[j] for j in chosen)
                           + " by these runs (collinear)")
            continue
        chosen.append(i)
    return tuple(requested[i] for i in chosen), fixed


def _solve(runs, base, names, runtime):
    from scipy.optimize import least_squares

    start = base_params(base)
    lo = np.array([_to_x(n, _BOUNDS[n][0]) for n in names])
    hi = np.array([_to_x(n, _BOUNDS[n][1]) for n in names])
    x0 = np.clip(np.array([_to_x(n, start[n]) for n in names]), lo + 1e-9, hi - 1e-9)
    res = least_squares(lambda x: _residuals(runs, base, names, x, runtime), x0, bounds=(lo, hi), method="trf",
                        diff_step=1e-4, xtol=1e-10, ftol=1e-12, gtol=1e-12, max_nfev=200 * (len(names) + 1))
    fitted = {n: float(_from_x(n, float(v))) for n, v in zip(names, res.x)}
    return fitted, bool(res.success), str(res.message), res


WEAK_RELATIVE_SD = 0.5
"""A fitted value whose standard deviation exceeds this share of it is not determined by the runs."""


def _weakness(name: str, value: float, sd: float | None) -> str:
    """Why a fitted value is not determined by the runs ("" when it is)."""
    lo, hi = _BOUNDS[name]
    edge = 1e-6 * (hi - lo)  # a bound of 0 is reached only to within the solver's step
    if value <= lo + edge or value >= hi - edge:
        return f"not determined by these runs (the fit ran to its bound, {value:.3g})"
    if sd is not None and sd > WEAK_RELATIVE_SD * abs(value):
        return f"not determined by these runs (fitted {value:.3g} +/- {sd:.2g})"
    return ""


def _uncertainty(names, res, n_runs: int) -> dict[str, float | None]:
    """One standard deviation of each fitted value (natural units) from the linearised
    covariance at the solution; None without residual degrees of freedom."""
    p = len(names)
    if n_runs <= p:
        return {n: None for n in names}
    s2 = float(np.sum(res.fun ** 2)) / (n_runs - p)
    cov = s2 * np.linalg.pinv(res.jac.T @ res.jac)
    out = {}
    for i, n in enumerate(names):
        sx = math.sqrt(max(0.0, float(cov[i, i])))
        value = _from_x(n, float(res.x[i]))
        out[n] = value * sx if n in _LOG_PARAMS else sx * _UNIT.get(n, 1.0)
    return out


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters (with one standard deviation), those left at the profile's values and
    why, the fitted profile, and per run the error (percent, (pred - meas) / meas) before, after
    and left out."""

    params: dict[str, float]
    initial: dict[str, float]
    uncertainty: dict[str, float | None]
    fixed: dict[str, str]
    node: NodeSpec
    run_names: tuple[str, ...]
    errors_before_pct: tuple[float, ...]
    errors_after_pct: tuple[float, ...]
    loo_errors_pct: tuple[float | None, ...]
    success: bool
    message: str
    skipped: tuple[str, ...] = ()
    memory: MemoryFit | None = None

    @staticmethod
    def _stats(errs) -> dict:
        vals = [abs(e) for e in errs if e is not None]
        return {"median_abs_error_pct": statistics.median(vals) if vals else None,
                "mean_abs_error_pct": statistics.fmean(vals) if vals else None,
                "max_abs_error_pct": max(vals) if vals else None}

    def parameter_lines(self) -> list[str]:
        """One Markdown bullet per parameter: fitted (start -> value +/- one sd) or kept (why)."""
        lines = [f"- {k}: {self.initial[k]:.4g} -> {v:.4g}"
                 + ("" if self.uncertainty.get(k) is None else f" +/- {self.uncertainty[k]:.2g}")
                 for k, v in self.params.items()]
        return lines + [f"- {k}: kept ({why})" for k, why in self.fixed.items()]

    def to_dict(self) -> dict:
        mem = None
        if self.memory is not None:
            mem = {"factors": self.memory.factors, "offset_bytes": self.memory.offset_bytes, "note": self.memory.note,
                   "in_sample": self._stats(self.memory.errors_pct),
                   "leave_one_out": self._stats(self.memory.loo_errors_pct)}
        return {
            "params": self.params, "initial": self.initial, "uncertainty": self.uncertainty, "fixed": self.fixed,
            "success": self.success, "message": self.message,
            "runs": [{"run": r, "error_before_pct": b, "error_after_pct": a, "loo_error_pct": l}
                     for r, b, a, l in zip(self.run_names, self.errors_before_pct, self.errors_after_pct,
                                           self.loo_errors_pct)],
            "before": self._stats(self.errors_before_pct), "in_sample": self._stats(self.errors_after_pct),
            "leave_one_out": self._stats(self.loo_errors_pct), "skipped": list(self.skipped), "memory": mem,
        }


def fit_profile(runs: list[MeasuredRun], base: NodeSpec, *, params: Iterable[str] = FIT_PARAMS,
                loo: bool = True, skipped: Iterable[str] = (), runtime=None) -> FitResult:
    """Fit the identifiable physical parameters of ``base`` to the runs' step times (and the
    memory relation to their readings), with leave-one-out errors (module docstring)."""
    names = tuple(params)
    for n in names:
        require(n in FIT_PARAMS, "params", f"unknown parameter {n!r} (allowed: {', '.join(FIT_PARAMS)})")
    require(len(names) >= 1, "params", "name at least one parameter")
    require(len(runs) >= 2, "runs", f"{len(runs)} usable run(s): a fit needs at least 2 (fewer parameters than runs)")
    # measured collective tables of groups wider than any fitted run say nothing the runs saw:
    # they keep their calibrated values (a latency fitted on 2-rank groups is not a 4-rank one's)
    widest = max(r.plan.world_size for r in runs)
    unseen = tuple(c for c in base.collectives if c.group_size > widest)
    base = dataclasses.replace(base, collectives=tuple(c for c in base.collectives if c.group_size <= widest))
    chosen, fixed = choose_params(runs, base, names, runtime)
    require(bool(chosen), "params", "no parameter can be identified from these runs ("
            + "; ".join(f"{k}: {v}" for k, v in fixed.items()) + ")")
    while True:  # drop what the fit cannot pin down (wide uncertainty or stuck at a bound), refit
        fitted, ok, msg, res = _solve(runs, base, chosen, runtime)
        sd = _uncertainty(chosen, res, len(runs))
        weak = {n: _weakness(n, fitted[n], sd[n]) for n in chosen}
        weak = {n: w for n, w in weak.items() if w}
        if not weak or len(chosen) == 1:
            break
        worst = max(weak, key=lambda n: (sd[n] or 0.0) / max(abs(fitted[n]), 1e-30))
        fixed[worst] = weak[worst]
        chosen = tuple(n for n in chosen if n != worst)
    node = apply_params(base, fitted)
    before = tuple(100.0 * (predict_run(r, base, runtime).step_time_s / r.measured_step_time_s - 1) for r in runs)
    preds = [predict_run(r, node, runtime) for r in runs]
    after = tuple(100.0 * (p.step_time_s / r.measured_step_time_s - 1) for p, r in zip(preds, runs))
    loo_errs: list[float | None] = []
    for i, r in enumerate(runs):
        rest = runs[:i] + runs[i + 1:]
        if not loo or len(rest) <= len(chosen):
            loo_errs.append(None)
            continue
        p_i, _, _, _ = _solve(rest, base, chosen, runtime)
        loo_errs.append(100.0 * (predict_run(r, apply_params(base, p_i), runtime).step_time_s
                                 / r.measured_step_time_s - 1))
    memory = fit_memory(runs, [p.peak_memory_bytes for p in preds])
    if memory is not None and memory.factors:
        node = dataclasses.replace(node, memory_sources=tuple(
            (s, f, memory.offset_bytes) for s, f in memory.factors.items()))
    node = dataclasses.replace(node, collectives=node.collectives + unseen)
    initial = {n: base_params(base)[n] for n in chosen}
    return FitResult(params=fitted, initial=initial, uncertainty=_uncertainty(chosen, res, len(runs)), fixed=fixed,
                     node=node, run_names=tuple(r.name for r in runs), errors_before_pct=before,
                     errors_after_pct=after, loo_errors_pct=tuple(loo_errs), success=ok, message=msg,
                     skipped=tuple(skipped), memory=memory)


def fitted_profile_yaml(result: FitResult, *, base_source: str, name: str | None = None,
                        runs_source: str = "") -> str:
    """The fitted profile in the profile schema; its header and ``measured_on`` name the runs it
    came from, the fitted values with their uncertainty and the errors."""
    names = ", ".join(Path(r).name for r in result.run_names)
    provenance = (f"clusterplan fit of {base_source} to {len(result.run_names)} measured run(s)"
                  + (f" of {runs_source}" if runs_source else "") + f": {names}")
    node = dataclasses.replace(result.node, name=name or result.node.name, measured_on=provenance)
    d = result.to_dict()

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    def sd(k):
        u = result.uncertainty.get(k)
        return "" if u is None else f" +/- {u:.3g}"

    header = [
        f"Fitted by `clusterplan fit` from {base_source} on {len(result.run_names)} measured run(s)"
        + (f" ({runs_source})" if runs_source else "") + ".",
        "Fitted (scipy.optimize.least_squares, bounded, on relative step-time errors; +/- one standard deviation):",
        *[f"  {k}: {result.initial.get(k)} -> {v:.6g}{sd(k)}" for k, v in result.params.items()],
        *[f"  {k}: kept at the profile's value ({why})" for k, why in result.fixed.items()],
        f"step time |error| mean: before {pct(d['before']['mean_abs_error_pct'])}, in-sample "
        f"{pct(d['in_sample']['mean_abs_error_pct'])} (max {pct(d['in_sample']['max_abs_error_pct'])}), "
        f"leave-one-out {pct(d['leave_one_out']['mean_abs_error_pct'])} "
        f"(max {pct(d['leave_one_out']['max_abs_error_pct'])})",
    ]
    if d["memory"] is not None:
        m = d["memory"]
        header.append(f"memory: {m['note'] or 'factor per source and a shared offset'}; in-sample mean |error| "
                      f"{pct(m['in_sample']['mean_abs_error_pct'])}, leave-one-out "
                      f"{pct(m['leave_one_out']['mean_abs_error_pct'])}")
    header.append("Runs: " + names)
    return profile_yaml(node, header=header)
