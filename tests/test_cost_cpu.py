"""CPU-host physics of the cost model: collectives share the cores (no comm/compute overlap when
ranks occupy every core), the CPU flash-attention softmax pass, per-dtype GEMM curves."""
from __future__ import annotations

import dataclasses

import pytest

from planner.cost.comm import GroupShape, collective_time
from planner.cost.runtime import DEFAULT_RUNTIME, collectives_share_cores, effective_runtime
from planner.cost.step import predict
from planner.hardware import ClusterSpec, EfficiencyCurve
from planner.profile_yaml import load_profile, parse_profile
from planner.model import ModelSpec
from planner.plan import ParallelConfig

import yaml

CPU = yaml.safe_load("""
name: test-cpu
description: two-core CPU
device:
  name: cpu-rank
  peak_tflops: {fp32: 0.1, bf16: 0.2}
  hbm_gib: 8
  hbm_bandwidth_gb_s: 50
  matmul_efficiency: {fp32: [[1.0e+6, 0.5], [1.0e+9, 0.9]], bf16: [[1.0e+6, 0.2], [1.0e+9, 0.6]]}
  memory_bound_efficiency: 0.3
  kernel_overhead_us: 2.0
  reserved_gib: 0.01
  fragmentation_fraction: 0.0
  host_cores: 2
node:
  gpus_per_node: 2
  intra_node: {bandwidth_gb_s: 3.0, latency_us: 90, bus_efficiency: 0.3}
  inter_node: {bandwidth_gb_s: 3.0, latency_us: 90, bus_efficiency: 0.3}
collectives:
  - {op: all_reduce, group_size: 2, latency_us: 270, bus_bandwidth_gb_s: 1.5}
""")

MODEL = ModelSpec(name="t", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                  vocab_size=2048, seq_len=256, mlp="gelu", norm="layernorm", position="learned",
                  tied_embeddings=True, bias=True, dropout=0.0, activation="gelu")


def _node(**device_changes):
    data = yaml.safe_load(yaml.safe_dump(CPU))
    data["device"].update(device_changes)
    return parse_profile(data, "test")


def test_cpu_ranks_on_every_core_expose_the_gradient_all_reduce():
    node = _node()
    assert collectives_share_cores(node.device, 2)
    assert not collectives_share_cores(node.device, 1)
    rt = effective_runtime(DEFAULT_RUNTIME, node.device, 2)
    assert not rt.overlap_grad_reduce and not rt.shard_prefetch
    dp = ParallelConfig(dp=2, micro_batch=4, global_batch=8, seq_len=256, precision="fp32")
    one = ParallelConfig(dp=1, micro_batch=4, global_batch=4, seq_len=256, precision="fp32")
    cluster = ClusterSpec.homogeneous(node, 1)
    t_dp = predict(MODEL, cluster, dp)
    t_one = predict(MODEL, ClusterSpec.homogeneous(node.with_gpus_per_node(1), 1), one)
    grads = MODEL.total_params() * 4.0  # fp32 gradients
    exposed = t_dp.step_time_s - t_one.step_time_s
    expected = collective_time("all_reduce", grads, GroupShape(2, 2, 1), node)
    assert exposed == pytest.approx(expected, rel=0.05)
    assert t_dp.time.dp_s == pytest.approx(exposed, rel=0.05)


def test_gpu_profile_keeps_its_overlap():
    node = load_profile("dgx-a100-80gb")
    assert node.device.host_cores == 0
    assert effective_runtime(DEFAULT_RUNTIME, node.device, 8) is DEFAULT_RUNTIME


def test_cpu_flash_attention_pays_the_softmax_pass():
    node = _node()
    cfg = ParallelConfig(micro_batch=4, global_batch=4, seq_len=256, precision="fp32")
    cpu = predict(MODEL, ClusterSpec.homogeneous(node.with_gpus_per_node(1), 1), cfg)
    gpu_like = predict(MODEL, ClusterSpec.homogeneous(_node(host_cores=0).with_gpus_per_node(1), 1), cfg)
    scores = 4 * MODEL.n_heads * 256 * 256
    per_layer = 2 * 4 * scores / (50e9 * 0.3)  # one read+write pass of fp32 scores
    extra = cpu.step_time_s - gpu_like.step_time_s
    assert extra == pytest.approx(MODEL.n_layers * 3.5 * per_layer, rel=0.02)


