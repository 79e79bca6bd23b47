"""Cluster files: which nodes a cluster has (several node types allowed) and how they are joined.

A cluster file (``clusters/<name>.yaml``) is parsed strictly; every error names its field::

    name: mixed-a100-h100
    description: "4 DGX A100 + 4 DGX H100 on one InfiniBand fabric"
    groups:                          # ranks are numbered group by group, node by node
      - {profile: dgx-a100-80gb, nodes: 4}
      - {profile: dgx-h100-80gb, nodes: 4, gpus_per_node: 8}   # gpus_per_node: optional override
    fabric:                          # optional; defaults below
      nodes_per_leaf: 0              # nodes under one leaf switch (0: all nodes of a type on one leaf)
      oversubscription: 1.0          # leaf uplink oversubscription (1.0: non-blocking fat tree)
      between:                       # optional per-GPU bandwidth between two node types
        - node_types: [dgx-a100-80gb, dgx-h100-80gb]
          bandwidth_gb_s: 25
          latency_us: 9.6            # optional: default the larger of the two profiles'
          bus_efficiency: 0.9        # optional: default the smaller of the two profiles'

``profile`` is a profile name (``hardware_profiles/<name>.yaml``) or a path to a profile file,
relative to the cluster file. Without a ``between`` entry two node types talk at the slower of
their two NICs (bandwidth min, latency max, bus efficiency min).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from planner.errors import InputError, reject_unknown_keys
from planner.hardware import ClusterSpec, LinkSpec, NodeGroup, NodeSpec
from planner.io import finite_number, parse_yaml, read_input_text, resolve_named_yaml
from planner.profile_yaml import load_profile
from planner.units import GB, MICRO

CLUSTERS_DIR = Path(__file__).resolve().parent.parent / "clusters"
_TOP_KEYS = {"name", "description", "groups", "fabric"}
_GROUP_KEYS = {"profile", "nodes", "gpus_per_node"}
_FABRIC_KEYS = {"nodes_per_leaf", "oversubscription", "between"}
_BETWEEN_KEYS = {"node_types", "bandwidth_gb_s", "latency_us", "bus_efficiency"}


@dataclass(frozen=True)
class FabricLink:
    """The per-GPU link between nodes of two types (names sorted)."""

    node_types: tuple[str, str]
    link: LinkSpec


@dataclass(frozen=True)
class FabricSpec:
    """How nodes are joined.

    nodes_per_leaf: nodes under one leaf switch; 0 puts all nodes of a fabric domain on one leaf.
    oversubscription: leaf-uplink oversubscription; a leaf's per-GPU share of its uplink is
        NIC bandwidth / oversubscription (1.0: non-blocking, the DGX SuperPOD design).
    between: per-GPU links between node types that override the default (slower NIC wins).
    """

    nodes_per_leaf: int = 0
    oversubscription: float = 1.0
    between: tuple[FabricLink, ...] = ()

    def __post_init__(self) -> None:
        if self.nodes_per_leaf < 0:
            raise InputError("fabric.nodes_per_leaf", "must be >= 0")
        if not (self.oversubscription >= 1.0 and math.isfinite(self.oversubscription)):
            raise InputError("fabric.oversubscription", "must be a number >= 1")

    def link_between(self, a: NodeSpec, b: NodeSpec) -> LinkSpec:
        """Per-GPU inter-node link between a node of type ``a`` and one of type ``b``."""
        key = tuple(sorted((a.name, b.name)))
        for entry in self.between:
            if entry.node_types == key:
                return entry.link
        if a.name == b.name:
            return a.inter_node
        return LinkSpec(
            bandwidth_bytes_per_s=min(a.inter_node.bandwidth_bytes_per_s, b.inter_node.bandwidth_bytes_per_s),
            latency_s=max(a.inter_node.latency_s, b.inter_node.latency_s),
            bus_efficiency=min(a.inter_node.bus_efficiency, b.inter_node.bus_efficiency),
        )


@dataclass(frozen=True)
class Cluster(ClusterSpec):
    """A :class:`planner.hardware.ClusterSpec` that also knows its fabric (what a cluster file
    adds); everything taking a ClusterSpec takes it."""

    fabric: FabricSpec = FabricSpec()
    description: str = ""

    @property
    def node_types(self) -> tuple[NodeSpec, ...]:
        seen: dict[str, NodeSpec] = {}
        for group in self.groups:
            seen.setdefault(group.node.name, group.node)
        return tuple(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "groups": [{"profile": g.node.name, "nodes": g.n_nodes, "gpus_per_node": g.node.gpus_per_node}
                       for g in self.groups],
            "world_size": self.world_size,
        }


def _int(data: dict, key: str, where: str, *, minimum: int, default: int | None = None) -> int:
    if key not in data:
        if default is not None:
            return default
        raise InputError(f"{where}.{key}", "missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}.{key}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{where}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _load_group_profile(value: Any, where: str, base_dir: Path | None) -> NodeSpec:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}.profile", "missing or not a string (a profile name or path)")
    looks_like_path = value.endswith((".yaml", ".yml")) or "/" in value
    target = value
    if looks_like_path and base_dir is not None and not Path(value).is_absolute():
        target = str(base_dir / value)
    try:
        return load_profile(target)
    except InputError as err:
        raise InputError(f"{where}.profile", err.reason) from None


def _parse_between(data: Any, types: dict[str, NodeSpec]) -> tuple[FabricLink, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise InputError("fabric.between", "must be a list")
    out, seen = [], set()
    for i, entry in enumerate(data):
        where = f"fabric.between[{i}]"
        if not isinstance(entry, dict):
            raise InputError(where, "must be a mapping")
        reject_unknown_keys(entry, _BETWEEN_KEYS, where)
        pair = entry.get("node_types")
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise InputError(f"{where}.node_types", "must be a list of two profile names")
        for name in pair:
            if name not in types:
                raise InputError(f"{where}.node_types", f"{name!r} is not a node type of this cluster "
                                 f"(types: {', '.join(sorted(types))})")
        key = tuple(sorted(pair))
        if key in seen:
            raise InputError(f"{where}.node_types", f"{key[0]} <-> {key[1]} is given twice")
        seen.add(key)
        a, b = types[key[0]], types[key[1]]
        default_lat = max(a.inter_node.latency_s, b.inter_node.latency_s) / MICRO
        default_eff = min(a.inter_node.bus_efficiency, b.inter_node.bus_efficiency)
        try:
            link = LinkSpec(bandwidth_bytes_per_s=finite_number(entry, "bandwidth_gb_s", where) * GB,
                            latency_s=finite_number(entry, "latency_us", where, default_lat) * MICRO,
                            bus_efficiency=finite_number(entry, "bus_efficiency", where, default_eff))
        except InputError as err:
            if err.field.startswith(where):
                raise
            raise InputError(f"{where}.{err.field}", err.reason) from None
        out.append(FabricLink(node_types=key, link=link))
    return tuple(out)


def parse_cluster(data: Any, *, source: str = "cluster", base_dir: Path | None = None) -> Cluster:
    """Build a :class:`Cluster` from a parsed YAML mapping; errors name the field."""
    if not isinstance(data, dict):
        raise InputError("cluster", f"{source} must hold a mapping, got {type(data).__name__}")
    reject_unknown_keys(data, _TOP_KEYS, "cluster")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("cluster.name", "missing or not a string")
    groups_data = data.get("groups")
    if not isinstance(groups_data, list) or not groups_data:
        raise InputError("cluster.groups", "missing or empty: list of {profile: NAME, nodes: N}")
    groups, types = [], {}
    for i, entry in enumerate(groups_data):
        where = f"cluster.groups[{i}]"
        if not isinstance(entry, dict):
            raise InputError(where, "must be a mapping {profile: NAME, nodes: N}")
        reject_unknown_keys(entry, _GROUP_KEYS, where)
        node = _load_group_profile(entry.get("profile"), where, base_dir)
        n_nodes = _int(entry, "nodes", where, minimum=1)
        if "gpus_per_node" in entry:
            node = node.with_gpus_per_node(_int(entry, "gpus_per_node", where, minimum=1))
        if node.name in types and types[node.name] != node:
            raise InputError(f"{where}.gpus_per_node",
                             f"profile {node.name} appears twice with different node shapes")
        types[node.name] = node
        groups.append(NodeGroup(node, n_nodes))
    fabric_data = data.get("fabric") or {}
    if not isinstance(fabric_data, dict):
        raise InputError("cluster.fabric", "must be a mapping")
    reject_unknown_keys(fabric_data, _FABRIC_KEYS, "fabric")
    fabric = FabricSpec(
        nodes_per_leaf=_int(fabric_data, "nodes_per_leaf", "fabric", minimum=0, default=0),
        oversubscription=finite_number(fabric_data, "oversubscription", "fabric", 1.0),
        between=_parse_between(fabric_data.get("between"), types),
    )
    return Cluster(groups=tuple(groups), name=name, fabric=fabric,
                   description=str(data.get("description", "")))


def resolve_cluster_path(name_or_path: str | Path) -> Path:
    """A cluster file path, or a name in ``clusters/``."""
    return resolve_named_yaml(name_or_path, CLUSTERS_DIR, field="cluster", kind="cluster")


def load_cluster(path: str | Path) -> Cluster:
    """Load a cluster file (a path, or a name in ``clusters/``) into a :class:`Cluster`."""
    path = resolve_cluster_path(path)
    data = parse_yaml(read_input_text(path, "cluster"), "cluster", str(path))
    return parse_cluster(data, source=str(path), base_dir=path.parent)


def as_cluster(cluster: ClusterSpec) -> Cluster:
    """Any ClusterSpec as a :class:`Cluster` (default fabric when it has none)."""
    if isinstance(cluster, Cluster):
        return cluster
    return Cluster(groups=cluster.groups, name=cluster.name)


def with_fabric(cluster: ClusterSpec, **changes: Any) -> Cluster:
    """A copy with fabric fields changed (``nodes_per_leaf``, ``oversubscription``, ``between``)."""
    c = as_cluster(cluster)
    return dataclasses.replace(c, fabric=dataclasses.replace(c.fabric, **changes))
