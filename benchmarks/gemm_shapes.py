"""A model's GEMMs on this CPU, timed one by one, against the profile's efficiency curve (issue 21:
GEMM efficiency by shape, not by FLOP count alone).

For each projection GEMM of one block (``planner.cost.compute.block_gemm_shapes``) and the LM head,
at ``--micro-batch x --seq-len`` tokens: its forward (M x K @ K x N), input-gradient (M x N @ N x K)
and weight-gradient (N x M @ M x K, PyTorch's ``grad_output^T @ input``) GEMMs, each timed
single-threaded in fp32 (median of 7 calls after 3 warm-ups), beside the profile's curve
efficiency at its FLOP count and the efficiency the cost model prices it at
(``DeviceSpec.gemm_efficiency`` with its shape: the same unless the profile has a
``matmul_shapes`` table, which a full ``clusterplan calibrate`` measures). Writes a Markdown table.

    .venv/bin/python benchmarks/gemm_shapes.py --model gpt2 --profile local-cpu --out reports/gemm-shapes.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.catalog import load_model  # noqa: E402
from planner.cost.compute import block_gemm_shapes  # noqa: E402
from planner.hardware import host_cpu_model  # noqa: E402
from planner.profile_yaml import load_profile  # noqa: E402


def time_gemm_s(m: int, n: int, k: int) -> float:
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--profile", default="local-cpu")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", default=None, help="Markdown report (default: print only)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    model = load_model(a.model, a.seq_len)
    device = load_profile(a.profile).device
    peak = device.peak_flops("fp32")
    T = a.micro_batch * a.seq_len
    gemms = [(f"block {i}", shape) for i, shape in enumerate(block_gemm_shapes(model, T, 1))]
    gemms.append(("LM head", (T, model.vocab_size, model.hidden_size)))
    rows, per_block, head = [], [0.0, 0.0], [0.0, 0.0]
    for name, (m, n, k) in gemms:
        m, n, k = int(m), int(n), int(k)
        flops = 2.0 * m * n * k
        curve = device.gemm_efficiency("fp32", flops)
        for part, (mm, nn, kk) in (("forward", (m, n, k)), ("input grad", (m, k, n)), ("weight grad", (n, k, m))):
            measured_s = time_gemm_s(mm, nn, kk)
            priced = device.gemm_efficiency("fp32", flops, (mm, nn, kk))
            rows.append((name, part, mm, nn, kk, measured_s, flops / measured_s / peak, curve, priced,
                         flops / (peak * priced)))
            bucket = head if name == "LM head" else per_block
            bucket[0] += measured_s
            bucket[1] += rows[-1][-1]
    lines = [f"# {model.name}'s GEMMs on this CPU against `{a.profile}`'s efficiency curve", "",
             f"Regenerate: `.venv/bin/python benchmarks/gemm_shapes.py --model {a.model} --profile {a.profile} "
             f"--micro-batch {a.micro_batch} --seq-len {a.seq_len} --out ...` ({host_cpu_model()}, one thread, fp32, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); {T} tokens per micro-batch.", "",
             "| GEMM | pass | M | N | K | measured ms | measured eff. | curve eff. (by FLOPs) | priced eff. (by shape) "
             "| priced ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, part, m, n, k, t, eff, curve, priced_eff, priced in rows:
        lines.append(f"| {name} | {part} | {m} | {n} | {k} | {1e3 * t:.2f} | {eff:.2f} | {curve:.2f} | {priced_eff:.2f} "
                     f"| {1e3 * priced:.2f} |")
    lines += ["", f"- One block's GEMMs: measured {1e3 * per_block[0]:.1f} ms, priced {1e3 * per_block[1]:.1f} ms "
                  f"({100 * (per_block[1] / per_block[0] - 1):+.1f}%).",
              f"- The LM head's: measured {1e3 * head[0]:.1f} ms, priced {1e3 * head[1]:.1f} ms "
              f"({100 * (head[1] / head[0] - 1):+.1f}%)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