def test_gemm_uses_the_curve_of_its_dtype():
    node = _node()
    cfg32 = ParallelConfig(micro_batch=4, global_batch=4, seq_len=256, precision="fp32")
    cfg16 = dataclasses.replace(cfg32, precision="bf16")
    cl = ClusterSpec.homogeneous(node.with_gpus_per_node(1), 1)
    t32, t16 = predict(MODEL, cl, cfg32), predict(MODEL, cl, cfg16)
    # bf16: 2x the peak but 0.6/0.9 of the efficiency at large GEMMs -> compute 4/3 faster at most
    ratio = t32.time.compute_s / t16.time.compute_s
    assert 1.0 < ratio < 2.0 * 0.6 / 0.9 + 0.05
    assert isinstance(node.device.matmul_curve("bf16"), EfficiencyCurve)


# ----- calibrated framework section: the executor's building blocks --------------------------
from planner.cost import framework as fw  # noqa: E402
from planner.framework_spec import FrameworkSpec  # noqa: E402
from planner.executor_rules import fsdp_units, ties_embeddings

ZERO_FW = dict.fromkeys(FrameworkSpec.number_fields(), 0.0)


def _fw_node(gpus: int = 2, **fw_values):
    return dataclasses.replace(_node(), framework=FrameworkSpec(**{**ZERO_FW, **fw_values})).with_gpus_per_node(gpus)


def _cfg(**kw):
    base = dict(micro_batch=4, global_batch=8, seq_len=256, precision="fp32")
    return ParallelConfig(**{**base, **kw})


def test_op_costs_replace_the_kernel_overhead():
    """Per-op costs: every counted op of the executor's blocks and edges pays them, per micro-batch."""
    cfg = _cfg(global_batch=8)  # 2 micro-batches
    base = predict(MODEL, ClusterSpec.homogeneous(_fw_node(1), 1), cfg)
    with_ops = predict(MODEL, ClusterSpec.homogeneous(_fw_node(1, op_forward_s=5e-6, op_backward_s=3e-6), 1), cfg)
    f, b = fw.block_ops(MODEL, "none")
    ef, eb = fw.edge_ops(MODEL)
    expected = 2 * (MODEL.n_layers * (5e-6 * f + 3e-6 * b) + 5e-6 * ef + 3e-6 * eb)
    assert with_ops.step_time_s - base.step_time_s == pytest.approx(expected, rel=1e-6)


def test_tp_pays_dtensor_cost_per_linear_and_the_executor_collectives():
    cfg = _cfg(tp=2)
    cl0 = ClusterSpec.homogeneous(_fw_node(), 1)
    cl1 = ClusterSpec.homogeneous(_fw_node(tp_linear_forward_s=100e-6, tp_linear_backward_s=50e-6), 1)
    t0, t1 = predict(MODEL, cl0, cfg), predict(MODEL, cl1, cfg)
    linears = fw.tp_modules(MODEL, MODEL.n_layers)  # block linears + embedding + head
    assert linears == MODEL.n_layers * fw.linears_per_block(MODEL) + 2
    assert t1.step_time_s - t0.step_time_s == pytest.approx(2 * linears * 150e-6, rel=1e-6)
    # the executor all-reduces once per column-parallel linear in backward (4 for GELU), Megatron 2
    gpu_like = predict(MODEL, ClusterSpec.homogeneous(_node(), 1), cfg)
    assert t0.time.tp_s > gpu_like.time.tp_s


