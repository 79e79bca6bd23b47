import argparse
import json
import shlex
import shutil
import subprocess
import tomllib

import pytest

from planner.cli import main
from planner.errors import InputError
from planner.export import FORMATS, export_plan, megatron_args, to_megatron
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan

LLAMA = ModelSpec("llama-ish", n_layers=8, hidden_size=512, n_heads=8, n_kv_heads=2, ffn_hidden_size=1536,
                  vocab_size=32000, seq_len=2048, mlp="swiglu", norm="rmsnorm", position="rope",
                  tied_embeddings=False, bias=False)
GPT = ModelSpec("gpt", n_layers=12, hidden_size=768, n_heads=12, n_kv_heads=12, ffn_hidden_size=3072,
                vocab_size=50304, seq_len=1024, dropout=0.1)
MOE = ModelSpec("moe", n_layers=4, hidden_size=512, n_heads=8, n_kv_heads=8, ffn_hidden_size=1024,
                vocab_size=32000, seq_len=1024, mlp="swiglu", norm="rmsnorm", position="rope",
                n_experts=8, top_k=2)

PLANS = {
    "tp_pp_zero1_uneven": Plan(LLAMA, "dgx-h100-80gb", 2, 8, ParallelConfig(
        tp=2, pp=2, dp=4, global_batch=32, seq_len=2048, recompute="full", sharding="zero1",
        sequence_parallel=True, stage_layers=(3, 5))),
    "interleaved": Plan(GPT, "dgx-a100-80gb", 2, 8, ParallelConfig(
        tp=2, pp=2, dp=4, vpp=2, micro_batch=2, global_batch=64, seq_len=1024, schedule="interleaved",
        recompute="selective", precision="fp16")),
    "dp_only": Plan(GPT, "dgx-a100-80gb", 1, 8, ParallelConfig(dp=8, micro_batch=4, global_batch=64, seq_len=1024)),
    "fsdp_cp": Plan(LLAMA, "dgx-h100-80gb", 1, 8, ParallelConfig(
        dp=4, cp=2, micro_batch=1, global_batch=16, seq_len=2048, sharding="fsdp")),
    "moe_pp": Plan(MOE, "dgx-h100-80gb", 1, 4, ParallelConfig(pp=2, dp=2, global_batch=8, seq_len=1024,
                                                               stage_layers=(1, 3), vpp=1)),
    "layout": Plan(GPT, "dgx-a100-80gb", 1, 4, ParallelConfig(pp=4, global_batch=8, seq_len=1024,
                                                              stage_layers=(2, 4, 3, 3))),
}


def megatron_parser() -> argparse.ArgumentParser:
    """The Megatron-LM flags the exporter may write (names as in megatron/training/arguments.py)."""
    p = argparse.ArgumentParser(exit_on_error=False)
    ints = ["--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
            "--num-layers-per-virtual-pipeline-stage", "--decoder-first-pipeline-num-layers",
            "--decoder-last-pipeline-num-layers", "--micro-batch-size", "--global-batch-size", "--seq-length",
            "--max-position-embeddings", "--num-layers", "--hidden-size", "--ffn-hidden-size",
            "--num-attention-heads", "--num-query-groups", "--kv-channels", "--recompute-num-layers",
            "--num-experts", "--moe-router-topk", "--moe-ffn-hidden-size", "--expert-model-parallel-size",
            "--rotary-base"]
    for flag in ints:
        p.add_argument(flag, type=int)
    for flag in ["--attention-dropout", "--hidden-dropout", "--rotary-percent", "--norm-epsilon"]:
        p.add_argument(flag, type=float)
    for flag in ["--normalization", "--position-embedding-type", "--recompute-granularity",
                 "--recompute-method", "--fp8-format", "--pipeline-model-parallel-layout",
                 "--moe-token-dispatcher-type"]:
        p.add_argument(flag)
    for flag in ["--sequence-parallel", "--group-query-attention", "--swiglu",
                 "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--use-distributed-optimizer",
                 "--use-torch-fsdp2", "--no-gradient-accumulation-fusion", "--overlap-grad-reduce",
                 "--overlap-param-gather", "--bf16", "--fp16", "--use-tp-pp-dp-mapping", "--add-qkv-bias",
                 "--moe-grouped-gemm"]:
        p.add_argument(flag, action="store_true")
    return p


