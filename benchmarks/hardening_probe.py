"""Bad inputs against every verb, as a careless or hostile user gives them: each must end in one
line on stderr and exit 2 (or exit 1 for "no plan fits"), in bounded time and memory.

    .venv/bin/python benchmarks/hardening_probe.py [--out reports/hardening.md]

Each case runs ``python -m planner.cli ...`` in a fresh process (timeout 60 s) inside a scratch
folder; the table records exit status, stderr lines, whether a traceback appeared, wall time and
the child's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny-gpt", "--hardware", "local-cpu", "--nodes", "1", "--gpus-per-node", "2"]


def _files(d: Path) -> dict[str, Path]:
    """Scratch inputs: binary, deep JSON, alias-bomb YAML, a good plan and its broken copies."""
    f = {}
    f["binary"] = d / "binary.json"
    f["binary"].write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    f["deep"] = d / "deep.json"
    f["deep"].write_text("[" * 200_000 + "]" * 200_000)
    lol = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
                                                for i in range(8)]
    f["bomb"] = d / "bomb.yaml"
    f["bomb"].write_text("\n".join(lol) + "\n")
    plan = d / "plan.json"
    subprocess.run([sys.executable, "-m", "planner.cli", "predict", *TINY, "--dp", "2", "--micro-batch", "2",
                    "--global-batch", "8", "--precision", "fp32", "--out", str(plan)], cwd=ROOT, check=True,
                   capture_output=True)
    f["plan"] = plan
    data = json.loads(plan.read_text())
    for key, change in (("nodes_two", {"n_nodes": "two"}), ("parallel_null", {"parallel": None}),
                        ("prediction_str", {"prediction": "fast"}), ("model_newline", None)):
        bad = dict(data, **(change or {}))
        if key == "model_newline":
            bad["model"] = dict(data["model"], name="tiny\ntouch /tmp/clusterplan-pwned")
        f[key] = d / f"{key}.json"
        f[key].write_text(json.dumps(bad))
    prof = (ROOT / "hardware_profiles" / "dgx-a100-80gb.yaml").read_text()
    f["inf_profile"] = d / "inf.yaml"
    f["inf_profile"].write_text(prof.replace("bf16: 312", "bf16: .inf"))
    f["link_cpu_profile"] = d / "linkcpu.yaml"
    f["link_cpu_profile"].write_text(prof.replace("node:\n", "node:\n  inter_node_cpu_ns_per_byte: -3\n", 1))
    f["shared_profile"] = d / "shared.yaml"
    f["shared_profile"].write_text(prof.replace("node:\n", "node:\n  inter_node_shared: 3\n", 1))
    f["header_only"] = d / "header.csv"
    f["header_only"].write_text((ROOT / "benchmarks" / "published_runs.csv").read_text().splitlines()[0] + "\n")
    rows = (ROOT / "benchmarks" / "published_runs.csv").read_text().splitlines()
    f["tp_nan"] = d / "tpnan.csv"
    header = rows[0].split(",")
    cells = rows[1].split(",")
    cells[header.index("num_gpus")] = "abc"
    f["tp_nan"].write_text(rows[0] + "\n" + ",".join(cells) + "\n")
    for key, hardware in (("hw_escape", "../../../../../etc/passwd"), ("hw_zero", "/dev/zero")):
        f[key] = d / f"{key}.json"
        f[key].write_text(json.dumps(dict(data, hardware=hardware)))
    fp8 = dict(data, parallel=dict(data["parallel"], precision="fp8"))
    f["fp8"] = d / "fp8.json"
    f["fp8"].write_text(json.dumps(fp8))
    f["cluster_shadow"] = d / "cluster.yaml"
    f["cluster_shadow"].write_text("name: x\ngroups:\n  - profile: /etc/shadow\n    nodes: 2\n")
    f["deep_yaml"] = d / "deep.yaml"
    f["deep_yaml"].write_text("[" * 100_000 + "]" * 100_000 + "\n")
    f["huge"] = d / "huge.json"
    with f["huge"].open("wb") as handle:  # sparse: 65 MiB of nothing
        handle.truncate(65 * 2**20)
    f["layers_1e9"] = d / "config.json"
    f["layers_1e9"].write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 10**9, "hidden_size": 4096,
                                           "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
                                           "max_position_embeddings": 4096}))
    subprocess.run([sys.executable, "-m", "planner.cli", "predict", "--model", "llama3-70b", "--hardware", "local-cpu",
                    "--nodes", "1", "--gpus-per-node", "2", "--global-batch", "8", "--out", str(d / "big.json")],
                   cwd=ROOT, check=True, capture_output=True)
    f["too_big"] = d / "big.json"
    for key, summary in (("run_v99", {"schema_version": 99}), ("run_binary", None), ("run_escape", "escape")):
        run = d / key
        run.mkdir()
        if summary is None:
            (run / "summary.json").write_bytes(b"\xff\xfe\x00")
        elif summary == "escape":
            text = (ROOT / "tests" / "fixtures").glob("**/summary.json")
            base = json.loads(next(iter(sorted(text))).read_text())
            (run / "summary.json").write_text(json.dumps(dict(base, plan_id="x/../../../../tmp/clusterplan-escape")))
        else:
            (run / "summary.json").write_text(json.dumps(summary))
    (d / "run_records").mkdir()
    (d / "run_records" / "records.jsonl").write_bytes(b'[1, 2]\n"text"\n\xff\xfe\n')
    f["held"] = d / "held"
    f["held"].mkdir()
    (f["held"] / "summary.json").write_text("{}")
    return f


def cases(f: dict[str, Path], d: Path) -> list[tuple[str, list[str], tuple[int, ...]]]:
    plan = str(f["plan"])
    return [
        ("predict: binary plan file", ["predict", str(f["binary"])], (2,)),
        ("predict: JSON nested 200k deep", ["predict", str(f["deep"])], (2,)),
        ("predict: a directory as the plan", ["predict", str(d)], (2,)),
        ("predict: /dev/zero as the plan", ["predict", "/dev/zero"], (2,)),
        ("predict: n_nodes 'two'", ["predict", str(f["nodes_two"])], (2,)),
        ("predict: parallel null", ["predict", str(f["parallel_null"])], (2,)),
        ("predict: profile with bf16 .inf", ["predict", *TINY[:2], "--hardware", str(f["inf_profile"]), "--nodes", "1",
                                             "--global-batch", "8"], (2,)),
        ("predict: profile with a negative CPU cost per byte", ["predict", *TINY[:2], "--hardware",
                                                                str(f["link_cpu_profile"]), "--nodes", "1",
                                                                "--global-batch", "8"], (2,)),
        ("predict: profile with inter_node_shared 3", ["predict", *TINY[:2], "--hardware", str(f["shared_profile"]),
                                                       "--nodes", "1", "--global-batch", "8"], (2,)),
        ("predict: YAML alias bomb as profile", ["predict", *TINY[:2], "--hardware", str(f["bomb"]), "--nodes", "1",
                                                 "--global-batch", "8"], (2,)),
        ("predict: /dev/zero as the profile", ["predict", *TINY[:2], "--hardware", "/dev/zero", "--nodes", "1",
                                               "--global-batch", "8"], (2,)),
        ("predict: binary config.json", ["predict", "--model", str(f["binary"]), "--hardware", "local-cpu",
                                         "--nodes", "1", "--global-batch", "8"], (2,)),
        ("predict: global batch 10**18", ["predict", *TINY, "--global-batch", str(10**18)], (2,)),
        ("predict: MoE capacity factor nan", ["predict", "--model", "mixtral-8x7b", "--hardware", "dgx-h100-80gb",
                                              "--nodes", "8", "--global-batch", "64", "--moe-capacity-factor", "nan"],
         (2,)),
        ("plan: capacity padding on a dense model", ["plan", "--model", "tiny-gpt", "--hardware", "local-cpu",
                                                     "--nodes", "1", "--global-batch", "8", "--moe-pad-to-capacity"],
         (2,)),
        ("predict: --out naming a directory", ["predict", plan, "--out", str(d)], (2,)),
        ("predict: --out under a missing file's folder", ["predict", plan, "--out", str(f["plan"] / "x.json")], (2,)),
        ("plan: 10**12 nodes", ["plan", "--model", "tiny-gpt", "--hardware", "dgx-a100-80gb", "--nodes", str(10**12),
                                "--global-batch", "8"], (2,)),
        ("validate: header-only CSV", ["validate", "--dataset", str(f["header_only"]), "--out-dir", str(d / "v")], (2,)),
        ("validate: num_gpus=abc", ["validate", "--dataset", str(f["tp_nan"]), "--out-dir", str(d / "v")], (2,)),
        ("validate: binary CSV", ["validate", "--dataset", str(f["binary"]), "--out-dir", str(d / "v")], (2,)),
        ("export: model name with a newline (torchrun)", ["export", str(f["model_newline"]), "--format", "torchrun"],
         (0, 2)),
        ("run: prediction is a string", ["run", str(f["prediction_str"]), "--out", str(d / "r")], (2,)),
        ("fit: binary runs table", ["fit", "--runs", str(f["binary"]), "--hardware", "local-cpu"], (2,)),
        ("compare: a directory without records", ["compare", str(d / "nothing")], (2,)),
        ("calibrate: --from-results binary", ["calibrate", "--from-results", str(f["binary"]), "--out",
                                             str(d / "c.yaml")], (2,)),
        ("predict: plan's hardware ../../etc/passwd", ["predict", str(f["hw_escape"])], (2,)),
        ("predict: plan's hardware /dev/zero", ["predict", str(f["hw_zero"])], (2,)),
        ("predict: profile YAML nested 100k deep", ["predict", *TINY[:2], "--hardware", str(f["deep_yaml"]),
                                                    "--nodes", "1", "--global-batch", "8"], (2,)),
        ("predict: a 65 MiB plan file", ["predict", str(f["huge"])], (2,)),
        ("predict: config.json with 10**9 layers", ["predict", "--model", str(f["layers_1e9"]), "--hardware",
                                                    "local-cpu", "--nodes", "1", "--global-batch", "8"], (2,)),
        ("predict: --nodes 0", ["predict", *TINY[:4], "--nodes", "0", "--global-batch", "8"], (2,)),
        ("predict: --global-batch -1", ["predict", *TINY, "--global-batch", "-1"], (2,)),
        ("predict: --seq-len 0", ["predict", *TINY, "--global-batch", "8", "--seq-len", "0"], (2,)),
        ("predict: --tp nan", ["predict", *TINY, "--global-batch", "8", "--tp", "nan"], (2,)),
        ("predict: pp 2 with 8M micro-batches", ["predict", *TINY, "--pp", "2", "--global-batch", str(2**23)], (0,)),
        ("plan: 2**20 + 1 nodes", ["plan", "--model", "tiny-gpt", "--hardware", "dgx-a100-80gb", "--nodes",
                                   str(2**20 + 1), "--global-batch", "8"], (2,)),
        ("plan: 10**6 nodes, global batch 8 (no plan fits)", ["plan", "--model", "tiny-gpt", "--hardware",
                                                              "dgx-a100-80gb", "--nodes", str(10**6),
                                                              "--global-batch", "8"], (1,)),
        ("plan: cluster file naming /etc/shadow", ["plan", "--model", "tiny-gpt", "--cluster", str(f["cluster_shadow"]),
                                                   "--global-batch", "8"], (2,)),
        ("export: --out naming a directory", ["export", plan, "--format", "torchrun", "--out", str(d)], (2,)),
        ("fit: --out naming a directory", ["fit", "--runs", str(f["tp_nan"]), "--hardware", "local-cpu", "--out",
                                           str(d)], (2,)),
        ("demo: binary --profile", ["demo", "--profile", str(f["binary"]), "--out", str(d / "demo")], (2,)),
        ("run: fp8 (the executor runs fp32/bf16)", ["run", str(f["fp8"]), "--out", str(d / "r8")], (2,)),
        ("run: a plan predicted not to fit", ["run", str(f["too_big"]), "--out", str(d / "rbig")], (2,)),
        ("run: --data that does not exist", ["run", plan, "--data", str(d / "nope.txt"), "--out", str(d / "rd")], (2,)),
        ("run: a folder that holds a run", ["run", plan, "--out", str(f["held"])], (2,)),
        ("run --print-command: $(...) in --out", ["run", plan, "--print-command", "--out", "$(touch /tmp/clusterplan-pwned)"],
         (0,)),
        ("compare: summary schema_version 99", ["compare", str(d / "run_v99")], (2,)),
        ("compare: binary summary.json", ["compare", str(d / "run_binary")], (2,)),
        ("compare: records lines not objects / bad UTF-8", ["compare", str(d / "run_records")], (2,)),
        ("compare: plan_id climbing out of --out", ["compare", str(d / "run_escape"), "--out", str(d / "cmp")], (0,)),
    ] + ([] if not (d / "ro").is_mount() else [
        (f"{verb}: --out on a read-only file system", [verb, *args, "--out" if verb != "validate" else "--out-dir",
                                                     str(d / "ro" / target)], (2,))
        for verb, args, target in (
            ("predict", [plan], "p.json"),
            ("plan", ["--model", "tiny-gpt", "--hardware", "local-cpu", "--nodes", "1", "--gpus-per-node", "2",
                      "--global-batch", "8"], "p.json"),
            ("export", [plan, "--format", "slurm"], "x.sh"),
            ("validate", ["--dataset", str(ROOT / "benchmarks" / "published_runs.csv")], "v"),
            ("fit", [str(ROOT / "tests" / "fixtures" / "runs" / "pp2"), "--hardware", "local-cpu"], "f.yaml"),
            ("calibrate", ["--from-results", str(ROOT / "reports" / "local-cpu-calibration.json")], "c.yaml"),
            ("compare", [str(ROOT / "tests" / "fixtures" / "runs" / "pp2")], "c"),
            ("run", [plan], "r"),
            ("demo", [], "d"))])


_MEASURE = ("import os, resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "open(os.environ['PROBE_RSS_FILE'], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(rc)\n")
"""Runs one case and writes that child's own peak RSS (KiB) to $PROBE_RSS_FILE."""


