"""Running the benchmarks (:mod:`executor.bench`, under torchrun in a subprocess) and combining
repeated passes into one profile: ``clusterplan calibrate`` (:func:`calibrate`)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from planner.calibrate.profile import Calibration, DEFAULT_PROFILE_PATH, build_profile, load_results
from planner.errors import InputError, require
from planner.io import atomic_write_text, read_json_object
from planner.launch import REPO_ROOT, bench_command, subprocess_env
from planner.profile_write import write_profile


def run_benchmarks(nproc: int = 4, *, quick: bool = False, timeout_s: float | None = None,
                   progress=None, framework: bool = True) -> dict:
    """Run ``executor.bench`` under torchrun in a subprocess; return its results (parsed JSON).
    framework: also run the executor's building blocks (``--parts framework``) on 2 ranks.
    ``progress`` (callable taking a line) receives the benchmark's progress lines."""
    require(isinstance(nproc, int) and nproc >= 2, "nproc", f"must be an integer >= 2, got {nproc!r}")
    timeout_s = timeout_s or (120.0 if quick else 1200.0)
    tmpdir = tempfile.mkdtemp(prefix="clusterplan-bench-")
    out_json = Path(tmpdir) / "results.json"
    env = subprocess_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    cmd = bench_command(nproc, out_json, quick=quick)
    tail: list[str] = []
    try:
        results = _run_bench(cmd, out_json, env, timeout_s, tail, progress)
        if framework:
            fw_json = Path(tmpdir) / "framework.json"
            fw_cmd = bench_command(2, fw_json, quick=quick, parts="framework")
            results["framework"] = _run_bench(fw_cmd, fw_json, env, timeout_s, tail, progress,
                                              check=False)["framework"]
        return results
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run_bench(cmd, out_json, env, timeout_s, tail, progress, check: bool = True) -> dict:
    """One torchrun of ``executor.bench``; its JSON (checked as full results when ``check``)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                del tail[:-40]
                if line.startswith("[bench]") and progress:
                    progress(line[len("[bench] "):])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = proc.wait(timeout=timeout_s)
        reader.join(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise InputError("calibrate", f"benchmarks did not finish within {timeout_s:.0f} s") from None
    if rc != 0 or not out_json.exists():
        detail = " | ".join(l for l in tail[-6:] if l.strip())
        raise InputError("calibrate", f"benchmark run failed (exit {rc}): {detail[-400:]}")
    return load_results(out_json) if check else read_json_object(out_json, "results")


def median_results(passes: list[Any]) -> Any:
    """Element-wise median of benchmark passes of the same structure (``calibrate --repeat``):
    every number that differs between passes becomes the median over them (each measurement of
    each pass is itself a median of repeated samples), flags are true if any pass set them, any
    other value is the first pass's. A machine whose speed drifts over minutes (a shared VM)
    then gives its typical state rather than the state of one moment."""
    first = passes[0]
    if len(passes) == 1:
        return first
    if isinstance(first, dict) and all(isinstance(p, dict) for p in passes):
        return {k: (median_results([p[k] for p in passes]) if all(k in p for p in passes) else v)
                for k, v in first.items()}
    if isinstance(first, list) and all(isinstance(p, list) and len(p) == len(first) for p in passes):
        return [median_results(list(items)) for items in zip(*passes)]
    if isinstance(first, bool):
        return any(bool(p) for p in passes)
    if (isinstance(first, (int, float)) and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                for p in passes)):
        return first if all(p == first for p in passes) else float(statistics.median(passes))
    return first


def _matmul_key(row: dict) -> tuple:
    return row["dtype"], row["kind"], row["op"], row["tokens"], row["hidden"], row.get("n")  # n: an LM head's width


def common_matmul_shapes(passes: list[dict]) -> list[dict]:
    """The passes with their GEMM rows cut to the shapes every pass measured, in the first
    pass's order: under its time budget a pass may stop a slow dtype one shape earlier than
    another (``executor.bench.compute.matmul_bench``), and :func:`median_results` takes
    medians row by row."""
    if len(passes) < 2 or not all(isinstance(p.get("matmul"), list) for p in passes):
        return passes
    common = set.intersection(*({_matmul_key(r) for r in p["matmul"]} for p in passes))
    return [{**p, "matmul": [r for r in p["matmul"] if _matmul_key(r) in common]} for p in passes]


def combine_passes(passes: list[dict]) -> dict:
    """Benchmark passes as one result (what ``calibrate --repeat N`` records): the element-wise
    median over the GEMM shapes every pass measured (:func:`common_matmul_shapes`,
    :func:`median_results`), with the passes kept under ``passes`` when there are several."""
    passes = common_matmul_shapes(passes)
    results = median_results(passes)
    return {**results, "repeat": len(passes), "passes": passes} if len(passes) > 1 else results


def pass_spread_lines(passes: list[dict], name: str, gpus_per_node: int | None) -> list[str]:
    """Header lines: the main numbers of each pass, so the profile shows the machine's drift."""
    rows = []
    for results in passes:
        c = build_profile(results, name=name, gpus_per_node=gpus_per_node)
        s = c.summary
        ar = next((x for x in s["collectives"] if x["op"] == "all_reduce" and x["group_size"] == 2), None)
        f = s["framework"] or {}
        rows.append({"fp32 GEMM peak GFLOP/s": s["peak_gflops_per_s"].get("fp32", math.nan),
                     "per-op forward us": 1e6 * f.get("op_forward_s", math.nan),
                     "TP module forward us": 1e6 * f.get("tp_linear_forward_s", math.nan),
                     "FSDP unit forward us": 1e6 * f.get("fsdp_unit_forward_s", math.nan),
                     "concurrent slowdown": f.get("concurrent_slowdown", math.nan),
                     "in-step forward slowdown": f.get("step_forward_slowdown", math.nan),
                     "concurrent GEMM slowdown": f.get("concurrent_gemm_slowdown", math.nan),
                     "all_reduce n=2 GB/s": ar["bus_bandwidth_gb_s"] if ar else math.nan})
    return [f"  {key}: " + " / ".join(f"{r[key]:.3g}" for r in rows) for key in rows[0]]


