"""``clusterplan run PLAN.json``: execute a plan with torchrun and record what it measured.

Torch-free: launches the ``torchrun`` command line of :mod:`planner.launch`, refuses a plan this machine cannot run before launching, streams the
ranks' output, and afterwards makes sure ``summary.json`` says ``failed`` when torchrun failed
(a rank killed by a signal cannot write it itself). Records schema: executor/README.md.

Local limits (documented refusal rules):
* CPU: local ranks x threads must not exceed ``MAX_OVERSUBSCRIPTION`` (4) x usable cores.
* GPU: local ranks must not exceed the visible GPUs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from planner.errors import InputError, require
from planner.executor_rules import unsupported
from planner.io import check_output_dir
from planner.launch import (LaunchConfig, kill_group, local_ranks, shell_join, socket_env, srun_command,
                            stop_group_on_signals, subprocess_env, torchrun_command)

MAX_OVERSUBSCRIPTION = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def check_machine(world_size: int, cfg: LaunchConfig, gpus: int | None = None, cores: int | None = None) -> str:
    """The device kind to run on ('cpu' or 'cuda'); InputError when this machine cannot run it."""
    n = local_ranks(world_size, cfg.nnodes)
    gpus = visible_gpus() if gpus is None else gpus
    kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)) else "cpu"
    if kind == "cuda":
        require(gpus >= n, "world_size", f"the plan needs {n} GPUs on this node, {gpus} are visible")
        return kind
    cores = usable_cores() if cores is None else cores
    limit = MAX_OVERSUBSCRIPTION * cores
    require(cfg.oversubscribe or n * cfg.threads <= limit, "world_size",
            f"{n} local ranks x {cfg.threads} threads exceed {MAX_OVERSUBSCRIPTION} x {cores} usable cores "
            f"= {limit} (pass --oversubscribe to run anyway)")
    return kind


_RANK_LINE = re.compile(r"^executor rank (\d+): (.+)$", re.M)  # a root cause (a peer's failure says so)
_ROOT = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def root_cause(torchrun_output: str) -> tuple[int | None, int | None]:
    """(global rank, exit code) of torchrun's 'Root Cause (first observed failure)' block."""
    match = _ROOT.search(torchrun_output)
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def finalize(out: str | Path, plan, cfg: LaunchConfig, rc: int, output: str, command: list[str]) -> dict | None:
    """After torchrun: keep the ranks' summary if it is consistent, otherwise write/patch a
    failed one from the records so far. Returns the summary."""
    from planner import records

    summary = records.read_summary(out)
    launcher = {"exit_code": rc, "command": command}
    if rc == 0 and summary is not None:
        return summary
    rank, code = root_cause(output)
    killed = code is not None and code < 0 and code != -15  # a signal torchrun did not send
    if summary is not None and summary.get("status") == "failed" and summary.get("rank") is not None and not killed:
        summary["launcher"] = launcher
        records.write_summary(out, summary)
        return summary
    error = (f"rank {rank} {_exit_text(code)}" if rank is not None
             else f"torchrun {_exit_text(rc)} before the ranks wrote a summary")
    rank_errors = [r for r in records.read_records(out) if r["kind"] == "error" and r.get("signal") is None]
    oom = any(r.get("oom") for r in rank_errors)
    causes = [r for r in rank_errors if not r.get("peer_failure")]
    if not killed and causes:  # a rank that raised said why
        rank, error = causes[0]["rank"], causes[0]["error"]
    elif rank is None and rank_errors:
        rank, error = rank_errors[0]["rank"], rank_errors[0]["error"]
    elif not rank_errors and not killed and (said := _RANK_LINE.search(output)):
        # no record written (a full disk): the line the failing rank printed
        rank, error = int(said.group(1)), said.group(2)
    summary = records.summarize(records.read_records(out), plan.to_dict(), cfg.steps, cfg.warmup,
                                plan.prediction, status="failed", error=error, rank=rank, oom=oom)
    summary["launcher"] = dict(launcher, final=True)  # the ranks are gone: none may rewrite it
    records.write_summary(out, summary)
    return summary


def with_prediction(plan):
    """``plan`` carrying the cost model's prediction (computed here when the file has none, so
    the executor only copies it); a plan the cost model cannot price keeps none."""
    if plan.prediction is not None:
        return plan
    from planner.cost.step import predict_plan

    try:
        return plan.with_prediction(predict_plan(plan).to_dict())
    except (InputError, ValueError):
        return plan


