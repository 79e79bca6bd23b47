"""One fresh process: real training steps of the reference model on one rank, reporting the
peak live tensor bytes of the CPU allocator from model build on (``executor.measure.AllocatorPeak``,
what the executor reports on CPU) and the RSS high-water minus the baseline the executor also
records (VmRSS after ``init_process_group``, before the model is built). Prints one JSON line.

    python -m executor.bench.memstep --micro-batch B [--steps 3]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.bench.memstep")
    ap.add_argument("--micro-batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    import torch
    import torch.distributed as dist

    import executor.train  # noqa: F401  (the executor imports its wrappers before the baseline)
    from executor import measure
    from executor.bench.framework import REFERENCE, reference_spec
    from executor.model import build_model, lm_loss

    torch.set_num_threads(1)
    store_dir = tempfile.mkdtemp(prefix="memstep-")
    store = dist.FileStore(f"{store_dir}/store", 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    baseline = measure.rss_bytes()
    ref = REFERENCE
    spec = reference_spec("gpt", hidden=ref["hidden_size"], layers=ref["n_layers"], seq=ref["seq_len"],
                          vocab=ref["vocab_size"])
    with measure.AllocatorPeak() as allocator:
        model = build_model(spec)
        opt = torch.optim.AdamW(model.parameters(), foreach=False)
        gen = torch.Generator().manual_seed(11)
        for _ in range(args.steps):
            x = torch.randint(0, spec.vocab_size, (args.micro_batch, spec.seq_len), generator=gen)
            y = torch.randint(0, spec.vocab_size, (args.micro_batch, spec.seq_len), generator=gen)
            lm_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    peak = measure.rss_peak_bytes()
    dist.destroy_process_group()
    print(json.dumps({"micro_batch": args.micro_batch, "steps": args.steps, "baseline_rss_bytes": baseline,
                      "rss_peak_bytes": peak, "peak_minus_baseline_bytes": peak - baseline,
                      "allocator_peak_bytes": allocator.peak_bytes,
                      "reference": dict(ref)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
