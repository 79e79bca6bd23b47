"""Placement on an emulated two-node cluster: predicted before each run, then measured (issue 26).

    sudo .venv/bin/python benchmarks/multinode_sweep.py [--mbit 200 1000] [--rounds 3]
        [--base PROFILE] [--out reports/multinode-validation.md]

For each link rate: ``clusterplan emulate up --nodes 2`` (2 ranks per node, so 4 ranks share
this machine's cores, which the cost model prices), ``clusterplan calibrate --emulated``: the node
profile ``--base`` (the host's CPU as ``clusterplan calibrate`` measured it: calibrate this host
first, a profile measured on another host predicts another CPU) with its inter-node link
measured, then every plan of :data:`PLANS` (pairs that differ only in
which axis crosses the slow link) predicted, written, and run with ``clusterplan run --emulated``
``--rounds`` times, round after round; each plan keeps its median step time. The report lists
predicted vs measured per plan, the rank correlation of predicted and measured step times, and
for each pair whether the plan predicted faster is the one measured faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner import emulate  # noqa: E402
from planner.cost.step import predict_plan  # noqa: E402
from planner.executor_rules import dp_kind  # noqa: E402
from planner.hardware import host_cpu_model  # noqa: E402
from planner.launch import cli_command  # noqa: E402
from planner.model import ModelSpec  # noqa: E402
from planner.plan import ParallelConfig, Plan  # noqa: E402

MODEL = ModelSpec(name="gpt-8m", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                  vocab_size=4096, seq_len=128)
"""A GPT small enough that four ranks on two cores finish a step in about a second."""

BASE = dict(micro_batch=2, global_batch=8, seq_len=128, precision="fp32")
# (name, pair, parallel): the two plans of a pair differ in the axis that crosses the nodes
# (rank order, fastest axis first; 2 ranks per node, so the first axis of size 2 stays inside).
PLANS = (
    ("tp-in dp-across", "tp/dp", dict(tp=2, dp=2, order="tp-cp-dp-pp")),
    ("dp-in tp-across", "tp/dp", dict(tp=2, dp=2, order="dp-cp-tp-pp")),
    ("dp-in pp-across", "pp/dp", dict(pp=2, dp=2, order="tp-cp-dp-pp")),
    ("pp-in dp-across", "pp/dp", dict(pp=2, dp=2, order="tp-cp-pp-dp")),
    ("tp-in pp-across", "tp/pp", dict(tp=2, pp=2, order="tp-cp-dp-pp")),
    ("pp-in tp-across", "tp/pp", dict(tp=2, pp=2, order="pp-cp-tp-dp")),
    ("dp4 ddp", "ddp/fsdp", dict(dp=4)),
    ("dp4 fsdp", "ddp/fsdp", dict(dp=4, sharding="fsdp")),
    ("dp4 zero1", "zero1/pp4", dict(dp=4, sharding="zero1")),
    ("pp4", "zero1/pp4", dict(pp=4)),
)


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def predicted_phases(parallel: ParallelConfig, prediction: dict) -> tuple[float, float]:
    """(in-stage, between-stage) predicted seconds, split where the executor's spans split the step:
    between-stage, the bubble, the exposed pipeline sends and the gradient all-reduce the executor
    runs after a pipeline's backward (``dp_kind`` ddp or zero1 with pp > 1); in-stage, the rest
    (compute, the optimizer and the collectives the executor runs inside forward and backward:
    tp, cp, ep, dp through DDP's hooks or FSDP)."""
    t, p = prediction["breakdown"]["time"], parallel
    dp_between = p.pp > 1 and dp_kind(p.sharding, p.tp, p.dp) in ("ddp", "zero1")
    between = t["bubble_s"] + t["exposed_comm_s"]["pp"] + (t["exposed_comm_s"]["dp"] if dp_between else 0.0)
    return prediction["step_time_s"] - between, between


def measured_phases(summary: dict) -> tuple[float, float] | None:
    """(in-stage, between-stage) measured seconds: the busiest rank's forward + backward +
    optimizer spans (medians over the steps), and the step time less that."""
    m = summary.get("measured") or {}
    per_rank, step = m.get("phases_per_rank"), m.get("step_time_s")
    if not per_rank or not step:
        return None
    busy = max(sum(ph.get(k) or 0.0 for k in ("forward", "backward", "optimizer")) for ph in per_rank.values())
    return busy, step - busy


def _run_dir(work: Path, mbit: float, r: int, name: str) -> Path:
    return work / f"run-{mbit:g}-{r}-{name.replace(' ', '_')}"


def _profile_path(work: Path, mbit: float) -> Path:
    return work / f"emulated-{mbit:g}.yaml"


def calibrate_link(mbit: float, work: Path, base: str) -> Path:
    """``clusterplan calibrate --emulated`` on the cluster that is up: the node profile ``base``
    whose inter-node link is measured (latency, bandwidth of 2 rank pairs at once), not typed."""
    path = _profile_path(work, mbit)
    done = subprocess.run(cli_command("calibrate", "--emulated", "--gpus-per-node", "2", "--base", base,
                                      "--out", str(path)),
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"calibrate --emulated at {mbit:g} Mbit/s failed: {done.stdout[-400:]}{done.stderr[-400:]}")
    print(next((line for line in done.stdout.splitlines() if "inter-node:" in line), "").strip(), flush=True)
    return path


def predicted_rows(mbit: float, work: Path) -> list[dict]:
    """Every plan of :data:`PLANS` on the measured node profile in ``work``, predicted and written
    to ``work``."""
    profile = _profile_path(work, mbit)
    if not profile.exists():
        raise SystemExit(f"{profile}: no measured node profile (the sweep writes it with calibrate --emulated)")
    rows = []
    for name, pair, extra in PLANS:
        plan = Plan(model=MODEL, hardware=str(profile), n_nodes=2, gpus_per_node=2,
                    parallel=ParallelConfig(**BASE, **extra))
        pred = predict_plan(plan)
        path = plan.with_prediction(pred.to_dict()).save(work / f"{mbit:g}-{name.replace(' ', '_')}.json")
        rows.append({"mbit": mbit, "name": name, "pair": pair, "plan": plan.parallel.megatron_notation(),
                     "order": plan.parallel.order, "predicted_s": pred.step_time_s, "path": path, "runs": [],
                     "predicted_phases": predicted_phases(plan.parallel, pred.to_dict()), "phases": []})
    return rows


def repredicted(mbit: float, rounds: int, work: Path) -> list[dict]:
    """The plans predicted by today's cost model against the runs an earlier sweep left in
    ``work`` (nothing runs; the measurements do not depend on the model)."""
    rows = predicted_rows(mbit, work)
    for row in rows:
        for r in range(rounds):
            path = _run_dir(work, mbit, r, row["name"]) / "summary.json"
            summary = json.loads(path.read_text()) if path.exists() else {}
            row["runs"].append((summary.get("measured") or {}).get("step_time_s"))
            row["phases"].append(measured_phases(summary))
    return rows


def sweep(mbit: float, rounds: int, work: Path, steps: int, warmup: int, base: str) -> list[dict]:
    emulate.up(2, mbit)
    try:
        calibrate_link(mbit, work, base)
        rows = predicted_rows(mbit, work)
        for r in range(rounds):
            for row in rows:
                out = _run_dir(work, mbit, r, row["name"])
                cmd = cli_command("run", str(row["path"]), "--emulated", "--out", str(out), "--steps", str(steps),
                                  "--warmup", str(warmup), "--overwrite", "--oversubscribe")
                subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
                step = (summary.get("measured") or {}).get("step_time_s")
                row["runs"].append(step)
                row["phases"].append(measured_phases(summary))
                print(f"{mbit:g} Mbit/s round {r + 1}: {row['name']}: {summary.get('status')} {step}", flush=True)
        return rows
    finally:
        emulate.down()


def report(rows: list[dict], rounds: int, mbits: list[float], base: str, work: str, repredict: bool = False,
           when: str = "") -> str:
    args = (f"--mbit {' '.join(f'{m:g}' for m in mbits)} --rounds {rounds} --base {base}"
            + ("" if work == "runs/multinode" else f" --work {work}"))
    lines = ["# Placement on an emulated two-node cluster: predicted vs measured", "",
             f"Regenerate: `sudo .venv/bin/python benchmarks/multinode_sweep.py {args}`"
             + ("" if base == "local-cpu" else f" after `clusterplan calibrate --out {base}` on the same host "
                "(its header: what it measured)") + ".", ""]
    if when:
        lines += [f"Measured {when} on {os.cpu_count()} cores of {host_cpu_model()}.", ""]
    if repredict:
        lines = ["# Placement on an emulated two-node cluster: today's model against the last sweep's runs", "",
                 f"Regenerate: `.venv/bin/python benchmarks/multinode_sweep.py {args} --repredict` after the sweep "
                 "(`reports/multinode-validation.md`, whose predictions were made before each run); the measured "
                 "times are that sweep's, the predictions today's.", ""]
    lines += [f"Two network-namespace nodes x 2 ranks (4 ranks on this machine's cores), each node's link shaped "
              f"with tc tbf; {MODEL.name} ({MODEL.n_layers} layers, hidden {MODEL.hidden_size}), fp32, global batch "
              f"{BASE['global_batch']}, micro-batch {BASE['micro_batch']}, seq {BASE['seq_len']}. Each plan predicted "
              f"(node profile `{base}`, inter-node link measured by `clusterplan calibrate --emulated`, each node on "
              "half the host's cores, its own (taskset), as a real node's are), median of the rounds.", ""]
    for mbit in mbits:
        sub = [r for r in rows if r["mbit"] == mbit]
        lines += [f"## {mbit:g} Mbit/s", "", "| plan | rank order | predicted s | measured s (median) | error | runs |",
                  "|---|---|---|---|---|---|"]
        measured = []
        for r in sub:
            ok = [x for x in r["runs"] if x is not None]
            r["measured_s"] = statistics.median(ok) if ok else None
            err = f"{100 * (r['predicted_s'] / r['measured_s'] - 1):+.1f}%" if r["measured_s"] else "n/a"
            lines.append(f"| {r['name']}: {r['plan']} | {r['order']} | {r['predicted_s']:.3f} | "
                         f"{r['measured_s'] if r['measured_s'] is None else format(r['measured_s'], '.3f')} | {err} | "
                         f"{', '.join('failed' if x is None else f'{x:.3f}' for x in r['runs'])} |")
            if r["measured_s"]:
                measured.append(r)
        errs = [abs(r["predicted_s"] / r["measured_s"] - 1) for r in measured]
        rho = _spearman([r["predicted_s"] for r in measured], [r["measured_s"] for r in measured])
        lines += ["", f"- Median |error| {100 * statistics.median(errs):.1f}%, worst {100 * max(errs):.1f}% "
                      f"({len(measured)} plans measured); Spearman rank correlation {rho:.2f}." if errs else "- nothing measured"]
        for pair in dict.fromkeys(r["pair"] for r in sub):
            a, b = [r for r in sub if r["pair"] == pair]
            if a["measured_s"] and b["measured_s"]:
                pred_fast = a if a["predicted_s"] < b["predicted_s"] else b
                meas_fast = a if a["measured_s"] < b["measured_s"] else b
                lines.append(f"- {pair}: predicted faster {pred_fast['name']}, measured faster {meas_fast['name']}"
                             f" ({'agrees' if pred_fast is meas_fast else 'DISAGREES'}).")
        lines += ["", *phase_table(sub), ""]
    return "\n".join(lines) + "\n"


def _err(pred: float, meas: float) -> str:
    return f"{100 * (pred / meas - 1):+.1f}%" if meas > 0 else "n/a"


def phase_table(rows: list[dict]) -> list[str]:
    """Per plan, the step split where the executor's spans split it (:func:`predicted_phases`),
    predicted vs measured (medians over the rounds)."""
    lines = ["Per phase (s): in-stage = the busiest rank's forward, backward and optimizer spans, with the "
             "collectives run inside them (tp; dp through DDP's hooks or FSDP); between = the rest of the step "
             "(pipeline sends and waits, the bubble, the gradient all-reduce after a pipeline's backward).", "",
             "| plan | in-stage predicted | in-stage measured | error | between predicted | between measured | error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = [ph for ph in r["phases"] if ph is not None]
        pin, pbetween = r["predicted_phases"]
        if not ok:
            lines.append(f"| {r['name']} | {pin:.3f} | n/a | n/a | {pbetween:.3f} | n/a | n/a |")
            continue
        min_, mbetween = statistics.median(a for a, _ in ok), statistics.median(b for _, b in ok)
        between_err = _err(pbetween, mbetween) if mbetween > 0.05 * (min_ + mbetween) else "(small)"
        lines.append(f"| {r['name']} | {pin:.3f} | {min_:.3f} | {_err(pin, min_)} | {pbetween:.3f} | {mbetween:.3f} "
                     f"| {between_err} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbit", type=float, nargs="+", default=[200.0, 1000.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--work", default="runs/multinode")
    ap.add_argument("--base", default="local-cpu",
                    help="the node's CPU profile (default local-cpu; `clusterplan calibrate --out P` on this host first)")
    ap.add_argument("--out", default=None, help="default: reports/multinode-validation.md, with --repredict "
                                                 "reports/multinode-repredicted.md")
    ap.add_argument("--repredict", action="store_true",
                    help="run nothing: predict the plans with today's model against the runs left in --work")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for mbit in a.mbit:
        rows += repredicted(mbit, a.rounds, work) if a.repredict else sweep(mbit, a.rounds, work, a.steps, a.warmup, a.base)
    when = "" if a.repredict else f"{start}-{time.strftime('%H:%M', time.gmtime())} UTC"
    text = report(rows, a.rounds, a.mbit, a.base, a.work, a.repredict, when)
    a.out = a.out or str(ROOT / "reports" / ("multinode-repredicted.md" if a.repredict else "multinode-validation.md"))
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
