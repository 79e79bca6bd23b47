"""Framework-behaviour settings of the cost model (planner/cost/runtime.py)."""
import dataclasses

import pytest

from planner.catalog import load_model
from planner.cost.comm import GroupShape, collective_time
from planner.cost.runtime import Runtime
from planner.cost.step import cluster_for, predict
from planner.cost.zero3_prefetch import block_modules, gathered_tensors_per_layer
from planner.plan import ParallelConfig
from planner.profile_yaml import load_profile


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
    assert gathered_tensors_per_layer(model, 1, every) == 12  # 4 weights, 4 biases, 2 LayerNorms x 2
    assert gathered_tensors_per_layer(model, 1, kept) == 4    # only the four weight matrices
    assert gathered_tensors_per_layer(model, 1, Runtime()) == 1  # FSDP: one flat parameter


def test_less_overlap_is_never_faster():
    model = load_model("gpt3-175b")
    cluster = cluster_for("dgx-a100-80gb", 48)
    parallel = ParallelConfig(dp=384, micro_batch=4, global_batch=1536, seq_len=2048,
                              recompute="full", sharding="zero3", precision="fp16")
    base = Runtime(shard_prefetch=False)
    times = [predict(model, cluster, parallel, dataclasses.replace(base, shard_overlap_fraction=eta),
                     timeline=False).step_time_s for eta in (0.0, 0.5, 1.0)]
    assert times[0] >= times[1] >= times[2]


# --- DeepSpeed-2021 ZeRO-3 parameter coordinator, simulated module by module ---

def _exposed(model, node, P, rt, lt, g):
    from planner.cost.compute import block_gemm_forward_times, make_rates
    from planner.cost.zero3_prefetch import per_tensor_prefetch_exposed
    rates = make_rates(node.device, P.precision, 8, None)
    gemm = block_gemm_forward_times(model, P.micro_batch, P.seq_len, P.tp, P.cp, P.precision, rates)
    return per_tensor_prefetch_exposed(model, node, rt, lt, gemm, g, 0.0, tp=P.tp, precision=P.precision,
                                       recompute=P.recompute)


def _ds_case(mb=4, dp=384, **overrides):
    from planner.cost.compute import layer_times, make_rates
    from planner.cost.runtime import get_runtime
    from planner.cost.block import group_shape
    model = load_model("gpt3-175b")
    node = load_profile("dgx-a100-80gb")
    P = ParallelConfig(dp=dp, micro_batch=mb, global_batch=dp * mb, seq_len=2048,
                       recompute="full", sharding="zero3", precision="fp16")
    rt = dataclasses.replace(get_runtime("deepspeed-zero3-2021"), **overrides)
    rates = make_rates(node.device, P.precision, 8, None)
    lt = layer_times(model, mb, 2048, 1, 1, False, "full", "fp16", rates, rt)
    return model, node, P, rt, lt, group_shape(P, "dp", 8)


def test_block_modules_are_the_four_weights_above_the_persistence_threshold():
    model = load_model("gpt3-175b")
    h = model.hidden_size
    assert block_modules(model, 1, 100_000) == [3 * h * h, h * h, 4 * h * h, 4 * h * h]
    assert block_modules(model, 1, 0) == [3 * h * h + 3 * h, h * h + h, 4 * h * h + 4 * h, 4 * h * h + h]


def test_no_prefetch_exposes_every_gather_in_full():
    """max_live_parameters below one tensor: nothing is prefetched, each module's hook gathers
    its tensor and waits: the forward exposes exactly the sum of the four gathers."""
    model, node, P, rt, lt, g = _ds_case(max_live_parameters=1)
    z3_f, _ = _exposed(model, node, P, rt, lt, g)
    gathers = sum(collective_time("all_gather", 2.0 * n, g, node, multi_rail=False)
                  for n in block_modules(model, 1, rt.param_persistence_threshold))
    assert abs(z3_f - gathers) <= 1e-9 * gathers


