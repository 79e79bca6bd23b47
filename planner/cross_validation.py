"""Leave-one-source-out cross-validation of the choices made by looking at training runs
(``clusterplan validate --cross-validate``).

Four values in the cost model were chosen against ``benchmarks/published_runs.csv`` rather than
read off a kernel table or a framework's documentation; each is listed in :data:`FITTED_CHOICES`
with the candidates it was chosen among and the value the cited sources give without any run
(``documented``):

- the A100 large-GEMM efficiency (hardware_profiles/dgx-a100-80gb.yaml: the points at 1e10-1e12
  FLOPs are the cited [0.58, 0.74, 0.80] times 0.89, fitted on every published A100 row), as one
  scale on those cited points;
- the H100 large-GEMM efficiency (hardware_profiles/dgx-h100-80gb.yaml: the points at 1e10-1e12
  FLOPs are the cited [0.48, 0.66, 0.74] times 0.76, fitted on the Megatron-LM README,
  dgxc-benchmarking and MLPerf Training H100 rows), as one scale on those cited points; the H200
  and GH200 profiles (the same GH100 die) carry the same curve and are scaled with it;
- the B200 large-GEMM efficiency (hardware_profiles/dgx-b200-192gb.yaml: the H100's cited points
  times 0.795, the two chips' measured BF16 GEMM ratio in OpenXLA's matmul table, times 0.80,
  fitted on the B200 rows: MLPerf Training v4.1's GPT-3 preview and v5.1's Llama 3.1 8B runs of
  three submitters), as one scale on those points;
- DeepSpeed ``stage3_max_live_parameters`` left unapplied in the ``deepspeed-zero3-2021`` runtime
  (inferred from the SC'21 Table 2 plateau; DeepSpeed's documented default is 1e9).

For each source: the choice is refitted (least mean |error| over the candidates) on the rows of
every other source, and that source's rows are predicted with it; when no other row depends on
the choice, the documented value is used. One choice varies at a time, the other held at its
committed value. A choice whose cross-validated error is far above its in-sample error was fitted
to the rows it is judged on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.cost.runtime import RUNTIME_PRESETS, Runtime
from planner.hardware import EfficiencyCurve, NodeSpec
from planner.profile_yaml import load_profile
from planner.trust import family_of, step_time_error
from planner.validation import validate

Overrides = tuple[Mapping[str, NodeSpec], Mapping[str, Runtime]]


@dataclass(frozen=True)
class FittedChoice:
    """A value chosen among ``candidates`` by looking at training runs.

    overrides(candidate) gives the profiles and runtimes that price the dataset with it."""

    name: str
    candidates: tuple[float, ...]
    documented: float
    committed: float
    overrides: Callable[[float], Overrides]
    label: Callable[[float], str] = lambda v: f"{v:g}"


A100_CITED_LARGE_GEMM = ((1.0e10, 0.58), (1.0e11, 0.74), (1.0e12, 0.80))
"""The A100 profile's large-GEMM points before the fit (NVIDIA "Matrix Multiplication Background"
user guide: ~0.75-0.8 of peak for large cuBLAS GEMMs)."""


H100_CITED_LARGE_GEMM = ((1.0e10, 0.48), (1.0e11, 0.66), (1.0e12, 0.74))
"""The H100 profile's large-GEMM points before the fit (cuBLAS bf16 on H100 SXM: ~0.70-0.75 of
989 TFLOP/s for large GEMMs; hardware_profiles/dgx-h100-80gb.yaml)."""


B200_OVER_H100_BF16_GEMM = (1416867213789406 / 2250e12) / (783328793548203 / 989.4e12)
"""B200's BF16 GEMM fraction of peak over H100's, one harness on both: OpenXLA's measured matmul
table (``xla/backends/gpu/cost_model/matmul_interpolator_data.h``, ``kDefaultMatmulPTable``),
b=1, m=n=k=4096: sm_100 1416.9 TFLOP/s of 2250, sm_90 783.3 of 989.4 (0.795)."""

B200_CITED_LARGE_GEMM = tuple((f, e * B200_OVER_H100_BF16_GEMM) for f, e in H100_CITED_LARGE_GEMM)
"""The B200 profile's large-GEMM points before the scale: the H100's cited points times
:data:`B200_OVER_H100_BF16_GEMM`, so B200 runs a GEMM as H100's fitted curve does, sped up as the
two chips' kernels measured in one table are."""


