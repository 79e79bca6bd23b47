"""CPU ranks over several nodes are priced by gloo's own algorithms (planner.cost.gloo) and by
how the node's ranks share its link: hand-computed cases."""
import dataclasses

import pytest

from planner import emulate
from planner.cost import gloo
from planner.cost.block import pipeline_hop_s
from planner.cost.comm import GroupShape, collective_time, p2p_time
from planner.hardware import LinkSpec
from planner.io import parse_yaml
from planner.profile_yaml import load_profile, parse_profile
from planner.profile_write import profile_yaml

NODE_BYTES_PER_S = 25e6  # 200 Mbit/s


@pytest.fixture(scope="module")
def node():
    """Two ranks per node sharing one 200 Mbit/s link (no latency, efficiency 1, fast loopback)."""
    base = emulate.node_profile(load_profile("local-cpu"), emulate.EmulatedCluster(2, 200), 2)
    inter = LinkSpec(bandwidth_bytes_per_s=NODE_BYTES_PER_S / 2, latency_s=0.0, bus_efficiency=1.0)
    intra = LinkSpec(bandwidth_bytes_per_s=1e12, latency_s=0.0, bus_efficiency=1.0)
    return dataclasses.replace(base, inter_node=inter, intra_node=intra)


def test_a_flat_ring_over_two_shared_links_moves_its_whole_traffic_over_each(node):
    s = 8e6
    # 4 ranks, 2 per node: the ring's one edge leaving each node carries 2(n-1)/n * S at the whole link
    t = collective_time("all_reduce", s, GroupShape(4, 2, 2), node)
    assert t == pytest.approx(1.5 * s / NODE_BYTES_PER_S)
    # two 2-rank groups (one rank per node) cross at once: each gets half the link
    t2 = collective_time("all_reduce", s, GroupShape(2, 1, 2), node)
    assert t2 == pytest.approx(1.0 * s / (NODE_BYTES_PER_S / 2))


def test_gloo_reduce_scatter_costs_an_all_reduce(node):
    g = GroupShape(4, 2, 2)
    assert collective_time("reduce_scatter", 4e6, g, node) == pytest.approx(collective_time("all_reduce", 4e6, g, node))
    assert collective_time("all_gather", 4e6, g, node) == pytest.approx(0.5 * collective_time("all_reduce", 4e6, g, node))


def test_broadcast_tree_sends_two_messages_over_the_link_per_root(node):
    # root 0 of {0,1 | 2,3}: 0->1 inside, then 0->2 and 1->3 both leave node 0
    assert gloo._tree_messages(4, 2, 0) == (2, 1, 2)
    s = 8e6
    t = gloo.broadcast_all_s(s, 4, GroupShape(4, 2, 2), node)  # one group per node: the whole link
    assert t == pytest.approx(2 * s / NODE_BYTES_PER_S, rel=1e-6)


def test_one_sender_per_node_gets_the_whole_shared_link(node):
    s = 1e6
    assert p2p_time(s, True, node, senders_per_node=1) == pytest.approx(s / NODE_BYTES_PER_S)
    assert p2p_time(s, True, node) == pytest.approx(2 * s / NODE_BYTES_PER_S)
    per_nic = dataclasses.replace(node, inter_node_shared=False)
    assert p2p_time(s, True, per_nic, senders_per_node=1) == pytest.approx(2 * s / NODE_BYTES_PER_S)


def test_the_executor_sends_whole_activations_between_tp_stages_without_sp(node):
    act = 1e6
    full = pipeline_hop_s(node, act, 2, False, 2, True)
    sharded = pipeline_hop_s(node, act, 2, True, 2, True)
    assert full == pytest.approx(2 * sharded)
    gpu = load_profile("dgx-h100-80gb")  # Megatron's scatter-gather: 1/tp either way
    assert pipeline_hop_s(gpu, act, 8, False, 8, True) == pytest.approx(pipeline_hop_s(gpu, act, 8, True, 8, True))


def test_the_shared_link_flag_round_trips_through_the_profile_file(node):
    def again(n):
        return parse_profile(parse_yaml(profile_yaml(n), "profile", "test"))
    assert again(node).inter_node_shared is True
    assert again(load_profile("dgx-h100-80gb")).inter_node_shared is False


def test_emulated_nodes_share_the_hosts_cores(node):
    base = load_profile("local-cpu")
    assert node.device.host_cores == pytest.approx(base.device.host_cores / 2)


