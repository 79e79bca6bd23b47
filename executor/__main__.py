"""``python -m executor PLAN.json --out DIR --steps S --warmup W`` — what torchrun runs on every rank.

Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun's environment), builds the mesh from the planner's
rank layout, runs S steps (W warm-up) and one traced step, writes ``DIR/records.jsonl`` (every
rank) and ``DIR/summary.json`` (rank 0; or the first rank that fails). Schema:
executor/README.md. Exit status: 0 ok/contended, 1 a rank failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import traceback
from pathlib import Path

from planner.errors import InputError

ALLOCATOR_PROBE_STEPS = 2  # warm-up steps measured by executor.measure.AllocatorPeak on CPU


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m executor", description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="plan JSON (clusterplan predict/plan --out, or Plan.save)")
    parser.add_argument("--out", required=True, help="output folder for records.jsonl and summary.json")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps, warm-up included (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the statistics (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank (default 1)")
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="process-group timeout for every collective (default 30 s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda when available (auto), else cpu")
    parser.add_argument("--data", default=None, help="optional local text file (byte-level tokens)")
    parser.add_argument("--seed", type=int, default=0, help="model init seed")
    parser.add_argument("--data-seed", type=int, default=1234, help="synthetic/sampled batch seed")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--contention-factor", type=float, default=0.6,
                        help="status contended when a rank's CPU ratio < factor x expected")
    parser.add_argument("--inject-fault", default=None, help="testing: raise|kill|oom:RANK:STEP")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as err:
        print(f"executor: error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    from planner.plan import Plan

    from executor import faults
    from planner import records

    if args.steps < 1 or args.warmup < 0 or args.warmup >= args.steps:
        raise InputError("steps", f"need steps >= 1 and 0 <= warmup < steps, got steps={args.steps} warmup={args.warmup}")
    fault = faults.Fault.parse(args.inject_fault)
    plan = Plan.load(args.plan)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world != plan.world_size:
        raise InputError("world_size", f"launched with {world} ranks, the plan needs {plan.world_size}")

    import torch

    from executor import train
    train.check_supported(plan)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    writer = records.RecordWriter(out, plan.id, rank)
    faults.install_signal_handlers()
    timeout = faults.set_default_timeouts(args.timeout_s)
    try:
        return _train(args, plan, rank, world, local_rank, writer, timeout, fault)
    except BaseException as exc:  # every failure is recorded, then the rank exits non-zero
        import torch.distributed as dist

        line, etype, oom = faults.describe(exc)
        sig = exc.signal if isinstance(exc, faults.Terminated) else None
        peer = sig is None and faults.is_peer_failure(exc)
        try:
            writer.write("error", error=line, error_type=etype, oom=oom, signal=sig, peer_failure=peer,
                         traceback=traceback.format_exc())
        except (InputError, OSError):
            pass
        if sig is None:  # the root cause (rank known) or a peer's failure seen here (rank unknown)
            try:
                _failed_summary(out, plan, args, rank, line, oom, peer)
            except (InputError, OSError):
                pass  # a full disk or a read-only folder: the launcher writes it in the space it holds
        seen = " (after a peer's failure)" if peer else (f" (stopped by {sig})" if sig else "")
        print(f"executor rank {rank}{seen}: {line}", file=sys.stderr)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        return 1
    finally:
        writer.close()


def _failed_summary(out: Path, plan, args, rank: int, line: str, oom: bool, peer: bool) -> None:
    """This rank's failed summary, unless a more telling one is there (a root cause over a
    peer's failure)."""
    from planner import records

    existing = records.read_summary(out)
    if existing is None or existing.get("status") != "failed" or (existing.get("rank") is None and not peer):
        error = f"{line} (seen by rank {rank}: a peer failed or hung)" if peer else line
        summary = records.summarize(records.read_records(out), plan.to_dict(), args.steps, args.warmup,
                                    plan.prediction, status="failed", error=error,
                                    rank=None if peer else rank, oom=oom)
        records.write_rank_summary(out, summary)


