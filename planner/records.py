"""Run records (``records.jsonl``) and the run summary (``summary.json``); schema in
executor/README.md. Torch-free: the launcher (``clusterplan run``) uses it to patch a summary
when the ranks could not write one."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from planner.errors import InputError
from planner.io import atomic_write_json, parse_json, read_input_text, read_jsonl

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
CONTENTION_FACTOR = 0.6
RUN_QUEUE_LIMIT = 0.2


class RecordWriter:
    """Append-only JSONL writer shared by all ranks of a run: the file is opened ``O_APPEND`` and
    each record is one ``write()`` of one line, so lines of different ranks never interleave. A
    write the file system refuses (a full disk, a folder made read-only) is an InputError naming
    ``records``; the lines before it stay intact (a torn last line is skipped by readers)."""

    def __init__(self, out_dir: str | os.PathLike, plan_id: str, rank: int):
        self.path = Path(out_dir) / RECORDS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.plan_id = plan_id
        self.rank = rank
        self.written: list[dict] = []
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, **fields: Any) -> dict:
        record = {"kind": kind, "schema_version": SCHEMA_VERSION, "plan_id": self.plan_id,
                  "rank": self.rank, "time_unix": time.time(), **fields}
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        if self._fd is None:
            raise InputError("records", f"cannot write {self.path} (an earlier write failed)")
        try:
            if os.write(self._fd, line) != len(line):
                raise OSError(28, "a short write (the disk is full)")
        except OSError as err:
            self.close()
            raise InputError("records", f"cannot write {self.path} ({err.strerror or err})") from None
        self.written.append(record)
        return record

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


SUMMARY_RESERVE = ".summary-reserve"
SUMMARY_RESERVE_BYTES = 1 << 20
"""Space the launcher holds for the final summary while the ranks run (a summary of a large run
is tens of KiB): a run that fills the disk still ends with its failed summary written."""


def reserve_summary_space(out_dir: str | os.PathLike) -> None:
    """Hold :data:`SUMMARY_RESERVE_BYTES` in ``out_dir`` (InputError naming ``out`` when there is
    not even that much room: the run is refused before it starts)."""
    path = Path(out_dir) / SUMMARY_RESERVE
    try:
        with open(path, "wb") as handle:
            handle.write(b"\0" * SUMMARY_RESERVE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        path.unlink(missing_ok=True)
        raise InputError("out", f"no room to start a run in {out_dir} ({err.strerror or err})") from None


def release_summary_space(out_dir: str | os.PathLike) -> None:
    (Path(out_dir) / SUMMARY_RESERVE).unlink(missing_ok=True)


def read_records(out_dir: str | os.PathLike) -> list[dict]:
    path = Path(out_dir) / RECORDS
    return read_jsonl(path) if path.exists() else []


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def expected_cpu_ratio(parallel: dict, world_size: int, threads: int, cores: int) -> float:
    """min(1, cores / (ranks·threads)) · (1 − bubble), bubble = (pp−1)/(vpp·m + pp−1)
    (ideal pipeline bubble, Narayanan et al., SC'21): the CPU share an uncontended rank gets."""
    share = min(1.0, cores / max(1, world_size * threads))
    pp, vpp = parallel.get("pp", 1), parallel.get("vpp", 1)
    dp, mb, gb = parallel.get("dp", 1), parallel.get("micro_batch", 1), parallel.get("global_batch", 1)
    m = max(1, gb // (dp * mb))
    bubble = (pp - 1) / (vpp * m + pp - 1) if pp > 1 else 0.0
    return share * (1.0 - bubble)


def _predicted(prediction: dict | None) -> dict:
    def pick(*keys):
        if not prediction:
            return None
        for key in keys:
            value = prediction.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            for nested in ("time", "memory", "throughput"):
                sub = prediction.get(nested)
                if isinstance(sub, dict) and isinstance(sub.get(key), (int, float)):
                    return sub[key]
        return None

    return {"step_time_s": pick("step_time_s"),
            "peak_memory_bytes": pick("peak_memory_bytes", "peak_bytes", "memory_bytes"),
            "tokens_per_s": pick("tokens_per_s")}


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("kind", "schema_version", "plan_id", "time_unix")}


def summarize(records: Iterable[dict], plan: dict, steps: int, warmup: int,
              prediction: dict | None, status: str | None = None, error: str | None = None,
              rank: int | None = None, oom: bool = False, cores: int | None = None,
              contention_factor: float = CONTENTION_FACTOR) -> dict:
    """The summary of a run from its records (any subset: a failed run summarises what it has).

    ``plan`` is ``Plan.to_dict()``. ``status`` None means: ok, or contended (CPU runs only) if a
    rank waited for a core more than :data:`RUN_QUEUE_LIMIT` of the step beyond the plan's own
    oversubscription (1 - cores / ranks on the host), or, without run-queue readings, if a rank's
    median cpu_ratio is below ``contention_factor`` × :func:`expected_cpu_ratio`."""
    records = [r for r in records if r.get("plan_id") == plan["id"]]
    parallel = plan["parallel"]
    envs = {r["rank"]: r for r in records if r["kind"] == "env"}
    step_recs = [r for r in records if r["kind"] == "step" and not r.get("warmup")]
    by_step: dict[int, list[dict]] = {}
    for r in step_recs:
        by_step.setdefault(r["step"], []).append(r)
    world = parallel["tp"] * parallel["pp"] * parallel["dp"] * parallel["cp"]
    complete = [s for s, rs in by_step.items() if len({r["rank"] for r in rs}) == world]
    step_times = [max(r["wall_s"] for r in by_step[s]) for s in sorted(complete)]
    tokens = parallel["global_batch"] * parallel["seq_len"]
    env0 = envs.get(0) or (next(iter(envs.values())) if envs else {})
    threads = env0.get("threads", 1)
    device = env0.get("device", "cpu")

    measured: dict[str, Any] = {"n_steps": len(step_times)}
    if step_times:
        med = percentile(step_times, 50)
        measured.update(step_time_s=med, step_time_s_p10=percentile(step_times, 10),
                        step_time_s_p90=percentile(step_times, 90), step_time_s_min=min(step_times),
                        step_time_s_max=max(step_times), tokens_per_s=tokens / med)
    else:
        measured.update(step_time_s=None, step_time_s_p10=None, step_time_s_p90=None,
                        step_time_s_min=None, step_time_s_max=None, tokens_per_s=None)
    # loss of the lowest rank that reports one (dp 0 of the last stage)
    losses = [r for r in records if r["kind"] == "step" and r.get("loss") is not None]
    if losses:
        lowest = min(r["rank"] for r in losses)
        mine = sorted((r for r in losses if r["rank"] == lowest), key=lambda r: r["step"])
        measured["loss_first"], measured["loss_last"] = mine[0]["loss"], mine[-1]["loss"]
    else:
        measured["loss_first"] = measured["loss_last"] = None

    mems = sorted((r for r in records if r["kind"] == "memory"), key=lambda r: r["rank"])
    measured["memory"] = [_strip(r) for r in mems]
    measured["peak_memory_bytes"] = measured["peak_memory_rank"] = measured["peak_memory_source"] = None
    # the first source every rank reports: CUDA max allocated, CPU allocator peak, RSS growth
    for key, source in (("cuda_max_allocated_bytes", "cuda_allocated"),
                        ("cpu_allocator_peak_bytes", "cpu_allocated"),
                        ("rss_peak_minus_baseline_bytes", "rss")):
        have = [r for r in mems if r.get(key) is not None]
        if have and len(have) == len(mems):
            top = max(have, key=lambda r: r[key])
            measured.update(peak_memory_bytes=top[key], peak_memory_rank=top["rank"], peak_memory_source=source)
            break
    rss = [r["rss_peak_minus_baseline_bytes"] for r in mems if r.get("rss_peak_minus_baseline_bytes") is not None]
    measured["rss_peak_memory_bytes"] = max(rss) if rss else None

    per_rank: dict[str, dict[str, float]] = {}
    for r in records:
        if r["kind"] != "trace":
            continue
        totals: dict[str, float] = {}
        for ev in r["events"]:
            phase = "backward" if ev["phase"].startswith("backward") else ev["phase"]
            totals[phase] = totals.get(phase, 0.0) + ev["end_s"] - ev["start_s"]
        per_rank[str(r["rank"])] = totals
    measured["phases_per_rank"] = per_rank
    phases = {}
    for phase in ("forward", "backward", "optimizer", "comm"):
        vals = [t[phase] for t in per_rank.values() if phase in t]
        phases[f"{phase}_s"] = percentile(vals, 50) if vals else None
    measured["phases"] = phases

    ratios: dict[str, float] = {}
    for rk in sorted({r["rank"] for r in step_recs}):
        vals = [r["cpu_ratio"] for r in step_recs if r["rank"] == rk and r.get("cpu_ratio") is not None]
        if vals:
            ratios[str(rk)] = percentile(vals, 50)
    measured["cpu_ratio"] = ratios
    cores = cores or _cores()
    # the ranks on this host's cores: an emulated node's agent runs on the node's own CPUs
    ranks_here = max(1, world // max(1, int(plan.get("n_nodes") or 1)))
    expected = expected_cpu_ratio(parallel, ranks_here, threads, cores)
    measured["cpu_ratio_expected"] = expected
    waits: dict[str, float] = {}
    for rk in sorted({r["rank"] for r in step_recs}):
        vals = [r["run_queue_wait_s"] / r["wall_s"] for r in step_recs
                if r["rank"] == rk and r.get("run_queue_wait_s") is not None and r["wall_s"] > 0]
        if vals:
            waits[str(rk)] = percentile(vals, 50)
    measured["run_queue_fraction"] = waits

    if status is None:
        status = "ok"
        on_cpu = not str(device).startswith("cuda")
        if on_cpu and waits:  # beyond the plan's own oversubscription (more ranks than cores)
            own = 1.0 - min(1.0, cores / (ranks_here * threads))
            if max(waits.values()) - own > RUN_QUEUE_LIMIT:
                status = "contended"
        elif on_cpu and ratios and min(ratios.values()) < contention_factor * expected:
            status = "contended"
    return {
        "schema_version": SCHEMA_VERSION,
        "plan_id": plan["id"],
        "parallel": _notation(parallel),
        "status": status,
        "error": error,
        "rank": rank,
        "oom": bool(oom),
        "steps": steps,
        "warmup": warmup,
        "prediction": prediction,
        "predicted": _predicted(prediction),
        "measured": measured,
        "env": {k: env0.get(k) for k in ("torch_version", "backend", "world_size", "host", "threads", "device")},
        "created_unix": time.time(),
    }


def _notation(parallel: dict) -> str:
    try:
        from planner.plan import ParallelConfig

        return ParallelConfig.from_dict(parallel).megatron_notation()
    except Exception:  # a summary must still be written for an odd plan
        return json.dumps(parallel, sort_keys=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_summary(out_dir: str | os.PathLike, summary: dict) -> Path:
    return atomic_write_json(Path(out_dir) / SUMMARY, summary)


def write_rank_summary(out_dir: str | os.PathLike, summary: dict) -> bool:
    """A rank's summary, unless the launcher already wrote a final one (a run it stopped on a
    signal): a rank that outlived its launcher never turns "failed" back into "ok". Returns
    whether it was written."""
    existing = read_summary(out_dir)
    if existing is not None and (existing.get("launcher") or {}).get("final"):
        return False
    write_summary(out_dir, summary)
    return True


def read_summary(out_dir: str | os.PathLike) -> dict | None:
    """The run folder's summary, or None when it has none, it is unreadable, not a JSON object,
    or of a schema version this code does not know."""
    path = Path(out_dir) / SUMMARY
    if not path.exists():
        return None
    try:
        data = parse_json(read_input_text(path, "summary"), "summary", str(path))
    except InputError:
        return None
    if not isinstance(data, dict) or data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        return None
    return data
