"""Steady-state step times of MLPerf Training runs, from their MLLOG result files.

    .venv/bin/python benchmarks/mlperf_step_times.py RESULT.txt [RESULT.txt ...]

Each ``result_N.txt`` of an MLPerf Training submission (e.g. mlcommons/training_results_v4.0
``NVIDIA/results/eos_n64_ngc24.04_nemo/gpt3/result_0.txt``) logs ``block_start`` / ``block_stop``
around every training block and evaluates between blocks. A block trains ``epoch_count`` tokens
(GPT-3: the block's metadata), so its steps are ``epoch_count / (global_batch_size x
max_sequence_length)`` and its step time its duration over them. Logs from v5.0 on log each
step's time instead (``tracked_stats`` ``train_step_time``). Printed per file: the global batch and
the median step time, leaving out the first block (or the first tenth of the logged steps), which
holds the warm-up; benchmarks/published_runs.csv rows 240-250 take the median over a submission's
runs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def mllog_events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if ":::MLLOG" in line:
            try:
                out.append(json.loads(line.split(":::MLLOG", 1)[1]))
            except json.JSONDecodeError:
                continue
    return out


def point_values(events: list[dict]) -> dict:
    """The log's POINT_IN_TIME values by key (global_batch_size, max_sequence_length, ...)."""
    return {e["key"]: e["value"] for e in events if e.get("event_type") == "POINT_IN_TIME"}


def block_step_times_s(events: list[dict]) -> tuple[int, list[float]]:
    """(global batch, step time of each training block in order)."""
    values = point_values(events)
    gbs, seq = values["global_batch_size"], values["max_sequence_length"]
    starts = [e for e in events if e["key"] == "block_start"]
    stops = [e for e in events if e["key"] == "block_stop"]
    times = []
    for start, stop in zip(starts, stops):
        steps = start["metadata"]["epoch_count"] / (gbs * seq)
        times.append((stop["time_ms"] - start["time_ms"]) / 1000 / steps)
    return gbs, times


def logged_step_times_s(events: list[dict]) -> list[float]:
    """Each ``train_step_time`` the log tracks, in order (v5.0 and later)."""
    return [e["value"]["train_step_time"] for e in events
            if e["key"] == "tracked_stats" and isinstance(e.get("value"), dict) and "train_step_time" in e["value"]]


def steady_step_s(events: list[dict]) -> tuple[int, float]:
    """(global batch, median steady-state step time) of one run's log."""
    logged = logged_step_times_s(events)
    if logged:
        return point_values(events)["global_batch_size"], statistics.median(logged[len(logged) // 10:])
    gbs, times = block_step_times_s(events)
    return gbs, statistics.median(times[1:] or times)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for name in argv:
        gbs, step_s = steady_step_s(mllog_events(Path(name).read_text()))
        print(f"{name}: global batch {gbs}, median step {step_s:.4f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
