"""The local validation sweep's report (:func:`write_reports`) and its one-rank op-class profile
(:func:`op_profile`, run by ``benchmarks/local_sweep.py --op-profile`` in a subprocess)."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.demo import load_average  # noqa: E402
from planner.plan import ParallelConfig  # noqa: E402
from benchmarks.local_sweep_plans import G, L, QUIET_CORES, calibrated_speed_flops  # noqa: E402


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
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "local_sweep.py"), "--op-profile", name, "4"], capture_output=True,
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


def _stats(df):
    from planner.report import aggregate

    return aggregate(df)


def fmt_number(x, spec=".3g"):
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
    from planner.report_plots import plot_breakdown, plot_scatter

    df = comp.runs.copy()
    df["name"] = [names.get(d, d) for d in df["run_dir"]]
    # more ranks than cores (4 on 2): waiting for a core is the plan's own; the executor flags only the excess
    cores = len(os.sched_getaffinity(0))
    df["oversubscribed"] = [d in names and results[names[d]][1] is not None
                            and ((results[names[d]][1].get("env") or {}).get("world_size") or 1) > cores
                            for d in df["run_dir"]]
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
    df["rounds_error_pct"] = [" / ".join(fmt_number(x, "+.1f") for x in (round_errors or {}).get(n, []))
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
    for flag in ("only", "no_search", "no_op_profile"):  # a part of the sweep: the same part again
        value = getattr(args, flag, None)
        if value:
            cmd += f" --{flag.replace('_', '-')}" + ("" if value is True else f" {value}")
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
          f"the run, max over attempts); load average {fmt_number(load_average(), '.2f')} at the end.", "",
          "## Targets", "",
          "| target | world size ≤ 2 | verdict | world size 4 (reported separately) |",
          "|---|---|---|---|",
          f"| median \\|step-time error\\| ≤ 5% | {fmt_number(st_small['median_abs_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['median_abs_error_pct'], 5.0)} | {fmt_number(st_big['median_abs_error_pct'], '.1f')}% |",
          f"| worst \\|step-time error\\| ≤ 15% | {fmt_number(st_small['max_abs_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['max_abs_error_pct'], 15.0)} | {fmt_number(st_big['max_abs_error_pct'], '.1f')}% |",
          f"| Spearman ρ (throughput) ≥ 0.9 | {fmt_number(st_small['spearman'], '.3f')} | "
          f"{_verdict(st_small['spearman'], 0.9, True)} | {fmt_number(st_big['spearman'], '.3f')} |",
          f"| median \\|peak-memory error\\| ≤ 10% | {fmt_number(st_small['median_abs_memory_error_pct'], '.1f')}% | "
          f"{_verdict(st_small['median_abs_memory_error_pct'], 10.0)} | "
          f"{fmt_number(st_big['median_abs_memory_error_pct'], '.1f')}% |", "",
          f"All {st_all['n_ok']} ok runs together: median |error| {fmt_number(st_all['median_abs_error_pct'], '.1f')}%, "
          f"worst {fmt_number(st_all['max_abs_error_pct'], '.1f')}%, Spearman {fmt_number(st_all['spearman'], '.3f')}, "
          f"memory median {fmt_number(st_all['median_abs_memory_error_pct'], '.1f')}%.", ""]
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
            rounds_cell = " / ".join(fmt_number(t, ".3f") for t in r.get("rounds_s") or [])
            L_.append(f"| {r['rank']} | `{r['plan_id']}` | {r['parallel']} | {fmt_number(r['predicted_step_time_s'], '.4f')}"
                      f" | {fmt_number(r['measured_step_time_s'], '.4f')} | {rounds_cell or '–'} | {r['status']} |")
        L_ += ["", f"The first plan measures {fmt_number(search['first_vs_best_pct'], '+.1f')}% against the best of the "
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
            return f"{fmt_number(r[f'predicted_{p}_s'], '.3f')}/{fmt_number(r[f'measured_{p}_s'], '.3f')}"
        L_.append(f"| {r['name']} | {int(r['world_size'])} | {r['parallel']} | {status} | "
                  f"{fmt_number(r['others_cores'], '.1f')} | "
                  f"{fmt_number(r['predicted_step_time_s'], '.4f')} | {fmt_number(r['measured_step_time_s'], '.4f')} "
                  f"[{fmt_number(r['measured_step_time_s_p10'], '.3f')}–{fmt_number(r['measured_step_time_s_p90'], '.3f')}] | "
                  f"{' / '.join(fmt_number(t, '.3f') for t in (round_times or {}).get(r['name'], []))}"
                  f"{' (' + r['rounds_error_pct'] + ')' if r['rounds_error_pct'] else ''} | "
                  f"{fmt_number(r['error_pct'], '+.1f')}% | {fmt_number(r['predicted_peak_memory_bytes'] / 2**20, '.1f')} | "
                  f"{fmt_number(r['measured_peak_memory_bytes'] / 2**20, '.1f')} | {fmt_number(r['memory_error_pct'], '+.1f')}% | "
                  f"{ph('forward')} | {ph('backward')} | {ph('optimizer')} | {ph('comm_bubble')} | "
                  f"{fmt_number(r['speed_vs_calibration'], '.2f')} |")
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
        lines.append(f"| {label} | {len(sub)} | {fmt_number(med('error_pct', sub), '+.1f')}% | "
                     f"{fmt_number(med('forward_error_pct', sub), '+.1f')}% | {fmt_number(med('backward_error_pct', sub), '+.1f')}% | "
                     f"{fmt_number(med('optimizer_error_pct', sub), '+.1f')}% | "
                     f"{fmt_number(statistics.median(gap) if gap else None, '+.1f')} |")
    return lines