def _gemm_scale(cited_by_profile: Mapping[str, tuple[tuple[float, float], ...]]) -> Callable[[float], Overrides]:
    """Overrides that scale each profile's GEMM efficiency at its ``cited`` points (the smaller
    points kept)."""
    def overrides(scale: float) -> Overrides:
        nodes = {}
        for profile, cited in cited_by_profile.items():
            node = load_profile(profile)
            small = tuple(p for p in node.device.matmul_efficiency.points if p[0] < cited[0][0])
            curve = EfficiencyCurve(small + tuple((f, min(1.0, e * scale)) for f, e in cited))
            nodes[profile] = dataclasses.replace(node, device=dataclasses.replace(node.device, matmul_efficiency=curve))
        return nodes, {}
    return overrides


def _zero3_live(max_live: float) -> Overrides:
    base = RUNTIME_PRESETS["deepspeed-zero3-2021"]
    return {}, {base.name: dataclasses.replace(base, max_live_parameters=int(max_live))}


FITTED_CHOICES = (
    FittedChoice("A100 large-GEMM efficiency (scale on the cited 0.58/0.74/0.80)",
                 candidates=tuple(round(0.80 + 0.01 * i, 2) for i in range(31)), documented=1.0,
                 committed=0.89, overrides=_gemm_scale(dict.fromkeys(("dgx-a100-80gb", "dgx-a100-40gb"), A100_CITED_LARGE_GEMM))),
    FittedChoice("H100 large-GEMM efficiency (scale on the cited 0.48/0.66/0.74)",
                 candidates=tuple(round(0.70 + 0.02 * i, 2) for i in range(16)), documented=1.0,
                 committed=0.76, overrides=_gemm_scale(dict.fromkeys(("dgx-h100-80gb", "dgx-h200-141gb", "gh200-96gb-quad"),
                                                                     H100_CITED_LARGE_GEMM))),
    FittedChoice("B200 large-GEMM efficiency (scale on the H100's cited points x 0.795)",
                 candidates=tuple(round(0.66 + 0.02 * i, 2) for i in range(21)), documented=1.0,
                 committed=0.80, overrides=_gemm_scale({"dgx-b200-192gb": B200_CITED_LARGE_GEMM})),
    FittedChoice("deepspeed-zero3-2021 stage3_max_live_parameters (0 = not applied)",
                 candidates=(0.0, 1.0e9), documented=1.0e9, committed=0.0, overrides=_zero3_live,
                 label=lambda v: "not applied" if v == 0 else f"{v:.0e}"),
)


@dataclass(frozen=True)
class ChoiceResult:
    choice: FittedChoice
    in_sample_value: float
    in_sample: pd.Series      # row_id -> |error| with the value fitted on every row
    cross_validated: pd.Series  # row_id -> |error| with the value fitted without the row's source
    per_source: pd.DataFrame  # source, rows, value without it, in-sample and cross-validated mean |error|


def _errors(dataset: str | Path, choice: FittedChoice) -> tuple[pd.DataFrame, pd.DataFrame]:
    """|error| per predictable row (index row_id) and candidate (columns); the rows' sources."""
    columns, rows = {}, None
    for value in choice.candidates:
        nodes, runtimes = choice.overrides(value)
        df = validate(dataset, nodes=nodes, runtimes=runtimes)
        df = df[df["status"] != "skipped"].set_index("row_id")
        columns[value] = df["abs_error"]
        rows = df[["source"]] if rows is None else rows
    return pd.DataFrame(columns), rows


