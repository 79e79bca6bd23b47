"""Fit on the small runs of a machine, predict its larger ones (issue 22's benchmark): the runs the
fit never saw are the measure.

    .venv/bin/python benchmarks/local_sweep.py --rounds 1 --no-search --no-op-profile --out-dir runs/holdout \\
        --report /tmp/holdout/local-validation.md
    .venv/bin/python benchmarks/fit_holdout.py runs/holdout --hardware local-cpu --fit-max-world 2 \\
        --out reports/fit-holdout.md

    # a public table in the measured-runs schema: torchtitan's 2024-12 H100 runs, fit on 8 GPUs
    .venv/bin/python benchmarks/fit_holdout.py --runs benchmarks/torchtitan_h100_runs.csv \\
        --hardware dgx-h100-80gb --runtime torchtitan --fit-max-world 8 --out reports/fit-torchtitan-holdout.md

Every run folder under the given folders (``summary.json`` with status ok, or contended: on this
2-core machine every 4-rank plan is flagged so by its own oversubscription) is a row of the
measured-runs table (``planner.calibrate.runs_table``). Runs of at most ``--fit-max-world`` ranks
are fitted with ``clusterplan fit``'s code path (what they identify, leave-one-out); the others
are predicted with the profile before and after the fit. ``--runs CSV``: the rows of a measured-runs
table instead (``clusterplan fit --runs``'s schema), priced with ``--runtime``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.calibrate.fit_runs import fit_profile, load_measured_runs, predict_run  # noqa: E402
from planner.calibrate.runs_table import load_runs_table  # noqa: E402
from planner.cost.runtime import get_runtime  # noqa: E402
from planner.profile_yaml import load_profile, resolve_profile_path  # noqa: E402


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _mag(x) -> str:
    return "n/a" if x is None else f"{x:.1f}%"


def _mean_abs(values) -> float | None:
    vals = [abs(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


DEFAULT_OUT = ROOT / "reports" / "fit-holdout.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", help="folders holding run folders (searched recursively)")
    ap.add_argument("--runs", default=None, metavar="CSV", help="a measured-runs table instead of run folders")
    ap.add_argument("--runtime", default=None, help="the stack the runs used (a planner.cost.runtime preset)")
    ap.add_argument("--hardware", required=True)
    ap.add_argument("--fit-max-world", type=int, default=2)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--note", default="", help="where and when the runs were measured (goes into the report)")
    a = ap.parse_args(argv)
    runtime = get_runtime(a.runtime)
    if a.runs:
        runs, skipped = load_runs_table(a.runs, a.hardware), []
    else:
        dirs = sorted({p.parent for f in a.folders for p in Path(f).rglob("summary.json")})
        # runs of more ranks than cores are flagged contended by their own oversubscription: kept
        runs, skipped = load_measured_runs(dirs, statuses=("ok", "contended"))
    fit_runs = [r for r in runs if r.plan.world_size <= a.fit_max_world]
    held = [r for r in runs if r.plan.world_size > a.fit_max_world]
    base = load_profile(a.hardware)
    result = fit_profile(fit_runs, base, runtime=runtime)
    rows = []
    for r in held:
        before, after = predict_run(r, base, runtime), predict_run(r, result.node, runtime)
        mem_before = mem_after = None
        if r.measured_memory_bytes is not None:  # before: the cost model's peak as it is
            mem_before = 100 * (before.peak_memory_bytes / r.measured_memory_bytes - 1)
        if r.measured_memory_bytes is not None and r.memory_source in {s for s, _, _ in result.node.memory_sources}:
            mem_after = 100 * (result.node.memory_reading_bytes(after.peak_memory_bytes, r.memory_source)
                               / r.measured_memory_bytes - 1)
        rows.append((r, 100 * (before.step_time_s / r.measured_step_time_s - 1),
                     100 * (after.step_time_s / r.measured_step_time_s - 1), mem_before, mem_after))
    d = result.to_dict()
    source = f"--runs {a.runs}" if a.runs else " ".join(a.folders)
    stack = f" --runtime {a.runtime}" if a.runtime else ""
    lines = ["# Fit on the small runs, predict the larger ones", "",
             f"Regenerate: `.venv/bin/python benchmarks/fit_holdout.py {source} --hardware {a.hardware}{stack} "
             f"--fit-max-world {a.fit_max_world}" + (" --out " + a.out if a.out != str(DEFAULT_OUT) else "")
             + (' --note "<the paragraph below>"' if a.note else "") + "`"
             + ("." if a.runs else " (the runs: the command in the script's docstring)."), "",
             f"Profile `{_relative(resolve_profile_path(a.hardware))}`; {len(fit_runs)} runs of at most {a.fit_max_world} ranks "
             f"fitted, {len(held)} larger runs held out; {len(skipped)} folders skipped (not ok).", "",
             *([a.note, ""] if a.note else []), "## The fit", ""]
    lines += result.parameter_lines()
    lines += ["", f"Fitted runs, mean |step-time error|: before {_mag(d['before']['mean_abs_error_pct'])}, "
                  f"in-sample {_mag(d['in_sample']['mean_abs_error_pct'])}, leave-one-out "
                  f"{_mag(d['leave_one_out']['mean_abs_error_pct'])}."]
    if d["memory"] is not None:
        m = d["memory"]
        factors = ", ".join(f"{k} x{v:.3f}" for k, v in m["factors"].items())
        lines.append(f"Memory: {factors}, offset {m['offset_bytes'] / 2**20:.1f} MiB{' (' + m['note'] + ')' if m['note'] else ''}; in-sample mean "
                     f"|error| {_mag(m['in_sample']['mean_abs_error_pct'])}, leave-one-out "
                     f"{_mag(m['leave_one_out']['mean_abs_error_pct'])}.")
    lines += ["", "## Held-out runs (never seen by the fit)", "",
              "| run | ranks | plan | measured s | error before fit | error after fit | memory error before fit "
              "| memory error after fit |",
              "|---|---|---|---|---|---|---|---|"]
    for r, b, af, mb, ma in rows:
        lines.append(f"| {Path(r.name).name} | {r.plan.world_size} | {r.plan.parallel.megatron_notation()} | "
                     f"{r.measured_step_time_s:.3f} | {_pct(b)} | {_pct(af)} | {_pct(mb)} | {_pct(ma)} |")
    lines += ["", f"Held-out mean |step-time error|: before {_mag(_mean_abs(row[1] for row in rows))}, after "
                  f"{_mag(_mean_abs(row[2] for row in rows))}; memory before "
                  f"{_mag(_mean_abs(row[3] for row in rows))}, after {_mag(_mean_abs(row[4] for row in rows))}."]
    mid = [row for row in rows if 4 <= row[0].plan.n_nodes <= 32]
    if mid and len(mid) < len(rows):
        lines.append(f"Of these, the {len(mid)} on 4-32 nodes: step time after {_mag(_mean_abs(row[2] for row in mid))}, "
                     f"memory after {_mag(_mean_abs(row[4] for row in mid))}.")
    lines.append("")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
