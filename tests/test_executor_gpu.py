"""The same executor on CUDA with nccl (skipped without CUDA)."""
import json

import pytest

from executor.testing import make_plan, tiny_spec
from planner.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.distributed]


def test_nccl_run(tmp_path):
    import torch

    n = min(2, torch.cuda.device_count())
    plan = make_plan(tiny_spec("llama", kv_heads=2), dp=n, global_batch=2 * n, precision="bf16", sharding="fsdp")
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "run"
    assert main(["run", str(path), "--steps", "4", "--warmup", "1", "--out", str(out), "--device", "cuda"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["env"]["backend"] == "nccl"
    assert summary["measured"]["peak_memory_source"] == "cuda_allocated"
    assert all(m["cuda_max_reserved_bytes"] >= m["cuda_max_allocated_bytes"] > 0 for m in summary["measured"]["memory"])