def _mount_read_only(path: Path) -> bool:
    """A read-only tmpfs at ``path`` (root only; a read-only mount stops root, a chmod does not)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def run_case(args: list[str], cwd: Path) -> dict:
    rss_file = cwd / ".probe-rss"
    rss_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PROBE_RSS_FILE=str(rss_file))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "planner.cli", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=60, env=env)
        rc, err, out = proc.returncode, proc.stderr, proc.stdout
    except subprocess.TimeoutExpired:
        rc, err, out = None, "timed out after 60 s", ""
    wall = time.perf_counter() - t0
    rss_kib = int(rss_file.read_text()) if rss_file.exists() else 0
    lines = [line for line in err.splitlines() if line.strip()]
    # data that reached a position a shell runs: a script line starting with the hidden command, or
    # the $(touch ...) given as a value outside single quotes
    injected = (any(line.lstrip().startswith("touch ") for line in out.splitlines())
                or out.count("$(touch") > out.count("'$(touch"))
    return {"rc": rc, "lines": len(lines), "traceback": "Traceback" in err, "wall_s": wall, "injected": injected,
            "rss_mib": rss_kib / 1024, "first": (lines[0] if lines else out.strip()[:120])[:160]}


FAULTS = (
    ("a rank raises / is killed / runs out of memory", "failed summary naming the rank, records intact, exit 1 "
     "(test_rank_raises, test_rank_killed, test_out_of_memory_reported)"),
    ("SIGTERM to `clusterplan run`", "torchrun and every rank stopped within seconds, summary failed with the signal, "
     "marked final so no rank rewrites it (test_sigterm_to_the_launcher_stops_every_rank)"),
    ("SIGKILL to torchrun", "its ranks (each in a session of its own) stop on PR_SET_PDEATHSIG; the launcher's "
     "failed summary is final (test_torchrun_killed_takes_its_ranks_with_it)"),
    ("the disk fills mid-run", "the failing rank's one line in a failed summary, written in the 1 MiB the launcher "
     "held; every complete record line readable (test_a_run_that_fills_the_disk_ends_failed_with_its_summary_and_"
     "records, root only: a tmpfs)"),
    ("two runs into one folder", "the second refused while the first lives (out/.lock; test_a_live_lock_stops_a_"
     "second_run); a folder holding a run needs --overwrite"),
    ("the rendezvous store on a shared host", "single-node runs in a network namespace with only loopback where "
     "user namespaces are allowed (test_a_single_node_run_sees_only_loopback)"),
)
"""Faults the tests inject, and what must follow (listed in the report)."""

ESCAPES = (Path("/tmp/clusterplan-pwned"),)
"""Files a case would create outside its scratch folder if data were executed or a path escaped."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "hardening.md"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clusterplan-probe-") as tmp:
        d = Path(tmp)
        f = _files(d)
        read_only = _mount_read_only(d / "ro")
        rows = []
        for path in ESCAPES:
            path.unlink(missing_ok=True)
        try:
            for name, args, ok_rc in cases(f, d):
                r = run_case(args, d)
                escaped = ([str(p) for p in ESCAPES if p.exists()]
                           + [str(p) for p in Path("/tmp").glob("clusterplan-escape*")])
                r["ok"] = (r["rc"] in ok_rc and r["lines"] <= 1 and not r["traceback"] and r["wall_s"] < 30
                           and not r.pop("injected") and not escaped)
                rows.append((name, r))
                print(f"{'ok ' if r['ok'] else 'BAD'} {name}: exit {r['rc']}, {r['lines']} line(s), "
                      f"{r['wall_s']:.1f} s, {r['first']}", flush=True)
        finally:
            if read_only:
                subprocess.run(["umount", str(d / "ro")], capture_output=True)
    good = sum(1 for _, r in rows if r["ok"])
    lines = ["# Hardening probe", "", "Regenerate: `.venv/bin/python benchmarks/hardening_probe.py` (writes this file).",
             "", f"{good} of {len(rows)} bad inputs end as promised (one line on stderr, the documented exit status, "
             "no traceback, under 30 s, nothing created outside the scratch folder). Peak RSS is each case's own process.", "",
             "A case also fails when its output puts data where a shell runs it (a script line starting with the "
             "command hidden in a name, a `$(...)` outside single quotes).",
             "", ("`--out` on a read-only file system: a tmpfs mounted read-only (it stops root too)."
                  if read_only else "`--out` on a read-only file system: not probed (mounting a tmpfs needs root)."), "", "| case | exit | stderr lines | traceback | wall s | peak RSS MiB | first line |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        first = r["first"].replace("|", "\\|")
        lines.append(f"| {name} | {r['rc']} | {r['lines']} | {'yes' if r['traceback'] else 'no'} | {r['wall_s']:.2f} | "
                     f"{r['rss_mib']:.0f} | {first} |")
    lines += ["", "## Faults", "", "Checked by tests (`.venv/bin/python -m pytest -q tests/test_executor_faults.py "
              "tests/test_hardening.py`), each with 2 gloo ranks and a timeout:", ""]
    lines += [f"- {fault}: {what}" for fault, what in FAULTS]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"{good}/{len(rows)} as promised; wrote {a.out}")
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
