import networkx as nx
import pytest

from planner.graph import (block_activation_bytes, chain_nodes, encoder_decoder_graph, layer_graph,
                           vision_decoder_graph)
from planner.model import ModelSpec
from planner.plan import ParallelConfig

# A GPT as Korthikanti et al. 2022 and Narayanan et al. 2021 write it: MHA, GELU, f = 4h, dropout.
GPT = ModelSpec("gpt", n_layers=4, hidden_size=1024, n_heads=16, n_kv_heads=16, ffn_hidden_size=4096,
                vocab_size=51200, seq_len=2048, dropout=0.1)
LLAMA = ModelSpec("llama-ish", n_layers=4, hidden_size=1024, n_heads=16, n_kv_heads=4, ffn_hidden_size=2816,
                  vocab_size=32000, seq_len=2048, mlp="swiglu", norm="rmsnorm", position="rope",
                  tied_embeddings=False, bias=False)
S, B, H, A = 2048, 2, 1024, 16


def par(**kw):
    kw.setdefault("global_batch", 64)
    return ParallelConfig(seq_len=S, micro_batch=B, **kw)


@pytest.mark.parametrize("kw, expected", [
    (dict(), S * B * H * (34 + 5 * A * S / H)),
    (dict(tp=4), S * B * H * (10 + 24 / 4 + 5 * A * S / (H * 4))),
    (dict(tp=4, sequence_parallel=True), S * B * H / 4 * (34 + 5 * A * S / H)),
    (dict(tp=4, sequence_parallel=True, recompute="selective"), S * B * H / 4 * 34),
    (dict(tp=4, recompute="selective"), S * B * H * (10 + 24 / 4)),
    (dict(recompute="full"), 2 * S * B * H),
    (dict(tp=4, sequence_parallel=True, recompute="full"), 2 * S * B * H / 4),
])
def test_block_activations_match_korthikanti_table2(kw, expected):
    assert block_activation_bytes(GPT, par(**kw)) == pytest.approx(expected)


def test_no_dropout_drops_the_masks():
    nodrop = ModelSpec(**{**GPT.to_dict(), "dropout": 0.0})
    assert block_activation_bytes(nodrop, par()) == pytest.approx(S * B * H * (32 + 2 * A * S / H))


def test_context_parallel_splits_queries():
    full = block_activation_bytes(GPT, par(recompute="selective"))
    assert block_activation_bytes(GPT, par(cp=2, recompute="selective")) == pytest.approx(full / 2)


def test_chain_names_flops_and_edges():
    g = layer_graph(GPT, par(tp=2, pp=2))
    assert list(nx.topological_sort(g)) == ["embed", "layers.0", "layers.1", "layers.2", "layers.3",
                                            "final_norm", "lm_head"]
    assert nx.is_directed_acyclic_graph(g) and g.graph["chain"]
    # Narayanan et al. SC'21: forward 24·b·s·h² + 4·b·s²·h per layer (biases excluded), / tp
    layer = g.nodes["layers.0"]
    assert layer["flops"] == pytest.approx((24 * B * S * H * H + 4 * B * S * S * H) / 2)
    assert g.nodes["lm_head"]["flops"] == pytest.approx(2 * B * S * H * GPT.vocab_size / 2)
    assert g.nodes["embed"]["flops"] == 0
    assert layer["time_s"] == layer["flops"]  # flops-proportional default
    assert g.edges["layers.0", "layers.1"]["bytes"] == S * B * H * 2
    assert layer["weight_bytes"] == 2 * layer["params"]
    # tied embeddings: the last stage holds a copy of the word embedding when pp > 1
    assert g.nodes["lm_head"]["params"] == GPT.vocab_size * H / 2
    assert layer_graph(GPT, par(tp=2)).nodes["lm_head"]["params"] == 0
    untied = layer_graph(LLAMA, par())
    assert untied.nodes["lm_head"]["params"] == LLAMA.vocab_size * H
    assert chain_nodes(g) == ("embed", [f"layers.{i}" for i in range(4)], ["final_norm", "lm_head"])


def test_params_add_up_without_tp():
    for model in (GPT, LLAMA):
        g = layer_graph(model, par(pp=2))
        total = sum(d["params"] for _, d in g.nodes(data=True))
        copy = model.vocab_size * model.hidden_size if model.tied_embeddings else 0
        assert total == model.total_params() + copy


def test_sequence_parallel_and_cp_shrink_edges():
    base = layer_graph(GPT, par(tp=4)).edges["layers.0", "layers.1"]["bytes"]
    assert layer_graph(GPT, par(tp=4, sequence_parallel=True)).edges["layers.0", "layers.1"]["bytes"] == base / 4
    assert layer_graph(GPT, par(cp=2)).edges["layers.0", "layers.1"]["bytes"] == base / 2


def test_cost_fn_sets_times():
    calls = []

    def cost(name, attrs):
        calls.append(name)
        return 1e-3 if attrs["kind"] == "layer" else 5e-4

    g = layer_graph(GPT, par(), cost_fn=cost)
    assert len(calls) == g.number_of_nodes()
    assert g.nodes["layers.2"]["time_s"] == 1e-3 and g.nodes["embed"]["time_s"] == 5e-4
    assert layer_graph(GPT, par(), flops_per_s=1e12).nodes["layers.0"]["time_s"] == pytest.approx(
        g.nodes["layers.0"]["flops"] / 1e12)


def test_encoder_decoder_is_a_dag_with_fan_out():
    enc = ModelSpec("enc", n_layers=3, hidden_size=512, n_heads=8, n_kv_heads=8, ffn_hidden_size=2048,
                    vocab_size=32128, seq_len=512, position="none")
    g = encoder_decoder_graph(enc, enc, par(), encoder_seq_len=512)
    assert nx.is_directed_acyclic_graph(g) and not g.graph["chain"]
    assert g.out_degree("encoder.final_norm") == 3  # feeds every decoder layer's cross-attention
    assert all(g.in_degree(f"decoder.layers.{i}") == 2 for i in range(3))
    assert "encoder.lm_head" not in g and "decoder.lm_head" in g
    # cross-attention adds FLOPs and parameters to decoder layers
    assert g.nodes["decoder.layers.0"]["flops"] > g.nodes["encoder.layers.0"]["flops"]
    assert g.nodes["decoder.layers.0"]["params"] > g.nodes["encoder.layers.0"]["params"]


def test_vision_decoder_merges_two_sources():
    vit = ModelSpec("vit", n_layers=2, hidden_size=768, n_heads=12, n_kv_heads=12, ffn_hidden_size=3072,
                    vocab_size=588, seq_len=577)
    g = vision_decoder_graph(vit, LLAMA, par(), image_tokens=576)
    assert nx.is_directed_acyclic_graph(g)
    assert sorted(g.predecessors("layers.0")) == ["embed", "projector"]
    assert [n for n in g if g.in_degree(n) == 0] == ["vision.patch_embed", "embed"]
    assert g.nodes["vision.patch_embed"]["flops"] == pytest.approx(2 * 576 * B * 588 * 768)
