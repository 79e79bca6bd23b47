"""Exports checked by the targets' own code, for a matrix of plans (:data:`CASES`).

    .venv/bin/python benchmarks/export_validators.py --megatron PATH/TO/Megatron-LM [--spec-out FILE]

Megatron-LM's training arguments are in no installable package (the megatron-core wheel holds
``megatron.core`` only), so this script, given a checkout of the pinned release
(:data:`MEGATRON_RELEASE`), does two things: it feeds every case's ``megatron_args`` to that
release's own ``parse_args`` and ``validate_args`` (``megatron/training/arguments.py``; the device
architecture ``validate_args`` reads is the plan's GPU's, since this machine has none) and writes
``reports/export-validation.md``; and it records the release's parser (every option's flags,
action, nargs, type and choices) as :data:`MEGATRON_SPEC`, from which ``tests/test_export_validators.py``
rebuilds the parser in CI (:func:`parser_from_spec`). DeepSpeed's config is checked by its own
``DeepSpeedConfig`` (pip ``deepspeed``, a test extra): :func:`deepspeed_check`; torchtitan's TOML by
the release's ``ConfigManager`` and ``ParallelDims`` (:func:`torchtitan_check`).

The checkout needs ``six`` and ``regex`` importable (the parser's tokenizer imports); nothing
else of Megatron-LM's requirements.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.catalog import load_model  # noqa: E402
from planner.export import TORCHTITAN_RELEASE, deepspeed_config, megatron_args, megatron_env  # noqa: E402
from planner.plan import ParallelConfig, Plan  # noqa: E402

MEGATRON_RELEASE = "v0.15.3 (commit 309ffca6a40553362d44fd17efc56b772fa1aa44, 2026-02-06)"
MEGATRON_SPEC = ROOT / "benchmarks" / "megatron_arguments_v0.15.3.json"
DEVICE_ARCH = {"dgx-a100-80gb": 8, "dgx-a100-40gb": 8, "dgx-h100-80gb": 9, "dgx-h200": 9, "dgx-b200": 10}
"""CUDA compute capability (major) of each profile's GPU: what Megatron's validate_args asks."""


def _plan(model: str, hardware: str, nodes: int, seq: int, **parallel) -> Plan:
    m = load_model(model, seq_len=seq)
    return Plan(m, hardware, nodes, 8, ParallelConfig(seq_len=seq, **parallel))


CASES: dict[str, Plan] = {
    "dense GQA, tp/pp/vpp, zero1 (Llama 3 8B)": _plan(
        "llama3-8b", "dgx-h100-80gb", 2, 8192, tp=2, pp=2, dp=4, vpp=2, global_batch=64,
        sequence_parallel=True, sharding="zero1", schedule="interleaved"),
    "dense, no sharding, full recompute (GPT-3 175B)": _plan(
        "gpt3-175b", "dgx-a100-80gb", 8, 2048, tp=8, pp=8, dp=1, global_batch=64, recompute="full"),
    "context parallel, selective recompute (Llama 3 70B)": _plan(
        "llama3-70b", "dgx-h100-80gb", 4, 16384, tp=4, pp=2, cp=2, dp=2, global_batch=32,
        sequence_parallel=True, sharding="zero1", recompute="selective"),
    "zero3 over dp (Llama 3 8B)": _plan(
        "llama3-8b", "dgx-h100-80gb", 1, 4096, tp=1, pp=1, dp=8, global_batch=64, sharding="zero3"),
    "fsdp (Llama 3 8B)": _plan("llama3-8b", "dgx-h100-80gb", 1, 4096, tp=1, pp=1, dp=8, global_batch=64,
                               sharding="fsdp"),
    "fp8, tp comm overlap (Llama 3 70B)": _plan(
        "llama3-70b", "dgx-h100-80gb", 8, 8192, tp=4, pp=4, dp=4, vpp=5, global_batch=128,
        sequence_parallel=True, sharding="zero1", precision="fp8", schedule="interleaved"),
    "uneven stages (Llama 3 8B)": _plan(
        "llama3-8b", "dgx-h100-80gb", 1, 4096, tp=2, pp=4, dp=1, global_batch=16,
        sequence_parallel=True, stage_layers=(7, 9, 9, 7)),
    "MoE, ep (Mixtral 8x7B)": _plan(
        "mixtral-8x7b", "dgx-h100-80gb", 8, 4096, tp=1, pp=4, dp=16, ep=8, vpp=8, global_batch=256,
        sharding="zero1", schedule="interleaved"),
    "MoE with tp and sp (Mixtral 8x7B)": _plan(
        "mixtral-8x7b", "dgx-h100-80gb", 4, 4096, tp=2, pp=2, dp=8, ep=4, global_batch=128,
        sequence_parallel=True, sharding="zero1"),
    "MoE parallel folding, experts unsplit below tp (Mixtral 8x7B, etp 1)": _plan(
        "mixtral-8x7b", "dgx-h100-80gb", 4, 4096, tp=2, pp=2, dp=8, ep=8, etp=1, global_batch=128,
        sequence_parallel=True, sharding="zero1"),
    "MLA, dense leading blocks, shared experts (DeepSeek-V3)": _plan(
        "deepseek-v3", "dgx-h100-80gb", 256, 4096, tp=1, pp=16, dp=128, ep=64, global_batch=15360,
        sharding="zero1", recompute="full"),
    "qk norm, heads wider than hidden / heads, 128 experts (Qwen3-30B-A3B)": _plan(
        "qwen3-30b-a3b", "dgx-h100-80gb", 4, 4096, tp=2, pp=2, dp=8, ep=8, global_batch=256,
        sequence_parallel=True, sharding="zero1"),
    "MoE, experts whole under ep (Qwen3-30B-A3B, etp 1)": _plan(
        "qwen3-30b-a3b", "dgx-h100-80gb", 2, 4096, tp=2, pp=1, dp=8, ep=8, etp=1, global_batch=64,
        sequence_parallel=True, sharding="zero1"),
    "sliding window, every second block global (Mistral 7B)": Plan(
        dataclasses.replace(load_model("mistral-7b", seq_len=8192), global_attention_every=2), "dgx-h100-80gb", 1, 8,
        ParallelConfig(tp=2, pp=1, dp=4, global_batch=32, seq_len=8192, sequence_parallel=True, sharding="zero1")),
    "four norms per block, heads of 256, alternating window, tied (Gemma 2 9B)": Plan(
        load_model(str(ROOT / "tests" / "fixtures" / "hf" / "gemma-2-9b"), seq_len=8192), "dgx-h100-80gb", 2, 8,
        ParallelConfig(tp=4, pp=2, dp=2, global_batch=32, seq_len=8192, sequence_parallel=True, sharding="zero1")),
    "bias, learned positions, tied head, dropout (GPT-2)": _plan(
        "gpt2", "dgx-a100-80gb", 1, 1024, tp=2, pp=1, dp=4, global_batch=32),
}


# ----- Megatron-LM ------------------------------------------------------------------------------
def megatron_cli(plan: Plan) -> list[str]:
    """``pretrain_gpt.py``'s command line for ``plan``: the export's arguments plus what a run
    needs that the plan does not decide (iterations, learning rate, mock data, a tokenizer)."""
    args, _ = megatron_args(plan)
    return [*args, "--train-iters", "10", "--lr", "1e-4", "--mock-data", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", str(plan.model.vocab_size)]


def _importable(megatron: Path) -> None:
    """Put the Megatron-LM checkout on the import path (once)."""
    if str(megatron) not in sys.path:
        sys.path.insert(0, str(megatron))


def megatron_parser_spec(megatron: Path) -> dict:
    """The release's training parser as data: ``megatron.training.arguments.add_megatron_arguments``."""
    _importable(megatron)
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    options = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        kind = type(action).__name__
        choices = list(action.choices) if action.choices is not None else None
        options.append({
            "flags": list(action.option_strings), "dest": action.dest, "action": kind,
            "nargs": action.nargs if not isinstance(action.nargs, int) else int(action.nargs),
            "type": getattr(action.type, "__name__", None) if action.type is not None else None,
            "choices": [c if isinstance(c, (str, int, float)) else str(c) for c in choices] if choices else None,
        })
    return {"release": MEGATRON_RELEASE, "source": "megatron/training/arguments.py add_megatron_arguments",
            "allow_abbrev": False, "options": options}


