"""Local validation sweep: predicted vs measured on this machine (issue 5, item 4).

    .venv/bin/python benchmarks/local_sweep.py [--profile hardware_profiles/local-cpu.yaml]
        [--out-dir runs/local-sweep] [--report reports/local-validation.md] [--steps 8 --warmup 3]
        [--rounds 3] [--calibrate REPEAT | --calibrate-each-round] [--only NAME,NAME] [--no-search]
        [--predict-only]

For every plan of :data:`SWEEP` (two model shapes, world sizes 1, 2 and 4, dp / tp / sp / pp with
four schedules, DDP / ZeRO-1 / ZeRO-2 / FSDP, recompute none / selective / full, micro-batch
sizes): predict it from the calibrated profile and store the prediction in the plan file, THEN
run it with ``clusterplan run PLAN --steps S --warmup W --out DIR`` (the executor copies the
prediction into ``summary.json``). A run whose summary says ``contended`` is run once more. The
list runs ``--rounds`` times, round after round, and each plan keeps its median run (a burst of
load from outside this process hits one round of a plan, rarely all). Then
``planner.report.compare_runs`` (what ``clusterplan compare`` prints) joins all runs, and the
search check runs the top five plans of one ``planner.search.search`` on this machine.
``--calibrate REPEAT`` first measures the profile itself (``clusterplan calibrate --repeat REPEAT``)
and keeps the raw results next to the report (``<profile stem>-calibration.json``), from which
``clusterplan calibrate --from-results`` rebuilds the profile. ``--calibrate-each-round`` instead
measures one calibration pass just before each round and predicts that round's plans from it (the
predictions still come before the runs, from a calibration, never from the runs; on a shared VM
whose speed drifts by 10% within the half hour of a sweep they come from the machine's state of a
few minutes before rather than half an hour before); each plan keeps its round of median error,
and the profile written is the median over the passes (what ``calibrate --repeat ROUNDS`` writes).

Writes ``reports/local-validation.md`` (+ ``.csv``, ``local-validation-scatter.png``,
``local-validation-breakdown.png``); run outputs stay under ``--out-dir`` (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.demo import busy_processes, cpu_busy_cores, execute, predicted_plan  # noqa: E402
from planner.launch import cli_command  # noqa: E402
from benchmarks.local_sweep_plans import (L, QUIET_CORES, SWEEP, TARGETS, SweepPlan, externally_contended)  # noqa: E402
from benchmarks.local_sweep_report import fmt_number, op_profile, op_profiles, write_reports  # noqa: E402



# ----- running --------------------------------------------------------------------------------
class SweepError(Exception):
    """A step of the sweep that cannot go on (a calibration that failed)."""


def calibrate_pass(repeat: int, profile: str | Path, results: str | Path, quick: bool = False) -> float:
    """``clusterplan calibrate --repeat REPEAT --out PROFILE --save-results RESULTS [--quick]`` in
    a subprocess (its progress on this terminal); returns its seconds."""
    import subprocess

    t0 = time.perf_counter()
    Path(profile).parent.mkdir(parents=True, exist_ok=True)
    cmd = ["calibrate", "--repeat", str(repeat), "--out", str(profile), "--save-results", str(results)]
    cmd += ["--quick"] if quick else []
    print(f"calibrating: clusterplan {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cli_command(*cmd), cwd=ROOT)
    if proc.returncode != 0:
        raise SweepError(f"calibrate failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def prepare(entries, profile: str, plan_dir: Path):
    """Predict every entry and save its plan (prediction inside) before anything runs."""
    from planner.catalog import load_model

    out = []
    for e in entries:
        model = load_model(e.model)
        cfg = e.config(model.seq_len)
        plan = predicted_plan(model, profile, cfg.world_size, cfg)
        path = plan.save(plan_dir / f"{e.name}.json")
        out.append((e, plan, path))
    return out


def wait_quiet(max_wait_s: float) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes use less than QUIET_CORES cores;
    returns the last reading."""
    t0 = time.perf_counter()
    busy = cpu_busy_cores(0.5)
    while busy is not None and busy > QUIET_CORES and time.perf_counter() - t0 < max_wait_s:
        time.sleep(2.0)
        busy = cpu_busy_cores(0.5)
    return busy


