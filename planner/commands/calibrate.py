"""``clusterplan calibrate``: microbenchmark this machine and write its hardware profile."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="measure this machine (GEMMs, memory-bound ops, overhead, gloo collectives) -> profile YAML",
        description="Run torch microbenchmarks under torchrun (one thread per rank) and write a hardware "
                    "profile in the hardware_profiles/ schema.")
    p.add_argument("--nproc", type=int, default=4,
                   help="ranks for the collective and contention benchmarks (group sizes 2, 4, ... up to N; default 4)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and sizes: under 60 s")
    p.add_argument("--out", default=None, help="profile to write (default hardware_profiles/local-cpu.yaml)")
    p.add_argument("--name", default="local-cpu", help="profile name (default local-cpu)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="default rank count written in the profile (default: the effective host cores)")
    p.add_argument("--from-results", default=None, metavar="RESULTS.json",
                   help="build the profile from recorded benchmark results instead of measuring")
    p.add_argument("--save-results", default=None, metavar="RESULTS.json", help="also keep the raw results")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole suite N times and keep the median of each measurement (a machine "
                        "whose speed drifts: its typical state; the header lists every pass)")
    p.add_argument("--json", action="store_true", help="print the calibration summary as JSON")
    p.add_argument("--emulated", action="store_true",
                   help="measure the emulated cluster's inter-node link (clusterplan emulate up) into a profile: "
                        "--base's CPU with that link, --gpus-per-node ranks per node (default 1)")
    p.add_argument("--base", default="local-cpu", help="with --emulated: the node's CPU profile (default local-cpu)")
    p.set_defaults(func=handler)


def emulated_handler(args: argparse.Namespace) -> int:
    """``calibrate --emulated``: fit the shaped link, write the emulated node's profile."""
    from planner import emulate
    from planner.calibrate.emulated import QUICK_SIZES, SIZES, emulated_node, fit_link, measure
    from planner.calibrate.link_cpu import link_cpu_costs
    from planner.errors import require
    from planner.io import check_output_path
    from planner.profile_yaml import load_profile
    from planner.profile_write import write_profile
    from planner.units import NANO

    gpn = args.gpus_per_node or 1
    require(gpn >= 1, "gpus_per_node", f"must be >= 1, got {gpn}")
    require(args.out is not None, "out", "missing (--emulated writes the emulated node's profile to --out PROFILE.yaml)")
    check_output_path(args.out)
    cluster = emulate.current()
    base = load_profile(args.base)
    print(f"calibrate: the link between {cluster.namespace(0)} and {cluster.namespace(1)} "
          f"({cluster.mbit:g} Mbit/s shaped) ...", file=sys.stderr)
    results = measure(cluster, QUICK_SIZES if args.quick else SIZES, gpn)
    fit = fit_link(results, cluster.bytes_per_s / gpn)
    link_cpu = link_cpu_costs(cluster, seconds=0.5 if args.quick else 1.5)
    node = dataclasses.replace(emulated_node(base, cluster, gpn, fit, results), link_cpu_s_per_byte=link_cpu)
    layouts = sorted({(c.group_size, c.ranks_per_node) for c in node.collectives if c.ranks_per_node})
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = [f"{node.name}: {base.name} with the emulated cluster's inter-node link as measured",
              f"clusterplan calibrate --emulated --base {args.base} --gpus-per-node {gpn} ({when}): gloo all-reduce "
              f"and ping-pong between two nodes, {gpn} pair(s) at once, {len(fit.rows)} sizes",
              f"latency {fit.latency_s * 1e6:.1f} us per step; {fit.bandwidth_bytes_per_s / 1e6:.1f} MB/s achieved of "
              f"{fit.line_bytes_per_s / 1e6:.1f} MB/s, a rank's share of the shaped link (bus efficiency {fit.bus_efficiency:.3f})",
              f"host CPU per byte over TCP: {link_cpu[0] / NANO:.2f} ns between nodes, {link_cpu[1] / NANO:.2f} ns inside "
              "one (planner/calibrate/link_cpu.py)",
              "collectives measured across the nodes (ranks_per_node): groups of "
              + ", ".join(f"{n} ({k} per node, {gpn // k} at once)" for n, k in layouts)]
    provenance = (f"{base.measured_on}; inter_node: calibrate --emulated, {cluster.nodes} nodes at "
                  f"{cluster.mbit:g} Mbit/s, {when}").lstrip("; ")
    write_profile(dataclasses.replace(node, measured_on=provenance), args.out, header=header)
    print(f"wrote {args.out}")
    print(f"  inter-node: latency {fit.latency_s * 1e6:.1f} us, {fit.bandwidth_bytes_per_s / 1e6:.1f} MB/s of "
          f"{fit.line_bytes_per_s / 1e6:.1f}, a rank's share of the line with {gpn} per node (efficiency "
          f"{fit.bus_efficiency:.3f}); host CPU {link_cpu[0] / NANO:.2f} ns per byte across, "
          f"{link_cpu[1] / NANO:.2f} inside a node")
    for op, size, measured, fitted in fit.rows:
        print(f"  {op:<10} {size:>10} B: measured {measured * 1e3:9.3f} ms, fitted {fitted * 1e3:9.3f} ms "
              f"({100 * (fitted / measured - 1):+.1f}%)")
    return 0


