"""``clusterplan export PLAN.json --format megatron|torchtitan|torchtitan-py|deepspeed|torchrun|slurm [--out FILE]``."""
from __future__ import annotations

import argparse
import sys

from planner.export import FORMATS  # light: json, shlex and planner.plan only


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a plan as Megatron-LM args, torchtitan TOML or Python config, DeepSpeed JSON or a launch command",
        description="Write a plan as another framework's configuration, or as the torchrun / Slurm "
                    "command that launches clusterplan's executor on it. What a target cannot "
                    "express is said in a comment in the output.")
    parser.add_argument("plan", help="plan file (PLAN.json, from clusterplan plan)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", help="write here (atomically) instead of standard output")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from planner.export import export_plan
    from planner.io import atomic_write_text
    from planner.plan import Plan

    plan = Plan.load(args.plan)
    text = export_plan(plan, args.format, plan_path=args.plan)
    if args.out:
        atomic_write_text(args.out, text)
        if args.format == "slurm":
            import os
            os.chmod(args.out, 0o755)
        print(f"wrote {args.out} ({args.format}, plan {plan.id})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
