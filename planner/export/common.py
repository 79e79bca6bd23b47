"""What every export shares: its header lines, safe one-line text, the plan's uneven split."""
from __future__ import annotations

from planner.plan import ParallelConfig, Plan


def one_line(text: str) -> str:
    """``text`` from a file (a model name, a path) made safe for a comment or a quoted value of a
    script: control characters (a newline would start a new command) become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def header(plan: Plan) -> list[str]:
    p = plan.parallel
    return [f"clusterplan plan {plan.id}: {one_line(plan.model.name)} on {plan.n_nodes} x {plan.gpus_per_node} "
            f"GPUs ({one_line(plan.machine)})",
            f"split: {p.megatron_notation()}; global batch {p.global_batch} = micro batch "
            f"{p.micro_batch} x {p.num_micro_batches} micro-batches x dp {p.dp}; seq {p.seq_len}"]


def uneven_stages(p: ParallelConfig, n_layers: int) -> tuple[int, ...] | None:
    """The stage split when it differs from the uniform one (None when uniform)."""
    stages = p.layers_per_stage(n_layers)
    return None if len(set(stages)) == 1 else stages
