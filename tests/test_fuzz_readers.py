"""Fuzzed readers (hypothesis, derandomized so the suite stays deterministic): whatever text or
structure a file holds, each reader returns a value or raises InputError, one line; never another
exception."""
from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from planner.errors import InputError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)


def _only_input_errors(call):
    try:
        call()
    except InputError as err:
        assert "\n" not in str(err) and len(str(err)) < 2000
    except RecursionError:  # pragma: no cover - must not happen
        pytest.fail("RecursionError escaped")


@FUZZ
@given(st.text(max_size=300))
def test_json_and_yaml_text(text):
    from planner.io import parse_json, parse_yaml

    _only_input_errors(lambda: parse_json(text, "plan", "x.json"))
    _only_input_errors(lambda: parse_yaml(text, "hardware", "x.yaml"))


def _with(base: dict, path: tuple[str, ...], value):
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.fixture(scope="module")
def good_plan() -> dict:
    from planner.cli import main
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plan.json"
        assert main(["predict", "--model", "tiny-gpt", "--hardware", "local-cpu", "--nodes", "1", "--gpus-per-node",
                     "2", "--global-batch", "8", "--out", str(path)]) == 0
        return json.loads(path.read_text())


PLAN_FIELDS = [("n_nodes",), ("gpus_per_node",), ("hardware",), ("parallel",), ("parallel", "tp"),
               ("parallel", "dp"), ("parallel", "micro_batch"), ("parallel", "global_batch"),
               ("parallel", "seq_len"), ("parallel", "precision"), ("parallel", "stage_layers"), ("model",),
               ("model", "n_layers"), ("model", "hidden_size"), ("model", "n_heads"), ("prediction",)]


@FUZZ
@given(st.sampled_from(PLAN_FIELDS), json_values)
def test_plan_fields(good_plan, field, value):
    from planner.plan import Plan

    _only_input_errors(lambda: Plan.from_dict(_with(good_plan, field, value)))


@pytest.fixture(scope="module")
def good_profile() -> dict:
    import yaml

    from planner.profile_yaml import resolve_profile_path

    return yaml.safe_load(resolve_profile_path("dgx-h100-80gb").read_text())


PROFILE_FIELDS = [("name",), ("device",), ("device", "peak_tflops"), ("device", "peak_tflops", "bf16"),
                  ("device", "hbm_gib"), ("device", "matmul_efficiency"), ("device", "sm_count"), ("node",),
                  ("node", "gpus_per_node"), ("node", "intra_node"), ("node", "inter_node", "bandwidth_gb_s"),
                  ("node", "inter_node", "bus_efficiency")]


@FUZZ
@given(st.sampled_from(PROFILE_FIELDS), json_values)
def test_profile_fields(good_profile, field, value):
    from planner.profile_yaml import parse_profile

    _only_input_errors(lambda: parse_profile(_with(good_profile, field, value)))


@FUZZ
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), min_size=1, max_size=30))
def test_measured_runs_table(tmp_path_factory, cells):
    from planner.calibrate.runs_table import load_runs_table

    header = ("name,model,nodes,gpus_per_node,tp,pp,dp,cp,micro_batch,global_batch,seq_len,precision,recompute,"
              "sharding,schedule,vpp,stage_layers,measured_step_s,measured_peak_memory_bytes,memory_source")
    row = ",".join(json.dumps(c) for c in cells)
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    path.write_text(header + "\n" + row + "\n")
    _only_input_errors(lambda: load_runs_table(path, "local-cpu"))
