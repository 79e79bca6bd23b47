"""``clusterplan predict``: step time and memory of one plan.

    clusterplan predict --model MODEL --hardware PROFILE --nodes N [--gpus-per-node G]
        --tp T --pp P --dp D [--cp C] [--ep E] [--vpp V] [--micro-batch M] --global-batch B [--seq-len S]
        [--recompute none|selective|full] [--sharding none|zero1|zero2|zero3|fsdp]
        [--sequence-parallel] [--precision fp32|bf16|fp16|fp8] [--schedule gpipe|1f1b|interleaved|zb]
        [--stage-layers 4,7,7,6] [--out PLAN.json] [--json]
    clusterplan predict PLAN.json [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from planner.errors import InputError

_GIB = 1024**3


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict step time and memory of one plan",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("plan", nargs="?", help="a plan JSON file (instead of the flags)")
    p.add_argument("--model", help="preset name or path to a Hugging Face config.json")
    p.add_argument("--hardware", help="profile name in hardware_profiles/ or a YAML path")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int, help="override the profile's node size")
    p.add_argument("--tp", type=int, help="default 1")
    p.add_argument("--pp", type=int, help="default 1")
    p.add_argument("--dp", type=int, help="default: the GPUs left, nodes*gpus_per_node / (tp*pp*cp)")
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1,
                   help="expert parallel degree (MoE models): experts over ep of the dp ranks (default 1)")
    p.add_argument("--etp", type=int, default=0,
                   help="MoE: the experts' tensor-parallel degree (Megatron --expert-tensor-parallel-size); default tp")
    p.add_argument("--vpp", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--global-batch", type=int)
    p.add_argument("--seq-len", type=int, help="default: the model's sequence length")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    p.add_argument("--sharding", choices=["none", "zero1", "zero2", "zero3", "fsdp"], default="none")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16", "fp8"], default=None,
                   help="default: bf16 where the device has it, else fp16")
    p.add_argument("--schedule", choices=["gpipe", "1f1b", "interleaved", "zb"], default=None,
                   help="default: interleaved when --vpp > 1, else 1f1b")
    p.add_argument("--stage-layers", help="transformer layers per (virtual) stage, e.g. 4,7,7,6")
    add_moe_routing_args(p)
    p.add_argument("--runtime", default=None,
                   help="the stack modelled: a preset of planner.cost.runtime.RUNTIME_PRESETS (default: executor "
                        "on a profile clusterplan calibrate measured, else default)")
    p.add_argument("--memory-source", choices=["allocated", "reserved", "device_used"], default=None,
                   help="also print the peak memory as that reading would show it (a profile fitted by "
                        "clusterplan fit --runs with memory readings of that source)")
    p.add_argument("--out", help="write the plan with this prediction (versioned JSON)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handler)


def _parse_stage_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError("stage_layers", f"must be comma-separated integers, got {text!r}") from None
    return values


def add_moe_routing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moe-capacity-factor", type=float, default=None,
                   help="MoE: each expert takes at most this times its balanced share of the tokens "
                        "(Megatron --moe-expert-capacity-factor); default dropless")
    p.add_argument("--moe-pad-to-capacity", action="store_true",
                   help="MoE: pad every expert's input to its capacity (Megatron --moe-pad-expert-input-to-capacity)")
    p.add_argument("--moe-load-imbalance", type=float, default=None,
                   help="MoE: routed tokens the busiest expert-parallel rank receives over the mean, as measured "
                        "on your router; default: a uniform router's expectation (planner/cost/routing.py)")


def with_moe_routing(model, args: argparse.Namespace):
    """``model`` with the command line's expert capacity and load imbalance, where it gives them."""
    if args.moe_capacity_factor is None and not args.moe_pad_to_capacity and args.moe_load_imbalance is None:
        return model
    factor = model.moe_capacity_factor if args.moe_capacity_factor is None else args.moe_capacity_factor
    load = model.moe_load_imbalance if args.moe_load_imbalance is None else args.moe_load_imbalance
    return dataclasses.replace(model, moe_capacity_factor=factor, moe_load_imbalance=load,
                               moe_pad_to_capacity=args.moe_pad_to_capacity or model.moe_pad_to_capacity)


def model_from_args(args: argparse.Namespace):
    """``--model`` at ``--seq-len`` with ``--moe-*`` routing; a default training length the
    config does not state is said in one note line on stderr."""
    import sys

    from planner.catalog import load_model

    notes: list[str] = []
    model = with_moe_routing(load_model(args.model, args.seq_len, notes), args)
    for line in notes:
        print(f"clusterplan {args.verb}: note: {line}", file=sys.stderr)
    return model


