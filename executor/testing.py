"""Helpers for the tests: spawn gloo ranks with a file store and a timeout, the equivalence job
(a plan's parameters after a few steps vs the single-process reference), and a tally of the
bytes element-wise aten ops read and write."""
from __future__ import annotations

import json
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from planner.model import ModelSpec
from planner.plan import ParallelConfig, Plan


def tiny_spec(style: str = "gpt", n_layers: int = 4, hidden: int = 32, heads: int = 4, kv_heads: int | None = None,
              vocab: int = 64, seq: int = 16, experts: int = 0, top_k: int = 0) -> ModelSpec:
    llama = style == "llama"
    return ModelSpec(name=f"test-{style}", n_layers=n_layers, hidden_size=hidden, n_heads=heads,
                     n_kv_heads=kv_heads or heads, ffn_hidden_size=2 * hidden, vocab_size=vocab, seq_len=seq,
                     mlp="swiglu" if llama else "gelu", norm="rmsnorm" if llama else "layernorm",
                     position="rope" if llama else "learned", tied_embeddings=not llama, bias=not llama,
                     n_experts=experts, top_k=top_k)


def make_plan(spec: ModelSpec, **parallel) -> Plan:
    parallel.setdefault("seq_len", spec.seq_len)
    parallel.setdefault("precision", "fp32")
    cfg = ParallelConfig(**parallel)
    return Plan(model=spec, hardware="test", n_nodes=1, gpus_per_node=cfg.world_size, parallel=cfg)


def _entry(local_rank: int, fn_name: str, world: int, tmp: str, payload: dict, timeout_s: float) -> None:
    import importlib

    from executor import faults

    torch.set_num_threads(1)
    faults.set_default_timeouts(timeout_s)
    out = Path(tmp) / f"result.{local_rank}.json"
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=local_rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        module_name, func = fn_name.rsplit(".", 1)
        result = getattr(importlib.import_module(module_name), func)(local_rank, payload)
        out.write_text(json.dumps({"ok": True, "result": result}))
    except BaseException as exc:  # report to the parent instead of dying silently
        out.write_text(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()}))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn_name: str, world: int, tmp: str | os.PathLike, payload: dict, timeout_s: float = 120.0,
          pg_timeout_s: float = 30.0) -> list:
    """Run ``fn_name(rank, payload)`` ('module.func') on ``world`` gloo ranks; returns each rank's
    JSON result. Kills the ranks and raises TimeoutError after ``timeout_s``."""
    tmp = str(tmp)
    ctx = mp.start_processes(_entry, args=(fn_name, world, tmp, payload, pg_timeout_s), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fn_name} on {world} ranks did not finish within {timeout_s} s")
    except mp.spawn.ProcessException:
        pass
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    results = []
    for rank in range(world):
        path = Path(tmp) / f"result.{rank}.json"
        if not path.exists():
            raise RuntimeError(f"rank {rank} wrote no result")
        data = json.loads(path.read_text())
        if not data["ok"]:
            raise RuntimeError(f"rank {rank} failed: {data['error']}\n{data['traceback']}")
        results.append(data["result"])
    return results


def equivalence_job(rank: int, payload: dict) -> list[dict]:
    """For each case {name, plan (dict), steps}: run the plan's Trainer ``steps`` steps and return
    the max |param - reference| over the parameters this rank holds."""
    from executor.data import Batches
    from executor.mesh import build_mesh, check_mesh
    from executor.train import OptimConfig, Trainer, reference_params

    out = []
    optim = OptimConfig(**payload.get("optim", {}))
    for case in payload["cases"]:
        plan = Plan.from_dict(case["plan"])
        p = plan.parallel
        mesh = build_mesh(p, "cpu")
        check_mesh(mesh, p, rank)
        trainer = Trainer(plan, mesh, rank, torch.device("cpu"), optim=optim)
        batches = Batches(plan.model.vocab_size, p.global_batch, p.seq_len, seed=1234)
        losses = [trainer.step(batches.global_batch(s)) for s in range(case["steps"])]
        got = trainer.named_full_params()
        ref = reference_params(plan, case["steps"], optim=optim)
        missing = sorted(set(got) - set(ref))
        diffs = {n: float((got[n] - ref[n]).abs().max()) for n in got if n in ref}
        worst = max(diffs, key=diffs.get) if diffs else None
        diff = diffs[worst] if worst else float("nan")
        moved = max(float((ref[n] - init).abs().max()) for n, init in _initial(plan).items() if n in got)
        out.append({"name": case["name"], "max_abs_diff": diff, "worst": worst, "n_params": len(got), "names": sorted(got), "missing": missing,
                    "moved": moved, "losses": losses})
        dist.barrier()
    return out


def _initial(plan: Plan) -> dict[str, torch.Tensor]:
    from executor.model import build_model
    from executor.train import tie_embeddings

    model = build_model(plan.model, tie_embeddings=tie_embeddings(plan), seed=0)
    return {n: q.detach() for n, q in model.named_parameters()}


# GEMMs and the attention kernel are timed apart; _unsafe_view moves no data
NOT_ELEMENTWISE = {"mm", "addmm", "bmm", "_unsafe_view", "_scaled_dot_product_flash_attention_for_cpu",
                   "_scaled_dot_product_flash_attention_for_cpu_backward"}


class ByteTally(TorchDispatchMode):
    """Bytes of every tensor argument and result of the element-wise aten ops dispatched."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._overloadpacket.__name__ in NOT_ELEMENTWISE:
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def ep_dispatch_job(rank: int, payload: dict) -> dict:
    """The dispatch benchmark's rows and, with its pass-through experts and weights summing to
    one, the largest |combine(dispatch(x)) - x| of one call (0 when every token comes back)."""
    from executor.bench import ep_dispatch
    from executor.parallel.ep import dispatch_combine

    rows = ep_dispatch.ep_dispatch_bench(reps=payload["reps"], warmup=1)
    weights, chosen = ep_dispatch.balanced_routing(64)
    x = torch.randn(64, ep_dispatch.HIDDEN, generator=torch.Generator().manual_seed(rank))
    out = dispatch_combine(ep_dispatch.pass_through_layer(dist.new_group([0, 1]), rank), x, weights, chosen)
    return {"rows": rows, "max_error": float((out - x).abs().max())}
