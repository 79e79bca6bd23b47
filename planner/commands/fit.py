"""``clusterplan fit``: fit a profile's physical parameters to measured runs."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit a hardware profile's physical parameters to measured runs (least squares)",
        description="Re-predict each run's plan under modified profile parameters and fit them to the measured "
                    "step times (scipy.optimize.least_squares, bounded); report in-sample and leave-one-out error.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--profile", required=True, help="profile name or path to start from")
    p.add_argument("--out", default=None, metavar="P2.yaml", help="write the fitted profile (same schema)")
    p.add_argument("--params", default=None,
                   help="comma-separated parameters to fit (default all: compute_scale, kernel_overhead_s, "
                        "memory_bound_efficiency, latency_scale, bandwidth_scale; planner.calibrate.fit_runs.FIT_PARAMS)")
    p.add_argument("--plan", action="append", default=[], metavar="PLAN.json",
                   help="plan files to match runs by plan id (when a run dir holds no plan.json)")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from planner.calibrate.fit_runs import FIT_PARAMS, fit_profile, fitted_profile_yaml, load_measured_runs
    from planner.profile_yaml import load_profile, resolve_profile_path
    from planner.io import atomic_write_text

    base = load_profile(args.profile)
    names = [n.strip() for n in (args.params or ",".join(FIT_PARAMS)).split(",") if n.strip()]
    runs, skipped = load_measured_runs(args.run_dirs, args.plan)
    result = fit_profile(runs, base, params=names, loo=not args.no_loo, skipped=skipped)
    if args.out:
        text = fitted_profile_yaml(result, base_source=str(resolve_profile_path(args.profile)),
                                   name=Path(args.out).stem)
        atomic_write_text(args.out, text)
    d = result.to_dict()
    if args.json:
        print(json.dumps({**d, "out": args.out}, indent=2, default=float))
        return 0

    def pct(x):
        return "   n/a" if x is None else f"{x:+6.1f}%"

    print(f"fit of {len(runs)} run(s) from {args.profile}: {result.message}")
    for k, v in result.params.items():
        print(f"  {k:<24} {result.initial[k]:.6g} -> {v:.6g}")
    print(f"  {'run':<40} {'before':>8} {'fitted':>8} {'LOO':>8}")
    for r in d["runs"]:
        print(f"  {Path(r['run_dir']).name:<40} {pct(r['error_before_pct']):>8} {pct(r['error_after_pct']):>8} "
              f"{pct(r['loo_error_pct']):>8}")
    for label, key in (("before", "before"), ("in-sample", "in_sample"), ("leave-one-out", "leave_one_out")):
        s = d[key]
        if s["median_abs_error_pct"] is not None:
            print(f"  {label}: median |error| {s['median_abs_error_pct']:.2f}%, max {s['max_abs_error_pct']:.2f}%")
    for s in skipped:
        print(f"  skipped {s}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
