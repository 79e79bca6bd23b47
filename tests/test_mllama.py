"""Llama 3.2 Vision's language model (mllama): cross-attention blocks read from its config,
counted, priced and refused where a target cannot build them."""
import dataclasses
import json
from pathlib import Path

import pytest

from planner.catalog import load_model
from planner.cost.block import cp_comm_s
from planner.cost.comm import GroupShape
from planner.cost.compute import block_gemm_shapes
from planner.cost.flops import layer_forward_flops, step_flops
from planner.cost.runtime import get_runtime
from planner.cost.step import cluster_for, predict
from planner.errors import InputError
from planner.executor_rules import unsupported
from planner.export import export_plan
from planner.hf_config import spec_from_hf_config
from planner.plan import ParallelConfig, Plan
from planner.profile_yaml import load_profile

CONFIG = Path(__file__).parent / "fixtures" / "hf" / "Llama-3.2-11B-Vision" / "config.json"
CROSS = (3, 8, 13, 18, 23, 28, 33, 38)


def _model(seq_len=8192):
    return load_model(str(CONFIG), seq_len=seq_len)


def test_text_model_read_and_counted_as_transformers_does():
    """9,775,192,080 parameters: transformers 5.25.0's MllamaForCausalLM of this text config
    (tests/fixtures/hf/README.md); 8 cross-attention blocks attending to 4 tiles x (40^2 + 1)."""
    m = _model()
    assert m.total_params() == 9_775_192_080
    assert m.cross_attention_layers == CROSS and m.cross_attention_tokens == 4 * (40 * 40 + 1)
    assert (m.n_layers, m.hidden_size, m.n_kv_heads, m.vocab_size, m.embedding_extra_rows) == (40, 4096, 8, 128256, 8)
    assert m.name == "Llama-3.2-11B-Vision" and m.rope_theta == 500000.0 and m.seq_len == 8192
    assert m.alt_layers == 8 and m.block_kinds([10, 10, 10, 10]) == [(2, 8)] * 4
    assert m.block_kinds([4, 36]) == [(1, 3), (7, 29)]
    # a cross block adds q/k head norms and two gates to a self-attention block's parameters
    assert m.cross_block().layer_params() - m.layer_params() == 2 * 128 + 2
    # the plan file keeps the blocks (JSON lists back to a tuple)
    again = type(m).from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_absent_text_keys_take_transformers_defaults_and_bad_ones_are_one_line():
    data = json.loads(CONFIG.read_text())
    bare = dict(data, text_config={"model_type": "mllama_text_model"}, vision_config={})
    m = spec_from_hf_config(bare)
    assert m.cross_attention_layers == CROSS and m.cross_attention_tokens == 4 * (32 * 32 + 1)  # 448-px tiles
    with pytest.raises(InputError, match="cross_attention_layers"):
        spec_from_hf_config(dict(data, text_config=dict(data["text_config"], cross_attention_layers=[3, 50])))
    with pytest.raises(InputError, match="cross_attention_layers"):
        spec_from_hf_config(dict(data, text_config=dict(data["text_config"], cross_attention_layers="3")))
    with pytest.raises(InputError, match="patch_size"):
        spec_from_hf_config(dict(data, vision_config=dict(data["vision_config"], patch_size=600)))
    with pytest.raises(InputError, match="cross_attention_tokens"):
        dataclasses.replace(_model(), cross_attention_tokens=0)


