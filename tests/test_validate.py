import csv
from pathlib import Path

import pytest

from planner.cli import main
from planner.validation import summary, validate

SRC = Path(__file__).resolve().parent.parent / "benchmarks" / "published_runs.csv"
KEEP = {"11", "24", "36", "37", "38", "162", "194", "197"}


@pytest.fixture()
def fixture_csv(tmp_path):
    with SRC.open() as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            if r["row_id"] in KEEP:
                w.writerow(r)
    return path


def test_validate_dataframe(fixture_csv):
    df = validate(fixture_csv)
    status = dict(zip(df["row_id"], df["status"]))
    assert status[36] == "predicted" and status[37] == "predicted" and status[38] == "predicted"
    assert status[24] == "assumed"      # micro-batch not stated
    assert status[162] == "assumed"     # Jean Zay: concurrent groups assumed not to contend
    assert status[194] == "skipped" and status[197] == "skipped"
    row37 = df[df["row_id"] == 37].iloc[0]
    assert row37["metric"] == "mfu_pct" and "vpp3" in row37["config"]
    assert df[df["row_id"] == 36].iloc[0]["metric"] == "step_time_s"
    assert df[df["row_id"] == 11].iloc[0]["metric"] == "hfu_tflops_per_gpu"
    skipped = df[df["status"] == "skipped"]
    assert all(skipped["note"].str.len() > 0)
    s = summary(df)  # the headline: every predictable row, assumed ones included
    priced = df[df["status"] != "skipped"]
    assert s["rows"] == 6 and s["mean_abs_error"] == pytest.approx(priced["abs_error"].mean())
    assert s["mean_abs_error"] > 0.0  # no published row is hit exactly
    assert summary(df, "predicted")["rows"] == 4 and summary(df, "assumed")["rows"] == 2


