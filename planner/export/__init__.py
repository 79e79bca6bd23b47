"""A plan as other frameworks' configuration: Megatron-LM arguments, a torchtitan TOML (0.2.2) or
Python config (0.3.0), a DeepSpeed JSON config, and the torchrun / Slurm command lines that launch clusterplan's own
executor on the plan.

Every exporter is a pure function ``Plan -> str``. A plan the target refuses to start (torchtitan's
DDP beside tp/pp/cp, ZeRO-2/3 in DeepSpeed's pipeline engine) is an InputError naming the target's
rule; what it runs differently (ZeRO-2 in Megatron-LM, a schedule the framework lacks...) is said
in a comment in the output (``#`` lines; a ``"_comment"`` list in the JSON) — never dropped
silently. Batch arithmetic is the plan's: global batch = micro batch x micro-batches x dp.
"""
from __future__ import annotations

from planner.errors import InputError, require
from planner.export.common import one_line
from planner.export.deepspeed import deepspeed_config, to_deepspeed
from planner.export.launchers import to_slurm, to_torchrun
from planner.export.megatron import megatron_args, megatron_env, to_megatron
from planner.export.torchtitan import TORCHTITAN_RELEASE, to_torchtitan, torchtitan_config
from planner.export.torchtitan_py import TORCHTITAN_PY_RELEASE, to_torchtitan_py, torchtitan_py_config
from planner.plan import Plan

__all__ = ["FORMATS", "TORCHTITAN_PY_RELEASE", "TORCHTITAN_RELEASE", "deepspeed_config", "export_plan", "megatron_args",
           "megatron_env", "one_line", "to_deepspeed", "to_megatron", "to_slurm", "to_torchrun", "to_torchtitan",
           "to_torchtitan_py", "torchtitan_config", "torchtitan_py_config"]

FORMATS = ("megatron", "torchtitan", "torchtitan-py", "deepspeed", "torchrun", "slurm")


def export_plan(plan: Plan, fmt: str, plan_path: str = "PLAN.json") -> str:
    """The plan in format ``fmt`` (one of :data:`FORMATS`). A plan with a tensor-parallel degree
    per pipeline stage (``stage_tp``, a mixed cluster) has no export: Megatron-LM, torchtitan and
    DeepSpeed take one tp for the whole model, and the executor builds one device mesh."""
    require(not plan.parallel.stage_tp, "stage_tp",
            f"{fmt} takes one tensor-parallel size for every stage; this plan uses "
            f"{'/'.join(map(str, plan.parallel.stage_tp))} (plan with --fix tp=N for an exportable one)")
    if fmt == "megatron":
        return to_megatron(plan)
    if fmt == "torchtitan":
        return to_torchtitan(plan)
    if fmt == "torchtitan-py":
        return to_torchtitan_py(plan)
    if fmt == "deepspeed":
        return to_deepspeed(plan)
    if fmt == "torchrun":
        return to_torchrun(plan, plan_path)
    if fmt == "slurm":
        return to_slurm(plan, plan_path)
    raise InputError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
