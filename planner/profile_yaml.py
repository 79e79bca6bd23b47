"""Hardware profiles in YAML, parsed strictly (:func:`load_profile`, errors name the field); written
back by :mod:`planner.profile_write`.

Profiles live in ``hardware_profiles/<name>.yaml`` (schema in ``hardware_profiles/README.md``).
YAML uses readable units (TFLOP/s, GiB, GB/s, microseconds) named in each key; everything is
converted to SI here and nothing else in the planner converts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from planner.errors import InputError, reject_unknown_keys, require
from planner.framework_spec import FRAMEWORK_YAML, FrameworkSpec, RATE_TABLES, RateTable
from planner.gemm_shapes import ShapeTable
from planner.hardware import (AttentionKernel, DeviceSpec, DTYPES, EfficiencyCurve, LinkSpec, MeasuredCollective,
                              NodeSpec, PROFILES_DIR)
from planner.io import finite_number, parse_yaml, read_input_text, resolve_named_yaml
from planner.units import GB, GIB, MICRO, NANO, TERA


# ----- YAML parsing ---------------------------------------------------------------------------
_TOP_KEYS = {"name", "description", "device", "node", "collectives", "measured_on", "framework", "memory_sources"}
MEMORY_SOURCES = ("allocated", "reserved", "device_used")
_FRAMEWORK_OPTIONAL = {"ep_dispatch_forward_s", "ep_dispatch_backward_s", "ep_dispatch_forward_s_per_token",
                       "ep_dispatch_backward_s_per_token", "moe_block_forward_s", "moe_block_backward_s",
                       "moe_expert_forward_s", "moe_expert_backward_s", "concurrent_slowdown", "concurrent_gemm_slowdown", "oversubscribed_slowdown", "sp_block_forward_s",
                       "sp_block_backward_s",
                       "tp_linear_forward_s_per_byte", "tp_linear_backward_s_per_byte", "pp_action_s",
                       "pp_compute_slowdown", "zb_split_slowdown",
                       "ddp_grad_s_per_byte", "ddp_param_s", "fsdp_unit_forward_s_per_byte",
                       "fsdp_unit_backward_s_per_byte", "step_forward_slowdown", "step_backward_slowdown",
                       "step_optimizer_slowdown"}
_DEVICE_KEYS = {"name", "peak_tflops", "hbm_gib", "hbm_bandwidth_gb_s", "matmul_efficiency", "matmul_shapes",
                "memory_bound_efficiency", "kernel_overhead_us", "reserved_gib",
                "fragmentation_fraction", "host_cores", "sm_count", "attention_tflops"}
_NODE_KEYS = {"gpus_per_node", "intra_node", "inter_node", "inter_node_shared", "inter_node_cpu_ns_per_byte",
              "intra_node_cpu_ns_per_byte"}
_LINK_KEYS = {"bandwidth_gb_s", "latency_us", "bus_efficiency"}
_COLLECTIVE_KEYS = {"op", "group_size", "ranks_per_node", "latency_us", "bus_bandwidth_gb_s", "times_us"}


def _mapping(data: Any, where: str) -> dict:
    if data is None:
        raise InputError(where, "missing")
    if not isinstance(data, dict):
        raise InputError(where, f"must be a mapping, got {type(data).__name__}")
    return data


def _parse_link(data: Any, where: str) -> LinkSpec:
    data = _mapping(data, where)
    reject_unknown_keys(data, _LINK_KEYS, where)
    try:
        return LinkSpec(
            bandwidth_bytes_per_s=finite_number(data, "bandwidth_gb_s", where) * GB,
            latency_s=finite_number(data, "latency_us", where) * MICRO,
            bus_efficiency=finite_number(data, "bus_efficiency", where),
        )
    except InputError as err:
        if err.field.startswith(where):
            raise
        raise InputError(f"{where}.{err.field}", err.reason) from None


def _parse_curve(data: Any, where: str, limit: float = 1.0) -> EfficiencyCurve:
    """``[[size, value], ...]`` with values in (0, ``limit``] (efficiencies: 1; rates: the peak),
    as a curve of ``value / limit`` (a fraction of the peak)."""
    if not isinstance(data, list) or not data:
        raise InputError(where, "must be a non-empty list of [size, efficiency] pairs")
    points = []
    for i, point in enumerate(data):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
            raise InputError(f"{where}[{i}]", f"must be [size, efficiency], got {point!r}")
        points.append((float(point[0]), float(point[1]) / limit))
    try:
        return EfficiencyCurve(tuple(points))
    except InputError as err:
        reason = err.reason if limit == 1.0 else f"values must be in (0, {limit:g}] (the peak) and sizes increasing"
        raise InputError(where, reason) from None


def _parse_shapes(data: Any, where: str) -> tuple[tuple[str, ShapeTable], ...]:
    """``matmul_shapes: {dtype: [[m, n, k, efficiency], ...]}`` (optional)."""
    if data is None:
        return ()
    data = _mapping(data, where)
    reject_unknown_keys(data, set(DTYPES), where)
    out = []
    for dtype, rows in data.items():
        if not isinstance(rows, list) or not rows:
            raise InputError(f"{where}.{dtype}", "must be a non-empty list of [m, n, k, efficiency] rows")
        points = []
        for i, row in enumerate(rows):
            if (not isinstance(row, list) or len(row) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)):
                raise InputError(f"{where}.{dtype}[{i}]", f"must be [m, n, k, efficiency], got {row!r}")
            points.append(tuple(float(v) for v in row))
        try:
            out.append((dtype, ShapeTable(tuple(points))))
        except InputError as err:
            raise InputError(f"{where}.{dtype}", err.reason) from None
    return tuple(out)


ATTENTION_SERIES = ("forward_causal", "forward", "backward")


def _parse_attention(data: Any, peak_16bit_flops: float | None, where: str) -> tuple[AttentionKernel, ...]:
    """``attention_tflops: {kernel: {forward_causal|forward|backward: [[seq_len, TFLOP/s], ...]}}``."""
    if data is None:
        return ()
    data = _mapping(data, where)
    if data and peak_16bit_flops is None:
        raise InputError(where, "needs a bf16 or fp16 peak (the rates are 16-bit)")
    kernels = []
    for name, series in data.items():
        series = _mapping(series, f"{where}.{name}")
        reject_unknown_keys(series, set(ATTENTION_SERIES), f"{where}.{name}")
        curves = {}
        for key in ATTENTION_SERIES:
            if key not in series:
                raise InputError(f"{where}.{name}.{key}", "missing")
            curves[key] = _parse_curve(series[key], f"{where}.{name}.{key}", limit=peak_16bit_flops / TERA)
        kernels.append(AttentionKernel(str(name), **curves))
    return tuple(kernels)


def _parse_device(data: Any) -> DeviceSpec:
    where = "device"
    data = _mapping(data, where)
    reject_unknown_keys(data, _DEVICE_KEYS, where)
    peaks = _mapping(data.get("peak_tflops"), f"{where}.peak_tflops")
    reject_unknown_keys(peaks, set(DTYPES), f"{where}.peak_tflops")
    peak_pairs = []
    for dtype in DTYPES:
        if dtype in peaks and peaks[dtype] is not None:
            peak_pairs.append((dtype, finite_number(peaks, dtype, f"{where}.peak_tflops") * TERA))
    if "matmul_efficiency" not in data:
        raise InputError(f"{where}.matmul_efficiency", "missing")
    curve_data = data["matmul_efficiency"]
    by_dtype: tuple[tuple[str, EfficiencyCurve], ...] = ()
    if isinstance(curve_data, dict):  # one curve per dtype; the first listed is the default
        reject_unknown_keys(curve_data, set(DTYPES), f"{where}.matmul_efficiency")
        if not curve_data:
            raise InputError(f"{where}.matmul_efficiency", "needs at least one dtype's curve")
        by_dtype = tuple((dt, _parse_curve(c, f"{where}.matmul_efficiency.{dt}")) for dt, c in curve_data.items())
        default_curve = by_dtype[0][1]
    else:
        default_curve = _parse_curve(curve_data, f"{where}.matmul_efficiency")
    counts = {}
    for key in ("host_cores", "sm_count"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            if key == "sm_count" or not isinstance(value, float) or not math.isfinite(value):
                kind = "an integer" if key == "sm_count" else "a finite number of cores"
                raise InputError(f"{where}.{key}", f"must be {kind}, got {value!r}")
        counts[key] = value
    if not isinstance(data.get("name"), str):
        raise InputError(f"{where}.name", "missing or not a string")
    return DeviceSpec(
        name=data["name"],
        peak_flops_per_s=tuple(peak_pairs),
        hbm_bytes=finite_number(data, "hbm_gib", where) * GIB,
        hbm_bandwidth_bytes_per_s=finite_number(data, "hbm_bandwidth_gb_s", where) * GB,
        matmul_efficiency=default_curve,
        matmul_efficiency_by_dtype=by_dtype,
        memory_bound_efficiency=finite_number(data, "memory_bound_efficiency", where),
        kernel_overhead_s=finite_number(data, "kernel_overhead_us", where) * MICRO,
        reserved_bytes=finite_number(data, "reserved_gib", where) * GIB,
        fragmentation_fraction=finite_number(data, "fragmentation_fraction", where),
        host_cores=counts["host_cores"],
        sm_count=counts["sm_count"],
        attention_kernels=_parse_attention(data.get("attention_tflops"), peak_16bit(peak_pairs),
                                           f"{where}.attention_tflops"),
        matmul_shapes_by_dtype=_parse_shapes(data.get("matmul_shapes"), f"{where}.matmul_shapes"),
    )


def peak_16bit(peaks: list[tuple[str, float]]) -> float | None:
    return next((flops for dtype, flops in peaks if dtype in ("bf16", "fp16")), None)


def _parse_times(data: Any, where: str) -> tuple[tuple[float, float], ...]:
    """A collective's optional ``times_us: [[bytes, microseconds], ...]`` table."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise InputError(where, "must be a list of [bytes, microseconds] pairs")
    out = []
    for i, pair in enumerate(data):
        ok = (isinstance(pair, list) and len(pair) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair))
        if not ok:
            raise InputError(f"{where}[{i}]", f"must be [bytes, microseconds] (two numbers), got {pair!r}")
        out.append((float(pair[0]), float(pair[1]) * MICRO))
    return tuple(out)


