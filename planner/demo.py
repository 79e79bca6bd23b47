"""The closed loop on this machine, as plain functions: predict a plan from a profile, execute it
with ``clusterplan run``, join prediction and measurement, and ``clusterplan demo``'s pipeline.

Torch-free (the executor runs in torchrun subprocesses). Used by ``clusterplan demo``
(:func:`run_demo`) and by the validation sweep ``benchmarks/local_sweep.py``.

Every prediction is made and stored in the plan file *before* the plan runs; the executor copies
it verbatim into ``summary.json``, so a report can never be fitted after the fact.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planner.errors import require
from planner.launch import cli_command, subprocess_env
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan

REPO_ROOT = Path(__file__).resolve().parent.parent
BUSY_MARKERS = ("-m executor", "pytest", "executor.bench", "torch.distributed.run")


def predicted_plan(model: ModelSpec, hardware: str, world: int, parallel: ParallelConfig) -> Plan:
    """A one-node plan of ``world`` ranks on profile ``hardware`` (name or YAML path) carrying
    the cost model's prediction (:func:`planner.cost.step.predict_plan`)."""
    from planner.cost.step import predict_plan

    plan = Plan(model=model, hardware=hardware, n_nodes=1, gpus_per_node=world, parallel=parallel)
    return plan.with_prediction(predict_plan(plan).to_dict())


def fit_section(run_dirs: list[Path], plan_paths: list[Path], prof_path: Path, out: Path, say) -> list[str]:
    """``clusterplan fit`` of the profile to the demo's own runs (the table path every fit takes:
    run folders become rows): what the runs identify, in-sample and leave-one-out error, and
    ``out/fitted.yaml``. Three runs identify at most two parameters; the section says which."""
    from planner.calibrate.fit_runs import fit_profile, fitted_profile_yaml, load_measured_runs
    from planner.errors import InputError
    from planner.io import atomic_write_text
    from planner.profile_yaml import load_profile

    say("fitting the profile to these runs (clusterplan fit)")
    try:
        runs, _ = load_measured_runs(run_dirs, plan_paths)
        result = fit_profile(runs, load_profile(str(prof_path)))
    except InputError as err:
        say(f"    fit refused: {err}")
        return ["## Fit to these runs", "", f"Refused: {err}", ""]
    fitted = out / "fitted.yaml"
    atomic_write_text(fitted, fitted_profile_yaml(result, base_source=str(prof_path), name="local-cpu-fitted"))
    d = result.to_dict()

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    lines = ["## Fit to these runs", "",
             f"`clusterplan fit {' '.join(str(r) for r in run_dirs)} --hardware {prof_path} --out {fitted}`", ""]
    lines += [f"- {k}: {result.initial[k]:.4g} -> {v:.4g}" for k, v in result.params.items()]
    lines += [f"- {k}: kept ({why})" for k, why in result.fixed.items()]
    lines += ["", f"Step-time |error| mean: before {pct(d['before']['mean_abs_error_pct'])}, in-sample "
                  f"{pct(d['in_sample']['mean_abs_error_pct'])}, leave-one-out {pct(d['leave_one_out']['mean_abs_error_pct'])} "
                  "(each run predicted from a fit to the others).", ""]
    say(f"    fitted {', '.join(result.params)}; mean |error| in-sample {pct(d['in_sample']['mean_abs_error_pct'])}, "
        f"leave-one-out {pct(d['leave_one_out']['mean_abs_error_pct'])} -> {fitted}")
    return lines


def busy_processes(exclude_pids: set[int] | None = None) -> list[str]:
    """Command lines of other processes that load the CPU the way our runs do (executor ranks,
    benchmarks, test runs): a run measured next to them is contended. Linux /proc only."""
    exclude = {os.getpid(), os.getppid()} | (exclude_pids or set())
    out = []
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd and any(m in cmd for m in BUSY_MARKERS) and "grep" not in cmd:
            out.append(f"{entry.name} {cmd[:120]}")
    return sorted(out)


