"""``compare.html``: the comparison as one self-contained page (no script, no file or font from
elsewhere): the statistics; predicted vs measured step time as an SVG scatter whose points name
their plan on hover (SVG ``<title>``); the per-run and per-phase tables; and each pipelined run's
schedule, predicted above measured, every task naming its stage, micro-batch and times on hover.
"""
from __future__ import annotations

import html
import math

from planner.report import KIND_NAMES, PHASES, Comparison, Run, fmt, fmt_pct, measured_events, pipeline_stages

KIND_COLORS = {"forward": "#4c72b0", "backward": "#dd8452", "backward_input": "#937860",
               "backward_weight": "#e8b07a", "optimizer": "#55a868", "comm": "#c44e52", "recompute": "#8172b3"}
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}svg{background:#fff;border:1px solid #ddd}
.pt:hover{stroke:#000;stroke-width:2}.task:hover{opacity:.6}.axis{font-size:11px}"""
_SCATTER_PX, _MARGIN_PX = 460, 60


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _axis(lo: float, hi: float, log: bool):
    """A map from seconds to 0..1 along an axis, and its tick values."""
    if log:
        a, b = math.log10(lo), math.log10(hi)
        ticks = [10.0 ** k for k in range(math.ceil(a), math.floor(b) + 1)]
        return (lambda v: (math.log10(v) - a) / (b - a)), ticks
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 6)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step) + 1)]
    return (lambda v: (v - lo) / (hi - lo)), ticks


