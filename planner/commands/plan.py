"""``clusterplan plan``: search the parallel configurations and rank them.

    clusterplan plan --model MODEL (--hardware PROFILE --nodes N [--gpus-per-node G] | --cluster CLUSTER.yaml)
        --global-batch B [--seq-len S] [--precision bf16] [--top K] [--out PLAN.json]
        [--out-dir DIR] [--json] [--fix tp=8 --fix recompute=full ...] [--runtime NAME]
"""
from __future__ import annotations

import argparse
import json

from planner.errors import InputError
from planner.commands.predict import add_moe_routing_args, model_from_args
from planner.progress import Progress

_GIB = 1024**3


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="search parallel configurations and rank them",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="preset name or path to a Hugging Face config.json")
    p.add_argument("--hardware", help="profile name in hardware_profiles/ or a YAML path")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int, help="override the profile's node size")
    p.add_argument("--cluster", help="cluster file (clusters/NAME.yaml or a path), e.g. mixed node types")
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--seq-len", type=int, help="default: the model's sequence length")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16", "fp8"], default=None,
                   help="default: bf16 where the device has it, else fp16")
    p.add_argument("--top", type=int, default=10, help="how many plans to rank (default 10)")
    add_moe_routing_args(p)
    p.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE",
                   help="hold an option fixed: tp pp dp cp vpp mb recompute sharding sp schedule order")
    p.add_argument("--runtime", default=None,
                   help="the stack modelled: a preset of planner.cost.runtime.RUNTIME_PRESETS (default: executor "
                        "on a profile clusterplan calibrate measured, else default)")
    p.add_argument("--out", help="write the best plan (with its prediction) here")
    p.add_argument("--out-dir", help="write the top K plans as DIR/rank-01-<id>.json ...")
    p.add_argument("--json", action="store_true", help="print the ranked list as JSON")
    p.set_defaults(func=handler)


def _cluster_from_args(args):
    from planner.cost.step import cluster_for

    if args.cluster:
        if args.hardware or args.nodes is not None:
            raise InputError("cluster", "give either --cluster or --hardware/--nodes, not both")
        from planner.cluster import load_cluster, resolve_cluster_path

        path = str(resolve_cluster_path(args.cluster))
        return load_cluster(path), path
    if not args.hardware:
        raise InputError("hardware", "missing (give --hardware PROFILE --nodes N, or --cluster FILE)")
    if args.nodes is None:
        raise InputError("nodes", "missing (--nodes N is required with --hardware)")
    if args.nodes < 1:
        raise InputError("nodes", "must be >= 1")
    if args.gpus_per_node is not None and args.gpus_per_node < 1:
        raise InputError("gpus_per_node", "must be >= 1")
    return cluster_for(args.hardware, args.nodes, args.gpus_per_node), args.hardware


def explain(best, runner) -> str:
    """One paragraph: why ``best`` beats ``runner`` (from their time breakdowns)."""
    a, b = best.prediction, runner.prediction
    ta, tb = a.time, b.time
    terms = {
        "compute": (ta.forward_s + ta.backward_s, tb.forward_s + tb.backward_s),
        "recomputation": (ta.recompute_s, tb.recompute_s),
        "pipeline bubble": (ta.bubble_s, tb.bubble_s),
        "exposed tensor-parallel communication": (ta.tp_s, tb.tp_s),
        "exposed context-parallel communication": (ta.cp_s, tb.cp_s),
        "expert-parallel all-to-all": (ta.ep_s, tb.ep_s),
        "exposed data-parallel / ZeRO communication": (ta.dp_s, tb.dp_s),
        "pipeline send/recv": (ta.pp_s, tb.pp_s),
        "optimizer step": (ta.optimizer_s, tb.optimizer_s),
    }
    diffs = sorted(((tb_ - ta_, name) for name, (ta_, tb_) in terms.items()), reverse=True)
    gap = b.step_time_s - a.step_time_s
    pa, pb = best.parallel.megatron_notation(), runner.parallel.megatron_notation()
    wins = [f"{name} ({d * 1e3:.0f} ms less)" for d, name in diffs if d > 0.05 * max(gap, 1e-12)][:3]
    losses = [f"{name} ({-d * 1e3:.0f} ms more)" for d, name in diffs[::-1] if d < -0.05 * max(gap, 1e-12)][:2]
    text = (f"The best plan ({pa}) is predicted {gap * 1e3:.0f} ms per step ({100 * gap / b.step_time_s:.1f}%) faster "
            f"than the runner-up ({pb})")
    if wins:
        text += " because it spends less on " + ", ".join(wins)
    if losses:
        text += "; it pays for this with " + ", ".join(losses)
    text += (f". Peak memory {a.peak_memory_bytes / _GIB:.1f} vs {b.peak_memory_bytes / _GIB:.1f} GiB"
             f" of {a.hbm_bytes / _GIB:.0f} GiB.")
    return text


