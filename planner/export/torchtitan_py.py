"""A plan as a torchtitan Python config, the form torchtitan reads since :data:`TORCHTITAN_PY_RELEASE`
(its TOML JobConfig is gone): a module whose function returns the job's ``Trainer.Config``, run with
``torchrun ... -m torchtitan.train --module clusterplan_job --config clusterplan_job`` (the module
on ``PYTHONPATH``; torchtitan/config/manager.py imports ``--module`` by its qualified name and
calls ``--config``; ``--<section>.<field>`` overrides on the command line).

The function starts from the registry config of the plan's model (torchtitan names models, it
builds no architecture from numbers) and replaces what the plan decides: ``training``
(``TrainingConfig``), ``parallelism`` (``ParallelismConfig``, torchtitan/config/configs.py) and
``activation_checkpoint`` (``FullAC`` / ``SelectiveAC`` configs, ``None`` for none).
"""
from __future__ import annotations

from planner.errors import require
from planner.export.common import header, one_line
from planner.export.torchtitan import llama3_flavor, torchtitan_config
from planner.plan import Plan

TORCHTITAN_PY_RELEASE = "0.3.0"
"""The torchtitan release whose Python config fields this export writes."""

REGISTRY = {"8B": "llama3_8b", "70B": "llama3_70b", "405B": "llama3_405b"}
"""torchtitan 0.3.0's registry function per Llama 3 flavor (torchtitan/models/llama3/config_registry.py)."""

_AC = {"none": "None", "full": "FullAC.Config()", "selective": "SelectiveAC.Config()"}


def torchtitan_py_config(plan: Plan) -> tuple[str, dict[str, dict], list[str]]:
    """(registry function, {"training": fields, "parallelism": fields}, notes) in torchtitan
    0.3.0's names: the TOML export's sections (:func:`planner.export.torchtitan.torchtitan_config`)
    less what 0.3.0 dropped (``enable_async_tensor_parallel``: a ``tp_gemm_backend`` of the model
    now), with ``enable_sequence_parallel``, which 0.3.0 added."""
    flavor = llama3_flavor(plan.model)
    require(flavor in REGISTRY, "export",
            f"torchtitan {TORCHTITAN_PY_RELEASE}'s configs start from a registered model and "
            f"{one_line(plan.model.name)} is none of Llama 3 {', '.join(REGISTRY)} (layers, hidden, heads, ffn, vocab): "
            "use --format torchtitan (the TOML of torchtitan 0.2.2) and add a flavor")
    sections, notes = torchtitan_config(plan)
    p = plan.parallel
    parallelism = {k: v for k, v in sections["parallelism"].items() if k != "enable_async_tensor_parallel"}
    if p.tp > 1:
        parallelism["enable_sequence_parallel"] = p.sequence_parallel
    notes = [n for n in notes if not n.startswith(("torchtitan's tensor parallel always", "[model]"))]
    return REGISTRY[flavor], {"training": dict(sections["training"]), "parallelism": parallelism}, notes


def _call(cls: str, fields: dict) -> str:
    args = "".join(f"\n        {k}={v!r}," for k, v in fields.items())
    return f"{cls}({args}\n    )"


def to_torchtitan_py(plan: Plan) -> str:
    """The plan as a Python module for ``torchtitan.train --module clusterplan_job --config clusterplan_job``."""
    base, sections, notes = torchtitan_py_config(plan)
    p = plan.parallel
    doc = [*header(plan), f"for torchtitan {TORCHTITAN_PY_RELEASE} (Python config): save as clusterplan_job.py on "
           "PYTHONPATH and run", "    torchrun ... -m torchtitan.train --module clusterplan_job --config clusterplan_job",
           *(f"NOTE: {n}" for n in notes)]
    imports = ["from torchtitan.config import ParallelismConfig",
               f"from torchtitan.models.llama3.config_registry import {base}"]
    if p.recompute in ("full", "selective"):
        imports.insert(1, "from torchtitan.distributed.activation_checkpoint import "
                          + ("FullAC" if p.recompute == "full" else "SelectiveAC"))
    body = [f"    config = {base}()"]
    if p.precision == "fp8":
        imports.insert(0, "from torchtitan.components.quantization import Float8LinearConverter")
        imports.append("from torchtitan.models.llama3 import model_registry")
        flavor = next(f for f, fn in REGISTRY.items() if fn == base)
        body += ['    compiled = config.compile.enable and "model" in config.compile.components',
                 f"    config.model_spec = model_registry({flavor!r}, converters=["
                 "Float8LinearConverter.Config(model_compile_enabled=compiled)])"]
    body += [f"    config.training.{k} = {v!r}" for k, v in sections["training"].items()]
    body += [f"    config.parallelism = {_call('ParallelismConfig', sections['parallelism'])}",
             f"    config.activation_checkpoint = {_AC.get(p.recompute, 'None')}",
             "    return config"]
    quote = '"' * 3
    docstring = quote + "\n".join(one_line(line).replace(quote, "'''") for line in doc) + "\n" + quote
    return "\n".join([docstring, *imports, "", "", "def clusterplan_job():", *body]) + "\n"
