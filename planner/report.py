"""Predicted vs measured: join each run's prediction with what the executor measured.

A run directory holds ``summary.json`` and ``records.jsonl`` (schema: ``executor/README.md``).
:func:`compare_runs` returns a :class:`Comparison` whose ``runs`` is a pandas DataFrame (one row
per joined run); :mod:`planner.report_files` writes ``compare.md``, ``compare.csv``, the PNG plots
(:mod:`planner.report_plots`) and ``compare.html`` (:mod:`planner.report_html`).

Error convention: ``error_pct = 100 * (predicted - measured) / measured`` (positive: the model
predicts slower / more memory than measured). Rank agreement: Spearman's rho of predicted and
measured throughput (tokens/s) over the runs with status ``ok`` (Spearman 1904; scipy.stats).

Phases (per rank, one step, median over ranks as the executor reports them): forward; backward
including recomputation (the executor times recompute inside backward); optimizer; and
"comm_bubble" = traced step wall - forward - backward - optimizer, which on the measured side holds
the pipeline send/recv waits and the bubble (a rank waiting for its neighbour cannot tell the two
apart), compared with the predicted exposed communication plus bubble.
"""
from __future__ import annotations

import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from planner.errors import InputError
from planner.io import read_json_object, read_jsonl
from planner.records import SCHEMA_VERSION

PHASES = ("forward", "backward", "optimizer", "comm_bubble")
MIN_FIELDS = ("predicted.step_time_s", "measured.step_time_s", "measured.step_time_s_p10",
              "measured.step_time_s_p90", "predicted.peak_memory_bytes", "measured.peak_memory_bytes",
              "measured.tokens_per_s")


@dataclass(frozen=True)
class Run:
    """One run directory, read."""

    run_dir: Path
    summary: dict
    records: tuple[dict, ...]

    @property
    def plan_id(self) -> str:
        """The summary's plan id as a safe name: hex digits only (a plan id is a sha256 prefix), so
        a crafted summary cannot steer a report file name out of its folder."""
        raw = str(self.summary.get("plan_id", ""))
        return raw if re.fullmatch(r"[0-9a-f]{1,64}", raw) else ""

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def prediction(self) -> dict:
        return self.summary.get("prediction") or {}

    def records_of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]


def load_run(run_dir: str | os.PathLike) -> Run:
    run_dir = Path(run_dir)
    summary = read_json_object(run_dir / "summary.json", "run_dir", f"{run_dir} has no summary.json")
    version = summary.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InputError("run_dir", f"{run_dir}/summary.json has schema_version {version!r}; this clusterplan "
                                    f"reads {SCHEMA_VERSION}")
    rec_path = run_dir / "records.jsonl"
    records = tuple(read_jsonl(rec_path)) if rec_path.exists() else ()
    return Run(run_dir=run_dir, summary=summary, records=records)


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def error_pct(predicted: float | None, measured: float | None) -> float | None:
    """100 * (predicted - measured) / measured, or None when either is missing."""
    if predicted is None or measured is None or measured == 0:
        return None
    return 100.0 * (predicted - measured) / measured


def predicted_phases(prediction: dict) -> dict[str, float | None]:
    """Per-phase predicted seconds from ``Prediction.to_dict()['breakdown']['time']``."""
    t = _get(prediction, "breakdown.time") or {}
    fwd, bwd, opt = _num(t.get("forward_s")), _num(t.get("backward_s")), _num(t.get("optimizer_s"))
    rec = _num(t.get("recompute_s")) or 0.0
    comm = t.get("exposed_comm_s")
    comm_total = sum(_num(v) or 0.0 for v in comm.values()) if isinstance(comm, dict) else _num(comm)
    bubble = _num(t.get("bubble_s"))
    out = {"forward": fwd, "backward": None if bwd is None else bwd + rec, "optimizer": opt,
           "comm_bubble": None if comm_total is None and bubble is None else (comm_total or 0.0) + (bubble or 0.0),
           "exposed_comm": comm_total, "bubble": bubble}
    if isinstance(comm, dict):
        for axis, v in comm.items():
            out[f"exposed_comm_{axis}"] = _num(v)
    return out


def measured_phases(run: Run) -> dict[str, float | None]:
    """Per-phase measured seconds: the summary's ``measured.phases`` (median over ranks) and,
    from the trace records, comm_bubble = median over ranks of (wall - forward - backward - optimizer)."""
    ph = _get(run.summary, "measured.phases") or {}
    out: dict[str, float | None] = {"forward": _num(ph.get("forward_s")), "backward": _num(ph.get("backward_s")),
                                    "optimizer": _num(ph.get("optimizer_s")), "comm": _num(ph.get("comm_s"))}
    gaps = []
    for trace in run.records_of("trace"):
        busy = sum(e["end_s"] - e["start_s"] for e in trace.get("events", [])
                   if e.get("phase") in ("forward", "backward", "backward_input", "backward_weight", "optimizer"))
        wall = _num(trace.get("wall_s"))
        if wall is not None:
            gaps.append(max(0.0, wall - busy))
    out["comm_bubble"] = statistics.median(gaps) if gaps else None
    return out


