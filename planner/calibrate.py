"""Calibration: benchmark results -> hardware profile, and fitting a profile to measured runs.

Torch-free. The benchmarks themselves live in :mod:`executor.bench` and run in a subprocess under
torchrun (:func:`run_benchmarks`); :func:`build_profile` turns their JSON into a
:class:`planner.hardware.NodeSpec` plus the comments that say what was measured, and
:func:`profile_yaml` writes any NodeSpec back in the schema of ``hardware_profiles/`` (the
calibrated CPU profile and the output of ``clusterplan fit`` use it).

Models fitted here:

* GEMM: rate = peak_dtype * matmul_efficiency(2*m*k*n) (roofline with an efficiency table, as
  Calculon's system files do; Isaev et al., SC'23).
* Memory-bound op: time = bytes_moved / (hbm_bandwidth * memory_bound_efficiency), bytes moved =
  read + written (STREAM convention, McCalpin 1995).
* Collective on n ranks (alpha-beta, Hockney 1994; ring bus-bandwidth correction of nccl-tests,
  doc/PERFORMANCE.md): time(S) = latency + S_bus / bus_bandwidth with S_bus = 2(n-1)/n * S for
  all-reduce, (n-1)/n * S for all-gather and reduce-scatter (S = the full tensor), S for
  send/recv. Fitted by least squares on the relative residuals so that 4-byte and 64 MB
  messages weigh alike.
* Shared cores: a rank runs at rate_alone * min(1, host_cores / ranks_on_host).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from planner.errors import InputError, require
from planner.hardware import (FRAMEWORK_YAML, RATE_TABLES, GB, GIB, MICRO, TERA, DeviceSpec,
                              EfficiencyCurve, FrameworkSpec, LinkSpec, MeasuredCollective, NodeSpec, PROFILES_DIR,
                              RateTable, parse_profile)
from planner.io import atomic_write_text, read_json_object
from planner.executor_rules import fsdp_units

SCHEMA = "clusterplan-bench/1"  # executor.bench.SCHEMA (not imported: that package imports torch)
DEFAULT_PROFILE_PATH = PROFILES_DIR / "local-cpu.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent
CONTENDED_CPU_RATIO = 0.8  # a rank that got less than this share of a core ran on a busy machine
OVERHEAD_OPS = ("add", "mul", "gelu", "linear", "layernorm")


# ----- alpha-beta fit ------------------------------------------------------------------------
def bus_bytes(op: str, group_size: int, size_bytes: float) -> float:
    """Ring-corrected bytes each rank moves (nccl-tests' bus-bandwidth convention)."""
    n = group_size
    if op == "all_reduce":
        return 2.0 * (n - 1) / n * size_bytes
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n * size_bytes
    if op == "send_recv":
        return float(size_bytes)
    raise InputError("collectives.op", f"unknown op {op!r}")


SMALL_MESSAGE_BYTES = 1024       # at or below: the time is the latency term
LARGE_MESSAGE_BYTES = 1024 ** 2  # at or above: the bandwidth term dominates


def fit_alpha_beta(bus_sizes: Iterable[float], times_s: Iterable[float],
                   message_bytes: Iterable[float] | None = None) -> tuple[float, float]:
    """(latency_s, bus_bandwidth_bytes_per_s) of time = a + S_bus / B.

    With ``message_bytes`` (the raw sizes), the two regimes are fitted apart, as nccl-tests reads
    latency off small messages and bus bandwidth off large ones: a = median time of messages
    <= 1 KiB, then 1/B minimising sum(((a + S/B) - t) / t)^2 over messages >= 1 MiB (closed
    form). gloo changes algorithm with the message size, so one line through all sizes would
    trade the large-message bandwidth for the mid sizes. Without them (or when a regime has no
    point): a >= 0 and 1/B > 0 minimising the relative residuals over all sizes (bounded linear
    least squares)."""
    from scipy.optimize import lsq_linear

    s = np.asarray(list(bus_sizes), dtype=float)
    t = np.asarray(list(times_s), dtype=float)
    require(len(s) >= 2 and len(s) == len(t), "collectives", "need at least two sizes to fit")
    require(bool(np.all(t > 0)), "collectives.times_s", "must be > 0")
    if message_bytes is not None:
        raw = np.asarray(list(message_bytes), dtype=float)
        small, large = raw <= SMALL_MESSAGE_BYTES, raw >= LARGE_MESSAGE_BYTES
        if small.any() and large.any():
            latency = float(np.median(t[small]))
            x = float(np.sum((s[large] / t[large]) * ((t[large] - latency) / t[large]))
                      / np.sum((s[large] / t[large]) ** 2))
            if x > 0:
                return latency, 1.0 / x
    a = np.stack([1.0 / t, s / t], axis=1)
    res = lsq_linear(a, np.ones_like(t), bounds=([0.0, 1e-18], [np.inf, np.inf]))
    latency, inv_bw = float(res.x[0]), float(res.x[1])
    return latency, 1.0 / inv_bw


# ----- results -> profile --------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A calibrated profile: the NodeSpec, the comments that explain each number, warnings."""

    node: NodeSpec
    comments: dict[str, str]
    header: tuple[str, ...]
    warnings: tuple[str, ...]
    contended: bool
    summary: dict[str, Any]

    def to_yaml(self) -> str:
        return profile_yaml(self.node, header=self.header, comments=self.comments)


def load_results(path: str | os.PathLike) -> dict:
    data = read_json_object(path, "results")
    check_results(data)
    return data


def check_results(data: Any) -> None:
    require(isinstance(data, dict), "results", "must be a JSON object")
    require(data.get("schema") == SCHEMA, "results.schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}")
    for key in ("env", "matmul", "memory_bound", "overhead", "memory", "contention"):
        require(key in data, f"results.{key}", "missing")
    require(len(data["matmul"]) > 0, "results.matmul", "is empty")
    require(len(data["memory_bound"]) > 0, "results.memory_bound", "is empty")


def _efficiency_curve(rows: list[dict], peaks: dict[str, float]) -> tuple[EfficiencyCurve, dict]:
    """Pool each GEMM's fraction of its dtype's peak, bin by half decades of FLOPs, take the
    median per bin: the [flops, fraction] table of the profile."""
    bins: dict[float, list[float]] = {}
    per_dtype: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        key = round(math.log10(row["flops"]) * 2) / 2
        frac = min(1.0, row["flops_per_s"] / peaks[row["dtype"]])
        bins.setdefault(key, []).append(frac)
        per_dtype.setdefault(row["dtype"], {}).setdefault(key, []).append(frac)
    points = tuple((10.0 ** k, float(statistics.median(v))) for k, v in sorted(bins.items()))
    detail = {dt: [(10.0 ** k, statistics.median(v)) for k, v in sorted(b.items())] for dt, b in per_dtype.items()}
    return EfficiencyCurve(points), detail


def _curves_by_dtype(detail: dict) -> tuple[tuple[str, EfficiencyCurve], ...]:
    """One curve per measured dtype (fp32 first: the CPU executor's default precision)."""
    order = sorted(detail, key=lambda dt: (dt != "fp32", dt))
    return tuple((dt, EfficiencyCurve(tuple((float(x), float(max(1e-3, e))) for x, e in detail[dt])))
                 for dt in order)


def _table(entries: list[dict]) -> tuple[tuple[float, float], ...]:
    """(bytes, median seconds) per measured size, ascending; a repeated size keeps its median."""
    by_size: dict[float, list[float]] = {}
    for r in entries:
        by_size.setdefault(float(r["bytes"]), []).append(float(r["median_s"]))
    return tuple((b, float(statistics.median(v))) for b, v in sorted(by_size.items()))


def _fit_collectives(rows: list[dict]) -> tuple[list[MeasuredCollective], dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], int(row["group_size"])), []).append(row)
    out, detail = [], {}
    for (op, g), entries in sorted(groups.items()):
        entries.sort(key=lambda r: r["bytes"])
        sbus = [bus_bytes(op, g, r["bytes"]) for r in entries]
        times = [r["median_s"] for r in entries]
        latency, bw = fit_alpha_beta(sbus, times, [r["bytes"] for r in entries])
        model = [latency + s / bw for s in sbus]
        worst = max(abs(m - t) / t for m, t in zip(model, times))
        out.append(MeasuredCollective(op=op, group_size=g, latency_s=latency, bus_bandwidth_bytes_per_s=bw,
                                      times_s=_table(entries)))
        small = entries[0]
        large = entries[-1]
        detail[(op, g)] = {
            "worst_fit_error": worst,
            "small": (small["bytes"], small["median_s"]),
            "large": (large["bytes"], large["median_s"], bus_bytes(op, g, large["bytes"]) / large["median_s"]),
            "sizes": len(entries),
        }
    return out, detail


def _contention(rows: list[dict], affinity_cores: int) -> tuple[int, list[str], list[str]]:
    """host_cores = effective cores (total GEMM rate of k concurrent ranks / one rank's rate,
    maximised over k; rounded up from a quarter above an integer), and the check of rate*min(1, cores/k) against each k. A run where a rank got
    less than 0.8 of its fair share of the ``affinity_cores`` is contended; if any is, the
    scheduler's core count is used instead of the contaminated estimate."""
    alone = next((r for r in rows if r["ranks"] == 1), None)
    require(alone is not None and alone["per_rank"], "results.contention", "needs the 1-rank run")
    rate1 = alone["per_rank"][0]["flops_per_s"]
    cores = max(1, affinity_cores)
    effective = max(sum(p["flops_per_s"] for p in r["per_rank"]) / rate1 for r in rows)
    warnings = []
    for r in sorted(rows, key=lambda r: r["ranks"]):
        k = r["ranks"]
        share = min(1.0, cores / k)
        worst = min(p["cpu_ratio"] for p in r["per_rank"])
        if worst < CONTENDED_CPU_RATIO * share:
            warnings.append(f"contention bench with {k} rank(s): a rank got {worst:.2f} of a core "
                            f"(fair share {share:.2f}) after {r.get('attempts', 1)} attempt(s)")
    # rounded up from a quarter above an integer: a short sample on a machine whose speed
    # drifts reads low (1.33 cores seen for 2 idle ones in a --quick run), and charging one
    # core where the scheduler gives two doubles every multi-rank prediction
    host_cores = max(1, min(math.ceil(effective - 0.25), cores))
    if warnings and host_cores != cores:
        warnings.append(f"measured {effective:.2f} effective cores on a busy machine: using the "
                        f"{cores} cores the scheduler gives this process")
        host_cores = cores
    lines = [f"effective cores measured: {effective:.2f} (affinity {cores}) -> host_cores {host_cores}"]
    for r in sorted(rows, key=lambda r: r["ranks"]):
        k = r["ranks"]
        rates = [p["flops_per_s"] for p in r["per_rank"]]
        ratios = [p["cpu_ratio"] for p in r["per_rank"]]
        model = rate1 * min(1.0, host_cores / k)
        err = (statistics.median(rates) - model) / model
        lines.append(f"{k} rank(s): per-rank {statistics.median(rates) / 1e9:.1f} GFLOP/s "
                     f"(min {min(rates) / 1e9:.1f}), cpu share {min(ratios):.2f}-{max(ratios):.2f}; "
                     f"model rate*min(1,{host_cores}/{k}) = {model / 1e9:.1f} ({err * 100:+.1f}%)")
    return host_cores, lines, warnings


