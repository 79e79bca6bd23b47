"""Hardware profiles: every shipped profile loads with physical values; malformed profiles are
one-line InputErrors naming the field."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from planner.errors import InputError
from planner.hardware import PROFILES_DIR
from planner.profile_yaml import available_profiles, load_profile, parse_profile
from planner.units import GB, GIB, TERA

REQUIRED = [
    "dgx2h-v100-32gb", "dgx-a100-40gb", "dgx-a100-80gb", "dgx-h100-80gb", "dgx-h200-141gb",
    "dgx-b200-192gb", "gh200-96gb-quad", "mi300x-192gb-8x",
]
GPU_PROFILES = [name for name in available_profiles() if name != "local-cpu"]


def _raw(name: str) -> dict:
    return yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())


def test_required_profiles_exist():
    missing = sorted(set(REQUIRED) - set(available_profiles()))
    assert not missing, f"missing profiles: {missing}"


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads(name):
    node = load_profile(name)
    assert node.name == name
    assert node.gpus_per_node >= 1
    assert node.device.hbm_bytes > 0
    assert node.intra_node.bandwidth_bytes_per_s > 0


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profile_values_are_physical(name):
    node = load_profile(name)
    dev = node.device
    # 16-bit tensor peak between V100 (~125) and B200 (2250) TFLOP/s
    half = dev.peak_flops("fp16")
    assert 100 * TERA <= half <= 2500 * TERA
    if dev.supports("bf16"):
        assert dev.peak_flops("bf16") == pytest.approx(half)
    if dev.supports("fp8"):
        assert dev.peak_flops("fp8") == pytest.approx(2 * half, rel=0.01)
    assert dev.peak_flops("fp32") < half
    assert 16 * GIB <= dev.hbm_bytes <= 200 * GIB
    assert 800 * GB <= dev.hbm_bandwidth_bytes_per_s <= 8000 * GB
    # curve non-decreasing in size and never above 0.95 of peak
    effs = [e for _, e in dev.matmul_efficiency.points]
    assert effs == sorted(effs) and max(effs) <= 0.95
    assert dev.matmul_efficiency(1e7) <= dev.matmul_efficiency(1e13)
    # intra-node fabric is faster than the NIC share of a GPU
    assert node.intra_node.effective_bandwidth_bytes_per_s > node.inter_node.effective_bandwidth_bytes_per_s
    assert node.inter_node.latency_s >= node.intra_node.latency_s


def test_known_values_from_gpu_specs():
    a100 = load_profile("dgx-a100-80gb")
    assert a100.device.peak_flops("bf16") == pytest.approx(312e12)
    assert a100.device.hbm_bandwidth_bytes_per_s == pytest.approx(2.039e12)
    assert a100.intra_node.bandwidth_bytes_per_s == pytest.approx(300e9)
    assert a100.intra_node.effective_bandwidth_bytes_per_s == pytest.approx(231e9)
    assert not a100.device.supports("fp8")
    h100 = load_profile("dgx-h100-80gb")
    assert h100.device.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.inter_node.bandwidth_bytes_per_s == pytest.approx(50e9)
    gh = load_profile("gh200-96gb-quad")
    assert gh.gpus_per_node == 4
    assert gh.device.hbm_bandwidth_bytes_per_s == pytest.approx(4e12)
    assert gh.inter_node.bandwidth_bytes_per_s == pytest.approx(25e9)
    v100 = load_profile("dgx2h-v100-32gb")
    assert v100.gpus_per_node == 16
    assert not v100.device.supports("bf16")
    with pytest.raises(InputError) as err:
        v100.device.peak_flops("bf16")
    assert err.value.field == "precision"


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_every_number_has_a_source_comment(name):
    """Each line that sets a number carries a comment (on the line, or the comment block just
    above it for multi-line explanations)."""
    lines = (PROFILES_DIR / f"{name}.yaml").read_text().splitlines()
    number = re.compile(r"^\s*[a-z0-9_]+:\s*(\[|[0-9])")
    for i, line in enumerate(lines):
        if number.match(line) and "#" not in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"{name}.yaml line {i + 1} has no source comment: {line!r}"


# ----- malformed profiles ----------------------------------------------------------------------
def _mutated(mutate) -> dict:
    data = copy.deepcopy(_raw("dgx-a100-80gb"))
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.__setitem__("colour", "green"), "profile.colour"),
    (lambda d: d["device"].__setitem__("tflops", 1), "device.tflops"),
    (lambda d: d["device"]["peak_tflops"].__setitem__("int8", 624), "device.peak_tflops.int8"),
    (lambda d: d["node"]["intra_node"].__setitem__("bw", 1), "node.intra_node.bw"),
    (lambda d: d["device"].pop("hbm_gib"), "device.hbm_gib"),
    (lambda d: d["device"].pop("matmul_efficiency"), "device.matmul_efficiency"),
    (lambda d: d["node"]["inter_node"].pop("latency_us"), "node.inter_node.latency_us"),
    (lambda d: d.pop("name"), "profile.name"),
    (lambda d: d["node"].pop("gpus_per_node"), "node.gpus_per_node"),
    (lambda d: d["device"].__setitem__("hbm_gib", "eighty"), "device.hbm_gib"),
    (lambda d: d["device"].__setitem__("hbm_gib", True), "device.hbm_gib"),
    (lambda d: d["node"].__setitem__("gpus_per_node", 8.5), "node.gpus_per_node"),
    (lambda d: d["node"]["intra_node"].__setitem__("bandwidth_gb_s", "300"),
     "node.intra_node.bandwidth_gb_s"),
    (lambda d: d["device"].__setitem__("matmul_efficiency", [[1e9, 0.5], "x"]),
     "device.matmul_efficiency[1]"),
    (lambda d: d["device"].__setitem__("matmul_efficiency", [[1e10, 0.5], [1e9, 0.6]]),
     "device.matmul_efficiency"),
    (lambda d: d["device"].__setitem__("matmul_efficiency", [[1e9, 1.5]]), "device.matmul_efficiency"),
    (lambda d: d.__setitem__("node", [8]), "node"),
    (lambda d: d["device"].__setitem__("memory_bound_efficiency", 1.2), "device.memory_bound_efficiency"),
    (lambda d: d.__setitem__("collectives", [{"op": "all_reduce", "group_size": "two",
                                               "latency_us": 1, "bus_bandwidth_gb_s": 1}]),
     "collectives[0].group_size"),
    (lambda d: d.__setitem__("collectives", [{"op": "broadcast", "group_size": 2,
                                               "latency_us": 1, "bus_bandwidth_gb_s": 1}]),
     "collectives.op"),
])
def test_malformed_profile_names_the_field(mutate, field):
    with pytest.raises(InputError) as err:
        parse_profile(_mutated(mutate))
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_bad_yaml_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndevice: {name: x, peak_tflops: [1, 2\n")
    with pytest.raises(InputError) as err:
        load_profile(str(path))
    assert err.value.field == "hardware"
    assert "not valid YAML" in err.value.reason
    assert "\n" not in str(err.value)


def test_unsigned_exponent_is_rejected(tmp_path: Path):
    """PyYAML reads 1.0e9 (no sign) as a string: the loader must say which point is wrong."""
    text = (PROFILES_DIR / "dgx-a100-80gb.yaml").read_text().replace("1.0e+9", "1.0e9")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_profile(str(path))
    assert err.value.field.startswith("device.matmul_efficiency[")


def test_unknown_profile_lists_known_ones():
    with pytest.raises(InputError) as err:
        load_profile("dgx-a100-81gb")
    assert err.value.field == "hardware"
    assert "dgx-a100-80gb" in err.value.reason


def test_missing_profile_file():
    with pytest.raises(InputError) as err:
        load_profile("/nonexistent/profile.yaml")
    assert err.value.field == "hardware"


def test_matmul_efficiency_per_dtype():
    data = _raw("dgx-a100-80gb")
    data["device"]["matmul_efficiency"] = {"fp32": [[1.0e+6, 0.5]], "bf16": [[1.0e+6, 0.25], [1.0e+9, 0.75]]}
    device = parse_profile(data).device
    assert device.matmul_curve("fp32")(1e6) == 0.5
    assert device.matmul_curve("bf16")(1e9) == 0.75
    assert device.matmul_curve("fp16") is device.matmul_efficiency  # default: the first listed
    data["device"]["matmul_efficiency"] = {"int4": [[1.0e+6, 0.5]]}
    with pytest.raises(InputError) as err:
        parse_profile(data)
    assert "matmul_efficiency.int4" in err.value.field


# ----- the optional framework section (calibrated CPU profiles) --------------------------------
FRAMEWORK = {"op_forward_us": 4.0, "op_backward_us": 3.0, "op_optimizer_us": 3.0,
             "tp_linear_forward_us": 500.0, "tp_linear_backward_us": 400.0, "tp_optimizer_param_us": 80.0,
             "fsdp_unit_forward_us": 600.0, "fsdp_unit_backward_us": 900.0, "fsdp_optimizer_param_us": 100.0,
             "zero1_param_us": 300.0, "fragmentation_fraction": 0.4, "training_overhead_mib": 12.0}


def test_gpu_profiles_have_no_framework_section():
    for name in GPU_PROFILES:
        assert load_profile(name).framework is None


def test_framework_section_parses_to_si():
    data = copy.deepcopy(_raw("dgx-a100-80gb"))
    data["framework"] = dict(FRAMEWORK)
    fw = parse_profile(data).framework
    assert fw.op_forward_s == pytest.approx(4.0e-6)
    assert fw.tp_linear_backward_s == pytest.approx(400e-6)
    assert fw.zero1_param_s == pytest.approx(300e-6)
    assert fw.fragmentation_fraction == pytest.approx(0.4)
    assert fw.training_overhead_bytes == pytest.approx(12 * 2**20)
    # everything else parses exactly as without the section
    plain = parse_profile(_raw("dgx-a100-80gb"))
    assert plain.framework is None
    assert parse_profile(data).device == plain.device


@pytest.mark.parametrize("mutate, field", [
    (lambda f: f.__setitem__("op_forward_ms", 1.0), "framework.op_forward_ms"),
    (lambda f: f.pop("zero1_param_us"), "framework.zero1_param_us"),
    (lambda f: f.__setitem__("tp_linear_forward_us", "fast"), "framework.tp_linear_forward_us"),
    (lambda f: f.__setitem__("fsdp_unit_backward_us", -1.0), "framework.fsdp_unit_backward_us"),
    (lambda f: f.__setitem__("fragmentation_fraction", 1.5), "framework.fragmentation_fraction"),
    (lambda f: f.__setitem__("training_overhead_mib", True), "framework.training_overhead_mib"),
])
def test_malformed_framework_names_the_field(mutate, field):
    data = copy.deepcopy(_raw("dgx-a100-80gb"))
    data["framework"] = dict(FRAMEWORK)
    mutate(data["framework"])
    with pytest.raises(InputError) as err:
        parse_profile(data)
    assert err.value.field == field


def test_framework_must_be_a_mapping():
    data = copy.deepcopy(_raw("dgx-a100-80gb"))
    data["framework"] = [1, 2]
    with pytest.raises(InputError) as err:
        parse_profile(data)
    assert err.value.field == "framework"


def _with_table(times_us):
    data = copy.deepcopy(_raw("dgx-a100-80gb"))
    data["collectives"] = [{"op": "all_reduce", "group_size": 2, "latency_us": 100.0, "bus_bandwidth_gb_s": 1.0,
                            "times_us": times_us}]
    return data


def test_measured_collective_table_is_interpolated_in_log_log():
    from planner.cost.comm import GroupShape, collective_time

    node = parse_profile(_with_table([[1024, 100.0], [1048576, 1600.0], [4194304, 6000.0]]))
    g = GroupShape(2, 2, 1)
    # at a measured size: the measured time
    assert collective_time("all_reduce", 1048576, g, node) == pytest.approx(1600e-6)
    # between two sizes: the geometric mean at the geometric middle (log-log line)
    assert collective_time("all_reduce", 2097152, g, node) == pytest.approx((1600e-6 * 6000e-6) ** 0.5)
    # below the table: the smallest size's time; above: the bus bandwidth from the last point
    assert collective_time("all_reduce", 8, g, node) == pytest.approx(100e-6)
    beyond = collective_time("all_reduce", 2 * 4194304, g, node)
    assert beyond == pytest.approx(6000e-6 + 1.0 * 4194304 / 1e9)
    # without a table: the alpha-beta line
    plain = parse_profile(_with_table(None) | {"collectives": [{"op": "all_reduce", "group_size": 2,
                                                               "latency_us": 100.0, "bus_bandwidth_gb_s": 1.0}]})
    assert collective_time("all_reduce", 1048576, g, plain) == pytest.approx(100e-6 + 1048576 / 1e9)


@pytest.mark.parametrize("times, field", [
    ("fast", "collectives[0].times_us"),
    ([[1024, "x"]], "collectives[0].times_us[0]"),
    ([[1024]], "collectives[0].times_us[0]"),
    ([[4096, 10.0], [1024, 5.0]], "collectives.times_us"),
    ([[1024, 0.0], [4096, 5.0]], "collectives.times_us"),
])
def test_malformed_collective_table_names_the_field(times, field):
    with pytest.raises(InputError) as err:
        parse_profile(_with_table(times))
    assert err.value.field == field


def test_attention_kernel_tables_parse_strictly_and_round_trip():
    from planner.profile_write import profile_yaml

    node = load_profile("dgx-h100-80gb")
    assert {k.name for k in node.device.attention_kernels} == {"flash2", "cudnn", "flash3"}
    assert parse_profile(yaml.safe_load(profile_yaml(node))).device.attention_kernels == node.device.attention_kernels
    raw = yaml.safe_load((PROFILES_DIR / "dgx-h100-80gb.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["device"]["attention_tflops"]["cudnn"]["forward"][0][1] = 5000.0  # above the 989 TFLOP/s peak
    with pytest.raises(InputError) as err:
        parse_profile(bad)
    assert "attention_tflops.cudnn.forward" in str(err.value)
    missing = copy.deepcopy(raw)
    del missing["device"]["attention_tflops"]["flash2"]["backward"]
    with pytest.raises(InputError, match="flash2.backward: missing"):
        parse_profile(missing)


def test_a_cpu_profile_used_on_another_host_says_so(tmp_path, capsys):
    """calibrate records the host's CPU model and cores; predict on another host warns in one line."""
    import dataclasses

    from planner.calibrate.host import other_host, warn_if_other_host
    from planner.profile_write import write_profile

    node = load_profile("local-cpu")
    here = dataclasses.replace(node, measured_on="host=a; cpu=Test CPU 9000; cores=2 (affinity 2); torch=x")
    assert other_host(here, model="Test CPU 9000", cores=2) is None
    why = other_host(here, model="Other CPU", cores=2)
    assert "Test CPU 9000 (2 cores)" in why and "Other CPU (2 cores)" in why
    assert "16 cores" in other_host(here, model="Test CPU 9000", cores=16)
    assert other_host(load_profile("dgx-h100-80gb"), model="x", cores=1) is None  # GPU profiles: no host
    assert other_host(dataclasses.replace(here, measured_on=""), model="x", cores=1) is None
    warn_if_other_host([here], "predict")
    import os

    from planner.hardware import host_cpu_model
    err = capsys.readouterr().err.strip().splitlines()
    expected = 0 if (host_cpu_model(), os.cpu_count()) == ("Test CPU 9000", 2) else 1
    assert len(err) == expected and (not err or err[0].startswith("clusterplan predict: warning: "))
    path = tmp_path / "elsewhere.yaml"
    write_profile(here, path)
    from planner.cli import main
    assert main(["predict", "--model", "tiny-gpt", "--hardware", str(path), "--nodes", "1", "--gpus-per-node", "2",
                 "--global-batch", "8"]) == 0
    assert "warning: " in capsys.readouterr().err


