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

from dataclasses import dataclass

from planner.errors import require
from planner.export.common import header, one_line
from planner.export.torchtitan import llama3_flavor, torchtitan_config
from planner.plan import Plan

TORCHTITAN_PY_RELEASE = "0.3.0"
"""The torchtitan release whose Python config fields this export writes."""


@dataclass(frozen=True)
class RegistryEntry:
    """A torchtitan 0.3.0 model: ``torchtitan.models.<package>``'s ``flavor`` and the function of
    its ``config_registry`` whose job config the export starts from."""

    package: str
    flavor: str
    function: str


REGISTRY = {"8B": "llama3_8b", "70B": "llama3_70b", "405B": "llama3_405b"}
"""torchtitan 0.3.0's registry function per Llama 3 flavor (torchtitan/models/llama3/config_registry.py)."""

QWEN3 = {(28, 1024, 16, 8, 3072, 0, 0, 0, 151936): ("0.6B", "qwen3_0_6b"),
          (28, 2048, 16, 8, 6144, 0, 0, 0, 151936): ("1.7B", "qwen3_1_7b"),
          (40, 5120, 40, 8, 17408, 0, 0, 0, 151936): ("14B", "qwen3_14b"),
          (64, 5120, 64, 8, 25600, 0, 0, 0, 151936): ("32B", "qwen3_32b"),
          (48, 2048, 32, 4, None, 128, 8, 768, 151936): ("30B-A3B", "qwen3_30b_a3b")}
"""torchtitan 0.3.0's Qwen3 flavors that have a registry function (torchtitan/models/qwen3/__init__.py:
layers, dim, heads, kv heads, hidden_dim (dense), experts, top_k, moe_hidden_dim, vocab; head_dim 128)."""

DEEPSEEK_V3 = {(27, 2048, 16, 64, 6, 1408, 2 * 1408, 1, 10944, 0, 102400): ("16B", "deepseek_v3_16b"),
                (61, 7168, 128, 256, 8, 2048, 2048, 3, 18432, 1536, 129280): ("671B", "deepseek_v3_671b")}
"""torchtitan 0.3.0's DeepSeek-V3 flavors that have a registry function (torchtitan/models/deepseek_v3/
__init__.py: layers, dim, heads, experts, router_top_k, moe_hidden_dim, shared experts x moe_hidden_dim,
dense layers, dense_hidden_dim, q_lora_rank, vocab; kv_lora_rank 512, head dims 128 + 64 rope)."""


def registry_entry(model) -> RegistryEntry | None:
    """The torchtitan 0.3.0 model of this shape (Llama 3, Qwen3, DeepSeek-V3), or None."""
    flavor = llama3_flavor(model)
    if flavor:
        return RegistryEntry("llama3", flavor, REGISTRY[flavor])
    if model.mlp != "swiglu":
        return None
    if model.is_mla and model.kv_lora_rank == 512 and model.d_head == 128 and model.qk_rope_head_dim == 64:
        hit = DEEPSEEK_V3.get((model.n_layers, model.hidden_size, model.n_heads, model.n_experts, model.top_k,
                                model.expert_ffn, model.shared_expert_ffn_hidden_size, model.dense_layers,
                                model.ffn_hidden_size, model.q_lora_rank, model.vocab_size))
        return RegistryEntry("deepseek_v3", *hit) if hit else None
    if model.qk_norm and model.d_head == 128 and not model.shared_expert_ffn_hidden_size:
        hit = QWEN3.get((model.n_layers, model.hidden_size, model.n_heads, model.n_kv_heads,
                          None if model.is_moe else model.ffn_hidden_size, model.n_experts, model.top_k,
                          model.expert_ffn if model.is_moe else 0, model.vocab_size))
        return RegistryEntry("qwen3", *hit) if hit else None
    return None


_AC = {"none": "None", "full": "FullAC.Config()", "selective": "SelectiveAC.Config()"}


