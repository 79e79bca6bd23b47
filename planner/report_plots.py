"""The comparison's PNG plots (matplotlib, headless): predicted vs measured step time, the phases
of each plan, and each pipelined run's schedule, predicted above measured."""
from __future__ import annotations

import math
from pathlib import Path

from planner.io import atomic_write_bytes
from planner.report import KIND_NAMES, PHASES, Comparison, Run, fmt, measured_events


def _savefig(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_scatter(comp: Comparison, path: Path) -> Path:
    """Predicted vs measured step time, measured p10–p90 as error bars, y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = comp.runs
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for status, marker in (("ok", "o"), ("contended", "x")):
        sub = df[df["status"] == status]
        if not len(sub):
            continue
        meas = sub["measured_step_time_s"].astype(float)
        lo = (meas - sub["measured_step_time_s_p10"].astype(float).fillna(meas)).clip(lower=0)
        hi = (sub["measured_step_time_s_p90"].astype(float).fillna(meas) - meas).clip(lower=0)
        pred = sub["predicted_step_time_s"].astype(float)
        ax.errorbar(pred, meas, yerr=[lo, hi], fmt=marker, capsize=3, label=f"{status} ({len(sub)})")
        for x, y, name in zip(pred, meas, sub["parallel"].astype(str)):  # every point says which plan
            if x > 0 and y > 0:
                ax.annotate(name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6)
    vals = [v for v in list(df["predicted_step_time_s"]) + list(df["measured_step_time_s"])
            if v is not None and not math.isnan(v) and v > 0]
    if vals:
        lo_v, hi_v = min(vals) / 1.2, max(vals) * 1.2
        ax.plot([lo_v, hi_v], [lo_v, hi_v], "k--", lw=1, label="predicted = measured")
        if hi_v / lo_v > 20:  # a log scale only where the times span decades
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo_v, hi_v)
        ax.set_ylim(lo_v, hi_v)
    ax.set_xlabel("predicted step time (s)")
    ax.set_ylabel("measured step time (s), median and p10–p90")
    st = comp.stats
    if st["median_abs_error_pct"] is None:
        ax.set_title("no run finished ok: nothing to compare")
    else:
        ax.set_title(f"median |step-time error| {fmt(st['median_abs_error_pct'], 2, 1, '%')}, "
                     f"Spearman {fmt(st['spearman'], 2)}")
    ax.legend(fontsize=8)
    return _savefig(fig, path)


def plot_breakdown(comp: Comparison, path: Path) -> Path:
    """Per plan, the predicted phases stacked beside the measured ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = comp.runs
    n = max(1, len(df))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * n + 2), 4.2))
    colors = dict(zip(PHASES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")))
    width = 0.38
    for i, r in enumerate(df.to_dict(orient="records")):
        for side, dx, hatch in (("predicted", -width / 2, ""), ("measured", width / 2, "//")):
            bottom = 0.0
            for p in PHASES:
                v = r.get(f"{side}_{p}_s")
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                ax.bar(i + dx, v, width, bottom=bottom, color=colors[p], hatch=hatch, edgecolor="white",
                       label=p if i == 0 and side == "predicted" else None)
                bottom += v
            total = r.get(f"{side}_step_time_s")
            if total is not None and not math.isnan(total):
                ax.plot([i + dx - width / 2, i + dx + width / 2], [total, total], "k-", lw=1.5)
    ax.set_xticks(range(len(df)))
    ax.set_xticklabels([f"{r['plan_id'][:8]}\n{r['parallel']}" for r in df.to_dict(orient="records")],
                       fontsize=7, rotation=20)
    ax.set_ylabel("seconds per step")
    ax.set_title("per plan: predicted (left) beside measured (hatched); black line = step time", fontsize=9)
    ax.legend(fontsize=8)
    return _savefig(fig, path)


def plot_timeline(run: Run, path: Path) -> Path | None:
    """Predicted pipeline schedule (top) above the measured one (bottom), one row per stage rank."""
    pred = run.prediction.get("timeline") or []
    meas = measured_events(run)
    if not pred and not meas:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"forward": "#4c72b0", "backward": "#dd8452", "backward_input": "#937860",
              "backward_weight": "#e8b07a", "optimizer": "#55a868", "comm": "#c44e52", "recompute": "#8172b3"}
    rows = max([int(t.get("stage", 0)) for t in pred] + [int(e["row"]) for e in meas] + [0]) + 1
    fig, axes = plt.subplots(2, 1, figsize=(10, 1.2 + 0.8 * rows * 2), sharex=True)
    for ax, items, label, key in ((axes[0], pred, "predicted", "kind"), (axes[1], meas, "measured", "phase")):
        for t in items:
            row = int(t.get("stage", 0)) if key == "kind" else int(t["row"])
            kind = KIND_NAMES.get(str(t.get(key)), str(t.get(key)))
            start, end = float(t["start_s"]), float(t["end_s"])
            ax.barh(row, end - start, left=start, color=colors.get(kind, "#999999"), edgecolor="white", height=0.8)
            mb = t.get("micro_batch")
            if mb is not None and end - start > 0:
                ax.text((start + end) / 2, row, str(mb), ha="center", va="center", fontsize=6, color="white")
        ax.set_yticks(range(rows))
        ax.set_yticklabels([f"stage {i}" for i in range(rows)])
        ax.invert_yaxis()
        ax.set_title(f"{label} ({run.plan_id} {run.summary.get('parallel', '')})", fontsize=9)
    axes[1].set_xlabel("seconds from the step's start")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[0].legend(handles, list(colors), fontsize=7, ncol=len(colors), loc="lower center",
                   bbox_to_anchor=(0.5, 1.15), frameon=False)
    return _savefig(fig, path)