def test_context_parallel_attention_runs_at_the_rates_of_its_ring_blocks():
    """Over cp ranks the kernel runs on blocks seq/cp long, one causal and cp-1 unmasked: cp=1 is
    the causal rate at the whole length; short blocks run slower than the whole sequence would."""
    from planner.profile_yaml import load_profile
    kernel = load_profile("dgx-h100-80gb").device.attention_kernel("cudnn")
    peak = 989.4e12
    assert kernel.ring_rates(8192, 1, peak) == kernel.causal_rates(8192, peak)
    fwd8, bwd8 = kernel.ring_rates(8192, 8, peak)
    own_f = kernel.causal_rates(1024, peak)[0]
    full_f = kernel.forward(1024) * peak
    assert fwd8 == pytest.approx(1 / (0.125 / own_f + 0.875 / full_f))
    assert fwd8 < kernel.forward(8192) * peak and bwd8 < kernel.backward(8192) * peak


def test_an_fp8_gemm_takes_the_time_of_a_bf16_gemm_of_half_its_flops():
    """Twice the arithmetic rate, the same fixed costs: on the shared curve an FP8 GEMM of F FLOPs
    at the FP8 peak takes as long as a BF16 GEMM of F/2 at the BF16 peak; a dtype's own curve wins."""
    import dataclasses
    from planner.hardware import EfficiencyCurve
    from planner.profile_yaml import load_profile
    dev = load_profile("dgx-h100-80gb").device
    for flops in (1e9, 1e10, 1e11, 1e12):
        t_fp8 = flops / (dev.peak_flops("fp8") * dev.gemm_efficiency("fp8", flops))
        t_bf16 = flops / 2 / (dev.peak_flops("bf16") * dev.gemm_efficiency("bf16", flops / 2))
        assert t_fp8 == pytest.approx(t_bf16, rel=1e-3)  # the FP8 peak is twice the BF16 one to 4 digits
    own = dataclasses.replace(dev, matmul_efficiency_by_dtype=(("fp8", EfficiencyCurve(((1e9, 0.3), (1e12, 0.6)))),))
    assert own.gemm_efficiency("fp8", 1e12) == pytest.approx(0.6)