def launch(plan_path: str, cfg: LaunchConfig, echo=sys.stderr) -> tuple[int, dict | None]:
    """Run the plan; returns (exit status, summary). Exit 0 ok/contended, 1 failed."""
    from planner.plan import Plan

    plan = Plan.load(plan_path)
    require(cfg.steps >= 1 and 0 <= cfg.warmup < cfg.steps, "steps",
            f"need steps >= 1 and 0 <= warmup < steps, got steps={cfg.steps} warmup={cfg.warmup}")
    require(cfg.threads >= 1, "threads", "must be >= 1")
    require(cfg.timeout_s > 0, "timeout-s", "must be > 0")
    why = unsupported(plan.parallel, plan.model)
    if why:
        field, reason = why.split(": ", 1)
        raise InputError(field, reason)
    if cfg.data:
        require(Path(cfg.data).is_file(), "data", f"{cfg.data} is not a file")
    check_machine(plan.world_size, cfg)
    plan = with_prediction(plan)
    fits = (plan.prediction or {}).get("fits")
    if fits is False and not cfg.force:
        need, have = plan.prediction.get("peak_memory_bytes", 0.0), plan.prediction.get("hbm_bytes", 0.0)
        raise InputError("plan", f"predicted not to fit: {need / 2**30:.1f} GiB per rank of {have / 2**30:.1f} GiB "
                                 "(--force to run it anyway)")
    out = check_output_dir(cfg.out, "out")
    if (out / "summary.json").exists() or (out / "records.jsonl").exists():
        require(cfg.overwrite, "out", f"{out} already holds a run (--overwrite to replace it, or another --out)")
    with run_lock(out):
        for name in ("records.jsonl", "summary.json", RANKS_LOG):  # a run folder holds one run
            (out / name).unlink(missing_ok=True)
        return _launch(plan, cfg, out, echo)


