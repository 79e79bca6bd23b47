"""Formula checks: FLOPs vs Megatron eq. 3, activations vs Korthikanti, ring collectives."""
import pytest

from planner.cost.comm import GroupShape, collective_time, ring_bus_factor
from planner.cost.flops import megatron_eq3_flops, step_flops
from planner.cost.memory import korthikanti_layer_bytes, layer_activation_bytes
from planner.model import ModelSpec
from planner.profile_yaml import load_profile


def gpt(l=24, h=2048, a=16, V=51200, s=2048):
    # GPT as in eq. 3: ffn = 4h, no biases (eq. 3 ignores them), dropout 0.1
    return ModelSpec(name="gpt", n_layers=l, hidden_size=h, n_heads=a, n_kv_heads=a,
                     ffn_hidden_size=4 * h, vocab_size=V, seq_len=s, bias=False, dropout=0.1)


@pytest.mark.parametrize("l,h,a,s", [(24, 2304, 24, 2048), (96, 12288, 96, 2048), (128, 25600, 160, 4096)])
def test_eq3(l, h, a, s):
    m = gpt(l, h, a, s=s)
    B = 512
    model_flops, hw_full = step_flops(m, B, s, "full")
    assert hw_full == pytest.approx(megatron_eq3_flops(B, s, l, h, 51200, recompute=True), rel=1e-12)
    assert model_flops == pytest.approx(megatron_eq3_flops(B, s, l, h, 51200, recompute=False), rel=1e-12)
    _, hw_none = step_flops(m, B, s, "none")
    assert hw_none == model_flops
    _, hw_sel = step_flops(m, B, s, "selective")
    assert model_flops < hw_sel < hw_full


@pytest.mark.parametrize("t,sp,rc", [(1, False, "none"), (8, False, "none"), (8, True, "none"),
                                     (1, False, "selective"), (4, False, "selective"),
                                     (8, True, "selective"), (1, False, "full"), (8, True, "full"),
                                     (8, False, "full")])
def test_korthikanti_activations(t, sp, rc):
    m = gpt(h=6144, a=48)
    s, b = 2048, 4
    got = layer_activation_bytes(m, b, s, t, 1, sp, rc, "bf16", attention="unfused")
    assert got == pytest.approx(korthikanti_layer_bytes(s, b, 6144, 48, t, sp, rc), rel=1e-12)


def test_korthikanti_closed_form_numbers():
    s, b, h, a = 2048, 1, 12288, 96
    assert korthikanti_layer_bytes(s, b, h, a) == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    assert korthikanti_layer_bytes(s, b, h, a, 8, True, "selective") == pytest.approx(s * b * h * 34 / 8)


def test_activation_variants():
    m = gpt(h=4096, a=32)
    base = layer_activation_bytes(m, 2, 2048, 1, 1, False, "none", "bf16", "unfused")
    assert layer_activation_bytes(m, 2, 2048, 1, 1, False, "none", "fp32", "unfused") == pytest.approx(2 * base, rel=0.2)
    nodrop = ModelSpec(**{**m.to_dict(), "dropout": 0.0})
    assert layer_activation_bytes(nodrop, 2, 2048, 1, 1, False, "none", "bf16", "unfused") < base
    assert layer_activation_bytes(m, 2, 2048, 1, 1, False, "none", "bf16", "flash") < base


def test_ring_factors():
    assert ring_bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert ring_bus_factor("all_gather", 8) == pytest.approx(7 / 8)
    assert ring_bus_factor("reduce_scatter", 4) == pytest.approx(3 / 4)
    assert ring_bus_factor("all_reduce", 1) == 0.0


def test_collective_intra_node_formula():
    node = load_profile("dgx-a100-80gb")
    S = 1e9
    t = collective_time("all_reduce", S, GroupShape(8, 8, 1), node)
    link = node.intra_node
    expect = 14 * link.latency_s + 2 * 7 / 8 * S / link.effective_bandwidth_bytes_per_s
    assert t == pytest.approx(expect)
    # all-gather moves half the bytes of all-reduce
    ag = collective_time("all_gather", S, GroupShape(8, 8, 1), node)
    assert ag < t


