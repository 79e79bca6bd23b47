"""Element-wise work of the executor's own code, per kind, timed forward and backward.

One eager thread runs a residual add at tens of GB/s and a tanh GELU at a few: a single pooled
memory-bound rate cannot price both. For each kind of ``planner.cost.framework``'s
``ELEMENTWISE_CLASSES`` this times the executor's code (``executor.model``: the fp32 RMSNorm
chain, ``apply_rope``, ``F.gelu(approximate="tanh")``, ``silu(gate) * up``, ``nn.LayerNorm``, a
residual add; and ``AdamW(foreach=False).step`` over a model's worth of parameter tensors of one
size, :data:`ADAMW_POOL_PARAMS`) at the tiny presets' widths for four micro-batch sizes, forward
and backward (``autograd.grad`` on a retained graph: backward alone), and counts the aten ops
each runs. Each call reads its own inputs, from a pool of :data:`ELEMENTWISE_POOL_BYTES`: in a
training step a tensor is read once, after the other ops of its layer have passed through the
core's caches, where one tensor timed again and again stays in L2 (on an Intel host with 2 MiB
of L2 per core: a 0.75 MiB fp32 add 275 GB/s, a 1.75 MiB RMSNorm 157 GB/s, at 3-7 MiB 32-34
GB/s: a cache bonus a step's small micro-batches do not get). The planner turns a time into a
rate with its own byte count per element, after taking off the counted ops' per-op cost (which
the cost model charges apart, per op); the rate still depends on the size (per-call costs, the
outer caches), so the profile keeps one per size. bf16 runs under CPU autocast, as the executor
trains it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from executor.bench.framework import counted_timing
from executor.model import RMSNorm, apply_rope, rope_tables
from planner.framework_spec import ELEMENTWISE_CLASSES

SEQ_LEN, HIDDEN, FFN, HEADS = 256, 256, 1024, 8
"""The tiny presets' sequence, hidden and FFN widths; RoPE over 8 heads of 32."""
BATCHES = (1, 2, 4, 8)
"""Micro-batch sizes timed: 0.25-2 MiB fp32 residual tensors, 1-8 MiB FFN tensors."""
QUICK_BATCHES = (2, 8)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ELEMENTWISE_POOL_BYTES = 16 * 2**20
"""Input bytes the forward / backward cases cycle through, one call per set of inputs: 8 times a
core's L2 on the host this was written on, so each call's inputs come from beyond it."""
ADAMW_POOL_PARAMS = 4 * 2**20
"""Parameters the AdamW case steps over, in tensors of the timed size: 64 MiB of weights,
gradients and moments, the order of the tiny presets' (3.7 M parameters). A model's optimizer
step walks every tensor once, so each tensor's state arrives from beyond the core's caches; one
tensor stepped again and again stays nearer (on an Intel host with 2 MiB of L2 per core: one
1 MiB tensor 42 GB/s, this pool 34 GB/s, and tiny-gpt's step inside training 13.9 ms where this
pool's rate says 11.5 ms: the rest is the in-step factor, ``FrameworkSpec.step_scale``)."""