def handler(args: argparse.Namespace) -> int:
    import json

    from planner.calibrate.profile import DEFAULT_PROFILE_PATH
    from planner.calibrate.runner import calibrate
    from planner.errors import require

    if args.emulated:
        return emulated_handler(args)
    require(args.nproc >= 2, "nproc", f"must be >= 2, got {args.nproc}")
    require(args.repeat >= 1, "repeat", f"must be >= 1, got {args.repeat}")
    if args.gpus_per_node is not None:
        require(args.gpus_per_node >= 1, "gpus_per_node", f"must be >= 1, got {args.gpus_per_node}")
    out = args.out or DEFAULT_PROFILE_PATH
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"  [{time.perf_counter() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    if not args.from_results:
        print(f"calibrate: {'quick ' if args.quick else ''}benchmarks on {args.nproc} ranks ...", file=sys.stderr)
    cal = calibrate(args.nproc, quick=args.quick, out=out, results_path=args.from_results,
                    save_results=args.save_results, name=args.name, gpus_per_node=args.gpus_per_node,
                    progress=progress, repeat=args.repeat)
    s = cal.summary
    if args.json:
        print(json.dumps({"profile": str(out), "contended": cal.contended, **s}, indent=2, default=str))
        return 0
    print(f"wrote {out}  ({time.perf_counter() - t0:.1f} s)")
    peaks = ", ".join(f"{dt} {v:.1f}" for dt, v in s["peak_gflops_per_s"].items())
    print(f"  GEMM peak per rank (GFLOP/s): {peaks}")
    print(f"  memory-bound: best {s['hbm_bandwidth_gb_s']:.1f} GB/s x efficiency {s['memory_bound_efficiency']:.2f}")
    print(f"  per-op overhead {s['kernel_overhead_us']:.2f} us; reserved {s['reserved_mib']:.1f} MiB; "
          f"fragmentation {s['fragmentation_fraction']:.2f}")
    print(f"  host cores {s['host_cores']}; ranks per node {s['gpus_per_node']}")
    for line in s["contention"]:
        print(f"    {line}")
    for c in s["collectives"]:
        print(f"  {c['op']:<15} n={c['group_size']}: latency {c['latency_us']:8.1f} us, "
              f"bus bandwidth {c['bus_bandwidth_gb_s']:.2f} GB/s")
    for w in cal.warnings:
        print(f"  warning: {w}", file=sys.stderr)
    if cal.contended:
        print("  contended: true (written in the profile header); rerun on a quiet machine for better numbers",
              file=sys.stderr)
    return 0