def test_framework_wrapper_costs_are_charged_where_the_executor_runs_them():
    dp = _cfg(dp=2)
    base = predict(MODEL, ClusterSpec.homogeneous(_fw_node(), 1), _cfg(dp=2, sharding="fsdp"))
    fsdp = predict(MODEL, ClusterSpec.homogeneous(_fw_node(fsdp_unit_forward_s=1e-3), 1), _cfg(dp=2, sharding="fsdp"))
    units = fsdp_units(MODEL.n_layers, True, ties_embeddings(MODEL, 1, 1))
    m = _cfg(dp=2, sharding="fsdp").num_micro_batches  # 1: 4 sequences per rank
    assert fsdp.step_time_s - base.step_time_s == pytest.approx(m * units * 1e-3, rel=1e-6)
    z0 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(), 1), _cfg(dp=2, sharding="zero1"))
    z1 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(zero1_param_s=1e-4), 1), _cfg(dp=2, sharding="zero1"))
    tensors = MODEL.n_layers * fw.block_param_tensors(MODEL) + sum(fw.edge_param_tensors(MODEL, True))
    assert z1.step_time_s - z0.step_time_s == pytest.approx(tensors * 1e-4, rel=1e-6)
    # DDP pays neither
    d0 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(), 1), dp)
    d1 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(zero1_param_s=1e-4, fsdp_unit_forward_s=1e-3), 1), dp)
    assert d1.step_time_s == pytest.approx(d0.step_time_s, rel=1e-12)


def test_framework_memory_fragmentation_and_overhead():
    cfg = _cfg(global_batch=4)
    cl = lambda **kw: ClusterSpec.homogeneous(_fw_node(1, **kw), 1)  # noqa: E731
    m0 = predict(MODEL, cl(), cfg).memory
    m1 = predict(MODEL, cl(fragmentation_fraction=0.5, training_overhead_bytes=10e6), cfg).memory
    tensors = m0.total_bytes - m0.reserved_bytes
    assert m0.reserved_bytes == 0.0
    assert m1.total_bytes == pytest.approx(1.5 * tensors + 10e6, rel=1e-9)


def test_gpu_predictions_ignore_the_framework_model():
    """A profile without the section predicts as before: same numbers as the Megatron-style model."""
    node = load_profile("dgx-a100-80gb")
    assert node.framework is None
    cfg = ParallelConfig(tp=8, dp=1, micro_batch=1, global_batch=8, seq_len=2048, precision="bf16")
    big = ModelSpec(name="g", n_layers=8, hidden_size=4096, n_heads=32, n_kv_heads=32, ffn_hidden_size=16384,
                    vocab_size=51200, seq_len=2048, mlp="gelu", norm="layernorm", position="learned",
                    tied_embeddings=True, bias=True, dropout=0.0, activation="gelu")
    p = predict(big, ClusterSpec.homogeneous(node, 1), cfg)
    # Megatron's 2 + 2 all-reduces per block, not the executor's per-linear ones
    g = GroupShape(8, 8, 1)
    one = collective_time("all_reduce", 2 * 1 * 2048 * 4096, g, node)
    assert p.time.tp_s == pytest.approx(8 * big.n_layers * 4 * one, rel=1e-6)


