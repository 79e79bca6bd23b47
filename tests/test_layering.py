"""The planner never imports torch (DESIGN.md: dependencies point executor -> planner)."""
import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import planner
for info in pkgutil.walk_packages(planner.__path__, "planner."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("executor"))
print(",".join(bad))
"""


def test_planner_imports_neither_torch_nor_the_executor():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
