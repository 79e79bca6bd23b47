import itertools
import math
from dataclasses import replace

import pytest
import yaml

from planner.cluster import load_cluster
from planner.errors import InputError
from planner.hardware import GB, ClusterSpec, load_profile
from planner.model import ModelSpec
from planner.plan import AXES, ParallelConfig, axis_groups, rank_layout
from planner.topology import (ALL_ORDERS, cluster_graph, estimate_axis_bytes, gpu_order, pair_bandwidth,
                              place_groups, stage_peak_flops, widest_path_bandwidth)
from tests.test_cluster import write_profile

GPT = ModelSpec("gpt", n_layers=24, hidden_size=2048, n_heads=16, n_kv_heads=16, ffn_hidden_size=8192,
                vocab_size=51200, seq_len=2048)


@pytest.fixture
def mixed(tmp_path):
    write_profile(tmp_path / "slow.yaml", "slow", 312, 300, 25)
    write_profile(tmp_path / "fast.yaml", "fast", 989, 450, 50)
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({"name": "mixed", "groups": [{"profile": "slow.yaml", "nodes": 2},
                                                                 {"profile": "fast.yaml", "nodes": 2}]}))
    return load_cluster(path)


@pytest.fixture
def homo(tmp_path):
    return ClusterSpec.homogeneous(load_profile(str(write_profile(tmp_path / "n.yaml", "n", 989, 450, 50))), 4)


def test_graph_structure(mixed):
    g = cluster_graph(mixed)
    kinds = [d["kind"] for _, d in g.nodes(data=True)]
    assert kinds.count("gpu") == 32 and kinds.count("nvswitch") == 4 and kinds.count("nic") == 32
    assert kinds.count("leaf") == 1 and kinds.count("spine") == 0
    assert g.edges["gpu0", "node0.nvswitch"]["bandwidth_bytes_per_s"] == 300 * GB
    assert g.edges["gpu16", "node2.nvswitch"]["bandwidth_bytes_per_s"] == 450 * GB
    assert list(gpu_order(g)) == list(range(32))


def test_vectorised_bandwidth_equals_widest_path(tmp_path):
    write_profile(tmp_path / "slow.yaml", "slow", 312, 300, 25)
    write_profile(tmp_path / "fast.yaml", "fast", 989, 450, 50)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "c", "groups": [{"profile": "slow.yaml", "nodes": 3, "gpus_per_node": 2},
                                {"profile": "fast.yaml", "nodes": 3, "gpus_per_node": 2}],
        "fabric": {"nodes_per_leaf": 2, "oversubscription": 4,
                   "between": [{"node_types": ["slow", "fast"], "bandwidth_gb_s": 5}]}}))
    g = cluster_graph(load_cluster(path))
    pairs = list(itertools.permutations(range(12), 2))
    fast = pair_bandwidth(g, [a for a, _ in pairs], [b for _, b in pairs])
    slow = [widest_path_bandwidth(g, f"gpu{a}", f"gpu{b}") for a, b in pairs]
    assert list(fast) == slow
    assert widest_path_bandwidth(g, "gpu0", "gpu1") == 300 * GB          # same node: NVLink
    assert widest_path_bandwidth(g, "gpu0", "gpu2") == 25 * GB           # same leaf: NIC
    assert widest_path_bandwidth(g, "gpu0", "gpu4") == 25 * GB / 4       # across leaves: oversubscribed
    assert widest_path_bandwidth(g, "gpu0", "gpu6") == 5 * GB            # across node types: override
    assert list(gpu_order(g)) == list(range(12))