def _torch_zb_live_and_pending(pp: int, m: int) -> tuple[list[int], list[int]]:
    """Per rank, in torch's own zero-bubble order: the most micro-batches between their F and W,
    and the most whose B is done and W not at the start of a B that runs with that many live."""
    sch = pytest.importorskip("torch.distributed.pipelining.schedules")
    C = sch._ComputationType
    live_out, pending_out = [], []
    for r in range(pp):
        rounds = max(1, m // pp)
        warm = sch._get_warmup_ops(r, 1, m // rounds, pp, m, multiply_factor=1)
        ops = sch._get_1f1b_rank_ops(1, pp, warm, m - warm, warm, r, lambda step: r, lambda step: r, r,
                                     enable_zero_bubble=True)
        live = peak = pending = 0
        at_peak = []  # (live, pending) at the start of every B
        for a in ops:
            if a is None:
                continue
            if a.computation_type == C.FORWARD:
                live += 1
                peak = max(peak, live)
            elif a.computation_type == C.BACKWARD_INPUT:
                at_peak.append((live, pending))
                pending += 1
            elif a.computation_type == C.BACKWARD_WEIGHT:
                live -= 1
                pending -= 1
        live_out.append(peak)
        pending_out.append(max(p for lv, p in at_peak if lv == max(x for x, _ in at_peak)))
    return live_out, pending_out


@pytest.mark.parametrize("pp,m", [(2, 1), (2, 4), (4, 2), (4, 3), (4, 8)])
def test_executor_zero_bubble_holds_graphs_from_forward_to_weight_grad(pp, m):
    live, pending = _torch_zb_live_and_pending(pp, m)
    assert list(fw.zb_in_flight(pp, m)) == live
    assert list(fw.zb_pending_weight_passes(pp, m)) == pending


def test_executor_zero_bubble_memory_counts_its_in_flight_graphs():
    """With a framework profile the last rank of a ZB pipeline holds min(p, m) activation sets
    (1F1B: one); a GPU profile keeps ZB-H1's count."""
    cfg = _cfg(pp=2, micro_batch=2, global_batch=8, schedule="zb")
    cl = ClusterSpec.homogeneous(_fw_node(2), 1)
    zb = predict(MODEL, cl, cfg)
    one_f1b = predict(MODEL, cl, dataclasses.replace(cfg, schedule="1f1b"))
    assert zb.per_stage[0].memory.activations_bytes == one_f1b.per_stage[0].memory.activations_bytes
    saved_loss = 4.0 * MODEL.vocab_size * 2 * 256  # the second micro-batch's log-softmax output
    # micro-batch 0's output gradients, held from its B to its W: per block q, k, v, o, the MLP's
    # two matrices and two norms; the final norm and the logits
    h, tokens = MODEL.hidden_size, 2 * 256
    per_block = 3 * h + h + MODEL.ffn_hidden_size + h + 2 * h
    held = 4.0 * tokens * ((MODEL.n_layers // 2) * per_block + h + MODEL.vocab_size)
    assert zb.per_stage[1].memory.activations_bytes == pytest.approx(
        2 * one_f1b.per_stage[1].memory.activations_bytes + saved_loss + held)
    from planner.cost.step import peak_memory
    assert peak_memory(MODEL, cl, cfg).peak_bytes == pytest.approx(zb.peak_memory_bytes, rel=1e-9)


def test_executor_last_stage_keeps_the_loss_state_of_every_micro_batch_in_flight():
    """GPipe's last rank holds all m micro-batches: with a framework profile each one past the
    first adds its fp32 log-softmax output (4 bytes per vocabulary entry and token)."""
    cfg = _cfg(pp=2, micro_batch=2, global_batch=8, schedule="gpipe")  # m = 4
    fw_mem = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2), 1), cfg).per_stage[1].memory
    one = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2), 1), dataclasses.replace(cfg, global_batch=2)).per_stage[1].memory
    tokens = 2 * 256
    assert fw_mem.activations_bytes - 4 * one.activations_bytes == pytest.approx(3 * 4.0 * MODEL.vocab_size * tokens)
    gpu = predict(MODEL, ClusterSpec.homogeneous(_node(), 1), cfg).per_stage[1].memory
    gpu_one = predict(MODEL, ClusterSpec.homogeneous(_node(), 1), dataclasses.replace(cfg, global_batch=2)).per_stage[1].memory
    assert gpu.activations_bytes == pytest.approx(4 * gpu_one.activations_bytes)


def test_tp_module_cost_grows_with_its_activation_bytes():
    cfg = _cfg(tp=2)
    cl0 = ClusterSpec.homogeneous(_fw_node(tp_linear_forward_s=100e-6), 1)
    cl1 = ClusterSpec.homogeneous(_fw_node(tp_linear_forward_s=100e-6, tp_linear_forward_s_per_byte=1e-9), 1)
    t0, t1 = predict(MODEL, cl0, cfg), predict(MODEL, cl1, cfg)
    modules = fw.tp_modules(MODEL, MODEL.n_layers)
    act_bytes = 4.0 * 4 * 256 * MODEL.hidden_size  # fp32, micro-batch 4 x 256 tokens x h
    assert t1.step_time_s - t0.step_time_s == pytest.approx(2 * modules * 1e-9 * act_bytes, rel=1e-6)


