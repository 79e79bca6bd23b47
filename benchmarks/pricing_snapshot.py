"""Every number the cost model gives on a fixed set of inputs, to check that a refactor of the
pricing path changes nothing it should not.

    .venv/bin/python benchmarks/pricing_snapshot.py --out /tmp/before.json
    .venv/bin/python benchmarks/pricing_snapshot.py --check /tmp/before.json

Recorded: ``clusterplan validate`` on ``benchmarks/published_runs.csv`` (every row's predicted
step time, memory, MFU), the search benchmarks' top plans (GPT-3 175B on 1024 A100, Llama-3 405B
on 16384 H100, Llama-3 70B on 64 H100), the heterogeneous search of
``clusters/mixed-a100-h100.yaml``, the planner's best plan for each complete published row
(``benchmarks/plan_vs_published.py``), the local sweep's predictions with ``local-cpu``
(``benchmarks/local_sweep.py``) and every candidate of a small brute-force space on both a GPU and
the CPU profile. ``--check`` prints each value that moved by more than ``--rtol`` and exits 1 if any did.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.local_sweep_plans import SWEEP  # noqa: E402
from planner.catalog import load_model  # noqa: E402
from planner.cost.step import cluster_for, predict  # noqa: E402
from planner.row_config import row_config  # noqa: E402
from planner.validation import validate  # noqa: E402

SEARCHES = (
    ("gpt3-175b", "dgx-a100-80gb", 128, 1536, 2048),
    ("llama3-405b", "dgx-h100-80gb", 2048, 2048, 8192),
    ("llama3-70b", "dgx-h100-80gb", 8, 1024, 8192),
)


def _pred(p) -> dict:
    return {"step_time_s": p.step_time_s, "peak_memory_bytes": p.peak_memory_bytes, "mfu": p.mfu,
            "fits": p.fits, "time": p.time.to_dict()}


def _ranked(result) -> list[dict]:
    return [{"plan": r["plan"], "step_time_s": r["step_time_s"], "peak_memory_gib": r["peak_memory_gib"],
             "stage_layers": r["stage_layers"]} for r in result.rows()]


def snapshot(quick: bool = False) -> dict:
    from planner.cluster import load_cluster
    from planner.search.hetero import search_hetero
    from planner.search import brute_force, search

    out: dict = {}
    df = validate(ROOT / "benchmarks" / "published_runs.csv")
    out["validate"] = {str(r["row_id"]): {"status": r["status"], "step_time_pred_s": r["step_time_pred_s"],
                                          "predicted": r["predicted"], "peak_memory_gib": r["peak_memory_gib"]}
                       for r in df.to_dict("records")}
    out["search"] = {}
    for name, hw, nodes, gbs, seq in SEARCHES[:1] if quick else SEARCHES:
        res = search(load_model(name), cluster_for(hw, nodes), gbs, seq, top_k=10, hardware=hw)
        out["search"][f"{name}/{hw}/{nodes}"] = _ranked(res)
    res = search_hetero(load_model("llama3-70b"), load_cluster(str(ROOT / "clusters" / "mixed-a100-h100.yaml")),
                        512, top_k=10)
    out["hetero"] = _ranked(res)
    out["plan_vs_published"] = {}
    import pandas as pd

    for row in pd.read_csv(ROOT / "benchmarks" / "published_runs.csv").to_dict("records"):
        cfg = row_config(row)
        if cfg.status != "predicted" or quick:
            continue
        P = cfg.parallel
        model = cfg.model
        cluster = cluster_for(cfg.profile, cfg.nodes, P.world_size // cfg.nodes)
        res = search(model, cluster, P.global_batch, P.seq_len, P.precision, top_k=3,
                     runtime=cfg.priced_runtime(), hardware=cfg.profile)
        out["plan_vs_published"][str(row["row_id"])] = _ranked(res)
    out["local_sweep"] = {}
    for e in SWEEP:
        model = load_model(e.model)
        cfg = e.config(model.seq_len)
        out["local_sweep"][e.name] = _pred(predict(model, cluster_for("local-cpu", 1, cfg.world_size), cfg))
    out["brute_force"] = {}
    cases = (("tiny-gpt", "local-cpu", 1, 4, 8), ("llama3-8b", "dgx-h100-80gb", 2, 8, 64))
    for name, hw, nodes, gpn, gbs in cases:
        model = load_model(name)
        fixed = {"mb": 2} if hw != "local-cpu" else {}
        rows = brute_force(model, cluster_for(hw, nodes, gpn), gbs, min(model.seq_len, 2048), "fp32"
                           if hw == "local-cpu" else "bf16", fixed=fixed)
        out["brute_force"][f"{name}/{hw}"] = {f"{P.megatron_notation()} {P.order}": _pred(p) for P, p in rows}
    return out


def diff(old, new, path: str, rtol: float, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                out.append(f"{path}/{k}: {'added' if k not in old else 'removed'}")
            else:
                diff(old[k], new[k], f"{path}/{k}", rtol, out)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} -> {len(new)} entries")
        for i, (a, b) in enumerate(zip(old, new)):
            diff(a, b, f"{path}[{i}]", rtol, out)
    elif isinstance(old, float) and isinstance(new, (int, float)):
        if math.isnan(old) and math.isnan(new):
            return
        if not math.isclose(old, new, rel_tol=rtol, abs_tol=1e-12):
            out.append(f"{path}: {old:.6g} -> {new:.6g} ({100 * (new / old - 1) if old else math.inf:+.3f}%)")
    elif old != new:
        out.append(f"{path}: {old!r} -> {new!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the snapshot here (JSON)")
    ap.add_argument("--check", help="compare with this snapshot")
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--quick", action="store_true", help="skip the slower searches")
    a = ap.parse_args(argv)
    snap = json.loads(json.dumps(snapshot(a.quick)))
    if a.out:
        Path(a.out).write_text(json.dumps(snap, indent=1, sort_keys=True))
        print(f"wrote {a.out}")
    if a.check:
        old = json.loads(Path(a.check).read_text())
        if a.quick:
            old = {k: v for k, v in old.items() if k in snap}
            old["search"] = {k: v for k, v in old.get("search", {}).items() if k in snap["search"]}
            old["plan_vs_published"] = {}
        found: list[str] = []
        diff(old, snap, "", a.rtol, found)
        print("\n".join(found) if found else "identical")
        print(f"{len(found)} differences")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