def _parse_collectives(data: Any) -> tuple[MeasuredCollective, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise InputError("collectives", "must be a list")
    out = []
    for i, entry in enumerate(data):
        where = f"collectives[{i}]"
        entry = _mapping(entry, where)
        reject_unknown_keys(entry, _COLLECTIVE_KEYS, where)
        group, spread = entry.get("group_size"), entry.get("ranks_per_node", 0)
        for key, value in (("group_size", group), ("ranks_per_node", spread)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{where}.{key}", f"must be an integer, got {value!r}")
        out.append(MeasuredCollective(
            op=str(entry.get("op")),
            group_size=group,
            latency_s=finite_number(entry, "latency_us", where) * MICRO,
            bus_bandwidth_bytes_per_s=finite_number(entry, "bus_bandwidth_gb_s", where) * GB,
            times_s=_parse_times(entry.get("times_us"), f"{where}.times_us"),
            ranks_per_node=spread,
        ))
    return tuple(out)


def _parse_framework(data: Any) -> FrameworkSpec | None:
    """The optional ``framework:`` section: every key of :data:`FRAMEWORK_YAML` required but
    those in :data:`_FRAMEWORK_OPTIONAL` (their dataclass default when absent)."""
    if data is None:
        return None
    where = "framework"
    data = _mapping(data, where)
    reject_unknown_keys(data, {k for k, _ in FRAMEWORK_YAML.values()} | {t.yaml_key for t in RATE_TABLES}, where)
    values = {field: finite_number(data, key, where) * factor for field, (key, factor) in FRAMEWORK_YAML.items()
              if not (field in _FRAMEWORK_OPTIONAL and key not in data)}
    for table in RATE_TABLES:
        if table.yaml_key in data:
            values[table.field] = _parse_rate_table(table, data[table.yaml_key])
    return FrameworkSpec(**values)


def _parse_rate_table(table: RateTable, data: Any) -> tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...]:
    """``framework.<table.yaml_key>`` into ``FrameworkSpec.<table.field>`` (SI units)."""
    where = f"framework.{table.yaml_key}"
    out = []
    for kind, per_dtype in _mapping(data, where).items():
        for dtype, points in _mapping(per_dtype, f"{where}.{kind}").items():
            key = f"{where}.{kind}.{dtype}"
            require(isinstance(points, list) and all(
                isinstance(pt, list) and len(pt) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt) for pt in points),
                key, f"must be a list of {table.point}")
            out.append((str(kind), str(dtype), tuple(
                (float(x) * table.x_unit, float(f) * table.rate_unit, float(b) * table.rate_unit)
                for x, f, b in points)))
    return tuple(out)


