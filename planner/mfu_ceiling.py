"""Whether a predicted MFU goes beyond what any published run reached on the same GPU, and what
the cost model credits the plan with to get there.

``clusterplan validate`` writes ``reports/published-validation.csv``: per published row the MFU
the run reached (its published figure in MFU terms, ``mfu_published_pct``: the predicted MFU
times predicted / published step time) and the shares of its predicted step (``share_*``:
:meth:`planner.cost.prediction.Prediction.shares`). A prediction more than :data:`MARGIN_POINTS` above the
best of its profile is a claim no run backs; the check names the terms by which the model puts
the plan ahead of that run (less recomputation, bubble or exposed communication, faster compute),
so that the margin is read as the model's mechanism and not as a measurement.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from planner.io import read_input_text

ROWS_PATH = Path(__file__).resolve().parents[1] / "reports" / "published-validation.csv"
MARGIN_POINTS = 3.0
"""MFU points above the best published run on a GPU a plan may claim without naming why."""
NOTABLE_POINTS = 2.0
"""A term named as a mechanism when its share of the step differs by at least this many points."""
TERMS = (("recompute", "recomputation"), ("bubble", "pipeline bubble"), ("tp", "exposed TP communication"),
         ("dp", "exposed data-parallel / ZeRO communication"), ("pp", "pipeline send/recv"),
         ("cp", "exposed context-parallel communication"), ("ep", "expert-parallel all-to-all"),
         ("optimizer", "optimizer step"))


@dataclass(frozen=True)
class BestRun:
    row_id: int
    source: str
    config: str
    runtime: str
    mfu_pct: float
    shares: dict


@dataclass(frozen=True)
class MfuCheck:
    mfu_pct: float
    best: BestRun
    mechanisms: tuple[str, ...]

    @property
    def excess_points(self) -> float:
        return self.mfu_pct - self.best.mfu_pct

    def to_dict(self) -> dict:
        return {"mfu_pct": self.mfu_pct, "best_published_mfu_pct": self.best.mfu_pct,
                "best_published_row": self.best.row_id, "excess_points": self.excess_points,
                "mechanisms": list(self.mechanisms)}


def best_published(profile: str, path: Path = ROWS_PATH) -> BestRun | None:
    """The published row with the highest MFU on ``profile`` (None without rows or a table)."""
    if not path.exists():
        return None
    best = None
    for r in csv.DictReader(read_input_text(path, "published rows").splitlines()):
        try:
            mfu = float(r.get("mfu_published_pct") or "nan")
        except ValueError:
            continue
        if r.get("profile") != profile or r.get("status") == "skipped" or math.isnan(mfu):
            continue
        if best is None or mfu > best.mfu_pct:
            shares = {k: float(r.get(f"share_{k}") or 0.0) for k, _ in TERMS + (("compute", ""),)}
            best = BestRun(int(r["row_id"]), r.get("source", ""), r.get("config", ""), r.get("runtime", ""),
                           mfu, shares)
    return best


def mfu_check(profile: str, prediction, path: Path = ROWS_PATH) -> MfuCheck | None:
    """The check of ``prediction`` (a :class:`planner.cost.prediction.Prediction`) on ``profile``:
    None when its MFU is within :data:`MARGIN_POINTS` of the best published run there (or no
    run is known); else the mechanisms the model credits it with."""
    best = best_published(profile, path)
    mfu_pct = 100 * prediction.mfu
    if best is None or mfu_pct <= best.mfu_pct + MARGIN_POINTS:
        return None
    mine = prediction.shares()
    named = []
    for key, label in TERMS:
        ours, theirs = 100 * mine[key], 100 * best.shares.get(key, 0.0)
        if theirs - ours >= NOTABLE_POINTS:
            named.append(f"less {label} ({ours:.0f}% of its step vs {theirs:.0f}%)")
    compute_mfu = mfu_pct / max(mine["compute"], 1e-12)
    best_compute_mfu = best.mfu_pct / max(best.shares.get("compute", 1.0), 1e-12)
    if compute_mfu - best_compute_mfu >= NOTABLE_POINTS:
        stack = (f" (priced as {prediction.runtime.name}, that run as {best.runtime})"
                 if prediction.runtime.name != best.runtime else "")
        named.append(f"faster compute ({compute_mfu:.0f}% MFU over its compute time vs {best_compute_mfu:.0f}%"
                     f"{stack})")
    return MfuCheck(mfu_pct, best, tuple(named))


def describe(check: MfuCheck) -> str:
    b = check.best
    text = (f"MFU check: {check.mfu_pct:.1f}% is {check.excess_points:.1f} points above the best published run on "
            f"this GPU ({b.mfu_pct:.1f}%: {b.source} row {b.row_id}, {b.config}, {b.runtime}).")
    if check.mechanisms:
        text += " The cost model puts it ahead by " + "; ".join(check.mechanisms) + "."
    return text + " No published run confirms this combination: read the margin as the model's claim."
