"""Exports fed to the targets' own checks for a matrix of plans (benchmarks/export_validators.py):
DeepSpeed's ``DeepSpeedConfig`` (pip deepspeed, a test extra) and Megatron-LM v0.15.3's training
parser as recorded from that release (its training arguments are in no installable package; the
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