def cpu_busy_cores(interval_s: float = 0.5) -> float | None:
    """Cores' worth of CPU other processes used over ``interval_s`` (from /proc/stat; this process
    sleeps meanwhile, so it is everyone else). None where /proc/stat is unavailable."""
    def sample():
        with open("/proc/stat") as handle:
            fields = [float(x) for x in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return sum(fields), idle
    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (total1 - total0) - (idle1 - idle0)
    return max(0.0, busy / ticks / interval_s)


def load_average() -> float | None:
    """1-minute load average (None where unavailable)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def execute(plan_path: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int, warmup: int,
            timeout_s: float = 300.0, log_path: str | os.PathLike | None = None,
            threads: int = 1) -> dict | None:
    """Run ``clusterplan run PLAN --steps S --warmup W --out DIR`` in a subprocess (its own
    session, killed with its ranks after ``timeout_s``); returns the run's summary (or None)."""
    from planner import records

    cmd = cli_command("run", str(plan_path), "--out", str(out_dir), "--steps", str(steps), "--warmup", str(warmup),
                      "--threads", str(threads), "--overwrite")  # the demo and the sweep own these folders
    env = subprocess_env(PYTHONWARNINGS="ignore")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            summary = records.read_summary(out_dir) or {}
            summary.update(status="failed", error=f"timed out after {timeout_s:.0f} s")
            records.write_summary(out_dir, summary)
    finally:
        if log_path:
            log.close()
    return records.read_summary(out_dir)


# ----- clusterplan demo ----------------------------------------------------------------------
DEMO_MODEL = "tiny-gpt"
DEMO_WORLD = 2
DEMO_GLOBAL_BATCH = 8
DEMO_TOP = 3


class DemoError(RuntimeError):
    """A step of the demo failed (a run, the search); the message is one line."""


@dataclass
class DemoResult:
    report_path: Path
    profile_path: Path
    run_dirs: list[Path] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    best_predicted_is_best_measured: bool | None = None
    wall_s: float = 0.0


def search_top(model: ModelSpec, profile: str, world: int, global_batch: int, top: int) -> list[Plan]:
    """The ``top`` best plans of :func:`planner.search.search` for ``model`` on one node of
    ``world`` ranks of ``profile`` (fp32, cp = 1: what the CPU executor runs), each carrying its
    prediction."""
    from planner.cost.step import cluster_for
    from planner.search import search

    cluster = cluster_for(profile, 1, world)
    result = search(model, cluster, global_batch, precision="fp32", fixed={"cp": 1}, top_k=top,
                    hardware=profile)
    return result.best_plans[:top]


def run_demo(out_dir: str | os.PathLike = "runs/demo", *, quick: bool = True,
             progress: Callable[[str], None] = print, steps: int = 8, warmup: int = 3,
             model_name: str = DEMO_MODEL, world: int = DEMO_WORLD, global_batch: int = DEMO_GLOBAL_BATCH,
             top: int = DEMO_TOP, profile: str | None = None) -> DemoResult:
    """Calibrate (``--quick``) into ``out_dir/local-cpu.yaml`` (or use ``profile``), search
    ``model_name`` on ``world`` local ranks, execute the ``top`` plans, compare, and write
    ``out_dir/report.md`` with plots. Returns where everything went."""
    from planner.calibrate.runner import calibrate
    from planner.catalog import load_model
    from planner.report import aggregate, compare_runs, markdown
    from planner.report_files import write_report
    from planner.io import atomic_write_text

    require(steps > warmup >= 0, "steps", f"need steps > warmup >= 0, got steps={steps} warmup={warmup}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        progress(f"[{time.perf_counter() - t0:6.1f} s] {msg}")

    if profile is None:
        prof_path = out / "local-cpu.yaml"
        say(f"1/4 calibrating this machine ({'quick' if quick else 'full'}) -> {prof_path}")
        cal = calibrate(max(2, world), quick=quick, out=prof_path, name="local-cpu",
                        gpus_per_node=world, progress=lambda m: say(f"    {m}"))
        s = cal.summary
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in s.get("peak_gflops_per_s", {}).items())
        say(f"    GEMM GFLOP/s per rank: {peaks}; contended: {cal.contended}")
    else:
        prof_path = Path(profile)
        say(f"1/4 using profile {prof_path}")
    model = load_model(model_name)
    busy = busy_processes()
    if busy:
        say(f"    note: {len(busy)} other executor/benchmark/test processes are running: timings will be noisy")
    say(f"2/4 searching plans for {model.name} on {world} local ranks (global batch {global_batch})")
    plans = search_top(model, str(prof_path), world, global_batch, top)
    if not plans:
        raise DemoError(f"the search found no feasible plan for {model.name} on {world} ranks")
    for i, p in enumerate(plans, 1):
        say(f"    #{i} {p.parallel.megatron_notation()}  predicted {p.prediction['step_time_s']:.3f} s/step")
    run_dirs: list[Path] = []
    plan_paths: list[Path] = []
    for i, p in enumerate(plans, 1):
        plan_path = out / "plans" / f"top{i}-{p.id}.json"
        plan_paths.append(plan_path)
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        p.save(plan_path)
        run_dir = out / f"top{i}-{p.id}"
        say(f"3/4 running #{i} {p.parallel.megatron_notation()} ({steps} steps, {warmup} warm-up)")
        summary = execute(plan_path, run_dir, steps=steps, warmup=warmup, log_path=out / f"top{i}.log")
        if summary is None or summary.get("status") == "failed":
            err = (summary or {}).get("error") or f"no summary (see {out / f'top{i}.log'})"
            raise DemoError(f"plan #{i} ({p.parallel.megatron_notation()}) failed: {err}")
        m = summary["measured"]
        say(f"    measured {m['step_time_s']:.3f} s/step ({summary['status']})")
        run_dirs.append(run_dir)
    say("4/4 comparing predicted vs measured")
    comp = compare_runs(run_dirs)
    files = write_report(comp, out / "compare")
    df = comp.runs
    best_measured = df["measured_step_time_s"].astype(float).idxmin() if len(df) else None
    first_best = bool(best_measured == 0) if best_measured is not None else None
    text = [markdown(comp, title=f"clusterplan demo: {plans[0].model.name} on {world} local ranks"),
            "## How this was made", "",
            f"- profile: `{prof_path}` (`clusterplan calibrate{' --quick' if quick else ''}`)",
            f"- search: top {top} plans of `planner.search.search` for `{model.name}`, global batch "
            f"{global_batch}, {world} ranks", f"- each plan: `clusterplan run PLAN --steps {steps} --warmup {warmup}`",
            f"- search's first plan measured fastest: {first_best}",
            f"- total wall time: {time.perf_counter() - t0:.0f} s", "",
            "## Plots", ""]
    text += [f"![{f.stem}](compare/{f.name})" for f in files if f.suffix == ".png"]
    text += ["", *fit_section(run_dirs, plan_paths, prof_path, out, say)]
    stats = dict(comp.stats)
    if not stats.get("n_ok") and len(df):
        # every run was contended: still say how far off it was, labelled as such
        everything = aggregate(df.assign(status="ok"))
        stats.update({k: everything[k] for k in ("median_abs_error_pct", "max_abs_error_pct", "spearman")},
                     contended=True)
        text.insert(1, f"**All runs were measured on a contended machine** (other processes took CPU): "
                       f"median |step-time error| over them {everything['median_abs_error_pct']:.1f}%, "
                       "not a statement about the model. Rerun `clusterplan demo` on a quiet machine.\n")
    report = atomic_write_text(out / "report.md", "\n".join(text) + "\n")
    return DemoResult(report_path=report, profile_path=prof_path, run_dirs=run_dirs, stats=stats,
                      best_predicted_is_best_measured=first_best, wall_s=time.perf_counter() - t0)