@contextlib.contextmanager
def run_lock(out: Path):
    """``out/.lock`` (O_EXCL, holding this process's id) for the run's duration: a second run into
    the same folder is refused while the first one's process lives; a lock left by a dead
    process is taken over."""
    lock = out / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its process is gone
                continue
            except PermissionError:
                pass
            raise InputError("out", f"{out} is in use by another clusterplan run (process {pid})") from None
    else:
        raise InputError("out", f"cannot lock {out}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _launch(plan, cfg: LaunchConfig, out: Path, echo) -> tuple[int, dict | None]:
    from planner import records

    plan_copy = plan.save(out / "plan.json")  # the run folder is self-contained: compare and fit read it
    cfg = dataclasses.replace(cfg, plan_path=str(plan_copy))  # the ranks copy its prediction
    records.reserve_summary_space(out)
    stop_watch = threading.Event()
    watcher = threading.Thread(target=watch_steps, args=(out / "records.jsonl", cfg.steps, stop_watch), daemon=True)
    if echo is None:  # --verbose shows the ranks' own lines instead
        watcher.start()
    try:
        rc, output, cmd, signal_name = _run_ranks(plan, cfg, out, echo)
    finally:
        stop_watch.set()
        if watcher.is_alive():
            watcher.join(timeout=2)
        records.release_summary_space(out)  # the room the summary below is written in
    if signal_name:
        summary = stopped_summary(out, plan, cfg, signal_name, cmd)
    else:
        summary = finalize(out, plan, cfg, rc, output, cmd)
    _keep_output(out, output)
    ok = not signal_name and rc == 0 and (summary or {}).get("status") in ("ok", "contended")
    return (0 if ok else 1), summary


def _is_rank0_step(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("kind") == "step" and record.get("rank") == 0


def watch_steps(path: Path, total: int, stop: threading.Event, poll_s: float = 0.5, stream=None) -> int:
    """Until ``stop``: rank 0's finished steps (its ``step`` records in ``path``) as a progress bar
    on a terminal (:class:`planner.progress.Progress`); returns the last count."""
    from planner.progress import Progress

    bar = Progress("steps", delay_s=0.0, stream=stream)
    done, offset, partial = 0, 0, b""
    while True:
        finished = stop.wait(poll_s)
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            done += sum(1 for line in lines if _is_rank0_step(line))
        bar(done / max(1, total), f"{done}/{total}")
        if finished:
            bar.close()
            return done


def _run_ranks(plan, cfg: LaunchConfig, out: Path, echo) -> tuple[int, str, list[str], str | None]:
    """Start the ranks (torchrun here, or one agent per emulated node) and wait for them:
    (exit status, their output, the command, the signal that stopped them or None)."""
    if cfg.emulated:
        from planner.commands.run_emulated import launch_nodes
        from planner.emulate import current

        return launch_nodes(plan, cfg, out, echo, current())
    cmd = torchrun_command(plan.world_size, cfg)
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:  # nothing outside this host reaches the ranks
        from planner.loopback_only import isolation_prefix

        cmd = [*isolation_prefix(), *cmd]
    env = subprocess_env(OMP_NUM_THREADS=str(cfg.threads), PYTHONUNBUFFERED="1")
    env.update(socket_env(cfg, env))
    # torchrun and its ranks in a process group of their own, so a signal to this launcher stops them all
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    captured: list[str] = []

    def pump():
        for line in proc.stdout:
            captured.append(line)
            if echo is not None:
                echo.write(line)
                echo.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    with stop_group_on_signals(proc) as stopped:
        rc = proc.wait()
    kill_group(proc)  # ranks of a torchrun that died (SIGKILL) would train on, orphaned
    reader.join(timeout=5)
    return rc, "".join(captured), cmd, (stopped[0] if stopped else None)


RANKS_LOG = "ranks.log"
RANKS_LOG_MAX_BYTES = 1 << 20


def _keep_output(out: Path, output: str) -> None:
    """The ranks' and torchrun's output (its last MiB) in ``out/ranks.log``, where there is room."""
    try:
        (out / RANKS_LOG).write_text(output[-RANKS_LOG_MAX_BYTES:])
    except OSError:
        pass


def stopped_summary(out: Path, plan, cfg: LaunchConfig, signal_name: str, command: list[str]) -> dict:
    """The summary of a run this launcher stopped on a signal: failed, the signal named, marked
    final so no rank may overwrite it (planner.records.write_rank_summary)."""
    from planner import records

    summary = records.summarize(records.read_records(out), plan.to_dict(), cfg.steps, cfg.warmup, plan.prediction,
                                status="failed", error=f"stopped by {signal_name} to clusterplan run", rank=None)
    summary["launcher"] = {"exit_code": None, "command": command, "signal": signal_name, "final": True}
    records.write_summary(out, summary)
    return summary


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="execute a plan with torchrun (gloo on CPU, nccl on GPU) and record it",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="plan JSON")
    parser.add_argument("--out", default=None, help="run folder (default runs/<plan id>)")
    parser.add_argument("--steps", type=int, default=10, help="steps incl. warm-up (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="collective timeout (default 30 s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data", default=None, help="local text file for byte-level tokens")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT for multi-node rendezvous")
    parser.add_argument("--emulated", action="store_true",
                        help="run across the emulated cluster's nodes (clusterplan emulate up)")
    parser.add_argument("--bind", default=None, metavar="IFACE",
                        help="network interface for gloo/NCCL sockets on a multi-node run (single node: lo)")
    parser.add_argument("--oversubscribe", action="store_true", help="run even with more ranks than the CPU limit")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--force", action="store_true", help="run a plan the cost model predicts does not fit")
    parser.add_argument("--inject-fault", default=None, help=argparse_suppress())
    parser.add_argument("--print-command", action="store_true", help="print the torchrun and srun lines and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show the ranks' and torchrun's output as it comes (always kept in OUT/ranks.log)")
    parser.set_defaults(func=handler)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def handler(args) -> int:
    from planner.calibrate.host import warn_if_profile_of_other_host
    from planner.plan import Plan

    plan = Plan.load(args.plan)
    cfg = LaunchConfig(plan_path=args.plan, out=args.out or f"runs/{plan.id}", steps=args.steps,
                       warmup=args.warmup, threads=args.threads, timeout_s=args.timeout_s, nnodes=args.nnodes,
                       node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint, device=args.device,
                       data=args.data, inject_fault=args.inject_fault, oversubscribe=args.oversubscribe,
                       overwrite=args.overwrite, force=args.force, bind=args.bind, emulated=args.emulated)
    if args.print_command:
        env = [f"{k}={v}" for k, v in socket_env(cfg, dict(os.environ)).items()]
        prefix = ["env", *env] if env else []  # srun passes the environment on (--export=ALL)
        print("torchrun: " + shell_join(prefix + torchrun_command(plan.world_size, cfg)))
        print("srun:     " + shell_join(prefix + srun_command(plan.world_size, cfg)))
        return 0
    rc, summary = launch(args.plan, cfg, echo=sys.stderr if args.verbose else None)
    if summary is not None:
        m = summary.get("measured", {})
        line = f"{summary['status']}: plan {summary['plan_id']} ({summary['parallel']})"
        if m.get("step_time_s") is not None:
            line += f", step {m['step_time_s']:.4f} s (p10 {m['step_time_s_p10']:.4f}, p90 {m['step_time_s_p90']:.4f})"
            line += f", {m['tokens_per_s']:.0f} tokens/s"
        if m.get("peak_memory_bytes") is not None:
            line += f", peak {m['peak_memory_bytes'] / 2**20:.1f} MiB"
        if summary.get("error"):
            line += f"; error (rank {summary.get('rank')}): {summary['error']}"
        print(line)
        print(f"records: {Path(cfg.out) / 'records.jsonl'}  summary: {Path(cfg.out) / 'summary.json'}"
              + (f"  ranks' output: {Path(cfg.out) / RANKS_LOG}" if rc else ""))
    if not plan.cluster:  # the prediction beside the measurement came from this profile
        warn_if_profile_of_other_host(plan.hardware, "run")
    return rc