SPEED_PROBE_S = 1.0
"""Seconds of the machine-speed probe before each run (:func:`machine_speed_flops`)."""


def machine_speed_flops(duration_s: float = SPEED_PROBE_S) -> float:
    """The machine's speed now: one thread's fp32 GEMM rate on the calibration's one-rank
    contention GEMM (``executor.bench.compute.contention_matmul``), FLOP/s. Against the same
    number in the calibration results it says how far the machine has drifted since the
    profile was measured; the predictions never see it."""
    import torch

    from executor.bench.compute import contention_matmul

    torch.set_num_threads(1)
    return contention_matmul(duration_s)["flops_per_s"]


def run_one(path, run_dir: Path, log_path: Path, steps: int, warmup: int, wait_s: float):
    """Run a plan (once more if contended). Returns (summary, attempts, others' cores per attempt,
    machine speed in FLOP/s just before each attempt)."""
    attempts, busy_seen, speed_seen, summary = 0, [], [], None
    while attempts < 2:
        attempts += 1
        busy_seen.append(wait_quiet(wait_s))
        speed_seen.append(machine_speed_flops())
        summary = execute(path, run_dir, steps=steps, warmup=warmup, log_path=log_path)
        if not externally_contended(summary):
            break
    return summary, attempts, busy_seen, speed_seen


def run_all(prepared, out_dir: Path, steps: int, warmup: int, wait_s: float = 0.0, log=print):
    """Run each plan; rerun a contended one once. Returns {name: (run_dir, summary, attempts, busy,
    speed)}."""
    results = {}
    for i, (e, plan, path) in enumerate(prepared, 1):
        run_dir = out_dir / e.name
        t0 = time.perf_counter()
        summary, attempts, busy, speed = run_one(path, run_dir, out_dir / f"{e.name}.log", steps, warmup, wait_s)
        status = (summary or {}).get("status", "failed")
        meas = ((summary or {}).get("measured") or {}).get("step_time_s")
        pred = plan.prediction["step_time_s"]
        err = f"{100 * (pred - meas) / meas:+6.1f}%" if meas else "   n/a"
        others = ", ".join("?" if b is None else f"{b:.1f}" for b in busy)
        log(f"[{i:2d}/{len(prepared)}] {e.name:<20} {plan.parallel.megatron_notation():<34} "
            f"pred {pred:.4f}  meas {'n/a' if meas is None else f'{meas:.4f}'}  {err}  {status}"
            f"  ({time.perf_counter() - t0:.0f} s, {attempts} run(s), others' cores {others}, "
            f"GEMM {speed[-1] / 1e9:.1f} GF/s)")
        results[e.name] = (run_dir, summary, attempts, busy, speed)
    return results


def _step_s(summary) -> float | None:
    return ((summary or {}).get("measured") or {}).get("step_time_s")


def _error_pct(summary) -> float | None:
    """(predicted - measured) / measured of a run's step time, percent; None without both."""
    meas = _step_s(summary)
    pred = ((summary or {}).get("predicted") or {}).get("step_time_s")
    return None if not meas or pred is None else 100.0 * (pred - meas) / meas


