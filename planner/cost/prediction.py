"""What the cost model says about one plan: :class:`Prediction` (``clusterplan predict --json``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost.flops import FLOP_CONVENTION
from planner.cost.memory import StageMemory
from planner.cost.runtime import DEFAULT_RUNTIME, Runtime


@dataclass(frozen=True)
class StagePrediction:
    stage: int
    layers: int
    time_s: float
    memory_bytes: float
    memory: StageMemory

    def to_dict(self) -> dict:
        return {"stage": self.stage, "layers": self.layers, "time_s": self.time_s,
                "memory_bytes": self.memory_bytes}


@dataclass(frozen=True)
class TimeBreakdown:
    forward_s: float
    backward_s: float
    recompute_s: float
    optimizer_s: float
    tp_s: float
    cp_s: float
    dp_s: float
    pp_s: float
    bubble_s: float
    ep_s: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s

    def to_dict(self) -> dict:
        return {"compute_s": self.compute_s, "forward_s": self.forward_s,
                "backward_s": self.backward_s, "optimizer_s": self.optimizer_s,
                "recompute_s": self.recompute_s,
                "exposed_comm_s": {"tp": self.tp_s, "cp": self.cp_s, "dp": self.dp_s, "pp": self.pp_s,
                                   "ep": self.ep_s},
                "bubble_s": self.bubble_s}


@dataclass(frozen=True)
class Prediction:
    """Predicted step of one plan. ``to_dict()`` is the JSON of ``clusterplan predict --json``."""

    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    hardware_tflops_per_gpu: float
    mfu: float
    hfu: float
    peak_memory_bytes: float
    fits: bool
    hbm_bytes: float
    per_stage: tuple[StagePrediction, ...]
    time: TimeBreakdown
    memory: StageMemory
    timeline: tuple = field(default=(), repr=False)
    timeline_micro_batches: int = 0
    num_micro_batches: int = 0
    runtime: Runtime = DEFAULT_RUNTIME

    def shares(self) -> dict[str, float]:
        """Each term's share of the step: ``compute`` (recomputation included), ``recompute``,
        exposed ``tp`` / ``cp`` / ``dp`` / ``pp`` communication, ``bubble``, ``optimizer``."""
        t = self.time
        terms = {"compute": t.compute_s, "recompute": t.recompute_s, "tp": t.tp_s, "cp": t.cp_s, "dp": t.dp_s,
                 "pp": t.pp_s, "ep": t.ep_s, "bubble": t.bubble_s, "optimizer": t.optimizer_s}
        return {k: v / self.step_time_s for k, v in terms.items()}

    def to_dict(self) -> dict:
        return {
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "model_tflops_per_gpu": self.model_tflops_per_gpu,
            "hardware_tflops_per_gpu": self.hardware_tflops_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "peak_memory_bytes": self.peak_memory_bytes,
            "hbm_bytes": self.hbm_bytes,
            "fits": self.fits,
            "num_micro_batches": self.num_micro_batches,
            "per_stage": [s.to_dict() for s in self.per_stage],
            "breakdown": {"time": self.time.to_dict(), "memory": self.memory.to_dict()},
            "timeline": [t.to_dict() for t in self.timeline],
            "timeline_micro_batches": self.timeline_micro_batches,
            "runtime": self.runtime.to_dict(),
            "flop_convention": FLOP_CONVENTION,
        }
