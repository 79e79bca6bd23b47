"""The README's commands work as written: every ``clusterplan`` line of its code blocks is either
run here (the planning verbs: fast, no side effects outside a scratch folder) or belongs to a verb
this test leaves to its own tests, named below with the reason. A new kind of command fails the
test until it is classified."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_HERE = ("predict", "plan", "export", "list")
LEFT_TO_OTHER_TESTS = {
    "run": "launches torchrun (tests/test_run_cli.py); `run --print-command` is run here",
    "compare": "needs a run folder (tests/test_compare.py)",
    "calibrate": "minutes of benchmarks (tests/test_calibrate.py)",
    "emulate": "root and network namespaces (tests/test_emulate.py)",
    "fit": "needs measured runs (tests/test_fit.py)",
    "validate": "about a minute over the published runs (tests/test_validate.py)",
}


def readme_commands() -> list[str]:
    """Each shell command in the README's code blocks (continuations joined, comments and
    ``&&`` chains split)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return [c for c in out if c.startswith("clusterplan")]


def _variants(command: str) -> list[list[str]]:
    """The command's argv; ``a|b|c`` choices give one argv each, ``[--opt]`` is left out."""
    command = re.sub(r"\s\[[^\]]*\]", "", command)
    argv = shlex.split(command)[1:]
    for i, arg in enumerate(argv):
        if "|" in arg:
            return [argv[:i] + [choice] + argv[i + 1:] for choice in arg.split("|")]
    return [argv]


def test_every_readme_command_is_classified():
    verbs = {shlex.split(c)[1] for c in readme_commands()}
    assert verbs <= set(RUN_HERE) | set(LEFT_TO_OTHER_TESTS), verbs - set(RUN_HERE) - set(LEFT_TO_OTHER_TESTS)
    assert {"predict", "plan", "export"} <= verbs


def test_the_planning_commands_run_as_written(tmp_path):
    """In a scratch folder holding the repository's inputs (clusters, tests, hardware_profiles,
    benchmarks), with /tmp/ redirected into it, in the README's order (later lines read what
    earlier ones wrote)."""
    for name in ("clusters", "tests", "hardware_profiles", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ran = 0
    not_written: set[str] = set()  # what the commands not run here would have written
    for command in readme_commands():
        argv0 = shlex.split(command)
        verb = argv0[1]
        if (verb not in RUN_HERE and "--print-command" not in command) or any(p in command for p in not_written):
            not_written |= {argv0[i + 1] for i, a in enumerate(argv0[:-1]) if a in ("--out", "--out-dir")}
            continue
        for argv in _variants(command.replace("/tmp/", f"{tmp_path}/")):
            done = subprocess.run([sys.executable, "-m", "planner.cli", *argv], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
            errors = [line for line in done.stderr.splitlines() if "warning:" not in line and "note:" not in line]
            assert done.returncode == 0 and not errors, f"{' '.join(argv)}: {done.stderr.strip()[:300]}"
            ran += 1
    assert ran >= 8


def test_the_python_blocks_run_as_written(tmp_path):
    """Every ```python block of the README, run in a fresh interpreter from a scratch folder."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README shows the Python API"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-500:]
        assert done.stdout.strip(), "the block prints what it computed"
