"""Mixture-of-experts plans with expert parallelism: validation, pricing, search."""
import dataclasses

import pytest

from planner.catalog import load_model
from planner.cost.comm import GroupShape, collective_time
from planner.cost.runtime import get_runtime
from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.layout import expert_group_spreads
from planner.plan import ParallelConfig
from planner.profile_yaml import load_profile
from planner.search import brute_force, search

MIXTRAL = load_model("mixtral-8x7b", seq_len=2048)
RT = get_runtime("megatron-core")


def cfg(**kw):
    base = dict(tp=2, pp=1, dp=16, micro_batch=1, global_batch=64, seq_len=2048, sequence_parallel=True,
                sharding="zero1")
    base.update(kw)
    return ParallelConfig(**base)


def test_expert_parallel_plans_are_validated_in_one_line():
    with pytest.raises(InputError, match="ep"):
        cfg(ep=3)  # does not divide dp
    with pytest.raises(InputError, match="mixture-of-experts"):
        cfg(ep=2).validate_for(load_model("gpt2"))
    with pytest.raises(InputError, match="n_experts=8"):
        cfg(ep=16).validate_for(MIXTRAL)
    assert cfg(ep=4).megatron_notation().startswith("tp2 pp1 dp16 ep4")
    assert "ep" not in cfg().to_dict() and cfg(ep=4).to_dict()["ep"] == 4  # dense ids unchanged


def test_expert_groups_follow_the_rank_layout():
    (per_node, nodes), (edp_per_node, edp_nodes) = expert_group_spreads(cfg(ep=4), 8)
    assert (per_node, nodes) == (4, 1)        # 4 neighbouring dp ranks, tp=2 apart: one node
    assert (edp_per_node, edp_nodes) == (1, 4)  # the 4 holders of an expert, 8 ranks apart


def test_experts_spread_over_ep_cut_memory_and_add_all_to_all():
    cluster = cluster_for("dgx-h100-80gb", 4)
    one = predict(MIXTRAL, cluster, cfg(), RT, timeline=False)
    four = predict(MIXTRAL, cluster, cfg(ep=4), RT, timeline=False)
    assert four.memory.weights_bytes < 0.5 * one.memory.weights_bytes
    # without ep the dispatcher still gathers the routed tokens over tp (no all-to-all)
    assert 0.0 < one.time.ep_s < four.time.ep_s
    # the model's FLOPs do not depend on where the experts live
    assert four.model_tflops_per_gpu * four.step_time_s == pytest.approx(one.model_tflops_per_gpu * one.step_time_s)
    with pytest.raises(InputError, match="expert parallelism"):
        predict(MIXTRAL, cluster, cfg(ep=4), get_runtime("megatron-lm-2021"))
    with pytest.raises(InputError, match="ZeRO-3"):
        predict(MIXTRAL, cluster, cfg(ep=4, sharding="zero3"), get_runtime("torchtitan"))


def test_all_to_all_crossing_nodes_is_paced_by_the_nic():
    node = load_profile("dgx-h100-80gb")
    inside = collective_time("all_to_all", 1e9, GroupShape(8, 8, 1), node)
    across = collective_time("all_to_all", 1e9, GroupShape(16, 8, 2), node)
    # half of each rank's buffer leaves the node through its own NIC (50 GB/s vs NVLink's 450)
    assert across > 4 * inside
    assert across == pytest.approx(node.inter_node.latency_s + 0.5e9 / node.inter_node.effective_bandwidth_bytes_per_s)


def test_search_with_ep_equals_brute_force():
    model = dataclasses.replace(MIXTRAL, n_layers=4)
    cluster = cluster_for("dgx-h100-80gb", 1, 8)
    fixed = {"recompute": "selective", "sharding": "zero1", "tp": 2}
    res = search(model, cluster, 16, fixed=fixed, top_k=3, refine=False, runtime=RT)
    brute = brute_force(model, cluster, 16, fixed=fixed, runtime=RT)
    assert res.ranked and any(e.parallel.ep > 1 for e in res.ranked)
    assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:3]]


def test_exports_carry_the_expert_parallel_degree(tmp_path):
    from planner.export import megatron_args, to_deepspeed, to_torchtitan
    from planner.plan import Plan

    plan = Plan(model=MIXTRAL, hardware="dgx-h100-80gb", n_nodes=4, gpus_per_node=8, parallel=cfg(ep=4))
    args, _ = megatron_args(plan)
    assert args[args.index("--expert-model-parallel-size") + 1] == "4"
    assert "expert_parallel_degree = 4" in to_torchtitan(plan)
    assert "ep_size=4" in to_deepspeed(plan)