def build_profile(results: dict, *, name: str = "local-cpu", gpus_per_node: int | None = None) -> Calibration:
    """Turn benchmark results (``python -m executor.bench`` JSON) into a CPU hardware profile.

    gpus_per_node: ranks per "node" (default: the effective host cores, so every rank has a core;
    ``predict --gpus-per-node`` overrides it)."""
    check_results(results)
    env = results["env"]
    warnings: list[str] = []

    # GEMMs
    mm = results["matmul"]
    peaks = {}
    for dtype in sorted({r["dtype"] for r in mm}):
        peaks[dtype] = max(r["flops_per_s"] for r in mm if r["dtype"] == dtype)
    low = [r for r in mm if r["cpu_ratio"] < CONTENDED_CPU_RATIO]
    clean_mm = [r for r in mm if r["cpu_ratio"] >= CONTENDED_CPU_RATIO]
    curve, curve_detail = _efficiency_curve(clean_mm or mm, peaks)
    if low:
        warnings.append(f"{len(low)} of {len(mm)} GEMM measurements got < {CONTENDED_CPU_RATIO} of a core"
                        + (" (left out of the efficiency curve)" if clean_mm else ""))

    # memory-bound ops
    mb_all = results["memory_bound"]
    low = [r for r in mb_all if r["cpu_ratio"] < CONTENDED_CPU_RATIO]
    mb = [r for r in mb_all if r["cpu_ratio"] >= CONTENDED_CPU_RATIO] or mb_all
    bw_peak = max(r["bytes_per_s"] for r in mb_all)
    mb_eff = statistics.median(r["bytes_per_s"] / bw_peak for r in mb)
    per_op: dict[tuple[str, str], list[float]] = {}
    for r in mb:
        per_op.setdefault((r["op"], r["dtype"]), []).append(r["bytes_per_s"])
    if low:
        warnings.append(f"{len(low)} of {len(mb_all)} memory-bound measurements got < {CONTENDED_CPU_RATIO} "
                        f"of a core" + (" (left out of the efficiency)" if len(mb) < len(mb_all) else ""))

    # per-op overhead
    ov = {r["op"]: r["median_s"] for r in results["overhead"]}
    simple = [ov[o] for o in OVERHEAD_OPS if o in ov]
    require(bool(simple), "results.overhead", f"needs at least one of {OVERHEAD_OPS}")
    kernel_overhead = statistics.median(simple)

    # memory
    mem = results["memory"]
    reserved = max(0, mem["rss_after_warmup_bytes"] - mem["rss_after_init_bytes"])
    alloc = mem["allocator"]
    frag = max(0.0, min(0.5, alloc["rss_growth_bytes"] / alloc["peak_live_bytes"] - 1.0))

    # cores
    host_cores, contention_lines, contention_warn = _contention(results["contention"], env.get("affinity_cores", 1))
    warnings += contention_warn
    ranks = gpus_per_node or host_cores
    hbm_bytes = env["mem_total_bytes"] / ranks

    # collectives and links
    coll_rows = results.get("collectives") or []
    collectives, coll_detail = _fit_collectives(coll_rows) if coll_rows else ([], {})
    p2p = next((c for c in collectives if c.op == "send_recv" and c.group_size == 2), None)
    if p2p is None:
        require(False, "results.collectives", "needs send_recv on 2 ranks (run with --nproc >= 2)")
    ratios = [c.bus_bandwidth_bytes_per_s / p2p.bus_bandwidth_bytes_per_s
              for c in collectives if c.op != "send_recv" and c.group_size == 2]
    bus_eff = min(1.0, max(1e-3, statistics.median(ratios))) if ratios else 1.0
    link = LinkSpec(bandwidth_bytes_per_s=p2p.bus_bandwidth_bytes_per_s, latency_s=p2p.latency_s,
                    bus_efficiency=bus_eff)

    contended = bool(warnings)
    measured_on = (f"host={env['hostname']}; cpu={env['cpu_model']}; cores={env['cpu_count']} "
                   f"(affinity {env.get('affinity_cores')}); torch={env['torch_version']}; "
                   f"date={env['date']}; ranks={env['world_size']}; threads/rank={env['threads_per_rank']}"
                   f"{'; quick' if results.get('quick') else ''}")
    device = DeviceSpec(
        name=f"cpu-rank ({env['cpu_model']}, 1 thread)",
        peak_flops_per_s=tuple((dt, peaks[dt]) for dt in ("fp32", "tf32", "bf16", "fp16", "fp8") if dt in peaks),
        hbm_bytes=hbm_bytes,
        hbm_bandwidth_bytes_per_s=bw_peak,
        matmul_efficiency=curve,
        matmul_efficiency_by_dtype=_curves_by_dtype(curve_detail),
        memory_bound_efficiency=mb_eff,
        kernel_overhead_s=kernel_overhead,
        reserved_bytes=float(reserved),
        fragmentation_fraction=frag,
        host_cores=host_cores,
    )
    node = NodeSpec(
        name=name,
        description=f"This machine's CPU, one thread per rank, gloo over loopback ({env['hostname']})",
        device=device, gpus_per_node=ranks, intra_node=link, inter_node=link,
        collectives=tuple(collectives), measured_on=measured_on,
    )

    reps = results.get("reps", 5)
    comments = {
        "peak_tflops.fp32": "best sustained single-thread GEMM rate over the transformer shapes (median of "
                            f"{reps} samples each)",
        "peak_tflops.bf16": "same, bf16",
        "hbm_gib": f"host MemTotal {env['mem_total_bytes'] / GIB:.1f} GiB shared by {ranks} ranks",
        "hbm_bandwidth_gb_s": "best elementwise/normalisation rate (bytes read + written) on 1-64 MB tensors",
        "memory_bound_efficiency": "median rate / best over add, mul, gelu, layernorm x sizes x dtypes",
        "kernel_overhead_us": "median eager op time on 8-element tensors (" +
                              ", ".join(f"{o} {ov[o] / MICRO:.2f}" for o in OVERHEAD_OPS if o in ov) + " us)",
        "reserved_gib": (f"RSS growth from after init_process_group to after a first GEMM + backward + "
                         f"all_reduce ({reserved / 2**20:.1f} MiB); see the header"),
        "fragmentation_fraction": (f"RSS high-water growth / peak live tensor bytes - 1 for an activation-like "
                                   f"alloc/free pattern ({alloc['rss_growth_bytes'] / 2**20:.0f} MiB for "
                                   f"{alloc['peak_live_bytes'] / 2**20:.0f} MiB live), clipped to [0, 0.5]"),
        "host_cores": "effective cores from the contention bench (total rate of k ranks / 1 rank)",
        "gpus_per_node": "default rank count: one rank per effective core (predict --gpus-per-node overrides)",
        "intra_node": "send/recv ping-pong fit on 2 ranks; bus_efficiency = median collective busbw / p2p bw",
        "inter_node": "one host: same as intra_node",
        "matmul_efficiency": "per dtype: fraction of that dtype's peak, median per half decade of GEMM FLOPs",
    }
    header = [
        f"Calibrated by `clusterplan calibrate{' --quick' if results.get('quick') else ''}"
        f"{' --repeat %d' % results['repeat'] if results.get('repeat', 1) > 1 else ''} --nproc "
        f"{env['world_size']}` on {env['hostname']} ({env['cpu_model']}, {env['cpu_count']} cores), "
        f"torch {env['torch_version']}, {env['date']}.",
        f"Regenerate: .venv/bin/clusterplan calibrate"
        f"{' --repeat %d' % results['repeat'] if results.get('repeat', 1) > 1 else ''}"
        "   (numbers are medians of repeated samples)",
        f"contended: {'true' if contended else 'false'}"
        + ("" if not warnings else "  (" + "; ".join(warnings) + ")"),
        "",
        "One 'device' is one CPU rank with one intra-op thread. Memory: the executor reports peak memory",
        "as RSS high-water minus the rank's baseline RSS (taken after import torch + gloo init), so the",
        "torch runtime itself is not counted. reserved_gib is therefore only what a training step adds",
        "on top of that baseline besides tensors (autograd engine, gloo/GEMM buffers). For reference:",
        f"  RSS before torch {mem['rss_before_torch_bytes'] / 2**20:.0f} MiB, after import torch "
        f"{mem['rss_after_import_torch_bytes'] / 2**20:.0f} MiB, after gloo init "
        f"{mem['rss_after_init_bytes'] / 2**20:.0f} MiB, after a warm-up step "
        f"{mem['rss_after_warmup_bytes'] / 2**20:.0f} MiB.",
        "",
        "Compute rate when ranks share cores (fp32 GEMM 1024x512x2048 on k concurrent ranks):",
        *[f"  {line}" for line in contention_lines],
        "",
        "GEMM efficiency per dtype (FLOPs: fraction of that dtype's peak):",
        *[f"  {dt}: " + ", ".join(f"{f:.0e}: {e:.2f}" for f, e in pts) for dt, pts in sorted(curve_detail.items())],
        *_matmul_budget_lines(mm),
        "",
        "Memory-bound rates, GB/s (median over sizes): " + ", ".join(
            f"{op}/{dt} {statistics.median(v) / GB:.1f}" for (op, dt), v in sorted(per_op.items())),
        "",
        "Collectives: the measured time of every size is kept (times_us) and the cost model interpolates it",
        "in log-log; beyond the largest size time = latency + S_bus / bus_bandwidth (S_bus ring-corrected):",
        "latency = median time of messages <= 1 KiB, bandwidth fitted on relative error over messages >= 1 MiB",
        "(mid sizes are where gloo switches algorithms: the worst error below is that line's over all sizes,",
        "which the table avoids). Calls are timed one at a time (gloo is several times slower for 1-256 KB",
        "messages issued back to back).",
        "send_recv on 2 ranks is a ping-pong (one-way time); on g > 2 ranks a concurrent ring shift.",
        *[f"  {op} n={g}: {d['sizes']} sizes, {d['small'][0]} B {d['small'][1] / MICRO:.0f} us, "
          f"{d['large'][0] / 2**20:.0f} MiB {d['large'][1] * 1e3:.1f} ms ({d['large'][2] / GB:.2f} GB/s bus), "
          f"worst fit error {d['worst_fit_error'] * 100:.0f}%" for (op, g), d in sorted(coll_detail.items())],
    ]
    if results.get("framework"):
        spec, fcomments, flines = build_framework(results["framework"], node)
        node = dataclasses.replace(node, framework=spec)
        comments.update(fcomments)
        header += ["", "Framework (the executor's building blocks, executor/bench/framework.py, 2 ranks):",
                   *[f"  {line}" for line in flines]]
    else:
        header += ["", "No framework section (results without executor building blocks): the cost model "
                       "uses kernel_overhead_us and no wrapper costs."]
    summary = {
        "peak_gflops_per_s": {dt: p / 1e9 for dt, p in peaks.items()},
        "hbm_bandwidth_gb_s": bw_peak / GB,
        "memory_bound_efficiency": mb_eff,
        "kernel_overhead_us": kernel_overhead / MICRO,
        "reserved_mib": reserved / 2**20,
        "fragmentation_fraction": frag,
        "host_cores": host_cores,
        "gpus_per_node": ranks,
        "collectives": [{"op": c.op, "group_size": c.group_size, "latency_us": c.latency_s / MICRO,
                         "bus_bandwidth_gb_s": c.bus_bandwidth_bytes_per_s / GB} for c in collectives],
        "contention": contention_lines,
        "warnings": warnings,
        "bench_wall_s": results.get("bench_wall_s"),
        "framework": ({f: getattr(node.framework, f) for f in FRAMEWORK_YAML} if node.framework else None),
    }
    return Calibration(node=node, comments=comments, header=tuple(header), warnings=tuple(warnings),
                       contended=contended, summary=summary)