def torchtitan_py_config(plan: Plan) -> tuple[RegistryEntry, dict[str, dict], list[str]]:
    """(registry entry, {"training": fields, "parallelism": fields}, notes) in torchtitan
    0.3.0's names: the TOML export's sections (:func:`planner.export.torchtitan.torchtitan_config`)
    less what 0.3.0 dropped (``enable_async_tensor_parallel``: a ``tp_gemm_backend`` of the model
    now; ``expert_tensor_parallel_degree``: experts are whole under ep), with
    ``enable_sequence_parallel``, which 0.3.0 added."""
    sections, notes = torchtitan_config(plan)  # what no torchtitan runs is refused there first
    entry = registry_entry(plan.model)
    require(entry is not None, "export",
            f"torchtitan {TORCHTITAN_PY_RELEASE}'s configs start from a registered model and "
            f"{one_line(plan.model.name)} has the shape of none with a registry function (Llama 3 "
            f"{', '.join(REGISTRY)}; Qwen3 {', '.join(f for f, _ in QWEN3.values())}; DeepSeek-V3 "
            f"{', '.join(f for f, _ in DEEPSEEK_V3.values())}): use --format torchtitan (the TOML of torchtitan "
            "0.2.2) and add a flavor")
    require(plan.parallel.precision != "fp8" or not plan.model.is_moe, "export",
            "fp8 for a MoE model in torchtitan 0.3.0 needs the experts' grouped-GEMM converter "
            "(Float8GroupedExpertsConverter, registered for DeepSeek-V3 671B's own float8 config only): "
            "plan bf16, or start from deepseek_v3_671b_float8 by hand")
    p = plan.parallel
    if plan.model.is_moe and p.ep > 1:
        require(p.expert_tp == 1, "export",
                f"torchtitan {TORCHTITAN_PY_RELEASE} does not split experts by tp under ep (ParallelismConfig: "
                f"\"EP borrows ranks from FSDP and TP\", no expert tensor parallel degree): plan etp=1, not {p.expert_tp}")
    dropped = ("enable_async_tensor_parallel", "expert_tensor_parallel_degree")  # gone in 0.3.0
    parallelism = {k: v for k, v in sections["parallelism"].items() if k not in dropped}
    if p.tp > 1:
        parallelism["enable_sequence_parallel"] = p.sequence_parallel
    notes = [n for n in notes if not n.startswith(("torchtitan's tensor parallel always", "[model]"))]
    return entry, {"training": dict(sections["training"]), "parallelism": parallelism}, notes


def _call(cls: str, fields: dict) -> str:
    args = "".join(f"\n        {k}={v!r}," for k, v in fields.items())
    return f"{cls}({args}\n    )"


def to_torchtitan_py(plan: Plan) -> str:
    """The plan as a Python module for ``torchtitan.train --module clusterplan_job --config clusterplan_job``."""
    entry, sections, notes = torchtitan_py_config(plan)
    p = plan.parallel
    doc = [*header(plan), f"for torchtitan {TORCHTITAN_PY_RELEASE} (Python config): save as clusterplan_job.py on "
           "PYTHONPATH and run", "    torchrun ... -m torchtitan.train --module clusterplan_job --config clusterplan_job",
           *(f"NOTE: {n}" for n in notes)]
    package = f"torchtitan.models.{entry.package}"
    imports = ["from torchtitan.config import ParallelismConfig",
               f"from {package}.config_registry import {entry.function}"]
    if p.recompute in ("full", "selective"):
        imports.insert(1, "from torchtitan.distributed.activation_checkpoint import "
                          + ("FullAC" if p.recompute == "full" else "SelectiveAC"))
    body = [f"    config = {entry.function}()"]
    if p.precision == "fp8":
        imports.insert(0, "from torchtitan.components.quantization import Float8LinearConverter")
        imports.append(f"from {package} import model_registry")
        body += ['    compiled = config.compile.enable and "model" in config.compile.components',
                 f"    config.model_spec = model_registry({entry.flavor!r}, converters=["
                 "Float8LinearConverter.Config(model_compile_enabled=compiled)])"]
    body += [f"    config.training.{k} = {v!r}" for k, v in sections["training"].items()]
    body += [f"    config.parallelism = {_call('ParallelismConfig', sections['parallelism'])}",
             f"    config.activation_checkpoint = {_AC.get(p.recompute, 'None')}",
             "    return config"]
    quote = '"' * 3
    docstring = quote + "\n".join(one_line(line).replace(quote, "'''") for line in doc) + "\n" + quote
    return "\n".join([docstring, *imports, "", "", "def clusterplan_job():", *body]) + "\n"