def _parse_memory_sources(data: Any) -> tuple[tuple[str, float, float], ...]:
    """``memory_sources: {device_used: {factor: 1.05, offset_gib: 1.2}, ...}`` (optional)."""
    if data is None:
        return ()
    out = []
    for source, entry in _mapping(data, "memory_sources").items():
        require(source in MEMORY_SOURCES, f"memory_sources.{source}", f"must be one of {', '.join(MEMORY_SOURCES)}")
        entry = _mapping(entry, f"memory_sources.{source}")
        reject_unknown_keys(entry, {"factor", "offset_gib"}, f"memory_sources.{source}")
        out.append((source, finite_number(entry, "factor", f"memory_sources.{source}"),
                    finite_number(entry, "offset_gib", f"memory_sources.{source}") * GIB))
    return tuple(out)


def parse_profile(data: Any, source: str = "profile") -> NodeSpec:
    """Build a :class:`NodeSpec` from a parsed YAML mapping; errors name the field."""
    data = _mapping(data, source)
    reject_unknown_keys(data, _TOP_KEYS, "profile")
    if not isinstance(data.get("name"), str):
        raise InputError("profile.name", "missing or not a string")
    node = _mapping(data.get("node"), "node")
    reject_unknown_keys(node, _NODE_KEYS, "node")
    gpus = node.get("gpus_per_node")
    if isinstance(gpus, bool) or not isinstance(gpus, int):
        raise InputError("node.gpus_per_node", f"must be an integer, got {gpus!r}")
    shared = node.get("inter_node_shared", False)
    if not isinstance(shared, bool):
        raise InputError("node.inter_node_shared", f"must be true or false, got {shared!r}")
    link_cpu = []
    for key in ("inter_node_cpu_ns_per_byte", "intra_node_cpu_ns_per_byte"):
        ns = finite_number(node, key, "node", default=0.0)
        if ns < 0:
            raise InputError(f"node.{key}", f"must be >= 0, got {ns!r}")
        link_cpu.append(ns * NANO)
    return NodeSpec(
        name=data["name"],
        description=str(data.get("description", "")),
        device=_parse_device(data.get("device")),
        gpus_per_node=gpus,
        intra_node=_parse_link(node.get("intra_node"), "node.intra_node"),
        inter_node=_parse_link(node.get("inter_node"), "node.inter_node"),
        collectives=_parse_collectives(data.get("collectives")),
        measured_on=str(data.get("measured_on", "")),
        framework=_parse_framework(data.get("framework")) if "framework" in data else None,
        memory_sources=_parse_memory_sources(data.get("memory_sources")),
        inter_node_shared=shared,
        link_cpu_s_per_byte=tuple(link_cpu),
    )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def resolve_profile_path(name_or_path: str) -> Path:
    """A profile YAML path, or a name in ``hardware_profiles/``."""
    return resolve_named_yaml(name_or_path, PROFILES_DIR, field="hardware", kind="profile")


def load_profile(name_or_path: str) -> NodeSpec:
    """Load a profile by name (``hardware_profiles/<name>.yaml``) or path."""
    path = resolve_profile_path(name_or_path)
    return parse_profile(parse_yaml(read_input_text(path, "hardware"), "hardware", str(path)), source=str(path))