# ----- NodeSpec -> YAML ----------------------------------------------------------------------
def _num(x: float) -> str:
    """A YAML float literal PyYAML reads back as a float (needs a '.', signed exponent)."""
    x = float(x)
    if x == 0:
        return "0.0"
    if 1e-3 <= abs(x) < 1e5:
        text = f"{x:.6g}"
        if "e" not in text:
            return text if "." in text else text + ".0"
    mant, exp = f"{x:.5e}".split("e")
    return f"{mant}e{int(exp):+03d}"


def _line(indent: int, key: str, value: str, comments: dict[str, str], ckey: str | None = None) -> str:
    comment = comments.get(ckey or key)
    text = f"{'  ' * indent}{key}: {value}"
    return f"{text}  # {comment}" if comment else text


def profile_yaml(node: NodeSpec, *, header: Iterable[str] = (), comments: dict[str, str] | None = None) -> str:
    """Serialise a NodeSpec in the ``hardware_profiles/`` schema (readable units), with comments.
    The text is checked to parse back (:func:`planner.hardware.parse_profile`) to the same node."""
    c = comments or {}
    d = node.device
    out = [f"# {h}" if h else "#" for h in header]
    out.append(f"name: {json.dumps(node.name)}")
    out.append(f"description: {json.dumps(node.description)}")
    if node.measured_on:
        out.append(f"measured_on: {json.dumps(node.measured_on)}")
    out.append("device:")
    out.append(f"  name: {json.dumps(d.name)}")
    out.append("  peak_tflops:")
    for dtype, flops in d.peak_flops_per_s:
        out.append(_line(2, dtype, _num(flops / TERA), c, f"peak_tflops.{dtype}"))
    out.append(_line(1, "hbm_gib", _num(d.hbm_bytes / GIB), c))
    out.append(_line(1, "hbm_bandwidth_gb_s", _num(d.hbm_bandwidth_bytes_per_s / GB), c))
    if "matmul_efficiency" in c:
        out.append(f"  # matmul_efficiency: {c['matmul_efficiency']}")
    def points(curve: EfficiencyCurve) -> str:
        return "[" + ", ".join(f"[{_num(s)}, {_num(e)}]" for s, e in curve.points) + "]"

    if d.matmul_efficiency_by_dtype:
        out.append("  matmul_efficiency:")
        for dtype, curve in d.matmul_efficiency_by_dtype:
            out.append(f"    {dtype}: {points(curve)}")
    else:
        out.append(f"  matmul_efficiency: {points(d.matmul_efficiency)}")
    out.append(_line(1, "memory_bound_efficiency", _num(d.memory_bound_efficiency), c))
    out.append(_line(1, "kernel_overhead_us", _num(d.kernel_overhead_s / MICRO), c))
    out.append(_line(1, "reserved_gib", _num(d.reserved_bytes / GIB), c))
    out.append(_line(1, "fragmentation_fraction", _num(d.fragmentation_fraction), c))
    if d.host_cores:
        out.append(_line(1, "host_cores", str(int(d.host_cores)), c))
    out.append("node:")
    out.append(_line(1, "gpus_per_node", str(int(node.gpus_per_node)), c))
    for key, link in (("intra_node", node.intra_node), ("inter_node", node.inter_node)):
        out.append(_line(1, key, "", c).replace(": ", ":", 1) if key in c else f"  {key}:")
        out.append(f"    bandwidth_gb_s: {_num(link.bandwidth_bytes_per_s / GB)}")
        out.append(f"    latency_us: {_num(link.latency_s / MICRO)}")
        out.append(f"    bus_efficiency: {_num(link.bus_efficiency)}")
    if node.collectives:
        out.append("collectives:  # measured: times_us [[bytes, us], ...] interpolated in log-log; "
                   "beyond it time = latency + S_bus / bus_bandwidth")
        for m in node.collectives:
            table = ""
            if m.times_s:
                table = ", times_us: [" + ", ".join(f"[{int(b)}, {_num(t / MICRO)}]" for b, t in m.times_s) + "]"
            out.append(f"  - {{op: {m.op}, group_size: {m.group_size}, latency_us: {_num(m.latency_s / MICRO)}, "
                       f"bus_bandwidth_gb_s: {_num(m.bus_bandwidth_bytes_per_s / GB)}{table}}}")
    if node.framework is not None:
        out.append(_line(0, "framework", "", c).replace(": ", ":", 1) if "framework" in c else "framework:")
        for field, (key, factor) in FRAMEWORK_YAML.items():
            out.append(_line(1, key, _num(getattr(node.framework, field) / factor), c, f"framework.{key}"))
        for table in RATE_TABLES:
            out += _rate_table_yaml(table, node.framework, c)
    text = "\n".join(out) + "\n"
    back = parse_profile(yaml.safe_load(text), source="generated profile")
    _check_round_trip(node, back)
    return text


def _rate_table_yaml(table: RateTable, framework: FrameworkSpec, comments: dict[str, str]) -> list[str]:
    """The ``framework.<table.yaml_key>`` lines: per kind and dtype [[x, forward, backward]]."""
    rows = getattr(framework, table.field)
    if not rows:
        return []
    out = [_line(1, table.yaml_key, "", comments, f"framework.{table.yaml_key}").replace(": ", ":", 1)]
    for kind in dict.fromkeys(kind for kind, _, _ in rows):
        out.append(f"    {kind}:")
        for k, dtype, points in rows:
            if k == kind:
                out.append(f"      {dtype}: [" + ", ".join(
                    f"[{_num(x / table.x_unit)}, {_num(f / table.rate_unit)}, {_num(w / table.rate_unit)}]"
                    for x, f, w in points) + "]")
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-15)


def _check_round_trip(node: NodeSpec, back: NodeSpec) -> None:
    d, e = node.device, back.device
    pairs = [(d.hbm_bytes, e.hbm_bytes), (d.hbm_bandwidth_bytes_per_s, e.hbm_bandwidth_bytes_per_s),
             (d.memory_bound_efficiency, e.memory_bound_efficiency), (d.kernel_overhead_s, e.kernel_overhead_s),
             (d.reserved_bytes, e.reserved_bytes), (d.fragmentation_fraction, e.fragmentation_fraction),
             (node.intra_node.bandwidth_bytes_per_s, back.intra_node.bandwidth_bytes_per_s)]
    pairs += list(zip([f for _, f in d.peak_flops_per_s], [f for _, f in e.peak_flops_per_s]))
    pairs += [(m.bus_bandwidth_bytes_per_s, n.bus_bandwidth_bytes_per_s) for m, n in zip(node.collectives, back.collectives)]
    pairs += [(t, u) for m, n in zip(node.collectives, back.collectives)
              for (_, t), (_, u) in zip(m.times_s, n.times_s)]
    if (node.framework is None) != (back.framework is None):
        raise AssertionError("profile_yaml: the framework section did not round-trip")
    if node.framework is not None:
        pairs += [(getattr(node.framework, f), getattr(back.framework, f)) for f in FRAMEWORK_YAML]
        for table in RATE_TABLES:
            mine, theirs = getattr(node.framework, table.field), getattr(back.framework, table.field)
            if [(k, d, len(p)) for k, d, p in mine] != [(k, d, len(p)) for k, d, p in theirs]:
                raise AssertionError(f"profile_yaml: framework.{table.yaml_key} did not round-trip")
            pairs += [(a, b) for (_, _, p), (_, _, q) in zip(mine, theirs) for u, v in zip(p, q) for a, b in zip(u, v)]
    if not all(_close(a, b) for a, b in pairs) or len(node.collectives) != len(back.collectives):
        raise AssertionError("profile_yaml: the written profile does not read back to the same numbers")


def write_profile(node_or_calibration: NodeSpec | Calibration, path: str | os.PathLike, *,
                  header: Iterable[str] = (), comments: dict[str, str] | None = None) -> Path:
    """Write a profile YAML atomically (validated before the rename)."""
    if isinstance(node_or_calibration, Calibration):
        text = node_or_calibration.to_yaml()
    else:
        text = profile_yaml(node_or_calibration, header=header, comments=comments)
    return atomic_write_text(path, text)


# ----- running the benchmarks ----------------------------------------------------------------
def bench_command(nproc: int, out_json: str | os.PathLike, *, quick: bool, parts: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "executor.bench", "--out", str(out_json)]
    if quick:
        cmd.append("--quick")
    if parts:
        cmd += ["--parts", parts]
    return cmd


