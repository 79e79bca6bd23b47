"""Model presets by name, and the map from ``benchmarks/published_runs.csv`` model names to them.

Architectures are the published ones; each block cites its source. Conventions of the families:

- Megatron-LM GPTs (Narayanan et al., SC'21, Table 1; Korthikanti et al., 2022; Shoeybi et al.,
  2019): learned absolute positions with --max-position-embeddings = --seq-length, biases,
  LayerNorm, GELU MLP of 4h, embeddings shared with the output layer
  (share-embeddings-and-output-weights, Megatron's default), dropout 0.1, vocabulary 51200
  (GPT-2 BPE padded). Parameter count = 12*l*h^2*(1 + 13/(12h) + (V+s)/(12*l*h)) (SC'21, Sec. 5.1)
  plus the final LayerNorm.
- Megatron-Core H100 GPTs (NVIDIA/Megatron-LM README, r0.8.0 scaling table): vocabulary 131072,
  sequence 4096, GELU MLP of 4h, biases, LayerNorm. The README's sizes (1.7B ... 462B) match only
  with an untied output layer (7.1B = 6.58B tied + 0.54B head), so they are untied. Positions are
  not stated; RoPE (no table) fits the README's rounding (1.745B -> "1.7B", where a learned
  4096-row table gives 1.754B) and either choice moves no count by more than 0.5%.
- MPT (llm-foundry ``mpt-*.yaml`` benchmark configs, as in published_runs.csv): vocabulary 50368,
  expansion ratio 4, no biases (``no_bias``), ALiBi plus the learned ``wpe`` table that MPTConfig's
  default ``learned_pos_emb: true`` creates, tied (SharedEmbedding), dropout 0.
"""
from __future__ import annotations

from planner.model import ModelSpec

_MEGATRON_V = 51200
_MCORE_V = 131072


def _megatron(name: str, layers: int, hidden: int, heads: int, seq: int = 2048,
              vocab: int = _MEGATRON_V) -> ModelSpec:
    return ModelSpec(name=name, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=heads,
                     ffn_hidden_size=4 * hidden, vocab_size=vocab, seq_len=seq, mlp="gelu",
                     norm="layernorm", position="learned", tied_embeddings=True, bias=True,
                     dropout=0.1, activation="gelu")


