"""The memory half of ``clusterplan fit``: ``reading = factor[source] * predicted peak + offset``
over the runs with a memory reading, by linear least squares on the readings' relative errors,
with fewer memory parameters than readings (else the offset is fixed at 0, or the fit refused);
the offset only where it lowers the leave-one-out error and leaves every factor plausible."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from planner.calibrate.runs_table import MeasuredRun


@dataclass(frozen=True)
class MemoryFit:
    """``reading = factor[source] * predicted peak + offset``: the fitted values, per reading the
    in-sample and leave-one-out error (percent), and what was fixed or refused."""

    factors: dict[str, float]
    offset_bytes: float
    errors_pct: tuple[float | None, ...]
    loo_errors_pct: tuple[float | None, ...]
    note: str = ""


def _memory_design(rows, sources, with_offset: bool) -> np.ndarray:
    cols = [[pred if src == s else 0.0 for pred, _, src in rows] for s in sources]
    if with_offset:
        cols.append([1.0] * len(rows))
    return np.array(cols).T


def _memory_candidate(rows, sources, with_offset: bool):
    """One memory relation fitted to ``rows`` on relative errors (each reading weighs the same
    whatever its size): coefficients, in-sample and leave-one-out errors (percent)."""

    def solve(sub):
        A = _memory_design(sub, sources, with_offset)
        measured = np.array([m for _, m, _ in sub])
        coef, *_ = np.linalg.lstsq(A / measured[:, None], np.ones(len(sub)), rcond=None)
        return coef

    def predict_reading(coef, row):
        return float((_memory_design([row], sources, with_offset) @ coef)[0])

    coef = solve(rows)
    errors = tuple(100.0 * (predict_reading(coef, row) / row[1] - 1) for row in rows)
    loo = []
    for i, row in enumerate(rows):
        rest = rows[:i] + rows[i + 1:]
        if len({s for _, _, s in rest}) < len(sources) or len(rest) < len(coef):
            loo.append(None)  # this reading is the only one of its source: nothing to predict it from
            continue
        loo.append(100.0 * (predict_reading(solve(rest), row) / row[1] - 1))
    return coef, errors, tuple(loo)


MEMORY_FACTOR_RANGE = (0.5, 2.0)
"""A reading's plausible ratio to the predicted tensors: allocator cache, fragmentation and the
CUDA context add to them, never twice over, and a reading is never half of what is live. A fit
whose factor leaves this range (readings that barely vary, as runs sized to fill the memory
give) is explaining them with the offset alone, and is not kept."""


def _mean_abs(values) -> float:
    vals = [abs(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else math.inf


def fit_memory(runs: list[MeasuredRun], predicted_peaks: list[float]) -> MemoryFit | None:
    """The memory relation from the runs with a reading (None when no run has one): a factor per
    source, and a shared offset only where the readings can spare it (more readings than
    parameters) and it lowers the leave-one-out error (cross-validated model choice: an offset
    fitted to a few small runs can extrapolate worse than none)."""
    rows = [(p, r.measured_memory_bytes, r.memory_source) for r, p in zip(runs, predicted_peaks)
            if r.measured_memory_bytes is not None]
    if not rows:
        return None
    sources = sorted({s for _, _, s in rows})
    if len(rows) <= len(sources):
        return MemoryFit({}, 0.0, (), (), f"refused: {len(rows)} reading(s) for {len(sources)} source(s); "
                                            "a fit needs more readings than memory parameters")
    coef, errors, loo = _memory_candidate(rows, sources, with_offset=False)
    note = f"offset fixed at 0: {len(rows)} readings, {len(sources)} source(s)"
    offset = 0.0
    if len(rows) > len(sources) + 1:
        coef_o, errors_o, loo_o = _memory_candidate(rows, sources, with_offset=True)
        without, with_ = _mean_abs(loo), _mean_abs(loo_o)
        lo, hi = MEMORY_FACTOR_RANGE
        implausible = [float(c) for c in coef_o[:-1] if not lo <= c <= hi]
        if implausible:
            note = (f"offset fixed at 0: with it a factor would be {implausible[0]:.3g}, outside "
                    f"[{lo:g}, {hi:g}] (the readings barely vary with the prediction)")
        elif with_ < without:
            coef, errors, loo, offset = coef_o, errors_o, loo_o, float(coef_o[-1])
            note = f"offset fitted (leave-one-out {with_:.1f}% with it, {without:.1f}% without)"
        else:
            note = f"offset fixed at 0 (leave-one-out {without:.1f}% without it, {with_:.1f}% with)"
    factors = {s: float(c) for s, c in zip(sources, coef)}
    return MemoryFit(factors, offset, errors, loo, note)