def run_benchmarks(nproc: int = 4, *, quick: bool = False, timeout_s: float | None = None,
                   progress=None, framework: bool = True) -> dict:
    """Run ``executor.bench`` under torchrun in a subprocess; return its results (parsed JSON).
    framework: also run the executor's building blocks (``--parts framework``) on 2 ranks.
    ``progress`` (callable taking a line) receives the benchmark's progress lines."""
    require(isinstance(nproc, int) and nproc >= 2, "nproc", f"must be an integer >= 2, got {nproc!r}")
    timeout_s = timeout_s or (120.0 if quick else 1200.0)
    tmpdir = tempfile.mkdtemp(prefix="clusterplan-bench-")
    out_json = Path(tmpdir) / "results.json"
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONWARNINGS"] = "ignore::FutureWarning"
    cmd = bench_command(nproc, out_json, quick=quick)
    tail: list[str] = []
    try:
        results = _run_bench(cmd, out_json, env, timeout_s, tail, progress)
        if framework:
            fw_json = Path(tmpdir) / "framework.json"
            fw_cmd = bench_command(2, fw_json, quick=quick, parts="framework")
            results["framework"] = _run_bench(fw_cmd, fw_json, env, timeout_s, tail, progress,
                                              check=False)["framework"]
        return results
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run_bench(cmd, out_json, env, timeout_s, tail, progress, check: bool = True) -> dict:
    """One torchrun of ``executor.bench``; its JSON (checked as full results when ``check``)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        import threading

        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                del tail[:-40]
                if line.startswith("[bench]") and progress:
                    progress(line[len("[bench] "):])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = proc.wait(timeout=timeout_s)
        reader.join(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise InputError("calibrate", f"benchmarks did not finish within {timeout_s:.0f} s") from None
    if rc != 0 or not out_json.exists():
        detail = " | ".join(l for l in tail[-6:] if l.strip())
        raise InputError("calibrate", f"benchmark run failed (exit {rc}): {detail[-400:]}")
    return load_results(out_json) if check else read_json_object(out_json, "results")


def median_results(passes: list[Any]) -> Any:
    """Element-wise median of benchmark passes of the same structure (``calibrate --repeat``):
    every number that differs between passes becomes the median over them (each measurement of
    each pass is itself a median of repeated samples), flags are true if any pass set them, any
    other value is the first pass's. A machine whose speed drifts over minutes (a shared VM)
    then gives its typical state rather than the state of one moment."""
    first = passes[0]
    if len(passes) == 1:
        return first
    if isinstance(first, dict) and all(isinstance(p, dict) for p in passes):
        return {k: (median_results([p[k] for p in passes]) if all(k in p for p in passes) else v)
                for k, v in first.items()}
    if isinstance(first, list) and all(isinstance(p, list) and len(p) == len(first) for p in passes):
        return [median_results(list(items)) for items in zip(*passes)]
    if isinstance(first, bool):
        return any(bool(p) for p in passes)
    if (isinstance(first, (int, float)) and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                for p in passes)):
        return first if all(p == first for p in passes) else float(statistics.median(passes))
    return first


def _matmul_budget_lines(rows: list[dict]) -> list[str]:
    """A header line per dtype whose GEMMs stopped at the bench's time budget before the largest
    shape another dtype reached (the curve holds its last point beyond)."""
    largest = max(r["flops"] for r in rows)
    out = []
    for dtype in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dtype]
        top = max(r["flops"] for r in mine)
        if top < largest:
            budget = mine[0].get("budget_s")
            within = f"within the bench's {budget:.0f} s budget" if budget else "recorded"
            out.append(f"  {dtype}: {len(mine)} GEMMs {within}, up to {top:.1e} FLOPs "
                       f"(best {max(r['flops_per_s'] for r in mine) / 1e9:.1f} GFLOP/s; the largest shapes would "
                       f"take longer)")
    return out


def _matmul_key(row: dict) -> tuple:
    return row["dtype"], row["kind"], row["op"], row["tokens"], row["hidden"]


def common_matmul_shapes(passes: list[dict]) -> list[dict]:
    """The passes with their GEMM rows cut to the shapes every pass measured, in the first
    pass's order: under its time budget a pass may stop a slow dtype one shape earlier than
    another (``executor.bench.compute.matmul_bench``), and :func:`median_results` takes
    medians row by row."""
    if len(passes) < 2 or not all(isinstance(p.get("matmul"), list) for p in passes):
        return passes
    common = set.intersection(*({_matmul_key(r) for r in p["matmul"]} for p in passes))
    return [{**p, "matmul": [r for r in p["matmul"] if _matmul_key(r) in common]} for p in passes]


def combine_passes(passes: list[dict]) -> dict:
    """Benchmark passes as one result (what ``calibrate --repeat N`` records): the element-wise
    median over the GEMM shapes every pass measured (:func:`common_matmul_shapes`,
    :func:`median_results`), with the passes kept under ``passes`` when there are several."""
    passes = common_matmul_shapes(passes)
    results = median_results(passes)
    return {**results, "repeat": len(passes), "passes": passes} if len(passes) > 1 else results


def _pass_spread_lines(passes: list[dict], name: str, gpus_per_node: int | None) -> list[str]:
    """Header lines: the main numbers of each pass, so the profile shows the machine's drift."""
    rows = []
    for results in passes:
        c = build_profile(results, name=name, gpus_per_node=gpus_per_node)
        s = c.summary
        ar = next((x for x in s["collectives"] if x["op"] == "all_reduce" and x["group_size"] == 2), None)
        f = s["framework"] or {}
        rows.append({"fp32 GEMM peak GFLOP/s": s["peak_gflops_per_s"].get("fp32", math.nan),
                     "per-op forward us": 1e6 * f.get("op_forward_s", math.nan),
                     "TP module forward us": 1e6 * f.get("tp_linear_forward_s", math.nan),
                     "FSDP unit forward us": 1e6 * f.get("fsdp_unit_forward_s", math.nan),
                     "concurrent slowdown": f.get("concurrent_slowdown", math.nan),
                     "in-step forward slowdown": f.get("step_forward_slowdown", math.nan),
                     "concurrent GEMM slowdown": f.get("concurrent_gemm_slowdown", math.nan),
                     "all_reduce n=2 GB/s": ar["bus_bandwidth_gb_s"] if ar else math.nan})
    return [f"  {key}: " + " / ".join(f"{r[key]:.3g}" for r in rows) for key in rows[0]]


def calibrate(nproc: int = 4, *, quick: bool = False, out: str | os.PathLike | None = DEFAULT_PROFILE_PATH,
              results_path: str | os.PathLike | None = None, save_results: str | os.PathLike | None = None,
              name: str = "local-cpu", gpus_per_node: int | None = None, progress=None,
              repeat: int = 1) -> Calibration:
    """Measure this machine (or read recorded results) and write the profile (``out``; None: don't).
    repeat: run the whole benchmark suite that many times and keep the element-wise median
    (:func:`median_results`); the profile header lists each pass's main numbers."""
    require(isinstance(repeat, int) and repeat >= 1, "repeat", f"must be an integer >= 1, got {repeat!r}")
    if results_path:
        results = load_results(results_path)
    else:
        passes = []
        for i in range(repeat):
            if progress and repeat > 1:
                progress(f"pass {i + 1}/{repeat}")
            passes.append(run_benchmarks(nproc, quick=quick, progress=progress))
        results = combine_passes(passes)
    if save_results:
        atomic_write_text(save_results, json.dumps(results, indent=1, sort_keys=True) + "\n")
    cal = build_profile(results, name=name, gpus_per_node=gpus_per_node)
    if results.get("passes"):
        spread = _pass_spread_lines(results["passes"], name, gpus_per_node)
        cal = dataclasses.replace(cal, header=cal.header + (
            "", f"Each number above is the median over {len(results['passes'])} passes of the whole suite; "
                "per pass:", *spread))
    if out is not None:
        write_profile(cal, out)
    return cal


# ----- fitting a profile to measured runs ----------------------------------------------------
# Physical parameters, each applied to a NodeSpec by :func:`apply_params`:
#   compute_scale          x peak FLOP/s of every dtype (= a uniform matmul-efficiency scale)
#   kernel_overhead_s      per-op framework overhead (seconds)
#   memory_bound_efficiency  fraction of the memory bandwidth elementwise ops reach
#   latency_scale          x every collective / link latency
#   bandwidth_scale        x every collective bus bandwidth / link bandwidth
FIT_PARAMS = ("compute_scale", "kernel_overhead_s", "memory_bound_efficiency", "latency_scale",
              "bandwidth_scale")
_LOG_PARAMS = {"compute_scale", "latency_scale", "bandwidth_scale"}
_BOUNDS = {"compute_scale": (0.2, 5.0), "kernel_overhead_s": (0.0, 1e-3), "memory_bound_efficiency": (0.01, 1.0),
           "latency_scale": (0.05, 20.0), "bandwidth_scale": (0.05, 20.0)}
_UNIT = {"kernel_overhead_s": 1e-6}  # optimise the overhead in microseconds (conditioning)


def base_params(node: NodeSpec) -> dict[str, float]:
    """The parameter values of ``node`` itself (scales 1)."""
    return {"compute_scale": 1.0, "kernel_overhead_s": node.device.kernel_overhead_s,
            "memory_bound_efficiency": node.device.memory_bound_efficiency,
            "latency_scale": 1.0, "bandwidth_scale": 1.0}


def apply_params(node: NodeSpec, params: dict[str, float]) -> NodeSpec:
    """A copy of ``node`` with the given physical parameters (missing ones unchanged);
    frozen specs are copied with ``dataclasses.replace``."""
    unknown = sorted(set(params) - set(FIT_PARAMS))
    require(not unknown, "params", f"unknown parameter {unknown[:1]} (allowed: {', '.join(FIT_PARAMS)})")
    p = {**base_params(node), **params}
    d = node.device
    device = dataclasses.replace(
        d,
        peak_flops_per_s=tuple((dt, f * p["compute_scale"]) for dt, f in d.peak_flops_per_s),
        kernel_overhead_s=p["kernel_overhead_s"],
        memory_bound_efficiency=min(1.0, p["memory_bound_efficiency"]),
    )
    ls, bs = p["latency_scale"], p["bandwidth_scale"]

    def link(l: LinkSpec) -> LinkSpec:
        return dataclasses.replace(l, latency_s=l.latency_s * ls, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * bs)

    def table(c) -> tuple[tuple[float, float], ...]:
        # each measured time: its latency part scaled by ls, the rest by 1/bs
        return tuple((b, ls * min(t, c.latency_s) + max(0.0, t - c.latency_s) / bs) for b, t in c.times_s)

    colls = tuple(dataclasses.replace(c, latency_s=c.latency_s * ls,
                                      bus_bandwidth_bytes_per_s=c.bus_bandwidth_bytes_per_s * bs,
                                      times_s=table(c))
                  for c in node.collectives)
    return dataclasses.replace(node, device=device, intra_node=link(node.intra_node),
                               inter_node=link(node.inter_node), collectives=colls)


@dataclass(frozen=True)
class MeasuredRun:
    """A plan and its measured median step time (seconds)."""

    run_dir: str
    plan: Any  # planner.plan.Plan
    measured_step_time_s: float


def find_plan(run_dir: str | os.PathLike, summary: dict, extra_plans: Iterable[str | os.PathLike] = ()):
    """The Plan of a run: ``RUN_DIR/plan.json``, a ``plan`` object inside summary.json, a plan file
    named on the launcher's command line, or one of ``extra_plans`` whose id matches."""
    from planner.plan import Plan

    run_dir = Path(run_dir)
    want = summary.get("plan_id")
    candidates: list[Any] = []
    if (run_dir / "plan.json").exists():
        candidates.append(run_dir / "plan.json")
    if isinstance(summary.get("plan"), dict):
        candidates.append(summary["plan"])
    for arg in (summary.get("launcher") or {}).get("command") or []:
        if isinstance(arg, str) and arg.endswith(".json") and Path(arg).exists():
            candidates.append(Path(arg))
    candidates += [Path(p) for p in extra_plans]
    for cand in candidates:
        try:
            plan = Plan.from_dict(cand) if isinstance(cand, dict) else Plan.load(cand)
        except InputError:
            continue
        if not want or plan.id == want:
            return plan
    raise InputError("run_dir", f"{run_dir}: no plan with id {want} (looked for plan.json, summary.plan, "
                                f"the launcher's plan file{', --plan files' if extra_plans else ''})")


