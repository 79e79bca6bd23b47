import json

import pytest

from planner.errors import InputError
from planner.layout import axis_groups, group_node_spread, mesh_dims, rank_layout
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan

TINY = ModelSpec("tiny", n_layers=4, hidden_size=64, n_heads=4, n_kv_heads=4,
                 ffn_hidden_size=256, vocab_size=128, seq_len=32)


def test_layout_is_megatron_order():
    p = ParallelConfig(tp=2, pp=2, dp=2, global_batch=8, seq_len=32)
    coords = rank_layout(p)
    assert [(c.pp, c.dp, c.tp) for c in coords[:4]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert coords[4].pp == 1
    assert mesh_dims(p) == (("pp", "dp", "cp", "tp"), (2, 2, 1, 2))
    assert axis_groups(p, "tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert axis_groups(p, "pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("gpn", [1, 2, 4, 8])
@pytest.mark.parametrize("axis", ["tp", "dp", "pp"])
def test_node_spread_matches_groups(axis, gpn):
    p = ParallelConfig(tp=2, pp=2, dp=4, global_batch=16, seq_len=32)
    group = axis_groups(p, axis)[0]
    nodes = {r // gpn for r in group}
    per_node = max(sum(1 for r in group if r // gpn == n) for n in nodes)
    assert group_node_spread(p, axis, gpn) == (per_node, len(nodes))


def test_plan_roundtrip_and_id(tmp_path):
    plan = Plan(TINY, "local-cpu", 1, 4, ParallelConfig(tp=2, dp=2, global_batch=4, seq_len=32))
    path = plan.save(tmp_path / "p.json")
    again = Plan.load(path)
    assert again == plan and again.id == plan.id
    assert json.loads(path.read_text())["id"] == plan.id
    other = Plan(TINY, "local-cpu", 1, 4, ParallelConfig(tp=2, dp=2, global_batch=8, seq_len=32))
    assert other.id != plan.id


@pytest.mark.parametrize("kwargs, field", [
    (dict(tp=3, global_batch=4), "tp"),
    (dict(dp=2, micro_batch=3, global_batch=4), "micro_batch"),
    (dict(pp=8, global_batch=4), "pp"),
    (dict(pp=2, stage_layers=(1, 2), global_batch=4), "stage_layers"),
])
def test_bad_splits_name_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        parallel = ParallelConfig(seq_len=32, **kwargs)
        parallel.validate_for(TINY)
    assert err.value.field == field


def test_world_size_mismatch():
    with pytest.raises(InputError) as err:
        Plan(TINY, "local-cpu", 1, 4, ParallelConfig(tp=2, global_batch=4, seq_len=32))
    assert "nodes*gpus_per_node" in str(err.value)


def test_strided_spread_fast_paths_match_counting():
    from planner.layout import strided_group_spread
    for size in (1, 2, 3, 4, 8, 16):
        for stride in (1, 2, 3, 4, 8, 16):
            for gpn in (1, 2, 4, 8):
                nodes = [(i * stride) // gpn for i in range(size)]
                expect = (max(nodes.count(n) for n in set(nodes)), len(set(nodes)))
                assert strided_group_spread(size, stride, gpn) == expect, (size, stride, gpn)


def test_stage_tp_is_validated_and_counts_its_gpus():
    from planner.errors import InputError

    P = ParallelConfig(tp=8, pp=3, dp=4, global_batch=8, stage_tp=(8, 4, 4))
    assert P.world_size == 4 * 16 and P.megatron_notation().startswith("tp8/4/4 pp3 dp4")
    assert P.stage_config(1).tp == 4 and P.stage_config(0).tp == 8 and not P.stage_config(1).stage_tp
    assert ParallelConfig(tp=4, pp=2, dp=1, global_batch=8, stage_tp=(4, 4)).stage_tp == ()  # one tp: none
    for kw, field in ((dict(tp=8, pp=2, stage_tp=(8, 4, 4)), "stage_tp"), (dict(tp=4, pp=2, stage_tp=(8, 4)), "tp"),
                      (dict(tp=8, pp=2, stage_tp=(8, 4), order="tp-cp-pp-dp"), "order")):
        with pytest.raises(InputError) as err:
            ParallelConfig(global_batch=8, **kw)
        assert err.value.field == field
    plain = ParallelConfig(tp=2, pp=2, global_batch=8)
    assert "stage_tp" not in plain.to_dict()  # plans without it keep their ids
    assert ParallelConfig.from_dict(P.to_dict()) == P


def test_a_plan_names_a_profile_or_a_cluster_file_never_both():
    from planner.errors import InputError

    model = ModelSpec("m", n_layers=4, hidden_size=64, n_heads=4, n_kv_heads=4, ffn_hidden_size=256,
                      vocab_size=128, seq_len=64)
    P = ParallelConfig(dp=8, global_batch=8, seq_len=64)
    for hardware, cluster in (("dgx-a100-80gb", "clusters/mixed-a100-h100.yaml"), ("", "")):
        with pytest.raises(InputError) as err:
            Plan(model=model, hardware=hardware, cluster=cluster, n_nodes=1, gpus_per_node=8, parallel=P)
        assert err.value.field == "hardware"
    on_file = Plan(model=model, hardware="", cluster="clusters/mixed-a100-h100.yaml", n_nodes=1, gpus_per_node=8,
                   parallel=P)
    assert Plan.from_dict(on_file.to_dict()) == on_file and on_file.machine.endswith(".yaml")
    assert "cluster" not in Plan(model=model, hardware="dgx-a100-80gb", n_nodes=1, gpus_per_node=8,
                                 parallel=P).to_dict()