def test_the_root_unit_of_a_model_the_executor_unties_holds_its_lm_head(node):
    from planner.cost.compute import make_rates
    from planner.cost.stacks import stack_of
    from planner.model import ModelSpec
    model = ModelSpec(name="t", n_layers=2, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                      vocab_size=4096, seq_len=128, tied_embeddings=True)
    g = GroupShape(2, 1, 2)
    rates = make_rates(node.device, "fp32", 2, node.framework)
    _, _, head_f, _ = stack_of(node).fsdp_edge_s(model, node, rates, g, tp=2, pp=1, precision="fp32", sharding="none")
    assert head_f >= collective_time("all_gather", model.vocab_size * model.hidden_size / 2 * 4, g, node)


def test_collectives_across_nodes_count_as_waiting_not_computing(node, tmp_path):
    from planner.cost.compute import make_rates
    from planner.cost.shared_host import link_wait_s
    from planner.cost.step import _bind, cluster_for, stage_times
    from planner.model import ModelSpec
    from planner.plan import ParallelConfig
    model = ModelSpec(name="t", n_layers=2, hidden_size=256, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024,
                      vocab_size=4096, seq_len=128)
    path = tmp_path / "node.yaml"
    path.write_text(profile_yaml(node))
    waits = {}
    for order in ("tp-cp-dp-pp", "pp-cp-tp-dp"):  # tp inside a node (pp across), then tp across the nodes
        P = ParallelConfig(tp=2, pp=2, micro_batch=2, global_batch=8, seq_len=128, precision="fp32", order=order)
        cluster, sites, ranks, runtimes = _bind(model, cluster_for(str(path), 2, 2), P, None)
        rates = tuple(make_rates(s.node.device, P.precision, ranks, s.node.framework) for s in sites)
        st = stage_times(model, cluster, sites, runtimes, rates)
        waits[order] = link_wait_s(P, st, 2)
    assert waits["pp-cp-tp-dp"] > 0 and waits["tp-cp-dp-pp"] == 0.0


def test_a_ring_whose_edges_move_more_bytes_than_the_cores_can_runs_at_the_cores_pace(node):
    s = 8e6
    g = GroupShape(4, 2, 2)
    link_s = collective_time("all_reduce", s, g, node)
    costly = dataclasses.replace(node, link_cpu_s_per_byte=(100e-9, 1e-9))
    cores = costly.device.host_cores
    # per node each step: one edge leaving it and one inside it, one ring of the axis per node
    cpu_s = 6 * s / 4 * (100e-9 + 1e-9) / cores
    assert cpu_s > link_s
    assert collective_time("all_reduce", s, g, costly) == pytest.approx(cpu_s)
    assert cpu_s > 0 and collective_time("all_reduce", s, g, dataclasses.replace(node, link_cpu_s_per_byte=(0.0, 0.0))) == link_s
    back = parse_profile(parse_yaml(profile_yaml(costly), "profile", "test"))
    assert back.link_cpu_s_per_byte == pytest.approx((100e-9, 1e-9))


def test_pipeline_sends_cost_the_host_cpu_of_the_bytes_they_move(node):
    """pp=4 over 2 nodes of 2 ranks: the boundary between stages 1 and 2 crosses the link; every
    task pays half the host CPU per byte of what it receives and half of what it sends, at the
    rate across for a crossing boundary, inside otherwise; the shared schedule takes longer."""
    from planner.cost.shared_host import _send_cpu_s
    from planner.cost.step import predict
    from planner.hardware import ClusterSpec
    from planner.plan import ParallelConfig
    from planner.presets import PRESETS

    P = ParallelConfig(pp=4, micro_batch=2, global_batch=8, seq_len=128, precision="fp32")
    across, inside = 10e-9, 1e-9
    cpu_node = dataclasses.replace(node, link_cpu_s_per_byte=(across, inside))
    size = 1e6
    got = _send_cpu_s(P, cpu_node, size)
    assert got == pytest.approx([size * inside / 2, size * (across + inside) / 2,
                                 size * (inside + across) / 2, size * inside / 2])
    assert _send_cpu_s(P, dataclasses.replace(node, link_cpu_s_per_byte=(0.0, 0.0)), size) == [0.0] * 4
    model = PRESETS["tiny-gpt"]
    free = predict(model, ClusterSpec.homogeneous(dataclasses.replace(node, link_cpu_s_per_byte=(0.0, 0.0)), 2), P)
    paid = predict(model, ClusterSpec.homogeneous(cpu_node, 2), P)
    assert paid.step_time_s > free.step_time_s


