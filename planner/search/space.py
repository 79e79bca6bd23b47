"""The search space: the options per axis, ``--fix`` keys, and the layout orders searched."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planner.cost.memory import shard_divisors
from planner.cost.runtime import Runtime
from planner.errors import InputError, require
from planner.model import ModelSpec
from planner.plan import RECOMPUTE
from planner.search.results import Rejected


ORDERS = ("tp-cp-dp-pp", "tp-cp-pp-dp")


SHARDINGS = ("none", "zero1", "zero2", "zero3")


VPP_OPTIONS = (2, 3, 4, 5, 6, 7, 8)


PLAIN_SCHEDULES = ("1f1b", "zb", "gpipe")


MAX_MICRO_BATCH = 64


FIX_KEYS = {"tp": "tp", "pp": "pp", "dp": "dp", "cp": "cp", "ep": "ep", "etp": "etp", "vpp": "vpp",
            "mb": "micro_batch", "micro_batch": "micro_batch", "micro-batch": "micro_batch",
            "recompute": "recompute", "sharding": "sharding", "zero": "sharding",
            "sp": "sequence_parallel", "sequence_parallel": "sequence_parallel",
            "sequence-parallel": "sequence_parallel", "schedule": "schedule", "order": "order"}


def least_memory_shardings(present: set[str]) -> list[str]:
    """The shardings that can need the least memory: zero2 <= zero1 <= none always (same
    weights, fewer gradient / optimizer bytes); zero3 vs zero2 depends on the stage size."""
    out = [s for s in ("zero3",) if s in present]
    for s in ("zero2", "zero1", "none"):
        if s in present:
            out.append(s)
            break
    return out


def layout_strides(order: str, tp: int, cp: int, pp: int, dp: int) -> tuple[int, int]:
    """(dp stride, pp stride) for the two layout orders."""
    if order == "tp-cp-dp-pp":
        return tp * cp, tp * cp * dp
    return tp * cp * pp, tp * cp


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def normalise_fixed(fixed: dict) -> dict[str, Any]:
    """Map ``--fix`` style keys (tp, mb, sp, ...) to ParallelConfig fields and check the values."""
    out: dict[str, Any] = {}
    for key, value in (fixed or {}).items():
        name = FIX_KEYS.get(str(key))
        if name is None:
            raise InputError("fix", f"unknown key {key!r} (allowed: {', '.join(sorted(set(FIX_KEYS)))})")
        if name in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch"):
            try:
                v = int(value)
            except (TypeError, ValueError):
                raise InputError("fix", f"{key}={value!r}: must be a positive integer") from None
            if isinstance(value, bool) or v < 1 or (isinstance(value, float) and v != value):
                raise InputError("fix", f"{key}={value!r}: must be a positive integer")
            out[name] = v
        elif name == "etp":
            require(str(value) in ("0", "1"), "fix", f"etp={value!r}: the search tries 1 (experts whole below tp) "
                                                     "or 0 (experts split by tp)")
            out[name] = int(value)
        elif name == "recompute":
            require(value in RECOMPUTE, "fix", f"recompute={value!r}: must be one of {', '.join(RECOMPUTE)}")
            out[name] = value
        elif name == "sharding":
            value = "zero3" if value == "fsdp" else value
            require(value in SHARDINGS, "fix", f"sharding={value!r}: must be one of {', '.join(SHARDINGS)} (or fsdp)")
            out[name] = value
        elif name == "sequence_parallel":
            if isinstance(value, bool):
                out[name] = value
            elif str(value).lower() in ("on", "true", "1", "yes"):
                out[name] = True
            elif str(value).lower() in ("off", "false", "0", "no"):
                out[name] = False
            else:
                raise InputError("fix", f"sp={value!r}: must be on or off")
        elif name == "schedule":
            require(value in ("gpipe", "1f1b", "interleaved", "zb"), "fix",
                    f"schedule={value!r}: must be one of gpipe, 1f1b, interleaved, zb")
            out[name] = value
        elif name == "order":
            parts = str(value).split("-")
            require(sorted(parts) == sorted(["tp", "cp", "dp", "pp"]), "fix",
                    f"order={value!r}: must be a permutation of tp-cp-dp-pp")
            out[name] = str(value)
    return out


def parse_fix(items: list[str] | None) -> dict[str, Any]:
    """``["tp=8", "recompute=full"]`` -> a normalised fixed dict; bad items raise InputError."""
    raw: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError("fix", f"{item!r}: expected KEY=VALUE, e.g. tp=8")
        k, v = item.split("=", 1)
        raw[k.strip()] = v.strip()
    return normalise_fixed(raw)


@dataclass(frozen=True)
class LeafInfo:
    vs: tuple[int, ...]
    shs: tuple[str, ...]
    o_min: int


@dataclass
class Space:
    tp: list[int]
    cp: list[int]
    pp: list[int]
    dp: list[int] | None
    mb: list[int]
    rc: list[str]
    sp: list[bool]
    sh: list[str]
    sched: list[tuple[str, int]]
    orders: list[str]
    ep: list[int]
    etp: list[int]


def candidate_space(model: ModelSpec, world: int, gbs: int, fixed: dict) -> Space:
    """Every option per axis; ``ep``: the divisors of the expert count up to the world size
    (1 for a dense model); ``etp``: 0 (experts split by tp) and, for an MoE model, 1 (experts
    whole, Megatron-Core's MoE parallel folding)."""
    divs = divisors(world)
    mb = [d for d in divisors(gbs) if d <= MAX_MICRO_BATCH]
    sched = [(s, 1) for s in PLAIN_SCHEDULES] + [("interleaved", v) for v in VPP_OPTIONS]
    sp = [False, True]
    sh = list(SHARDINGS)
    orders = list(ORDERS)
    ep = [d for d in divisors(model.n_experts) if d <= world] if model.is_moe else [1]
    sp_ = Space(tp=divs, cp=divs, pp=divs, dp=None, mb=mb, rc=list(RECOMPUTE), sp=sp, sh=sh,
                 sched=sched, orders=orders, ep=ep, etp=[0, 1] if model.is_moe else [0])
    for name, attr in (("tp", "tp"), ("cp", "cp"), ("pp", "pp")):
        if name in fixed:
            setattr(sp_, attr, [fixed[name]])
    if "dp" in fixed:
        sp_.dp = [fixed["dp"]]
    if "ep" in fixed:
        sp_.ep = [fixed["ep"]]
    if "etp" in fixed:
        require(model.is_moe or not fixed["etp"], "fix", f"etp=1 needs a mixture-of-experts model ({model.name})")
        sp_.etp = [fixed["etp"]]
    if "micro_batch" in fixed:
        sp_.mb = [fixed["micro_batch"]]
    if "recompute" in fixed:
        sp_.rc = [fixed["recompute"]]
    if "sequence_parallel" in fixed:
        sp_.sp = [fixed["sequence_parallel"]]
    if "sharding" in fixed:
        sp_.sh = [fixed["sharding"]]
    if "schedule" in fixed:
        sp_.sched = [x for x in sp_.sched if x[0] == fixed["schedule"]]
    if "vpp" in fixed:
        v = fixed["vpp"]
        sp_.sched = [x for x in sp_.sched if x[1] == v] or (
            [("interleaved", v)] if v > 1 and fixed.get("schedule", "interleaved") == "interleaved" else [])
        if not sp_.sched:
            raise InputError("fix", f"vpp={v} needs the interleaved schedule (vpp=1 otherwise)")
    if "order" in fixed:
        sp_.orders = [fixed["order"]]
    return sp_


def leaf_set(space: Space, n_layers: int, runtime: Runtime, ep: int, pp: int, dp: int, m: int,
             experts_apart: bool = False) -> tuple[list[tuple[str, str, int, str]], list[tuple[Rejected, int]], LeafInfo]:
    """(valid (sharding, schedule, vpp, order) of a core node with ``pp`` stages, ``dp`` replicas
    and ``m`` micro-batches; the others as (reason, count); what the valid ones span).
    ``experts_apart``: the experts are laid out apart from the dense layers (ep > 1 or etp)."""
    valid, rejected = [], []
    for sh in space.sh:
        for sched, v in space.sched:
            for order in space.orders:
                r = None
                if dp == 1 and sh != "none":
                    r = Rejected("redundant", "ZeRO with dp=1")
                elif pp == 1 and (sched != "1f1b" or v > 1):
                    r = Rejected("redundant", "pipeline schedule with pp=1")
                elif order != ORDERS[0] and (pp == 1 or dp == 1):
                    r = Rejected("redundant", "layout order with pp=1 or dp=1")
                elif sched == "interleaved" and pp * v > n_layers:
                    r = Rejected("too_many_stages", "pp*vpp exceeds the layers")
                elif sched == "interleaved" and m % pp != 0:
                    r = Rejected("not_divisible", "interleaving needs micro-batches divisible by pp")
                elif runtime.refusal_of(sh, pp, dp, sched, 1, ep):
                    r = Rejected("unsupported", runtime.refusal_of(sh, pp, dp, sched, 1, ep))
                elif (ep > 1 or experts_apart) and sh in ("zero3", "fsdp"):
                    r = Rejected("unsupported", "ZeRO-3 / FSDP with expert parallelism is not priced")
                if r is None:
                    valid.append((sh, sched, v, order))
                else:
                    rejected.append(r)
    counts: dict[Rejected, int] = {}
    for r in rejected:
        counts[r] = counts.get(r, 0) + 1
    info = LeafInfo(vs=tuple(sorted({x[2] for x in valid})),
                    shs=tuple(least_memory_shardings({x[0] for x in valid})),
                    o_min=max((shard_divisors(x[0], dp)[2] for x in valid), default=1))
    return valid, list(counts.items()), info
