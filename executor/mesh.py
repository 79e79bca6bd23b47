"""The device mesh of a plan, from the planner's rank layout (never re-derived here)."""
from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.layout import RankCoord, mesh_dims, rank_layout
from planner.plan import ParallelConfig


def build_mesh(parallel: ParallelConfig, device_type: str) -> DeviceMesh:
    """``init_device_mesh`` over (names, shape) = :func:`planner.layout.mesh_dims` (slowest axis
    first), so global rank r sits at :func:`planner.layout.rank_layout` ``[r]``."""
    names, shape = mesh_dims(parallel)
    return init_device_mesh(device_type, shape, mesh_dim_names=names)


def coord_of(parallel: ParallelConfig, rank: int) -> RankCoord:
    return rank_layout(parallel)[rank]


def check_mesh(mesh: DeviceMesh, parallel: ParallelConfig, rank: int) -> None:
    """Assert the mesh puts ``rank`` where the planner's layout says."""
    coord = coord_of(parallel, rank)
    for name in mesh.mesh_dim_names:
        got = mesh.get_local_rank(name)
        if got != coord.get(name):
            raise AssertionError(f"mesh puts rank {rank} at {name}={got}, planner says {coord.get(name)}")


def sub(mesh: DeviceMesh, *names: str) -> DeviceMesh:
    """Sub-mesh over ``names`` (in mesh order)."""
    ordered = tuple(n for n in mesh.mesh_dim_names if n in names)
    return mesh[ordered] if len(ordered) > 1 else mesh[ordered[0]]


def group(mesh: DeviceMesh, name: str):
    return mesh.get_group(name)


def size(mesh: DeviceMesh, name: str) -> int:
    return mesh.size(mesh.mesh_dim_names.index(name))


__all__ = ["build_mesh", "coord_of", "check_mesh", "sub", "group", "size"]