def test_a_device_keeps_its_hash_equal_to_an_equal_devices_and_pickles_without_it():
    import dataclasses
    import pickle

    from planner.profile_yaml import load_profile

    device = load_profile("dgx-h100-80gb").device
    twin = dataclasses.replace(device)
    assert twin == device and hash(twin) == hash(device) == hash(device)
    assert "_hash" not in pickle.loads(pickle.dumps(device)).__dict__
    other = dataclasses.replace(device, host_cores=3)
    assert other != device and hash(other) != hash(device)


@pytest.mark.parametrize("profiles", [("dgx-a100-40gb", "dgx-a100-80gb"), ("dgx-h100-80gb", "dgx-h200-141gb", "gh200-96gb-quad")])
def test_one_die_one_gemm_curve(profiles):
    """Profiles of one GPU die at the same clocks and power run a GEMM alike: they carry the same
    (cross-validated) efficiency curve, so a fitted scale cannot reach one and miss the other."""
    from planner.cross_validation import FITTED_CHOICES
    curves = {load_profile(p).device.matmul_efficiency.points for p in profiles}
    assert len(curves) == 1
    scaled = [c for c in FITTED_CHOICES if set(profiles) <= set(c.overrides(c.committed)[0])]
    assert len(scaled) == 1
    _assert_committed(scaled[0], profiles)


