"""Single-rank compute benchmarks: GEMMs, memory-bound ops, per-op overhead, allocator overhead.

Each function returns plain dicts (JSON-ready). FLOPs of a GEMM ``m x k @ k x n`` are ``2*m*k*n``;
bytes moved by an elementwise op are the bytes read plus the bytes written (STREAM convention,
McCalpin 1995: ``add`` moves 3 arrays, a unary op 2).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from executor.bench.timing import hwm_bytes, measure, reset_hwm, rss_bytes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Transformer GEMMs of a block with width h: (in_features, out_features) per linear layer as
# multiples of h: attention output (h, h), fused QKV (h, 3h), MLP up (h, 4h), MLP down (4h, h).
LINEAR_KINDS = {"proj": (1, 1), "qkv": (1, 3), "mlp_up": (1, 4), "mlp_down": (4, 1)}
FULL_HIDDEN = (64, 128, 256, 512, 1024)
FULL_TOKENS = (64, 256, 1024, 4096)
QUICK_HIDDEN = (64, 256, 1024)
QUICK_TOKENS = (64, 1024)
HEAD_VOCABS = (32768, 131072)
"""LM-head GEMMs (h x V, V far wider than h: a shape the block's layers never have), timed in a
full calibration up to :data:`HEAD_MAX_FLOPS`: their skinny shapes run well below a square GEMM
of the same FLOPs (``benchmarks/gemm_shapes.py``)."""
HEAD_MAX_FLOPS = 2e10
MB = 1 << 20


def _randn(shape, dtype, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


MATMUL_BUDGET_S = {False: 120.0, True: 2.0}
"""Seconds the GEMMs of one dtype may take (full, ``--quick``). Shapes run in ascending FLOPs and
stop where the next one would pass the budget: a host without native bf16 (AVX2 only) emulates
it at ~1 GFLOP/s, where the full grid alone would take over half an hour a pass."""


def _matmul_shapes(hidden, tokens, kinds) -> list[tuple[int, int, str, int, int]]:
    """(tokens, hidden, kind, in, out) of every timed linear layer, ascending in FLOPs."""
    shapes = [(t, h, kind, fi * h, fo * h) for h in hidden for t in tokens
              for kind, (fi, fo) in LINEAR_KINDS.items() if kind in kinds]
    if "lm_head" in kinds:
        shapes += [(t, h, "lm_head", h, v) for h in hidden for t in tokens for v in HEAD_VOCABS
                   if 2.0 * t * h * v <= HEAD_MAX_FLOPS]
    return sorted(shapes, key=lambda sh: (sh[0] * sh[3] * sh[4], sh[1], sh[0]))


def matmul_bench(*, quick: bool, reps: int, dtypes=("fp32", "bf16"), kinds=("proj", "mlp_up", "mlp_down"),
                 hidden: tuple[int, ...] | None = None, tokens: tuple[int, ...] | None = None,
                 budget_s: float | None = None) -> list[dict]:
    """GEMM throughput of the linear layers of a transformer step.

    For each token count t, width h and layer kind (in, out; ``lm_head``: h x V for each of
    :data:`HEAD_VOCABS`): forward ``F.linear`` (t x in x out),
    input gradient ``g @ W`` (t x out x in) and weight gradient ``g^T @ x`` (out x t x in), the three
    GEMMs of one linear layer's training step; ``--quick`` times the forward GEMM only. Per dtype
    the shapes run in ascending FLOPs within ``budget_s`` (default :data:`MATMUL_BUDGET_S`): a
    shape runs only if its estimated time at the rate of the last one measured fits what is
    left, so a slow dtype is measured over its smaller shapes (rows carry ``budget_s``).
    """
    gen = torch.Generator().manual_seed(0)
    hidden = hidden or (QUICK_HIDDEN if quick else FULL_HIDDEN)
    tokens = tokens or (QUICK_TOKENS if quick else FULL_TOKENS)
    budget_s = MATMUL_BUDGET_S[quick] if budget_s is None else budget_s
    ops = ("fwd",) if quick else ("fwd", "dgrad", "wgrad")
    target_s = 0.03
    out = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        t_start = time.perf_counter()
        rate = None  # FLOP/s of the last shape measured
        for t, h, kind, d_in, d_out in _matmul_shapes(hidden, tokens, kinds):
            flops = 2.0 * t * d_in * d_out
            if rate is not None:  # a warm-up call and the samples, each at least target_s
                estimate_s = len(ops) * max((reps + 1) * flops / rate, reps * target_s)
                if time.perf_counter() - t_start + estimate_s > budget_s:
                    break
            x = _randn((t, d_in), dtype, gen)
            w = _randn((d_out, d_in), dtype, gen)
            g = _randn((t, d_out), dtype, gen)
            for op in ops:
                if op == "fwd":
                    fn, (m, k, n) = (lambda: F.linear(x, w)), (t, d_in, d_out)
                elif op == "dgrad":
                    fn, (m, k, n) = (lambda: torch.matmul(g, w)), (t, d_out, d_in)
                else:
                    gt = g.t()
                    fn, (m, k, n) = (lambda: torch.matmul(gt, x)), (d_out, t, d_in)
                s = measure(fn, reps=reps, target_s=target_s)
                rate = flops / s.median_s
                out.append({"dtype": dtype_name, "kind": kind, "op": op, "tokens": t, "hidden": h,
                            "m": m, "k": k, "n": n, "flops": flops, "flops_per_s": rate,
                            "budget_s": budget_s, **s.to_dict()})
            del x, w, g
    return out


def memory_bound_bench(*, quick: bool, reps: int, dtypes=("fp32", "bf16")) -> list[dict]:
    """Throughput of elementwise add/mul, GELU (tanh approximation, as ``executor.model.MLP``) and LayerNorm on tensors of 1-64 MB (fp32 sizes;
    bf16 tensors have the same element count, half the bytes). Outputs are freshly allocated, as
    in eager training code."""
    gen = torch.Generator().manual_seed(1)
    sizes_mb = (1, 16) if quick else (1, 4, 16, 64)
    width = 1024
    out = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        esize = torch.tensor([], dtype=dtype).element_size()
        for size_mb in sizes_mb:
            numel = size_mb * MB // 4
            a = _randn((numel // width, width), dtype, gen)
            b = _randn((numel // width, width), dtype, gen)
            lw = torch.ones(width, dtype=dtype)
            lb = torch.zeros(width, dtype=dtype)
            tensor_bytes = numel * esize
            cases = {
                "add": (lambda: a + b, 3),
                "mul": (lambda: a * b, 3),
                "gelu": (lambda: F.gelu(a, approximate="tanh"), 2),  # the executor's MLP (tanh form)
                "layernorm": (lambda: F.layer_norm(a, (width,), lw, lb), 2),
            }
            for op, (fn, arrays) in cases.items():
                s = measure(fn, reps=reps, target_s=0.02 if quick else 0.05)
                moved = arrays * tensor_bytes
                out.append({"op": op, "dtype": dtype_name, "tensor_bytes": tensor_bytes, "bytes_moved": moved,
                            "bytes_per_s": moved / s.median_s, **s.to_dict()})
            del a, b
    return out


def overhead_bench(*, reps: int) -> list[dict]:
    """Per-op framework cost: eager ops on 8-element tensors, where the arithmetic is negligible
    and the time is dispatch + allocation (what a per-kernel overhead term models)."""
    x = torch.randn(8)
    y = torch.randn(8)
    x2 = torch.randn(1, 8)
    w = torch.randn(8, 8)
    lw, lb = torch.ones(8), torch.zeros(8)
    xg = torch.randn(1, 8, requires_grad=True)
    wg = torch.randn(8, 8, requires_grad=True)

    def fwd_bwd():  # 1 linear + 1 sum forward, their backward: ~5 ops through autograd
        F.linear(xg, wg).sum().backward()

    cases = {
        "add": (lambda: x + y, 1),
        "mul": (lambda: x * y, 1),
        "gelu": (lambda: F.gelu(x), 1),
        "linear": (lambda: F.linear(x2, w), 1),
        "layernorm": (lambda: F.layer_norm(x2, (8,), lw, lb), 1),
        "autograd_linear_sum_fwd_bwd": (fwd_bwd, 1),
    }
    out = []
    for op, (fn, _) in cases.items():
        s = measure(fn, reps=reps, target_s=0.02, max_inner=20000)
        out.append({"op": op, **s.to_dict()})
    return out


def allocator_bench(*, seed: int = 2) -> dict:
    """Resident memory against live tensor bytes for an activation-like pattern: tensors of
    0.25-8 MB allocated in a forward order and freed in reverse while gradient-sized tensors are
    allocated (as backward does). Returns the RSS high-water growth and the peak live bytes; their
    ratio minus one is the allocator overhead (fragmentation) on this host."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [int(s) for s in (torch.rand(48, generator=gen) * (8 * MB - MB // 4) + MB // 4)]
    baseline = rss_bytes()
    reset_ok = reset_hwm()
    live = 0
    peak_live = 0
    acts = []
    for s in sizes:
        t = torch.empty(s // 4, dtype=torch.float32)
        t.fill_(1.0)  # touch the pages
        acts.append(t)
        live += t.numel() * 4
        peak_live = max(peak_live, live)
    grads = []
    while acts:
        t = acts.pop()
        live -= t.numel() * 4
        del t
        if len(grads) < 8:
            g = torch.empty(MB, dtype=torch.float32)
            g.fill_(0.0)
            grads.append(g)
            live += g.numel() * 4
            peak_live = max(peak_live, live)
    hwm = hwm_bytes()
    del grads
    return {"baseline_rss_bytes": baseline, "hwm_bytes": hwm, "hwm_reset": reset_ok,
            "rss_growth_bytes": hwm - baseline, "peak_live_bytes": peak_live}


def contention_matmul(duration_s: float, *, tokens: int = 1024, hidden: int = 512) -> dict:
    """Run one fp32 MLP-up GEMM (tokens x hidden x 4*hidden) back to back for ``duration_s`` and
    report this rank's rate and its process-time / wall ratio (the share of a core it got)."""
    gen = torch.Generator().manual_seed(3)
    x = _randn((tokens, hidden), torch.float32, gen)
    w = _randn((4 * hidden, hidden), torch.float32, gen)
    F.linear(x, w)
    flops = 2.0 * tokens * hidden * 4 * hidden
    iters = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        F.linear(x, w)
        iters += 1
        wall = time.perf_counter() - wall0
        if wall >= duration_s:
            break
    cpu = time.process_time() - cpu0
    return {"flops_per_s": flops * iters / wall, "cpu_ratio": cpu / wall, "iters": iters,
            "wall_s": wall, "gemm_flops": flops}
