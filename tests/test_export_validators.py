"""Exports fed to the targets' own checks for a matrix of plans (benchmarks/export_validators.py):
DeepSpeed's ``DeepSpeedConfig`` (pip deepspeed, a test extra), torchtitan 0.2.2's own config parser
and parallel-dims check (installed by ``make setup``: ``pip install --no-deps torchtitan==0.2.2``) and
Megatron-LM v0.15.3's training parser as recorded from that release (its training arguments are in no installable package; the
release's own ``parse_args`` + ``validate_args`` verdicts are in reports/export-validation.md)."""
import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _validators():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.export_validators")


def test_megatron_arguments_parse_with_the_pinned_release_parser():
    ev = _validators()
    spec = json.loads(ev.MEGATRON_SPEC.read_text())
    assert spec["release"] == ev.MEGATRON_RELEASE and len(spec["options"]) > 500
    parser = ev.parser_from_spec(spec)
    for name, plan in ev.CASES.items():
        args, unknown = parser.parse_known_args(ev.megatron_cli(plan))
        assert not unknown, (name, unknown)
        p = plan.parallel
        assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.global_batch_size) == (
            p.tp, p.pp, p.global_batch), name
    # the recorded parser refuses what the release refuses
    assert parser.parse_known_args(["--no-such-flag"])[1] == ["--no-such-flag"]
    with pytest.raises(argparse.ArgumentError):
        parser.parse_known_args(["--normalization", "BatchNorm"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_known_args(["--num-layers", "four"])


def test_deepspeed_accepts_every_case_and_reads_back_the_plans_batch():
    """In a child process (DeepSpeed sets up a one-rank gloo group): every case's config is
    accepted with its batch arithmetic and ZeRO stage, and a config whose batch does not add up is
    refused, so the check can fail."""
    code = """
import json, sys
sys.path.insert(0, %r)
import benchmarks.export_validators as ev
from deepspeed.runtime.config import DeepSpeedConfig
verdicts = ev.deepspeed_checks()
plan = next(iter(ev.CASES.values()))
bad = {k: v for k, v in ev.deepspeed_config(plan).items() if k != "_comment"}
bad["gradient_accumulation_steps"] += 1
try:
    DeepSpeedConfig(bad, mpu=ev._DataParallelOnly(plan.parallel.dp))
    verdicts["(broken batch)"] = ""
except AssertionError as err:
    verdicts["(broken batch)"] = str(err)
print("VERDICTS " + json.dumps(verdicts))
""" % str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VERDICTS ")), None)
    assert line is not None, proc.stderr[-2000:]
    verdicts = json.loads(line[len("VERDICTS "):])
    broken = verdicts.pop("(broken batch)")
    assert "train_batch_size is not equal" in broken
    assert verdicts and all(v == "" for v in verdicts.values()), {k: v for k, v in verdicts.items() if v}


def test_torchtitan_release_parses_every_case_and_refuses_a_bad_config(tmp_path):
    """torchtitan 0.2.2's ``ConfigManager`` and ``ParallelDims`` accept every case's TOML and read
    back the plan's degrees, batch, micro-batches and stages; an unknown key, a value outside a
    field's choices (on the command line: the release does not type-check TOML values) and degrees
    that do not multiply to the world size are refused."""
    ev = _validators()
    verdicts = ev.torchtitan_checks()
    assert all(v == "" or v.startswith("export refused") for v in verdicts.values()), verdicts
    assert sum(v == "" for v in verdicts.values()) >= len(verdicts) - 1
    ConfigManager, ParallelDims = ev.torchtitan_config_manager()
    path = tmp_path / "bad.toml"
    path.write_text("[parallelism]\nno_such_key = 1\n")
    with pytest.raises(ValueError, match="no_such_key"):
        ConfigManager().parse_args(["--job.config_file", str(path)])
    with pytest.raises(SystemExit):
        ConfigManager().parse_args(["--parallelism.fsdp_reshard_after_forward", "sometimes"])
    with pytest.raises(AssertionError):
        ParallelDims(dp_shard=2, dp_replicate=1, cp=1, tp=2, pp=2, ep=1, etp=1, world_size=16)


def test_torchtitan_python_configs_run_against_the_release_classes():
    """torchtitan 0.3.0 (its Python config form; ``make setup`` installs it beside 0.2.2): every
    Llama 3, DeepSeek-V3 and Qwen3 (whole experts under ep) case's module runs against the release's
    ``TrainingConfig``, ``ParallelismConfig`` and ``ParallelDims`` and reads back as the plan; the
    others are refused in one line naming the rule; an unknown
    field and degrees that do not multiply to the world size are caught, so the check can fail."""
    code = """
import json, sys
sys.path.insert(0, %r)
import benchmarks.torchtitan_py_check as tc
tc.setup()
from benchmarks.export_validators import CASES, each_case
from planner.export import to_torchtitan_py
verdicts = each_case(tc.check)
plan = CASES["dense GQA, tp/pp/vpp, zero1 (Llama 3 8B)"]
text = to_torchtitan_py(plan)
verdicts["(unknown field)"] = tc.check_text(text.replace("training.seq_len", "training.seq_length"), plan)
verdicts["(wrong world)"] = tc.check_text(text.replace("tensor_parallel_degree=2", "tensor_parallel_degree=4"), plan)
print("VERDICTS " + json.dumps(verdicts))
""" % str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VERDICTS ")), None)
    assert line is not None, proc.stderr[-2000:]
    verdicts = json.loads(line[len("VERDICTS "):])
    assert "AttributeError" in verdicts.pop("(unknown field)")
    assert verdicts.pop("(wrong world)") != ""
    accepted = [name for name, v in verdicts.items() if v == ""]
    assert sum("Llama 3" in name for name in accepted) == 6, verdicts
    assert any("DeepSeek-V3" in name for name in accepted) and any("Qwen3" in name for name in accepted), verdicts
    refused = [v for v in verdicts.values() if v]
    assert all(v.startswith("export refused") for v in refused), verdicts
    assert any("registered model" in v for v in refused) and any("experts by tp under ep" in v for v in refused)
