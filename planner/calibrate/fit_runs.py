"""Fitting a profile's physical parameters to this project's measured runs (``clusterplan fit``):
least squares over the run folders, leave-one-out error per run."""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from planner.errors import InputError, require
from planner.hardware import LinkSpec, NodeSpec
from planner.io import read_json_object
from planner.profile_yaml import profile_yaml


FIT_PARAMS = ("compute_scale", "kernel_overhead_s", "memory_bound_efficiency", "latency_scale",
              "bandwidth_scale")
_LOG_PARAMS = {"compute_scale", "latency_scale", "bandwidth_scale"}
_BOUNDS = {"compute_scale": (0.2, 5.0), "kernel_overhead_s": (0.0, 1e-3), "memory_bound_efficiency": (0.01, 1.0),
           "latency_scale": (0.05, 20.0), "bandwidth_scale": (0.05, 20.0)}
_UNIT = {"kernel_overhead_s": 1e-6}  # optimise the overhead in microseconds (conditioning)


def base_params(node: NodeSpec) -> dict[str, float]:
    """The parameter values of ``node`` itself (scales 1)."""
    return {"compute_scale": 1.0, "kernel_overhead_s": node.device.kernel_overhead_s,
            "memory_bound_efficiency": node.device.memory_bound_efficiency,
            "latency_scale": 1.0, "bandwidth_scale": 1.0}


def apply_params(node: NodeSpec, params: dict[str, float]) -> NodeSpec:
    """A copy of ``node`` with the given physical parameters (missing ones unchanged);
    frozen specs are copied with ``dataclasses.replace``."""
    unknown = sorted(set(params) - set(FIT_PARAMS))
    require(not unknown, "params", f"unknown parameter {unknown[:1]} (allowed: {', '.join(FIT_PARAMS)})")
    p = {**base_params(node), **params}
    d = node.device
    device = dataclasses.replace(
        d,
        peak_flops_per_s=tuple((dt, f * p["compute_scale"]) for dt, f in d.peak_flops_per_s),
        kernel_overhead_s=p["kernel_overhead_s"],
        memory_bound_efficiency=min(1.0, p["memory_bound_efficiency"]),
    )
    ls, bs = p["latency_scale"], p["bandwidth_scale"]

    def link(l: LinkSpec) -> LinkSpec:
        return dataclasses.replace(l, latency_s=l.latency_s * ls, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * bs)

    def table(c) -> tuple[tuple[float, float], ...]:
        # each measured time: its latency part scaled by ls, the rest by 1/bs
        return tuple((b, ls * min(t, c.latency_s) + max(0.0, t - c.latency_s) / bs) for b, t in c.times_s)

    colls = tuple(dataclasses.replace(c, latency_s=c.latency_s * ls,
                                      bus_bandwidth_bytes_per_s=c.bus_bandwidth_bytes_per_s * bs,
                                      times_s=table(c))
                  for c in node.collectives)
    return dataclasses.replace(node, device=device, intra_node=link(node.intra_node),
                               inter_node=link(node.inter_node), collectives=colls)


@dataclass(frozen=True)
class MeasuredRun:
    """A plan and its measured median step time (seconds)."""

    run_dir: str
    plan: Any  # planner.plan.Plan
    measured_step_time_s: float


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


def load_measured_runs(run_dirs: Iterable[str | os.PathLike],
                       extra_plans: Iterable[str | os.PathLike] = ()) -> tuple[list[MeasuredRun], list[str]]:
    """Runs usable for fitting (status ok, a measured step time, a plan), and the skipped ones
    with the reason."""
    runs, skipped = [], []
    extra_plans = list(extra_plans)
    for d in run_dirs:
        summary = read_json_object(Path(d) / "summary.json", "run_dir", f"{d} has no summary.json")
        status = summary.get("status")
        step = (summary.get("measured") or {}).get("step_time_s")
        if status != "ok" or not isinstance(step, (int, float)) or step <= 0:
            skipped.append(f"{d}: status {status}, measured step time {step}")
            continue
        runs.append(MeasuredRun(str(d), find_plan(d, summary, extra_plans), float(step)))
    return runs, skipped


