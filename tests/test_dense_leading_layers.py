"""MoE models whose first blocks are dense (DeepSeek ``first_k_dense_replace``): counted, priced
per stage, searched, exported and built by the executor block by block."""
import dataclasses
from pathlib import Path

import pytest

from planner.catalog import load_model
from planner.cost.memory import rank_layer_params, stage_parameters
from planner.cost.runtime import get_runtime
from planner.cost.step import _bind, cluster_for, predict, stage_times, timed_step
from planner.errors import InputError
from planner.plan import ParallelConfig, Plan
from planner.search import brute_force, search

MIXTRAL = dataclasses.replace(load_model("mixtral-8x7b", seq_len=2048), n_layers=4)
LEADING = dataclasses.replace(MIXTRAL, dense_layers=2)
RT = get_runtime("megatron-core")


def test_dense_leading_layers_are_validated_in_one_line():
    with pytest.raises(InputError, match="dense_layers.*no MoE block"):
        dataclasses.replace(MIXTRAL, dense_layers=4)
    with pytest.raises(InputError, match="dense_layers.*routed experts"):
        dataclasses.replace(load_model("gpt2"), dense_layers=1)
    assert "dense_layers" not in MIXTRAL.to_dict() and LEADING.to_dict()["dense_layers"] == 2


def test_parameters_count_each_kind_of_block():
    dense = LEADING.dense_block()
    assert not dense.is_moe and dense.ffn_hidden_size == MIXTRAL.ffn_hidden_size
    blocks = 2 * dense.layer_params() + 2 * MIXTRAL.layer_params()
    assert LEADING.total_params() == MIXTRAL.embedding_params() + blocks + MIXTRAL.head_params()
    active = 2 * dense.layer_params() + 2 * MIXTRAL.layer_active_params()
    assert LEADING.active_params() == MIXTRAL.embedding_params() + active + MIXTRAL.head_params()
    assert LEADING.block_kinds([1, 2, 1]) == [(1, 0), (1, 1), (0, 1)]


def test_each_stage_is_priced_with_its_own_blocks():
    """pp=2 over 4 blocks: stage 0 holds the 2 dense blocks, stage 1 the 2 MoE blocks; each stage's
    forward is its blocks' (plus the embedding / head), and the dense stage holds fewer parameters."""
    P = ParallelConfig(tp=2, pp=2, dp=2, micro_batch=1, global_batch=8, seq_len=2048, sequence_parallel=True)
    cluster, sites, ranks, runtimes = _bind(LEADING, cluster_for("dgx-h100-80gb", 1), P, RT)
    timed = timed_step(LEADING, cluster, sites, runtimes, [stage_parameters(LEADING, P)], ranks, False)
    st = stage_times(LEADING, cluster, sites, runtimes, timed.rates)
    dense, moe = st.dense_blocks[0], st.blocks[0]
    assert st.kinds == ((2, 0), (0, 2))
    assert dense.layer_f < moe.layer_f  # no router, no all-to-all
    assert st.fwd_s[0] == pytest.approx(2 * dense.layer_f + dense.emb_f)
    assert st.fwd_s[1] == pytest.approx(2 * moe.layer_f + moe.head_f)
    params = stage_parameters(LEADING, P)
    assert params[0] - params[1] == pytest.approx(
        2 * rank_layer_params(LEADING.dense_block(), 2) - 2 * rank_layer_params(LEADING, 2)
        + (LEADING.embedding_params() - LEADING.head_params()) / 2)
    # the model's FLOPs count each kind once
    all_moe = predict(MIXTRAL, cluster, P, RT, timeline=False)
    leading = predict(LEADING, cluster, P, RT, timeline=False)
    assert leading.step_time_s < all_moe.step_time_s
    assert leading.per_stage[0].memory_bytes < all_moe.per_stage[0].memory_bytes


@pytest.mark.parametrize("sharding", ["zero1", "zero3"])
def test_search_bounds_stay_below_predict_with_two_kinds_of_block(sharding):
    cluster = cluster_for("dgx-h100-80gb", 1, 8)
    fixed = {"recompute": "selective", "sharding": sharding, "tp": 2}
    runtime = RT if sharding == "zero1" else get_runtime("torchtitan")
    res = search(LEADING, cluster, 16, fixed=fixed, top_k=3, refine=False, runtime=runtime)
    brute = brute_force(LEADING, cluster, 16, fixed=fixed, runtime=runtime)
    assert len(brute) > 3
    assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:3]]


def test_megatron_export_and_executor_build_the_dense_blocks():
    from executor.model import MLP, MoE, build_model
    from planner.export import megatron_args

    P = ParallelConfig(tp=2, dp=4, ep=4, global_batch=32, seq_len=2048)
    args, _ = megatron_args(Plan(LEADING, "dgx-h100-80gb", 1, 8, P))
    assert args[args.index("--moe-layer-freq") + 1] == "([0]*2+[1]*2)"
    tiny = load_model(str(Path(__file__).parent / "fixtures" / "tiny" / "tiny-mixtral"))
    tiny = dataclasses.replace(tiny, dense_layers=1)
    model = build_model(tiny, tie_embeddings=False, seed=0)
    kinds = [type(block.mlp) for block in model.layers.values()]
    assert kinds[0] is MLP and all(k is MoE for k in kinds[1:])
    assert sum(p.numel() for p in model.parameters()) == tiny.total_params()