def test_pipelining_runtime_pays_its_cost_on_every_schedule_action():
    """pp=2 1F1B, m micro-batches, equal stages: the makespan is (m + p - 1)(F + B) + hops, so
    a per-action cost a adds 2 a (m + p - 1); without pipelining it adds nothing."""
    cfg = _cfg(pp=2, micro_batch=2, global_batch=8, schedule="1f1b")  # m = 4
    t0 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2), 1), cfg)
    t1 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2, pp_action_s=1e-3), 1), cfg)
    m, p = cfg.num_micro_batches, cfg.pp
    assert t1.step_time_s - t0.step_time_s == pytest.approx(2 * (m + p - 1) * 1e-3, rel=0.05)
    flat = _cfg(dp=2)
    assert (predict(MODEL, ClusterSpec.homogeneous(_fw_node(2, pp_action_s=1e-3), 1), flat).step_time_s
            == pytest.approx(predict(MODEL, ClusterSpec.homogeneous(_fw_node(2), 1), flat).step_time_s, rel=1e-12))


def test_pipelining_runtime_slows_each_action_by_its_fraction():
    """pp=2 1F1B, equal stages: a slowdown f of every action's work adds f (m + p - 1)(F + B),
    i.e. f times the pipelined part of the step (the optimizer and the hops stay)."""
    cfg = _cfg(pp=2, micro_batch=2, global_batch=8, schedule="1f1b")
    t0 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2), 1), cfg)
    t1 = predict(MODEL, ClusterSpec.homogeneous(_fw_node(2, pp_compute_slowdown=0.1), 1), cfg)
    pipelined = t0.step_time_s - t0.time.optimizer_s - t0.time.pp_s
    assert t1.step_time_s - t0.step_time_s == pytest.approx(0.1 * pipelined, rel=0.05)


def test_zero_bubble_first_stage_runs_its_whole_backward_as_w_and_others_pay_the_split():
    """The executor's first stage has no input gradient: its B holds only the runtime's per-action
    cost and its W the fused backward; a later stage's W carries the split's extra share of its
    fused backward; 1F1B folds W into B and never pays the split."""
    from planner.cost.compute import make_rates

    spec = FrameworkSpec(**{**ZERO_FW, "pp_action_s": 1e-3, "pp_compute_slowdown": 0.5, "zb_split_slowdown": 0.2})
    rates = make_rates(_node().device, "fp32", 2, spec)
    a = rates.ops(1, 1e-3)
    assert a > 0
    f, b, w = fw.pipeline_actions([10.0, 20.0], [4.0, 6.0], [3.0, 5.0], spec, rates, "zb")
    assert f == pytest.approx([15 + a, 30 + a])
    assert b == pytest.approx([a, 9 + a])
    assert w == pytest.approx([1.5 * 7 + a, 1.5 * (5 + 0.2 * 11) + a])
    f, b, w = fw.pipeline_actions([10.0, 20.0], [4.0, 6.0], [3.0, 5.0], spec, rates, "1f1b")
    assert b == pytest.approx([6 + a, 9 + a]) and w == pytest.approx([4.5, 7.5])
    from planner.cost.stacks import FUSED
    assert FUSED.pipeline_actions([1.0], [2.0], [3.0], rates, "zb") == ([1.0], [2.0], [3.0])


def test_executor_ddp_reducer_costs_per_gradient_byte_only_where_ddp_runs():
    cl = lambda **kw: ClusterSpec.homogeneous(_fw_node(2, **kw), 1)  # noqa: E731
    ddp = _cfg(dp=2)
    extra = predict(MODEL, cl(ddp_grad_s_per_byte=1e-9), ddp).step_time_s - predict(MODEL, cl(), ddp).step_time_s
    from planner.cost.memory import stage_parameters

    grads = 4.0 * max(stage_parameters(MODEL, ddp))
    assert extra == pytest.approx(1e-9 * grads, rel=1e-6)
    from planner.cost.framework import param_tensors

    per_tensor = predict(MODEL, cl(ddp_param_s=1e-4), ddp).step_time_s - predict(MODEL, cl(), ddp).step_time_s
    assert per_tensor == pytest.approx(1e-4 * param_tensors(MODEL, ddp), rel=1e-6)
    for other in (_cfg(dp=2, sharding="fsdp"), _cfg(tp=2), _cfg(pp=2, dp=1, micro_batch=2, global_batch=8)):
        assert (predict(MODEL, cl(ddp_grad_s_per_byte=1e-9, ddp_param_s=1e-4), other).step_time_s
                == pytest.approx(predict(MODEL, cl(), other).step_time_s, rel=1e-12))


