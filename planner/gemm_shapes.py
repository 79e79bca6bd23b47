"""GEMM efficiency by shape: a device's measured GEMMs, each as (M, N, K, fraction of peak), read
against its FLOP-indexed curve (:class:`planner.hardware.EfficiencyCurve`).

Two GEMMs of equal FLOPs can run at very different rates: on a CPU a 128 x 768 @ 768 x 50257 LM
head reaches 0.55 of peak and its weight gradient (K = 128) 0.41 where a square GEMM of the same
FLOPs reaches 0.91 (``benchmarks/gemm_shapes.py``). :meth:`ShapeTable.ratio` is how much faster or
slower than its curve a shape runs: each measured shape's efficiency over the curve's at its FLOPs,
averaged over the nearest measured shapes in (log2 M, log2 N, log2 K), weighted by inverse
squared distance (Shepard 1968), with the curve itself as a point at :data:`CURVE_DISTANCE`: a
shape far from every measured one gets the curve's efficiency, one measured gets its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.errors import require

NEAREST = 4
"""Measured shapes averaged for a query (the corners of the cell around it on a grid)."""
CURVE_DISTANCE = 2.0
"""Distance in log2 units (a factor of 4 in one dimension) at which the FLOP curve weighs as much
as a measured shape: beyond the measured grid the correction fades towards the curve."""


@dataclass(frozen=True)
class ShapeTable:
    """Measured GEMMs of one dtype: ((M, N, K, efficiency), ...), efficiency a fraction of peak."""

    points: tuple[tuple[float, float, float, float], ...]

    def __post_init__(self) -> None:
        require(len(self.points) >= 1, "matmul_shapes", "needs at least one [m, n, k, efficiency] row")
        for m, n, k, e in self.points:
            require(m >= 1 and n >= 1 and k >= 1, "matmul_shapes", f"dimensions must be >= 1, got {(m, n, k)}")
            require(0 < e <= 1.0, "matmul_shapes", f"efficiencies must be in (0, 1], got {e}")

    def ratio(self, curve, m: float, n: float, k: float) -> float:
        """Measured efficiency over ``curve``'s for a GEMM of shape (m, n, k) (see the module)."""
        return _ratio(self.points, curve, float(m), float(n), float(k))


@lru_cache(maxsize=65536)
def _ratio(points, curve, m: float, n: float, k: float) -> float:
    q = (math.log2(max(m, 1.0)), math.log2(max(n, 1.0)), math.log2(max(k, 1.0)))
    near = []
    for pm, pn, pk, eff in points:
        d2 = (q[0] - math.log2(pm)) ** 2 + (q[1] - math.log2(pn)) ** 2 + (q[2] - math.log2(pk)) ** 2
        near.append((d2, eff / curve(2.0 * pm * pn * pk)))
    near.sort(key=lambda x: x[0])
    if near[0][0] < 1e-12:
        return near[0][1]
    weights = [(1.0 / d2, r) for d2, r in near[:NEAREST]] + [(1.0 / CURVE_DISTANCE ** 2, 1.0)]
    return sum(w * r for w, r in weights) / sum(w for w, _ in weights)
