"""executor/bench/elementwise.py times the executor's own element-wise code; the planner turns
its times into rates with its own byte counts per element, so each case must move exactly those
bytes (counted here with a TorchDispatchMode, as tests/test_elementwise_bytes.py counts a block)."""
from __future__ import annotations

import pytest
import torch

from executor.bench import elementwise as ew
from executor.testing import ByteTally
from planner.cost import framework as fw
from planner.framework_spec import ELEMENTWISE_CLASSES


@pytest.mark.parametrize("kind", ELEMENTWISE_CLASSES)
def test_each_case_moves_the_bytes_the_cost_model_counts(kind):
    forward, inputs, elements, calls = ew._pooled(kind, 2, torch.float32, torch.Generator().manual_seed(0))
    assert calls > 1  # every call reads inputs of its own, from a pool beyond the core's caches
    tally_f, tally_b = ByteTally(), ByteTally()
    with tally_f:
        ys = forward()
    fwd_bpe, bwd_bpe = fw.elementwise_bytes_per_element(kind, 4)
    # small tables (RoPE cos/sin, norm weights, per-row statistics, Adam's step count) are not itemised
    assert tally_f.bytes == pytest.approx(fwd_bpe * elements, rel=0.02)
    if kind in ("arith", "adamw"):  # the add's backward passes the gradient through; AdamW has none
        return
    assert len(ys) == calls and len({y.data_ptr() for y in ys}) == calls
    grads = [torch.randn_like(y) for y in ys]
    with tally_b:
        torch.autograd.grad(ys, inputs, grads)
    assert tally_b.bytes == pytest.approx(bwd_bpe * elements, rel=0.02)


def test_the_pool_spans_its_bytes_and_a_large_call_runs_alone():
    gen = torch.Generator().manual_seed(0)
    _, inputs, elements, calls = ew._pooled("swiglu", 1, torch.float32, gen)
    pool_bytes = sum(t.numel() * t.element_size() for t in inputs)
    assert calls == ew.ELEMENTWISE_POOL_BYTES // (2 * 4 * ew.SEQ_LEN * ew.FFN)
    assert ew.ELEMENTWISE_POOL_BYTES / 2 < pool_bytes <= ew.ELEMENTWISE_POOL_BYTES
    assert elements == calls * ew.SEQ_LEN * ew.FFN
    _, _, _, calls = ew._pooled("swiglu", ew.ELEMENTWISE_POOL_BYTES // (2 * 4 * ew.SEQ_LEN * ew.FFN) + 1,
                                torch.float32, gen)
    assert calls == 1


def test_quick_bench_rows_cover_every_kind_and_size():
    torch.set_num_threads(1)
    rows = ew.elementwise_bench(quick=True, reps=5)
    keys = {(r["kind"], r["direction"], r["micro_batch"]) for r in rows}
    for kind in ELEMENTWISE_CLASSES:
        for batch in ew.QUICK_BATCHES:
            assert (kind, "optimizer" if kind == "adamw" else "forward", batch) in keys
            assert ((kind, "backward", batch) in keys) == (kind not in ("arith", "adamw"))
    for r in rows:
        assert r["dtype"] == "fp32" and r["ops"] >= 1 and r["median_s"] > 0 and len(r["times_s"]) == 5
        assert r["elements"] / r["calls"] == r["micro_batch"] * ew.SEQ_LEN * (
            ew.FFN if r["kind"] in ("gelu", "swiglu") else ew.HIDDEN)
        if r["kind"] == "adamw":  # a model's worth of parameters, each tensor stepped once
            assert r["elements"] >= ew.ADAMW_POOL_PARAMS - r["elements"] / r["calls"]
            # 10 ops per tensor, and a couple per step (the step's own bookkeeping)
            assert 0 <= r["ops"] - r["calls"] * fw.ADAM_OPS_PER_PARAM <= 4