@pytest.mark.parametrize("shape", [
    dict(tp=8, pp=2, dp=2), dict(tp=4, pp=4, dp=2), dict(tp=2, cp=2, dp=4, pp=2), dict(tp=1, dp=32),
    dict(tp=16, dp=2), dict(tp=4, pp=2, dp=4, order="tp-pp-dp-cp"),
])
def test_default_placement_is_the_plan_rank_layout(mixed, shape):
    parallel = ParallelConfig(global_batch=64, seq_len=2048, **shape)
    g = cluster_graph(mixed)
    pl = place_groups(g, parallel)
    assert pl.order == parallel.order
    assert pl.rank_to_gpu == tuple(c.rank for c in rank_layout(parallel))
    for axis in AXES:
        assert pl.groups(parallel, axis) == axis_groups(parallel, axis)
        groups = axis_groups(parallel, axis)
        spans = max(len({r // 8 for r in grp}) for grp in groups)
        assert pl.axis(axis).max_nodes_spanned == spans
        assert pl.axis(axis).crosses_nodes == (spans > 1)


def test_bottlenecks(homo):
    g = cluster_graph(homo)
    inside = place_groups(g, ParallelConfig(tp=8, dp=4, global_batch=64))
    assert inside.axis("tp").bottleneck_bandwidth_bytes_per_s == 450 * GB
    assert not inside.axis("tp").crosses_nodes
    assert inside.axis("dp").crosses_nodes and inside.axis("dp").bottleneck_bandwidth_bytes_per_s == 50 * GB
    assert inside.axis("pp").bottleneck_bandwidth_bytes_per_s == math.inf
    across = place_groups(g, ParallelConfig(tp=16, dp=2, global_batch=64))
    assert across.axis("tp").crosses_nodes and across.axis("tp").bottleneck_bandwidth_bytes_per_s == 50 * GB
    assert across.axis("tp").max_nodes_spanned == 2


def test_suggests_tp_inside_the_node(homo):
    g = cluster_graph(homo)
    bad = place_groups(g, ParallelConfig(tp=8, dp=4, global_batch=64, order="dp-tp-cp-pp"))
    assert bad.axis("tp").crosses_nodes
    assert bad.suggested_order.split("-").index("tp") < bad.suggested_order.split("-").index("dp")
    good = place_groups(g, ParallelConfig(tp=8, dp=4, global_batch=64))
    assert good.suggested_order == good.order  # the default is already best


def test_axis_bytes_can_pull_pp_inside_the_node(homo):
    g = cluster_graph(homo)
    parallel = ParallelConfig(tp=2, pp=4, dp=4, global_batch=64)
    heavy_pp = {"tp": 1e9, "pp": 1e12, "dp": 1e6}
    default = place_groups(g, parallel, axis_bytes=heavy_pp)
    assert default.axis("pp").crosses_nodes and not default.axis("dp").crosses_nodes
    moved = place_groups(g, replace(parallel, order=default.suggested_order), axis_bytes=heavy_pp)
    assert not moved.axis("pp").crosses_nodes and not moved.axis("tp").crosses_nodes
    assert moved.comm_time_s < default.comm_time_s
    assert moved.suggested_order == moved.order
    # without bytes, Megatron's priority (tp, cp, dp, pp) keeps dp inside the node
    assert place_groups(g, parallel).suggested_order == parallel.order


def test_heterogeneous_stages(mixed):
    g = cluster_graph(mixed)
    parallel = ParallelConfig(tp=8, pp=2, dp=2, global_batch=64)
    pl = place_groups(g, parallel)
    assert pl.stage_node_types == (("slow",), ("fast",)) and pl.mixed_stages == 0
    assert stage_peak_flops(g, pl, "bf16") == (312e12, 989e12)
    mixing = place_groups(g, replace(parallel, order="tp-pp-dp-cp"))
    assert mixing.mixed_stages == 2
    fixed = place_groups(g, replace(parallel, order=mixing.suggested_order), suggest=False)
    assert fixed.mixed_stages == 0


def test_world_size_must_match(homo):
    with pytest.raises(InputError):
        place_groups(cluster_graph(homo), ParallelConfig(tp=8, global_batch=8))


def test_estimate_axis_bytes():
    p = ParallelConfig(tp=2, pp=2, dp=2, cp=2, global_batch=16, seq_len=2048)
    out = estimate_axis_bytes(GPT, p)
    assert set(out) == set(AXES) and all(v > 0 for v in out.values())
    single = estimate_axis_bytes(GPT, ParallelConfig(global_batch=4, seq_len=2048))
    assert all(v == 0 for v in single.values())
    # tp: 4 all-reduces per layer per micro-batch of s·b·h·2 bytes, ring factor 2(t-1)/t = 1
    assert out["tp"] == pytest.approx(12 * 8 * 4 * 1 * 1024 * 2048 * 2)


def test_all_orders():
    assert len(ALL_ORDERS) == 24 and len(set(ALL_ORDERS)) == 24


def test_shipped_mixed_cluster_stages():
    from tests.test_cluster import ROOT
    if not (ROOT / "hardware_profiles" / "dgx-h100-80gb.yaml").exists():
        pytest.skip("dgx profiles not present")
    c = load_cluster(ROOT / "clusters" / "mixed-a100-h100.yaml")
    g = cluster_graph(c)
    pl = place_groups(g, ParallelConfig(tp=8, pp=2, dp=4, global_batch=64))
    assert pl.stage_node_types == (("dgx-a100-80gb",), ("dgx-h100-80gb",))
    assert stage_peak_flops(g, pl, "bf16") == (312e12, 989.4e12)
    assert pl.axis("pp").bottleneck_bandwidth_bytes_per_s == 25 * GB  # A100 <-> H100 override