_ACTIONS = {"_StoreTrueAction": "store_true", "_StoreFalseAction": "store_false", "_StoreConstAction": "store_const",
            "_AppendAction": "append", "_CountAction": "count", "BooleanOptionalAction": argparse.BooleanOptionalAction}
_TYPES = {"int": int, "float": float, "str": str}


def parser_from_spec(spec: dict) -> argparse.ArgumentParser:
    """An argparse parser that accepts what the recorded release's does: the same flags, actions,
    arities and choices; a type the spec names by a function of Megatron's own is parsed as a
    string."""
    parser = argparse.ArgumentParser(allow_abbrev=spec["allow_abbrev"], exit_on_error=False)
    for o in spec["options"]:
        kw: dict = {"dest": o["dest"]}
        action = _ACTIONS.get(o["action"])
        if action in ("store_true", "store_false", "count") or action is argparse.BooleanOptionalAction:
            kw["action"] = action
        elif action == "store_const":
            kw.update(action="store_const", const=True)
        else:
            if action == "append":
                kw["action"] = "append"
            if o["nargs"] is not None:
                kw["nargs"] = o["nargs"]
            kw["type"] = _TYPES.get(o["type"], str)
            if o["choices"] is not None and all(isinstance(c, (str, int, float)) for c in o["choices"]):
                kw["choices"] = [kw["type"](c) if o["type"] in _TYPES else c for c in o["choices"]]
        parser.add_argument(*o["flags"], **kw)
    return parser


