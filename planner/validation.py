"""Predict the published training runs and compare, row by row (``clusterplan validate``).

Every row of a CSV in the schema of ``benchmarks/published_runs.csv`` is read into a plan
(:mod:`planner.row_config`) and predicted with :func:`planner.cost.step.predict`; the published
figure is compared in its own convention (MFU, HFU, TFLOP/s, tokens/s, step time). The headline
counts every predictable row, complete and assumed alike; only rows that cannot be built at all
are skipped, with the reason.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from planner.cost.runtime import Runtime
from planner.cost.step import Prediction, predict
from planner.errors import InputError
from planner.hardware import NodeSpec
from planner.io import read_input_text
from planner.row_config import (  # noqa: F401  (framework_runtime, runtime_for_framework: public here)
    float_cell, framework_runtime, int_cell, row_cluster, row_config, runtime_for_framework, text_cell)
from planner.trust import step_time_error


def _published_metric(row: dict) -> tuple[str, float] | None:
    """(metric, value) to compare, in the row's own convention; priority MFU, TFLOP/s, HFU,
    tokens/s per GPU, step time."""
    acct = text_cell(row, "flops_accounting").lower()
    for key in ("mfu_pct", "tflops_per_gpu", "hfu_pct", "tokens_per_sec_per_gpu", "step_time_s"):
        v = float_cell(row, key)
        if v is None:
            continue
        if key == "tflops_per_gpu":
            hfu_style = ("hfu" in acct or "recompute" in acct) and "mfu" not in acct
            return ("hfu_tflops_per_gpu" if hfu_style else "mfu_tflops_per_gpu"), v
        return key, v
    return None


def _predicted_value(metric: str, pred: Prediction) -> float:
    return {
        "mfu_pct": 100 * pred.mfu,
        "hfu_pct": 100 * pred.hfu,
        "hfu_tflops_per_gpu": pred.hardware_tflops_per_gpu,
        "mfu_tflops_per_gpu": pred.model_tflops_per_gpu,
        "tokens_per_sec_per_gpu": pred.tokens_per_s_per_gpu,
        "step_time_s": pred.step_time_s,
    }[metric]


SHARE_TERMS = ("compute", "recompute", "tp", "cp", "dp", "pp", "ep", "bubble", "optimizer")
"""The terms of :meth:`Prediction.shares`, written per row as ``share_<term>``."""


def _dominant(pred: Prediction) -> str:
    t = pred.time
    parts = {"tp comm": t.tp_s, "dp/zero comm": t.dp_s, "pipeline bubble": t.bubble_s,
             "pp comm": t.pp_s, "cp comm": t.cp_s, "ep all-to-all": t.ep_s, "optimizer": t.optimizer_s}
    name, val = max(parts.items(), key=lambda kv: kv[1])
    share = val / pred.step_time_s
    return f"compute {100 * t.compute_s / pred.step_time_s:.0f}%, largest other: {name} {100 * share:.0f}%"


def validate(dataset: str | Path, nodes: Mapping[str, NodeSpec] | None = None,
             runtimes: Mapping[str, Runtime] | None = None) -> pd.DataFrame:
    """One row per CSV row: status, plan, published and predicted metric, relative error.

    ``nodes`` / ``runtimes`` map a profile / runtime name to the one used in its place
    (cross-validation of a fitted value, :mod:`planner.cross_validation`)."""
    path = Path(dataset)
    text = read_input_text(path, "dataset")
    try:
        table = pd.read_csv(io.StringIO(text))
    except Exception as err:  # pandas raises many types for malformed CSV
        raise InputError("dataset", f"{path} is not a readable CSV ({type(err).__name__})") from None
    if table.empty:
        raise InputError("dataset", f"{path} has no rows")
    for col in ("row_id", "model", "gpu_type", "tp", "pp", "dp", "global_batch", "seq_len"):
        if col not in table.columns:
            raise InputError(f"dataset.{col}", "column missing")
    out = []
    for row in table.to_dict("records"):
        cfg = row_config(row)
        row_id = int_cell(row, "row_id")
        if row_id is None:
            raise InputError("dataset, column row_id", "every row needs a row_id")
        rec = {"row_id": row_id, "source": text_cell(row, "source"), "source_table": text_cell(row, "source_table"),
               "model": text_cell(row, "model"), "gpu_type": text_cell(row, "gpu_type"),
               "num_gpus": int_cell(row, "num_gpus"), "status": cfg.status, "note": cfg.reason,
               "preset": cfg.preset, "profile": cfg.profile, "runtime": cfg.runtime,
               "config": cfg.parallel.megatron_notation() if cfg.parallel else "",
               "metric": "", "published": float("nan"), "predicted": float("nan"),
               "error": float("nan"), "abs_error": float("nan"), "step_time_pred_s": float("nan"),
               "step_time_pub_s": float_cell(row, "step_time_s") or float("nan"),
               "mfu_pred_pct": float("nan"), "hfu_pred_pct": float("nan"), "mfu_published_pct": float("nan"),
               "fits": None, "peak_memory_gib": float("nan"), "where_time_goes": "",
               **{f"share_{k}": float("nan") for k in SHARE_TERMS}}
        if cfg.status != "skipped":
            metric = _published_metric(row)
            if metric is None:
                rec["status"] = "skipped"
                rec["note"] = "no published figure to compare"
            else:
                model = cfg.model
                cluster = row_cluster(cfg, nodes or {})
                try:
                    pred = predict(model, cluster, cfg.parallel, cfg.priced_runtime((runtimes or {}).get(cfg.runtime)))
                except InputError as err:  # e.g. fp8 on a GPU without it: this row only
                    rec.update(status="skipped", note=f"cannot be predicted: {err}")
                    out.append(rec)
                    continue
                name, pub = metric
                val = _predicted_value(name, pred)
                rec.update(metric=name, published=pub, predicted=val, error=val / pub - 1,
                           abs_error=abs(val / pub - 1), step_time_pred_s=pred.step_time_s,
                           mfu_pred_pct=100 * pred.mfu, hfu_pred_pct=100 * pred.hfu,
                           fits=pred.fits, peak_memory_gib=pred.peak_memory_bytes / 1024**3,
                           where_time_goes=_dominant(pred),
                           mfu_published_pct=100 * pred.mfu * (1 + step_time_error(name, val / pub - 1)),
                           **{f"share_{k}": v for k, v in pred.shares().items()})
        out.append(rec)
    return pd.DataFrame(out)


def summary(df: pd.DataFrame, status: str | None = None) -> dict:
    """Mean and worst |error| of the rows with ``status`` (None: every predictable row, complete
    and assumed alike: the headline)."""
    sub = df[df["status"] != "skipped"] if status is None else df[df["status"] == status]
    if sub.empty:
        return {"rows": 0, "mean_abs_error": float("nan"), "worst_abs_error": float("nan")}
    return {"rows": int(len(sub)), "mean_abs_error": float(sub["abs_error"].mean()),
            "worst_abs_error": float(sub["abs_error"].max()),
            "worst_row": int(sub.loc[sub["abs_error"].idxmax(), "row_id"])}


def per_source(df: pd.DataFrame) -> pd.DataFrame:
    """Rows, mean and worst |error| and mean signed error per source (predictable rows)."""
    sub = df[df["status"] != "skipped"]
    if sub.empty:
        return pd.DataFrame(columns=["source", "rows", "assumed", "mean_abs_error", "worst_abs_error", "mean_error"])
    g = sub.groupby("source", sort=False)
    return pd.DataFrame({"rows": g.size(), "assumed": g["status"].apply(lambda x: int((x == "assumed").sum())),
                         "mean_abs_error": g["abs_error"].mean(), "worst_abs_error": g["abs_error"].max(),
                         "mean_error": g["error"].mean()}).reset_index()
