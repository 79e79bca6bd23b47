"""Sliding-window attention: the share of query-key pairs a block computes, what the fused
kernels are charged for, the configs that state a window, the export, the executor's refusal."""
import dataclasses
import json
from pathlib import Path

import pytest

from planner.catalog import load_model
from planner.cost.runtime import get_runtime
from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.executor_rules import unsupported
from planner.export import megatron_args
from planner.hf_config import read_hf_config, spec_from_hf_config
from planner.plan import ParallelConfig, Plan

HF = Path(__file__).parent / "fixtures" / "hf"
MISTRAL = load_model("mistral-7b", seq_len=32768)


def test_pairs_a_window_keeps():
    full = dataclasses.replace(MISTRAL, sliding_window=0)
    assert full.causal_pairs_fraction(8192) == 0.5
    assert MISTRAL.causal_pairs_fraction(4096) == 0.5  # the window covers the sequence
    # w = s/4: sum_i min(i, w) ~ s w - w^2/2 = (1/4 - 1/32) s^2
    assert MISTRAL.causal_pairs_fraction(16384) == pytest.approx(0.25 - 1 / 32)
    alternating = dataclasses.replace(MISTRAL, global_attention_every=2)
    assert alternating.causal_pairs_fraction(16384) == pytest.approx(((0.25 - 1 / 32) + 0.5) / 2)
    with pytest.raises(InputError, match="global_attention_every"):
        dataclasses.replace(full, global_attention_every=2)


def test_the_fused_kernel_is_charged_for_the_windowed_pairs_only():
    """Mistral at 32k tokens on H100 (cuDNN tables): a 4096 window computes ~23% of the causal
    pairs' work, so the attention core (and the step) is shorter; the model FLOPs (MFU
    convention: the full s x s product) are the same."""
    P = ParallelConfig(tp=4, cp=1, dp=2, global_batch=8, seq_len=32768, sequence_parallel=True)
    cluster = cluster_for("dgx-h100-80gb", 1)
    rt = get_runtime("megatron-core")
    windowed = predict(MISTRAL, cluster, P, rt, timeline=False)
    full = predict(dataclasses.replace(MISTRAL, sliding_window=0), cluster, P, rt, timeline=False)
    assert windowed.step_time_s < 0.8 * full.step_time_s
    assert windowed.model_tflops_per_gpu * windowed.step_time_s == pytest.approx(
        full.model_tflops_per_gpu * full.step_time_s)


def test_configs_exports_and_the_executor():
    assert read_hf_config(HF / "Mistral-7B-v0.1" / "config.json").sliding_window == 4096
    assert read_hf_config(HF / "Phi-3-mini-4k-instruct" / "config.json").sliding_window == 2047
    assert read_hf_config(HF / "Mixtral-8x7B-v0.1" / "config.json").sliding_window == 0  # null
    qwen = json.loads((HF / "Qwen2-7B" / "config.json").read_text())
    assert spec_from_hf_config(qwen).sliding_window == 0  # stated, but use_sliding_window is false
    with pytest.raises(InputError, match="config.use_sliding_window"):
        spec_from_hf_config(dict(qwen, use_sliding_window=True))
    P = ParallelConfig(tp=2, dp=4, global_batch=32, seq_len=8192, sequence_parallel=True)
    args, _ = megatron_args(Plan(dataclasses.replace(MISTRAL, global_attention_every=2), "dgx-h100-80gb", 1, 8, P))
    assert args[args.index("--window-size") + 1] == "(4095,0)"
    assert args[args.index("--window-attn-skip-freq") + 1] == "2"
    assert "sliding window" in unsupported(P, MISTRAL)


def test_gemma2_alternates_windowed_and_global_blocks_with_four_norms():
    from planner.export import megatron_args

    gemma = read_hf_config(HF / "gemma-2-9b" / "config.json")
    assert (gemma.sliding_window, gemma.global_attention_every, gemma.norms_per_block) == (4096, 2, 4)
    assert gemma.layer_params() - dataclasses.replace(gemma, norms_per_block=2).layer_params() == 2 * 3584
    assert gemma.causal_pairs_fraction(8192) == pytest.approx(((8192 * 4096 - 4096 ** 2 / 2) / 8192 ** 2 + 0.5) / 2)
    P = ParallelConfig(tp=2, dp=4, global_batch=32, seq_len=8192, sequence_parallel=True)
    args, notes = megatron_args(Plan(gemma, "dgx-h100-80gb", 1, 8, P))
    assert args[args.index("--window-attn-skip-freq") + 1] == "2" and any("4 norms per block" in n for n in notes)
    assert "2 norms" in unsupported(P, gemma)