def parse_megatron(text: str) -> argparse.Namespace:
    body = " ".join(line.rstrip("\\").strip() for line in text.splitlines() if not line.startswith("#"))
    return megatron_parser().parse_args(shlex.split(body))


@pytest.mark.parametrize("key", sorted(PLANS))
def test_megatron_args_parse_and_batch_arithmetic(key):
    plan = PLANS[key]
    p, m = plan.parallel, plan.model
    ns = parse_megatron(to_megatron(plan))
    assert (ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size, ns.context_parallel_size) == (p.tp, p.pp, p.cp)
    world = plan.n_nodes * plan.gpus_per_node
    dp = world // (ns.tensor_model_parallel_size * ns.pipeline_model_parallel_size * ns.context_parallel_size)
    assert ns.global_batch_size % (ns.micro_batch_size * dp) == 0
    assert ns.global_batch_size // (ns.micro_batch_size * dp) == p.num_micro_batches
    assert (ns.num_layers, ns.hidden_size, ns.num_attention_heads, ns.ffn_hidden_size) == (
        m.n_layers, m.hidden_size, m.n_heads, m.ffn_hidden_size)
    assert ns.seq_length == p.seq_len
    assert ns.group_query_attention == (m.n_kv_heads != m.n_heads)
    if ns.group_query_attention:
        assert ns.num_query_groups == m.n_kv_heads
    assert ns.sequence_parallel == p.sequence_parallel
    assert ns.use_distributed_optimizer == (p.sharding in ("zero1", "zero2"))
    assert ns.bf16 == (p.precision in ("bf16", "fp8")) and ns.fp16 == (p.precision == "fp16")
    granularity = {"none": None, "selective": "selective", "full": "full"}[p.recompute]
    assert ns.recompute_granularity == granularity


def test_megatron_stage_layouts():
    ns = parse_megatron(to_megatron(PLANS["tp_pp_zero1_uneven"]))
    assert (ns.decoder_first_pipeline_num_layers, ns.decoder_last_pipeline_num_layers) == (3, 5)
    assert ns.recompute_method == "uniform" and ns.recompute_num_layers == 1
    ns = parse_megatron(to_megatron(PLANS["interleaved"]))
    assert ns.num_layers_per_virtual_pipeline_stage == 3  # 12 layers / (pp 2 * vpp 2)
    ns = parse_megatron(to_megatron(PLANS["layout"]))
    stages = ns.pipeline_model_parallel_layout.split("|")
    assert [s.count("t") for s in stages] == [2, 4, 3, 3]
    assert stages[0].startswith("E") and stages[-1].endswith("L")
    args, notes = megatron_args(PLANS["moe_pp"])
    assert "--num-experts" in args and args[args.index("--expert-model-parallel-size") + 1] == "1"


def test_megatron_qkv_bias_and_the_environment_it_asserts():
    import dataclasses

    qwen = dataclasses.replace(LLAMA, qkv_bias_only=True)
    ns = parse_megatron(to_megatron(dataclasses.replace(PLANS["tp_pp_zero1_uneven"], model=qwen)))
    assert ns.disable_bias_linear and ns.add_qkv_bias
    assert not parse_megatron(to_megatron(PLANS["tp_pp_zero1_uneven"])).add_qkv_bias
    assert "# ENV: CUDA_DEVICE_MAX_CONNECTIONS=1" in to_megatron(PLANS["tp_pp_zero1_uneven"])
    assert "unset or > 1" in to_megatron(PLANS["fsdp_cp"])
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in to_megatron(PLANS["dp_only"])


