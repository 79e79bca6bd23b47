"""Timing helpers: repeated samples, medians, and the process-time / wall ratio of each sample.

A sample whose process-time / wall ratio is well below 1 ran while another process held the core
(a contended machine): the calibration flags it.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable


DEFAULT_RETRIES = 2
"""Reruns of a measurement that got less than 0.8 of a core (``--quick`` sets 0: flag only)."""
RETRY_TIME_LEFT_S = 60.0
"""Seconds all reruns of a process may take together, so a busy machine cannot stretch a
calibration without bound (what is still contended afterwards is flagged)."""


@dataclass(frozen=True)
class Samples:
    """``reps`` samples of one measurement; each sample is the mean over ``inner`` calls."""

    times_s: tuple[float, ...]
    cpu_ratio: float  # process CPU time / wall time over all samples (1.0 = a whole core)
    inner: int
    attempts: int = 1  # measurements taken (reruns while another process held the core)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def to_dict(self) -> dict:
        return {"times_s": list(self.times_s), "median_s": self.median_s,
                "cpu_ratio": self.cpu_ratio, "inner": self.inner, "attempts": self.attempts}


def measure(fn: Callable[[], object], *, reps: int = 5, target_s: float = 0.02,
            max_inner: int = 10000, retries: int | None = None, min_cpu_ratio: float = 0.8,
            retry_budget_s: float = 2.0) -> Samples:
    """Time ``fn`` (see :func:`_measure_once`); while the process got less than ``min_cpu_ratio``
    of a core (another process ran on it), measure again, up to ``retries`` times if one attempt
    takes under ``retry_budget_s``, and keep the attempt with the largest CPU share."""
    global RETRY_TIME_LEFT_S
    retries = DEFAULT_RETRIES if retries is None else retries
    best = _measure_once(fn, reps=reps, target_s=target_s, max_inner=max_inner)
    attempts = 1
    while (best.cpu_ratio < min_cpu_ratio and attempts <= retries
           and best.median_s * best.inner * reps < min(retry_budget_s, RETRY_TIME_LEFT_S)):
        t0 = time.perf_counter()
        again = _measure_once(fn, reps=reps, target_s=target_s, max_inner=max_inner)
        RETRY_TIME_LEFT_S -= time.perf_counter() - t0
        attempts += 1
        if again.cpu_ratio > best.cpu_ratio:
            best = again
    return Samples(best.times_s, best.cpu_ratio, best.inner, attempts)


def _measure_once(fn: Callable[[], object], *, reps: int, target_s: float, max_inner: int) -> Samples:
    """One warm-up call, then ``reps`` samples of ``inner`` back-to-back calls, with ``inner``
    chosen so that a sample lasts about ``target_s`` (one call if it is slower)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    inner = max(1, min(max_inner, int(target_s / max(first, 1e-9))))
    if inner > 1:  # the warm-up call may include one-off costs: re-estimate on a short burst
        t0 = time.perf_counter()
        for _ in range(min(inner, 10)):
            fn()
        per = (time.perf_counter() - t0) / min(inner, 10)
        inner = max(1, min(max_inner, int(target_s / max(per, 1e-9))))
    times = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Samples(tuple(times), cpu / wall if wall > 0 else 1.0, inner)


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS)."""
    return _status_field("VmRSS")


def hwm_bytes() -> int:
    """Peak resident set size since start or the last :func:`reset_hwm` (VmHWM)."""
    return _status_field("VmHWM")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_field(key: str) -> int:
    with open(f"/proc/{os.getpid()}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")
