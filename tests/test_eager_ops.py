"""The eager element-wise inventory (planner/cost/eager_ops.py) against a count by hand of
torchtitan's ops at 9dec370, and what it does to a prediction."""
from __future__ import annotations

import pytest

from planner.cost.eager_ops import eager_block_bytes
from planner.cost.runtime import get_runtime
from planner.cost.step import cluster_for, predict
from planner.plan import ParallelConfig
from planner.presets import PRESETS


def test_llama_block_bytes_counted_op_by_op():
    m = PRESETS["llama3-8b"]  # h 4096, 32 heads, 8 kv heads, d 128, SwiGLU 14336
    h, q, kv, ffn = 4096, 4096, 1024, 14336
    assert (m.hidden_size, m.q_dim, m.kv_dim, m.ffn_hidden_size) == (h, q, kv, ffn)
    tokens = 1000.0
    # bf16: norm 2+4 cast, 8 pow, 4 mean, 8 mul, 4+2 cast back, 4 weight = 36 per element, twice;
    # residual adds 6 each; silu 4 + product 6; RoPE 6 + 8 + 6 on q and k; repeat_kv K and V
    # (read kv, write q-wide); the output copy 4
    bf16 = (2 * 36 * h + 2 * 6 * h + 10 * ffn + 20 * (q + kv) + 2 * (kv + kv + q + q) + 4 * q) * tokens
    assert eager_block_bytes(m, tokens, tokens, 1, 2) == (pytest.approx(bf16), 2 * 8 + 2 + 2 + 6 + 2 + 1)
    # fp32: float() and type_as() are no kernels
    fp32 = (2 * 28 * h + 2 * 12 * h + 20 * ffn + 8 * (q + kv) + 4 * (kv + kv + q + q) + 8 * q) * tokens
    assert eager_block_bytes(m, tokens, tokens, 1, 4) == (pytest.approx(fp32), 2 * 6 + 2 + 2 + 2 + 2 + 1)
    # tensor parallel: the replicated ops keep their rows, the split ones shrink by tp
    split = eager_block_bytes(m, tokens, tokens, 4, 2)[0]
    assert split == pytest.approx((2 * 36 * h + 2 * 6 * h) * tokens
                                  + (bf16 / tokens - 2 * 36 * h - 2 * 6 * h) * tokens / 4)


def test_eager_prices_above_compiled_and_only_in_its_element_wise_work():
    m = PRESETS["llama3-8b"]
    P = ParallelConfig(tp=1, pp=1, dp=8, micro_batch=2, global_batch=16, seq_len=8192, recompute="selective",
                       sharding="fsdp", precision="bf16")
    cluster = cluster_for("dgx-h100-80gb", 1)
    fused = predict(m, cluster, P, get_runtime("torchtitan"))
    eager = predict(m, cluster, P, get_runtime("torchtitan-eager"))
    assert eager.step_time_s > fused.step_time_s
    assert eager.time.optimizer_s == pytest.approx(fused.time.optimizer_s)
    assert eager.peak_memory_bytes == pytest.approx(fused.peak_memory_bytes)