def megatron_validate(megatron: Path, plan: Plan) -> str:
    """"" when the release's ``parse_args`` + ``validate_args`` accept the plan's command line,
    else the assertion or parser error."""
    _importable(megatron)
    import torch

    from megatron.training import arguments
    arch = DEVICE_ARCH.get(plan.hardware, 9)
    arguments.get_device_arch_version = lambda: arch
    torch.cuda.get_device_capability = lambda *a, **k: (arch, 0)
    os.environ.update(WORLD_SIZE=str(plan.n_nodes * plan.gpus_per_node), RANK="0", LOCAL_RANK="0")
    for line in megatron_env(plan):  # the environment the export tells the user to set
        if line.startswith("CUDA_DEVICE_MAX_CONNECTIONS=1"):
            os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
        elif line.startswith("CUDA_DEVICE_MAX_CONNECTIONS"):
            os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    sys.argv = ["pretrain_gpt.py", *megatron_cli(plan)]
    try:
        args = arguments.parse_args()
        arguments.validate_args(args, {})
    except (AssertionError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    except SystemExit as err:
        return f"parser exit {err.code}"
    p = plan.parallel
    got = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size,
           args.data_parallel_size, args.global_batch_size, args.micro_batch_size)
    want = (p.tp, p.pp, p.cp, p.dp, p.global_batch, p.micro_batch)
    return "" if got == want else f"Megatron derived {got}, the plan has {want}"


# ----- DeepSpeed --------------------------------------------------------------------------------
class _DataParallelOnly:
    """The mpu DeepSpeedConfig asks for its data-parallel size (DeepSpeed's dp = world / (tp*pp))."""

    def __init__(self, dp: int):
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp

    def get_data_parallel_rank(self) -> int:
        return 0


