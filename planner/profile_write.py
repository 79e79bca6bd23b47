"""Hardware profiles written back to YAML (:func:`profile_yaml`, :func:`write_profile`) in the
``hardware_profiles/`` schema, readable units, each text checked to parse to the same node
(:func:`planner.profile_yaml.parse_profile`)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import yaml

from planner.framework_spec import FRAMEWORK_YAML, FrameworkSpec, RATE_TABLES, RateTable
from planner.hardware import EfficiencyCurve, NodeSpec
from planner.io import atomic_write_text
from planner.profile_yaml import ATTENTION_SERIES, parse_profile, peak_16bit
from planner.units import GB, GIB, MICRO, NANO, TERA


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
    if d.matmul_shapes_by_dtype:
        out.append("  matmul_shapes:  # measured GEMMs: [M, N, K, fraction of peak] (planner/gemm_shapes.py)")
        for dtype, table in d.matmul_shapes_by_dtype:
            out.append(f"    {dtype}: [" + ", ".join(f"[{m:g}, {n:g}, {k:g}, {_num(e)}]" for m, n, k, e in table.points)
                       + "]")
    out.append(_line(1, "memory_bound_efficiency", _num(d.memory_bound_efficiency), c))
    out.append(_line(1, "kernel_overhead_us", _num(d.kernel_overhead_s / MICRO), c))
    out.append(_line(1, "reserved_gib", _num(d.reserved_bytes / GIB), c))
    out.append(_line(1, "fragmentation_fraction", _num(d.fragmentation_fraction), c))
    if d.host_cores:
        out.append(_line(1, "host_cores", _num(d.host_cores), c))
    if d.sm_count:
        out.append(_line(1, "sm_count", str(int(d.sm_count)), c))
    if d.attention_kernels:
        peak_tflops = peak_16bit(list(d.peak_flops_per_s)) / TERA
        out.append("  attention_tflops:")
        for kernel in d.attention_kernels:
            out.append(f"    {kernel.name}:")
            for key in ATTENTION_SERIES:
                curve = getattr(kernel, key)
                out.append(f"      {key}: [" + ", ".join(f"[{_num(n)}, {_num(v * peak_tflops)}]"
                                                  for n, v in curve.points) + "]")
    out.append("node:")
    out.append(_line(1, "gpus_per_node", str(int(node.gpus_per_node)), c))
    for key, link in (("intra_node", node.intra_node), ("inter_node", node.inter_node)):
        out.append(_line(1, key, "", c).replace(": ", ":", 1) if key in c else f"  {key}:")
        out.append(f"    bandwidth_gb_s: {_num(link.bandwidth_bytes_per_s / GB)}")
        out.append(f"    latency_us: {_num(link.latency_s / MICRO)}")
        out.append(f"    bus_efficiency: {_num(link.bus_efficiency)}")
    if node.inter_node_shared:
        out.append("  inter_node_shared: true  # the node's ranks share one link; inter_node is each rank's share")
    if any(node.link_cpu_s_per_byte):
        for key, value in zip(("inter_node_cpu_ns_per_byte", "intra_node_cpu_ns_per_byte"), node.link_cpu_s_per_byte):
            out.append(f"  {key}: {_num(value / NANO)}  # host CPU per byte over TCP (calibrate --emulated)")
    if node.memory_sources:
        out.append("memory_sources:  # fitted by clusterplan fit: reading = factor * predicted peak + offset")
        for source, factor, offset in node.memory_sources:
            out.append(f"  {source}: {{factor: {_num(factor)}, offset_gib: {_num(offset / GIB)}}}")
    if node.collectives:
        out.append("collectives:  # measured: times_us [[bytes, us], ...] interpolated in log-log; "
                   "beyond it time = latency + S_bus / bus_bandwidth; ranks_per_node: measured across nodes")
        for m in node.collectives:
            table = ""
            if m.times_s:
                table = ", times_us: [" + ", ".join(f"[{int(b)}, {_num(t / MICRO)}]" for b, t in m.times_s) + "]"
            spread = f", ranks_per_node: {m.ranks_per_node}" if m.ranks_per_node else ""
            out.append(f"  - {{op: {m.op}, group_size: {m.group_size}{spread}, latency_us: {_num(m.latency_s / MICRO)}, "
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
    if [n for n, _ in d.matmul_shapes_by_dtype] != [n for n, _ in e.matmul_shapes_by_dtype]:
        raise AssertionError("profile_yaml: device.matmul_shapes did not round-trip")
    pairs += [(a, b) for (_, t), (_, u) in zip(d.matmul_shapes_by_dtype, e.matmul_shapes_by_dtype)
              for p, q in zip(t.points, u.points) for a, b in zip(p, q)]
    pairs += list(zip(node.link_cpu_s_per_byte, back.link_cpu_s_per_byte))
    if node.inter_node_shared != back.inter_node_shared:
        raise AssertionError("profile_yaml: node.inter_node_shared did not round-trip")
    if [n for n, _, _ in node.memory_sources] != [n for n, _, _ in back.memory_sources]:
        raise AssertionError("profile_yaml: memory_sources did not round-trip")
    pairs += [(a, b) for m, n in zip(node.memory_sources, back.memory_sources) for a, b in zip(m[1:], n[1:])]
    layouts = [(c.op, c.group_size, c.ranks_per_node) for c in node.collectives]
    if layouts != [(c.op, c.group_size, c.ranks_per_node) for c in back.collectives]:
        raise AssertionError("profile_yaml: collectives did not round-trip")
    if not all(_close(a, b) for a, b in pairs):
        raise AssertionError("profile_yaml: the written profile does not read back to the same numbers")


def write_profile(node: NodeSpec, path: str | os.PathLike, *, header: Iterable[str] = (),
                  comments: dict[str, str] | None = None) -> Path:
    """Write a profile YAML atomically (validated before the rename)."""
    return atomic_write_text(path, profile_yaml(node, header=header, comments=comments))