def load_measured_runs(run_dirs: Iterable[str | os.PathLike],
                       extra_plans: Iterable[str | os.PathLike] = ()) -> tuple[list[MeasuredRun], list[str]]:
    """Runs usable for fitting (status ok, a measured step time, a plan), and the skipped ones
    with the reason."""
    runs, skipped = [], []
    extra_plans = list(extra_plans)
    for d in run_dirs:
        summary = read_json_object(Path(d) / "summary.json", "run_dir", f"{d} has no summary.json")
        status = summary.get("status")
        step = (summary.get("measured") or {}).get("step_time_s")
        if status != "ok" or not isinstance(step, (int, float)) or step <= 0:
            skipped.append(f"{d}: status {status}, measured step time {step}")
            continue
        runs.append(MeasuredRun(str(d), find_plan(d, summary, extra_plans), float(step)))
    return runs, skipped


def predict_step_time(plan, node: NodeSpec) -> float:
    """Step time of ``plan`` on ``node`` (the plan's node count and ranks per node)."""
    from planner.cost.step import predict
    from planner.hardware import ClusterSpec

    cluster = ClusterSpec.homogeneous(node.with_gpus_per_node(plan.gpus_per_node), plan.n_nodes)
    return predict(plan.model, cluster, plan.parallel).step_time_s


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters, the fitted profile and its errors (percent, (pred - meas) / meas)."""

    params: dict[str, float]
    initial: dict[str, float]
    node: NodeSpec
    run_dirs: tuple[str, ...]
    errors_before_pct: tuple[float, ...]
    errors_after_pct: tuple[float, ...]
    loo_errors_pct: tuple[float | None, ...]
    success: bool
    message: str
    skipped: tuple[str, ...] = ()

    @staticmethod
    def _stats(errs) -> dict:
        vals = [abs(e) for e in errs if e is not None]
        return {"median_abs_error_pct": statistics.median(vals) if vals else None,
                "max_abs_error_pct": max(vals) if vals else None}

    def to_dict(self) -> dict:
        return {
            "params": self.params, "initial": self.initial, "success": self.success, "message": self.message,
            "runs": [{"run_dir": r, "error_before_pct": b, "error_after_pct": a, "loo_error_pct": l}
                     for r, b, a, l in zip(self.run_dirs, self.errors_before_pct, self.errors_after_pct,
                                           self.loo_errors_pct)],
            "before": self._stats(self.errors_before_pct), "in_sample": self._stats(self.errors_after_pct),
            "leave_one_out": self._stats(self.loo_errors_pct), "skipped": list(self.skipped),
        }


def _to_x(name: str, value: float) -> float:
    return math.log(value) if name in _LOG_PARAMS else value / _UNIT.get(name, 1.0)


def _from_x(name: str, x: float) -> float:
    return math.exp(x) if name in _LOG_PARAMS else x * _UNIT.get(name, 1.0)


def _solve(runs: list[MeasuredRun], base: NodeSpec, names: tuple[str, ...]):
    from scipy.optimize import least_squares

    start = base_params(base)
    lo = np.array([_to_x(n, max(_BOUNDS[n][0], 1e-12) if n in _LOG_PARAMS else _BOUNDS[n][0]) for n in names])
    hi = np.array([_to_x(n, _BOUNDS[n][1]) for n in names])
    x0 = np.clip(np.array([_to_x(n, start[n]) for n in names]), lo + 1e-9, hi - 1e-9)

    def residuals(x):
        node = apply_params(base, {n: _from_x(n, v) for n, v in zip(names, x)})
        return np.array([predict_step_time(r.plan, node) / r.measured_step_time_s - 1.0 for r in runs])

    res = least_squares(residuals, x0, bounds=(lo, hi), method="trf", diff_step=1e-4, xtol=1e-10,
                        ftol=1e-12, gtol=1e-12, max_nfev=200 * (len(names) + 1))
    fitted = {n: float(_from_x(n, float(v))) for n, v in zip(names, res.x)}
    return fitted, bool(res.success), str(res.message)


def fit_profile(runs: list[MeasuredRun], base: NodeSpec, *, params: Iterable[str] = FIT_PARAMS,
                loo: bool = True, skipped: Iterable[str] = ()) -> FitResult:
    """Fit the physical parameters of ``base`` to measured step times (bounded least squares on
    relative errors, scipy.optimize.least_squares 'trf'), with leave-one-out errors."""
    names = tuple(params)
    for n in names:
        require(n in FIT_PARAMS, "params", f"unknown parameter {n!r} (allowed: {', '.join(FIT_PARAMS)})")
    require(len(names) >= 1, "params", "name at least one parameter")
    require(len(runs) >= 1, "run_dir", "no usable run (status ok with a measured step time)")
    fitted, ok, msg = _solve(runs, base, names)
    node = apply_params(base, fitted)
    before = tuple(100.0 * (predict_step_time(r.plan, base) / r.measured_step_time_s - 1) for r in runs)
    after = tuple(100.0 * (predict_step_time(r.plan, node) / r.measured_step_time_s - 1) for r in runs)
    loo_errs: list[float | None] = []
    for i, r in enumerate(runs):
        rest = runs[:i] + runs[i + 1:]
        if not loo or not rest:
            loo_errs.append(None)
            continue
        p_i, _, _ = _solve(rest, base, names)
        loo_errs.append(100.0 * (predict_step_time(r.plan, apply_params(base, p_i)) / r.measured_step_time_s - 1))
    initial = {n: base_params(base)[n] for n in names}
    return FitResult(params=fitted, initial=initial, node=node, run_dirs=tuple(r.run_dir for r in runs),
                     errors_before_pct=before, errors_after_pct=after, loo_errors_pct=tuple(loo_errs),
                     success=ok, message=msg, skipped=tuple(skipped))


def fitted_profile_yaml(result: FitResult, *, base_source: str, name: str | None = None) -> str:
    node = dataclasses.replace(result.node, name=name) if name else result.node
    d = result.to_dict()

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    header = [
        f"Fitted by `clusterplan fit` from {base_source} on {len(result.run_dirs)} measured run(s).",
        "Parameters (scipy.optimize.least_squares, bounded, on relative step-time errors):",
        *[f"  {k}: {result.initial.get(k)} -> {v:.6g}" for k, v in result.params.items()],
        f"median |error| before {pct(d['before']['median_abs_error_pct'])}, in-sample "
        f"{pct(d['in_sample']['median_abs_error_pct'])} (max {pct(d['in_sample']['max_abs_error_pct'])}), "
        f"leave-one-out {pct(d['leave_one_out']['median_abs_error_pct'])} "
        f"(max {pct(d['leave_one_out']['max_abs_error_pct'])})",
        "Runs: " + ", ".join(Path(r).name for r in result.run_dirs),
    ]
    return profile_yaml(node, header=header)


# ----- framework: the executor's building blocks -> FrameworkSpec ----------------------------
def _reference_prediction(model, node: NodeSpec, parallel, ranks_busy: int | None = None) -> dict[str, float]:
    """Per-phase prediction (one micro-batch forward, backward, optimizer) of the reference
    step with ``node``'s framework terms, DP gradient all-reduce in backward (DDP hooks) and
    ZeRO-1's parameter broadcast in the optimizer, as the executor's phases fall.
    ``ranks_busy``: ranks computing at once on the host (default: the plan's ranks on it), e.g.
    2 for a one-rank plan run on both ranks at once."""
    from planner.cost.comm import collective_time
    from planner.cost.compute import make_rates
    from planner.cost.block import group_shape
    from planner.cost.memory import stage_parameters
    from planner.cost.optimizer import optimizer_s, param_tensors
    from planner.cost.runtime import EXECUTOR_RUNTIME, effective_runtime
    from planner.cost.step import plan_sites, stage_times
    from planner.hardware import ClusterSpec

    P = parallel
    world = P.world_size
    runtime = effective_runtime(EXECUTOR_RUNTIME, node.device, min(node.gpus_per_node, world) if world > 1 else 0)
    busy = min(node.gpus_per_node, world) if ranks_busy is None else ranks_busy
    rates = make_rates(node.device, P.precision, busy, node.framework)
    cluster = ClusterSpec.homogeneous(node, 1)  # one node type: the layout comes from P
    st = stage_times(model, cluster, plan_sites(cluster, P), (runtime,), (rates,))
    fwd, bwd, opt = st.fwd_s[0], st.sched_b[0], optimizer_s(model, P, rates)
    if P.dp > 1 and P.sharding in ("none", "zero1") and P.tp == 1:
        g = group_shape(P, "dp", node.gpus_per_node)
        params = max(stage_parameters(model, P))
        bwd += collective_time("all_reduce", 4.0 * params, g, node)
        if node.framework is not None:
            bwd += rates.ops(1, node.framework.ddp_reducer_s(param_tensors(model, P), 4.0 * params))
        if P.sharding == "zero1":
            opt += collective_time("all_gather", 4.0 * params, g, node)
    return {"forward": fwd, "backward": bwd, "optimizer": opt}


def _measured_step_memory(result: dict) -> int:
    """What the executor reports as a rank's peak on CPU: the allocator peak when measured."""
    return result.get("allocator_peak_bytes") or result["peak_minus_baseline_bytes"]


def _wide_config(reference: dict, tp: int, dp: int, sharding: str = "none"):
    """The ParallelConfig of a reference-shape dict (``reference`` of a bench result): one
    micro-batch per rank, fp32."""
    from planner.plan import ParallelConfig

    b = reference["micro_batch"]
    return ParallelConfig(tp=tp, dp=dp, micro_batch=b, global_batch=b * dp, seq_len=reference["seq_len"],
                          precision="fp32", sharding=sharding)


def two_point_line(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float]:
    """(intercept, slope), both >= 0, of the line through (x1, y1) and (x2, y2), x1 < x2: where
    the exact line has a negative slope the data show no growth (intercept: the mean, slope 0);
    where it has a negative intercept, the least-squares line through the origin."""
    slope = (y2 - y1) / (x2 - x1)
    const = y1 - slope * x1
    if slope < 0:
        return max(0.0, 0.5 * (y1 + y2)), 0.0
    if const < 0:
        return 0.0, max(0.0, (x1 * y1 + x2 * y2) / (x1 * x1 + x2 * x2))
    return const, slope


def _constant_and_per_byte(values: dict, prefix: str, narrow: tuple, wide: tuple) -> str:
    """Set ``values[prefix_{forward,backward}_s]`` and ``..._s_per_byte`` to the two-point line
    through the per-unit residuals of the narrow and the wide reference, each given as
    (bytes per unit, residual per phase, units); returns the fit in words."""
    words = []
    for ph in ("forward", "backward"):
        key = f"{prefix}_{ph}_s"
        (x1, r1, n1), (x2, r2, n2) = narrow, wide
        values[key], values[key + "_per_byte"] = two_point_line(x1, r1[ph] / n1, x2, r2[ph] / n2)
        words.append(f"{1e6 * values[key]:.0f} us + {1e6 * values[key + '_per_byte'] * 2**20:.0f} us/MiB {ph}")
    return ", ".join(words)


PIPELINE_1F1B_CASES = ("pp", "pp_wide")
"""The pp=2 1F1B reference steps (reference and wide shape) the pipelining runtime is fitted to."""


def _fit_pipeline(refs: dict, node: NodeSpec, values: dict) -> list[str]:
    """Fit the executor's pipelining runtime (:func:`planner.cost.framework.pipeline_actions`)
    to the pp=2 reference steps, setting ``values``; returns the fit in words.

    The cost model's step is linear in the runtime's terms (makespan of fixed task orders),
    each slope from a trial value: with 1F1B steps at two shapes the per-action constant
    ``pp_action_s`` and the proportional ``pp_compute_slowdown`` are the non-negative least-squares
    solution (scipy ``nnls``; one shape: the constant alone); then the zero-bubble step's
    residual over its split backward's slope gives ``zb_split_slowdown``."""
    from scipy.optimize import nnls

    from planner.cost.step import predict
    from planner.hardware import ClusterSpec
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig

    fr = FrameworkSpec(**values)

    def step_s(case: str, **terms: float) -> float:
        par = ParallelConfig.from_dict(refs[case]["parallel"])
        n = dataclasses.replace(node, framework=dataclasses.replace(fr, **terms))
        model = ModelSpec.from_dict(refs[case]["model"])
        return predict(model, ClusterSpec.homogeneous(n.with_gpus_per_node(par.world_size), 1), par).step_time_s

    zero = {"pp_action_s": 0.0, "pp_compute_slowdown": 0.0, "zb_split_slowdown": 0.0}
    cases = [c for c in PIPELINE_1F1B_CASES if c in refs]
    rows, residuals, words = [], [], []
    for case in cases:
        p0 = step_s(case, **zero)
        per_action = (step_s(case, **{**zero, "pp_action_s": 1e-3}) - p0) / 1e-3
        per_slowdown = (step_s(case, **{**zero, "pp_compute_slowdown": 0.1}) - p0) / 0.1
        rows.append([per_action, per_slowdown if len(cases) > 1 else 0.0])
        residuals.append(refs[case]["step_s"] - p0)
        words.append(f"{case}: measured {refs[case]['step_s'] * 1e3:.2f} ms, cost model {p0 * 1e3:.2f} ms "
                     "without the pipelining runtime")
    (action_s, slowdown), _ = nnls(np.array(rows), np.array(residuals))
    values["pp_action_s"], values["pp_compute_slowdown"] = float(action_s), float(slowdown)
    lines = [f"pp=2 1F1B ({'; '.join(words)}): {1e6 * action_s:.0f} us per schedule action + "
             f"{100 * slowdown:.1f}% of its work"]
    if "pp_zb" in refs:
        fitted = {"pp_action_s": values["pp_action_s"], "pp_compute_slowdown": values["pp_compute_slowdown"]}
        p0 = step_s("pp_zb", **fitted, zb_split_slowdown=0.0)
        slope = (step_s("pp_zb", **fitted, zb_split_slowdown=0.1) - p0) / 0.1
        values["zb_split_slowdown"] = max(0.0, (refs["pp_zb"]["step_s"] - p0) / slope) if slope > 0 else 0.0
        lines.append(f"pp=2 zero bubble: measured {refs['pp_zb']['step_s'] * 1e3:.2f} ms, cost model "
                     f"{p0 * 1e3:.2f} ms with a fused backward's cost; split backward "
                     f"+{100 * values['zb_split_slowdown']:.1f}% of the fused one")
    return lines


CONCURRENCY_PAIRS = (("reference shape", "plain", "plain_both"),
                     ("wide shape", "plain_wide", "plain_wide_both"),
                     ("concurrency shape", "plain_alone_interleaved", "plain_concurrent"))
"""(label, alone case, at-once case) of the framework bench: the plain step on one rank and on
both ranks at once, at shapes whose GEMM share of the step differs (the first two measured in
the wrappers' interleaved rounds, the third in alternating blocks of its own)."""


CONCURRENCY_FIT_SCALE = 0.05
"""Residual scale of the concurrency fit's soft-L1 loss, in at-once / alone ratio: a pair off
by more than this (one block in a burst of outside load: x1.73 seen in a --quick run where the
other two pairs said x1.03 and x1.15) weighs linearly, not quadratically."""


STEP_SHAPES = tuple(alone for _, alone, _ in CONCURRENCY_PAIRS) + ("plain_llama",)
"""The plain one-rank reference steps the in-step slowdowns are fitted to: the GPT-style ones
of the concurrency pairs and a Llama-style one (its norms, activation, RoPE and GQA attention)."""


def _fit_step_slowdowns(alone: list[dict], node: NodeSpec,
                        base: FrameworkSpec) -> tuple[FrameworkSpec, list[str]]:
    """``base`` with ``step_{forward,backward,optimizer}_slowdown``: per phase, the plain
    one-rank reference steps' measured time less the cost model's per-op costs, over the cost
    model's compute time of the same steps (summed over the shapes, so the largest weighs
    most), minus one; clipped to [0, 2] (a model that over-predicts keeps its rates). The
    per-op costs are measured inside autograd already and stay as they are."""
    from planner.model import ModelSpec

    phases = ("forward", "backward", "optimizer")
    no_ops = dataclasses.replace(base, op_forward_s=0.0, op_backward_s=0.0, op_optimizer_s=0.0)
    measured = dict.fromkeys(phases, 0.0)
    compute = dict.fromkeys(phases, 0.0)
    for case in alone:
        model = ModelSpec.from_dict(case["model"])
        cfg = _wide_config(case["reference"], 1, 1)
        with_ops = _reference_prediction(model, dataclasses.replace(node, framework=base).with_gpus_per_node(1), cfg)
        bare = _reference_prediction(model, dataclasses.replace(node, framework=no_ops).with_gpus_per_node(1), cfg)
        for ph in phases:
            measured[ph] += case["median_s"][ph] - (with_ops[ph] - bare[ph])
            compute[ph] += bare[ph]
    slow = {ph: min(2.0, max(0.0, measured[ph] / compute[ph] - 1.0)) if compute[ph] > 0 else 0.0 for ph in phases}
    fitted = dataclasses.replace(base, **{f"step_{ph}_slowdown": slow[ph] for ph in phases})
    shapes = ", ".join(f"{c['model'].get('name', 'ref')} s={c['reference']['seq_len']} "
                       f"mb={c['reference']['micro_batch']}" for c in alone)
    lines = [f"in-step compute: the plain one-rank step ({shapes}) less its per-op costs over the cost model's "
             f"compute: forward x{1 + slow['forward']:.3f}, backward x{1 + slow['backward']:.3f}, optimizer "
             f"x{1 + slow['optimizer']:.3f} (step_*_slowdown)"]
    return fitted, lines


def _fit_concurrency(pairs: list[tuple[str, dict, dict]], node: NodeSpec,
                     base: FrameworkSpec) -> tuple[FrameworkSpec, list[str]]:
    """``base`` with ``concurrent_gemm_slowdown`` and ``concurrent_slowdown`` fitted so that the
    cost model's step on two ranks at once over the same step on one rank matches each pair's
    measured ratio (bounded least squares with a soft-L1 loss, scipy; both in [0, 2]). With one
    pair only the non-GEMM slowdown is fitted (GEMMs unchanged). The ratio leaves out what the
    model misses of the one-rank step itself (the plain residual, charged to the wrappers apart)."""
    from scipy.optimize import least_squares

    from planner.model import ModelSpec

    phases = ("forward", "backward", "optimizer")
    rows = []
    for label, alone, together in pairs:
        model = ModelSpec.from_dict(alone["model"])
        cfg = _wide_config(alone["reference"], 1, 1)
        solo_pred = sum(_reference_prediction(
            model, dataclasses.replace(node, framework=base).with_gpus_per_node(1), cfg).values())
        ratio = sum(together["median_s"][ph] for ph in phases) / sum(alone["median_s"][ph] for ph in phases)
        rows.append((label, model, cfg, solo_pred, ratio, alone, together))

    def with_slowdowns(x) -> FrameworkSpec:
        gemm, other = (x[0], x[1]) if len(x) == 2 else (0.0, x[0])
        return dataclasses.replace(base, concurrent_gemm_slowdown=float(gemm), concurrent_slowdown=float(other))

    def at_once_ratios(x) -> list[float]:
        n = dataclasses.replace(node, framework=with_slowdowns(x)).with_gpus_per_node(2)
        return [sum(_reference_prediction(model, n, cfg, ranks_busy=2).values()) / solo
                for _, model, cfg, solo, _, _, _ in rows]

    x0 = [0.05, 0.1] if len(rows) >= 2 else [0.1]
    fit = least_squares(lambda x: np.array(at_once_ratios(x)) - [r[4] for r in rows], x0,
                        bounds=(0.0, 2.0), method="trf", loss="soft_l1", f_scale=CONCURRENCY_FIT_SCALE)
    fitted = with_slowdowns(fit.x)
    predicted = at_once_ratios(fit.x)
    lines = []
    for (label, _, _, _, ratio, alone, together), pred in zip(rows, predicted):
        ref = alone["reference"]
        lines.append(f"plain step at {label} (h={ref['hidden_size']}, s={ref['seq_len']}, micro-batch "
                     f"{ref['micro_batch']}) alone / on both ranks at once: "
                     f"{1e3 * sum(alone['median_s'][ph] for ph in phases):.2f} / "
                     f"{1e3 * sum(together['median_s'][ph] for ph in phases):.2f} ms "
                     f"(x{ratio:.3f}, fitted model x{pred:.3f})")
    lines.append(f"ranks at once: GEMMs {100 * fitted.concurrent_gemm_slowdown:.1f}% slower "
                 f"(concurrent_gemm_slowdown), memory-bound and per-op work "
                 f"{100 * fitted.concurrent_slowdown:.1f}% slower (concurrent_slowdown)")
    return fitted, lines


def elementwise_rates(rows: list[dict], per_op_s: dict[str, float]) -> tuple[tuple, list[str]]:
    """:attr:`FrameworkSpec.elementwise_rates` from ``executor.bench.elementwise`` rows and the
    per-op costs (``per_op_s["forward"]``, ``["backward"]``): each row's bytes (the cost model's
    count per element, :func:`planner.cost.framework.elementwise_bytes_per_element`, times its
    elements) over its time less its counted ops' per-op cost (the cost model charges that per
    op; at most 3/4 of the time is taken off, so a noisy small case cannot go to zero), kept at
    the size of one call (a row's ``elements`` over its ``calls``: the AdamW case steps many
    tensors of one size). The add
    has no backward kernel: its forward rate stands for the backward's gradient sums; the AdamW
    step (direction ``optimizer``, its per-op cost ``per_op_s["optimizer"]``) has one rate, kept
    as both. Returns (rates, header lines)."""
    from planner.cost.framework import elementwise_bytes_per_element

    rate: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in rows:
        bpe = 4 if row["dtype"] == "fp32" else 2
        fwd_bpe, bwd_bpe = elementwise_bytes_per_element(row["kind"], bpe)
        per_element = bwd_bpe if row["direction"] == "backward" else fwd_bpe
        data_s = max(0.25 * row["median_s"], row["median_s"] - row["ops"] * per_op_s[row["direction"]])
        key = (row["kind"], row["dtype"], row["elements"] / row.get("calls", 1) * fwd_bpe)  # one call's bytes
        stored = "backward" if row["direction"] == "backward" else "forward"  # optimizer: its one rate
        rate.setdefault(key, {})[stored] = per_element * row["elements"] / data_s
    by_kind: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for (kind, dtype, call_bytes), r in sorted(rate.items()):
        by_kind.setdefault((kind, dtype), []).append(
            (float(call_bytes), r["forward"], r.get("backward", r["forward"])))
    lines = []
    if by_kind:
        lines.append("element-wise rates of the executor's code, GB/s forward / backward over the "
                     "sizes of one call (executor/bench/elementwise.py; per-op costs taken off):")
        for (kind, dtype), pts in by_kind.items():
            lines.append(f"  {kind}/{dtype}: " + ", ".join(
                f"{b / 2**20:.2g} MiB {f / GB:.1f}/{w / GB:.1f}" for b, f, w in pts))
    return tuple((kind, dtype, tuple(pts)) for (kind, dtype), pts in by_kind.items()), lines


def attention_rates(rows: list[dict], per_op_s: dict[str, float]) -> tuple[tuple, list[str]]:
    """:attr:`FrameworkSpec.attention_rates` from ``executor.bench.attention`` rows and the
    per-op costs: each row's counted forward FLOPs (the cost model's ``4 b s^2 (heads d_head)``
    per call, :func:`planner.cost.flops.layer_forward_flops`, no causal discount) over its time
    less its counted ops' per-op cost (at most 3/4 of the time taken off), forward and backward
    alike, per kind and head width (``gqa_d32``), dtype and length. Returns (rates, header lines)."""
    rate: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in rows:
        data_s = max(0.25 * row["median_s"], row["median_s"] - row["ops"] * per_op_s[row["direction"]])
        flops = row["calls"] * 4.0 * row["batch"] * row["seq_len"] ** 2 * row["heads"] * row["d_head"]
        key = (f"{row['kind']}_d{row['d_head']}", row["dtype"], row["seq_len"])
        rate.setdefault(key, {})[row["direction"]] = flops / data_s
    by_kind: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for (kind, dtype, seq_len), r in sorted(rate.items()):
        if "forward" in r and "backward" in r:
            by_kind.setdefault((kind, dtype), []).append((float(seq_len), r["forward"], r["backward"]))
    lines = []
    if by_kind:
        lines.append("attention core (the executor's causal SDPA call), GFLOP/s forward / backward per counted "
                     "forward FLOP (4 b s^2 heads d_head; executor/bench/attention.py; per-op costs taken off):")
        for (kind, dtype), pts in by_kind.items():
            lines.append(f"  {kind}/{dtype}: " + ", ".join(f"s={s:.0f} {f / 1e9:.1f}/{w / 1e9:.1f}" for s, f, w in pts))
    return tuple((kind, dtype, tuple(pts)) for (kind, dtype), pts in by_kind.items()), lines


def build_framework(fw_results: dict, node: NodeSpec) -> tuple[FrameworkSpec, dict[str, str], list[str]]:
    """The profile's ``framework:`` section from ``executor.bench.framework`` results.

    Per-op costs: phase time / dispatched aten ops at a degenerate shape (pooled over the GPT
    and Llama blocks). Wrapper costs: at the reference shape, the measured phase minus the cost
    model's prediction of the same step (with the per-op costs, the profile's collectives) minus
    the plain step's own residual (scaled to the rank's share of the work), divided by the units
    the executor runs: TP modules (linears, embedding, head) per micro-batch, FSDP2 units per
    micro-batch, parameter tensors per optimizer step (ZeRO-1: the whole step's residual). Memory: the peak the executor
    reports (CPU allocator peak live bytes; RSS high-water minus baseline for results without
    it) of real steps at two batch sizes against the cost model's tensor bytes: slope - 1 is the
    allocator / transient-tensor overhead, the intercept the per-process training overhead.
    Negative residuals (within noise) are clipped to 0. Returns (spec, comments, header lines)."""
    from planner.cost import framework as fw
    from planner.cost.memory import stage_memories
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig

    ops = fw_results["ops"]
    per_op = {}
    for phase in ("forward", "backward", "optimizer"):
        per_op[phase] = sum(o["median_s"][phase] for o in ops) / sum(o["ops"][phase] for o in ops)
    zero = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)
    ew_rates, ew_lines = elementwise_rates(fw_results.get("elementwise") or [], per_op)
    attn_rates, attn_lines = attention_rates(fw_results.get("attention") or [], per_op)
    ew_lines += attn_lines
    base = FrameworkSpec(**{**zero, "op_forward_s": per_op["forward"], "op_backward_s": per_op["backward"],
                            "op_optimizer_s": per_op["optimizer"]}, elementwise_rates=ew_rates,
                         attention_rates=attn_rates)
    refs = {r["case"]: r for r in fw_results["reference"] if r.get("median_s") or r.get("step_s")}
    require("plain" in refs, "results.framework.reference", "needs the plain reference step")
    plain = refs["plain"]
    model = ModelSpec.from_dict(plain["model"])
    ref = plain["reference"]
    b, s = ref["micro_batch"], ref["seq_len"]

    def config(tp: int, dp: int, sharding: str, sp: bool = False) -> ParallelConfig:
        return ParallelConfig(tp=tp, dp=dp, micro_batch=b, global_batch=b * dp, seq_len=s,
                              precision="fp32", sharding=sharding, sequence_parallel=sp)

    def predicted(case: str, fr: FrameworkSpec) -> dict[str, float]:
        tp, dp = (2, 1) if case in ("tp", "tp_sp") else ((1, 2) if case != "plain" else (1, 1))
        sharding = {"zero1": "zero1", "fsdp": "fsdp"}.get(case, "none")
        n = dataclasses.replace(node, framework=fr).with_gpus_per_node(tp * dp)
        return _reference_prediction(model, n, config(tp, dp, sharding, sp=case == "tp_sp"))

    phases = ("forward", "backward", "optimizer")
    defaults: list[str] = []
    step_lines: list[str] = []
    alone = [refs[c] for c in STEP_SHAPES if c in refs and refs[c].get("median_s")]
    if alone:
        base, step_lines = _fit_step_slowdowns(alone, node, base)
    else:
        defaults.append("step")
    pairs = [(label, refs[a], refs[t]) for label, a, t in CONCURRENCY_PAIRS if a in refs and t in refs]
    conc_lines: list[str] = []
    if pairs:
        base, conc_lines = _fit_concurrency(pairs, node, base)
    p_plain = predicted("plain", base)
    plain_res = {ph: plain["median_s"][ph] - p_plain[ph] for ph in phases}
    wide_res = None  # the same at the wide shape, for its TP, DDP and FSDP2 cases
    if "plain_wide" in refs:
        pw = refs["plain_wide"]
        wp = _reference_prediction(ModelSpec.from_dict(pw["model"]),
                                   dataclasses.replace(node, framework=base).with_gpus_per_node(1),
                                   _wide_config(pw["reference"], 1, 1))
        wide_res = {ph: pw["median_s"][ph] - wp[ph] for ph in phases}

    # a 2-rank case's framework costs are charged as rates.ops (x this while ranks run at
    # once), so its residual is divided by it before it is shared out per unit
    at_once = 1.0 + base.concurrent_slowdown

    def residual(case: str, share: float) -> dict[str, float]:
        pred = predicted(case, base)
        return {ph: (refs[case]["median_s"][ph] - pred[ph] - share * plain_res[ph]) / at_once for ph in phases}

    tensors = fw.model_param_tensors(model, False)
    ddp_line = None
    if "ddp" in refs:
        # DDP's reducer beyond its all-reduce (no TP/FSDP case uses DDP): per gradient byte,
        # and with the wider reference also per parameter tensor (the two-point line's
        # intercept over the same tensor count)
        from planner.cost.memory import stage_parameters

        res = sum(residual("ddp", 1.0).values())
        grad_bytes = 4.0 * max(stage_parameters(model, config(1, 2, "none")))
        wide_refs = ("ddp_wide" in refs and "plain_wide" in refs
                     and refs["ddp_wide"]["model"]["n_layers"] == model.n_layers)
        if wide_refs:
            wm = ModelSpec.from_dict(refs["ddp_wide"]["model"])
            wr = refs["ddp_wide"]["reference"]
            wd = _reference_prediction(wm, dataclasses.replace(node, framework=base).with_gpus_per_node(2),
                                       _wide_config(wr, 1, 2))
            w_res = sum(refs["ddp_wide"]["median_s"][ph] - wd[ph] - wide_res[ph] for ph in phases) / at_once
            w_grad = 4.0 * max(stage_parameters(wm, _wide_config(wr, 1, 2)))
            const, slope = two_point_line(grad_bytes, res, w_grad, w_res)
            base = dataclasses.replace(base, ddp_param_s=const / tensors, ddp_grad_s_per_byte=slope)
            ddp_line = (f"ddp dp=2: residual of the step {res * 1e3:.2f} ms for {grad_bytes / 2**20:.2f} MiB of "
                        f"gradients, {w_res * 1e3:.2f} ms for {w_grad / 2**20:.2f} MiB at h={wm.hidden_size}: "
                        f"{1e6 * base.ddp_param_s:.0f} us per parameter tensor ({tensors}) + "
                        f"{1e6 * base.ddp_grad_s_per_byte * 2**20:.0f} us/MiB")
        else:
            base = dataclasses.replace(base, ddp_grad_s_per_byte=max(0.0, res) / grad_bytes)
            ddp_line = (f"ddp dp=2: residual of the step {res * 1e3:.2f} ms for {grad_bytes / 2**20:.2f} MiB of "
                        f"gradients: {1e6 * base.ddp_grad_s_per_byte * 2**20:.0f} us/MiB")
    else:
        defaults.append("ddp")
    values = dataclasses.asdict(base)
    lines = list(conc_lines) + ew_lines + step_lines
    if not pairs:
        defaults.append("concurrent")
    lines += [f"plain reference step: measured fwd/bwd/opt {plain['median_s']['forward'] * 1e3:.2f}/"
             f"{plain['median_s']['backward'] * 1e3:.2f}/{plain['median_s']['optimizer'] * 1e3:.2f} ms, "
             f"cost model {p_plain['forward'] * 1e3:.2f}/{p_plain['backward'] * 1e3:.2f}/"
             f"{p_plain['optimizer'] * 1e3:.2f} ms (residual subtracted from the wrapper cases)"]
    comments: dict[str, str] = {}
    L = model.n_layers
    if "tp" in refs:
        res = residual("tp", 0.5)
        linears = fw.tp_modules(model, L)
        values["tp_linear_forward_s"] = max(0.0, res["forward"]) / linears
        values["tp_linear_backward_s"] = max(0.0, res["backward"]) / linears
        values["tp_optimizer_param_s"] = max(0.0, res["optimizer"]) / tensors
        lines.append(f"tp=2: residual fwd/bwd/opt {res['forward'] * 1e3:.2f}/{res['backward'] * 1e3:.2f}/"
                     f"{res['optimizer'] * 1e3:.2f} ms over {linears} TP modules, {tensors} parameter tensors")
        if "tp_wide" in refs and "plain_wide" in refs:
            # the same at a wider shape: per TP module, constant + per-byte of its activation
            wm = ModelSpec.from_dict(refs["tp_wide"]["model"])
            wr = refs["tp_wide"]["reference"]

            wt = _reference_prediction(wm, dataclasses.replace(node, framework=base).with_gpus_per_node(2),
                                       _wide_config(wr, 2, 1))
            wres = {ph: (refs["tp_wide"]["median_s"][ph] - wt[ph] - 0.5 * wide_res[ph]) / at_once for ph in phases}
            w_linears = fw.tp_modules(wm, wm.n_layers)
            x_ref = 4.0 * b * s * model.hidden_size
            x_wide = 4.0 * wr["micro_batch"] * wr["seq_len"] * wm.hidden_size
            fit = _constant_and_per_byte(values, "tp_linear", (x_ref, res, linears), (x_wide, wres, w_linears))
            lines.append(f"tp=2 at h={wm.hidden_size}, s={wr['seq_len']}, micro-batch {wr['micro_batch']}: residual "
                         f"fwd/bwd {wres['forward'] * 1e3:.2f}/{wres['backward'] * 1e3:.2f} ms over {w_linears} "
                         f"TP modules; per module {fit} (activation {x_ref / 2**20:.2f} and {x_wide / 2**20:.2f} MiB)")
    else:
        defaults.append("tp")
    if "tp_sp" in refs and "tp" in refs:
        # sequence parallelism on top: what the TP+SP step costs beyond the TP modules, per block
        fr = FrameworkSpec(**values)
        pred = predicted("tp_sp", fr)
        res = {ph: (refs["tp_sp"]["median_s"][ph] - pred[ph] - 0.5 * plain_res[ph]) / at_once for ph in phases}
        values["sp_block_forward_s"] = max(0.0, res["forward"]) / L
        values["sp_block_backward_s"] = max(0.0, res["backward"]) / L
        lines.append(f"tp=2 + sp: residual beyond the TP modules fwd/bwd/opt {res['forward'] * 1e3:.2f}/"
                     f"{res['backward'] * 1e3:.2f}/{res['optimizer'] * 1e3:.2f} ms over {L} blocks")
    else:
        defaults.append("sp")
    if "fsdp" in refs:
        res = residual("fsdp", 1.0)
        units = fsdp_units(L, True, False)
        values["fsdp_unit_forward_s"] = max(0.0, res["forward"]) / units
        values["fsdp_unit_backward_s"] = max(0.0, res["backward"]) / units
        values["fsdp_optimizer_param_s"] = max(0.0, res["optimizer"]) / tensors
        lines.append(f"fsdp dp=2: residual fwd/bwd/opt {res['forward'] * 1e3:.2f}/{res['backward'] * 1e3:.2f}/"
                     f"{res['optimizer'] * 1e3:.2f} ms over {units} units, {tensors} parameter tensors")
        if "fsdp_wide" in refs and "plain_wide" in refs:
            # the same at the wider shape (same units, more bytes each): per unit, a constant
            # plus a part per byte of its parameters; the residual is units x constant +
            # slope x all parameter bytes, so the line runs through the per-unit means
            wm = ModelSpec.from_dict(refs["fsdp_wide"]["model"])
            wr = refs["fsdp_wide"]["reference"]
            wf = _reference_prediction(wm, dataclasses.replace(node, framework=base).with_gpus_per_node(2),
                                       _wide_config(wr, 1, 2, "fsdp"))
            wres = {ph: (refs["fsdp_wide"]["median_s"][ph] - wf[ph] - wide_res[ph]) / at_once for ph in phases}
            w_units = fsdp_units(wm.n_layers, True, False)
            x_ref = 4.0 * model.total_params() / units
            x_wide = 4.0 * wm.total_params() / w_units
            fit = _constant_and_per_byte(values, "fsdp_unit", (x_ref, res, units), (x_wide, wres, w_units))
            lines.append(f"fsdp dp=2 at h={wm.hidden_size}: residual fwd/bwd {wres['forward'] * 1e3:.2f}/"
                         f"{wres['backward'] * 1e3:.2f} ms over {w_units} units; per unit {fit} "
                         f"(parameters {x_ref / 2**20:.2f} and {x_wide / 2**20:.2f} MiB per unit)")
    else:
        defaults.append("fsdp")
    if "zero1" in refs:
        res = residual("zero1", 1.0)
        total = sum(res.values())
        values["zero1_param_s"] = max(0.0, total) / tensors
        lines.append(f"zero1 dp=2: residual of the whole step {total * 1e3:.2f} ms over {tensors} parameter tensors")
    else:
        defaults.append("zero1")
    if ddp_line:
        lines.append(ddp_line)
    if "pp" in refs:
        lines += _fit_pipeline(refs, node, values)
    else:
        defaults.append("pp")
    # memory: fit RSS growth = (1 + frag) * tensors + overhead on the two batch sizes
    mem = sorted(fw_results.get("memory") or [], key=lambda m: m["micro_batch"])
    if len(mem) >= 2:
        no_mem = FrameworkSpec(**{**values, "fragmentation_fraction": 0.0, "training_overhead_bytes": 0.0})
        pts = []
        for m in mem:
            cfg = ParallelConfig(micro_batch=m["micro_batch"], global_batch=m["micro_batch"], seq_len=s,
                                 precision="fp32")
            (_, _, sm), = stage_memories(model, cfg, node.device, [1], "flash", framework=no_mem)
            pts.append((sm.total_bytes, float(_measured_step_memory(m))))
        (t1, m1), (t2, m2) = pts[0], pts[-1]
        slope = (m2 - m1) / (t2 - t1) if t2 > t1 else 1.0
        frag = min(0.9, max(0.0, slope - 1.0))
        values["fragmentation_fraction"] = frag
        values["training_overhead_bytes"] = max(0.0, m1 - (1.0 + frag) * t1)
        source = "CPU allocator peak" if all(m.get("allocator_peak_bytes") for m in mem) else "RSS high-water - baseline"
        lines.append(f"training-step memory ({source} vs the cost model's tensors): " + ", ".join(
            f"mb {m['micro_batch']}: {mm / 2**20:.1f} MiB for {t / 2**20:.1f} MiB" for m, (t, mm) in zip(mem, pts)))
    else:
        defaults.append("memory")
    spec = FrameworkSpec(**values)
    r = fw_results["reference"][0]["reference"]
    comments["framework"] = (f"executor building blocks; per-op costs at h=16, wrappers at h={r['hidden_size']}, "
                             f"{r['n_layers']} layers, s={r['seq_len']}, micro-batch {r['micro_batch']}"
                             + (f"; not measured (kept 0): {', '.join(defaults)}" if defaults else ""))
    counts = "; ".join(f"{o['style']}: " + ", ".join(f"{k} {o['ops'][k]} ops {o['median_s'][k] * 1e6 / o['ops'][k]:.2f} us"
                                                     for k in phases) for o in ops)
    comments["framework.op_forward_us"] = "per aten op under autograd, whole model at h=16 (" + counts + ")"
    comments["framework.tp_linear_forward_us"] = "TP=2 reference residual / TP modules (linears, embedding, head) per micro-batch (header)"
    comments["framework.ddp_grad_us_per_mib"] = "DDP dp=2 reference step residual per MiB of gradients (header)"
    comments["framework.ddp_param_us"] = ("per parameter tensor: the intercept of that residual at two widths "
                                          "(header)")
    comments["framework.pp_action_us"] = ("pp=2 1F1B reference steps at two shapes: residual per schedule "
                                          "action (intercept; header)")
    comments["framework.pp_compute_slowdown"] = "the same residual's part proportional to each action's work"
    comments["framework.zb_split_slowdown"] = ("pp=2 zero-bubble reference step: split backward over the fused "
                                               "one, minus one (header)")
    comments["framework.tp_linear_forward_us_per_mib"] = ("growth of that per MiB of the module's activation, "
                                                          "from the TP reference at two widths (header)")
    comments["framework.sp_block_forward_us"] = "TP=2+SP reference residual beyond the TP modules / blocks (header)"
    comments["framework.fsdp_unit_forward_us"] = "FSDP2 dp=2 reference residual / fully_shard units (header)"
    comments["framework.fsdp_unit_forward_us_per_mib"] = ("growth of that per MiB of the unit's parameters, from "
                                                          "the FSDP2 reference at two widths (header)")
    comments["framework.zero1_param_us"] = "ZeRO-1 dp=2 reference step residual / parameter tensors (header)"
    comments["framework.fragmentation_fraction"] = ("slope - 1 of measured training-step memory vs the cost model's "
                                                    "tensor bytes at two batch sizes (header)")
    comments["framework.training_overhead_mib"] = "intercept of that fit (per-process training overhead)"
    comments["framework.concurrent_slowdown"] = ("memory-bound and per-op work on both ranks at once over alone, "
                                                 "minus one: fitted with concurrent_gemm_slowdown to the plain step alone / at "
                                                 "once at up to three shapes (shared caches, memory bandwidth; header)")
    comments["framework.concurrent_gemm_slowdown"] = "the same for the GEMMs' arithmetic (header)"
    comments["framework.step_forward_slowdown"] = ("the plain one-rank step's compute over the benches' rates, "
                                                   "minus one, per phase: forward, backward, optimizer (header)")
    return spec, comments, lines