def calibrate(nproc: int = 4, *, quick: bool = False, out: str | os.PathLike | None = DEFAULT_PROFILE_PATH,
              results_path: str | os.PathLike | None = None, save_results: str | os.PathLike | None = None,
              name: str = "local-cpu", gpus_per_node: int | None = None, progress=None,
              repeat: int = 1) -> Calibration:
    """Measure this machine (or read recorded results) and write the profile (``out``; None: don't).
    repeat: run the whole benchmark suite that many times and keep the element-wise median
    (:func:`median_results`); the profile header lists each pass's main numbers."""
    require(isinstance(repeat, int) and repeat >= 1, "repeat", f"must be an integer >= 1, got {repeat!r}")
    if results_path:
        results = load_results(results_path)
    else:
        passes = []
        for i in range(repeat):
            if progress and repeat > 1:
                progress(f"pass {i + 1}/{repeat}")
            passes.append(run_benchmarks(nproc, quick=quick, progress=progress))
        results = combine_passes(passes)
    if save_results:
        atomic_write_text(save_results, json.dumps(results, indent=1, sort_keys=True) + "\n")
    cal = build_profile(results, name=name, gpus_per_node=gpus_per_node)
    if results.get("passes"):
        spread = pass_spread_lines(results["passes"], name, gpus_per_node)
        cal = dataclasses.replace(cal, header=cal.header + (
            "", f"Each number above is the median over {len(results['passes'])} passes of the whole suite; "
                "per pass:", *spread))
    if out is not None:
        write_profile(cal.node, out, header=cal.header, comments=cal.comments)
    return cal