def test_tiny_mixtral_config_counts_what_the_executor_builds():
    from pathlib import Path

    from executor.model import build_model
    spec = load_model(str(Path(__file__).parent / "fixtures" / "tiny" / "tiny-mixtral"))
    model = build_model(spec, tie_embeddings=False, seed=0)
    assert spec.n_experts == 4 and spec.top_k == 2
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


def test_shared_experts_from_qwen2_moe_are_priced_exported_and_refused_by_the_executor():
    """Qwen1.5-MoE-A2.7B's config: 60 experts of 1408, top 4, a shared expert of 5632 with its gate
    gives the model card's 14.3B total and 2.7B activated parameters; every token runs the shared
    expert's GEMMs (FLOPs, GEMM list), Megatron gets --moe-shared-expert-intermediate-size, the
    executor (routed experts only) refuses it in one line."""
    from pathlib import Path

    from planner.cost.compute import block_gemm_shapes
    from planner.cost.flops import layer_forward_flops
    from planner.executor_rules import unsupported
    from planner.export import megatron_args
    from planner.hf_config import read_hf_config, spec_from_hf_config
    from planner.plan import Plan

    hf = Path(__file__).parent / "fixtures" / "hf" / "Qwen1.5-MoE-A2.7B" / "config.json"
    qwen = read_hf_config(hf)
    assert qwen.total_params() == pytest.approx(14.3e9, rel=0.005)
    assert qwen.active_params() == pytest.approx(2.7e9, rel=0.01)
    routed_only = dataclasses.replace(qwen, shared_expert_ffn_hidden_size=0)
    h, T = qwen.hidden_size, 4096.0
    extra = layer_forward_flops(qwen, T, 4096).mlp - layer_forward_flops(routed_only, T, 4096).mlp
    assert extra == pytest.approx(2 * T * 3 * h * 5632)
    assert len(block_gemm_shapes(qwen, T, 2, 4)) == len(block_gemm_shapes(routed_only, T, 2, 4)) + 2
    assert (T, h, 5632 / 2) in block_gemm_shapes(qwen, T, 2, 4)
    P = ParallelConfig(tp=2, dp=4, ep=4, global_batch=32, seq_len=4096)
    cluster = cluster_for("dgx-h100-80gb", 1)
    assert predict(qwen, cluster, P).step_time_s > predict(routed_only, cluster, P).step_time_s
    args, _ = megatron_args(Plan(qwen, "dgx-h100-80gb", 1, 8, P))
    assert args[args.index("--moe-shared-expert-intermediate-size") + 1] == "5632"
    assert "shared expert" in unsupported(P, qwen) and unsupported(P, routed_only).startswith("ep:")
    assert "shared_expert_ffn_hidden_size" not in routed_only.to_dict()  # older plans keep their ids
    import json
    data = json.loads(hf.read_text())
    with pytest.raises(InputError, match="mlp_only_layers"):
        spec_from_hf_config(dict(data, mlp_only_layers=[0]))