@pytest.mark.parametrize("cpu_ns, alone", [(0.0, 2.0), (20.0, 2.0), (30.0, 80 / 60), (100.0, 1.0)])
def test_a_wait_alone_on_the_link_is_faster_as_far_as_its_host_cpu_allows(node, cpu_ns, alone):
    """pp inside a node, tp across: the two stages' tp groups were priced on the node's link at
    once (2 senders, 12.5 MB/s each: 80 ns a byte, or 2 x the CPU per byte on one core where that
    is slower). Alone a group has the whole link (40 ns a byte) but its bytes' CPU at half the core
    the other stage leaves it (2 x the CPU per byte): at most 2x faster, not at all where the CPU
    bounds the transfer."""
    from planner.cost.shared_host import _link_sharing
    from planner.plan import ParallelConfig

    P = ParallelConfig(tp=2, pp=2, micro_batch=2, global_batch=8, seq_len=128, precision="fp32", order="pp-cp-tp-dp")
    one_core = dataclasses.replace(node, link_cpu_s_per_byte=(cpu_ns * 1e-9, 0.0),
                                   device=dataclasses.replace(node.device, host_cores=1.0))
    senders, got = _link_sharing(P, one_core)
    assert senders == 2.0 and got == pytest.approx(alone)
    assert _link_sharing(P, dataclasses.replace(one_core, inter_node_shared=False)) == (0.0, 1.0)


def _spanning_rows(op: str, n: int, k: int, per_byte_s: float) -> list[dict]:
    """A measured table across nodes: 1 ms latency plus ``per_byte_s`` per byte of S."""
    return [{"op": op, "group_size": n, "ranks_per_node": k, "bytes": b, "median_s": 1e-3 + b * per_byte_s}
            for b in (4, 4096, 1 << 20, 4 << 20)]


def test_a_table_measured_across_nodes_prices_only_the_layout_it_was_measured_on(node):
    from planner.calibrate.emulated import LinkFit, emulated_node

    rows = _spanning_rows("all_reduce", 4, 2, 1e-6)
    fit = LinkFit(latency_s=0.0, bandwidth_bytes_per_s=NODE_BYTES_PER_S / 2, line_bytes_per_s=NODE_BYTES_PER_S / 2,
                  rows=())
    measured = dataclasses.replace(emulated_node(node, emulate.EmulatedCluster(2, 200), 2, fit, rows),
                                   inter_node=node.inter_node, intra_node=node.intra_node)
    s = 2 ** 21  # between two measured sizes: interpolated in log-log
    lo, hi = 1e-3 + (1 << 20) * 1e-6, 1e-3 + (4 << 20) * 1e-6
    assert collective_time("all_reduce", s, GroupShape(4, 2, 2), measured) == pytest.approx((lo * hi) ** 0.5)
    # another layout, another op: the link formula, as without the table
    for op, g in (("all_reduce", GroupShape(2, 1, 2)), ("all_gather", GroupShape(4, 2, 2))):
        assert collective_time(op, s, g, measured) == pytest.approx(collective_time(op, s, g, node))
    # a table measured inside one node never prices a group spanning nodes
    assert measured.measured_collective("all_reduce", 4) is not None
    assert measured.measured_collective("all_reduce", 4).ranks_per_node == 0
    # it was measured with the node's two ranks at once: another rank count drops it
    assert measured.with_gpus_per_node(1).measured_collective("all_reduce", 4, 2) is None


def test_tables_across_nodes_round_trip_and_are_checked():
    from planner.calibrate.profile import fit_collectives
    from planner.errors import InputError
    from planner.hardware import MeasuredCollective

    base = load_profile("local-cpu")
    spanning, _ = fit_collectives(_spanning_rows("all_gather", 4, 2, 2e-6) + _spanning_rows("all_reduce", 2, 1, 1e-6))
    assert {(c.op, c.group_size, c.ranks_per_node) for c in spanning} == {("all_gather", 4, 2), ("all_reduce", 2, 1)}
    node = dataclasses.replace(base, gpus_per_node=2, collectives=base.collectives + tuple(spanning))
    back = parse_profile(parse_yaml(profile_yaml(node), "profile", "test"))
    assert [(c.op, c.group_size, c.ranks_per_node) for c in back.collectives] == \
        [(c.op, c.group_size, c.ranks_per_node) for c in node.collectives]
    assert [t for _, t in back.collectives[-1].times_s] == pytest.approx([t for _, t in node.collectives[-1].times_s], rel=1e-5)
    with pytest.raises(InputError, match="ranks_per_node"):
        MeasuredCollective("all_reduce", 4, 1e-4, 1e9, ranks_per_node=3)
    data = parse_yaml(profile_yaml(node), "profile", "test")
    data["collectives"][-1]["ranks_per_node"] = "two"
    with pytest.raises(InputError, match=r"collectives\[\d+\]\.ranks_per_node"):
        parse_profile(data)
