"""torchrun and Slurm scripts that launch clusterplan's own executor on a plan."""
from __future__ import annotations

from planner.errors import require
from planner.executor_rules import unsupported
from planner.export.common import header
from planner.launch import Shell, node_torchrun_command, shell_join
from planner.plan import Plan


def _executor_lines(plan: Plan) -> list[str]:
    """The header of a script that launches this project's executor: the plan must be one it runs
    (InputError naming the rule otherwise); one predicted not to fit says so, as ``run`` would."""
    why = unsupported(plan.parallel, plan.model)
    require(not why, "export", f"the executor cannot run this plan ({why})")
    lines = [f"# {line}" for line in header(plan)]
    pred = plan.prediction or {}
    if pred.get("fits") is False:
        lines.append(f"# WARNING: predicted not to fit ({pred.get('peak_memory_bytes', 0) / 2**30:.1f} GiB per rank of "
                     f"{pred.get('hbm_bytes', 0) / 2**30:.1f} GiB); clusterplan run refuses it without --force")
    return lines


def to_torchrun(plan: Plan, plan_path: str = "PLAN.json") -> str:
    lines = _executor_lines(plan)
    lines.append(f"# Run on each of the {plan.n_nodes} node(s); MASTER_ADDR = the first node's address.")
    lines.append("export MASTER_ADDR=${MASTER_ADDR:-localhost}")
    lines.append(shell_join(node_torchrun_command(plan.n_nodes, plan.gpus_per_node, plan_path, f"runs/{plan.id}",
                                                  master=Shell("$MASTER_ADDR"), rdzv_id=plan.id)))
    return "\n".join(lines) + "\n"


def to_slurm(plan: Plan, plan_path: str = "PLAN.json") -> str:
    """An sbatch script: one srun task per node, each running torchrun."""
    run_dir = f"runs/{plan.id}"
    cmd = shell_join(node_torchrun_command(plan.n_nodes, plan.gpus_per_node, plan_path, run_dir,
                                           master=Shell("$MASTER_ADDR"), rdzv_id=Shell("$SLURM_JOB_ID")))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=clusterplan-{plan.id}",
        f"#SBATCH --nodes={plan.n_nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={plan.gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --output=clusterplan-{plan.id}-%j.out",
        *_executor_lines(plan),
        "set -euo pipefail",
        f"mkdir -p {run_dir}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        f"srun --nodes={plan.n_nodes} --ntasks-per-node=1 {cmd}",
    ]
    return "\n".join(lines) + "\n"