def test_executor_fsdp_unit_cost_grows_with_each_units_parameter_bytes():
    """FSDP2's per-unit cost per byte: every unit (the blocks and the root, which holds the tied
    embedding and the final norm) pays it on its unsharded parameter bytes, forward and backward,
    once per micro-batch; with every core running a rank nothing hides it."""
    cl = lambda **kw: ClusterSpec.homogeneous(_fw_node(2, **kw), 1)  # noqa: E731
    fsdp = _cfg(dp=2, sharding="fsdp", global_batch=16)  # 2 micro-batches per rank
    base = predict(MODEL, cl(), fsdp).step_time_s
    fwd = predict(MODEL, cl(fsdp_unit_forward_s_per_byte=1e-9), fsdp).step_time_s - base
    bwd = predict(MODEL, cl(fsdp_unit_backward_s_per_byte=1e-9), fsdp).step_time_s - base
    expected = fsdp.num_micro_batches * 1e-9 * 4.0 * MODEL.total_params()
    assert fwd == pytest.approx(expected, rel=1e-3)
    assert bwd == pytest.approx(expected, rel=1e-3)
    assert predict(MODEL, cl(fsdp_unit_forward_s_per_byte=1e-9), _cfg(dp=2)).step_time_s == pytest.approx(
        predict(MODEL, cl(), _cfg(dp=2)).step_time_s, rel=1e-12)


def test_oversubscribed_host_gives_busy_ranks_the_cores_waiting_ranks_leave():
    """4 ranks on 2 cores: a pipeline rank waiting for its peer sleeps, so the busy ranks get
    more than half a core; the step lies between all four computing at once and each busy rank
    on a whole core. 1F1B runs its task order on shared cores (:mod:`planner.schedule_shared`);
    ZB-H1 (a greedy schedule) at the fixed point busy ranks = max(cores, ranks x busy fraction)."""
    from planner.cost.memory import stage_parameters
    from planner.cost.runtime import DEFAULT_RUNTIME
    from planner.cost.step import plan_sites, timed_step

    node = _fw_node(4, op_forward_s=3e-6, op_backward_s=3e-6, op_optimizer_s=3e-6)
    assert node.device.host_cores == 2
    runtime = effective_runtime(DEFAULT_RUNTIME, node.device, 4)
    cluster = ClusterSpec.homogeneous(node, 1)
    for schedule in ("1f1b", "zb"):
        cfg = _cfg(pp=4, micro_batch=1, global_batch=8, schedule=schedule)
        got = predict(MODEL, cluster, cfg)
        params = stage_parameters(MODEL, cfg)

        def at(busy, ranks_on_host=0):
            return timed_step(MODEL, cluster, plan_sites(cluster, cfg), (runtime,), [params], busy, True, ranks_on_host)

        assert at(2.0).step_s < got.step_time_s < at(4.0).step_s
        if schedule == "1f1b":  # the shared schedule: no task faster than on a whole core
            whole = at(2.0).pipe.timeline.tasks
            shortest = {(t.stage, t.kind): t.end_s - t.start_s for t in whole}
            assert all(t.end_s - t.start_s >= shortest[t.stage, t.kind] * (1 - 1e-9) for t in got.timeline)
            assert at(2.0, 4).pipe.makespan_s > at(2.0).pipe.makespan_s  # sharing costs time
        else:
            fixed = [t for t in (at(b / 100) for b in range(200, 401))
                     if abs(t.step_s - got.step_time_s) < 2e-3 * got.step_time_s]
            assert fixed and any(abs(max(2.0, 4 * t.busy_fraction) - t.ranks_busy) < 0.02 for t in fixed)
    # a core per rank: nothing to share, the prediction is the plain one
    two = _fw_node(2, op_forward_s=3e-6, op_backward_s=3e-6, op_optimizer_s=3e-6)
    p2 = _cfg(pp=2, micro_batch=1, global_batch=8)
    assert predict(MODEL, ClusterSpec.homogeneous(two, 1), p2).step_time_s == pytest.approx(
        timed_step(MODEL, ClusterSpec.homogeneous(two, 1), plan_sites(ClusterSpec.homogeneous(two, 1), p2),
                   (effective_runtime(DEFAULT_RUNTIME, two.device, 2),), [stage_parameters(MODEL, p2)], 2,
                   True).step_s, rel=1e-12)


