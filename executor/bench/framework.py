"""The executor's own building blocks, timed on this machine (``--parts framework``, 2 ranks).

What ``planner.calibrate`` turns into the profile's ``framework:`` section:

* per-op cost under autograd: the executor's whole model (``executor.model``, both block
  styles: GPT and Llama) at a degenerate shape (h=16, s=8, one sequence) where the arithmetic
  is negligible; each phase's time divided by the aten ops it dispatched (counted with a
  ``TorchDispatchMode``): forward, backward, ``AdamW(foreach=False).step``.
* reference steps at a small shape (h=128, 2 layers, s=128; not any sweep shape) built from the
  executor's real wrappers: plain (one rank), tensor parallel (``executor.parallel.tp``),
  DDP (``executor.parallel.dp``), ZeRO-1 (``executor.parallel.zero``) and FSDP2
  (``executor.parallel.fsdp``) on 2 ranks; per phase the slowest rank's time, median over
  steps. Every case (and the pipeline step below) is timed in short blocks, interleaved over
  several rounds (:func:`_interleaved`), so a slow spell of the machine falls on all alike.
  The calibration subtracts what the cost model predicts for the same step and
  divides the rest by the units the executor runs (TP linears, FSDP units, parameter tensors).
  Plain, TP, DDP and FSDP2 also run at a wider shape (:data:`REFERENCE_WIDE`, 4x the
  activation per TP module, 3.4x the parameter bytes): TP's cost per module, DDP's reducer cost
  and FSDP2's cost per unit are each a constant plus a per-byte part. The plain step also runs
  on both ranks at once at both shapes (``plain_both``, ``plain_wide_both``): with the alone /
  at-once pair below, what two ranks computing together cost (GEMMs and the rest apart).
* pp=2 steps through the executor's own ``Trainer`` (whole steps): 1F1B at the reference and
  the wide shape (what ``torch.distributed.pipelining`` costs per schedule action, a constant
  and a part growing with the action's work) and zero bubble at the wide shape (what its split
  backward costs over the fused one).
* memory: fresh processes (``python -m executor.bench.memstep``) run real training steps of
  the reference model at two batch sizes and report the CPU allocator's peak live tensor bytes
  (what the executor reports on CPU) and the RSS high-water minus the baseline.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from executor.bench.timing import measure
from planner.model import ModelSpec

REFERENCE = {"hidden_size": 128, "n_layers": 2, "seq_len": 128, "micro_batch": 4, "vocab_size": 512}
"""The reference shape of the wrapper measurements (small: overheads are a large share)."""
REFERENCE_WIDE = {"hidden_size": 256, "n_layers": 2, "seq_len": 128, "micro_batch": 8, "vocab_size": 512}
"""A second, wider shape for the TP and DDP references (4x the activation bytes per TP module,
3.4x the gradient bytes, the same parameter tensors; not a sweep shape): with :data:`REFERENCE`
it separates the per-module (per-tensor) constant from the per-byte part."""
CONCURRENCY_REFERENCE = {"hidden_size": 256, "n_layers": 2, "seq_len": 256, "micro_batch": 4, "vocab_size": 2048}
"""The shape of the alone / at-once measurement: a working set (~40 MiB of activations per rank)
beyond the last-level cache, where ranks sharing the host contend for memory bandwidth (at the
small wrapper shape they do not measurably)."""
REFERENCE_LLAMA = {"hidden_size": 256, "n_layers": 2, "seq_len": 128, "micro_batch": 8, "vocab_size": 512}
"""The Llama-style plain step's shape (RMSNorm, SwiGLU, RoPE, GQA: element-wise kinds and an
attention kind the GPT-style references do not run; the wide shape's size, not a sweep shape):
one of the steps the in-step factors are fitted to."""
MEMORY_BATCHES = (2, 8)
"""Batch sizes of the memory fit (slope: fragmentation, intercept: training overhead)."""


def reference_spec(style: str = "gpt", *, hidden: int = 128, layers: int = 2, seq: int = 128,
                   vocab: int = 512) -> ModelSpec:
    """A GPT-style (LayerNorm, GELU, learned positions, biases) or Llama-style (RMSNorm,
    SwiGLU, RoPE, GQA, no biases) model with the executor's block layout."""
    heads = max(2, hidden // 32)
    if style == "gpt":
        return ModelSpec(name=f"ref-gpt-h{hidden}", n_layers=layers, hidden_size=hidden, n_heads=heads,
                         n_kv_heads=heads, ffn_hidden_size=4 * hidden, vocab_size=vocab, seq_len=seq,
                         mlp="gelu", norm="layernorm", position="learned", tied_embeddings=False,
                         bias=True, dropout=0.0, activation="gelu")
    return ModelSpec(name=f"ref-llama-h{hidden}", n_layers=layers, hidden_size=hidden, n_heads=heads,
                     n_kv_heads=max(1, heads // 2), ffn_hidden_size=3 * hidden, vocab_size=vocab,
                     seq_len=seq, mlp="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False,
                     bias=False, dropout=0.0, activation="silu")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def counted_timing(fn, *, reps: int, target_s: float) -> dict:
    """One call of ``fn`` under :class:`OpCounter`, then ``fn`` timed (``timing.measure``): the
    timing's fields with ``ops``, the aten ops one call dispatches (the per-op cost calibrate
    takes off the element-wise and attention benches' times)."""
    counter = OpCounter()
    with counter:
        fn()
    return {"ops": counter.n, **measure(fn, reps=reps, target_s=target_s).to_dict()}


def _phases(model, opt, x, y, loss_fn, loss_context=contextlib.nullcontext, before_step=None):
    with loss_context():
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
    if before_step is not None:
        before_step(model)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def op_overhead_bench(*, reps: int) -> list[dict]:
    """Per-op forward / backward / optimizer cost of the executor's model at a degenerate shape."""
    from executor.model import build_model, lm_loss

    out = []
    for style in ("gpt", "llama"):
        spec = reference_spec(style, hidden=16, layers=2, seq=8, vocab=32)
        model = build_model(spec)
        opt = torch.optim.AdamW(model.parameters(), foreach=False)
        gen = torch.Generator().manual_seed(5)
        x = torch.randint(0, spec.vocab_size, (1, spec.seq_len), generator=gen)
        y = torch.randint(0, spec.vocab_size, (1, spec.seq_len), generator=gen)
        _phases(model, opt, x, y, lm_loss)
        counts = []
        for _ in range(1):
            cf, cb, co = OpCounter(), OpCounter(), OpCounter()
            with cf:
                loss = lm_loss(model(x), y)
            with cb:
                loss.backward()
            with co:
                opt.step()
            opt.zero_grad(set_to_none=True)
            counts = [cf.n, cb.n, co.n]
        samples = [[], [], []]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        inner = 20
        for _ in range(max(5, reps)):
            acc = [0.0, 0.0, 0.0]
            for _ in range(inner):
                for i, t in enumerate(_phases(model, opt, x, y, lm_loss)):
                    acc[i] += t
            for i in range(3):
                samples[i].append(acc[i] / inner)
        ratio = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
        med = [statistics.median(s) for s in samples]
        out.append({"style": style, "ops": {"forward": counts[0], "backward": counts[1], "optimizer": counts[2]},
                    "median_s": {"forward": med[0], "backward": med[1], "optimizer": med[2]},
                    "params": len(list(model.parameters())), "cpu_ratio": ratio})
    return out


def _step_runner(build, x, y, *, active: bool, tp: int = 1):
    """A function running one training step of the model ``build()`` returns on this rank
    (None where the rank does not take part) and returning its (forward, backward, optimizer)
    seconds. With ``tp`` > 1 the loss is the executor's vocabulary-parallel one and SP's partial
    gradients are reduced before the optimizer, as ``executor.train`` does."""
    from executor.model import lm_loss
    from executor.parallel.tp import loss_context, reduce_partial_grads

    if not active:
        return lambda: None
    model, opt = build()

    def before_step(m):
        reduce_partial_grads(list(m.parameters()))

    def run():
        return _phases(model, opt, x, y, lm_loss, lambda: loss_context(tp), before_step if tp > 1 else None)

    return run


def _interleaved(cases: dict, *, rounds: int, warmup: int) -> dict[str, list[list[tuple]]]:
    """Time the ``cases`` ({name: (runner, steps per block)}, every rank calls every runner) in
    ``rounds`` rounds of one block each, the order rotated every round, so that the machine's
    drift (its speed moves by 10-20% within minutes) falls on every case alike and the
    differences between cases, which the calibration turns into wrapper costs, are measured
    under the same conditions. Each block starts with one untimed step (caches after the
    switch); every timed step starts after a barrier. Returns per case, per timed step, what
    each taking-part rank's runner returned with its CPU-time / wall ratio."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            dist.barrier()
            cases[name][0]()
    rows: dict[str, list[list[tuple]]] = {name: [] for name in names}
    world = dist.get_world_size()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, steps = cases[name]
            dist.barrier()
            run()
            for _ in range(steps):
                dist.barrier()
                c0, w0 = time.process_time(), time.perf_counter()
                mine = run()
                wall = time.perf_counter() - w0
                cpu = time.process_time() - c0
                gathered = [None] * world
                dist.all_gather_object(gathered, (mine, cpu / wall if (mine is not None and wall > 0) else None))
                rows[name].append([g for g in gathered if g[0] is not None])
    return rows


def _phase_summary(rows: list[list[tuple]]) -> dict:
    """Per phase the slowest taking-part rank of each step, median over the steps."""
    med = {name: statistics.median(max(r[0][i] for r in row) for row in rows)
           for i, name in enumerate(("forward", "backward", "optimizer"))}
    return {"median_s": med, "cpu_ratio": min(min(r[1] for r in row) for row in rows), "steps": len(rows)}


def _time_concurrency(build, x, y, *, steps: int, warmup: int, blocks: int) -> tuple[dict, dict]:
    """The plain step on rank 0 alone and on every rank at once, in alternating blocks of
    ``steps`` steps (``blocks`` of each): sustained load, as a run is, while drift of the
    machine's speed falls on both alike. Returns (alone, at once), each {"median_s", "steps"}:
    rank 0's phases alone, and at once per phase the slowest rank's median (what a step that
    waits for every rank sees, as the interleaved ``plain_both`` cases report it); the first
    ``warmup`` steps of every block are left out."""
    from executor.model import lm_loss

    model, opt = build()
    rank = dist.get_rank()
    alone, together = [], []
    for _ in range(blocks):
        for sink, active in ((alone, rank == 0), (together, True)):
            dist.barrier()
            for step in range(warmup + steps):
                mine = _phases(model, opt, x, y, lm_loss) if active else None
                if step >= warmup and mine is not None:
                    sink.append(mine)
            dist.barrier()
    del model, opt
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (alone, together))
    phases = ("forward", "backward", "optimizer")

    def med(rows):
        return {name: statistics.median(r[i] for r in rows) for i, name in enumerate(phases)}

    per_rank = [med(g[1]) for g in gathered]
    slowest = {name: max(m[name] for m in per_rank) for name in phases}
    return {"median_s": med(gathered[0][0]), "steps": steps}, {"median_s": slowest, "steps": steps}


PP_MICRO_BATCHES = 4
"""Micro-batches of the pipeline references (pp=2)."""
PIPELINE_CASES = (("pp", "ref", "1f1b"), ("pp_wide", "wide", "1f1b"), ("pp_zb", "wide", "zb"))
"""(case, shape, schedule) of the pp=2 pipeline reference steps."""
PIPELINE_NAMES = tuple(case for case, _, _ in PIPELINE_CASES)


def _pipeline_runner(spec: ModelSpec, micro_batch: int, schedule: str = "1f1b"):
    """(runner, parallel config) of whole training steps of the executor's own ``Trainer`` on
    a pp=2 plan of ``spec`` under ``schedule`` (every rank of the 2-rank world); the runner
    returns the step's wall seconds, as ``executor`` records a step."""
    from executor.data import Batches
    from executor.mesh import build_mesh
    from executor.train import Trainer
    from planner.plan import ParallelConfig, Plan

    par = ParallelConfig(pp=2, micro_batch=micro_batch, global_batch=PP_MICRO_BATCHES * micro_batch,
                         seq_len=spec.seq_len, precision="fp32", schedule=schedule)
    plan = Plan(model=spec, hardware="local-cpu", n_nodes=1, gpus_per_node=2, parallel=par)
    trainer = Trainer(plan, build_mesh(par, "cpu"), dist.get_rank(), torch.device("cpu"))
    batches = Batches(spec.vocab_size, par.global_batch, par.seq_len, seed=0)
    count = [0]

    def run():
        tokens = batches.global_batch(count[0])
        count[0] += 1
        t0 = time.perf_counter()
        trainer.step(tokens)
        return (time.perf_counter() - t0,)

    return run, par


def _shape_inputs(shape: dict, gen: torch.Generator,
                  style: str = "gpt") -> tuple[ModelSpec, torch.Tensor, torch.Tensor]:
    """The reference model (GPT-style unless ``style`` says llama) of a shape dict
    (:data:`REFERENCE` and the others) and one micro-batch of random inputs and targets for it."""
    spec = reference_spec(style, hidden=shape["hidden_size"], layers=shape["n_layers"], seq=shape["seq_len"],
                          vocab=shape["vocab_size"])
    x = torch.randint(0, spec.vocab_size, (shape["micro_batch"], spec.seq_len), generator=gen)
    y = torch.randint(0, spec.vocab_size, (shape["micro_batch"], spec.seq_len), generator=gen)
    return spec, x, y


def reference_bench(*, quick: bool) -> list[dict]:
    """The reference step plain (rank 0), TP=2, TP=2 with SP, DDP, ZeRO-1, FSDP2, pp=2 steps
    (1F1B at two shapes, zero bubble), plain, TP and DDP at the wider shape (2 ranks each) and the Llama-style plain step
    (rank 0), interleaved block by block (:func:`_interleaved`); then the plain step alone / on
    both ranks at once."""
    from torch.distributed.device_mesh import init_device_mesh

    from executor.model import build_model
    from executor.parallel import dp as dp_mod, fsdp as fsdp_mod, tp as tp_mod, zero as zero_mod

    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(7 + rank)
    ref, wref, lref = REFERENCE, REFERENCE_WIDE, REFERENCE_LLAMA
    spec, x, y = _shape_inputs(ref, gen)
    wspec, wx, wy = _shape_inputs(wref, gen)
    lspec, lx, ly = _shape_inputs(lref, gen, style="llama")
    shapes = {"ref": (ref, spec, x, y), "wide": (wref, wspec, wx, wy), "llama": (lref, lspec, lx, ly)}
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("x",)) if world == 2 else None
    # rounds, untimed warm-up steps, timed steps per block: reference shape, wide shape, pipeline
    rounds, warmup, (n_ref, n_wide, n_pp) = (1, 1, (3, 2, 2)) if quick else (8, 2, (5, 2, 3))

    def adam(model):
        return torch.optim.AdamW(model.parameters(), foreach=False)

    def plain(s):
        return lambda: (lambda m: (m, adam(m)))(build_model(s))

    def tp(s, sp):
        return lambda: (lambda m: (m, adam(m)))(tp_mod.apply_tp(build_model(s), mesh["x"], sp))

    def ddp(s):
        return lambda: (lambda m: (m, adam(m)))(dp_mod.apply_ddp(build_model(s), mesh["x"], torch.device("cpu")))

    def zero1():
        m = dp_mod.apply_ddp(build_model(spec), mesh["x"], torch.device("cpu"))
        return m, zero_mod.zero1_optimizer(m.parameters(), mesh["x"], lr=1e-3, eps=1e-8, weight_decay=0.0)

    def fsdp(s):
        return lambda: (lambda m: (m, adam(m)))(fsdp_mod.apply_fsdp(build_model(s), mesh["x"],
                                                                    reshard_after_forward=True))

    # (name, tp, dp, shape, build, this rank takes part, timed steps per block)
    table = [("plain", 1, 1, "ref", plain(spec), rank == 0, n_ref),
             ("plain_llama", 1, 1, "llama", plain(lspec), rank == 0, n_wide)]
    if mesh is not None:
        table += [("tp", 2, 1, "ref", tp(spec, False), True, n_ref), ("tp_sp", 2, 1, "ref", tp(spec, True), True, n_ref),
                  ("ddp", 1, 2, "ref", ddp(spec), True, n_ref), ("zero1", 1, 2, "ref", zero1, True, n_ref),
                  ("fsdp", 1, 2, "ref", fsdp(spec), True, n_ref),
                  ("plain_wide", 1, 1, "wide", plain(wspec), rank == 0, n_wide),
                  ("tp_wide", 2, 1, "wide", tp(wspec, False), True, n_wide),
                  ("ddp_wide", 1, 2, "wide", ddp(wspec), True, n_wide),
                  ("fsdp_wide", 1, 2, "wide", fsdp(wspec), True, n_wide),
                  # the plain steps on both ranks at once (no communication), in the same rounds
                  # as the wrappers: what two ranks computing together cost in this spell
                  ("plain_both", 1, 1, "ref", plain(spec), True, n_ref),
                  ("plain_wide_both", 1, 1, "wide", plain(wspec), True, n_wide)]
    cases, meta = {}, {}
    for name, tp_deg, dp_deg, shape_name, build, active, steps in table:
        shape, model_spec, xs, ys = shapes[shape_name]
        cases[name] = (_step_runner(build, xs, ys, active=active, tp=tp_deg), steps)
        meta[name] = {"case": name, "tp": tp_deg, "dp": dp_deg,
                      "model": model_spec.to_dict(), "reference": dict(shape)}
    if mesh is not None:
        # the pipeline runtime: whole pp=2 steps, 1F1B at the reference and the wide shape (a
        # per-action constant and a part growing with the action's work), zero bubble at the
        # wide shape (its split backward)
        for name, shape_name, schedule in PIPELINE_CASES:
            shape, model_spec = shapes[shape_name][:2]
            run, par = _pipeline_runner(model_spec, shape["micro_batch"], schedule)
            cases[name] = (run, n_pp)
            meta[name] = {"case": name, "tp": 1, "dp": 1, "model": model_spec.to_dict(), "reference": dict(shape),
                          "micro_batches": PP_MICRO_BATCHES, "parallel": par.to_dict()}
    rows = _interleaved(cases, rounds=rounds, warmup=warmup)
    out = []
    for name, steps in rows.items():
        if name in PIPELINE_NAMES:
            walls = [max(r[0][0] for r in row) for row in steps]
            out.append({**meta[name], "step_s": statistics.median(walls), "steps": len(walls)})
        else:
            out.append({**meta[name], **_phase_summary(steps)})
    del cases
    if mesh is not None:
        # a larger step alone and on both ranks at once (no communication), interleaved block
        # by block: what sharing the host costs
        cref = CONCURRENCY_REFERENCE
        cspec, cx, cy = _shape_inputs(cref, gen)
        c_steps, c_warmup, c_blocks = (3, 1, 1) if quick else (8, 1, 3)
        alone, together = _time_concurrency(plain(cspec), cx, cy, steps=c_steps, warmup=c_warmup, blocks=c_blocks)
        for name, r in (("plain_alone_interleaved", alone), ("plain_concurrent", together)):
            out.append({"case": name, "tp": 1, "dp": 1, "model": cspec.to_dict(), "reference": dict(cref), **r})
    return out


def oversubscription_bench(*, quick: bool) -> dict:
    """The plain step at :data:`CONCURRENCY_REFERENCE` on rank 0 alone and on every rank at
    once (:func:`_time_concurrency`), run when the bench has more ranks than the host has cores:
    what oversubscribing the host costs beyond sharing its cores fairly (context switches, each
    rank's working set evicted by the others')."""
    from executor.model import build_model

    gen = torch.Generator().manual_seed(7 + dist.get_rank())
    spec, x, y = _shape_inputs(CONCURRENCY_REFERENCE, gen)

    def build():
        model = build_model(spec)
        return model, torch.optim.AdamW(model.parameters(), foreach=False)

    steps, warmup, blocks = (3, 1, 1) if quick else (6, 1, 3)
    alone, together = _time_concurrency(build, x, y, steps=steps, warmup=warmup, blocks=blocks)
    return {"ranks": dist.get_world_size(), "model": spec.to_dict(), "reference": dict(CONCURRENCY_REFERENCE),
            "alone": alone, "together": together}


def memory_bench(*, timeout_s: float = 120.0) -> list[dict]:
    """RSS high-water minus baseline of real training steps, each batch size in a fresh process
    (all at once: what they measure is bytes, not time)."""
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, "-m", "executor.bench.memstep", "--micro-batch", str(b)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for b in MEMORY_BATCHES]
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"memstep failed: {stderr[-400:]}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out