def _pooled(kind: str, batch: int, dtype: torch.dtype, gen: torch.Generator):
    """(forward function returning its outputs, tensors whose gradients backward computes,
    elements of the kind's counting unit, calls the function makes) of ``kind``: one call per
    set of inputs, as many sets as fit :data:`ELEMENTWISE_POOL_BYTES` (at least one); AdamW as
    :func:`_case` (its own pool)."""
    forward, inputs, elements, calls = _case(kind, batch, dtype, gen)
    if kind == "adamw":
        return forward, inputs, elements, calls
    set_bytes = sum(t.numel() * t.element_size() for t in inputs)
    cases = [(forward, inputs)] + [_case(kind, batch, dtype, gen)[:2]
                                   for _ in range(max(1, ELEMENTWISE_POOL_BYTES // set_bytes) - 1)]
    every_input = [t for _, ins in cases for t in ins]
    return (lambda: [fn() for fn, _ in cases]), every_input, elements * len(cases), len(cases)


def _case(kind: str, batch: int, dtype: torch.dtype, gen: torch.Generator):
    """(forward function, tensors whose gradients backward computes, elements of the kind's
    counting unit, calls the function makes) of one call: residual-width tensors for the add and
    the norms, FFN-width for the activations, (batch, seq, heads, d_head) for RoPE; AdamW: one
    step over :data:`ADAMW_POOL_PARAMS` in parameter tensors of ``batch`` x 256 rows of 256, one
    update per tensor."""
    def leaf(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_(True)

    rows = (batch, SEQ_LEN, HIDDEN)
    if kind == "arith":
        a, b = leaf(*rows), leaf(*rows)
        return (lambda: a + b), [a, b], a.numel(), 1
    if kind == "rmsnorm":
        norm, x = RMSNorm(HIDDEN), leaf(*rows)
        return (lambda: norm(x)), [x, norm.weight], x.numel(), 1
    if kind == "layernorm":
        norm, x = torch.nn.LayerNorm(HIDDEN), leaf(*rows)
        return (lambda: norm(x)), [x, norm.weight, norm.bias], x.numel(), 1
    if kind == "gelu":
        x = leaf(batch, SEQ_LEN, FFN)
        return (lambda: F.gelu(x, approximate="tanh")), [x], x.numel(), 1
    if kind == "swiglu":
        gate, up = leaf(batch, SEQ_LEN, FFN), leaf(batch, SEQ_LEN, FFN)
        return (lambda: F.silu(gate) * up), [gate, up], gate.numel(), 1
    if kind == "adamw":  # parameter tensors of batch x 256 rows of 256 (0.25-2 MiB, as the presets')
        shape = (batch * SEQ_LEN, HIDDEN)
        params = [torch.nn.Parameter(torch.randn(shape, generator=gen))
                  for _ in range(max(1, ADAMW_POOL_PARAMS // (shape[0] * shape[1])))]
        for param in params:
            param.grad = torch.randn(shape, generator=gen)
        opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)
        opt.step()  # the moments exist from here on
        return opt.step, [], sum(param.numel() for param in params), len(params)
    if kind == "rope":
        d_head = HIDDEN // HEADS
        cos, sin = rope_tables(SEQ_LEN, d_head)
        x = leaf(batch, SEQ_LEN, HEADS, d_head)
        return (lambda: apply_rope(x, cos, sin)), [x], x.numel(), 1
    raise ValueError(f"unknown element-wise kind {kind!r}")


def dtype_runs(quick: bool):
    """(dtype name, torch dtype, the context it trains under) of each activation dtype timed:
    fp32 only when ``quick``; bf16 under CPU autocast, as the executor trains it."""
    for name in (("fp32",) if quick else tuple(DTYPES)):
        dtype = DTYPES[name]
        yield name, dtype, (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16
                            else contextlib.nullcontext())


def elementwise_bench(*, quick: bool, reps: int) -> list[dict]:
    """Rows of (kind, dtype, direction, micro-batch, elements, calls, aten ops, samples) for every kind,
    dtype and micro-batch size of :data:`BATCHES` (``quick``: fp32 at :data:`QUICK_BATCHES`);
    ``direction`` is forward or backward, ``optimizer`` for the AdamW step (fp32 only)."""
    gen = torch.Generator().manual_seed(3)
    target_s = 0.01 if quick else 0.04
    out = []
    for dtype_name, dtype, autocast in dtype_runs(quick):
        for kind in ELEMENTWISE_CLASSES:  # the add's backward runs no kernel: see the planner
            if kind == "adamw" and dtype_name != "fp32":
                continue  # fp32 master weights and states in either precision
            for batch in (QUICK_BATCHES if quick else BATCHES):
                with autocast:
                    forward, inputs, elements, calls = _pooled(kind, batch, dtype, gen)
                    if kind == "adamw":
                        timed = {"optimizer": forward}
                    else:
                        ys = forward()
                        grads = [torch.randn(y.shape, generator=gen).to(y.dtype) for y in ys]
                        timed = {"forward": forward}
                    if kind not in ("arith", "adamw"):
                        timed["backward"] = (lambda ys=ys, inputs=inputs, grads=grads:
                                             torch.autograd.grad(ys, inputs, grads, retain_graph=True))
                    for direction, fn in timed.items():
                        out.append({"kind": kind, "dtype": dtype_name, "direction": direction,
                                    "micro_batch": batch, "elements": elements, "calls": calls,
                                    **counted_timing(fn, reps=reps, target_s=target_s)})
    return out
