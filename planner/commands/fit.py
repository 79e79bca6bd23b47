"""``clusterplan fit``: fit a profile's physical parameters to measured runs, from a table of runs
of any framework (``--runs MEASURED.csv``, columns in planner/calibrate/runs_table.py) or this
project's run folders."""
from __future__ import annotations

import argparse

from planner.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit a hardware profile's physical parameters to measured runs (least squares)",
        description="Re-predict each measured run under modified profile parameters and fit the ones the runs can "
                    "identify to the measured step times (scipy.optimize.least_squares, bounded) and the memory "
                    "readings; report in-sample and leave-one-out error per run.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders of clusterplan run")
    p.add_argument("--runs", default=None, metavar="MEASURED.csv",
                   help="a table of measured runs (columns: planner/calibrate/runs_table.py, README)")
    p.add_argument("--hardware", "--profile", dest="hardware", required=True,
                   help="profile name or path to start from (the runs' node type)")
    p.add_argument("--runtime", default=None, help="the stack the runs used (a planner.cost.runtime preset)")
    p.add_argument("--out", default=None, metavar="FITTED.yaml", help="write the fitted profile (same schema)")
    p.add_argument("--params", default=None,
                   help="comma-separated parameters to try (default all, in this order: compute_scale, "
                        "fp8_compute_scale, op_overhead_scale, memory_bound_efficiency, kernel_overhead_s, pp_action_s, "
                        "intra_bandwidth_scale, inter_bandwidth_scale, latency_scale, attention_scale); those the "
                        "runs cannot identify stay at the profile's values")
    p.add_argument("--plan", action="append", default=[], metavar="PLAN.json",
                   help="plan files to match run folders by plan id (when a run dir holds no plan.json)")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from planner.calibrate.fit_runs import FIT_PARAMS, fit_profile, fitted_profile_yaml, load_measured_runs
    from planner.calibrate.runs_table import load_runs_table
    from planner.cost.runtime import get_runtime
    from planner.io import atomic_write_text, check_output_path
    from planner.profile_yaml import load_profile, resolve_profile_path

    if not args.runs and not args.run_dirs:
        raise InputError("runs", "give --runs MEASURED.csv or run folders")
    if args.out:
        check_output_path(args.out)  # before any work
    base = load_profile(args.hardware)
    runtime = get_runtime(args.runtime)
    names = [n.strip() for n in (args.params or ",".join(FIT_PARAMS)).split(",") if n.strip()]
    runs, skipped = [], []
    if args.runs:
        runs += load_runs_table(args.runs, args.hardware)
    if args.run_dirs:
        folder_runs, skipped = load_measured_runs(args.run_dirs, args.plan)
        runs += folder_runs
    result = fit_profile(runs, base, params=names, loo=not args.no_loo, skipped=skipped, runtime=runtime)
    if args.out:
        text = fitted_profile_yaml(result, base_source=str(resolve_profile_path(args.hardware)),
                                   name=Path(args.out).stem, runs_source=args.runs or "")
        atomic_write_text(args.out, text)
    d = result.to_dict()
    if args.json:
        print(json.dumps({**d, "out": args.out}, indent=2, default=float))
        return 0

    def pct(x):
        return "   n/a" if x is None else f"{x:+6.1f}%"

    print(f"fit of {len(runs)} run(s) from {args.hardware}: {result.message}")
    for k, v in result.params.items():
        u = result.uncertainty.get(k)
        print(f"  {k:<24} {result.initial[k]:.6g} -> {v:.6g}" + ("" if u is None else f" +/- {u:.3g}"))
    for k, why in result.fixed.items():
        print(f"  {k:<24} kept at the profile's value: {why}")
    print(f"  {'run':<40} {'before':>8} {'fitted':>8} {'LOO':>8}")
    for r in d["runs"]:
        print(f"  {Path(r['run']).name:<40} {pct(r['error_before_pct']):>8} {pct(r['error_after_pct']):>8} "
              f"{pct(r['loo_error_pct']):>8}")
    for label, key in (("before", "before"), ("in-sample", "in_sample"), ("leave-one-out", "leave_one_out")):
        s = d[key]
        if s["mean_abs_error_pct"] is not None:
            print(f"  {label}: mean |error| {s['mean_abs_error_pct']:.2f}%, median {s['median_abs_error_pct']:.2f}%, "
                  f"max {s['max_abs_error_pct']:.2f}%")
    m = d["memory"]
    if m is not None:
        if m["factors"]:
            fac = ", ".join(f"{s} x{f:.3f}" for s, f in m["factors"].items())
            print(f"  memory: {fac}, offset {m['offset_bytes'] / 2**30:+.2f} GiB"
                  + (f" ({m['note']})" if m["note"] else ""))
            for label, key in (("in-sample", "in_sample"), ("leave-one-out", "leave_one_out")):
                s = m[key]
                if s["mean_abs_error_pct"] is not None:
                    print(f"    {label}: mean |error| {s['mean_abs_error_pct']:.2f}%, max {s['max_abs_error_pct']:.2f}%")
        else:
            print(f"  memory: {m['note']}")
    for s in skipped:
        print(f"  skipped {s}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