def test_expert_capacity_padded_prices_the_padding_dropping_alone_the_balanced_share():
    """Megatron-Core's ``moe_expert_capacity_factor`` with ``moe_pad_expert_input_to_capacity``:
    every expert GEMM, the routed activations and the token exchange grow by the factor; a
    capacity without padding only drops tokens, priced as the balanced share (as dropless)."""
    from planner.cost.block import ep_comm_s
    from planner.cost.compute import block_gemm_shapes
    from planner.cost.memory import layer_activation_bytes
    from planner.cost.routing import busiest_rank_load
    from planner.executor_rules import unsupported
    from planner.export import megatron_args

    padded = dataclasses.replace(MIXTRAL, moe_capacity_factor=1.25, moe_pad_to_capacity=True)
    dropping = dataclasses.replace(MIXTRAL, moe_capacity_factor=1.25)
    base_shapes, pad_shapes = block_gemm_shapes(MIXTRAL, 2048, 2, 4), block_gemm_shapes(padded, 2048, 2, 4)
    attention = len(MIXTRAL.attention_projections())
    expert_gemms = 2 * (MIXTRAL.n_experts // 4)
    balanced = 2048 * MIXTRAL.top_k * 4 / MIXTRAL.n_experts  # tokens per expert, 4 experts per rank
    uniform = busiest_rank_load(MIXTRAL, 2048 * MIXTRAL.top_k, 4)
    for (m0, n0, k0), (m1, n1, k1) in zip(base_shapes[attention:attention + expert_gemms],
                                          pad_shapes[attention:attention + expert_gemms]):
        assert (m0, n0, k0) == pytest.approx((uniform * balanced, n1, k1))
        assert m1 == pytest.approx(1.25 * balanced)
    assert base_shapes[:attention] == pad_shapes[:attention]
    node = load_profile("dgx-h100-80gb")
    kw = dict(micro_batch=1, seq_len=2048, cp=1, sequence_parallel=False, precision="bf16")
    g, tp1 = GroupShape(8, 8, 1), GroupShape(1, 1, 1)
    assert ep_comm_s(padded, node, g, tp1, **kw) > ep_comm_s(MIXTRAL, node, g, tp1, **kw)
    act = dict(micro_batch=1, seq_len=2048, tp=2, cp=1, sequence_parallel=True, recompute="none", precision="bf16")
    assert layer_activation_bytes(padded, **act) > layer_activation_bytes(MIXTRAL, **act)
    cluster = cluster_for("dgx-h100-80gb", 4)
    P = cfg(ep=4)
    base = predict(MIXTRAL, cluster, P, RT).step_time_s
    assert predict(padded, cluster, P, RT).step_time_s > 1.05 * base
    assert predict(dropping, cluster, P, RT).step_time_s == base
    args, _ = megatron_args(_plan(padded, P))
    assert args[args.index("--moe-expert-capacity-factor") + 1] == "1.25"
    assert "--moe-pad-expert-input-to-capacity" in args
    assert "moe_capacity_factor" not in MIXTRAL.to_dict() and padded.to_dict()["moe_capacity_factor"] == 1.25
    assert "dropless" in unsupported(P, padded)
    with pytest.raises(InputError, match="moe_pad_to_capacity"):
        dataclasses.replace(MIXTRAL, moe_pad_to_capacity=True)
    with pytest.raises(InputError, match="moe_capacity_factor"):
        dataclasses.replace(load_model("gpt2"), moe_capacity_factor=1.0)
    with pytest.raises(InputError, match="moe_capacity_factor"):
        dataclasses.replace(MIXTRAL, moe_capacity_factor=float("inf"))


def _plan(model, P):
    from planner.plan import Plan
    return Plan(model, "dgx-h100-80gb", P.world_size // 8, 8, P)


def test_expert_tensor_parallel_below_tp_folds_the_stage_into_expert_groups():
    """Megatron-Core MoE parallel folding: with etp < tp a stage's tp x dp ranks regroup as etp x
    ep x expert-dp (etp fastest); experts are split by etp, see their etp group's tokens, and are
    reduced over the expert-dp ranks; only the attention keeps its tp collectives."""
    from planner.cost.compute import block_gemm_shapes
    from planner.cost.memory import rank_layer_params
    from planner.cost.routing import busiest_rank_load
    from planner.executor_rules import unsupported
    from planner.export import megatron_args, torchtitan_config
    from planner.layout import expert_groups

    with pytest.raises(InputError, match="etp"):
        cfg(etp=3)  # does not divide tp=2
    with pytest.raises(InputError, match="etp"):
        cfg(etp=1, cp=2, dp=8)
    with pytest.raises(InputError, match="sequence_parallel"):
        cfg(ep=8, etp=1, sequence_parallel=False).validate_for(MIXTRAL)
    with pytest.raises(InputError, match="etp"):
        cfg(etp=1).validate_for(load_model("gpt2"))
    folded = cfg(dp=4, ep=8, etp=1, global_batch=16)  # ep 8 > dp 4: carved out of tp x dp
    folded.validate_for(MIXTRAL)
    with pytest.raises(InputError, match="ep"):
        cfg(dp=4, ep=8, global_batch=16)  # without folding ep must divide dp
    assert folded.expert_dp == 1 and "etp1" in folded.megatron_notation()
    assert folded.to_dict()["etp"] == 1 and "etp" not in cfg().to_dict()
    ep_groups, edp_groups = expert_groups(folded)
    assert ep_groups == [list(range(8))] and edp_groups == [[r] for r in range(8)]
    shapes = block_gemm_shapes(MIXTRAL, 2048, 2, 8, 1)
    attention = len(MIXTRAL.attention_projections())
    (m_up, n_up, _), (_, _, k_down) = shapes[attention], shapes[attention + 1]
    # one expert per rank, unsplit, on the tokens the 8 ranks route to it (each its own half sequence)
    assert (n_up, k_down) == (2 * MIXTRAL.expert_ffn, MIXTRAL.expert_ffn)
    routed = 2048 / 2 * MIXTRAL.top_k  # token copies per rank, its busiest of 8 as routing.py prices it
    assert m_up == pytest.approx(routed * 8 / MIXTRAL.n_experts * busiest_rank_load(MIXTRAL, routed, 8))
    experts = MIXTRAL.expert_params_per_layer()
    assert rank_layer_params(MIXTRAL, 2, 8, 1) - rank_layer_params(MIXTRAL, 2, 8) == pytest.approx(experts / 16)
    cluster = cluster_for("dgx-h100-80gb", 4)
    P_tp, P_folded = cfg(ep=8, recompute="full"), cfg(ep=8, etp=1, recompute="full")
    at_tp, below = predict(MIXTRAL, cluster, P_tp, RT), predict(MIXTRAL, cluster, P_folded, RT)
    assert below.step_time_s != at_tp.step_time_s and below.peak_memory_bytes > at_tp.peak_memory_bytes
    assert "etp" in unsupported(P_folded, MIXTRAL)
    args, _ = megatron_args(_plan(MIXTRAL, P_folded))
    assert args[args.index("--expert-tensor-parallel-size") + 1] == "1"
    assert "--expert-tensor-parallel-size" not in megatron_args(_plan(MIXTRAL, P_tp))[0]
    titan, _ = torchtitan_config(_plan(MIXTRAL, dataclasses.replace(P_folded, sharding="fsdp")))
    assert titan["parallelism"]["expert_tensor_parallel_degree"] == 1
    with pytest.raises(InputError, match="torchtitan"):
        torchtitan_config(_plan(MIXTRAL, cfg(etp=1, sharding="fsdp")))  # ep 1: torchtitan would split by tp


def test_search_over_expert_layouts_with_etp_equals_brute_force():
    """The search tries experts split by tp and whole (etp 1, ep carved out of tp x dp): its top 5
    equal brute force's, and a folded plan with ep above dp is among them."""
    model = dataclasses.replace(MIXTRAL, n_layers=4)
    cluster = cluster_for("dgx-h100-80gb", 1, 8)
    fixed = {"recompute": "selective", "sharding": "zero1"}
    res = search(model, cluster, 16, fixed=fixed, top_k=5, refine=False, runtime=RT)
    brute = brute_force(model, cluster, 16, fixed=fixed, runtime=RT)
    assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:5]]
    assert any(e.parallel.etp == 1 and e.parallel.ep > e.parallel.dp for e in res.ranked)
    only_split = search(model, cluster, 16, fixed={**fixed, "etp": 0}, top_k=5, refine=False, runtime=RT)
    assert all(e.parallel.etp == 0 for e in only_split.ranked)