def test_megatron_gets_the_models_rotary_base_fraction_and_norm_epsilon():
    """Llama 3's RoPE base 500000 and eps 1e-5 from its config.json; Pythia rotates a quarter of
    each head; a spec that states none leaves Megatron's defaults (and keeps its plan id)."""
    import dataclasses
    from pathlib import Path

    from planner.hf_config import read_hf_config

    hf = Path(__file__).parent / "fixtures" / "hf"
    llama3 = read_hf_config(hf / "Meta-Llama-3-8B" / "config.json")
    assert (llama3.rope_theta, llama3.norm_eps, llama3.rotary_fraction) == (500000.0, 1e-5, 1.0)
    ns = parse_megatron(to_megatron(dataclasses.replace(PLANS["fsdp_cp"], model=llama3)))
    assert ns.rotary_base == 500000 and ns.norm_epsilon == 1e-5 and ns.rotary_percent is None
    pythia = read_hf_config(hf / "pythia-1b" / "config.json")
    ns = parse_megatron(to_megatron(dataclasses.replace(PLANS["dp_only"], model=pythia)))
    assert ns.rotary_percent == 0.25 and ns.rotary_base == 10000
    plain = parse_megatron(to_megatron(PLANS["tp_pp_zero1_uneven"]))
    assert plain.rotary_base is None and plain.norm_epsilon is None
    assert "rope_theta" not in LLAMA.to_dict()  # unset: not part of the plan's identity
    assert ModelSpec.from_dict(llama3.to_dict()) == llama3


@pytest.mark.parametrize("key", sorted(PLANS))
def test_torchtitan_toml(key):
    plan = PLANS[key]
    p = plan.parallel
    if p.sharding == "none" and p.dp > 1 and max(p.tp, p.pp, p.cp) > 1:  # torchtitan would not start
        with pytest.raises(InputError, match="DDP has not supported"):
            export_plan(plan, "torchtitan")
        return
    cfg = tomllib.loads(export_plan(plan, "torchtitan"))
    par, tr = cfg["parallelism"], cfg["training"]
    dp = par["data_parallel_shard_degree"] * par["data_parallel_replicate_degree"]
    assert dp == p.dp
    assert dp * par["tensor_parallel_degree"] * par["pipeline_parallel_degree"] * par["context_parallel_degree"] == (
        plan.n_nodes * plan.gpus_per_node)
    assert par["enable_async_tensor_parallel"] is False
    assert tr["seq_len"] == p.seq_len and tr["global_batch_size"] == p.global_batch
    if p.pp > 1:
        assert tr["local_batch_size"] * dp == p.global_batch
        assert tr["local_batch_size"] // par["pipeline_parallel_microbatch_size"] == p.num_micro_batches
        assert par["pipeline_parallel_schedule"] in ("GPipe", "1F1B", "Interleaved1F1B", "InterleavedZeroBubble")
    else:
        assert tr["global_batch_size"] // (tr["local_batch_size"] * dp) == p.num_micro_batches
    assert cfg["activation_checkpoint"]["mode"] == p.recompute
    assert tr["mixed_precision_param"] in ("bfloat16", "float32")
    assert (par["data_parallel_shard_degree"] > 1) == (p.sharding != "none" and p.dp > 1)