@dataclass
class Comparison:
    """Joined runs (``runs`` DataFrame), failed runs (listed, not joined), aggregate statistics."""

    runs: Any  # pandas.DataFrame
    failed: list[dict] = field(default_factory=list)
    loaded: list[Run] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, float | int | None]:
        return aggregate(self.runs)

    def to_json(self) -> dict:
        rows = []
        for rec in self.runs.to_dict(orient="records"):
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
        return {"runs": rows, "failed": self.failed, **self.stats}


def _row(run: Run) -> dict:
    s, pred = run.summary, run.prediction
    p_step = _num(_get(s, "predicted.step_time_s")) or _num(pred.get("step_time_s"))
    m_step = _num(_get(s, "measured.step_time_s"))
    m_tps = _num(_get(s, "measured.tokens_per_s"))
    p_tps = _num(_get(s, "predicted.tokens_per_s")) or _num(pred.get("tokens_per_s"))
    if p_tps is None and p_step and m_tps and m_step:
        p_tps = m_tps * m_step / p_step  # same tokens per step
    p_mem = _num(_get(s, "predicted.peak_memory_bytes")) or _num(pred.get("peak_memory_bytes"))
    m_mem = _num(_get(s, "measured.peak_memory_bytes"))
    row = {
        "run_dir": str(run.run_dir), "plan_id": run.plan_id, "parallel": s.get("parallel", ""),
        "status": run.status, "world_size": _get(s, "env.world_size"),
        "predicted_step_time_s": p_step, "measured_step_time_s": m_step,
        "measured_step_time_s_p10": _num(_get(s, "measured.step_time_s_p10")),
        "measured_step_time_s_p90": _num(_get(s, "measured.step_time_s_p90")),
        "error_pct": error_pct(p_step, m_step),
        "predicted_tokens_per_s": p_tps, "measured_tokens_per_s": m_tps,
        "tokens_per_s_error_pct": error_pct(p_tps, m_tps),
        "predicted_peak_memory_bytes": p_mem, "measured_peak_memory_bytes": m_mem,
        "memory_error_pct": error_pct(p_mem, m_mem),
        "measured_memory_source": _get(s, "measured.peak_memory_source"),
        "measured_rss_peak_memory_bytes": _num(_get(s, "measured.rss_peak_memory_bytes")),
        "measured_n_steps": _get(s, "measured.n_steps"),
    }
    pp, mp = predicted_phases(pred), measured_phases(run)
    for phase in PHASES:
        row[f"predicted_{phase}_s"] = pp.get(phase)
        row[f"measured_{phase}_s"] = mp.get(phase)
        row[f"{phase}_error_pct"] = error_pct(pp.get(phase), mp.get(phase))
    row["predicted_exposed_comm_s"] = pp.get("exposed_comm")
    row["predicted_bubble_s"] = pp.get("bubble")
    row["measured_comm_s"] = mp.get("comm")
    return row


def compare_runs(run_dirs: Iterable[str | os.PathLike]) -> Comparison:
    """Read run directories and join prediction with measurement. Runs with status ``failed``
    (or without a measured step time) go to ``failed``; ``contended`` runs are joined but kept out
    of the aggregate statistics."""
    import pandas as pd

    rows, failed, loaded = [], [], []
    for d in run_dirs:
        run = load_run(d)
        loaded.append(run)
        if run.status == "failed" or _num(_get(run.summary, "measured.step_time_s")) is None:
            failed.append({"run_dir": str(run.run_dir), "plan_id": run.plan_id, "status": run.status,
                           "parallel": run.summary.get("parallel", ""), "error": run.summary.get("error"),
                           "rank": run.summary.get("rank"), "oom": bool(run.summary.get("oom", False))})
            continue
        rows.append(_row(run))
    columns = list(_row(Run(Path("."), {}, ())).keys())
    return Comparison(runs=pd.DataFrame(rows, columns=columns), failed=failed, loaded=loaded)


def aggregate(df) -> dict[str, float | int | None]:
    """Median and max |step-time error|, median |memory error| and Spearman's rho of predicted
    vs measured tokens/s, over runs with status ``ok``."""
    ok = df[df["status"] == "ok"] if len(df) else df
    errs = [abs(e) for e in ok["error_pct"] if e is not None and not math.isnan(e)] if len(ok) else []
    merrs = [abs(e) for e in ok["memory_error_pct"] if e is not None and not math.isnan(e)] if len(ok) else []
    out: dict[str, float | int | None] = {
        "n_runs": int(len(df)), "n_ok": int(len(ok)),
        "median_abs_error_pct": statistics.median(errs) if errs else None,
        "max_abs_error_pct": max(errs) if errs else None,
        "median_abs_memory_error_pct": statistics.median(merrs) if merrs else None,
        "max_abs_memory_error_pct": max(merrs) if merrs else None,
        "spearman": None,
    }
    pairs = [(p, m) for p, m in zip(ok["predicted_tokens_per_s"], ok["measured_tokens_per_s"])
             if p is not None and m is not None and not (math.isnan(p) or math.isnan(m))] if len(ok) else []
    if len(pairs) >= 2:
        from scipy.stats import spearmanr

        rho = spearmanr([p for p, _ in pairs], [m for _, m in pairs]).statistic
        out["spearman"] = None if rho is None or math.isnan(rho) else float(rho)
    return out