def test_depth_one_prefetch_is_between_block_overlap_and_no_overlap():
    """Per module max(compute_j, gather_{j+1}) is never better than overlapping the block's
    total compute with its total gathers, and never worse than no overlap."""
    for mb in (1, 2, 4):
        model, node, P, rt, lt, g = _ds_case(mb=mb, dp=1536 // mb)
        z3_f, _ = _exposed(model, node, P, rt, lt, g)
        gathers = sum(collective_time("all_gather", 2.0 * n, g, node, multi_rail=False)
                      for n in block_modules(model, 1, rt.param_persistence_threshold))
        assert max(0.0, gathers - lt.fwd_s) - 1e-12 <= z3_f <= gathers + 1e-12


def test_keeping_reused_parameters_never_adds_time():
    model, node, P, rt, lt, g = _ds_case()
    _, kept = _exposed(model, node, P, rt, lt, g)
    _, released = _exposed(model, node, P, dataclasses.replace(rt, max_reuse_distance=0), lt, g)
    assert kept < released


def test_deepspeed_2021_step_time_is_flat_once_communication_bound():
    """SC'21 Table 2's structure: at fixed per-rank gather bytes, halving the micro-batch from
    2 to 1 (doubling the GPUs) leaves the step time nearly unchanged, while 4 -> 2 shortens it."""
    from planner.cost.runtime import get_runtime
    model = load_model("gpt3-175b")
    rt = get_runtime("deepspeed-zero3-2021")
    t = {}
    for n, mb in ((384, 4), (768, 2), (1536, 1)):
        P = ParallelConfig(dp=n, micro_batch=mb, global_batch=1536, seq_len=2048,
                           recompute="full", sharding="zero3", precision="fp16")
        t[n] = predict(model, cluster_for("dgx-a100-80gb", n // 8), P, rt, timeline=False).step_time_s
    assert t[384] > 1.1 * t[768]
    assert abs(t[1536] / t[768] - 1) < 0.05


def test_the_runtime_decides_whether_the_executor_is_modelled():
    """Only the executor runtime reads a profile's framework: section (and needs one); with no
    runtime named a calibrated profile is priced as the executor, a GPU profile as the default."""
    from planner.cost.runtime import DEFAULT_RUNTIME, EXECUTOR_RUNTIME, bind_runtime, get_runtime
    from planner.errors import InputError

    model = load_model("tiny-gpt")
    P = ParallelConfig(dp=2, micro_batch=2, global_batch=8, seq_len=model.seq_len, precision="fp32")
    cpu = cluster_for("local-cpu", 1, 2)
    assert get_runtime("executor") is EXECUTOR_RUNTIME and get_runtime(None) is None
    assert bind_runtime(cpu, None)[1] is EXECUTOR_RUNTIME
    assert bind_runtime(cluster_for("dgx-a100-80gb", 1), None)[1] is DEFAULT_RUNTIME
    as_executor = predict(model, cpu, P)
    assert as_executor.runtime.name == "executor"
    assert predict(model, cpu, P, EXECUTOR_RUNTIME).step_time_s == as_executor.step_time_s
    fused = predict(model, cpu, P, DEFAULT_RUNTIME)
    assert fused.runtime.name == "default" and fused.step_time_s != as_executor.step_time_s
    assert bind_runtime(cpu, DEFAULT_RUNTIME)[0].node.framework is None
    gpu_plan = ParallelConfig(dp=8, global_batch=8, seq_len=model.seq_len)
    with pytest.raises(InputError) as err:
        predict(model, cluster_for("dgx-a100-80gb", 1), gpu_plan, EXECUTOR_RUNTIME)
    assert err.value.field == "runtime"


# --- communication overlapped with compute: the SMs a collective holds ---

def test_overlapped_collective_shows_its_excess_or_its_sm_share():
    from planner.cost.comm import COLLECTIVE_SMS, comm_sm_fraction, overlapped_exposed_s
    a100 = load_profile("dgx-a100-80gb").device
    f = comm_sm_fraction(a100)
    assert f == pytest.approx(COLLECTIVE_SMS / 108)
    assert overlapped_exposed_s(a100, 1.0, 10.0) == pytest.approx(f * 1.0)   # hidden: its SMs show
    assert overlapped_exposed_s(a100, 10.0, 1.0) == pytest.approx(9.0)       # longer: the excess
    assert overlapped_exposed_s(a100, 0.0, 1.0) == 0.0
    cpu = load_profile("local-cpu").device
    assert comm_sm_fraction(cpu) == 0.0 and overlapped_exposed_s(cpu, 1.0, 10.0) == 0.0


def test_tp_comm_overlap_needs_sequence_parallel_and_hides_most_of_it():
    model = load_model("gpt3-175b")
    cluster = cluster_for("dgx-h100-80gb", 1)
    base = dict(tp=8, micro_batch=1, global_batch=8, seq_len=2048, recompute="selective")
    exposed = Runtime(name="plain")
    overlapped = Runtime(name="overlapped", tp_comm_overlap=True)
    sp = ParallelConfig(sequence_parallel=True, **base)
    no_sp = ParallelConfig(**base)
    t_plain = predict(model, cluster, sp, exposed, timeline=False).time.tp_s
    t_over = predict(model, cluster, sp, overlapped, timeline=False).time.tp_s
    assert 0.0 < t_over < 0.5 * t_plain
    assert predict(model, cluster, no_sp, overlapped, timeline=False).time.tp_s == \
        predict(model, cluster, no_sp, exposed, timeline=False).time.tp_s


# --- what each framework runs ---

def test_frameworks_refuse_the_plans_they_cannot_run():
    from planner.cost.runtime import get_runtime
    from planner.errors import InputError
    pp_zero3 = ParallelConfig(pp=2, dp=4, micro_batch=1, global_batch=8, sharding="zero3")
    assert "zero3 with pipeline parallelism" in get_runtime("megatron-core").refusal(pp_zero3)
    assert "zero3 with pipeline parallelism" in get_runtime("deepspeed-zero3-2021").refusal(pp_zero3)
    assert get_runtime("torchtitan").refusal(pp_zero3) is None
    assert get_runtime("default").refusal(pp_zero3) is None
    assert get_runtime("deepspeed-zero3-2021").refusal(ParallelConfig(dp=8, micro_batch=1, global_batch=8,
                                                                      sharding="zero3")) is None
    assert "no pipeline parallelism" in get_runtime("composer-fsdp").refusal(pp_zero3)
    assert "context parallelism" in get_runtime("megatron-lm-2021").refusal(
        ParallelConfig(cp=2, dp=4, micro_batch=1, global_batch=8))
    zb = ParallelConfig(pp=2, dp=4, micro_batch=1, global_batch=8, schedule="zb")
    assert "no zb schedule" in get_runtime("megatron-core").refusal(zb)
    with pytest.raises(InputError, match="runtime"):
        predict(load_model("gpt2"), cluster_for("dgx-a100-80gb", 1), pp_zero3, get_runtime("megatron-core"))


def test_search_proposes_only_what_the_runtime_runs():
    from planner.cost.runtime import get_runtime
    from planner.search import search
    model = load_model("llama3-8b")
    cluster = cluster_for("dgx-h100-80gb", 2)
    for name in ("megatron-core", "torchtitan", "deepspeed-zero3-2021"):
        rt = get_runtime(name)
        result = search(model, cluster, 64, 4096, "bf16", top_k=5, runtime=rt)
        assert result.ranked and all(rt.refusal(e.parallel) is None for e in result.ranked)
        if name != "torchtitan":
            assert "unsupported" in result.rejections


def test_torchtitan_selective_recomputes_every_second_matmul_and_keeps_what_it_saves():
    """torchtitan's op-level selective AC (9dec370 _save_list): of Llama's wq, wk, wv, wo, w1, w3,
    w2 the key, output and w3 projections are recomputed; a block keeps its input and the saved
    matmul and attention outputs. Megatron's selective rule recomputes the attention core only."""
    from planner.cost.flops import op_sac_recomputed_gemms, step_flops
    from planner.cost.memory import layer_activation_bytes
    model = load_model("llama3-8b")
    h, f, kv = model.hidden_size, model.ffn_hidden_size, model.kv_dim
    assert op_sac_recomputed_gemms(model, 10, 1) == [(10, kv, h), (10, h, h), (10, f, h)]
    mf, hf = step_flops(model, 4, 8192, "selective", "every_second_mm")
    assert hf - mf == pytest.approx(model.n_layers * 2 * 4 * 8192 * (kv * h + h * h + f * h))
    tokens = 2 * 8192
    saved = layer_activation_bytes(model, 2, 8192, 1, 1, False, "selective", "bf16", "flash",
                                   selective="every_second_mm")
    assert saved == pytest.approx(2 * tokens * (h + h + kv + f + h + h))  # input; q, v, w1, w2; attention out
    assert saved < layer_activation_bytes(model, 2, 8192, 1, 1, False, "selective", "bf16", "flash")
    from planner.cost.runtime import get_runtime
    par = ParallelConfig(dp=8, micro_batch=2, global_batch=16, seq_len=8192, recompute="selective",
                         sharding="fsdp", precision="bf16")
    cluster = cluster_for("dgx-h100-80gb", 1)
    titan = predict(model, cluster, par, get_runtime("torchtitan"), timeline=False)
    default = predict(model, cluster, par, get_runtime("default"), timeline=False)
    assert titan.time.recompute_s > default.time.recompute_s
    assert titan.memory.activations_bytes < default.memory.activations_bytes


def test_context_parallel_ranks_share_the_data_parallel_sharding_and_reduction():
    """cp ranks hold the same weights: ZeRO state is sharded and gradients reduced over dp x cp
    (Megatron-Core's data-parallel group with context parallelism, torchtitan's dp_shard_cp)."""
    from planner.cost.block import data_parallel_group
    from planner.layout import union_group_spread
    model = load_model("llama3-8b", seq_len=8192)
    cluster = cluster_for("dgx-h100-80gb", 2)
    base = dict(tp=2, micro_batch=1, global_batch=16, seq_len=8192, sharding="zero1", sequence_parallel=True)
    with_cp = predict(model, cluster, ParallelConfig(dp=4, cp=2, **base), timeline=False)
    without = predict(model, cluster, ParallelConfig(dp=8, cp=1, **base), timeline=False)
    assert with_cp.memory.optimizer_bytes == pytest.approx(without.memory.optimizer_bytes)
    g = data_parallel_group(ParallelConfig(dp=4, cp=2, **base), 8)
    assert (g.size, g.ranks_per_node, g.nodes) == (8, 4, 2)  # tp-cp-dp-pp: 4 of the 8 on each node
    assert union_group_spread(((2, 2), (4, 16)), 8) == (2, 4)  # dp not next to cp: counted


def test_torchtitan_keeps_fsdp_units_unsharded_under_pipeline_parallelism():
    """reshard_after_forward=False with pp (torchtitan 9dec370): ZeRO-1's state and traffic, the
    gradients accumulated in fp32 (FSDP2's reduce dtype); without pp FSDP stays FSDP."""
    from planner.cost.runtime import get_runtime
    titan = get_runtime("torchtitan")
    assert titan.priced_sharding("fsdp", 2) == "zero1" and titan.priced_sharding("fsdp", 1) == "fsdp"
    assert get_runtime("default").priced_sharding("fsdp", 2) == "fsdp"
    model = load_model("llama3-8b", seq_len=2048)
    cluster = cluster_for("dgx-h100-80gb", 1)
    par = ParallelConfig(pp=2, dp=4, micro_batch=1, global_batch=16, seq_len=2048, sharding="fsdp")
    as_titan = predict(model, cluster, par, titan, timeline=False)
    as_zero1 = predict(model, cluster, dataclasses.replace(par, sharding="zero1"), get_runtime("default"),
                       timeline=False)
    assert as_titan.memory.weights_bytes == pytest.approx(as_zero1.memory.weights_bytes)
    assert as_titan.memory.weights_bytes > predict(model, cluster, par, get_runtime("default"),
                                                   timeline=False).memory.weights_bytes
    # the whole gradients accumulate over the micro-batches in FSDP2's fp32 reduce dtype
    assert as_titan.memory.grads_bytes == pytest.approx(2 * as_zero1.memory.grads_bytes)
    one = dataclasses.replace(par, global_batch=4)  # one micro-batch per step: nothing accumulates
    assert predict(model, cluster, one, titan, timeline=False).memory.grads_bytes == pytest.approx(
        predict(model, cluster, dataclasses.replace(one, sharding="zero1"), get_runtime("default"),
                timeline=False).memory.grads_bytes)