def trust_ranges(result, hetero: bool) -> list:
    """Each ranked plan's step-time range from the nearest published runs (:mod:`planner.trust`)."""
    from planner.trust import Trust, load_residuals, trust

    if hetero:
        return [Trust(None, None, (), "a mixed cluster: no validated published run", True) for _ in result.ranked]
    residuals = load_residuals()
    profile = result.cluster.groups[0].node.name
    return [trust(c.step_time_s, profile, c.prediction.runtime.name, c.parallel, residuals) for c in result.ranked]


def mfu_ceiling_check(result, hetero: bool):
    """Plan 1's MFU against the best published run on its GPU (:mod:`planner.mfu_ceiling`);
    None within the margin, on a mixed cluster or without published runs there."""
    from planner.mfu_ceiling import mfu_check

    if hetero or not result.ranked:
        return None
    return mfu_check(result.cluster.groups[0].node.name, result.ranked[0].prediction)


def ties_text(ranges) -> str:
    """Which plans the model cannot rank apart: their step-time ranges overlap the best one's."""
    from planner.trust import describe

    best = ranges[0]
    if best.low_s is None:
        return f"How far to trust the ranking: {describe(best)}; the order rests on the cost model alone."
    tied = [i + 1 for i, t in enumerate(ranges) if t.low_s is not None and t.low_s <= best.high_s]
    text = f"How far to trust it: plan 1's step time {describe(best)}."
    if len(tied) > 1:
        text += (f" Plans {', '.join(map(str, tied))} have ranges that overlap it: ties the model cannot "
                 "rank apart; choose among them on memory headroom or simplicity.")
    else:
        text += " No other listed plan's range overlaps it."
    return text


def format_table(result) -> str:
    rows = result.rows()
    head = (f"{'#':>2}  {'step s':>8}  {'tok/s/GPU':>9}  {'MFU':>5}  {'mem GiB':>7}  {'free':>5}  "
            f"{'bubble':>6}  {'comm':>5}  plan")
    lines = [head]
    for r in rows:
        extra = f"  [{r['order']}]" if r["order"] != "tp-cp-dp-pp" else ""
        if r["stage_layers"]:
            extra += f"  stages {','.join(map(str, r['stage_layers']))}"
        lines.append(f"{r['rank']:>2}  {r['step_time_s']:>8.3f}  {r['tokens_per_s_per_gpu']:>9.1f}  "
                     f"{100 * r['mfu']:>4.1f}%  {r['peak_memory_gib']:>7.1f}  {r['headroom_gib']:>5.1f}  "
                     f"{r['bubble_pct']:>5.1f}%  {r['exposed_comm_pct']:>4.1f}%  {r['plan']}{extra}")
    return "\n".join(lines)