def test_validate_command_writes_report(fixture_csv, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["validate", "--dataset", str(fixture_csv), "--out-dir", str(out)]) == 0
    md = (out / "published-validation.md").read_text()
    assert "clusterplan validate --dataset" in md and "Skipped rows" in md
    assert (out / "published-validation.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "published-validation.csv").read_text().startswith("row_id")


def test_validate_bad_dataset(tmp_path, capsys):
    assert main(["validate", "--dataset", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and len(err.strip().splitlines()) == 1


def test_rows_are_built_from_their_architecture_columns(tmp_path):
    """A model with no preset is built from its columns (assumptions stated on the row); a row
    without the columns and without a preset is skipped with the reason."""
    with SRC.open() as f:
        rows = list(csv.DictReader(f))
    base = next(r for r in rows if r["row_id"] == "38")
    new = dict(base, row_id="901", model="SomeLab-Llama 175B", framework="Megatron-Core r0.9")
    new.update(n_layers="96", hidden_size="12288", n_heads="96", n_kv_heads="8", ffn_hidden_size="", vocab_size="128256")
    bare = dict(base, row_id="902", model="Unknown model", n_layers="", hidden_size="", n_heads="")
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in (base, new, bare):
            w.writerow(r)
    df = validate(path).set_index("row_id")
    assert df.loc[38, "status"] == "predicted"
    assert df.loc[901, "status"] == "assumed" and df.loc[901, "predicted"] > 0
    assert "LLaMA-style" in df.loc[901, "note"] and "ffn_hidden_size not stated: 32768" in df.loc[901, "note"]
    assert df.loc[902, "status"] == "skipped" and "architecture not given" in df.loc[902, "note"]


def test_framework_names_people_write_map_to_runtimes():
    from planner.validation import framework_runtime, runtime_for_framework

    assert runtime_for_framework("NeMo 24.07") == "megatron-core"
    assert runtime_for_framework("Megatron-Bridge") == "megatron-core"
    assert runtime_for_framework("torchtitan + torch.compile") == "torchtitan"
    assert runtime_for_framework("torchtitan (eager)") == "torchtitan-eager"
    assert runtime_for_framework("Megatron-LM (PTD-P)") == "megatron-lm-2021"
    assert runtime_for_framework("DeepSpeed ZeRO-3 in Megatron") == "deepspeed-zero3-2021"
    name, note = framework_runtime("JAX/MaxText")
    assert name == "default" and "not recognised" in note


def test_precisions_of_todays_rows(tmp_path):
    """fp8 rows are priced in fp8 (where the GPU has it, else skipped with the reason, not a
    traceback); TF32 rows are priced at the TF32 tensor-core rate on fp32 tensors, slower than
    the same row in 16-bit."""
    with SRC.open() as f:
        rows = list(csv.DictReader(f))
    base = next(r for r in rows if r["row_id"] == "38")
    fp8_a100 = dict(base, row_id="903", precision="FP8 (Transformer Engine)")
    tf32 = dict(base, row_id="904", precision="TF32")
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([fp8_a100, tf32])
    df = validate(path).set_index("row_id")
    assert df.loc[903, "status"] == "skipped" and "precision" in df.loc[903, "note"]
    assert df.loc[904, "status"] != "skipped"
    assert df.loc[904, "step_time_pred_s"] > validate(SRC).set_index("row_id").loc[38, "step_time_pred_s"]


def test_tp_comm_overlap_runtime_implies_sequence_parallel_where_the_row_is_silent():
    from planner.row_config import row_config
    row = {"row_id": 1, "model": "GPT-7B", "n_layers": 32, "hidden_size": 4096, "n_heads": 32,
           "vocab_size": 50304, "seq_len": 2048, "gpu_type": "H100 SXM", "num_gpus": 16, "tp": 2, "pp": 1,
           "dp": 8, "micro_batch": 1, "global_batch": 64, "activation_recompute": "none",
           "precision": "bf16", "framework": "Megatron-Core r0.8.0"}
    cfg = row_config(row)
    assert cfg.runtime == "megatron-core" and cfg.parallel.sequence_parallel
    assert "--tp-comm-overlap" in cfg.reason
    cfg = row_config({**row, "sequence_parallel": "no"})  # stated: kept, so nothing overlaps
    assert not cfg.parallel.sequence_parallel


def test_a_row_on_nodes_with_their_own_network_is_priced_on_that_network():
    """BLOOM's Jean Zay nodes (4x 100 Gb/s Omni-Path per 8 A100) are the A100 profile with NCCL's
    measured bus bandwidth there (5.07 GB/s over 2 channels: 2.53 GB/s per flow, efficiency 1),
    stated on the row; a DGX row keeps the profile's 25 GB/s."""
    from planner.row_config import JEAN_ZAY_BUSBW_GB_S, row_cluster, row_config
    assert JEAN_ZAY_BUSBW_GB_S == pytest.approx(5.068, abs=1e-3)  # = the file's busbw, 40.543 Gbps
    with SRC.open() as f:
        rows = {r["row_id"]: r for r in csv.DictReader(f)}
    bloom = row_config(rows["162"])
    assert bloom.network.gb_s_per_gpu == pytest.approx(2.534, abs=1e-3)
    assert "Omni-Path" in bloom.reason and "measured" in bloom.reason
    link = row_cluster(bloom, {}).groups[0].node.inter_node
    assert link.bandwidth_bytes_per_s == pytest.approx(2.534e9, rel=1e-3)
    assert link.effective_bandwidth_bytes_per_s == pytest.approx(link.bandwidth_bytes_per_s)
    dgx = row_config(rows["11"])
    assert dgx.network is None
    assert row_cluster(dgx, {}).groups[0].node.inter_node.bandwidth_bytes_per_s == pytest.approx(25e9)


def test_a_moe_row_with_a_bare_vp_column_and_a_preset_spelled_its_own_way(tmp_path):
    """Row 232 (Megatron-Core MoE README, Mixtral 8x7B): the VP column's bare "8" is the virtual
    pipeline size, and "Mixtral 8x7B" finds the mixtral-8x7b preset; a DeepSeek-V3 row without a
    preset's name in the dataset's own list finds deepseek-v3 (MLA, dense leading blocks)."""
    with SRC.open() as f:
        rows = list(csv.DictReader(f))
    mixtral = next(r for r in rows if r["row_id"] == "232")
    deepseek = dict(mixtral, row_id="903", model="DeepSeek-V3", n_layers="61", hidden_size="7168", n_heads="128",
                    n_kv_heads="128", ffn_hidden_size="18432", vocab_size="129280", n_experts="256", top_k="8",
                    num_gpus="256", tp="1", pp="8", dp="32", ep="32", vpp_interleave="", global_batch="256",
                    activation_recompute="full")
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([mixtral, deepseek])
    df = validate(path).set_index("row_id")
    assert df.loc[232, "preset"] == "mixtral-8x7b" and "vpp8" in df.loc[232, "config"]
    assert df.loc[903, "preset"] == "deepseek-v3" and df.loc[903, "predicted"] > 0


def test_an_ep_above_dp_row_is_read_with_the_experts_whole_below_tp():
    """Row 232 (Mixtral 8x7B on 64 H100) rewritten as tp2 pp4 dp8 ep16 would not fit 8 experts, and
    as tp2 pp4 dp4 ep8: ep above dp fits only with the experts whole below tp, which the row is
    priced with and says so; ep that fits neither way is skipped with the reason."""
    from planner.row_config import row_config
    with SRC.open() as f:
        rows = {r["row_id"]: r for r in csv.DictReader(f)}
    folded = dict(rows["232"], tp="2", pp="4", dp="4", num_gpus="32", ep="8", sequence_parallel="yes")
    mixtral = row_config(folded)
    assert mixtral.status == "assumed" and mixtral.parallel.etp == 1 and mixtral.parallel.ep == 8
    assert "experts whole below tp" in mixtral.reason
    assert row_config(dict(folded, dp="2", num_gpus="16")).status == "skipped"  # 8 divides neither dp 2 nor dp*tp 4


def test_a_rows_stated_gradient_dtype_replaces_the_runtimes():
    """NeMo 1 configs sync gradients in bf16 (``grad_sync_dtype: bf16``), Megatron-Core with
    --bf16 in fp32: the row's ``grad_reduce_dtype`` sets the bytes reduced and held; a value
    that is not a dtype skips the row with the reason."""
    import dataclasses

    from planner.cost.runtime import get_runtime
    from planner.row_config import row_config
    with SRC.open() as f:
        rows = {r["row_id"]: r for r in csv.DictReader(f)}
    nemo = row_config(rows["221"])
    assert nemo.main_grad_bytes == 2.0 and "reduced in bf16" in nemo.reason
    assert row_config(rows["27"]).main_grad_bytes is None  # Megatron-Core README: the runtime's fp32
    core = get_runtime("megatron-core")
    assert core.grad_bytes("bf16") == 4.0 and core.grad_bytes("fp8") == 4.0 and core.grad_bytes("fp16") == 2.0
    assert dataclasses.replace(core, main_grad_bytes=2.0).grad_bytes("bf16") == 2.0
    assert core.accumulated_grad_bytes(nemo.parallel) == 4.0
    assert get_runtime("default").accumulated_grad_bytes(nemo.parallel) is None
    bad = row_config({**rows["221"], "grad_reduce_dtype": "int8"})
    assert bad.status == "skipped" and "grad_reduce_dtype" in bad.reason


def test_the_stated_gradient_dtype_is_what_the_step_reduces():
    """The same dgxc row with its bf16 gradients priced as stated and as fp32: the data-parallel
    term is larger with fp32, nothing else moves."""
    import dataclasses

    from planner.cost.runtime import get_runtime
    from planner.cost.step import predict
    from planner.row_config import row_cluster, row_config
    with SRC.open() as f:
        row = next(r for r in csv.DictReader(f) if r["row_id"] == "223")
    cfg = row_config(row)
    core = get_runtime(cfg.runtime)
    half = predict(cfg.model, row_cluster(cfg, {}), cfg.parallel, dataclasses.replace(core, main_grad_bytes=2.0))
    full = predict(cfg.model, row_cluster(cfg, {}), cfg.parallel, core)
    assert full.time.dp_s > half.time.dp_s
    assert full.time.compute_s == pytest.approx(half.time.compute_s)
    assert full.memory.grads_bytes == pytest.approx(2 * half.memory.grads_bytes)


def test_gpu_types_map_to_their_own_profiles():
    from planner.row_config import profile_for_gpu
    assert profile_for_gpu("GH200 96GB (Alps)") == "gh200-96gb-quad"
    assert profile_for_gpu("H200 SXM 141GB") == "dgx-h200-141gb"
    assert profile_for_gpu("B200 (DGX B200)") == "dgx-b200-192gb"
    assert profile_for_gpu("A100 SXM4 40GB") == "dgx-a100-40gb"
    assert profile_for_gpu("TPU v5e") is None