def _fit(errors: pd.DataFrame, choice: FittedChoice) -> float:
    """The candidate of least mean |error| over ``errors``' rows; the documented value when
    no row depends on the choice (the first of equal candidates otherwise)."""
    if errors.empty or np.allclose(errors.max(axis=1), errors.min(axis=1), rtol=0, atol=1e-12):
        return choice.documented
    return float(errors.mean().idxmin())


def cross_validate(dataset: str | Path, choice: FittedChoice) -> ChoiceResult:
    errors, rows = _errors(dataset, choice)
    value_all = _fit(errors, choice)
    cv = pd.Series(index=errors.index, dtype=float)
    table = []
    for source, members in rows.groupby("source", sort=False).groups.items():
        value = _fit(errors.drop(index=members), choice)
        cv.loc[members] = errors.loc[members, value]
        table.append({"source": source, "rows": len(members), "value_without": value,
                      "in_sample": float(errors.loc[members, value_all].mean()),
                      "cross_validated": float(errors.loc[members, value].mean())})
    return ChoiceResult(choice, value_all, errors[value_all], cv, pd.DataFrame(table))


def residual_table(dataset: str | Path, results: list[ChoiceResult]) -> pd.DataFrame:
    """Every predictable row's step-time error with every choice at the value fitted without the
    row's source (what :mod:`planner.trust` reads)."""
    sources = results[0].per_source["source"] if results else pd.Series(dtype=str)
    parts = []
    for source in sources:
        nodes, runtimes = {}, {}
        for r in results:
            value = r.per_source.set_index("source").loc[source, "value_without"]
            more_nodes, more_runtimes = r.choice.overrides(value)
            nodes.update(more_nodes)
            runtimes.update(more_runtimes)
        df = validate(dataset, nodes=nodes, runtimes=runtimes)
        parts.append(df[(df["status"] != "skipped") & (df["source"] == source)])
    df = pd.concat(parts) if parts else pd.DataFrame(columns=["row_id", "source", "profile", "runtime", "config",
                                                              "num_gpus", "metric", "error"])
    return pd.DataFrame({"row_id": df["row_id"], "source": df["source"], "profile": df["profile"],
                         "runtime": df["runtime"], "family": [family_of(c) for c in df["config"]], "num_gpus": df["num_gpus"],
                         "config": df["config"], "metric": df["metric"], "error_cv": df["error"],
                         "step_time_error_cv": [step_time_error(m, e) for m, e in zip(df["metric"], df["error"])]})


def render_markdown(results: list[ChoiceResult], dataset: str) -> str:
    lines = ["# Leave-one-source-out cross-validation", "", "Generated by:", "", "```",
             f"clusterplan validate --dataset {dataset} --cross-validate", "```", "",
             (__doc__ or "").split("\n\n", 1)[1].strip(), ""]
    for r in results:
        c = r.choice
        lines += [f"## {c.name}", "",
                  f"- Committed: {c.label(c.committed)}; documented (no run): {c.label(c.documented)}; "
                  f"fitted on every row now: {c.label(r.in_sample_value)}.",
                  f"- Every predictable row ({len(r.in_sample)}): in-sample mean |error| "
                  f"**{100 * r.in_sample.mean():.1f}%**, cross-validated **{100 * r.cross_validated.mean():.1f}%** "
                  f"(worst {100 * r.in_sample.max():.1f}% / {100 * r.cross_validated.max():.1f}%).", "",
                  "| source | rows | value fitted without it | in-sample mean abs error | cross-validated |",
                  "|---|---|---|---|---|"]
        for t in r.per_source.itertuples():
            lines.append(f"| {t.source} | {t.rows} | {c.label(t.value_without)} | {100 * t.in_sample:.1f}% | "
                         f"{100 * t.cross_validated:.1f}% |")
        lines.append("")
    return "\n".join(lines) + "\n"
