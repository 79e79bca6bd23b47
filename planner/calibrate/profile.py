"""Benchmark results -> a hardware profile (:func:`build_profile`): GEMM efficiency curves, the
memory-bound rate, alpha-beta collectives, the host's cores, the executor's measured costs.

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
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from planner.calibrate.executor_costs import build_framework
from planner.errors import InputError, require
from planner.framework_spec import FRAMEWORK_YAML
from planner.gemm_shapes import ShapeTable
from planner.hardware import DeviceSpec, EfficiencyCurve, LinkSpec, MeasuredCollective, NodeSpec, PROFILES_DIR
from planner.io import read_json_object
from planner.profile_write import profile_yaml
from planner.units import GB, GIB, MICRO


SCHEMA = "clusterplan-bench/1"  # executor.bench.SCHEMA (not imported: that package imports torch)
DEFAULT_PROFILE_PATH = PROFILES_DIR / "local-cpu.yaml"
CONTENDED_CPU_RATIO = 0.8  # a rank that got less than this share of a core ran on a busy machine
OVERHEAD_OPS = ("add", "mul", "gelu", "linear", "layernorm")


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


def _shape_tables(rows: list[dict], peaks: dict[str, float]) -> tuple[tuple[str, ShapeTable], ...]:
    """Per dtype, every measured GEMM shape (M, N, K) with its median fraction of the dtype's
    peak (:class:`planner.gemm_shapes.ShapeTable`), fp32 first."""
    by_shape: dict[str, dict[tuple[float, float, float], list[float]]] = {}
    for r in rows:
        shape = (float(r["m"]), float(r["n"]), float(r["k"]))
        by_shape.setdefault(r["dtype"], {}).setdefault(shape, []).append(min(1.0, r["flops_per_s"] / peaks[r["dtype"]]))
    order = sorted(by_shape, key=lambda dt: (dt != "fp32", dt))
    return tuple((dt, ShapeTable(tuple((*shape, float(max(1e-3, statistics.median(v))))
                                       for shape, v in sorted(by_shape[dt].items())))) for dt in order)


def _table(entries: list[dict]) -> tuple[tuple[float, float], ...]:
    """(bytes, median seconds) per measured size, ascending; a repeated size keeps its median."""
    by_size: dict[float, list[float]] = {}
    for r in entries:
        by_size.setdefault(float(r["bytes"]), []).append(float(r["median_s"]))
    return tuple((b, float(statistics.median(v))) for b, v in sorted(by_size.items()))


def fit_collectives(rows: list[dict]) -> tuple[list[MeasuredCollective], dict]:
    """One measured table per (op, group size, ranks per node: 0 inside one node, the rows'
    ``ranks_per_node`` across nodes), its latency and bus bandwidth fitted for beyond its sizes."""
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], int(row["group_size"]), int(row.get("ranks_per_node", 0))), []).append(row)
    out, detail = [], {}
    for (op, g, k), entries in sorted(groups.items()):
        entries.sort(key=lambda r: r["bytes"])
        sbus = [bus_bytes(op, g, r["bytes"]) for r in entries]
        times = [r["median_s"] for r in entries]
        latency, bw = fit_alpha_beta(sbus, times, [r["bytes"] for r in entries])
        model = [latency + s / bw for s in sbus]
        worst = max(abs(m - t) / t for m, t in zip(model, times))
        out.append(MeasuredCollective(op=op, group_size=g, latency_s=latency, bus_bandwidth_bytes_per_s=bw,
                                      times_s=_table(entries), ranks_per_node=k))
        small = entries[0]
        large = entries[-1]
        detail[(op, g) if not k else (op, g, k)] = {
            "worst_fit_error": worst,
            "small": (small["bytes"], small["median_s"]),
            "large": (large["bytes"], large["median_s"], bus_bytes(op, g, large["bytes"]) / large["median_s"]),
            "sizes": len(entries),
        }
    return out, detail


def contention(rows: list[dict], affinity_cores: int) -> tuple[int, list[str], list[str]]:
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


def matmul_budget_lines(rows: list[dict]) -> list[str]:
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
    curve, curve_detail = _efficiency_curve([r for r in clean_mm or mm if r.get("kind") != "lm_head"], peaks)
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
    host_cores, contention_lines, contention_warn = contention(results["contention"], env.get("affinity_cores", 1))
    warnings += contention_warn
    ranks = gpus_per_node or host_cores
    hbm_bytes = env["mem_total_bytes"] / ranks

    # collectives and links
    coll_rows = results.get("collectives") or []
    collectives, coll_detail = fit_collectives(coll_rows) if coll_rows else ([], {})
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
        matmul_shapes_by_dtype=_shape_tables(clean_mm or mm, peaks),
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
        *matmul_budget_lines(mm),
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
        spec, fcomments, flines = build_framework(results["framework"], node, results.get("oversubscription"))
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


# ----- running the benchmarks ----------------------------------------------------------------
