"""Measured runs from any framework as one table (``clusterplan fit --runs MEASURED.csv``), and this
project's run folders read into the same rows.

Columns (header names exactly these; others are ignored): ``name, model`` (a preset or a path to a
config.json), ``nodes, gpus_per_node, tp, pp, dp, cp`` (cp may be empty = 1), ``micro_batch,
global_batch, seq_len, precision`` (fp32|tf32|bf16|fp16|fp8), ``recompute`` (none|selective|full),
``sharding`` (none|zero1|zero2|zero3|fsdp), ``schedule`` (empty, gpipe, 1f1b, interleaved, zb),
``vpp`` (empty = 1), ``stage_layers`` (empty, or layers per stage joined by ``|``),
``sequence_parallel`` (optional: yes | no, empty = no), ``runtime`` (optional: a runtime preset
for this row, e.g. ``torchtitan-eager`` beside ``torchtitan`` runs; empty = ``fit --runtime``),
``measured_step_s``, ``measured_peak_memory_bytes`` (may be empty), ``memory_source``
(allocated | reserved | device_used: what ``torch.cuda.max_memory_allocated``, ``max_memory_reserved``
or ``nvidia-smi`` report; needed with a memory reading). A malformed row is one
:class:`planner.errors.InputError` naming the row and the column.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.catalog import load_model
from planner.cost.runtime import RUNTIME_PRESETS
from planner.errors import InputError
from planner.io import read_input_text, read_json_object
from planner.plan import ParallelConfig, Plan

MEMORY_SOURCES = ("allocated", "reserved", "device_used")
REQUIRED = ("name", "model", "nodes", "gpus_per_node", "tp", "pp", "dp", "micro_batch", "global_batch", "seq_len",
            "precision", "recompute", "sharding", "measured_step_s")
OPTIONAL = ("cp", "schedule", "vpp", "stage_layers", "sequence_parallel", "runtime", "measured_peak_memory_bytes",
            "memory_source")


@dataclass(frozen=True)
class MeasuredRun:
    """One measured run: its plan, its median step time and (optionally) its peak memory as
    ``memory_source`` reports it."""

    name: str
    plan: Any  # planner.plan.Plan
    measured_step_time_s: float
    measured_memory_bytes: float | None = None
    memory_source: str = ""
    runtime: str = ""
    """A runtime preset of its own (:data:`planner.cost.runtime.RUNTIME_PRESETS`), or the fit's."""


def _cell(row: dict, col: str, where: str) -> str:
    return (row.get(col) or "").strip()


def _number(row: dict, col: str, where: str, what: str) -> float | None:
    """The cell as a finite number (None when empty); an error naming row and column otherwise."""
    text = _cell(row, col, where)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{where}, column {col}", f"must be {what}, got {text!r}")
    return value


def _int(row: dict, col: str, where: str, default: int | None = None) -> int:
    value = _number(row, col, where, "a positive integer")
    if value is None:
        if default is not None:
            return default
        raise InputError(f"{where}, column {col}", "missing")
    if value != int(value) or value < 1:
        raise InputError(f"{where}, column {col}", f"must be a positive integer, got {_cell(row, col, where)!r}")
    return int(value)


def _positive(row: dict, col: str, where: str, optional: bool = False) -> float | None:
    value = _number(row, col, where, "a number > 0")
    if value is None:
        if optional:
            return None
        raise InputError(f"{where}, column {col}", "missing")
    if value <= 0:
        raise InputError(f"{where}, column {col}", f"must be a number > 0, got {_cell(row, col, where)!r}")
    return value


def _choice(row: dict, col: str, where: str, choices: tuple[str, ...], default: str | None = None) -> str:
    text = _cell(row, col, where).lower()
    if not text and default is not None:
        return default
    if text not in choices:
        raise InputError(f"{where}, column {col}", f"must be one of {', '.join(choices)}, got {text!r}")
    return text


