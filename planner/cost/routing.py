"""How many routed tokens the busiest expert-parallel rank processes, per its balanced share.

A MoE layer's token exchange and expert GEMMs wait for the rank of the expert-parallel group
that received the most token copies. With ``n`` copies per rank routed at random over ``ep``
ranks (each copy to a rank with probability ``1/ep``), a rank's load is binomial with mean ``n``
and standard deviation ``sqrt(n (1 - 1/ep))``; the busiest of ``ep`` ranks holds about
``n + e_ep * sd``, ``e_ep`` the expected maximum of ``ep`` standard normals (Gumbel 1958, Ch. 3;
computed here by quadrature: 0.564 for 2, 1.029 for 4, 1.424 for 8). That is the imbalance of a
router that spreads tokens uniformly, as an auxiliary load-balancing loss aims to (Switch
Transformer, Fedus et al. 2022, Sec. 2.2): a lower bound of a trained router's. A user who
measured their router's (Megatron-Core logs each layer's tokens per expert) gives it as
``ModelSpec.moe_load_imbalance``. A capacity factor caps the load; padding to it fixes it.
"""
from __future__ import annotations

import math
from functools import lru_cache

from planner.model import ModelSpec

_QUADRATURE_POINTS = 2001
_QUADRATURE_HALF_WIDTH = 9.0


@lru_cache(maxsize=None)
def expected_max_standard_normal(n: int) -> float:
    """E[max of n independent standard normals] (0 for n = 1), by the trapezoid rule on
    ``x * n * phi(x) * Phi(x)^(n-1)`` over [-9, 9]."""
    if n <= 1:
        return 0.0
    step = 2 * _QUADRATURE_HALF_WIDTH / (_QUADRATURE_POINTS - 1)
    total = 0.0
    for i in range(_QUADRATURE_POINTS):
        x = -_QUADRATURE_HALF_WIDTH + i * step
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        weight = 0.5 if i in (0, _QUADRATURE_POINTS - 1) else 1.0
        total += weight * x * n * pdf * cdf ** (n - 1)
    return total * step


def busiest_rank_load(model: ModelSpec, routed_per_rank: float, ep: int) -> float:
    """Token copies the busiest of ``ep`` ranks processes over the mean ``routed_per_rank``
    (each rank's tokens times top_k): the capacity factor when experts are padded to it, 1
    without expert parallelism, else the model's measured ``moe_load_imbalance`` or uniform
    routing's expectation (module docstring), at most a capacity factor."""
    if not model.is_moe:
        return 1.0
    if model.moe_pad_to_capacity:
        return model.moe_capacity_factor
    if ep <= 1 or routed_per_rank <= 0:
        return 1.0
    load = model.moe_load_imbalance or (
        1.0 + expected_max_standard_normal(ep) * math.sqrt((1.0 - 1.0 / ep) / routed_per_rank))
    return min(load, model.moe_capacity_factor) if model.moe_capacity_factor else load
