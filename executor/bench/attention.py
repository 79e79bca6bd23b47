"""The executor's attention core timed forward and backward, per kind, head width and length.

``executor.model.attention_core`` is one call of ``F.scaled_dot_product_attention`` (causal,
``enable_gqa``): on a CPU, PyTorch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``),
which tiles the scores, runs the online softmax on the vector units between the tile GEMMs and
skips the tiles the causal mask hides entirely. A GEMM efficiency curve plus a softmax pass does
not price that (on an Intel host it over-predicted the core of a 256-token step by about a
third), so calibration times the call itself: for each kind of :data:`planner.hardware.ATTENTION_CLASSES`
(``mha``: every query head its own K/V; ``gqa``: a quarter as many K/V heads), each head width
of :data:`D_HEADS` and each length of :data:`SEQ_LENS`, at :data:`TOKENS` tokens per call,
forward and backward (``autograd.grad`` on a retained graph: backward alone), counting the aten
ops each runs. Each call reads its own Q, K, V from a pool of
:data:`executor.bench.elementwise.ELEMENTWISE_POOL_BYTES`, as in a step, where they arrive from
the projections, not from a tight loop's cache. bf16 runs under CPU autocast, as the executor
trains it. The planner turns each time into a rate per counted forward FLOP.
"""
from __future__ import annotations

import torch

from executor.bench.elementwise import ELEMENTWISE_POOL_BYTES, dtype_runs
from executor.bench.framework import counted_timing
from executor.model import attention_core
from planner.framework_spec import ATTENTION_CLASSES

Q_DIM = 256
"""Query width (heads x head width) of the tiny presets."""
D_HEADS = (32, 64)
"""Head widths timed: tiny-llama's and the reference models' 32, tiny-gpt's 64."""
SEQ_LENS = (128, 256, 512)
QUICK_SEQ_LENS = (128, 256)
TOKENS = 1024
"""Tokens per call (batch x length): a tiny preset's micro-batch of 4 at 256."""
GQA_GROUP = 4
"""Query heads per K/V head of the ``gqa`` kind (tiny-llama: 8 heads, 2 K/V heads)."""


def _case(kind: str, d_head: int, seq_len: int, dtype: torch.dtype, gen: torch.Generator):
    """(forward function returning its outputs, the Q/K/V tensors backward differentiates,
    calls the function makes): one SDPA call per set of (batch, heads, seq, d_head) Q, K, V,
    as many sets as fit the pool."""
    heads = Q_DIM // d_head
    kv_heads = heads if kind == "mha" else max(1, heads // GQA_GROUP)
    batch = max(1, TOKENS // seq_len)

    def leaf(h):
        return torch.randn(batch, h, seq_len, d_head, generator=gen).to(dtype).requires_grad_(True)

    set_bytes = batch * seq_len * d_head * (heads + 2 * kv_heads) * torch.finfo(dtype).bits // 8
    sets = [(leaf(heads), leaf(kv_heads), leaf(kv_heads)) for _ in range(max(1, ELEMENTWISE_POOL_BYTES // set_bytes))]
    forward = (lambda: [attention_core(q, k, v) for q, k, v in sets])
    return forward, [t for qkv in sets for t in qkv], len(sets)


def attention_bench(*, quick: bool, reps: int) -> list[dict]:
    """Rows of (kind, dtype, direction, d_head, heads, kv_heads, seq_len, batch, calls, aten ops,
    samples) for every kind, head width and length (``quick``: fp32 at :data:`QUICK_SEQ_LENS`)."""
    gen = torch.Generator().manual_seed(5)
    target_s = 0.01 if quick else 0.04
    out = []
    for dtype_name, dtype, autocast in dtype_runs(quick):
        for kind in ATTENTION_CLASSES:
            for d_head in D_HEADS:
                for seq_len in (QUICK_SEQ_LENS if quick else SEQ_LENS):
                    with autocast:
                        forward, inputs, calls = _case(kind, d_head, seq_len, dtype, gen)
                        ys = forward()
                        grads = [torch.randn(y.shape, generator=gen).to(y.dtype) for y in ys]
                        timed = {"forward": forward,
                                 "backward": lambda: torch.autograd.grad(ys, inputs, grads, retain_graph=True)}
                        for direction, fn in timed.items():
                            out.append({"kind": kind, "dtype": dtype_name, "direction": direction,
                                        "d_head": d_head, "heads": inputs[0].shape[1], "kv_heads": inputs[1].shape[1],
                                        "seq_len": seq_len, "batch": inputs[0].shape[0], "calls": calls,
                                        **counted_timing(fn, reps=reps, target_s=target_s)})
    return out