def what_would_fit(model, cluster, args, fixed, runtime, hetero: bool) -> list[str]:
    """Re-search relaxed settings: without each --fix, then with more nodes."""
    from planner.search import search

    out = []
    if hetero:
        return ["a cluster with more (or larger-memory) nodes"]
    for key in list(fixed):
        relaxed = {k: v for k, v in fixed.items() if k != key}
        r = search(model, cluster, args.global_batch, args.seq_len, args.precision, relaxed, 1,
                   runtime=runtime, refine=False)
        if r.fits:
            out.append(f"without --fix {key}={fixed[key]}: {r.ranked[0].parallel.megatron_notation()} "
                       f"({r.ranked[0].step_time_s:.3f} s/step)")
    from planner.hardware import MAX_NODES, ClusterSpec

    node = cluster.node
    factors = [f for f in (2, 4, 8, 16) if cluster.n_nodes * f <= MAX_NODES]
    for factor in factors:
        bigger = ClusterSpec.homogeneous(node, cluster.n_nodes * factor)
        r = search(model, bigger, args.global_batch, args.seq_len, args.precision, fixed, 1,
                   runtime=runtime, refine=False)
        if r.fits:
            out.append(f"{cluster.n_nodes * factor} nodes ({bigger.world_size} GPUs): "
                       f"{r.ranked[0].parallel.megatron_notation()} ({r.ranked[0].step_time_s:.3f} s/step)")
            break
    if not out:
        most = cluster.n_nodes * max(factors, default=1)
        out.append(f"nothing up to {most} nodes with these settings; a device with more memory")
    return out


def handler(args: argparse.Namespace) -> int:
    from planner.calibrate.host import warn_if_other_host
    from planner.cost.runtime import get_runtime
    from planner.search.space import parse_fix

    if args.top < 1:
        raise InputError("top", "must be >= 1")
    if args.global_batch < 1:
        raise InputError("global_batch", "must be >= 1")
    fixed = parse_fix(args.fix)
    model = model_from_args(args)
    runtime = get_runtime(args.runtime)
    cluster, label = _cluster_from_args(args)
    if args.precision is None:
        args.precision = cluster.groups[0].node.device.default_precision()
    bar = Progress("searching")
    hetero = not cluster.is_homogeneous
    try:
        if hetero:
            from planner.search.hetero import search_hetero

            result = search_hetero(model, cluster, args.global_batch, args.seq_len, args.precision, fixed,
                                   args.top, bar, runtime, cluster_path=label)
        else:
            from planner.search import search

            result = search(model, cluster, args.global_batch, args.seq_len, args.precision, fixed,
                            args.top, bar, runtime, hardware=label)
    finally:
        bar.close()
    plans = result.best_plans
    if args.out and plans:
        plans[0].save(args.out)
    if args.out_dir and plans:
        from pathlib import Path

        d = Path(args.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for i, plan in enumerate(plans):
            plan.save(d / f"rank-{i + 1:02d}-{plan.id}.json")
    warn_if_other_host((g.node for g in cluster.groups), "plan")
    ranges = trust_ranges(result, hetero) if result.fits else []
    ceiling = mfu_ceiling_check(result, hetero) if result.fits else None
    if args.json:
        out = result.to_dict()
        out["trust"] = [t.to_dict() for t in ranges]
        out["mfu_check"] = ceiling.to_dict() if ceiling else None
        print(json.dumps(out, sort_keys=True, default=str))
        return 0 if result.fits else 1
    world = cluster.world_size
    print(f"{model.name} on {label} ({world} GPUs), global batch {args.global_batch}, "
          f"seq {args.seq_len or model.seq_len}, {args.precision}"
          + (f", fixed: {' '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else ""))
    print(f"searched in {result.elapsed_s:.2f} s")
    print()
    if result.fits:
        print(format_table(result))
        print()
        if len(result.ranked) > 1:
            print(explain(result.ranked[0], result.ranked[1]))
            print()
        print(ties_text(ranges))
        print()
        if ceiling is not None:
            from planner.mfu_ceiling import describe

            print(describe(ceiling))
            print()
        if getattr(result, "gain_text", ""):
            print(result.gain_text)
            print()
    else:
        print("No plan fits.")
        c = result.closest
        if c is not None:
            p = c.prediction
            print(f"Closest: {c.parallel.megatron_notation()} needs {p.peak_memory_bytes / _GIB:.1f} GiB per GPU "
                  f"of {p.hbm_bytes / _GIB:.0f} GiB.")
        print("What would fit:")
        for line in what_would_fit(model, cluster, args, fixed, runtime, hetero):
            print(f"  - {line}")
        print()
    print(result.rejection_summary())
    if args.out and plans:
        print(f"best plan written to {args.out}")
    if args.out_dir and plans:
        print(f"{len(plans)} plans written to {args.out_dir}/")
    return 0 if result.fits else 1
