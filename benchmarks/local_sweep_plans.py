"""The local validation sweep's plans and targets (:mod:`benchmarks.local_sweep` runs them) and the
machine checks its runner and its report share."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.plan import ParallelConfig  # noqa: E402


TARGETS = {"median_abs_error_pct": 5.0, "max_abs_error_pct": 15.0, "spearman": 0.9,
           "median_abs_memory_error_pct": 10.0, "search_within_pct": 5.0}


@dataclass(frozen=True)
class SweepPlan:
    """One sweep entry: a name (run folder), a model preset, and the split (world = product)."""

    name: str
    model: str
    parallel: dict

    def config(self, seq_len: int) -> ParallelConfig:
        kw = {"precision": "fp32", "seq_len": seq_len, **self.parallel}
        if kw.get("vpp", 1) > 1:
            kw.setdefault("schedule", "interleaved")
        return ParallelConfig(**kw)


def _p(name, model, **kw) -> SweepPlan:
    return SweepPlan(name, model, kw)


G, L = "tiny-gpt", "tiny-llama"
M = str(ROOT / "tests" / "fixtures" / "tiny" / "tiny-mixtral")
"""Mixtral's config shrunk for CPU runs of expert parallelism (4 experts, top-2, hidden 64)."""
SWEEP: tuple[SweepPlan, ...] = (
    # world size 1
    _p("g-w1-mb4", G, micro_batch=4, global_batch=8),
    _p("g-w1-mb8", G, micro_batch=8, global_batch=8),
    _p("g-w1-mb2-full", G, micro_batch=2, global_batch=8, recompute="full"),
    _p("l-w1-mb4", L, micro_batch=4, global_batch=8),
    _p("l-w1-mb2-sel", L, micro_batch=2, global_batch=8, recompute="selective"),
    # world size 2: data parallel and sharding
    _p("g-dp2-ddp", G, dp=2, micro_batch=4, global_batch=8),
    _p("g-dp2-zero1", G, dp=2, micro_batch=4, global_batch=8, sharding="zero1"),
    _p("g-dp2-zero2", G, dp=2, micro_batch=4, global_batch=8, sharding="zero2"),
    _p("g-dp2-fsdp", G, dp=2, micro_batch=4, global_batch=8, sharding="fsdp"),
    _p("l-dp2-ddp-mb2", L, dp=2, micro_batch=2, global_batch=8),
    _p("l-dp2-fsdp-full", L, dp=2, micro_batch=4, global_batch=8, sharding="fsdp", recompute="full"),
    # world size 2: tensor parallel
    _p("g-tp2", G, tp=2, micro_batch=4, global_batch=8),
    _p("g-tp2-sp", G, tp=2, micro_batch=4, global_batch=8, sequence_parallel=True),
    _p("l-tp2", L, tp=2, micro_batch=4, global_batch=8),
    _p("l-tp2-sp-sel", L, tp=2, micro_batch=4, global_batch=8, sequence_parallel=True, recompute="selective"),
    # world size 2: pipeline schedules
    _p("g-pp2-1f1b", G, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
    _p("g-pp2-gpipe", G, pp=2, micro_batch=2, global_batch=8, schedule="gpipe"),
    _p("g-pp2-interleaved", G, pp=2, vpp=2, micro_batch=2, global_batch=8, schedule="interleaved"),
    _p("g-pp2-zb", G, pp=2, micro_batch=2, global_batch=8, schedule="zb"),
    _p("l-pp2-1f1b-mb1", L, pp=2, micro_batch=1, global_batch=8, schedule="1f1b"),
    # world size 4 (4 ranks on the host's cores)
    _p("g-dp4", G, dp=4, micro_batch=2, global_batch=8),
    _p("g-dp2-pp2", G, dp=2, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
    _p("g-tp2-dp2", G, tp=2, dp=2, micro_batch=4, global_batch=8),
    _p("l-dp4-fsdp", L, dp=4, micro_batch=2, global_batch=8, sharding="fsdp"),
    _p("l-pp4-1f1b", L, pp=4, micro_batch=1, global_batch=8, schedule="1f1b"),
    _p("l-tp2-pp2", L, tp=2, pp=2, micro_batch=2, global_batch=8, schedule="1f1b"),
    # mixtures of experts: experts replicated (ep 1) vs spread (ep 2, 4) over the dp ranks
    _p("m-dp2", M, dp=2, micro_batch=2, global_batch=8),
    _p("m-dp2-ep2", M, dp=2, ep=2, micro_batch=2, global_batch=8),
    _p("m-dp4-ep2", M, dp=4, ep=2, micro_batch=2, global_batch=8),
    _p("m-dp4-ep4", M, dp=4, ep=4, micro_batch=2, global_batch=8),
)


QUIET_CORES = 0.3  # others' CPU use (cores) below which the machine counts as quiet


def externally_contended(summary: dict | None) -> bool:
    """``contended`` by someone else: the executor flags a run when a rank waited for a CPU more
    than 20% of the step beyond the plan's own oversubscription (planner.records.summarize)."""
    return bool(summary) and summary.get("status") == "contended"


def calibrated_speed_flops(results_path: Path) -> float | None:
    """That GEMM's one-rank rate in recorded calibration results (median over passes), or None."""
    try:
        results = json.loads(Path(results_path).read_text())
        row = next(r for r in results["contention"] if r["ranks"] == 1)
        return float(row["per_rank"][0]["flops_per_s"])
    except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError):
        return None