def test_the_moe_layers_tp_communication_is_the_dispatchers():
    """Megatron-Core v0.15's all-to-all dispatcher all-gathers the routed tokens over the experts'
    tp group and reduce-scatters them back; the MoE layer has no MLP gather / scatter pair of its
    own, so an MoE block under sequence parallelism pays the attention's pair only (a dense block
    both); a shared expert keeps its own pair."""
    from planner.cost.block import block_cost, group_shape
    from planner.cost.compute import make_rates
    node = load_profile("dgx-h100-80gb")
    P = cfg(ep=4)
    rates = make_rates(node.device, "bf16", 8, node.framework)
    kw = dict(tp=2, cp=1, micro_batch=1, seq_len=2048, recompute="none", sequence_parallel=True, precision="bf16",
              tp_group=group_shape(P, "tp", 8), cp_group=group_shape(P, "cp", 8))
    rt = get_runtime("default")  # no tp overlap: the collectives as they are
    moe = block_cost(MIXTRAL, node, rt, rates, **kw)
    dense = block_cost(MIXTRAL.dense_block(), node, rt, rates, **kw)
    shared = block_cost(dataclasses.replace(MIXTRAL, shared_expert_ffn_hidden_size=4096), node, rt, rates, **kw)
    assert moe.tp_f == pytest.approx(dense.tp_f / 2) and shared.tp_f == pytest.approx(dense.tp_f)
    assert moe.ep_f > 0  # the dispatcher's gather over tp, without expert parallelism


def test_a_runtime_without_expert_parallelism_gets_no_ep_plans_under_either_expert_layout():
    """The leaf sets are memoised per (ep > 1, etp): the whole-expert layout at ep 1 must not lend
    its leaves to ep > 1, which such a runtime refuses."""
    model = dataclasses.replace(MIXTRAL, n_layers=4)
    res = search(model, cluster_for("dgx-h100-80gb", 1, 8), 16, fixed={"recompute": "selective"}, top_k=5,
                 refine=False, runtime=get_runtime("megatron-lm-2021"))
    assert res.ranked and all(e.parallel.ep == 1 for e in res.ranked)