# ----- report files --------------------------------------------------------------------------
def fmt(x, digits=3, scale=1.0, suffix="") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * scale:.{digits}g}{suffix}"


def fmt_pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.1f}%"


def markdown(comp: Comparison, *, title: str = "Predicted vs measured") -> str:
    df, st = comp.runs, comp.stats
    lines = [f"# {title}", "",
             "error = (predicted − measured) / measured. Statistics over runs with status `ok` "
             f"({st['n_ok']} of {st['n_runs']} joined; {len(comp.failed)} failed).", "",
             f"- median |step-time error|: {fmt(st['median_abs_error_pct'], 3, 1, '%')}",
             f"- max |step-time error|: {fmt(st['max_abs_error_pct'], 3, 1, '%')}",
             f"- median |peak-memory error|: {fmt(st['median_abs_memory_error_pct'], 3, 1, '%')}",
             f"- Spearman ρ (predicted vs measured tokens/s): {fmt(st['spearman'], 3)}", "",
             "| plan | parallel | status | pred step (s) | meas step (s) [p10–p90] | error | pred tok/s | "
             "meas tok/s | pred mem (MiB) | meas mem (MiB) | mem error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict(orient="records"):
        lines.append(
            f"| `{r['plan_id']}` | {r['parallel']} | {r['status']} | {fmt(r['predicted_step_time_s'], 4)} | "
            f"{fmt(r['measured_step_time_s'], 4)} [{fmt(r['measured_step_time_s_p10'], 3)}–"
            f"{fmt(r['measured_step_time_s_p90'], 3)}] | {fmt_pct(r['error_pct'])} | "
            f"{fmt(r['predicted_tokens_per_s'], 4)} | {fmt(r['measured_tokens_per_s'], 4)} | "
            f"{fmt(r['predicted_peak_memory_bytes'], 4, 2**-20)} | {fmt(r['measured_peak_memory_bytes'], 4, 2**-20)} | "
            f"{fmt_pct(r['memory_error_pct'])} |")
    lines += ["", "## Phases (seconds per step, one rank)", "",
              "comm+bubble: measured = step wall − forward − backward − optimizer (pipeline waits and "
              "bubble); predicted = exposed communication + bubble. Backward includes recomputation.", "",
              "| plan | " + " | ".join(f"{p} pred / meas" for p in PHASES) + " |",
              "|---|" + "---|" * len(PHASES)]
    for r in df.to_dict(orient="records"):
        cells = [f"{fmt(r[f'predicted_{p}_s'], 3)} / {fmt(r[f'measured_{p}_s'], 3)} ({fmt_pct(r[f'{p}_error_pct'])})"
                 for p in PHASES]
        lines.append(f"| `{r['plan_id']}` | " + " | ".join(cells) + " |")
    if comp.failed:
        lines += ["", "## Failed runs (not joined)", "", "| run | plan | parallel | rank | OOM | error |",
                  "|---|---|---|---|---|---|"]
        for f in comp.failed:
            err = (f.get("error") or "").replace("|", "/")
            lines.append(f"| {f['run_dir']} | `{f['plan_id']}` | {f['parallel']} | {f.get('rank')} | "
                         f"{'yes' if f.get('oom') else 'no'} | {err} |")
    contended = [r for r in df.to_dict(orient="records") if r["status"] == "contended"]
    if contended:
        lines += ["", f"{len(contended)} run(s) measured on a contended machine are shown but not counted: "
                  + ", ".join(f"`{r['plan_id']}`" for r in contended)]
    return "\n".join(lines) + "\n"


def measured_events(run: Run) -> list[dict]:
    """Trace events with the rank's pipeline coordinate (from its env record)."""
    pp_of = {r["rank"]: (r.get("coord") or {}).get("pp", 0) for r in run.records_of("env")}
    dp_of = {r["rank"]: (r.get("coord") or {}) for r in run.records_of("env")}
    out = []
    for trace in run.records_of("trace"):
        coord = dp_of.get(trace["rank"], {})
        if any(coord.get(a, 0) != 0 for a in ("dp", "tp", "cp")):
            continue  # one pipeline (dp = tp = cp = 0) is enough to draw
        for e in trace.get("events", []):
            out.append({**e, "rank": trace["rank"], "row": pp_of.get(trace["rank"], trace["rank"])})
    return out


KIND_NAMES = {"F": "forward", "B": "backward", "W": "backward_weight", "BI": "backward_input",
               "R": "recompute", "O": "optimizer", "C": "comm"}  # planner.schedule task kinds


def pipeline_stages(run: Run) -> int:
    """Pipeline stages of a run: from the prediction's timeline, else the env records."""
    stages = {int(t.get("stage", 0)) for t in run.prediction.get("timeline") or []}
    if stages:
        return len(stages)
    pps = {(r.get("coord") or {}).get("pp", 0) for r in run.records_of("env")}
    return len(pps) or 1
