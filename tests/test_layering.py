"""The import graph: layers point one way, no cycles, no private names across modules, the planner
free of torch and the executor free of the cost model (docs/architecture.md).

Every ``import`` / ``from ... import`` counts, including those inside functions, so an import
moved into a function to dodge a cycle still shows as the cycle it is."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lower layers never import higher ones; "side" (calibration, records, reports, exports,
# validation, the demo) imports downward only and nothing below it imports it
LAYERS = (
    ("spec", ("planner.errors", "planner.io", "planner.model", "planner.model_checks", "planner.model_params",
              "planner.presets", "planner.hf_config", "planner.hf_families", "planner.hf_gemma", "planner.hf_mllama",
              "planner.catalog", "planner.units",
              "planner.framework_spec", "planner.gemm_shapes", "planner.hardware", "planner.profile_yaml", "planner.profile_write", "planner.cluster")),
    ("plan", ("planner.plan", "planner.layout", "planner.executor_rules", "planner.partition", "planner.schedule",
              "planner.schedule_zb", "planner.schedule_estimate", "planner.schedule_shared")),
    ("cost", ("planner.cost",)),
    ("search", ("planner.search",)),
    ("side", ("planner.calibrate", "planner.launch", "planner.records", "planner.report", "planner.report_plots",
              "planner.report_html", "planner.report_files", "planner.validation", "planner.row_config",
              "planner.row_model", "planner.export", "planner.demo", "planner.trust", "planner.mfu_ceiling",
              "planner.cross_validation", "planner.emulate", "planner.loopback_only")),
    ("commands", ("planner.commands", "planner.cli", "planner")),
)
EXECUTOR_MAY_IMPORT = ("spec", "plan")
EXECUTOR_SIDE_MODULES = ("planner.records",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported planner module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "planner"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "planner":
            names = [a.name for a in node.names]
            subs = [f"{node.module}.{n}" for n in names if (ROOT / Path(*f"{node.module}.{n}".split("."))).is_dir()
                    or (ROOT / Path(*f"{node.module}.{n}".split("."))).with_suffix(".py").is_file()]
            out += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{node.module}.{n}" not in subs]
            if rest or not subs:
                out.append((node.module, rest, node.lineno))
    return out


def _graph(package: str) -> dict[str, list[tuple[str, list[str], int]]]:
    return {_module_name(p): _imports(p) for p in sorted((ROOT / package).rglob("*.py"))}


def test_planner_layers_point_one_way():
    bad = []
    for mod, deps in _graph("planner").items():
        for dep, _, line in deps:
            if _layer(dep) > _layer(mod):
                bad.append(f"{mod}:{line} imports {dep} ({LAYERS[_layer(mod)][0]} -> {LAYERS[_layer(dep)][0]})")
    assert not bad, "\n".join(bad)


def test_planner_has_no_import_cycles():
    graph = {m: sorted({d for d, _, _ in deps if d != m}) for m, deps in _graph("planner").items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d in graph and state.get(d) is None:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if state.get(m) is None:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_no_private_names_across_modules():
    bad = [f"{mod}:{line} takes {', '.join(n for n in names if n.startswith('_'))} from {dep}"
           for pkg in ("planner", "executor", "benchmarks") for mod, deps in _graph(pkg).items()
           for dep, names, line in deps if any(n.startswith("_") for n in names)]
    assert not bad, "\n".join(bad)


def test_executor_imports_specs_plans_and_records_only():
    allowed = {i for i, (name, _) in enumerate(LAYERS) if name in EXECUTOR_MAY_IMPORT}
    bad = [f"{mod}:{line} imports {dep}" for mod, deps in _graph("executor").items() for dep, _, line in deps
           if _layer(dep) not in allowed and dep not in EXECUTOR_SIDE_MODULES]
    assert not bad, "\n".join(bad)


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