def predict_step_time(plan, node: NodeSpec) -> float:
    """Step time of ``plan`` on ``node`` (the plan's node count and ranks per node)."""
    from planner.cost.step import predict
    from planner.hardware import ClusterSpec

    cluster = ClusterSpec.homogeneous(node.with_gpus_per_node(plan.gpus_per_node), plan.n_nodes)
    return predict(plan.model, cluster, plan.parallel).step_time_s


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters, the fitted profile and its errors (percent, (pred - meas) / meas)."""

    params: dict[str, float]
    initial: dict[str, float]
    node: NodeSpec
    run_dirs: tuple[str, ...]
    errors_before_pct: tuple[float, ...]
    errors_after_pct: tuple[float, ...]
    loo_errors_pct: tuple[float | None, ...]
    success: bool
    message: str
    skipped: tuple[str, ...] = ()

    @staticmethod
    def _stats(errs) -> dict:
        vals = [abs(e) for e in errs if e is not None]
        return {"median_abs_error_pct": statistics.median(vals) if vals else None,
                "max_abs_error_pct": max(vals) if vals else None}

    def to_dict(self) -> dict:
        return {
            "params": self.params, "initial": self.initial, "success": self.success, "message": self.message,
            "runs": [{"run_dir": r, "error_before_pct": b, "error_after_pct": a, "loo_error_pct": l}
                     for r, b, a, l in zip(self.run_dirs, self.errors_before_pct, self.errors_after_pct,
                                           self.loo_errors_pct)],
            "before": self._stats(self.errors_before_pct), "in_sample": self._stats(self.errors_after_pct),
            "leave_one_out": self._stats(self.loo_errors_pct), "skipped": list(self.skipped),
        }


def _to_x(name: str, value: float) -> float:
    return math.log(value) if name in _LOG_PARAMS else value / _UNIT.get(name, 1.0)


def _from_x(name: str, x: float) -> float:
    return math.exp(x) if name in _LOG_PARAMS else x * _UNIT.get(name, 1.0)


def _solve(runs: list[MeasuredRun], base: NodeSpec, names: tuple[str, ...]):
    from scipy.optimize import least_squares

    start = base_params(base)
    lo = np.array([_to_x(n, max(_BOUNDS[n][0], 1e-12) if n in _LOG_PARAMS else _BOUNDS[n][0]) for n in names])
    hi = np.array([_to_x(n, _BOUNDS[n][1]) for n in names])
    x0 = np.clip(np.array([_to_x(n, start[n]) for n in names]), lo + 1e-9, hi - 1e-9)

    def residuals(x):
        node = apply_params(base, {n: _from_x(n, v) for n, v in zip(names, x)})
        return np.array([predict_step_time(r.plan, node) / r.measured_step_time_s - 1.0 for r in runs])

    res = least_squares(residuals, x0, bounds=(lo, hi), method="trf", diff_step=1e-4, xtol=1e-10,
                        ftol=1e-12, gtol=1e-12, max_nfev=200 * (len(names) + 1))
    fitted = {n: float(_from_x(n, float(v))) for n, v in zip(names, res.x)}
    return fitted, bool(res.success), str(res.message)


def fit_profile(runs: list[MeasuredRun], base: NodeSpec, *, params: Iterable[str] = FIT_PARAMS,
                loo: bool = True, skipped: Iterable[str] = ()) -> FitResult:
    """Fit the physical parameters of ``base`` to measured step times (bounded least squares on
    relative errors, scipy.optimize.least_squares 'trf'), with leave-one-out errors."""
    names = tuple(params)
    for n in names:
        require(n in FIT_PARAMS, "params", f"unknown parameter {n!r} (allowed: {', '.join(FIT_PARAMS)})")
    require(len(names) >= 1, "params", "name at least one parameter")
    require(len(runs) >= 1, "run_dir", "no usable run (status ok with a measured step time)")
    fitted, ok, msg = _solve(runs, base, names)
    node = apply_params(base, fitted)
    before = tuple(100.0 * (predict_step_time(r.plan, base) / r.measured_step_time_s - 1) for r in runs)
    after = tuple(100.0 * (predict_step_time(r.plan, node) / r.measured_step_time_s - 1) for r in runs)
    loo_errs: list[float | None] = []
    for i, r in enumerate(runs):
        rest = runs[:i] + runs[i + 1:]
        if not loo or not rest:
            loo_errs.append(None)
            continue
        p_i, _, _ = _solve(rest, base, names)
        loo_errs.append(100.0 * (predict_step_time(r.plan, apply_params(base, p_i)) / r.measured_step_time_s - 1))
    initial = {n: base_params(base)[n] for n in names}
    return FitResult(params=fitted, initial=initial, node=node, run_dirs=tuple(r.run_dir for r in runs),
                     errors_before_pct=before, errors_after_pct=after, loo_errors_pct=tuple(loo_errs),
                     success=ok, message=msg, skipped=tuple(skipped))


def fitted_profile_yaml(result: FitResult, *, base_source: str, name: str | None = None) -> str:
    node = dataclasses.replace(result.node, name=name) if name else result.node
    d = result.to_dict()

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    header = [
        f"Fitted by `clusterplan fit` from {base_source} on {len(result.run_dirs)} measured run(s).",
        "Parameters (scipy.optimize.least_squares, bounded, on relative step-time errors):",
        *[f"  {k}: {result.initial.get(k)} -> {v:.6g}" for k, v in result.params.items()],
        f"median |error| before {pct(d['before']['median_abs_error_pct'])}, in-sample "
        f"{pct(d['in_sample']['median_abs_error_pct'])} (max {pct(d['in_sample']['max_abs_error_pct'])}), "
        f"leave-one-out {pct(d['leave_one_out']['median_abs_error_pct'])} "
        f"(max {pct(d['leave_one_out']['max_abs_error_pct'])})",
        "Runs: " + ", ".join(Path(r).name for r in result.run_dirs),
    ]
    return profile_yaml(node, header=header)


# ----- framework: the executor's building blocks -> FrameworkSpec ----------------------------
