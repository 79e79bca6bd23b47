"""What a search returns: ranked plans, rejections counted by reason (:class:`SearchResult`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from planner.cost.prediction import Prediction
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan


GIB = 1024.0**3


REASON_TEXT = {
    "out_of_memory": "out of memory",
    "not_divisible": "not divisible",
    "too_many_stages": "more stages than layers",
    "tp_crosses_nodes": "tp wider than a node",
    "redundant": "same plan as another candidate",
    "unsupported": "not run by the runtime",
    "bound": "cannot beat the top K (lower bound)",
}


@dataclass(frozen=True)
class Rejected:
    """Why a candidate (or a whole subtree of candidates) was not ranked.

    reason: short code (``out_of_memory``, ``not_divisible``, ``too_many_stages``,
    ``tp_crosses_nodes``, ``redundant``, ``unsupported``, ``bound``); detail: for a person; need_bytes / stage:
    out of memory only — the least memory the candidate needs on its fullest stage."""

    reason: str
    detail: str = ""
    need_bytes: float = math.nan
    stage: int = -1


@dataclass
class RejectionCount:
    """All rejections with one reason: how many, a typical detail per sub-reason, and for
    out-of-memory the least memory any of them needs (and on which stage)."""

    reason: str
    count: int = 0
    details: dict[str, int] = field(default_factory=dict)
    min_need_bytes: float = math.inf
    min_need_stage: int = -1
    by_stage: dict[str, int] = field(default_factory=dict)

    def add(self, rej: Rejected, n: int) -> None:
        self.count += n
        if rej.detail:
            self.details[rej.detail] = self.details.get(rej.detail, 0) + n
        if rej.reason == "out_of_memory":
            key = "stage 0" if rej.stage == 0 else ("last stage" if rej.stage > 0 else "stage ?")
            self.by_stage[key] = self.by_stage.get(key, 0) + n
            if rej.need_bytes < self.min_need_bytes:
                self.min_need_bytes = rej.need_bytes
                self.min_need_stage = rej.stage

    def to_dict(self) -> dict:
        return {"reason": self.reason, "count": self.count, "details": dict(self.details),
                "min_need_bytes": None if math.isinf(self.min_need_bytes) else self.min_need_bytes,
                "by_stage": dict(self.by_stage)}


@dataclass(frozen=True)
class RankedPlan:
    """One evaluated plan: its configuration, the cost model's prediction and how it was found."""

    parallel: ParallelConfig
    prediction: Prediction
    lower_bound_s: float
    note: str = ""

    @property
    def step_time_s(self) -> float:
        return self.prediction.step_time_s


@dataclass
class SearchResult:
    """What :func:`search` found.

    ranked: the top K fitting plans, fastest first. rejections: reason -> :class:`RejectionCount`.
    closest: when nothing fits, the evaluated plan needing the least memory (else None).
    total_candidates: size of the space searched; evaluated: cost-model calls; bounded: lower
    bounds computed; elapsed_s: wall time of the search.
    """

    model: ModelSpec
    cluster: ClusterSpec
    hardware: str
    global_batch: int
    ranked: list[RankedPlan]
    rejections: dict[str, RejectionCount]
    total_candidates: int
    evaluated: int
    bounded: int
    elapsed_s: float
    closest: RankedPlan | None = None
    fixed: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return bool(self.ranked)

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.groups[0].node.gpus_per_node

    def plan_for(self, entry: RankedPlan) -> Plan:
        return Plan(model=self.model, hardware=self.hardware, n_nodes=self.cluster.n_nodes,
                    gpus_per_node=self.gpus_per_node, parallel=entry.parallel,
                    prediction=entry.prediction.to_dict())

    @property
    def best_plans(self) -> list[Plan]:
        """The ranked plans as :class:`planner.plan.Plan` objects carrying their prediction."""
        return [self.plan_for(e) for e in self.ranked]

    def rows(self) -> list[dict]:
        return [ranked_row(i + 1, e, self.plan_for(e).id) for i, e in enumerate(self.ranked)]

    @property
    def table(self):
        """The ranked plans as a pandas DataFrame, one row per plan and one plain column per
        setting (the configuration's fields spread out, lists as text)."""
        import pandas as pd

        flat = []
        for row in self.rows():
            row = dict(row)
            settings = row.pop("parallel")
            row["stage_layers"] = ",".join(map(str, row["stage_layers"]))
            for key, value in settings.items():
                if key not in row:
                    row[key] = ",".join(map(str, value)) if isinstance(value, list) else value
            flat.append(row)
        return pd.DataFrame(flat)

    def rejection_summary(self) -> str:
        return rejection_summary(self)

    def to_dict(self) -> dict:
        return {"model": self.model.name, "cluster": self.hardware, "world_size": self.cluster.world_size,
                "global_batch": self.global_batch, "fits": self.fits, "ranked": self.rows(),
                "rejections": {k: v.to_dict() for k, v in self.rejections.items()},
                "total_candidates": self.total_candidates, "evaluated": self.evaluated,
                "bounded": self.bounded, "elapsed_s": self.elapsed_s,
                "closest": None if self.closest is None else ranked_row(0, self.closest, self.plan_for(self.closest).id)
                if self.closest.parallel.world_size == self.cluster.world_size else None}


