"""Every command line that starts processes: torchrun of the executor (``clusterplan run``, its
printed srun line, the exported torchrun / Slurm scripts), torchrun of the benchmarks
(``clusterplan calibrate``) and the CLI itself in a subprocess (the demo, the local sweep).

torchrun: ``python -m torch.distributed.run`` (the ``torchrun`` entry point); one node runs
``--standalone``, several join through the c10d rendezvous (PyTorch elastic docs, "torchrun").
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from planner.errors import require

RDZV_PORT = 29500
REPO_ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = ("-m", "torch.distributed.run")


@dataclass(frozen=True)
class LaunchConfig:
    """How to launch the executor. nnodes/node_rank/rdzv_endpoint: torchrun's multi-node options
    (nnodes=1 and no endpoint = ``--standalone``). device: auto|cpu|cuda. threads: torch threads
    per rank. overwrite: replace a run already in ``out``. force: run a plan predicted not to fit.
    bind: the network interface gloo and NCCL's sockets use on a multi-node run (single-node runs
    use loopback). emulated: one agent per node of the emulated cluster (:mod:`planner.emulate`)."""

    plan_path: str
    out: str
    steps: int = 10
    warmup: int = 3
    threads: int = 1
    timeout_s: float = 30.0
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    device: str = "auto"
    data: str | None = None
    inject_fault: str | None = None
    oversubscribe: bool = False
    overwrite: bool = False
    force: bool = False
    bind: str | None = None
    emulated: bool = False


def socket_env(cfg: LaunchConfig, environ: dict[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME for the ranks: ``lo`` on a single node (gloo
    otherwise binds to the address the hostname resolves to), ``cfg.bind`` on several; a value
    already in ``environ`` is the user's choice and is kept."""
    single = cfg.nnodes == 1 and not cfg.rdzv_endpoint
    iface = "lo" if single else cfg.bind
    if iface is None:
        return {}
    return {k: iface for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if k not in environ}


def local_ranks(world_size: int, nnodes: int) -> int:
    require(nnodes >= 1, "nnodes", "must be >= 1")
    require(world_size % nnodes == 0, "nnodes", f"the plan's {world_size} ranks do not split over {nnodes} nodes")
    return world_size // nnodes


def executor_args(cfg: LaunchConfig) -> list[str]:
    """``python -m executor``'s arguments (executor/__main__.py)."""
    args = [cfg.plan_path, "--out", cfg.out, "--steps", str(cfg.steps), "--warmup", str(cfg.warmup),
            "--threads", str(cfg.threads), "--timeout-s", str(cfg.timeout_s), "--device", cfg.device]
    if cfg.data:
        args += ["--data", cfg.data]
    if cfg.inject_fault:
        args += ["--inject-fault", cfg.inject_fault]
    return args


def rendezvous_args(endpoint: str, rdzv_id: str | None = None) -> list[str]:
    """torchrun's c10d rendezvous options: the nodes meet at ``endpoint``."""
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint] + ([] if rdzv_id is None else ["--rdzv-id", rdzv_id])


def torchrun_command(world_size: int, cfg: LaunchConfig, python: str = sys.executable) -> list[str]:
    """This node's torchrun of the executor for a plan of ``world_size`` ranks."""
    n = local_ranks(world_size, cfg.nnodes)
    cmd = [python, *TORCHRUN]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd += ["--standalone"]
    else:
        require(bool(cfg.rdzv_endpoint), "rdzv-endpoint", "multi-node runs need --rdzv-endpoint HOST:PORT")
        cmd += ["--nnodes", str(cfg.nnodes), "--node-rank", str(cfg.node_rank), *rendezvous_args(cfg.rdzv_endpoint)]
    return cmd + ["--nproc-per-node", str(n), "-m", "executor", *executor_args(cfg)]


def srun_command(world_size: int, cfg: LaunchConfig) -> list[str]:
    """One torchrun per node under Slurm; the rendezvous host is the first node of the job."""
    n = local_ranks(world_size, cfg.nnodes)
    endpoint = cfg.rdzv_endpoint or Shell(f"$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):{RDZV_PORT}")
    inner = ["python", *TORCHRUN, "--nnodes", str(cfg.nnodes), "--nproc-per-node", str(n), *rendezvous_args(endpoint),
             "-m", "executor", *executor_args(cfg)]
    return ["srun", f"--nodes={cfg.nnodes}", "--ntasks-per-node=1", f"--cpus-per-task={max(1, n * cfg.threads)}",
            *inner]


def node_torchrun_command(nnodes: int, gpus_per_node: int, plan_path: str, out: str, *, master: str,
                          rdzv_id: str, port: int = RDZV_PORT) -> list[str]:
    """The ``torchrun`` line an exported script runs on every node of a cluster."""
    endpoint = f"{master}:{port}"
    return ["torchrun", "--nnodes", str(nnodes), "--nproc-per-node", str(gpus_per_node),
            *rendezvous_args(Shell(endpoint) if isinstance(master, Shell) else endpoint, rdzv_id),
            "-m", "executor", plan_path, "--out", out]


def bench_command(nproc: int, out_json: str | os.PathLike, *, quick: bool, parts: str | None = None) -> list[str]:
    """torchrun of the calibration benchmarks (executor/bench) on this host."""
    cmd = [sys.executable, *TORCHRUN, "--standalone", "--nproc-per-node", str(nproc),
           "-m", "executor.bench", "--out", str(out_json)]
    if quick:
        cmd.append("--quick")
    if parts:
        cmd += ["--parts", parts]
    return cmd


def cli_command(*args: str) -> list[str]:
    """``clusterplan ARGS`` as a subprocess of this interpreter."""
    return [sys.executable, "-m", "planner.cli", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child that must import this checkout (``-m executor`` and
    ``-m planner.cli`` from any working directory)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class Shell(str):
    """A command part this tool wrote as a shell expansion (``$MASTER_ADDR``, ``$(scontrol ...)``):
    :func:`shell_join` leaves it unquoted. Every other part, whatever it holds, is quoted."""


def shell_join(cmd: list[str]) -> str:
    """``cmd`` as one shell line: every part quoted with ``shlex.quote`` except :class:`Shell` parts."""
    return " ".join(part if isinstance(part, Shell) else shlex.quote(part) for part in cmd)


STOP_GRACE_S = 5.0
"""After SIGTERM the run's process group gets this long before SIGKILL (torchrun forwards the
signal to its ranks; a rank stuck in a collective only dies to SIGKILL)."""


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL to what is left after the grace period; returns
    when the group is empty. ``proc`` was started with ``start_new_session``, so it leads the group
    and the group id is its pid, which still reaches ranks that outlive it (a torchrun killed with
    SIGKILL leaves its ranks running)."""
    pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so an empty group reads as empty
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


@contextlib.contextmanager
def stop_group_on_signals(*procs: subprocess.Popen):
    """While inside: SIGTERM, SIGINT or SIGHUP to this launcher stop every process group the
    ``procs`` lead (torchrun agents and their ranks: SIGTERM, then SIGKILL after
    :data:`STOP_GRACE_S`). Yields a list that holds the signal's name once one arrived."""
    stopped: list[str] = []
    previous = {}

    def stop(signum, _frame):
        if not stopped:
            stopped.append(signal.Signals(signum).name)
        for proc in procs:
            kill_group(proc)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: the caller handles its own signals
            pass
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
