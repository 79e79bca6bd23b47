"""Framework-behaviour settings of the cost model (planner/cost/runtime.py)."""
import dataclasses

from planner.cost.comm import GroupShape, collective_time
from planner.cost.runtime import Runtime
from planner.cost.step import _gathered_tensors_per_layer, cluster_for, predict
from planner.hardware import load_profile
from planner.model import load_model
from planner.plan import ParallelConfig


def test_single_rail_is_never_faster_and_is_k_times_the_inter_node_bytes():
    node = load_profile("dgx-a100-80gb")
    group = GroupShape(size=64, ranks_per_node=8, nodes=8)
    multi = collective_time("all_gather", 1e9, group, node)
    single = collective_time("all_gather", 1e9, group, node, multi_rail=False)
    assert single > multi
    one_node = GroupShape(size=8, ranks_per_node=8, nodes=1)
    assert collective_time("all_gather", 1e9, one_node, node, multi_rail=False) == \
        collective_time("all_gather", 1e9, one_node, node)


def test_persistence_threshold_keeps_small_tensors_resident():
    model = load_model("gpt3-175b")
    every = Runtime(gather_granularity="per_tensor")
    kept = dataclasses.replace(every, param_persistence_threshold=100_000)
    assert _gathered_tensors_per_layer(model, 1, every) == 12  # 4 weights, 4 biases, 2 LayerNorms x 2
    assert _gathered_tensors_per_layer(model, 1, kept) == 4    # only the four weight matrices
    assert _gathered_tensors_per_layer(model, 1, Runtime()) == 1  # FSDP: one flat parameter


def test_less_overlap_is_never_faster():
    model = load_model("gpt3-175b")
    cluster = cluster_for("dgx-a100-80gb", 48)
    parallel = ParallelConfig(dp=384, micro_batch=4, global_batch=1536, seq_len=2048,
                              recompute="full", sharding="zero3", precision="fp16")
    base = Runtime(shard_prefetch=False)
    times = [predict(model, cluster, parallel, dataclasses.replace(base, shard_overlap_fraction=eta),
                     timeline=False).step_time_s for eta in (0.0, 0.5, 1.0)]
    assert times[0] >= times[1] >= times[2]
