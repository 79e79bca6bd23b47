"""Fit on a public cluster's small runs, predict its large ones (issue 22's public benchmark).

    .venv/bin/python benchmarks/fit_published_holdout.py [--source "NVIDIA dgxc-benchmarking"]
        [--runtime megatron-core] [--fit-max-gpus 128] [--out reports/fit-published-holdout.md]

The rows of ``benchmarks/published_runs.csv`` whose source contains ``--source``, whose runtime
(``planner.row_config.row_config``) is ``--runtime`` and whose metric is a step time become
measured runs (``planner.calibrate.runs_table.MeasuredRun``). Those on at most ``--fit-max-gpus``
GPUs are fitted with ``clusterplan fit``'s code path (:func:`planner.calibrate.fit_runs.fit_profile`);
the others are predicted before and after the fit. The base profile is the row's profile with
every value chosen by looking at published runs put back to its documented value
(:data:`planner.cross_validation.FITTED_CHOICES`), so nothing the held-out rows taught the
committed profile leaks into the "before" column.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fit_holdout import _mean_abs, _relative  # noqa: E402
from planner.calibrate.fit_runs import fit_profile, predict_run  # noqa: E402
from planner.calibrate.runs_table import MeasuredRun  # noqa: E402
from planner.cost.runtime import Runtime  # noqa: E402
from planner.cross_validation import FITTED_CHOICES  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.profile_yaml import load_profile  # noqa: E402
from planner.row_config import row_config  # noqa: E402

DATASET = ROOT / "benchmarks" / "published_runs.csv"


def documented_node(profile: str):
    """``profile`` with every fitted choice at its documented value."""
    node = load_profile(profile)
    for choice in FITTED_CHOICES:
        nodes, _ = choice.overrides(choice.documented)
        node = nodes.get(profile, node)
    return node


def measured_runs(source: str, runtime: str) -> tuple[list[MeasuredRun], str, Runtime]:
    """The source's step-time rows priced as the ``runtime`` preset, their profile and the runtime
    as the rows price it (with the gradient dtype they state: one for all)."""
    table = pd.read_csv(DATASET)
    runs, profiles, priced = [], set(), set()
    for row in table.to_dict("records"):
        if source not in str(row.get("source", "")) or pd.isna(row.get("step_time_s")):
            continue
        cfg = row_config(row)
        if cfg.status == "skipped" or cfg.runtime != runtime:
            continue
        gpn = cfg.parallel.world_size // cfg.nodes
        plan = Plan(model=cfg.model, hardware=cfg.profile, n_nodes=cfg.nodes, gpus_per_node=gpn,
                    parallel=cfg.parallel)
        runs.append(MeasuredRun(f"row {int(row['row_id'])} {row['model']} {cfg.parallel.precision}", plan,
                                float(row["step_time_s"])))
        profiles.add(cfg.profile)
        priced.add(cfg.priced_runtime())
    if len(profiles) != 1:
        raise SystemExit(f"the selected rows span {len(profiles)} profiles ({sorted(profiles)}): select one")
    if len(priced) != 1:
        raise SystemExit(f"the selected rows state {len(priced)} gradient dtypes: select rows of one")
    return runs, profiles.pop(), priced.pop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="NVIDIA dgxc-benchmarking")
    ap.add_argument("--runtime", default="megatron-core")
    ap.add_argument("--fit-max-gpus", type=int, default=128)
    default_out = ROOT / "reports" / "fit-published-holdout.md"
    ap.add_argument("--out", default=str(default_out))
    a = ap.parse_args(argv)
    runs, profile, runtime = measured_runs(a.source, a.runtime)
    fit_runs = [r for r in runs if r.plan.world_size <= a.fit_max_gpus]
    held = [r for r in runs if r.plan.world_size > a.fit_max_gpus]
    base = documented_node(profile)
    result = fit_profile(fit_runs, base, runtime=runtime)
    d = result.to_dict()
    lines = ["# Fit on a public cluster's small runs, predict its large ones", "",
             f"Regenerate: `.venv/bin/python benchmarks/fit_published_holdout.py --source \"{a.source}\" "
             f"--runtime {a.runtime} --fit-max-gpus {a.fit_max_gpus}"
             + ("" if Path(a.out).resolve() == default_out else f" --out {_relative(Path(a.out))}")
             + "`.", "",
             f"Rows of `benchmarks/published_runs.csv` from \"{a.source}\" priced as `{a.runtime}` on `{profile}` "
             f"(its documented GEMM efficiency, no fitted scale): {len(fit_runs)} runs on at most {a.fit_max_gpus} "
             f"GPUs fitted, {len(held)} larger runs held out. Each row's assumptions (recomputation, sharding) are "
             "those `clusterplan validate` states on it"
             + ("" if runtime.main_grad_bytes is None
                else f", and their configurations' gradient dtype ({runtime.main_grad_bytes:g} bytes)")
             + ".", "", "## The fit", ""]
    lines += result.parameter_lines()
    def pct(key: str) -> str:  # None where too few runs leave one out with enough to fit
        value = d[key]["mean_abs_error_pct"]
        return "n/a (too few runs)" if value is None else f"{value:.1f}%"

    lines += ["", f"Fitted runs ({len(fit_runs)}), mean |step-time error|: before {pct('before')}, "
                  f"in-sample {pct('in_sample')}, leave-one-out {pct('leave_one_out')}.", "",
              "## Held-out runs (never seen by the fit)", "",
              "| run | GPUs | plan | measured s | error before fit | error after fit |", "|---|---|---|---|---|---|"]
    before, after, mid = [], [], []
    for r in held:
        b = 100 * (predict_run(r, base, runtime).step_time_s / r.measured_step_time_s - 1)
        f = 100 * (predict_run(r, result.node, runtime).step_time_s / r.measured_step_time_s - 1)
        before.append(b)
        after.append(f)
        if 4 <= r.plan.n_nodes <= 32:
            mid.append(f)
        lines.append(f"| {r.name} | {r.plan.world_size} | {r.plan.parallel.megatron_notation()} | "
                     f"{r.measured_step_time_s:.3g} | {b:+.1f}% | {f:+.1f}% |")
    if held:
        lines += ["", f"Held-out mean |step-time error|: before {_mean_abs(before):.1f}%, after {_mean_abs(after):.1f}% "
                      f"(worst {max(abs(x) for x in after):.1f}%)."]
        if mid:
            lines += [f"Of these, the {len(mid)} on 4-32 nodes: after {_mean_abs(mid):.1f}% "
                      f"(worst {max(abs(x) for x in mid):.1f}%)."]
        lines.append("")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