def test_hierarchical_slower_than_intra_and_rail_aware():
    node = load_profile("dgx-a100-80gb")
    S = 4e9
    intra = collective_time("all_reduce", S, GroupShape(8, 8, 1), node)
    multi = collective_time("all_reduce", S, GroupShape(64, 8, 8), node)
    one_per_node = collective_time("all_reduce", S, GroupShape(8, 1, 8), node)
    assert intra < multi < one_per_node


def test_tied_embedding_gradient_sync_between_first_and_last_stage():
    """pp > 1 with tied embeddings: one FP32 all-reduce of the embedding's gradient (vocab x h
    / tp) between the two stages holding it, across nodes when the pipeline spans them; nothing
    without pp, without tying, or in the executor (it unties under pp)."""
    import dataclasses
    from planner.cost.data_parallel import tied_embedding_sync_s
    from planner.plan import ParallelConfig
    node = load_profile("dgx-a100-80gb")
    m = gpt(l=24, h=4096, a=32)
    P = ParallelConfig(tp=4, pp=4, dp=1, micro_batch=1, global_batch=8, seq_len=2048)
    grad_bytes = 51200 * 4096 / 4 * 4.0
    assert tied_embedding_sync_s(m, node, P, 4.0) == pytest.approx(
        collective_time("all_reduce", grad_bytes, GroupShape(2, 1, 2), node))
    inside = dataclasses.replace(P, tp=2, pp=4)
    assert tied_embedding_sync_s(m, node, inside, 4.0) == pytest.approx(
        collective_time("all_reduce", grad_bytes * 2, GroupShape(2, 2, 1), node))
    assert tied_embedding_sync_s(m, node, dataclasses.replace(P, pp=1, dp=4), 4.0) == 0.0
    assert tied_embedding_sync_s(dataclasses.replace(m, tied_embeddings=False), node, P, 4.0) == 0.0
    assert tied_embedding_sync_s(m, load_profile("local-cpu"), P, 4.0) == 0.0


def test_deepspeed_pipeline_all_reduces_zero1_gradients_whole():
    """Megatron-DeepSpeed with pp > 1 all-reduces the FP32 gradients (twice a reduce-scatter's
    ring traffic) before ZeRO-1's weight all-gather; without pp its ZeRO-1 reduce-scatters."""
    import dataclasses
    from planner.cost.runtime import get_runtime
    from planner.cost.step import cluster_for, predict
    from planner.plan import ParallelConfig
    m = gpt(l=24, h=4096, a=32)
    cluster = cluster_for("dgx-a100-80gb", 8)
    ds = get_runtime("megatron-deepspeed")
    plain = dataclasses.replace(ds, pipeline_grad_all_reduce=False)
    P = ParallelConfig(tp=4, pp=4, dp=4, micro_batch=1, global_batch=64, seq_len=2048, sharding="zero1",
                       recompute="full")
    assert predict(m, cluster, P, ds).time.dp_s > predict(m, cluster, P, plain).time.dp_s
    flat = dataclasses.replace(P, pp=1, dp=16)
    assert predict(m, cluster, flat, ds).time.dp_s == pytest.approx(predict(m, cluster, flat, plain).time.dp_s)


def test_an_emulated_link_fit_recovers_a_known_link():
    """calibrate --emulated's fit: latency from the small messages, bandwidth from the large ones,
    in the forms collective_time prices (2-rank all-reduce across nodes: 2 steps; a send: 1)."""
    from planner.calibrate.emulated import fit_link

    latency, bandwidth = 150e-6, 100e6
    results = [{"op": op, "group_size": 2, "bytes": b, "median_s": steps * latency + b / bandwidth}
               for op, steps in (("all_reduce", 2), ("send_recv", 1)) for b in (4, 4096, 1 << 20, 8 << 20)]
    fit = fit_link(results, line_bytes_per_s=125e6)
    assert fit.latency_s == pytest.approx(latency, rel=1e-3)
    assert fit.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=1e-3)
    assert fit.bus_efficiency == pytest.approx(0.8, rel=1e-3)
    node = load_profile("local-cpu")
    import dataclasses
    link = dataclasses.replace(node.inter_node, latency_s=fit.latency_s, bandwidth_bytes_per_s=125e6,
                               bus_efficiency=fit.bus_efficiency)
    priced = collective_time("all_reduce", 8 << 20, GroupShape(2, 1, 2), dataclasses.replace(node, inter_node=link))
    assert priced == pytest.approx(2 * latency + (8 << 20) / bandwidth, rel=1e-3)