def test_elementwise_kinds_run_at_their_own_measured_rate():
    """A profile's rate for one kind (GELU) changes that kind's time only: forward and backward
    bytes of every block at its rate instead of the pooled memory-bound one (50 GB/s x 0.3)."""
    cfg = _cfg(global_batch=8)  # 2 micro-batches of 4 x 256 tokens
    gelu_gb_s = (3.0, 6.0)
    rates = (("gelu", "fp32", ((1.0, gelu_gb_s[0] * 1e9, gelu_gb_s[1] * 1e9),)),)
    pooled = predict(MODEL, ClusterSpec.homogeneous(_fw_node(1), 1), cfg)
    measured = predict(MODEL, ClusterSpec.homogeneous(_fw_node(1, elementwise_rates=rates), 1), cfg)
    fwd_bytes, bwd_bytes, _ = fw.block_elementwise_bytes(MODEL, 1024, 1024, 1, 4)["gelu"]
    pooled_bw = 50e9 * 0.3
    per_block = (fwd_bytes / (gelu_gb_s[0] * 1e9) + bwd_bytes / (gelu_gb_s[1] * 1e9)
                 - (fwd_bytes + bwd_bytes) / pooled_bw)
    expected = 2 * MODEL.n_layers * per_block
    assert measured.step_time_s - pooled.step_time_s == pytest.approx(expected, rel=1e-6)
    # bf16 activations look up the bf16 rate: none here, so the pooled rate again
    bf16 = _cfg(global_batch=8, precision="bf16")
    assert predict(MODEL, ClusterSpec.homogeneous(_fw_node(1, elementwise_rates=rates), 1), bf16).step_time_s == \
        pytest.approx(predict(MODEL, ClusterSpec.homogeneous(_fw_node(1), 1), bf16).step_time_s, rel=1e-9)


def test_the_attention_core_runs_at_the_measured_rate_of_its_kind_and_width():
    """With a measured SDPA rate for the model's kind (MHA here) and head width, each block's
    core takes its counted forward FLOPs over the forward and backward rates, in place of the
    GEMM curve and softmax pass; a rate for the other kind (GQA) changes nothing."""
    from planner.cost.flops import layer_forward_flops

    cfg = _cfg(global_batch=8)  # 2 micro-batches of 4 x 256 tokens
    d = f"mha_d{MODEL.d_head}"
    rates = ((d, "fp32", ((128.0, 30e9, 12e9), (512.0, 60e9, 24e9))),)
    slower = ((d, "fp32", ((128.0, 15e9, 6e9), (512.0, 30e9, 12e9))),)
    base, fast, slow = (predict(MODEL, ClusterSpec.homogeneous(_fw_node(1, attention_rates=r), 1), cfg)
                        for r in ((), rates, slower))
    flops = layer_forward_flops(MODEL, 1024, 256).core
    f_rate, b_rate = 30e9 * 2 ** 0.5, 12e9 * 2 ** 0.5  # 256: the geometric middle of 128 and 512
    assert slow.step_time_s - fast.step_time_s == pytest.approx(
        2 * MODEL.n_layers * (flops / f_rate + flops / b_rate), rel=1e-6)
    assert fast.step_time_s != pytest.approx(base.step_time_s, rel=1e-3)
    other = ((f"gqa_d{MODEL.d_head}", "fp32", rates[0][2]),)
    assert predict(MODEL, ClusterSpec.homogeneous(_fw_node(1, attention_rates=other), 1), cfg).step_time_s == \
        pytest.approx(base.step_time_s, rel=1e-12)


def test_elementwise_rate_interpolates_in_log_log_between_sizes():
    spec = FrameworkSpec(**{**ZERO_FW, "elementwise_rates": (
        ("rope", "fp32", ((1e6, 8e9, 16e9), (4e6, 2e9, 4e9))),)})
    assert spec.elementwise_rate("rope", "fp32", 2e6) == pytest.approx((4e9, 8e9), rel=1e-9)  # geometric middle
    assert spec.elementwise_rate("rope", "fp32", 1e3) == (8e9, 16e9)   # below: the first point
    assert spec.elementwise_rate("rope", "fp32", 1e9) == (2e9, 4e9)    # above: the last
    assert spec.elementwise_rate("gelu", "fp32", 2e6) is None


