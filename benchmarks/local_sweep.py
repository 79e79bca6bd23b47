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
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.demo import busy_processes, cpu_busy_cores, execute, load_average, predicted_plan  # noqa: E402
from planner.launch import cli_command  # noqa: E402
from planner.plan import ParallelConfig  # noqa: E402

TARGETS = {"median_abs_error_pct": 5.0, "max_abs_error_pct": 15.0, "spearman": 0.9,
           "median_abs_memory_error_pct": 10.0, "search_within_pct": 5.0}


@dataclass(frozen=True)
class SweepPlan:
    """One sweep entry: a name (run folder), a model preset, and the split (world = product)."""

    name: str
    model: str
    parallel: dict

    def config(self, seq_len: int) -> ParallelConfig:
        kw = {"precision": "fp32", "seq_len": seq_len, **self.parallel}
        if kw.get("vpp", 1) > 1:
            kw.setdefault("schedule", "interleaved")
        return ParallelConfig(**kw)


def _p(name, model, **kw) -> SweepPlan:
    return SweepPlan(name, model, kw)


G, L = "tiny-gpt", "tiny-llama"
SWEEP: tuple[SweepPlan, ...] = (
    # world size 1
    _p("g-w1-mb4", G, micro_batch=4, global_batch=8),
    _p("g-w1-mb8", G, micro_batch=8, global_batch=8),
    _p("g-w1-mb2-full", G, micro_batch=2, global_batch=8, recompute="full"),
    _p("l-w1-mb4", L, micro_batch=4, global_batch=8),
    _p("l-w1-mb2-sel", L, micro_batch=2, global_batch=8, recompute="selective"),
    # world size 2: data parallel and sharding
    _p("g-dp2-ddp", G, dp=2, micro_batch=4, global_batch=8),
    _p("g-dp2-zero1", G, dp=2, micro_batch=4, global_batch=8, sharding="zero1"),
    _p("g-dp2-zero2", G, dp=2, micro_batch=4, global_batch=8, sharding="zero2"),
    _p("g-dp2-fsdp", G, dp=2, micro_batch=4, global_batch=8, sharding="fsdp"),
    _p("l-dp2-ddp-mb2", L, dp=2, micro_batch=2, global_batch=8),
    _p("l-dp2-fsdp-full", L, dp=2, micro_batch=4, global_batch=8, sharding="fsdp", recompute="full"),
    # world size 2: tensor parallel
    _p("g-tp2", G, tp=2, micro_batch=4, global_batch=8),
    _p("g-tp2-sp", G, tp=2, micro_batch=4, global_batch=8, sequence_parallel=True),
    _p("l-tp2", L, tp=2, micro_batch=4, global_batch=8),
    _p("l-tp2-sp-sel", L, tp=2, micro_batch=4, global_batch=8, sequence_parallel=True, recompute="selective"),
    # world size 2: pipeline schedules
    _p("g-pp2-1f1b", G, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
    _p("g-pp2-gpipe", G, pp=2, micro_batch=2, global_batch=8, schedule="gpipe"),
    _p("g-pp2-interleaved", G, pp=2, vpp=2, micro_batch=2, global_batch=8, schedule="interleaved"),
    _p("g-pp2-zb", G, pp=2, micro_batch=2, global_batch=8, schedule="zb"),
    _p("l-pp2-1f1b-mb1", L, pp=2, micro_batch=1, global_batch=8, schedule="1f1b"),
    # world size 4 (4 ranks on the host's cores)
    _p("g-dp4", G, dp=4, micro_batch=2, global_batch=8),
    _p("g-dp2-pp2", G, dp=2, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
    _p("g-tp2-dp2", G, tp=2, dp=2, micro_batch=4, global_batch=8),
    _p("l-dp4-fsdp", L, dp=4, micro_batch=2, global_batch=8, sharding="fsdp"),
    _p("l-pp4-1f1b", L, pp=4, micro_batch=1, global_batch=8, schedule="1f1b"),
    _p("l-tp2-pp2", L, tp=2, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
)


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


QUIET_CORES = 0.3  # others' CPU use (cores) below which the machine counts as quiet


def wait_quiet(max_wait_s: float) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes use less than QUIET_CORES cores;
    returns the last reading."""
    t0 = time.perf_counter()
    busy = cpu_busy_cores(0.5)
    while busy is not None and busy > QUIET_CORES and time.perf_counter() - t0 < max_wait_s:
        time.sleep(2.0)
        busy = cpu_busy_cores(0.5)
    return busy


def externally_contended(summary: dict | None) -> bool:
    """``contended`` by someone else. The executor flags a run when a rank waited for a CPU more
    than 20% of the step (planner.records.RUN_QUEUE_LIMIT); with more ranks than cores that wait
    is the plan's own oversubscription (1 - cores/ranks of the time), so only the excess counts."""
    from planner.records import RUN_QUEUE_LIMIT

    if not summary or summary.get("status") != "contended":
        return False
    m = summary.get("measured") or {}
    waits = list((m.get("run_queue_fraction") or {}).values())
    world = (summary.get("env") or {}).get("world_size") or 1
    cores = os.cpu_count() or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    own = 1.0 - min(1.0, cores / world)
    if not waits:
        return True
    return max(waits) - own > RUN_QUEUE_LIMIT


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


def calibrated_speed_flops(results_path: Path) -> float | None:
    """That GEMM's one-rank rate in recorded calibration results (median over passes), or None."""
    try:
        results = json.loads(Path(results_path).read_text())
        row = next(r for r in results["contention"] if r["ranks"] == 1)
        return float(row["per_rank"][0]["flops_per_s"])
    except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError):
        return None


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


# ----- where one rank's time goes (op classes, thread CPU time) ------------------------------------
OP_CLASSES = (("gemm", ("aten::mm", "aten::addmm", "aten::bmm")),
              ("attention core (SDPA)", ("flash_attention", "scaled_dot_product")),
              ("activation (gelu/silu)", ("gelu", "silu")),
              ("layernorm", ("layer_norm",)),
              ("cross-entropy", ("log_softmax", "nll_loss")),
              ("small elementwise (rmsnorm, rope, residual)",
               ("aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::stack",
                "aten::neg", "aten::sub", "aten::div")),
              ("bias-grad sums", ("aten::sum",)),
              ("copies / casts", ("aten::copy_", "aten::_to_copy", "aten::clone")),
              ("fill / alloc", ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty")))


def _op_class(name: str) -> str:
    for label, keys in OP_CLASSES:
        if any(name == k or (not k.startswith("aten::") and k in name) for k in keys):
            return label
    return "other (views, autograd bookkeeping)"


def op_profile(model_name: str, micro_batch: int) -> dict:
    """One rank, one thread, no parallelism: fwd, bwd and AdamW(foreach=False) as the executor
    runs them, timed in thread CPU time (robust to other processes), and the fwd+bwd op time
    split by class from torch.profiler (self time, scaled to the step's CPU time)."""
    import collections
    import statistics as st

    import torch
    from torch.profiler import ProfilerActivity, profile

    from executor.model import build_model, lm_loss
    from planner.catalog import load_model

    torch.set_num_threads(1)
    spec = load_model(model_name)
    model = build_model(spec, tie_embeddings=spec.tied_embeddings)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    x = torch.randint(0, spec.vocab_size, (micro_batch, spec.seq_len + 1))
    clk = time.thread_time

    def step():
        t0 = clk()
        loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        t1 = clk()
        loss.backward()
        t2 = clk()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, clk() - t2

    for _ in range(2):
        step()
    ts = [step() for _ in range(5)]
    fwd, bwd, optim = (st.median(t[i] for t in ts) for i in range(3))
    agg: collections.Counter = collections.Counter()
    for _ in range(2):  # the first profiled step pays the profiler's start-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            lm_loss(model(x[:, :-1]), x[:, 1:]).backward()
        agg = collections.Counter()
        for e in prof.key_averages():
            agg[_op_class(e.key)] += e.self_cpu_time_total
    total = sum(agg.values()) or 1.0
    return {"model": model_name, "micro_batch": micro_batch, "forward_s": fwd, "backward_s": bwd,
            "optimizer_s": optim, "classes_s": {k: (fwd + bwd) * v / total for k, v in agg.most_common()}}


def op_profiles(profile: str, log=print) -> list[dict]:
    """op_profile of both shapes in a subprocess (torch), with the cost model's fwd/bwd/opt."""
    import json
    import subprocess

    from planner.cost.step import predict_plan
    from planner.catalog import load_model
    from planner.plan import Plan

    out = []
    for name in (G, L):
        proc = subprocess.run([sys.executable, __file__, "--op-profile", name, "4"], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        line = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not line:
            log(f"  op profile of {name} failed: {proc.stderr.strip()[-200:]}")
            continue
        prof = json.loads(line[-1])
        spec = load_model(name)
        plan = Plan(model=spec, hardware=profile, n_nodes=1, gpus_per_node=1,
                    parallel=ParallelConfig(micro_batch=4, global_batch=4, seq_len=spec.seq_len, precision="fp32"))
        t = predict_plan(plan).to_dict()["breakdown"]["time"]
        prof["predicted"] = {"forward_s": t["forward_s"], "backward_s": t["backward_s"] + t["recompute_s"],
                             "optimizer_s": t["optimizer_s"]}
        out.append(prof)
        log(f"  op profile {name} mb4: measured fwd {prof['forward_s']:.4f} bwd {prof['backward_s']:.4f} "
            f"opt {prof['optimizer_s']:.4f} s (CPU time); predicted {t['forward_s']:.4f} / "
            f"{prof['predicted']['backward_s']:.4f} / {t['optimizer_s']:.4f}")
    return out


def op_profile_lines(profiles: list[dict], start: list[dict] = ()) -> list[str]:
    """The op profiles after the sweep (``profiles``) against the cost model, with the same
    profile taken before the first round (``start``) where there is one: the same work on one
    rank minutes apart, i.e. how far the machine's speed moved during the sweep."""
    if not profiles:
        return []
    before = {p["model"]: p for p in start}
    lines = ["", "One rank, one thread, one micro-batch of 4 (thread CPU time, so other processes do not "
             "inflate it; `python benchmarks/local_sweep.py --op-profile MODEL 4`): the cost model against "
             "the executor's own modules, and where the measured forward+backward time goes by op class "
             "(torch.profiler self time)" + (", measured after the last round and, for the machine's drift "
             "during the sweep, before the first:" if before else ":"), ""]
    if before:
        lines += ["| model | phase | predicted (ms) | measured before (ms) | error before | measured after (ms) | "
                  "error after |", "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| model | phase | predicted (ms) | measured (ms) | error |", "|---|---|---|---|---|"]
    for p in profiles:
        for ph in ("forward_s", "backward_s", "optimizer_s"):
            pr, me = p["predicted"][ph], p[ph]
            first = before.get(p["model"])
            cells = "– | – | " if before else ""
            if first:
                # against the prediction of the profile in use then (a per-round pass may differ)
                pr0 = first.get("predicted", p["predicted"])[ph]
                own = "" if abs(pr0 - pr) <= 1e-9 * max(pr, 1e-30) else f" (predicted then {pr0 * 1e3:.1f})"
                cells = f"{first[ph] * 1e3:.1f}{own} | {100 * (pr0 - first[ph]) / first[ph]:+.1f}% | "
            lines.append(f"| {p['model']} | {ph[:-2]} | {pr * 1e3:.1f} | {cells}{me * 1e3:.1f} | "
                         f"{100 * (pr - me) / me:+.1f}% |")
    lines += ["", "| op class | " + " | ".join(f"{p['model']} (ms, share)" for p in profiles) + " |",
              "|---|" + "---|" * len(profiles)]
    labels = []
    for p in profiles:
        labels += [k for k in p["classes_s"] if k not in labels]
    for k in labels:
        cells = []
        for p in profiles:
            v = p["classes_s"].get(k, 0.0)
            tot = p["forward_s"] + p["backward_s"]
            cells.append(f"{v * 1e3:.1f} ({100 * v / tot:.0f}%)")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


# ----- report ---------------------------------------------------------------------------------
def _stats(df):
    from planner.report import aggregate

    return aggregate(df)


def _fmt(x, spec=".3g"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _rss_note(runs) -> str:
    """How the process view (RSS growth) compares with the allocator peak the targets use."""
    ok = runs[(runs["status"] == "ok") & runs["measured_rss_peak_memory_bytes"].notna()
              & runs["measured_peak_memory_bytes"].notna()] if "measured_rss_peak_memory_bytes" in runs else runs[:0]
    if ok.empty:
        return "RSS growth was not recorded for these runs."
    ratio = (ok["measured_rss_peak_memory_bytes"] / ok["measured_peak_memory_bytes"]).median()
    err = (100 * (ok["predicted_peak_memory_bytes"] / ok["measured_rss_peak_memory_bytes"] - 1)).abs().median()
    return (f"The process view, RSS high-water minus the rank's baseline, is a median {ratio:.2f}x the "
            f"allocator peak for world size <= 2 (it adds the torch runtime's and glibc's own memory, "
            f"which has no GPU counterpart); against it the prediction's median |error| is {err:.1f}%.")


SPEED_BAND = 0.05
"""Runs whose machine speed was within this fraction of the calibration's count as 'near'."""


def speed_lines(df, reference_flops: float | None, per_round: bool = False) -> list[str]:
    """Report lines on the machine's drift: the speed probe before each kept run against the
    calibration's, and the step-time error of the ok runs made near the calibrated speed apart
    from the others (a diagnostic: the targets count every ok run)."""
    if not reference_flops or "speed_vs_calibration" not in df or df["speed_vs_calibration"].isna().all():
        return []
    ok = df[(df["status"] == "ok") & df["speed_vs_calibration"].notna()]
    if ok.empty:
        return []
    ratio = ok["speed_vs_calibration"]
    near = ok[(ratio - 1.0).abs() <= SPEED_BAND]
    far = ok[(ratio - 1.0).abs() > SPEED_BAND]

    def errors(sub):
        if sub.empty:
            return "none"
        e = sub["error_pct"].abs()
        return f"{len(sub)}, median \\|error\\| {e.median():.1f}% (worst {e.max():.1f}%)"
    there = "median over the rounds' passes, each run against its own round's" if per_round else "there"
    return [f"Machine speed (drift since the profile was measured): just before each run the sweep timed "
            f"one thread's fp32 GEMM (the calibration's one-rank contention GEMM, {reference_flops / 1e9:.1f} "
            f"GFLOP/s {there}; `machine_speed_flops`). Over the world size ≤ 2 runs kept it was "
            f"x{ratio.median():.2f} the calibration's (range x{ratio.min():.2f}–x{ratio.max():.2f}; per plan in "
            f"the last column). Runs made within ±{100 * SPEED_BAND:.0f}% of the calibrated speed: "
            f"{errors(near)}; the others: {errors(far)}. The predictions never see this probe.", ""]


def _verdict(value, target, higher_is_better=False):
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "**met**" if ok else "**not met**"


def _round_spread(df, names: dict, round_times: dict) -> tuple[float, float] | None:
    """(median, max) over the plans of ``df`` with two or more measured rounds of the rounds'
    range (slowest - fastest) / median round, in percent; None without such plans."""
    per_plan = []
    for d in df["run_dir"]:
        times = [t for t in round_times.get(names.get(d, d), []) if t]
        if len(times) >= 2:
            per_plan.append(100.0 * (max(times) - min(times)) / statistics.median(times))
    return (statistics.median(per_plan), max(per_plan)) if per_plan else None


def profile_source(args) -> str:
    """The report's words on where the profile came from (the sweep's calibration mode)."""
    if getattr(args, "calibrate_each_round", False):
        pass_min = " / ".join(f"{t / 60:.1f}" for t in getattr(args, "pass_s", []))
        return (f"measured by this sweep, one pass just before each round (`clusterplan calibrate "
                f"--out {args.out_dir}/round<k>/profile.yaml --save-results …/calibration.json`, "
                f"{pass_min} min): each round's plans were predicted from their own round's pass. "
                f"`{args.profile}` is the median over the passes (what `calibrate --repeat {args.rounds}` "
                f"writes; raw results in `{args.calibration_results}`) and serves the search check below")
    if getattr(args, "calibrated_s", None):
        return (f"measured by this sweep just before its first run: `clusterplan calibrate --repeat "
                f"{args.calibrate} --save-results {args.calibration_results}`, {args.calibrated_s / 60:.0f} min")
    return "`clusterplan calibrate`"


def write_reports(comp, names: dict, results: dict, search: dict | None, report: Path, args, t_total: float,
                  busy_before: list[str], profiles: list[dict] = (), round_times: dict | None = None,
                  profiles_start: list[dict] = (), round_errors: dict | None = None) -> None:
    from planner.io import atomic_write_text
    from planner.report import plot_breakdown, plot_scatter

    df = comp.runs.copy()
    df["name"] = [names.get(d, d) for d in df["run_dir"]]
    # a run flagged contended only by its own oversubscription (4 ranks on 2 cores) counts as ok
    own = [d for d in df["run_dir"] if d in names and results[names[d]][1] is not None
           and results[names[d]][1].get("status") == "contended" and not externally_contended(results[names[d]][1])]
    df.loc[df["run_dir"].isin(own), "status"] = "ok"
    df["oversubscribed"] = df["run_dir"].isin(own)
    df["attempts"] = [results[names[d]][2] if d in names else 1 for d in df["run_dir"]]

    def others(d):
        vals = [b for b in (results[names[d]][3] if d in names else []) if b is not None]
        return max(vals) if vals else float("nan")
    df["others_cores"] = [others(d) for d in df["run_dir"]]
    df["speed_flops"] = [(results[names[d]][4] or [math.nan])[-1] if d in names else math.nan
                         for d in df["run_dir"]]
    each_round = getattr(args, "calibrate_each_round", False)
    if each_round:
        # each run against the calibration pass its prediction came from (in its round's folder)
        per_run = [calibrated_speed_flops(Path(d).parent / "calibration.json") for d in df["run_dir"]]
        df["speed_vs_calibration"] = [f / r if r else math.nan for f, r in zip(df["speed_flops"], per_run)]
        known = [r for r in per_run if r]
        reference = statistics.median(known) if known else None
    else:
        reference = calibrated_speed_flops(getattr(args, "calibration_results", None) or Path(args.report).with_name(
            Path(args.profile).stem + "-calibration.json"))
        df["speed_vs_calibration"] = df["speed_flops"] / reference if reference else math.nan
    df["rounds_error_pct"] = [" / ".join(_fmt(x, "+.1f") for x in (round_errors or {}).get(n, []))
                              for n in df["name"]]
    small = df[df["world_size"].astype(float) <= 2]
    big = df[df["world_size"].astype(float) == 4]
    st_small, st_big, st_all = _stats(small), _stats(big), _stats(df)
    csv = report.with_suffix(".csv")
    atomic_write_text(csv, df.to_csv(index=False))

    class _C:  # what plot_* need
        def __init__(self, runs):
            self.runs = runs.reset_index(drop=True)
            self.stats = _stats(self.runs)

    scatter = plot_scatter(_C(df), report.with_name(report.stem + "-scatter.png"))
    breakdown = plot_breakdown(_C(small), report.with_name(report.stem + "-breakdown.png"))

    cmd = ".venv/bin/python benchmarks/local_sweep.py" + (f" --profile {args.profile}" if args.profile_given else "")
    for flag, default in (("out_dir", "runs/local-sweep"), ("report", "reports/local-validation.md"),
                          ("steps", 8), ("warmup", 3), ("rounds", 3), ("calibrate", 0)):
        if getattr(args, flag) != default:
            cmd += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    if getattr(args, "quick_calibration", False):
        cmd += " --quick-calibration"
    if each_round:
        cmd += " --calibrate-each-round"
    profile_note = profile_source(args)
    L_ = ["# Local validation: predicted vs measured on this machine", "",
          f"Regenerate: `{cmd}` (≈{t_total / 60:.0f} min; runs under `{args.out_dir}/`, git-ignored).", "",
          f"Profile: `{args.profile}` ({profile_note}). Each plan was predicted from "
          + ("its round's profile" if each_round else "it") + " and the "
          "prediction stored in the plan file *before* it ran with "
          f"`clusterplan run PLAN --steps {args.steps} --warmup {args.warmup}`, the whole list {args.rounds} "
          "time(s), round after round (round 1 in the listed order, round 2 reversed, later rounds shuffled, so a slow spell "
          "of the machine falls on different plans each round); the measured step time is the median over the measured steps of the "
          "slowest rank's wall time, of the round with the median error (all rounds in 'rounds (s)' with their errors; with one "
          "prediction for all rounds that is the round of the median time); memory is the largest rank's peak "
          "of live bytes in the CPU tensor allocator from model build through two warm-up steps (the CPU "
          "counterpart of `torch.cuda.max_memory_allocated`; executor/README.md) against the predicted "
          "per-rank peak. Precision fp32, gloo, "
          "one torch thread per rank. error = (predicted − measured) / measured. Statistics count runs "
          "with status `ok`; `contended` runs (a rank waited for a CPU more than 20% of the step beyond the "
          "plan's own oversubscription, 1 − cores/ranks) were rerun once and are shown but not counted if "
          "still contended.", "",
          f"Machine state: {len(busy_before)} other executor/benchmark/test processes when the sweep "
          f"started; before each run the sweep waited up to {args.wait_quiet:.0f} s for other processes "
          f"to use < {QUIET_CORES} cores ('others' cores' below: CPU other processes used just before "
          f"the run, max over attempts); load average {_fmt(load_average(), '.2f')} at the end.", "",
          "## Targets", "",
          "| target | world size ≤ 2 | verdict | world size 4 (reported separately) |",
          "|---|---|---|---|",
          f"| median \\|step-time error\\| ≤ 5% | {_fmt(st_small['median_abs_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['median_abs_error_pct'], 5.0)} | {_fmt(st_big['median_abs_error_pct'], '.1f')}% |",
          f"| worst \\|step-time error\\| ≤ 15% | {_fmt(st_small['max_abs_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['max_abs_error_pct'], 15.0)} | {_fmt(st_big['max_abs_error_pct'], '.1f')}% |",
          f"| Spearman ρ (throughput) ≥ 0.9 | {_fmt(st_small['spearman'], '.3f')} | "
          f"{_verdict(st_small['spearman'], 0.9, True)} | {_fmt(st_big['spearman'], '.3f')} |",
          f"| median \\|peak-memory error\\| ≤ 10% | {_fmt(st_small['median_abs_memory_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['median_abs_memory_error_pct'], 10.0)} | "
          f"{_fmt(st_big['median_abs_memory_error_pct'], '.1f')}% |", "",
          f"All {st_all['n_ok']} ok runs together: median |error| {_fmt(st_all['median_abs_error_pct'], '.1f')}%, "
          f"worst {_fmt(st_all['max_abs_error_pct'], '.1f')}%, Spearman {_fmt(st_all['spearman'], '.3f')}, "
          f"memory median {_fmt(st_all['median_abs_memory_error_pct'], '.1f')}%.", ""]
    L_ += [_rss_note(small), ""]
    spread = _round_spread(small, names, round_times or {})
    if spread is not None:
        L_ += [f"Run-to-run spread (the noise floor of these numbers): per plan, (slowest − fastest round) / "
               f"median round; over the world size ≤ 2 plans its median is {spread[0]:.1f}% and its largest "
               f"{spread[1]:.1f}% (the same plan, minutes apart, on this shared machine).", ""]
    L_ += speed_lines(small, reference, each_round)
    L_ += ["## Search check", ""]
    if search is None:
        L_ += ["`planner.search` was not available when this report was made: not checked.", ""]
    else:
        L_ += ["One search (`planner.search.search`, tiny-llama, 2 local ranks, global batch 8); its top five "
               "plans run the same way (the same rounds, each plan's median round kept):", "",
               "| rank | plan | parallel | predicted (s) | measured (s) | rounds (s) | status |",
               "|---|---|---|---|---|---|---|"]
        for r in search["rows"]:
            rounds_cell = " / ".join(_fmt(t, ".3f") for t in r.get("rounds_s") or [])
            L_.append(f"| {r['rank']} | `{r['plan_id']}` | {r['parallel']} | {_fmt(r['predicted_step_time_s'], '.4f')}"
                      f" | {_fmt(r['measured_step_time_s'], '.4f')} | {rounds_cell or '–'} | {r['status']} |")
        L_ += ["", f"The first plan measures {_fmt(search['first_vs_best_pct'], '+.1f')}% against the best of the "
               f"five (target: best or within 5%): {'**met**' if search['met'] else '**not met**'}.", ""]
    L_ += ["## Per plan", "",
           "| name | ws | parallel | status | others' cores | pred (s) | meas (s) [p10–p90] | rounds (s) | error | "
           "pred mem (MiB) | meas mem (MiB) | mem error | fwd pred/meas | bwd pred/meas | opt pred/meas | "
           "comm+bubble pred/meas | speed vs cal. |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.sort_values(["world_size", "name"]).to_dict(orient="records"):
        status = r["status"] + (" (own oversubscription)" if r["oversubscribed"] else "") + \
            (f" (run {r['attempts']}x)" if r["attempts"] > 1 else "")

        def ph(p):
            return f"{_fmt(r[f'predicted_{p}_s'], '.3f')}/{_fmt(r[f'measured_{p}_s'], '.3f')}"
        L_.append(f"| {r['name']} | {int(r['world_size'])} | {r['parallel']} | {status} | "
                  f"{_fmt(r['others_cores'], '.1f')} | "
                  f"{_fmt(r['predicted_step_time_s'], '.4f')} | {_fmt(r['measured_step_time_s'], '.4f')} "
                  f"[{_fmt(r['measured_step_time_s_p10'], '.3f')}–{_fmt(r['measured_step_time_s_p90'], '.3f')}] | "
                  f"{' / '.join(_fmt(t, '.3f') for t in (round_times or {}).get(r['name'], []))}"
                  f"{' (' + r['rounds_error_pct'] + ')' if r['rounds_error_pct'] else ''} | "
                  f"{_fmt(r['error_pct'], '+.1f')}% | {_fmt(r['predicted_peak_memory_bytes'] / 2**20, '.1f')} | "
                  f"{_fmt(r['measured_peak_memory_bytes'] / 2**20, '.1f')} | {_fmt(r['memory_error_pct'], '+.1f')}% | "
                  f"{ph('forward')} | {ph('backward')} | {ph('optimizer')} | {ph('comm_bubble')} | "
                  f"{_fmt(r['speed_vs_calibration'], '.2f')} |")
    if comp.failed:
        L_ += ["", "Failed runs:", ""] + [f"- {names.get(f['run_dir'], f['run_dir'])} ({f['parallel']}): {f['error']}"
                                         for f in comp.failed]
    contended = [r for r in df.to_dict(orient="records") if r["status"] == "contended"]
    if contended:
        L_ += ["", "Contended after the rerun (not counted): " + ", ".join(r["name"] for r in contended)]
    L_ += ["", "## Where the error comes from", "", *attribution(df), *op_profile_lines(list(profiles), list(profiles_start)), "",
           f"![scatter]({scatter.name})", "", f"![breakdown, world size ≤ 2]({breakdown.name})", ""]
    atomic_write_text(report, "\n".join(L_) + "\n")


def attribution(df) -> list[str]:
    """Median signed phase errors over ok runs, by group: which phase the error sits in."""
    ok = df[df["status"] == "ok"]
    lines = ["Median signed error per phase (ok runs; forward/backward/optimizer from the traced step, "
             "comm+bubble = traced wall − phases):", "",
             "| group | n | step | forward | backward | optimizer | comm+bubble (pred − meas, ms) |",
             "|---|---|---|---|---|---|---|"]
    groups = {"world size 1": ok[ok["world_size"] == 1], "world size 2": ok[ok["world_size"] == 2],
              "world size 4": ok[ok["world_size"] == 4],
              "pipelined": ok[ok["parallel"].str.contains(" pp[2-9]", regex=True)],
              "tensor parallel": ok[ok["parallel"].str.startswith("tp2")]}

    def med(col, sub):
        vals = [v for v in sub[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return statistics.median(vals) if vals else None

    for label, sub in groups.items():
        if not len(sub):
            continue
        gap = [(p - m) * 1000 for p, m in zip(sub["predicted_comm_bubble_s"], sub["measured_comm_bubble_s"])
               if p is not None and m is not None and not (math.isnan(p) or math.isnan(m))]
        lines.append(f"| {label} | {len(sub)} | {_fmt(med('error_pct', sub), '+.1f')}% | "
                     f"{_fmt(med('forward_error_pct', sub), '+.1f')}% | {_fmt(med('backward_error_pct', sub), '+.1f')}% | "
                     f"{_fmt(med('optimizer_error_pct', sub), '+.1f')}% | "
                     f"{_fmt(statistics.median(gap) if gap else None, '+.1f')} |")
    return lines


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
          f"others use {_fmt(cpu_busy_cores(1.0), '.1f')} cores now", flush=True)
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
    print(f"wrote {report}  (all ok runs: median |err| {_fmt(st['median_abs_error_pct'], '.1f')}%, "
          f"max {_fmt(st['max_abs_error_pct'], '.1f')}%, spearman {_fmt(st['spearman'], '.3f')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