def median_run(runs: list):
    """Of one plan's runs (one per round, each as :func:`run_all` keeps them) the one with the
    median error (the lower middle for an even count), among those with an error; the first run
    when none has one. With the same prediction in every round that is the median step time; with
    a prediction per round (``--calibrate-each-round``) the plan's error is the median of its
    rounds' errors."""
    measured = sorted((r for r in runs if _error_pct(r[1]) is not None), key=lambda r: _error_pct(r[1]))
    return measured[(len(measured) - 1) // 2] if measured else runs[0]


def round_order(todo: list, k: int) -> list:
    """Round k's order of the plans: the list as given (round 1), reversed (round 2), then a
    fixed shuffle per round (seeded by k, so a rerun keeps the order)."""
    if k == 1:
        return list(todo)
    if k == 2:
        return list(reversed(todo))
    import random
    order = list(todo)
    random.Random(k).shuffle(order)
    return order


def round_dir(out_dir: Path, rounds: int, k: int) -> Path:
    """Round k's folder: ``out_dir/round{k}``, or ``out_dir`` itself when there is one round."""
    return out_dir / f"round{k}" if rounds > 1 else out_dir


def run_rounds(todo, out_dir: Path, rounds: int, steps: int, warmup: int, wait_s: float = 0.0, log=print,
               before_round=None):
    """Run the whole list ``rounds`` times, one round after the other (so a burst of load from
    outside hits one run of a plan, not all of them), each round under ``out_dir/round{k}``
    (``out_dir`` itself for one round) and in its own order (:func:`round_order`: a slow spell
    of the machine lasting minutes then falls on different plans in each round, not on the
    same neighbours). ``before_round(k)``, when given, returns round k's list (the same plans,
    predicted anew just before the round). Per plan the run of :func:`median_run` is kept.
    Returns (results as :func:`run_all`, {name: step times of every round}, {name: errors (%)
    of every round})."""
    per_round = []
    for k in range(1, rounds + 1):
        if rounds > 1:
            log(f"round {k}/{rounds}")
        todo_k = before_round(k) if before_round else todo
        per_round.append(run_all(round_order(todo_k, k), round_dir(out_dir, rounds, k), steps, warmup, wait_s,
                                 log=log))
    results, times, errors = {}, {}, {}
    for e, _, _ in todo:
        runs = [r[e.name] for r in per_round]
        results[e.name] = median_run(runs)
        times[e.name] = [_step_s(x[1]) for x in runs]
        errors[e.name] = [_error_pct(x[1]) for x in runs]
    return results, times, errors


# ----- search check ---------------------------------------------------------------------------
def search_check(profile: str, out_dir: Path, steps: int, warmup: int, wait_s: float = 0.0, rounds: int = 1,
                 log=print):
    """One search on this machine (tiny-llama, 2 ranks); run its top five as the sweep runs its
    plans (:func:`run_rounds`: ``rounds`` rounds, each plan's median round kept; its five
    predictions lie within a few percent, so one run each would rank them by the machine's
    noise). Returns a dict or None when ``planner.search`` is not available."""
    try:
        from planner.demo import search_top
        from planner.catalog import load_model

        plans = search_top(load_model(L), profile, 2, 8, 5)
    except ImportError:
        return None
    todo = []
    for i, plan in enumerate(plans, 1):
        entry = SweepPlan(f"rank{i}-{plan.id}", L, {})
        todo.append((entry, plan, plan.save(out_dir / "search" / "plans" / f"{entry.name}.json")))
    log("search check: its top five plans")
    results, times, _ = run_rounds(todo, out_dir / "search", rounds, steps, warmup, wait_s, log=log)
    rows = []
    for i, (entry, plan, _) in enumerate(todo, 1):
        run_dir, summary = results[entry.name][:2]
        rows.append({"rank": i, "plan_id": plan.id, "parallel": plan.parallel.megatron_notation(),
                     "predicted_step_time_s": plan.prediction["step_time_s"], "measured_step_time_s": _step_s(summary),
                     "rounds_s": times[entry.name], "status": (summary or {}).get("status", "failed"),
                     "run_dir": str(run_dir)})
    measured = [r["measured_step_time_s"] for r in rows if r["measured_step_time_s"]]
    best = min(measured) if measured else None
    first = rows[0]["measured_step_time_s"] if rows else None
    within = None if (best is None or first is None) else 100.0 * (first - best) / best
    return {"rows": rows, "best_measured_s": best, "first_measured_s": first, "first_vs_best_pct": within,
            "met": within is not None and within <= TARGETS["search_within_pct"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="calibrated profile (default hardware_profiles/local-cpu.yaml)")
    ap.add_argument("--out-dir", default="runs/local-sweep")
    ap.add_argument("--report", default="reports/local-validation.md")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated sweep names")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--predict-only", action="store_true", help="print predictions, run nothing")
    ap.add_argument("--op-profile", nargs=2, metavar=("MODEL", "MICRO_BATCH"), default=None,
                    help="internal: print one rank's op-class profile as JSON and exit")
    ap.add_argument("--no-op-profile", action="store_true", help="skip the one-rank op-class profile")
    ap.add_argument("--reuse", action="store_true", help="keep existing ok runs of the same plan id (one round)")
    ap.add_argument("--calibrate", type=int, default=0, metavar="REPEAT",
                    help="first run `clusterplan calibrate --repeat REPEAT --out PROFILE` (0: use the profile as it is)")
    ap.add_argument("--calibrate-each-round", action="store_true",
                    help="one calibration pass just before each round, the round's plans predicted from it; "
                         "PROFILE is then the median over the passes")
    ap.add_argument("--quick-calibration", action="store_true",
                    help="calibrate with `--quick` (a smoke run of the sweep, not a validation)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="run the list this many times, one round after another; per plan the median run")
    ap.add_argument("--wait-quiet", type=float, default=20.0,
                    help="before each run wait up to this many seconds for other processes to go idle")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.rounds < 1 or (args.reuse and args.rounds != 1):
        print("local_sweep: error: --rounds must be >= 1 (and 1 with --reuse)", file=sys.stderr)
        return 2
    if args.op_profile:
        print(json.dumps(op_profile(args.op_profile[0], int(args.op_profile[1]))))
        return 0
    os.chdir(ROOT)  # relative paths (plans, run folders, report) are the repository's
    args.profile_given = args.profile is not None
    args.profile = args.profile or "hardware_profiles/local-cpu.yaml"
    from planner.errors import InputError
    from planner.profile_yaml import load_profile
    from planner.report import compare_runs

    if args.calibrate < 0:
        print("local_sweep: error: --calibrate must be >= 0", file=sys.stderr)
        return 2
    if args.calibrate_each_round and (args.calibrate or args.reuse):
        print("local_sweep: error: --calibrate-each-round goes without --calibrate and --reuse", file=sys.stderr)
        return 2
    # the raw results go next to the report, so `calibrate --from-results` rebuilds the profile
    args.calibration_results = str(Path(args.report).with_name(Path(args.profile).stem + "-calibration.json"))
    args.calibrated_s = None
    out_dir = Path(args.out_dir)
    entries = SWEEP
    if args.only:
        want = set(args.only.split(","))
        entries = tuple(e for e in SWEEP if e.name in want)
    before_round = None
    try:
        if args.calibrate_each_round and not args.predict_only:
            args.pass_s = []

            def calibrated_round(k: int) -> list:
                """Round k's plans, predicted from a calibration pass made just before it."""
                here = round_dir(out_dir, args.rounds, k)
                args.pass_s.append(calibrate_pass(1, here / "profile.yaml", here / "calibration.json",
                                                  quick=args.quick_calibration))
                return prepare(entries, str(here / "profile.yaml"), here / "plans")

            prepared = calibrated_round(1)
            before_round = lambda k: prepared if k == 1 else calibrated_round(k)  # noqa: E731
        else:
            if args.calibrate and not args.predict_only:
                args.calibrated_s = calibrate_pass(args.calibrate, args.profile, args.calibration_results,
                                                   quick=args.quick_calibration)
            load_profile(args.profile)
            prepared = prepare(entries, args.profile, out_dir / "plans")
    except InputError as err:
        print(f"local_sweep: error: {err} (run `clusterplan calibrate` first)", file=sys.stderr)
        return 2
    except SweepError as err:
        print(f"local_sweep: error: {err}", file=sys.stderr)
        return 2
    if args.predict_only:
        for e, plan, _ in prepared:
            print(f"{e.name:<20} ws{plan.world_size} {plan.parallel.megatron_notation():<32} "
                  f"{plan.prediction['step_time_s']:.4f} s  {plan.prediction['peak_memory_bytes'] / 2**20:.1f} MiB")
        return 0
    busy_before = busy_processes()
    print(f"local sweep: {len(prepared)} plans, profile {args.profile}, {len(busy_before)} other busy processes, "
          f"others use {fmt_number(cpu_busy_cores(1.0), '.1f')} cores now", flush=True)
    t0 = t_start if args.calibrate_each_round else time.perf_counter()  # the report's total: with its passes
    from planner.records import read_summary

    if args.reuse:
        def reusable(name, plan):
            summary = read_summary(out_dir / name) or {}
            return (summary.get("plan_id") == plan.id and summary.get("status") in ("ok", "contended")
                    and not externally_contended(summary))
        keep = {e.name for e, plan, _ in prepared if reusable(e.name, plan)}
        todo = [x for x in prepared if x[0].name not in keep]
    else:
        todo = list(prepared)
    # the op profile before the first round too: with the one after the last, the machine's drift
    start_profile = prepared[0][1].hardware if args.calibrate_each_round and prepared else args.profile
    profiles_start = [] if args.no_op_profile else op_profiles(start_profile, log=lambda s: print(s, flush=True))
    try:
        results, round_times, round_errors = run_rounds(todo, out_dir, args.rounds, args.steps, args.warmup,
                                                        args.wait_quiet, log=lambda s: print(s, flush=True),
                                                        before_round=before_round)
    except SweepError as err:
        print(f"local_sweep: error: {err}", file=sys.stderr)
        return 2
    if args.calibrate_each_round:
        # the profile the search check, the op profile and the committed file use: the median
        # over the rounds' passes, i.e. what `calibrate --repeat ROUNDS` would have written
        from planner.calibrate.profile import load_results
        from planner.calibrate.runner import calibrate, combine_passes
        from planner.io import atomic_write_text

        passes = [load_results(round_dir(out_dir, args.rounds, k) / "calibration.json")
                  for k in range(1, args.rounds + 1)]
        atomic_write_text(args.calibration_results, json.dumps(combine_passes(passes), indent=1, sort_keys=True) + "\n")
        calibrate(results_path=args.calibration_results, out=args.profile)
    for e, plan, _ in prepared:
        if e.name not in results:
            results[e.name] = (out_dir / e.name, read_summary(out_dir / e.name), 1, [], [])
    search = None if args.no_search else search_check(args.profile, out_dir, args.steps, args.warmup,
                                                      args.wait_quiet, args.rounds,
                                                      log=lambda s: print(s, flush=True))
    profiles = [] if args.no_op_profile else op_profiles(args.profile, log=lambda s: print(s, flush=True))
    dirs = [str(results[e.name][0]) for e, _, _ in prepared]
    comp = compare_runs(dirs)
    names = {str(results[e.name][0]): e.name for e, _, _ in prepared}
    report = Path(args.report)
    write_reports(comp, names, results, search, report, args, time.perf_counter() - t0, busy_before, profiles,
                  round_times, profiles_start, round_errors)
    st = comp.stats
    print(f"wrote {report}  (all ok runs: median |err| {fmt_number(st['median_abs_error_pct'], '.1f')}%, "
          f"max {fmt_number(st['max_abs_error_pct'], '.1f')}%, spearman {fmt_number(st['spearman'], '.3f')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