def test_optimizer_uses_the_measured_adamw_rate():
    """With an ``adamw`` rate the optimizer step is the executor's AdamW(foreach=False) traffic
    (84 bytes per parameter) at that rate, plus the per-op costs, instead of the fused 28 bytes
    at the pooled memory-bound rate."""
    from planner.cost.memory import stage_parameters
    from planner.cost.optimizer import optimizer_s
    from planner.cost.compute import make_rates

    cfg = _cfg(global_batch=8)
    rates_adamw = (("adamw", "fp32", ((1.0, 30e9, 30e9),)),)
    node = _fw_node(1, op_optimizer_s=4e-6, elementwise_rates=rates_adamw)
    rates = make_rates(node.device, "fp32", 1, node.framework)
    params = max(stage_parameters(MODEL, cfg))
    tensors = fw.model_param_tensors(MODEL, ties_embeddings(MODEL, 1, 1))
    expected = fw.ADAMW_BYTES_PER_PARAM * params / 30e9 + tensors * fw.ADAM_OPS_PER_PARAM * 4e-6
    assert optimizer_s(MODEL, cfg, rates) == pytest.approx(expected, rel=1e-9)


def test_in_step_slowdowns_scale_each_phase_compute_not_the_per_op_costs():
    """``step_*_slowdown``: forward compute x1.3, backward x1.2, the optimizer's traffic x1.5;
    the per-op costs (measured inside autograd) stay as they are."""
    from planner.cost.compute import make_rates
    from planner.cost.optimizer import optimizer_s

    cfg = _cfg(global_batch=4)
    rates_adamw = (("adamw", "fp32", ((1.0, 30e9, 30e9),)),)
    ops = dict(op_forward_s=5e-6, op_backward_s=3e-6, op_optimizer_s=4e-6, elementwise_rates=rates_adamw)
    slow = dict(step_forward_slowdown=0.3, step_backward_slowdown=0.2, step_optimizer_slowdown=0.5)

    def phases(**fw_values):
        node = _fw_node(1, **fw_values)
        t = predict(MODEL, ClusterSpec.homogeneous(node, 1), cfg).to_dict()["breakdown"]["time"]
        opt = optimizer_s(MODEL, cfg, make_rates(node.device, "fp32", 1, node.framework))
        return t["forward_s"], t["backward_s"], opt

    bare, bare_slow = phases(elementwise_rates=rates_adamw), phases(elementwise_rates=rates_adamw, **slow)
    with_ops, with_ops_slow = phases(**ops), phases(**ops, **slow)
    for i, scale in enumerate((1.3, 1.2, 1.5)):
        assert bare_slow[i] == pytest.approx(scale * bare[i], rel=1e-9)
        assert with_ops_slow[i] - bare_slow[i] == pytest.approx(with_ops[i] - bare[i], rel=1e-9)


def test_a_lockstep_wait_frees_no_core_for_the_compute():
    """4 data-parallel ranks on 2 cores compute at the same time and wait out their gradient
    reduction at the same time: a slower reduction leaves their forward as slow as before (only
    the pipeline's idle time frees cores for a peer)."""
    from planner.calibrate.fit_runs import apply_params
    from planner.cost.runtime import get_runtime

    node = load_profile("local-cpu").with_gpus_per_node(4)
    model = ModelSpec(name="g", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                      vocab_size=4096, seq_len=128)
    par = ParallelConfig(dp=4, micro_batch=2, global_batch=8, seq_len=128, precision="fp32")
    executor = get_runtime("executor")
    fast = predict(model, ClusterSpec.homogeneous(node, 1), par, executor, timeline=False)
    slow_node = apply_params(node, {"intra_bandwidth_scale": 0.05, "latency_scale": 20.0})
    slow = predict(model, ClusterSpec.homogeneous(slow_node, 1), par, executor, timeline=False)
    assert slow.time.dp_s > 2 * fast.time.dp_s
    assert slow.time.forward_s == pytest.approx(fast.time.forward_s, rel=1e-6)