@pytest.mark.distributed
def test_the_dispatch_benchmark_times_a_dispatch_that_returns_every_token(tmp_path):
    """Two gloo ranks: the dispatch + combine with pass-through experts gives each token back, and
    the benchmark reports both sizes with times that grow with the routed bytes."""
    from executor.testing import spawn

    results = spawn("executor.testing.ep_dispatch_job", 2, tmp_path, {"reps": 3}, timeout_s=120.0)
    for r in results:
        assert r["max_error"] < 1e-6
    rows = results[0]["rows"]
    assert [row["tokens"] for row in rows] == [256, 2048]
    assert all(row["forward_s"] > 0 and row["backward_s"] > 0 for row in rows)
    assert rows[1]["routed_bytes"] == 8 * rows[0]["routed_bytes"]


def test_busiest_rank_load_is_a_uniform_routers_expectation_or_the_measured_one():
    """The busiest of ep ranks under uniform routing: mean + E[max of ep normals] * sd of a
    binomial (Gumbel's tabulated 0.5642, 1.0294, 1.4236 for 2, 4, 8); a measured imbalance
    replaces it, a capacity factor caps it, padding fixes it; one rank holds every expert: 1."""
    from planner.cost.block import ep_comm_s
    from planner.cost.routing import busiest_rank_load, expected_max_standard_normal

    assert [round(expected_max_standard_normal(n), 4) for n in (1, 2, 4, 8)] == [0.0, 0.5642, 1.0294, 1.4236]
    assert busiest_rank_load(MIXTRAL, 8192, 8) == pytest.approx(1 + 1.4236 * (0.875 / 8192) ** 0.5, rel=1e-4)
    assert busiest_rank_load(MIXTRAL, 8192, 1) == 1.0
    assert busiest_rank_load(load_model("gpt2"), 8192, 8) == 1.0
    measured = dataclasses.replace(MIXTRAL, moe_load_imbalance=1.4)
    assert busiest_rank_load(measured, 8192, 8) == 1.4
    assert busiest_rank_load(dataclasses.replace(measured, moe_capacity_factor=1.2), 8192, 8) == 1.2
    padded = dataclasses.replace(measured, moe_capacity_factor=1.25, moe_pad_to_capacity=True)
    assert busiest_rank_load(padded, 8192, 8) == 1.25
    assert measured.to_dict()["moe_load_imbalance"] == 1.4 and "moe_load_imbalance" not in MIXTRAL.to_dict()
    node = load_profile("dgx-h100-80gb")
    kw = dict(micro_batch=1, seq_len=2048, cp=1, sequence_parallel=False, precision="bf16")
    g, tp1 = GroupShape(8, 8, 1), GroupShape(1, 1, 1)
    uniform = busiest_rank_load(MIXTRAL, 2048 * MIXTRAL.top_k, 8)
    assert ep_comm_s(measured, node, g, tp1, **kw) == pytest.approx(ep_comm_s(MIXTRAL, node, g, tp1, **kw)
                                                                     * 1.4 / uniform, rel=0.02)
    cluster = cluster_for("dgx-h100-80gb", 4)
    P = cfg(ep=4)
    assert predict(measured, cluster, P, RT).step_time_s > predict(MIXTRAL, cluster, P, RT).step_time_s
    for bad in (0.5, float("nan"), True):
        with pytest.raises(InputError, match="moe_load_imbalance"):
            dataclasses.replace(MIXTRAL, moe_load_imbalance=bad)
    with pytest.raises(InputError, match="moe_load_imbalance"):
        dataclasses.replace(load_model("gpt2"), moe_load_imbalance=1.2)


def test_load_imbalance_on_the_command_line(capsys):
    """``predict --moe-load-imbalance`` prices a measured router's busiest rank; a value below 1
    is one line naming the field, exit 2."""
    import json

    from planner.cli import main

    argv = ["predict", "--model", "mixtral-8x7b", "--hardware", "dgx-h100-80gb", "--nodes", "4", "--tp", "1",
            "--pp", "1", "--dp", "32", "--ep", "8", "--micro-batch", "1", "--global-batch", "64",
            "--seq-len", "2048", "--json"]
    assert main(argv) == 0
    uniform = json.loads(capsys.readouterr().out)
    assert main([*argv, "--moe-load-imbalance", "1.5"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["step_time_s"] > uniform["step_time_s"]
    assert main([*argv, "--moe-load-imbalance", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "moe_load_imbalance" in err[0]
