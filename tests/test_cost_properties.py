"""Properties of the cost model that must hold for any plan."""
import dataclasses
import itertools

import pytest

from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig

MODEL = ModelSpec(name="m", n_layers=8, hidden_size=1024, n_heads=16, n_kv_heads=16,
                  ffn_hidden_size=4096, vocab_size=32000, seq_len=2048, dropout=0.1)
LLAMA = ModelSpec(name="l", n_layers=8, hidden_size=1024, n_heads=16, n_kv_heads=4,
                  ffn_hidden_size=2816, vocab_size=32000, seq_len=2048, mlp="swiglu", norm="rmsnorm",
                  position="rope", tied_embeddings=False, bias=False)


def cluster(nodes=2, scale_bw=1.0, scale_peak=1.0):
    c = cluster_for("dgx-a100-80gb", nodes)
    node = c.node
    if scale_bw != 1.0:
        node = dataclasses.replace(
            node,
            intra_node=dataclasses.replace(node.intra_node, bandwidth_bytes_per_s=node.intra_node.bandwidth_bytes_per_s * scale_bw),
            inter_node=dataclasses.replace(node.inter_node, bandwidth_bytes_per_s=node.inter_node.bandwidth_bytes_per_s * scale_bw))
    if scale_peak != 1.0:
        dev = node.device
        node = dataclasses.replace(node, device=dataclasses.replace(
            dev, peak_flops_per_s=tuple((d, f * scale_peak) for d, f in dev.peak_flops_per_s)))
    return ClusterSpec.homogeneous(node, nodes)


PLANS = [
    dict(tp=8, pp=2, dp=1),
    dict(tp=2, pp=2, dp=4, sequence_parallel=True),
    dict(tp=1, pp=4, dp=4, schedule="zb"),
    dict(tp=2, pp=2, dp=4, vpp=2, schedule="interleaved"),
    dict(tp=1, pp=1, dp=16, sharding="fsdp"),
    dict(tp=2, pp=1, dp=4, cp=2),
    dict(tp=1, pp=2, dp=8, sharding="zero1", schedule="gpipe"),
]


def par(**kw):
    base = dict(micro_batch=1, global_batch=64, seq_len=2048)
    base.update(kw)
    return ParallelConfig(**base)


@pytest.mark.parametrize("model,kw", list(itertools.product([MODEL, LLAMA], PLANS)))
def test_more_bandwidth_and_peak_never_slower(model, kw):
    p = par(**kw)
    base = predict(model, cluster(), p).step_time_s
    assert predict(model, cluster(scale_bw=2.0), p).step_time_s <= base * (1 + 1e-12)
    assert predict(model, cluster(scale_peak=2.0), p).step_time_s <= base * (1 + 1e-12)


@pytest.mark.parametrize("model,kw", list(itertools.product([MODEL, LLAMA], PLANS)))
def test_memory_positive_and_breakdown_sums(model, kw):
    pred = predict(model, cluster(), par(**kw))
    d = pred.to_dict()
    assert all(v >= 0 for v in d["breakdown"]["memory"].values())
    assert all(s["memory_bytes"] > 0 for s in d["per_stage"])
    t = d["breakdown"]["time"]
    total = (t["compute_s"] + t["optimizer_s"] + t["bubble_s"] + sum(t["exposed_comm_s"].values()))
    assert total == pytest.approx(d["step_time_s"], rel=1e-6)
    assert all(v >= 0 for v in t["exposed_comm_s"].values())
    assert 0 < d["mfu"] <= d["hfu"] < 1


def test_sharding_never_adds_memory():
    last = None
    for sharding in ("none", "zero1", "zero2", "zero3"):
        mem = predict(MODEL, cluster(), par(tp=1, pp=1, dp=16, sharding=sharding)).peak_memory_bytes
        if last is not None:
            assert mem <= last
        last = mem


@pytest.mark.parametrize("kw", PLANS)
def test_more_recompute_never_less_time_and_less_memory(kw):
    times, mems = [], []
    for rc in ("none", "selective", "full"):
        pred = predict(MODEL, cluster(), par(recompute=rc, **kw))
        times.append(pred.step_time_s)
        mems.append(pred.peak_memory_bytes)
    assert times[0] <= times[1] <= times[2]
    assert mems[0] >= mems[1] >= mems[2]


def test_not_fitting_is_a_value():
    big = ModelSpec(name="big", n_layers=48, hidden_size=8192, n_heads=64, n_kv_heads=64,
                    ffn_hidden_size=32768, vocab_size=51200, seq_len=2048)
    pred = predict(big, cluster(nodes=1), par(tp=1, pp=1, dp=8, global_batch=8))
    assert pred.fits is False
    assert pred.peak_memory_bytes > pred.hbm_bytes


@pytest.mark.parametrize("kw,field", [
    (dict(tp=4, pp=2, dp=1), "dp"),          # 8 != 16 GPUs
    (dict(tp=1, pp=16, dp=1), "pp"),         # 16 stages > 8 layers
])
def test_impossible_plans_raise(kw, field):
    with pytest.raises(InputError) as err:
        predict(MODEL, cluster(), par(**kw))
    assert err.value.field == field


def test_heads_vs_tp_raises():
    m = ModelSpec(name="m", n_layers=8, hidden_size=1200, n_heads=12, n_kv_heads=12,
                  ffn_hidden_size=4800, vocab_size=32000, seq_len=2048)
    with pytest.raises(InputError) as err:
        predict(m, cluster(), par(tp=8, pp=1, dp=2))
    assert err.value.field == "tp"


def test_uneven_stage_layers():
    even = predict(MODEL, cluster(), par(tp=1, pp=4, dp=4))
    uneven = predict(MODEL, cluster(), par(tp=1, pp=4, dp=4, stage_layers=(5, 1, 1, 1)))
    assert [s["layers"] for s in uneven.to_dict()["per_stage"]] == [5, 1, 1, 1]
    assert uneven.step_time_s > even.step_time_s


def test_cpu_sharing_slows_ranks():
    c = cluster_for("dgx-a100-80gb", 1)
    node = c.node
    shared = dataclasses.replace(node, device=dataclasses.replace(node.device, host_cores=2))
    p = par(tp=1, pp=1, dp=8, global_batch=8)
    alone = predict(MODEL, c, p).step_time_s
    assert predict(MODEL, ClusterSpec.homogeneous(shared, 1), p).step_time_s > 2 * alone