def scatter_svg(comp: Comparison) -> str:
    """Predicted (x) vs measured (y) step time, measured p10-p90 as bars, the y = x line; a log
    scale only where the times span more than a decade and a half."""
    rows = [r for r in comp.runs.to_dict(orient="records")
            if _finite(r["predicted_step_time_s"]) and _finite(r["measured_step_time_s"])]
    if not rows:
        return "<p>No run finished with a measured step time: nothing to plot.</p>"
    vals = [v for r in rows for v in (r["predicted_step_time_s"], r["measured_step_time_s"],
                                      r["measured_step_time_s_p10"], r["measured_step_time_s_p90"]) if _finite(v)]
    lo, hi = min(vals) / 1.15, max(vals) * 1.15
    to_unit, ticks = _axis(lo, hi, hi / lo > 30)
    size, m = _SCATTER_PX, _MARGIN_PX

    def x(v):
        return m + to_unit(v) * size

    def y(v):
        return m / 2 + (1 - to_unit(v)) * size

    out = [f'<svg role="img" aria-label="predicted vs measured step time" width="{size + 1.5 * m:.0f}" '
           f'height="{size + 1.5 * m:.0f}" xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}" stroke="#888" '
           'stroke-dasharray="5,4"><title>predicted = measured</title></line>']
    for t in ticks:
        out.append(f'<text class="axis" x="{x(t):.1f}" y="{size + m / 2 + 16:.1f}" text-anchor="middle">{t:g}</text>')
        out.append(f'<text class="axis" x="{m - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text class="axis" x="{m + size / 2}" y="{size + m / 2 + 36}" text-anchor="middle">'
               'predicted step time (s)</text>')
    out.append(f'<text class="axis" transform="translate(14,{m / 2 + size / 2}) rotate(-90)" text-anchor="middle">'
               'measured step time (s), median and p10-p90</text>')
    for r in rows:
        p, meas = r["predicted_step_time_s"], r["measured_step_time_s"]
        p10 = r["measured_step_time_s_p10"] if _finite(r["measured_step_time_s_p10"]) else meas
        p90 = r["measured_step_time_s_p90"] if _finite(r["measured_step_time_s_p90"]) else meas
        color = "#4c72b0" if r["status"] == "ok" else "#999999"
        tip = (f"{r['parallel']} (plan {r['plan_id']}, {r['status']})\npredicted {fmt(p, 4)} s, measured "
               f"{fmt(meas, 4)} s [p10 {fmt(p10, 3)}, p90 {fmt(p90, 3)}], error {fmt_pct(r['error_pct'])}")
        out.append(f'<line x1="{x(p):.1f}" y1="{y(p10):.1f}" x2="{x(p):.1f}" y2="{y(p90):.1f}" stroke="{color}"/>')
        out.append(f'<circle class="pt" cx="{x(p):.1f}" cy="{y(meas):.1f}" r="5" fill="{color}">'
                   f'<title>{_e(tip)}</title></circle>')
        out.append(f'<text class="axis" x="{x(p) + 7:.1f}" y="{y(meas) - 5:.1f}">{_e(r["parallel"])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _tasks(run: Run) -> tuple[list[tuple[int, str, object, float, float]], list[tuple[int, str, object, float, float]]]:
    """(row, kind, micro-batch, start, end) of the predicted and the measured schedule."""
    pred = [(int(t.get("stage", 0)), KIND_NAMES.get(str(t.get("kind")), str(t.get("kind"))), t.get("micro_batch"),
             float(t["start_s"]), float(t["end_s"])) for t in run.prediction.get("timeline") or []]
    meas = [(int(e["row"]), KIND_NAMES.get(str(e.get("phase")), str(e.get("phase"))), e.get("micro_batch"),
             float(e["start_s"]), float(e["end_s"])) for e in measured_events(run)]
    return pred, meas


def timeline_svg(run: Run, width_px: int = 1000) -> str:
    """The run's pipeline schedule, predicted rows above measured rows, on one time axis; every
    task drawn (the caption counts them)."""
    pred, meas = _tasks(run)
    if not pred and not meas:
        return ""
    stages = max(t[0] for t in pred + meas) + 1
    end = max(t[4] for t in pred + meas) or 1.0
    row_px, left = 18, 110
    height = (2 * stages + 3) * row_px + 30
    scale = (width_px - left - 10) / end
    out = [f'<svg role="img" aria-label="pipeline schedule" width="{width_px}" height="{height}" '
           'xmlns="http://www.w3.org/2000/svg">']
    top = row_px
    for label, tasks in (("predicted", pred), ("measured", meas)):
        for s in range(stages):
            out.append(f'<text class="axis" x="4" y="{top + s * row_px + 13}">{label} stage {s}</text>')
        for row, kind, mb, start, stop in tasks:
            tip = f"{label}, stage {row}: {kind}" + (f", micro-batch {mb}" if mb is not None else "") + \
                  f"\n{start:.4f} - {stop:.4f} s ({1e3 * (stop - start):.2f} ms)"
            out.append(f'<rect class="task" x="{left + start * scale:.1f}" y="{top + row * row_px + 2}" '
                       f'width="{max(0.5, (stop - start) * scale):.1f}" height="{row_px - 4}" '
                       f'fill="{KIND_COLORS.get(kind, "#999999")}"><title>{_e(tip)}</title></rect>')
        top += (stages + 1) * row_px
    for i in range(6):
        t = end * i / 5
        out.append(f'<text class="axis" x="{left + t * scale:.1f}" y="{top + 12}" text-anchor="middle">{t:.3g} s</text>')
    out.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9632;</span> {k}' for k, c in KIND_COLORS.items())
    caption = (f"{_e(run.summary.get('parallel', ''))} (plan {_e(run.plan_id)}): all {len(pred)} predicted and "
               f"{len(meas)} measured tasks of one step (the measured rows: the pipeline of dp = tp = cp = 0)")
    return f"<h3>{caption}</h3>\n<p>{legend}</p>\n" + "\n".join(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def html_report(comp: Comparison, *, title: str = "Predicted vs measured") -> str:
    st = comp.stats
    runs = comp.runs.to_dict(orient="records")
    stats = [f"median |step-time error| {fmt(st['median_abs_error_pct'], 3, 1, '%')}",
             f"max |step-time error| {fmt(st['max_abs_error_pct'], 3, 1, '%')}",
             f"median |peak-memory error| {fmt(st['median_abs_memory_error_pct'], 3, 1, '%')}",
             f"Spearman rho (tokens/s) {fmt(st['spearman'], 3)}"]
    run_rows = [[r["plan_id"], r["parallel"], r["status"], fmt(r["predicted_step_time_s"], 4),
                 fmt(r["measured_step_time_s"], 4), fmt_pct(r["error_pct"]),
                 fmt(r["predicted_peak_memory_bytes"], 4, 2 ** -20), fmt(r["measured_peak_memory_bytes"], 4, 2 ** -20),
                 fmt_pct(r["memory_error_pct"])] for r in runs]
    phase_rows = [[r["plan_id"], r["parallel"]] + [f"{fmt(r[f'predicted_{p}_s'], 3)} / {fmt(r[f'measured_{p}_s'], 3)}"
                                                   for p in PHASES] for r in runs]
    ok_dirs = {r["run_dir"] for r in runs}
    timelines = [timeline_svg(run) for run in comp.loaded
                 if str(run.run_dir) in ok_dirs and pipeline_stages(run) > 1]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>",
        f"<p>error = (predicted - measured) / measured; statistics over the {st['n_ok']} runs with status ok "
        f"of {st['n_runs']} joined ({len(comp.failed)} failed). Hover a point or a task for its plan and times.</p>",
        "<ul>" + "".join(f"<li>{_e(s)}</li>" for s in stats) + "</ul>",
        "<h2>Step time</h2>", scatter_svg(comp),
        "<p>Blue: runs with status ok; grey: contended runs (shown, not counted). Bars: measured p10-p90.</p>",
        "<h2>Runs</h2>", _table(["plan", "parallel", "status", "predicted s", "measured s", "error",
                                 "predicted MiB", "measured MiB", "memory error"], run_rows),
        "<h2>Phases (seconds per step, one rank: predicted / measured)</h2>",
        _table(["plan", "parallel"] + list(PHASES), phase_rows),
    ]
    if comp.failed:
        parts += ["<h2>Failed runs (not joined)</h2>",
                  _table(["run", "plan", "parallel", "error"],
                         [[f["run_dir"], f["plan_id"], f["parallel"], f.get("error") or ""] for f in comp.failed])]
    if timelines:
        parts += ["<h2>Pipeline schedules</h2>"] + timelines
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