def _assert_committed(choice, profiles):
    """Each profile's curve is what the fitted choice gives at its committed value."""
    nodes = choice.overrides(choice.committed)[0]
    for p in profiles:
        flat = [x for point in nodes[p].device.matmul_efficiency.points for x in point]
        committed = [x for point in load_profile(p).device.matmul_efficiency.points for x in point]
        assert flat == pytest.approx(committed, abs=1e-4)  # the profiles keep 4 decimals


def test_the_b200_curve_is_the_h100s_times_their_measured_gemm_ratio():
    """B200's large-GEMM points: the H100's cited points times the two chips' measured ratio
    (0.795), times B200's own fitted scale (its committed value in the profile)."""
    from planner.cross_validation import B200_CITED_LARGE_GEMM, B200_OVER_H100_BF16_GEMM, FITTED_CHOICES
    assert B200_OVER_H100_BF16_GEMM == pytest.approx(0.795, abs=1e-3)
    b200 = next(c for c in FITTED_CHOICES if "dgx-b200-192gb" in c.overrides(c.committed)[0])
    assert not any("dgx-b200-192gb" in c.overrides(c.committed)[0] for c in FITTED_CHOICES if c is not b200)
    _assert_committed(b200, ("dgx-b200-192gb",))
    points = dict(load_profile("dgx-b200-192gb").device.matmul_efficiency.points)
    assert all(points[f] == pytest.approx(e * b200.committed, abs=1e-4) for f, e in B200_CITED_LARGE_GEMM)