def deepspeed_check(plan: Plan) -> str:
    """"" when ``deepspeed.runtime.config.DeepSpeedConfig`` accepts the plan's config with the
    plan's data-parallel size and reads back its batch arithmetic and ZeRO stage; the error
    otherwise. Needs torch.distributed initialised (one gloo rank is enough)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    config = {k: v for k, v in deepspeed_config(plan).items() if k != "_comment"}
    p = plan.parallel
    try:
        ds = DeepSpeedConfig(config, mpu=_DataParallelOnly(p.dp * p.cp))
    except Exception as err:  # noqa: BLE001 - whatever DeepSpeed raises is the finding
        return f"{type(err).__name__}: {err}"
    got = (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps,
           int(ds.zero_optimization_stage))
    # without context parallelism in DeepSpeed its cp ranks are data-parallel: same batch, cp x fewer steps each
    want = (p.global_batch, p.micro_batch, p.num_micro_batches // p.cp, config["zero_optimization"]["stage"])
    return "" if got == want else f"DeepSpeed read {got}, the plan has {want}"


def deepspeed_checks() -> dict[str, str]:
    """:func:`deepspeed_check` of every case (a plan the export refuses gives its one line), in a
    one-rank gloo group on loopback (DeepSpeedConfig reads ranks through ``deepspeed.comm``)."""
    import socket

    import importlib

    import deepspeed.comm as ds_dist

    # its CPU all-reduce kernel (a JIT C++ build) is not needed to read a config
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not ds_dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ds_dist.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False,
                                 init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return each_case(deepspeed_check)


def each_case(check) -> dict[str, str]:
    """``check(plan)`` of every case; a plan the export refuses gives its one line."""
    from planner.errors import InputError
    out = {}
    for name, plan in CASES.items():
        try:
            out[name] = check(plan)
        except InputError as err:
            out[name] = f"export refused: {err}"
    return out


# ----- torchtitan -------------------------------------------------------------------------------
def torchtitan_config_manager():
    """torchtitan's own ``ConfigManager`` (``torchtitan/config``) of the installed release, imported
    without the package initializer, which pulls the MoE Triton kernels (a 1 GB wheel) the config
    parser does not use; needs ``pip install --no-deps torchtitan==0.2.2`` and ``tyro``."""
    import importlib.util
    import types

    if "torchtitan.config.manager" not in sys.modules:
        spec = importlib.util.find_spec("torchtitan")
        if spec is None:
            raise ModuleNotFoundError("torchtitan is not installed (pip install --no-deps torchtitan==0.2.2)")
        package = types.ModuleType("torchtitan")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault("torchtitan", package)
    from importlib.metadata import version

    from torchtitan.config.manager import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims
    if version("torchtitan") != TORCHTITAN_RELEASE:
        raise RuntimeError(f"torchtitan {version('torchtitan')} installed, the export targets {TORCHTITAN_RELEASE}")
    return ConfigManager, ParallelDims


def torchtitan_check(plan: Plan) -> str:
    """"" when torchtitan's ``ConfigManager`` parses the plan's TOML (field names and types as the
    release's JobConfig declares them), its ``ParallelDims`` accepts the degrees for the plan's
    world size (as ``train.py`` builds it), and what they read back is the plan: degrees, global
    batch, micro-batches per step, layers per stage; the error otherwise."""
    import tempfile

    from planner.export import to_torchtitan
    ConfigManager, ParallelDims = torchtitan_config_manager()
    p = plan.parallel
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.toml"
        path.write_text(to_torchtitan(plan))
        try:
            cfg = ConfigManager().parse_args(["--job.config_file", str(path)])
            par = cfg.parallelism
            ParallelDims(dp_shard=par.data_parallel_shard_degree, dp_replicate=par.data_parallel_replicate_degree,
                         cp=par.context_parallel_degree, tp=par.tensor_parallel_degree,
                         pp=par.pipeline_parallel_degree, ep=par.expert_parallel_degree,
                         etp=par.expert_tensor_parallel_degree, world_size=p.world_size)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - whatever torchtitan raises is the finding
            return f"{type(err).__name__}: {err}"
    return titan_read_back(plan, par, cfg.training)


def titan_read_back(plan: Plan, par, tr) -> str:
    """"" when torchtitan's parallelism and training configs ``par`` and ``tr`` (0.2.2's or
    0.3.0's: the same fields) are the plan: degrees, global batch, micro-batches per step, layers
    per stage; the difference otherwise."""
    p = plan.parallel
    dp = par.data_parallel_shard_degree * par.data_parallel_replicate_degree
    steps = tr.global_batch_size // (tr.local_batch_size * dp)  # gradient accumulation
    per_step = tr.local_batch_size // par.pipeline_parallel_microbatch_size if p.pp > 1 else 1
    got = (par.tensor_parallel_degree, par.pipeline_parallel_degree, dp, par.context_parallel_degree,
           par.expert_parallel_degree, tr.global_batch_size, steps * per_step, tr.seq_len)
    want = (p.tp, p.pp, p.dp, p.cp, p.ep, p.global_batch, p.num_micro_batches, p.seq_len)
    if got != want:
        return f"torchtitan read (tp, pp, dp, cp, ep, global batch, micro-batches, seq) {got}, the plan has {want}"
    if p.pp > 1:
        # torchtitan builds one stage per module list and places them round-robin ("loop" style)
        # over the pp ranks; a single-stage schedule class takes exactly one per rank
        from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class
        parts = par.module_fqns_per_model_part
        if parts is None:
            return "no module_fqns_per_model_part: torchtitan would split the layers its own way"
        single = issubclass(get_schedule_class(par.pipeline_parallel_schedule), PipelineScheduleSingle)
        if len(parts) % p.pp or (single and len(parts) != p.pp):
            return f"{len(parts)} model parts for pp={p.pp} under {par.pipeline_parallel_schedule}"
        layers = [sum(name.startswith("layers.") for name in part) for part in parts]
        if layers != list(p.layers_per_stage(plan.model.n_layers)):
            return f"torchtitan's stages hold {layers} layers, the plan's {p.layers_per_stage(plan.model.n_layers)}"
    return ""


def torchtitan_checks() -> dict[str, str]:
    """:func:`torchtitan_check` of every case."""
    return each_case(torchtitan_check)


def torchtitan_py_checks() -> dict[str, str]:
    """``benchmarks/torchtitan_py_check.py``'s verdicts (torchtitan 0.3.0 first on its own path, so
    in a process of its own)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "torchtitan_py_check.py")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"torchtitan_py_check.py failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megatron", required=True, type=Path, help="a Megatron-LM checkout at the pinned release")
    ap.add_argument("--spec-out", type=Path, default=MEGATRON_SPEC)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "export-validation.md")
    a = ap.parse_args()
    spec = megatron_parser_spec(a.megatron)
    a.spec_out.write_text(json.dumps(spec, indent=1) + "\n")
    rows = []
    titan, titan_py = torchtitan_checks(), torchtitan_py_checks()

    def cell(verdict: str) -> str:
        return "accepted" if not verdict else "REFUSED: " + verdict.replace("|", "/")

    for name, plan in CASES.items():
        verdict = megatron_validate(a.megatron, plan)
        rows.append(f"| {name} | {plan.parallel.megatron_notation()} | {plan.hardware} | {cell(verdict)} | "
                    f"{cell(titan[name])} | {cell(titan_py[name])} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Exports checked by the targets' own code", "",
        f"Regenerate: `.venv/bin/python benchmarks/export_validators.py --megatron PATH` (a Megatron-LM "
        f"checkout at {MEGATRON_RELEASE}; writes this file and `{a.spec_out.relative_to(ROOT)}`).", "",
        "Megatron-LM: each case's `clusterplan export --format megatron` arguments (plus --train-iters, --lr, "
        "--mock-data, NullTokenizer) through the release's `parse_args` and `validate_args`, with the "
        "plan's GPU architecture and the environment the export's header asks for. torchtitan "
        f"{TORCHTITAN_RELEASE} (its last TOML release): each case's `--format torchtitan` TOML through the "
        "release's `ConfigManager` and `ParallelDims` at the plan's world size, the degrees, batch, "
        "micro-batches and stages read back and compared with the plan. torchtitan 0.3.0 (Python configs): "
        "each case's `--format torchtitan-py` module run against the release's `TrainingConfig`, "
        "`ParallelismConfig` and `ParallelDims` (`benchmarks/torchtitan_py_check.py`; the registry function "
        "it starts from is a stand-in holding those classes). DeepSpeed's `DeepSpeedConfig`, "
        "both torchtitan checks and the recorded Megatron parser run in CI (`tests/test_export_validators.py`).", "",
        "| case | plan | hardware | Megatron-LM parse_args + validate_args | torchtitan ConfigManager + ParallelDims "
        "| torchtitan 0.3.0 Python config |",
        "|---|---|---|---|---|---|", *rows, ""])
    a.out.write_text(text)
    print(f"wrote {a.out} and {a.spec_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
