"""CPU-host physics of the cost model: collectives share the cores (no comm/compute overlap when
ranks occupy every core), the CPU flash-attention softmax pass, per-dtype GEMM curves."""
from __future__ import annotations

import dataclasses

import pytest

from planner.cost.comm import GroupShape, collective_time
from planner.cost.runtime import DEFAULT_RUNTIME
from planner.cost.step import collectives_share_cores, effective_runtime, predict
from planner.hardware import ClusterSpec, EfficiencyCurve, load_profile, parse_profile
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