def test_cross_block_projects_keys_from_the_encoder_and_attends_to_all_of_it():
    """Keys and values are projected from micro_batch x 6404 encoder states (not the sequence),
    the core is every query against every encoder state, and no context-parallel ring runs."""
    m = _model()
    cross, n = m.cross_block(), m.cross_attention_tokens
    q, kv, out = block_gemm_shapes(cross, 8192, 4, encoder_rows=2 * n)[:3]
    assert q == (8192, cross.q_dim / 4, 4096) and kv == (2 * n, (cross.kv_dim + cross.v_dim) / 4, 4096)
    assert out == (8192, 4096, cross.attn_out_dim / 4)
    f = layer_forward_flops(cross, 2 * 8192, 8192)
    assert f.core == pytest.approx(2 * 2 * 8192 * n * (cross.q_dim + cross.attn_out_dim))
    assert f.qkv == pytest.approx(2 * (2 * 8192 * 4096 * cross.q_dim + 2 * n * 4096 * (cross.kv_dim + cross.v_dim)))
    assert cross.causal_pairs_fraction(8192) == 1.0
    node = load_profile("dgx-h100-80gb")
    from planner.cost.compute import LayerTimes
    lt = LayerTimes(1.0, 1.0, 1.0, 0.0, 1e-3, 1e-3)
    g = GroupShape(2, 2, 1)
    kw = dict(tp=1, micro_batch=1, seq_len=8192, precision="bf16")
    assert cp_comm_s(cross, node, lt, g, **kw) == (0.0, 0.0) and cp_comm_s(m, node, lt, g, **kw) != (0.0, 0.0)
    # the step's model FLOPs count 32 self- and 8 cross-attention blocks
    self_only = dataclasses.replace(m, cross_attention_layers=(), cross_attention_tokens=0)
    flops, _ = step_flops(m, 1, 8192, "none")
    expect, _ = step_flops(self_only, 1, 8192, "none")
    per_self = layer_forward_flops(self_only, 8192, 8192).total
    per_cross = layer_forward_flops(cross, 8192, 8192).total
    assert flops == pytest.approx(expect + 3 * 8 * (per_cross - per_self))


def test_predict_and_plan_price_the_cross_blocks_where_they_lie():
    """A stage holding more cross-attention blocks is slower; the search plans the model."""
    from planner.search import search

    m = _model()
    cluster = cluster_for("dgx-h100-80gb", 2)
    rt = get_runtime("megatron-core")
    P = ParallelConfig(tp=4, pp=2, dp=2, global_batch=64, seq_len=8192, sequence_parallel=True, sharding="zero1",
                       schedule="1f1b")
    even = predict(m, cluster, P, rt)
    assert even.step_time_s > 0 and even.mfu > 0
    # stages of 12 and 28 layers: 2 and 6 of mllama's cross blocks, all 8 in the first with them in front
    front = dataclasses.replace(m, cross_attention_layers=tuple(range(8)))
    P_uneven = dataclasses.replace(P, stage_layers=(12, 28))
    spread, ahead = predict(m, cluster, P_uneven, rt).per_stage, predict(front, cluster, P_uneven, rt).per_stage
    assert ahead[0].time_s > spread[0].time_s and ahead[1].time_s < spread[1].time_s
    found = search(m, cluster, global_batch=64, top_k=3, runtime=rt)
    best = found.ranked[0]
    assert best.lower_bound_s <= best.step_time_s * (1 + 1e-9)  # the bounds stay below the priced plans
    assert best.step_time_s == pytest.approx(predict(m, cluster, best.parallel, rt).step_time_s)


def test_targets_that_build_no_cross_attention_refuse_it():
    m = _model()
    P = ParallelConfig(tp=4, pp=2, dp=2, global_batch=64, seq_len=8192, sequence_parallel=True, sharding="zero1",
                       schedule="1f1b")
    plan = Plan(m, "dgx-h100-80gb", 2, 8, P)
    for fmt, rule in (("megatron", "pretrain_gpt.py"), ("torchtitan", "torchtitan has no model"),
                      ("torchtitan-py", "torchtitan has no model"), ("torchrun", "cross-attention")):
        with pytest.raises(InputError, match=rule):
            export_plan(plan, fmt)
    assert "cross-attention" in unsupported(P, m)
    assert json.loads(export_plan(plan, "deepspeed"))["train_batch_size"] == 64


def test_search_with_cross_blocks_equals_brute_force():
    """The search's bounds hold with two kinds of block wherever the cross ones lie."""
    from planner.search import brute_force, search

    m = dataclasses.replace(_model(seq_len=2048), n_layers=6, cross_attention_layers=(1, 4))
    cluster = cluster_for("dgx-h100-80gb", 1, 8)
    rt = get_runtime("megatron-core")
    fixed = {"recompute": "none", "sharding": "zero1"}
    res = search(m, cluster, 16, fixed=fixed, top_k=3, refine=False, runtime=rt)
    brute = brute_force(m, cluster, 16, fixed=fixed, runtime=rt)
    assert [round(e.step_time_s, 9) for e in res.ranked] == [round(p.step_time_s, 9) for _, p in brute[:3]]