def plan_from_args(args: argparse.Namespace):
    """Build a :class:`planner.plan.Plan` from the flag form (or load the file form)."""
    from planner.profile_yaml import load_profile
    from planner.plan import ParallelConfig, Plan

    if args.plan:
        flags = [f for f in ("model", "hardware", "nodes", "tp", "pp", "dp", "global_batch")
                 if getattr(args, f) is not None]
        if flags:
            raise InputError(flags[0], "give either a PLAN.json or the flags, not both")
        return Plan.load(args.plan)
    for name in ("model", "hardware", "nodes", "global_batch"):
        if getattr(args, name) is None:
            raise InputError(name, f"missing (--{name.replace('_', '-')} is required without a PLAN.json)")
    model = model_from_args(args)
    node = load_profile(args.hardware)
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else node.gpus_per_node
    if gpus_per_node < 1:
        raise InputError("gpus_per_node", "must be >= 1")
    schedule = args.schedule or ("interleaved" if args.vpp > 1 else "1f1b")
    tp, pp = (1 if args.tp is None else args.tp), (1 if args.pp is None else args.pp)
    dp = args.dp
    if dp is None:  # Megatron's rule: data parallel takes the GPUs the other degrees leave
        inner, world = tp * pp * args.cp, args.nodes * gpus_per_node
        if inner < 1 or world % inner:
            raise InputError("dp", f"tp*pp*cp = {inner} does not divide the {world} GPUs; give --dp")
        dp = world // inner
    parallel = ParallelConfig(
        tp=tp, pp=pp, dp=dp, cp=args.cp, ep=args.ep, etp=args.etp, vpp=args.vpp,
        micro_batch=args.micro_batch, global_batch=args.global_batch,
        seq_len=args.seq_len or model.seq_len, recompute=args.recompute, sharding=args.sharding,
        sequence_parallel=args.sequence_parallel,
        precision=args.precision or node.device.default_precision(), schedule=schedule,
        stage_layers=_parse_stage_layers(args.stage_layers),
    )
    return Plan(model=model, hardware=args.hardware, n_nodes=args.nodes,
                gpus_per_node=gpus_per_node, parallel=parallel)


def format_table(plan, pred) -> str:
    """Readable summary of a prediction."""
    d = pred.to_dict()
    t = d["breakdown"]["time"]
    mem = d["breakdown"]["memory"]
    comm = t["exposed_comm_s"]
    P = plan.parallel
    lines = [
        f"plan {plan.id}: {plan.model.name} on {plan.n_nodes} x {plan.machine} "
        f"({plan.gpus_per_node} per node, {plan.world_size} ranks)",
        f"  {P.megatron_notation()}  gbs {P.global_batch}  seq {P.seq_len}  {P.precision}  "
        f"{pred.num_micro_batches} micro-batches",
        "",
        f"  step time            {d['step_time_s']:.4g} s",
        f"  tokens/s             {d['tokens_per_s']:.4g}  ({d['tokens_per_s_per_gpu']:.4g} per GPU)",
        f"  model TFLOP/s/GPU    {d['model_tflops_per_gpu']:.4g}   MFU {100 * d['mfu']:.1f}%",
        f"  hw TFLOP/s/GPU       {d['hardware_tflops_per_gpu']:.4g}   HFU {100 * d['hfu']:.1f}%",
        f"  peak memory          {d['peak_memory_bytes'] / _GIB:.2f} GiB of {d['hbm_bytes'] / _GIB:.1f} GiB"
        f"  -> {'fits' if d['fits'] else 'DOES NOT FIT'}",
        "",
        "  time breakdown (critical stage)",
        f"    forward {t['forward_s']:.4g} s   backward {t['backward_s']:.4g} s   "
        f"recompute {t['recompute_s']:.4g} s   optimizer {t['optimizer_s']:.4g} s",
        f"    exposed comm: tp {comm['tp']:.4g} s  cp {comm['cp']:.4g} s  dp {comm['dp']:.4g} s  "
        f"pp {comm['pp']:.4g} s" + (f"  ep {comm['ep']:.4g} s" if P.ep > 1 else "") + f"   bubble {t['bubble_s']:.4g} s",
        "  memory breakdown (peak rank, GiB)",
        "    " + "  ".join(f"{k.replace('_bytes', '')} {v / _GIB:.2f}" for k, v in mem.items()),
        "",
        "  stage  layers   time_s      memory_GiB",
    ]
    for st in d["per_stage"]:
        lines.append(f"  {st['stage']:>5}  {st['layers']:>6}   {st['time_s']:<10.4g}  {st['memory_bytes'] / _GIB:.2f}")
    lines.append("")
    lines.append(f"  FLOPs: {d['flop_convention']}")
    return "\n".join(lines)


def _trust(plan, pred):
    """The step time's range from the nearest published runs' cross-validated errors."""
    from planner.profile_yaml import load_profile
    from planner.trust import Trust, load_residuals, trust

    if plan.cluster:
        return Trust(None, None, (), "a mixed cluster: no validated published run", extrapolation=True)
    return trust(pred.step_time_s, load_profile(plan.hardware).name, pred.runtime.name, plan.parallel,
                 load_residuals())


def handler(args: argparse.Namespace) -> int:
    from planner.trust import describe

    from planner.calibrate.host import warn_if_profile_of_other_host
    from planner.cost.runtime import get_runtime
    from planner.cost.step import predict_plan
    from planner.profile_yaml import load_profile

    plan = plan_from_args(args)
    runtime = get_runtime(args.runtime)
    pred = predict_plan(plan, runtime)
    reading = None
    if args.memory_source:
        if plan.cluster:
            raise InputError("memory_source", "fitted memory sources belong to a hardware profile, not a cluster file")
        reading = load_profile(plan.hardware).memory_reading_bytes(pred.peak_memory_bytes, args.memory_source)
    if args.out:
        plan.with_prediction(pred.to_dict()).save(args.out)
    confidence = _trust(plan, pred)
    if args.json:
        out = pred.to_dict()
        out["trust"] = confidence.to_dict()
        if reading is not None:
            out.update(memory_reading_bytes=reading, memory_source=args.memory_source)
        print(json.dumps(out, sort_keys=True))
    else:
        print(format_table(plan, pred))
        print(f"  step time range      {describe(confidence)}")
        if reading is not None:
            print(f"  peak memory as {args.memory_source} reads it: {reading / _GIB:.2f} GiB (fitted relation)")
    if not plan.cluster:
        warn_if_profile_of_other_host(plan.hardware, "predict")
    return 0
