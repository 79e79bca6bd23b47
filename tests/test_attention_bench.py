"""executor/bench/attention.py times the executor's own SDPA call; calibrate turns each row into
a rate per counted forward FLOP, so each row must say exactly which call it timed."""
from __future__ import annotations

import torch

from executor.bench import attention as ab
from executor.bench.elementwise import ELEMENTWISE_POOL_BYTES
from executor.model import attention_core


def test_a_case_cycles_through_a_pool_of_its_own_inputs_and_computes_causal_attention():
    forward, inputs, calls = ab._case("gqa", 32, 256, torch.float32, torch.Generator().manual_seed(0))
    q, k, v = inputs[:3]
    assert q.shape == (ab.TOKENS // 256, ab.Q_DIM // 32, 256, 32) and k.shape[1] == q.shape[1] // ab.GQA_GROUP
    assert calls == len(inputs) // 3 > 1
    assert ELEMENTWISE_POOL_BYTES / 2 < sum(t.numel() * t.element_size() for t in inputs) <= ELEMENTWISE_POOL_BYTES
    ys = forward()
    assert len(ys) == calls and len({y.data_ptr() for y in ys}) == calls
    torch.testing.assert_close(ys[0], attention_core(q, k, v))
    # causal: the first query sees only the first key (GQA: each K/V head serves GQA_GROUP query heads)
    torch.testing.assert_close(ys[0][:, :, 0], v[:, :, 0].repeat_interleave(ab.GQA_GROUP, dim=1))


def test_quick_bench_rows_cover_every_kind_width_and_length():
    torch.set_num_threads(1)
    rows = ab.attention_bench(quick=True, reps=3)
    keys = {(r["kind"], r["d_head"], r["seq_len"], r["direction"]) for r in rows}
    assert keys == {(k, d, s, direction) for k in ("mha", "gqa") for d in ab.D_HEADS for s in ab.QUICK_SEQ_LENS
                    for direction in ("forward", "backward")}
    for r in rows:
        assert r["dtype"] == "fp32" and r["ops"] >= r["calls"] and r["median_s"] > 0 and len(r["times_s"]) == 3
        assert r["heads"] * r["d_head"] == ab.Q_DIM and r["batch"] * r["seq_len"] == ab.TOKENS
        assert r["kv_heads"] == (r["heads"] if r["kind"] == "mha" else max(1, r["heads"] // ab.GQA_GROUP))
