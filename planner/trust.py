"""How far to trust a step time: the cross-validated errors of the published runs nearest to it.

``clusterplan validate --cross-validate`` writes ``reports/cross-validation.csv``: for every
predictable published row, the step-time error of its prediction when every value chosen by
looking at training runs was refitted without the row's source (:mod:`planner.cross_validation`).
A prediction's interval spans the 10th to 90th percentile of those errors (linear
interpolation; with few rows, nearly their range) over the rows nearest to it: the same
hardware profile, runtime (the stack priced: :mod:`planner.cost.runtime`) and parallelism family
within a factor of 8 in GPU count; failing three such rows, the same profile, runtime and family
at any scale; failing that, the same profile and runtime (an extrapolation when no published run
has the plan's family at all, e.g. expert parallelism). A prediction for a stack no published
run on its profile was priced with is an extrapolation: it gets the interval of that profile's
runs of the same family (or of any family) on other stacks, and says so. With fewer than three
rows on the profile, the runs on a profile of the same die (the same peak rates and GEMM curve: A100
40/80 GB, H100/H200; :func:`same_die_profiles`) give it, flagged as an extrapolation; failing those
too, it is an extrapolation with no interval (no validation row covers the regime).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from planner.errors import InputError
from planner.io import read_input_text
from planner.plan import ParallelConfig
from planner.profile_yaml import available_profiles, load_profile

RESIDUALS_PATH = Path(__file__).resolve().parents[1] / "reports" / "cross-validation.csv"
MIN_ROWS = 3
SCALE_FACTOR = 8
COVERAGE = 0.9


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (pos - i) * (sorted_values[j] - sorted_values[i])


def family_of(notation: str) -> str:
    """Parallelism family of a plan label (:meth:`ParallelConfig.megatron_notation`)."""
    tokens = notation.split()
    if any(t.startswith("ep") and t[2:].isdigit() and int(t[2:]) > 1 for t in tokens):
        return "expert parallel"
    if "zero3" in tokens or "fsdp" in tokens:
        return "sharded data parallel"
    degrees = [t for t in tokens if t[:2] in ("tp", "pp", "cp") and t[2:].replace("/", "").isdigit()]
    if any(any(int(d) > 1 for d in t[2:].split("/")) for t in degrees):
        return "model parallel"
    return "data parallel"


def step_time_error(metric: str, error: float) -> float:
    """predicted / measured - 1 of the step time, from the error of a row's published metric
    (a rate metric's error e is a step-time error of 1 / (1 + e) - 1)."""
    return error if metric == "step_time_s" else 1.0 / (1.0 + error) - 1.0


@dataclass(frozen=True)
class Residual:
    row_id: int
    profile: str
    runtime: str
    family: str
    num_gpus: int
    step_time_error: float


@dataclass(frozen=True)
class Trust:
    """``low_s`` / ``high_s``: the step time the nearest rows' errors put around the prediction
    (None where no rows cover the profile); ``basis`` says which rows; ``extrapolation``: no
    published run covers the profile, or none the stack."""

    low_s: float | None
    high_s: float | None
    rows: tuple[int, ...]
    basis: str
    extrapolation: bool

    def to_dict(self) -> dict:
        return {"low_s": self.low_s, "high_s": self.high_s, "rows": list(self.rows), "basis": self.basis,
                "extrapolation": self.extrapolation}


def load_residuals(path: Path = RESIDUALS_PATH) -> tuple[Residual, ...]:
    if not path.exists():
        return ()
    out = []
    for i, r in enumerate(csv.DictReader(read_input_text(path, "residuals").splitlines()), start=2):
        try:
            out.append(Residual(int(r["row_id"]), r["profile"], r["runtime"], r["family"], int(r["num_gpus"]),
                                float(r["step_time_error_cv"])))
        except (KeyError, ValueError):
            raise InputError("residuals", f"{path} line {i}: needs row_id, profile, runtime, family, num_gpus, "
                                          "step_time_error_cv") from None
    return tuple(out)


@lru_cache(maxsize=None)
def same_die_profiles(profile: str) -> tuple[str, ...]:
    """The other shipped GPU profiles whose device computes as ``profile``'s does: the same peak
    rate per dtype and the same GEMM curve (another memory size or node of one die); () for a
    profile that cannot be loaded."""
    def compute(name: str):
        d = load_profile(name).device
        return d.peak_flops_per_s, d.matmul_efficiency.points, d.matmul_efficiency_by_dtype

    try:
        own = compute(profile)
    except InputError:
        return ()
    return tuple(p for p in available_profiles() if p != profile and compute(p) == own)


def _nearest(step_time_s: float, profile: str, runtime: str, family: str, n: int,
             residuals: tuple[Residual, ...]) -> Trust | None:
    """The interval from the first tier (module docstring) with enough rows on ``profile``."""
    same = [r for r in residuals if r.profile == profile]
    stack = [r for r in same if r.runtime == runtime]
    near = [r for r in stack if r.family == family and max(r.num_gpus, n) <= SCALE_FACTOR * min(r.num_gpus, n)]
    other = f"no published run on {profile} priced as {runtime}: runs of other stacks"
    tiers = ((near, f"{profile}, {runtime}, {family}, {max(1, n // SCALE_FACTOR)}-{n * SCALE_FACTOR} GPUs", False),
             ([r for r in stack if r.family == family], f"{profile}, {runtime}, {family}, any scale", False),
             (stack, f"{profile}, {runtime}, any parallelism", family not in {r.family for r in residuals}),
             ([r for r in same if r.family == family], f"{other}, {family}", True),
             (same, f"{other}, any parallelism", True))
    for rows, basis, extrapolating in tiers:
        if len(rows) >= MIN_ROWS:
            errs = sorted(r.step_time_error for r in rows)
            # measured = predicted / (1 + error): a large error puts the measured time low
            return Trust(step_time_s / (1 + _quantile(errs, COVERAGE)),
                         step_time_s / (1 + _quantile(errs, 1 - COVERAGE)),
                         tuple(r.row_id for r in rows), basis, extrapolation=extrapolating)
    return None


def trust(step_time_s: float, profile: str, runtime: str, parallel: ParallelConfig,
          residuals: tuple[Residual, ...], kin: tuple[str, ...] | None = None) -> Trust:
    """The interval of a ``step_time_s`` predicted for ``parallel`` on ``profile`` with the
    ``runtime`` preset (module docstring); ``kin``: the profiles of the same die (None:
    :func:`same_die_profiles`)."""
    family = family_of(parallel.megatron_notation())
    n = parallel.world_size
    found = _nearest(step_time_s, profile, runtime, family, n, residuals)
    if found is not None:
        return found
    for sibling in same_die_profiles(profile) if kin is None else kin:
        found = _nearest(step_time_s, sibling, runtime, family, n, residuals)
        if found is not None:
            return Trust(found.low_s, found.high_s, found.rows,
                         f"no published run on {profile}: runs on {sibling}, the same die ({found.basis})",
                         extrapolation=True)
    why = f"fewer than {MIN_ROWS} validated published runs on {profile}" if residuals else \
        f"no residual table ({RESIDUALS_PATH.name}: clusterplan validate --cross-validate writes it)"
    return Trust(None, None, (), why, extrapolation=True)


def describe(t: Trust) -> str:
    if t.low_s is None:
        return f"extrapolation: {t.basis}; no interval"
    text = (f"{t.low_s:.4g}-{t.high_s:.4g} s (10th-90th percentile of the cross-validated errors of "
            f"{len(t.rows)} published runs: {t.basis})")
    return f"extrapolation, {text}" if t.extrapolation else text