def row_run(row: dict, where: str, hardware: str) -> MeasuredRun:
    """One table row as a :class:`MeasuredRun` on profile ``hardware``."""
    name = _cell(row, "name", where) or where
    model_text = _cell(row, "model", where)
    if not model_text:
        raise InputError(f"{where}, column model", "missing")
    seq = _int(row, "seq_len", where)
    try:
        model = load_model(model_text, seq)
    except InputError as err:
        raise InputError(f"{where}, column model", err.reason) from None
    precision = _choice(row, "precision", where, ("fp32", "tf32", "bf16", "fp16", "fp8"))
    vpp = _int(row, "vpp", where, default=1)
    schedule = _choice(row, "schedule", where, ("gpipe", "1f1b", "interleaved", "zb"),
                       default="interleaved" if vpp > 1 else "1f1b")
    layers_text = _cell(row, "stage_layers", where)
    try:
        stage_layers = tuple(int(x) for x in layers_text.split("|")) if layers_text else ()
    except ValueError:
        raise InputError(f"{where}, column stage_layers", f"layers per stage joined by |, got {layers_text!r}") from None
    memory = _positive(row, "measured_peak_memory_bytes", where, optional=True)
    source = _choice(row, "memory_source", where, MEMORY_SOURCES, default="") if memory is not None else ""
    try:
        parallel = ParallelConfig(
            tp=_int(row, "tp", where), pp=_int(row, "pp", where), dp=_int(row, "dp", where),
            cp=_int(row, "cp", where, default=1), vpp=vpp, micro_batch=_int(row, "micro_batch", where),
            global_batch=_int(row, "global_batch", where), seq_len=seq,
            recompute=_choice(row, "recompute", where, ("none", "selective", "full")),
            sharding=_choice(row, "sharding", where, ("none", "zero1", "zero2", "zero3", "fsdp")),
            precision=precision, schedule=schedule, stage_layers=stage_layers,
            sequence_parallel=_choice(row, "sequence_parallel", where, ("yes", "no"), default="no") == "yes")
        plan = Plan(model=model, hardware=hardware, n_nodes=_int(row, "nodes", where),
                    gpus_per_node=_int(row, "gpus_per_node", where), parallel=parallel)
    except InputError as err:
        if err.field.startswith(where):  # a cell's own check, already naming its row and column
            raise
        column = err.field.split(".")[-1]
        raise InputError(f"{where}, column {column}", err.reason) from None
    runtime = _choice(row, "runtime", where, tuple(RUNTIME_PRESETS), default="")
    return MeasuredRun(name, plan, _positive(row, "measured_step_s", where), memory, source, runtime)


def load_runs_table(path: str | os.PathLike, hardware: str) -> list[MeasuredRun]:
    """Every row of the table at ``path`` (see the module docstring) on profile ``hardware``."""
    path = Path(path)
    text = read_input_text(path, "runs")
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"runs, column {missing[0]}", f"missing from the header of {path}")
    runs = [row_run(row, f"{path.name} row {i}", hardware) for i, row in enumerate(reader, start=1)]
    if not runs:
        raise InputError("runs", f"{path} has a header and no rows")
    return runs


FOLDER_MEMORY_SOURCES = {"cuda_allocated": "allocated", "cpu_allocated": "allocated", "rss": "device_used"}
"""The executor's ``peak_memory_source`` (planner.records.summarize) as a table's memory_source:
the allocators' peaks are allocated tensor bytes; the process RSS growth is what the OS sees."""


def run_folder_run(run_dir: str | os.PathLike, plan, statuses: tuple[str, ...] = ("ok",)) -> MeasuredRun | str:
    """A run folder of ``clusterplan run`` as a table row, or why it cannot be one."""
    summary = read_json_object(Path(run_dir) / "summary.json", "run_dir", f"{run_dir} has no summary.json")
    measured = summary.get("measured") or {}
    step = measured.get("step_time_s")
    if summary.get("status") not in statuses or not isinstance(step, (int, float)) or step <= 0:
        return f"{run_dir}: status {summary.get('status')}, measured step time {step}"
    memory = measured.get("peak_memory_bytes")
    source = FOLDER_MEMORY_SOURCES.get(measured.get("peak_memory_source") or "", "")
    if not (isinstance(memory, (int, float)) and memory > 0 and source):
        memory, source = None, ""
    return MeasuredRun(str(run_dir), plan, float(step), None if memory is None else float(memory), source)
