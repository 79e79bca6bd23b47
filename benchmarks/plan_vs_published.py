"""The planner's best plan next to each published configuration (same model, GPUs, batch).

    .venv/bin/python benchmarks/plan_vs_published.py [--csv benchmarks/published_runs.csv]
        [--out reports/plan-vs-published.md] [--top 3]

Rows are read with planner.row_config.row_config (the same parsing as ``clusterplan validate``);
only rows whose configuration is complete (status ``predicted``: nothing assumed) are planned.
Both columns are cost-model predictions with the row's framework runtime
(planner.cost.runtime presets), so the difference is the planner's choice, not model error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.commands.plan import explain  # noqa: E402
from planner.cost.step import cluster_for, predict  # noqa: E402
from planner.search import search  # noqa: E402
from planner.search.results import RankedPlan  # noqa: E402
from planner.row_config import row_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "published_runs.csv"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "plan-vs-published.md"))
    ap.add_argument("--top", type=int, default=3)
    a = ap.parse_args()
    table = pd.read_csv(a.csv)
    rows, skipped = [], 0
    for row in table.to_dict("records"):
        cfg = row_config(row)
        if cfg.status != "predicted":
            skipped += 1
            continue
        P = cfg.parallel
        model = cfg.model
        world = P.world_size
        gpn = world // cfg.nodes
        cluster = cluster_for(cfg.profile, cfg.nodes, gpn)
        runtime = cfg.priced_runtime()
        pub = predict(model, cluster, P, runtime)
        res = search(model, cluster, P.global_batch, P.seq_len, P.precision, top_k=a.top, runtime=runtime,
                     hardware=cfg.profile)
        rec = {"row": int(row["row_id"]), "model": model.name, "gpus": world, "profile": cfg.profile,
               "runtime": cfg.runtime, "published": P.megatron_notation(),
               "pub_tok": pub.tokens_per_s_per_gpu, "pub_mfu": pub.mfu, "pub_fits": pub.fits,
               "pub_mem": pub.peak_memory_bytes / 2**30}
        if res.ranked:
            best = res.ranked[0]
            rec.update(best=best.parallel.megatron_notation(), best_tok=best.prediction.tokens_per_s_per_gpu,
                       best_mfu=best.prediction.mfu, best_mem=best.prediction.peak_memory_bytes / 2**30,
                       gain=best.prediction.tokens_per_s_per_gpu / pub.tokens_per_s_per_gpu - 1,
                       why=("The published configuration is the planner's best." if best.parallel == P else
                            explain(best, RankedPlan(P, pub, float("nan")))
                            + ("" if pub.fits else " (The published configuration does not fit in the "
                               "cost model's memory budget.)")),
                       search_s=res.elapsed_s)
        else:
            rec.update(best="(none fits)", best_tok=float("nan"), best_mfu=float("nan"), best_mem=float("nan"),
                       gain=float("nan"), why=res.rejection_summary(), search_s=res.elapsed_s)
        rows.append(rec)
        print(f"row {rec['row']}: {rec['published']} -> {rec['best']} ({100 * rec['gain']:+.1f}%)", flush=True)
    lines = ["# Planner vs published configurations", "",
             "Regenerate: `.venv/bin/python benchmarks/plan_vs_published.py` (writes this file).", "",
             f"Rows of `benchmarks/published_runs.csv` with a complete configuration (planner.row_config.row_config "
             f"status `predicted`): {len(rows)}; {skipped} rows skipped (something assumed or missing). "
             "Both throughput columns are this cost model's predictions with the row's framework runtime, so "
             "a difference is the planner's choice under the model, not a measured speed-up; where the cost "
             "model misjudges a term (see reports/published-validation.md) the planner's preference inherits it.",
             "", "| row | model | GPUs | published config | pred. tok/s/GPU (MFU) | planner's best | pred. tok/s/GPU (MFU) | gain | search s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['model']} | {r['gpus']} | {r['published']}{'' if r['pub_fits'] else ' (OOM)'} | "
                     f"{r['pub_tok']:.0f} ({100 * r['pub_mfu']:.1f}%) | {r['best']} | {r['best_tok']:.0f} "
                     f"({100 * r['best_mfu']:.1f}%) | {100 * r['gain']:+.1f}% | {r['search_s']:.2f} |")
    lines += ["", "## Why each differs", ""]
    for r in rows:
        lines.append(f"- **row {r['row']}** ({r['model']}, {r['gpus']} x {r['profile']}, runtime {r['runtime']}): {r['why']}")
    lines.append("")
    Path(a.out).write_text("\n".join(lines))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