def _train(args, plan, rank, world, local_rank, writer, timeout, fault) -> int:
    import torch
    import torch.distributed as dist

    from executor import measure
    from executor.mesh import build_mesh, check_mesh

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world,
                            device_id=device if use_cuda else None)
    baseline = measure.rss_bytes()
    mesh = build_mesh(plan.parallel, device.type)
    check_mesh(mesh, plan.parallel, rank)
    # CPU: live tensor bytes from model build through the first ALLOCATOR_PROBE_STEPS warm-up
    # steps (the second step is the first with optimizer state, i.e. the steady-state peak)
    probe = measure.AllocatorPeak() if not use_cuda and args.warmup >= ALLOCATOR_PROBE_STEPS else None
    probe_ctx = contextlib.ExitStack()
    if probe is not None:
        probe_ctx.enter_context(probe)
    try:
        return _steps(args, plan, rank, world, local_rank, writer, fault, device, backend, baseline, mesh,
                      probe, probe_ctx)
    finally:
        probe_ctx.close()


def _steps(args, plan, rank, world, local_rank, writer, fault, device, backend, baseline, mesh,
           probe, probe_ctx) -> int:
    """Build the trainer, run the steps and the traced step, write the records and summary."""
    import torch
    import torch.distributed as dist

    from executor import measure
    from planner import records
    from executor.data import Batches
    from executor.train import OptimConfig, Trainer

    trainer = Trainer(plan, mesh, rank, device, optim=OptimConfig(lr=args.lr), seed=args.seed)
    coord = trainer.coord
    writer.write("env", world_size=world, local_rank=local_rank, backend=backend, device=str(device),
                 torch_version=torch.__version__, host=socket.gethostname(), pid=os.getpid(),
                 threads=torch.get_num_threads(), coord={"pp": coord.pp, "dp": coord.dp, "cp": coord.cp, "tp": coord.tp},
                 precision=plan.parallel.precision, tied_embeddings=trainer.tied, stage_ids=trainer.stage_ids)
    p = plan.parallel
    batches = Batches(plan.model.vocab_size, p.global_batch, p.seq_len, seed=args.data_seed, text_path=args.data)
    timer = measure.StepTimer(device)
    meter = measure.SavedActivationMeter(trainer.params)

    def barrier():
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()

    for step in range(args.steps + 1):
        tokens = batches.global_batch(step)
        traced = step == args.steps
        barrier()
        if fault is not None:
            fault.maybe_fire(rank, step)
        tracer = measure.PhaseTracer(device) if traced else None
        timer.start()
        if traced:
            with meter.active():
                loss = trainer.step(tokens, tracer)
        else:
            loss = trainer.step(tokens)
        wall, cpu = timer.stop()
        if traced:
            writer.write("trace", step=step, t0_unix=tracer.t0_unix, wall_s=wall, events=tracer.events)
        else:
            writer.write("step", step=step, warmup=step < args.warmup, wall_s=wall, process_s=cpu,
                         cpu_ratio=cpu / wall if wall > 0 else None, run_queue_wait_s=timer.last_wait_s, tokens=p.tokens_per_step, loss=loss)
        if step == ALLOCATOR_PROBE_STEPS - 1:
            probe_ctx.close()
    alloc, reserved = measure.cuda_memory(device)
    peak = measure.rss_peak_bytes()
    mem = trainer.memory_breakdown()
    mem["activations_peak_bytes"] = meter.peak
    writer.write("memory", rss_baseline_bytes=baseline, rss_peak_bytes=peak, ru_maxrss_bytes=measure.ru_maxrss_bytes(),
                 rss_peak_minus_baseline_bytes=(peak - baseline) if (peak is not None and baseline is not None) else None,
                 accounted_bytes=sum(mem.values()), cuda_max_allocated_bytes=alloc, cuda_max_reserved_bytes=reserved,
                 cpu_allocator_peak_bytes=probe.peak_bytes if probe is not None else None,
                 **mem)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(writer.written, gathered, dst=0)
    if rank == 0:
        everything = [r for part in gathered for r in part]
        summary = records.summarize(everything, plan.to_dict(), args.steps, args.warmup,
                                    plan.prediction, contention_factor=args.contention_factor)
        records.write_rank_summary(args.out, summary)
    writer.write("end", status="ok")
    barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