def _mcore(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(name=name, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=heads,
                     ffn_hidden_size=4 * hidden, vocab_size=_MCORE_V, seq_len=4096, mlp="gelu",
                     norm="layernorm", position="rope", tied_embeddings=False, bias=True,
                     dropout=0.1, activation="gelu")


def _mpt(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(name=name, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=heads,
                     ffn_hidden_size=4 * hidden, vocab_size=50368, seq_len=2048, mlp="gelu",
                     norm="layernorm", position="alibi", position_table=True, max_positions=2048,
                     tied_embeddings=True, bias=False, norm_bias=False, dropout=0.0,
                     activation="gelu")


def _llama3(name: str, layers: int, hidden: int, heads: int, ffn: int) -> ModelSpec:
    # Llama 3 (Dubey et al., 2024, Table 3; meta-llama/Meta-Llama-3-8B config.json): 8 KV heads,
    # vocabulary 128256, untied head, RMSNorm, SwiGLU, RoPE, pre-training sequence 8192.
    return ModelSpec(name=name, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=8,
                     ffn_hidden_size=ffn, vocab_size=128256, seq_len=8192, mlp="swiglu",
                     norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
                     activation="silu", rope_theta=500000.0, norm_eps=1e-5)


_SPECS: list[ModelSpec] = [
    # Narayanan et al. SC'21 Table 1 (1.7B ... 1T; heads, hidden, layers as published)
    _megatron("megatron-gpt-1.7b", 24, 2304, 24),
    _megatron("megatron-gpt-3.6b", 30, 3072, 32),
    _megatron("megatron-gpt-7.5b", 36, 4096, 32),
    _megatron("megatron-gpt-18b", 40, 6144, 48),
    _megatron("megatron-gpt-39b", 48, 8192, 64),
    _megatron("megatron-gpt-76b", 60, 10240, 80),
    _megatron("megatron-gpt-146b", 80, 12288, 96),
    _megatron("megatron-gpt-310b", 96, 16384, 128),
    _megatron("megatron-gpt-530b", 105, 20480, 128),
    _megatron("megatron-gpt-1t", 128, 25600, 160),
    # GPT-3 175B (Brown et al., 2020) as Megatron trains it (SC'21 Sec. 5; Korthikanti Table 3)
    _megatron("gpt3-175b", 96, 12288, 96),
    # Korthikanti et al. 2022 Table 3: 22B (the 175B, 530B and 1T rows reuse the presets above)
    _megatron("megatron-gpt-22b", 48, 6144, 64),
    # Shoeybi et al. 2019 (Megatron-LM, Table 2): GPT-2 1.2B and 8.3B, sequence 1024
    _megatron("megatron-gpt2-1.2b", 40, 1536, 16, seq=1024),
    _megatron("megatron-gpt2-8.3b", 72, 3072, 32, seq=1024),
    # Megatron-Core r0.8.0 README H100 weak-scaling table
    _mcore("mcore-gpt-1.7b", 24, 2048, 16),
    _mcore("mcore-gpt-7.1b", 30, 4096, 32),
    _mcore("mcore-gpt-16b", 32, 6144, 48),
    _mcore("mcore-gpt-32b", 48, 7168, 56),
    _mcore("mcore-gpt-70b", 84, 8192, 64),
    _mcore("mcore-gpt-119b", 92, 10240, 80),
    _mcore("mcore-gpt-177b", 96, 12288, 96),
    _mcore("mcore-gpt-314b", 96, 16384, 128),
    _mcore("mcore-gpt-462b", 112, 18432, 144),
    # MosaicML llm-foundry benchmark table (A100 80GB), architectures from mpt-*.yaml
    _mpt("mpt-7b", 32, 4096, 32),
    _mpt("mpt-13b", 40, 5120, 40),
    _mpt("mpt-30b", 48, 7168, 56),
    _mpt("mpt-70b", 80, 8192, 64),
    # BLOOM-176B (BigScience tr11 README; bigscience/bloom config.json): 70 layers, h 14336,
    # 112 heads, ALiBi, LayerNorm after the embedding, biases, tied head, GELU 4h, dropout 0.
    # Vocabulary: the tokenizer has 250680 tokens (published_runs.csv); Megatron-DeepSpeed pads
    # it to a multiple of 128 x tp = 512, i.e. 250880, which is what the model holds (config.json
    # vocab_size 250880) and gives the published 176,247,271,424 parameters.
    ModelSpec(name="bloom-176b", n_layers=70, hidden_size=14336, n_heads=112, n_kv_heads=112,
              ffn_hidden_size=4 * 14336, vocab_size=250880, seq_len=2048, mlp="gelu",
              norm="layernorm", position="alibi", tied_embeddings=True, bias=True,
              embed_norm=True, dropout=0.0, activation="gelu"),
    _llama3("llama3-8b", 32, 4096, 32, 14336),
    _llama3("llama3-70b", 80, 8192, 64, 28672),
    _llama3("llama3-405b", 126, 16384, 128, 53248),
    # facebook/opt-350m config.json: word_embed_proj_dim 512 (project_in/out), positions 2048 + 2,
    # no final LayerNorm (do_layer_norm_before false), ReLU, dropout 0.1, tied head.
    ModelSpec(name="opt-350m", n_layers=24, hidden_size=1024, n_heads=16, n_kv_heads=16,
              ffn_hidden_size=4096, vocab_size=50272, seq_len=2048, max_positions=2048,
              position_offset=2, embed_proj_dim=512, final_norm=False, mlp="gelu",
              norm="layernorm", position="learned", tied_embeddings=True, bias=True,
              dropout=0.1, activation="relu"),
    # mistralai/Mixtral-8x7B-v0.1 config.json (Jiang et al., 2024): 8 experts, top-2, 32k context.
    ModelSpec(name="mixtral-8x7b", n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8,
              ffn_hidden_size=14336, vocab_size=32000, seq_len=32768, mlp="swiglu",
              norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
              n_experts=8, top_k=2, activation="silu", rope_theta=1e6, norm_eps=1e-5),
    # mistralai/Mixtral-8x22B-v0.1 config.json: 56 layers, h 6144, 48 heads, 8 KV heads, 8 experts
    # of 16384, top-2, vocabulary 32768, 64k context (Mistral AI: 141B total, 39B active).
    ModelSpec(name="mixtral-8x22b", n_layers=56, hidden_size=6144, n_heads=48, n_kv_heads=8,
              ffn_hidden_size=16384, vocab_size=32768, seq_len=65536, mlp="swiglu",
              norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
              n_experts=8, top_k=2, activation="silu", rope_theta=1e6, norm_eps=1e-5),
    # deepseek-ai/DeepSeek-V3 config.json (tests/fixtures/hf/DeepSeek-V3; DeepSeek-V3 report,
    # arXiv:2412.19437, Sec. 4.2): 61 blocks, the first 3 dense (FFN 18432), then 256 routed experts
    # of 2048 top-8 plus one shared; MLA with q / kv latents 1536 / 512, heads of 128 + 64 rotary,
    # values 128; trained at 4096 tokens. 671B total, 37B activated (the MTP module excluded).
    ModelSpec(name="deepseek-v3", n_layers=61, hidden_size=7168, n_heads=128, n_kv_heads=128,
              ffn_hidden_size=18432, vocab_size=129280, seq_len=4096, mlp="swiglu", norm="rmsnorm",
              position="rope", tied_embeddings=False, bias=False, head_dim=128, kv_lora_rank=512,
              q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, n_experts=256, top_k=8,
              expert_ffn_hidden_size=2048, shared_expert_ffn_hidden_size=2048, shared_expert_gate=False,
              dense_layers=3, activation="silu", rope_theta=10000.0, norm_eps=1e-6),
    # deepseek-ai/DeepSeek-V2-Lite config.json (tests/fixtures/hf/DeepSeek-V2-Lite): 27 blocks, the
    # first dense (10944), 64 experts of 1408 top-6 plus 2 shared; MLA without a query latent.
    # 15.7B total, 2.4B activated (DeepSeek-V2 paper, arXiv:2405.04434, App. B).
    ModelSpec(name="deepseek-v2-lite", n_layers=27, hidden_size=2048, n_heads=16, n_kv_heads=16,
              ffn_hidden_size=10944, vocab_size=102400, seq_len=4096, mlp="swiglu", norm="rmsnorm",
              position="rope", tied_embeddings=False, bias=False, head_dim=128, kv_lora_rank=512,
              qk_rope_head_dim=64, v_head_dim=128, n_experts=64, top_k=6, expert_ffn_hidden_size=1408,
              shared_expert_ffn_hidden_size=2816, shared_expert_gate=False, dense_layers=1,
              activation="silu", rope_theta=10000.0, norm_eps=1e-6),
    # Qwen/Qwen3-30B-A3B config.json (tests/fixtures/hf/Qwen3-30B-A3B): 48 blocks of 128 experts of 768,
    # top-8, heads of 128 (not hidden / heads), RMSNorm on each query and key head; 30.5B, 3.3B active.
    ModelSpec(name="qwen3-30b-a3b", n_layers=48, hidden_size=2048, n_heads=32, n_kv_heads=4,
              ffn_hidden_size=6144, vocab_size=151936, seq_len=40960, mlp="swiglu", norm="rmsnorm",
              position="rope", tied_embeddings=False, bias=False, head_dim=128, qk_norm=True,
              n_experts=128, top_k=8, expert_ffn_hidden_size=768, activation="silu", rope_theta=1e6,
              norm_eps=1e-6),
    # Qwen/Qwen3-235B-A22B config.json: 94 blocks of 128 experts of 1536, top-8, 64 query / 4 KV heads
    # of 128; 235B total, 22B activated (Qwen3 technical report, arXiv:2505.09388, Table 2).
    ModelSpec(name="qwen3-235b-a22b", n_layers=94, hidden_size=4096, n_heads=64, n_kv_heads=4,
              ffn_hidden_size=12288, vocab_size=151936, seq_len=40960, mlp="swiglu", norm="rmsnorm",
              position="rope", tied_embeddings=False, bias=False, head_dim=128, qk_norm=True,
              n_experts=128, top_k=8, expert_ffn_hidden_size=1536, activation="silu", rope_theta=1e6,
              norm_eps=1e-6),
    # mistralai/Mistral-7B-v0.1 and Qwen/Qwen2-7B config.json (also in tests/fixtures/hf/)
    ModelSpec(name="mistral-7b", n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8,
              ffn_hidden_size=14336, vocab_size=32000, seq_len=32768, mlp="swiglu",
              norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
              activation="silu", rope_theta=10000.0, norm_eps=1e-5, sliding_window=4096),
    ModelSpec(name="qwen2-7b", n_layers=28, hidden_size=3584, n_heads=28, n_kv_heads=4,
              ffn_hidden_size=18944, vocab_size=152064, seq_len=131072, mlp="swiglu",
              norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
              qkv_bias_only=True, activation="silu", rope_theta=1e6, norm_eps=1e-6),
    # gpt2 (124M) config.json
    ModelSpec(name="gpt2", n_layers=12, hidden_size=768, n_heads=12, n_kv_heads=12,
              ffn_hidden_size=3072, vocab_size=50257, seq_len=1024, max_positions=1024,
              mlp="gelu", norm="layernorm", position="learned", tied_embeddings=True, bias=True,
              dropout=0.1, activation="gelu_new"),
    # Small CPU models for the local executor (seq 256; one step of a few sequences takes
    # ~0.1-0.5 s on one core at ~95 GFLOP/s fp32: 6 x 3.7M params x 1024 tokens = 23 GFLOP).
    # Dropout 0 so multi-rank runs can be compared with a single-process reference exactly.
    ModelSpec(name="tiny-gpt", n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=4,
              ffn_hidden_size=1024, vocab_size=2048, seq_len=256, mlp="gelu", norm="layernorm",
              position="learned", tied_embeddings=True, bias=True, dropout=0.0, activation="gelu"),
    # Llama layout: RMSNorm, SwiGLU of 768 (Llama's rule: 2/3 * 4h = 683 rounded up to a
    # multiple of 256), GQA 8 query / 2 KV heads of 32, RoPE, untied head, no biases.
    ModelSpec(name="tiny-llama", n_layers=4, hidden_size=256, n_heads=8, n_kv_heads=2,
              ffn_hidden_size=768, vocab_size=2048, seq_len=256, mlp="swiglu", norm="rmsnorm",
              position="rope", tied_embeddings=False, bias=False, dropout=0.0, activation="silu"),
]

PRESETS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
assert len(PRESETS) == len(_SPECS), "duplicate preset name"

# ``model`` column of benchmarks/published_runs.csv -> preset. Rows without architecture numbers
# (the Megatron v1.0 GPT-2 scaling models 1.2B/2.0B/4.2B/8.7B) have no preset.
PUBLISHED_MODEL_PRESETS: dict[str, str] = {
    "GPT-1.7B (Megatron)": "megatron-gpt-1.7b",
    "GPT-3.6B (Megatron)": "megatron-gpt-3.6b",
    "GPT-7.5B (Megatron)": "megatron-gpt-7.5b",
    "GPT-18.4B (Megatron)": "megatron-gpt-18b",
    "GPT-39.1B (Megatron)": "megatron-gpt-39b",
    "GPT-76.1B (Megatron)": "megatron-gpt-76b",
    "GPT-145.6B (Megatron)": "megatron-gpt-146b",
    "GPT-310.1B (Megatron)": "megatron-gpt-310b",
    "GPT-529.6B (Megatron)": "megatron-gpt-530b",
    "GPT-1008.0B (Megatron)": "megatron-gpt-1t",
    "GPT-3 175B": "gpt3-175b",
    "GPT-530B (Megatron)": "megatron-gpt-530b",
    "GPT-1.7B (Megatron-Core)": "mcore-gpt-1.7b",
    "GPT-7.1B (Megatron-Core)": "mcore-gpt-7.1b",
    "GPT-16B (Megatron-Core)": "mcore-gpt-16b",
    "GPT-32B (Megatron-Core)": "mcore-gpt-32b",
    "GPT-70B (Megatron-Core)": "mcore-gpt-70b",
    "GPT-119B (Megatron-Core)": "mcore-gpt-119b",
    "GPT-177B (Megatron-Core)": "mcore-gpt-177b",
    "GPT-314B (Megatron-Core)": "mcore-gpt-314b",
    "GPT-462B (Megatron-Core)": "mcore-gpt-462b",
    "GPT-3 177B (131072 vocab)": "mcore-gpt-177b",
    "GPT-22B (Megatron)": "megatron-gpt-22b",
    "GPT-175B (Megatron)": "gpt3-175b",
    "GPT-1T (Megatron)": "megatron-gpt-1t",
    "Llama 3.1 8B": "llama3-8b",
    "Llama 3.1 70B": "llama3-70b",
    "Llama 3.1 405B": "llama3-405b",
    "MPT-7b": "mpt-7b",
    "MPT-13b": "mpt-13b",
    "MPT-30b": "mpt-30b",
    "MPT-70b": "mpt-70b",
    "BLOOM-176B": "bloom-176b",
    "GPT-2 1.2B (Megatron)": "megatron-gpt2-1.2b",
    "GPT-2 8.3B (Megatron)": "megatron-gpt2-8.3b",
}
