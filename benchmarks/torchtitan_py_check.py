"""torchtitan 0.3.0's own config classes run every export case's Python config (``clusterplan export
--format torchtitan-py``): ``python benchmarks/torchtitan_py_check.py`` prints one JSON object,
case -> "" (accepted and read back as the plan) or the finding.

torchtitan 0.3.0 sits beside the 0.2.2 the TOML check uses, in its own folder
(:data:`TORCHTITAN_PY_DIR`, ``make setup``: ``pip install --no-deps --target`` with ``spmd_types``,
which its ``ParallelDims`` imports), first on ``sys.path`` of this process only. Its model
registries import Triton (their MoE kernels), so the registry function the export starts from is a
stand-in holding torchtitan's own ``TrainingConfig``, ``ParallelismConfig`` and ``CompileConfig``:
the check is on what the export sets (slotted dataclasses refuse an unknown field; ``ParallelismConfig``
validates itself on construction), on ``ParallelDims`` at the plan's world size, and on what they
read back (:func:`benchmarks.export_validators.titan_read_back`).
"""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHTITAN_PY_DIR = ROOT / ".venv" / "torchtitan-0.3.0"


def _stand_ins() -> None:
    """The modules the exported config imports that need torchtitan's training stack: each
    model's registry (each function a fresh job config of torchtitan's own sections) and
    ``model_registry``, and the float8 converter (their arguments kept)."""
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig

    from planner.export.torchtitan_py import DEEPSEEK_V3, QWEN3, REGISTRY

    @dataclass(slots=True)
    class Job:  # the fields of Trainer.Config the export reads or sets
        training: TrainingConfig = field(default_factory=TrainingConfig)
        parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
        compile: CompileConfig = field(default_factory=CompileConfig)
        activation_checkpoint: object = None
        model_spec: object = None

    functions = {"llama3": REGISTRY.values(), "qwen3": [f for _, f in QWEN3.values()],
                 "deepseek_v3": [f for _, f in DEEPSEEK_V3.values()]}
    for package, names in functions.items():
        registry = types.ModuleType(f"torchtitan.models.{package}.config_registry")
        for name in names:
            setattr(registry, name, Job)
        models = types.ModuleType(f"torchtitan.models.{package}")
        models.model_registry = lambda flavor, converters=None, package=package: (package, flavor, converters)
        sys.modules.update({models.__name__: models, registry.__name__: registry})
    quantization = types.ModuleType("torchtitan.components.quantization")
    quantization.Float8LinearConverter = types.SimpleNamespace(Config=lambda **kw: ("float8", kw))
    sys.modules["torchtitan.components.quantization"] = quantization


def check(plan) -> str:
    """"" when the plan's exported module runs against torchtitan 0.3.0's classes and reads back as
    the plan; the finding otherwise."""
    from planner.export import to_torchtitan_py

    return check_text(to_torchtitan_py(plan), plan)


def check_text(text: str, plan) -> str:
    """:func:`check` of the module ``text`` (an export, or one altered to see the check fail)."""
    from torchtitan.distributed.parallel_dims import ParallelDims

    from benchmarks.export_validators import titan_read_back

    namespace: dict = {}
    try:
        exec(compile(text, "clusterplan_job.py", "exec"), namespace)  # noqa: S102 - the export under test
        cfg = namespace["clusterplan_job"]()
        par = cfg.parallelism
        ParallelDims(dp_replicate=par.data_parallel_replicate_degree, dp_shard=par.data_parallel_shard_degree,
                     cp=par.context_parallel_degree, tp=par.tensor_parallel_degree, pp=par.pipeline_parallel_degree,
                     ep=par.expert_parallel_degree, world_size=plan.parallel.world_size)
    except Exception as err:  # noqa: BLE001 - whatever torchtitan raises is the finding
        return f"{type(err).__name__}: {err}"
    if plan.parallel.tp > 1 and par.enable_sequence_parallel != plan.parallel.sequence_parallel:
        return f"enable_sequence_parallel {par.enable_sequence_parallel}, the plan {plan.parallel.sequence_parallel}"
    return titan_read_back(plan, par, cfg.training)


def setup() -> None:
    """torchtitan 0.3.0 first on this process's path, the stand-ins in place."""
    sys.path[:0] = [str(TORCHTITAN_PY_DIR), str(ROOT)]
    from importlib.metadata import version

    from planner.export import TORCHTITAN_PY_RELEASE

    found = version("torchtitan")
    if found != TORCHTITAN_PY_RELEASE:
        raise SystemExit(f"torchtitan {found} first on the path, the export targets {TORCHTITAN_PY_RELEASE} "
                         f"(pip install --no-deps --target {TORCHTITAN_PY_DIR} torchtitan=={TORCHTITAN_PY_RELEASE} "
                         "spmd_types==0.2.3)")
    _stand_ins()


def main() -> int:
    setup()
    from benchmarks.export_validators import each_case
    print(json.dumps(each_case(check)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
