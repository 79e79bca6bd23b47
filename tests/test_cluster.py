from pathlib import Path

import pytest
import yaml

from planner.cluster import Cluster, FabricSpec, load_cluster, parse_cluster
from planner.errors import InputError
from planner.hardware import ClusterSpec
from planner.profile_yaml import load_profile
from planner.units import GB

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "hardware_profiles"
needs_profiles = pytest.mark.skipif(
    not (PROFILES / "dgx-a100-80gb.yaml").exists() or not (PROFILES / "dgx-h100-80gb.yaml").exists(),
    reason="dgx-a100-80gb / dgx-h100-80gb profiles not present")


def write_profile(path: Path, name: str, tflops: float, intra: float, inter: float) -> Path:
    """A profile with the schema planner/hardware.py parses (test fixture numbers)."""
    data = {
        "name": name,
        "description": "test fixture",
        "device": {"name": name.upper(), "peak_tflops": {"bf16": tflops}, "hbm_gib": 80,
                   "hbm_bandwidth_gb_s": 2000, "matmul_efficiency": [[1.0e9, 0.5], [1.0e12, 0.8]],
                   "memory_bound_efficiency": 0.8, "kernel_overhead_us": 4, "reserved_gib": 2,
                   "fragmentation_fraction": 0.05},
        "node": {"gpus_per_node": 8,
                 "intra_node": {"bandwidth_gb_s": intra, "latency_us": 3, "bus_efficiency": 0.8},
                 "inter_node": {"bandwidth_gb_s": inter, "latency_us": 10, "bus_efficiency": 0.9}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def fixture_dir(tmp_path):
    write_profile(tmp_path / "slow.yaml", "slow", 312, 300, 25)
    write_profile(tmp_path / "fast.yaml", "fast", 989, 450, 50)
    return tmp_path


def cluster_file(tmp_path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_profiles_by_relative_path_and_default_fabric(fixture_dir):
    path = cluster_file(fixture_dir, {"name": "mix", "groups": [{"profile": "slow.yaml", "nodes": 2},
                                                                  {"profile": "fast.yaml", "nodes": 3}]})
    c = load_cluster(path)
    assert isinstance(c, ClusterSpec) and isinstance(c, Cluster)
    assert c.world_size == 40 and c.n_nodes == 5 and not c.is_homogeneous
    assert [n.name for n in c.node_types] == ["slow", "fast"]
    slow, fast = c.node_types
    link = c.fabric.link_between(slow, fast)  # slower NIC wins
    assert link.bandwidth_bytes_per_s == 25 * GB and link.latency_s == pytest.approx(10e-6)
    assert c.fabric.link_between(fast, fast) == fast.inter_node


def test_fabric_override_and_gpus_per_node(fixture_dir):
    path = cluster_file(fixture_dir, {
        "name": "mix", "groups": [{"profile": "slow.yaml", "nodes": 1, "gpus_per_node": 4},
                                  {"profile": "fast.yaml", "nodes": 1}],
        "fabric": {"nodes_per_leaf": 1, "oversubscription": 2,
                   "between": [{"node_types": ["fast", "slow"], "bandwidth_gb_s": 12.5}]}})
    c = load_cluster(path)
    assert c.world_size == 12
    assert c.fabric.nodes_per_leaf == 1 and c.fabric.oversubscription == 2.0
    link = c.fabric.link_between(*c.node_types)
    assert link.bandwidth_bytes_per_s == 12.5 * GB
    assert link.bus_efficiency == 0.9  # defaulted from the profiles


@pytest.mark.parametrize("data, field", [
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}], "colour": "red"}, "cluster.colour"),
    ({"groups": [{"profile": "slow.yaml", "nodes": 1}]}, "cluster.name"),
    ({"name": "x", "groups": []}, "cluster.groups"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 0}]}, "cluster.groups[0].nodes"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": "four"}]}, "cluster.groups[0].nodes"),
    ({"name": "x", "groups": [{"profile": "slow.yaml"}]}, "cluster.groups[0].nodes"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1, "gpu": 8}]}, "cluster.groups[0].gpu"),
    ({"name": "x", "groups": [{"profile": "nope.yaml", "nodes": 1}]}, "cluster.groups[0].profile"),
    ({"name": "x", "groups": [{"profile": "no-such-profile-name", "nodes": 1}]}, "cluster.groups[0].profile"),
    ({"name": "x", "groups": ["slow"]}, "cluster.groups[0]"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}], "fabric": {"spine": 1}}, "fabric.spine"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}], "fabric": {"oversubscription": 0.5}},
     "fabric.oversubscription"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}],
      "fabric": {"between": [{"node_types": ["slow", "fast"], "bandwidth_gb_s": 10}]}},
     "fabric.between[0].node_types"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}, {"profile": "fast.yaml", "nodes": 1}],
      "fabric": {"between": [{"node_types": ["slow", "fast"]}]}}, "fabric.between[0].bandwidth_gb_s"),
    ({"name": "x", "groups": [{"profile": "slow.yaml", "nodes": 1}, {"profile": "fast.yaml", "nodes": 1}],
      "fabric": {"between": [{"node_types": ["slow", "fast"], "bandwidth_gb_s": -1}]}},
     "fabric.between[0].bandwidth_gb_s"),
])
def test_bad_cluster_files_name_the_field(fixture_dir, data, field):
    with pytest.raises(InputError) as err:
        load_cluster(cluster_file(fixture_dir, data))
    assert err.value.field == field


def test_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError) as err:
        load_cluster(bad)
    assert err.value.field == "cluster"
    with pytest.raises(InputError):
        load_cluster(tmp_path / "absent.yaml")
    with pytest.raises(InputError) as err:
        parse_cluster(["not", "a", "mapping"])
    assert err.value.field == "cluster"


def test_fabric_spec_validates():
    with pytest.raises(InputError):
        FabricSpec(nodes_per_leaf=-1)


@needs_profiles
def test_shipped_mixed_cluster():
    c = load_cluster(ROOT / "clusters" / "mixed-a100-h100.yaml")
    assert c.name == "mixed-a100-h100" and c.world_size == 64
    assert [(g.node.name, g.n_nodes) for g in c.groups] == [("dgx-a100-80gb", 4), ("dgx-h100-80gb", 4)]
    a100, h100 = c.node_types
    assert c.fabric.link_between(a100, h100).bandwidth_bytes_per_s == a100.inter_node.bandwidth_bytes_per_s
    assert load_cluster("mixed-a100-h100") == c  # by name, from clusters/
    assert a100 == load_profile("dgx-a100-80gb")