def test_torchtitan_stage_modules_flavor_and_notes():
    import dataclasses

    text = export_plan(PLANS["tp_pp_zero1_uneven"], "torchtitan")
    cfg = tomllib.loads(text)
    assert "pipeline_parallel_split_points" not in cfg["parallelism"]  # removed from torchtitan (2025-10)
    assert cfg["parallelism"]["module_fqns_per_model_part"] == [
        ["tok_embeddings", "layers.0", "layers.1", "layers.2"],
        ["layers.3", "layers.4", "layers.5", "layers.6", "layers.7", "norm", "output"]]
    assert "model" not in cfg and "no torchtitan flavor" in text
    from planner.catalog import load_model
    llama = dataclasses.replace(PLANS["fsdp_cp"], model=load_model("llama3-70b"))
    assert tomllib.loads(export_plan(llama, "torchtitan"))["model"] == {"name": "llama3", "flavor": "70B"}
    fp8 = dataclasses.replace(llama, parallel=dataclasses.replace(llama.parallel, precision="fp8"))
    assert tomllib.loads(export_plan(fp8, "torchtitan"))["model"]["converters"] == ["float8"]
    fsdp = dataclasses.replace(PLANS["interleaved"],
                               parallel=dataclasses.replace(PLANS["interleaved"].parallel, sharding="fsdp"))
    inter = tomllib.loads(export_plan(fsdp, "torchtitan"))["parallelism"]
    # the plan's virtual stages by name: layers_per_stage would count the embedding and the output as layers
    assert "pipeline_parallel_layers_per_stage" not in inter
    parts = inter["module_fqns_per_model_part"]
    p = fsdp.parallel
    assert len(parts) == p.pp * p.vpp and all(sum(n.startswith("layers.") for n in part) == 3 for part in parts)
    assert inter["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert "# NOTE: torchtitan has no fp16" in export_plan(fsdp, "torchtitan")


@pytest.mark.parametrize("key", sorted(PLANS))
def test_deepspeed_json(key):
    plan = PLANS[key]
    p = plan.parallel
    cfg = json.loads(export_plan(plan, "deepspeed"))
    ds_dp = plan.n_nodes * plan.gpus_per_node // (p.tp * p.pp)  # DeepSpeed's dp: cp is not written, its ranks are dp
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * ds_dp
    assert cfg["train_batch_size"] == p.global_batch
    assert cfg["zero_optimization"]["stage"] == {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[p.sharding]
    assert ("pipeline" in cfg) == (p.pp > 1)
    if p.pp > 1:
        assert cfg["pipeline"]["stages"] == p.pp
    assert isinstance(cfg["_comment"], list) and plan.id in cfg["_comment"][0]


def test_deepspeed_says_what_it_cannot_do():
    moe = " ".join(json.loads(export_plan(PLANS["moe_pp"], "deepspeed"))["_comment"])
    assert "MoE" in moe and "pipeline" in moe
    cp = " ".join(json.loads(export_plan(PLANS["fsdp_cp"], "deepspeed"))["_comment"])
    assert "context parallel" in cp
    inter = json.loads(export_plan(PLANS["interleaved"], "deepspeed"))
    assert inter["fp16"] == {"enabled": True, "loss_scale": 0}
    assert any("schedule interleaved" in n for n in inter["_comment"])


def test_torchrun_command():
    plan = PLANS["tp_pp_zero1_uneven"]
    text = export_plan(plan, "torchrun", plan_path="plans/my plan.json")
    cmd = [line for line in text.splitlines() if line.startswith("torchrun")][0]
    words = shlex.split(cmd)
    assert words[words.index("--nnodes") + 1] == "2" and words[words.index("--nproc-per-node") + 1] == "8"
    assert words[words.index("--rdzv-backend") + 1] == "c10d"
    assert words[words.index("--rdzv-endpoint") + 1] == "$MASTER_ADDR:29500"
    m = words.index("-m")
    assert words[m + 1:m + 3] == ["executor", "plans/my plan.json"]
    assert words[-2:] == ["--out", f"runs/{plan.id}"]


def test_slurm_script():
    plan = PLANS["tp_pp_zero1_uneven"]
    text = export_plan(plan, "slurm")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=8" in lines
    srun = [line for line in lines if line.startswith("srun ")][0]
    assert "torchrun --nnodes 2 --nproc-per-node 8" in srun and "-m executor PLAN.json" in srun
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_cli_export(tmp_path, capsys):
    plan = PLANS["dp_only"]
    path = plan.save(tmp_path / "plan.json")
    for fmt in FORMATS:
        out = tmp_path / f"out.{fmt}"
        if fmt == "torchtitan-py":  # torchtitan's Python configs name a registered model; GPT is none
            assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 2
            assert "registered model" in capsys.readouterr().err and not out.exists()
            continue
        assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
        assert out.read_text() == export_plan(plan, fmt, plan_path=str(path))
    assert main(["export", str(path), "--format", "deepspeed"]) == 0
    assert json.loads(capsys.readouterr().out)["train_batch_size"] == 64
    assert main(["export", str(tmp_path / "missing.json"), "--format", "megatron"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan" in err
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(path), "--format", "nemo"])
    assert exit_.value.code == 2


def test_a_plan_the_target_refuses_is_one_line(tmp_path, capsys):
    """DeepSpeed's pipeline engine with ZeRO-2/3 and torchtitan's DDP beside tp: the target's rule,
    exit 2, nothing written."""
    import dataclasses

    zero2_pp = dataclasses.replace(PLANS["tp_pp_zero1_uneven"], parallel=dataclasses.replace(
        PLANS["tp_pp_zero1_uneven"].parallel, sharding="zero2"))
    with pytest.raises(InputError, match="ZeRO stage 0 or 1"):
        export_plan(zero2_pp, "deepspeed")
    path = zero2_pp.save(tmp_path / "plan.json")
    out = tmp_path / "ds.json"
    assert main(["export", str(path), "--format", "deepspeed", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PipelineEngine" in err[0] and not out.exists()
    fsdp_pp = dataclasses.replace(zero2_pp, parallel=dataclasses.replace(zero2_pp.parallel, sharding="fsdp"))
    with pytest.raises(InputError, match="not supported with pipeline parallelism"):
        export_plan(fsdp_pp, "megatron")


def test_executor_launch_scripts_refuse_what_the_executor_cannot_run():
    """torchrun / slurm scripts launch this project's executor: an fp8 plan is refused with its
    rule; a plan predicted not to fit says so in a comment, as `run` would refuse it."""
    import dataclasses

    fp8 = dataclasses.replace(PLANS["dp_only"], parallel=dataclasses.replace(PLANS["dp_only"].parallel,
                                                                             precision="fp8"))
    for fmt in ("torchrun", "slurm"):
        with pytest.raises(InputError, match="executor cannot run this plan"):
            export_plan(fp8, fmt)
    big = PLANS["dp_only"].with_prediction({"fits": False, "peak_memory_bytes": 100 * 2**30, "hbm_bytes": 80 * 2**30})
    assert "# WARNING: predicted not to fit (100.0 GiB per rank of 80.0 GiB)" in export_plan(big, "torchrun")
    assert "WARNING" not in export_plan(PLANS["dp_only"], "slurm")


def test_torchtitan_python_config_sets_what_the_plan_decides():
    """torchtitan 0.3.0's form: a module whose function starts from the model's registry config
    and replaces training, parallelism and activation checkpointing with the plan's."""
    import ast

    from planner.catalog import load_model
    from planner.export import to_torchtitan_py

    plan = Plan(load_model("llama3-8b"), "dgx-h100-80gb", 2, 8, ParallelConfig(
        tp=2, pp=2, dp=4, micro_batch=1, global_batch=64, seq_len=4096, sharding="fsdp", schedule="1f1b",
        recompute="full", precision="fp8", sequence_parallel=False))
    text = to_torchtitan_py(plan)
    tree = ast.parse(text)
    assert [f.name for f in tree.body if isinstance(f, ast.FunctionDef)] == ["clusterplan_job"]
    assert "from torchtitan.models.llama3.config_registry import llama3_8b" in text
    assert "config = llama3_8b()" in text and "FullAC.Config()" in text
    assert "model_registry('8B', converters=[Float8LinearConverter.Config(" in text
    for field in ("tensor_parallel_degree=2,", "pipeline_parallel_degree=2,", "data_parallel_shard_degree=4,",
                  "enable_sequence_parallel=False,", "pipeline_parallel_microbatch_size=1,"):
        assert field in text, field
    assert "config.training.global_batch_size = 64" in text and "config.training.seq_len = 4096" in text
    assert "enable_async_tensor_parallel" not in text  # gone in 0.3.0
