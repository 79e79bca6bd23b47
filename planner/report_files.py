"""The comparison's files, each written atomically: compare.md, compare.csv, the PNG plots
(:mod:`planner.report_plots`) and the self-contained compare.html (:mod:`planner.report_html`)."""
from __future__ import annotations

import os
from pathlib import Path

from planner.io import atomic_write_text
from planner.report import Comparison, markdown, pipeline_stages
from planner.report_html import html_report
from planner.report_plots import plot_breakdown, plot_scatter, plot_timeline


def write_report(comp: Comparison, out_dir: str | os.PathLike) -> list[Path]:
    """compare.md, compare.csv, compare.html, scatter.png, breakdown.png and
    timeline_<plan>.png for each pipelined run. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out_dir / "compare.csv", comp.runs.to_csv(index=False))]
    pngs = []
    if len(comp.runs):
        pngs.append(plot_scatter(comp, out_dir / "scatter.png"))
        pngs.append(plot_breakdown(comp, out_dir / "breakdown.png"))
    ok_dirs = set(comp.runs["run_dir"]) if len(comp.runs) else set()
    for run in comp.loaded:
        if str(run.run_dir) in ok_dirs and pipeline_stages(run) > 1:
            p = plot_timeline(run, out_dir / f"timeline_{run.plan_id or run.run_dir.name}.png")
            if p:
                pngs.append(p)
    md = markdown(comp)
    md += "\nInteractive (hover for each plan): [compare.html](compare.html)\n"
    if pngs:
        md += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    paths.insert(0, atomic_write_text(out_dir / "compare.md", md))
    paths.append(atomic_write_text(out_dir / "compare.html", html_report(comp)))
    return paths + pngs