def test_flash_attention_runs_at_the_stacks_measured_kernel_rate():
    """On H100 the attention core runs at the kernel's measured causal rate (FlashAttention-3
    paper tables): Transformer Engine's cuDNN kernel for Megatron-Core, FlashAttention-2 for a
    PyTorch SDPA stack; half the s x s product under the causal mask; a device without tables
    (A100) keeps the GEMM efficiency."""
    import dataclasses

    from planner.cost.compute import layer_times, make_rates
    from planner.cost.flops import layer_forward_flops
    from planner.cost.runtime import get_runtime

    m = ModelSpec("llama-ish", n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, ffn_hidden_size=14336,
                  vocab_size=128256, seq_len=8192, mlp="swiglu", norm="rmsnorm", position="rope",
                  tied_embeddings=False, bias=False)
    h100 = load_profile("dgx-h100-80gb").device
    rates = make_rates(h100, "bf16", 1)
    core = layer_forward_flops(m, 8192, 8192).core
    for runtime, kernel, fwd_tflops in (("megatron-core", "cudnn", 529), ("torchtitan", "flash2", 333)):
        lt = layer_times(m, 1, 8192, 1, 1, False, "none", "bf16", rates, get_runtime(runtime))
        assert lt.core_fwd_s == pytest.approx(core / 2 / (fwd_tflops * 1e12) + rates.overhead_s, rel=1e-9)
        k = h100.attention_kernel(kernel)
        bwd = k.backward(8192) * k.forward_causal(8192) / k.forward(8192) * h100.peak_flops("bf16")
        assert lt.core_bwd_s == pytest.approx(2.5 * core / 2 / bwd + rates.overhead_s, rel=1e-9)
    a100 = load_profile("dgx-a100-80gb").device
    plain = layer_times(m, 1, 8192, 1, 1, False, "none", "bf16", make_rates(a100, "bf16", 1),
                        get_runtime("megatron-core"))
    untabled = dataclasses.replace(h100, attention_kernels=())
    slow = layer_times(m, 1, 8192, 1, 1, False, "none", "bf16", make_rates(untabled, "bf16", 1),
                       get_runtime("megatron-core"))
    assert plain.core_fwd_s > 0 and slow.core_fwd_s != pytest.approx(
        layer_times(m, 1, 8192, 1, 1, False, "none", "bf16", rates, get_runtime("megatron-core")).core_fwd_s)


def test_nccl_rings_over_nodes_stream_at_the_nodes_nic_bandwidth():
    """A multi-node ring all-reduce on DGX A100 (8 HDR NICs) reaches ~k NICs of bus bandwidth
    whatever the node count (NVIDIA/nccl#689: "a top speed of 190 GB/s"), not a hierarchical sum."""
    node = load_profile("dgx-a100-80gb")
    nic = 8 * node.inter_node.effective_bandwidth_bytes_per_s
    size = 2.0 ** 30
    for nodes in (2, 4):
        n = 8 * nodes
        busbw = 2 * (n - 1) / n * size / collective_time("all_reduce", size, GroupShape(n, 8, nodes), node)
        assert 0.95 * nic < busbw <= nic


def test_a_small_all_reduce_over_many_nodes_takes_nccls_tree_not_the_rings_latency():
    node = load_profile("dgx-a100-80gb")
    g = GroupShape(1024, 8, 128)
    small = collective_time("all_reduce", 1e6, g, node)
    ring_latency = 2 * 127 * node.inter_node.latency_s + (2 * 1023 - 2 * 127) * node.intra_node.latency_s
    assert small < 0.1 * ring_latency  # log2(128) tree levels up and down, not 2(n-1) ring steps
    big = 2.0 ** 30  # large messages stay on the ring (the tree has 0.92 of its bandwidth)
    intra, inter = node.intra_node, node.inter_node
    ring = (2 * inter.latency_s + 28 * intra.latency_s
            + 2 * 15 / 16 * big * max(7 / 8 / intra.effective_bandwidth_bytes_per_s,
                                      1 / (8 * inter.effective_bandwidth_bytes_per_s)))
    assert collective_time("all_reduce", big, GroupShape(16, 8, 2), node) == pytest.approx(ring)
