"""DeepSeek-V2/V3: multi-head latent attention, shared experts without a gate and dense leading
blocks, read from their config.json, counted, priced, exported and refused by the executor."""
import dataclasses
import json
from pathlib import Path

import pytest

from planner.catalog import load_model, preset_for_published_row
from planner.cost.compute import block_gemm_shapes
from planner.cost.flops import layer_forward_flops
from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.executor_rules import unsupported
from planner.export import megatron_args
from planner.hf_config import read_hf_config, spec_from_hf_config
from planner.plan import ParallelConfig, Plan

HF = Path(__file__).parent / "fixtures" / "hf"
V3 = read_hf_config(HF / "DeepSeek-V3" / "config.json")


def test_published_parameter_counts():
    """DeepSeek-V3 report: 671B total, 37B activated; DeepSeek-V2-Lite: 15.7B and 2.4B (the
    activated counts leave out the token embedding, a lookup)."""
    lite = read_hf_config(HF / "DeepSeek-V2-Lite" / "config.json")
    assert V3.total_params() == pytest.approx(671e9, rel=1e-3)
    assert V3.active_params() - V3.embedding_params() == pytest.approx(37e9, rel=0.02)
    assert lite.total_params() == pytest.approx(15.7e9, rel=1e-3)
    assert lite.active_params() - lite.embedding_params() == pytest.approx(2.4e9, rel=0.03)
    # one MLA block of V3 by hand: q down 7168x1536, q up 1536x128*(128+64), kv down 7168x(512+64),
    # kv up 512x128*(128+128), output 128*128x7168, and the two latents' RMSNorms
    assert V3.attention_params() == (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256
                                     + 128 * 128 * 7168 + 1536 + 512)
    assert dataclasses.replace(V3, name="deepseek-v3") == load_model("deepseek-v3")
    assert preset_for_published_row("DeepSeek-V3") == "deepseek-v3"


def test_latent_attention_flops_and_gemms():
    T, s, h = 4096.0, 4096, 7168
    f = layer_forward_flops(V3, T, s)
    assert f.core == pytest.approx(2 * T * s * 128 * (192 + 128))  # Q K^T over 192 wide heads, A V over 128
    assert f.qkv == pytest.approx(2 * T * (h * 1536 + 1536 * 128 * 192 + h * 576 + 512 * 128 * 256))
    assert f.proj == pytest.approx(2 * T * 128 * 128 * h)
    gemms = block_gemm_shapes(V3, T, tp=2, ep=8)
    # the down projections are whole on every tp rank (Megatron-Core MLA), the others split
    assert gemms[:5] == [(T, 1536, h), (T, 128 * 192 / 2, 1536), (T, 576, h), (T, 128 * 256 / 2, 512),
                         (T, h, 128 * 128 / 2)]


def test_megatron_export_and_executor_refusal():
    P = ParallelConfig(tp=1, pp=16, dp=128, ep=64, global_batch=15360, seq_len=4096, sharding="zero1")
    args, _ = megatron_args(Plan(V3, "dgx-h100-80gb", 256, 8, P))

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert "--multi-latent-attention" in args and "--kv-channels" not in args
    assert (value("--q-lora-rank"), value("--kv-lora-rank"), value("--qk-head-dim"), value("--qk-pos-emb-head-dim"),
            value("--v-head-dim")) == ("1536", "512", "128", "64", "128")
    assert value("--moe-layer-freq") == "([0]*3+[1]*58)"
    assert value("--moe-shared-expert-intermediate-size") == "2048" and "--moe-shared-expert-gate" not in args
    assert "latent attention" in unsupported(P, dataclasses.replace(V3, shared_expert_ffn_hidden_size=0))


def test_deepseek_v3_on_2048_h100_is_predicted():
    P = ParallelConfig(tp=1, pp=16, dp=128, ep=64, micro_batch=1, global_batch=15360, seq_len=4096,
                       sharding="zero1", recompute="full")
    pred = predict(V3, cluster_for("dgx-h100-80gb", 256), P, timeline=False)
    assert pred.time.ep_s > 0 and 0 < pred.mfu < 0.6
    assert pred.per_stage[0].layers == 4 and pred.per_stage[-1].layers == 3  # 61 blocks over 16 stages


def test_bad_latent_attention_is_one_line():
    with pytest.raises(InputError, match="q_lora_rank.*kv_lora_rank"):
        dataclasses.replace(load_model("llama3-8b"), q_lora_rank=512)
    with pytest.raises(InputError, match="n_kv_heads"):
        dataclasses.replace(V3, n_kv_heads=8)
    data = json.loads((HF / "DeepSeek-V3" / "config.json").read_text())
    with pytest.raises(InputError, match="config.moe_layer_freq"):
        spec_from_hf_config(dict(data, moe_layer_freq=2))
    with pytest.raises(InputError, match="config.kv_lora_rank"):
        spec_from_hf_config({k: v for k, v in data.items() if k != "kv_lora_rank"})
