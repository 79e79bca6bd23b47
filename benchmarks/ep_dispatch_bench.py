"""What the executor's expert-parallel dispatch costs on this host, piece by piece.

    .venv/bin/python benchmarks/ep_dispatch_bench.py [--model tests/fixtures/tiny/tiny-mixtral] [--reps 50]

One MoE layer of ``--model`` (the executor's ``executor.model.MoE``), forward and backward on
``micro-batch 2 x seq 128`` tokens: in one process with every expert local, then on two gloo ranks
with expert parallelism 2 (``executor/parallel/ep.py``: two small all-to-alls for the counts and
expert ids, one autograd all-to-all each way for the tokens), beside the two kinds of all-to-all
alone: ``dist.all_to_all_single`` (what ``calibrate`` times) and the functional
``all_to_all_single_autograd`` the dispatch uses for the tokens. Medians after 10 warm-up calls;
one rank's numbers per line (both ranks print). Prints, writes nothing.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WARMUP = 10


def _moe(model: str):
    import torch

    from executor.model import build_model
    from planner.catalog import load_model
    torch.manual_seed(0)
    spec = load_model(model, seq_len=128)
    layer = next(i for i in range(spec.n_layers) if i >= spec.dense_layers)
    net = build_model(spec)
    return spec, net, net.layers[str(layer)].mlp


def _fwd_bwd(fn, x, reps: int, before=None) -> tuple[float, float]:
    """Median forward and backward milliseconds of ``fn(x)`` (the executor's bench timer)."""
    from executor.bench.ep_dispatch import forward_backward_s

    fwd_s, bwd_s = forward_backward_s(fn, lambda: x, reps=reps, warmup=WARMUP, before=before)
    return fwd_s * 1e3, bwd_s * 1e3


def local(model: str, reps: int) -> None:
    import torch
    torch.set_num_threads(1)
    spec, _, moe = _moe(model)
    x = torch.randn(2, 128, spec.hidden_size, requires_grad=True)
    f, b = _fwd_bwd(moe, x, reps)
    print(f"one process, {spec.n_experts} experts local: MoE forward {f:.3f} ms, backward {b:.3f} ms", flush=True)


def ranked(rank: int, port: int, model: str, reps: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

    from executor.parallel.ep import shard_experts
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    spec, net, moe = _moe(model)
    shard_experts(net, rank, 2, dist.group.WORLD)
    x = torch.randn(2, 128, spec.hidden_size, requires_grad=True)
    f, b = _fwd_bwd(moe, x, reps, before=dist.barrier)
    rows = 2 * 128 * spec.top_k
    tokens = torch.randn(rows, spec.hidden_size, requires_grad=True)
    split = [rows // 2, rows // 2]
    af, ab = _fwd_bwd(lambda t: wait_tensor(all_to_all_single_autograd(t, split, split, dist.group.WORLD)),
                      tokens, reps, before=dist.barrier)
    out = torch.empty_like(tokens)
    plain = []
    for i in range(WARMUP + reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_to_all_single(out, tokens.detach(), split, split)
        if i >= WARMUP:
            plain.append(time.perf_counter() - t0)
    print(f"rank {rank} of 2, ep 2: MoE forward {f:.3f} ms, backward {b:.3f} ms; {rows} x {spec.hidden_size} "
          f"all-to-all: plain {statistics.median(plain) * 1e3:.3f} ms, autograd forward {af:.3f} ms, "
          f"backward {ab:.3f} ms", flush=True)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "tiny" / "tiny-mixtral"))
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    import torch.multiprocessing as mp

    local(a.model, a.reps)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=ranked, args=(r, port, a.model, a.reps)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