TWIN_RTOL = 1e-9
"""Two plans whose step times agree this closely are the same speed (the cost model is exact
arithmetic on the same terms; only their memory differs)."""


def same_plan_but_storage(a: RankedPlan, b: RankedPlan) -> bool:
    """``a`` and ``b`` differ only in ZeRO stage or rank order and take the same step time: a
    user chooses between them by memory, so the ranking lists one."""
    pa, pb = a.parallel, b.parallel
    if dataclasses.replace(pa, sharding=pb.sharding, order=pb.order) != pb:
        return False
    return math.isclose(a.step_time_s, b.step_time_s, rel_tol=TWIN_RTOL)


def twin_note(kept: RankedPlan, other: RankedPlan) -> str:
    """The kept plan's note naming the same-speed variant that needs more memory."""
    variant = other.parallel.sharding if other.parallel.sharding != kept.parallel.sharding else other.parallel.order
    extra = f"same time with {variant} ({other.prediction.peak_memory_bytes / GIB:.1f} GiB)"
    return f"{kept.note}; {extra}" if kept.note else extra


def ranked_row(rank: int, e: RankedPlan, plan_id: str) -> dict:
    p = e.prediction
    t = p.time
    step = p.step_time_s
    exposed = t.tp_s + t.cp_s + t.dp_s + t.pp_s + t.ep_s
    return {
        "rank": rank, "id": plan_id, "plan": e.parallel.megatron_notation(),
        "step_time_s": step, "tokens_per_s_per_gpu": p.tokens_per_s_per_gpu, "mfu": p.mfu,
        "peak_memory_gib": p.peak_memory_bytes / GIB,
        "headroom_gib": (p.hbm_bytes - p.peak_memory_bytes) / GIB,
        "bubble_pct": 100.0 * t.bubble_s / step if step > 0 else 0.0,
        "exposed_comm_pct": 100.0 * exposed / step if step > 0 else 0.0,
        "fits": p.fits, "order": e.parallel.order,
        "stage_layers": list(e.parallel.stage_layers), "note": e.note,
        "parallel": e.parallel.to_dict(),
    }


def rejection_summary(result: SearchResult) -> str:
    """``N candidates: X out of memory (on stage 0 needing at least Y GiB), Z not divisible ...``."""
    parts = []
    order = ("out_of_memory", "not_divisible", "too_many_stages", "tp_crosses_nodes", "redundant", "bound")
    for key in order:
        rc = result.rejections.get(key)
        if not rc or not rc.count:
            continue
        text = f"{rc.count:,} {REASON_TEXT[key]}"
        if key == "out_of_memory" and not math.isinf(rc.min_need_bytes):
            where = "stage 0" if rc.min_need_stage == 0 else "the last stage"
            stages = ", ".join(f"{n:,} on {s}" for s, n in sorted(rc.by_stage.items()))
            text += f" ({stages}; the smallest needs at least {rc.min_need_bytes / GIB:.1f} GiB on {where})"
        elif rc.details and key in ("not_divisible", "too_many_stages"):
            top = sorted(rc.details.items(), key=lambda kv: -kv[1])[:3]
            text += " (" + "; ".join(f"{n:,} {d}" for d, n in top) + ")"
        parts.append(text)
    n_ok = result.total_candidates - sum(rc.count for rc in result.rejections.values())
    head = (f"{result.total_candidates:,} candidates: {n_ok:,} evaluated and fit"
            f" ({result.evaluated:,} cost-model calls, {result.bounded:,} lower bounds)")
    return head + ("; " + ", ".join(parts) if parts else "")
