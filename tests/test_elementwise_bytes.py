"""The cost model's element-wise traffic of one executor block against the bytes its aten ops
read and write, counted with a TorchDispatchMode (planner/cost/framework.py)."""
from __future__ import annotations

import pytest
import torch

from executor.model import Block
from executor.testing import ByteTally
from planner.cost import framework as fw
from planner.framework_spec import ELEMENTWISE_CLASSES
from planner.presets import PRESETS

@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_elementwise_bytes_match_the_executor_block(name, dtype):
    spec = PRESETS[name]
    torch.manual_seed(0)
    block = Block(spec).to(dtype)
    micro_batch = 2
    x = torch.randn(micro_batch, spec.seq_len, spec.hidden_size, dtype=dtype, requires_grad=True)
    forward, backward = ByteTally(), ByteTally()
    with forward:
        y = block(x)
    grad = torch.randn_like(y)
    with backward:
        y.backward(grad)
    tokens = micro_batch * spec.seq_len
    bpe = torch.finfo(dtype).bits // 8
    by_kind = fw.block_elementwise_bytes(spec, tokens, tokens, 1, bpe)
    assert set(by_kind) <= set(ELEMENTWISE_CLASSES)
    predicted_fwd = sum(f for f, _, _ in by_kind.values())
    predicted_bwd = sum(b for _, b, _ in by_kind.values())
    # the small tables (RoPE cos/sin, norm weights, per-row statistics) are not itemised
    assert forward.bytes == pytest.approx(predicted_fwd, rel=0.01)
    assert backward.bytes == pytest.approx(predicted_bwd, rel=0.01)
