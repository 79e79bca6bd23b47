"""Hugging Face ``config.json`` -> :class:`ModelSpec`, without downloading anything.

Supported ``model_type`` values: gpt2, llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe,
phi3, gemma2, gemma3_text, deepseek_v2, deepseek_v3, opt, gpt_neox, mpt, falcon; a
composite config (llava-style, Gemma 3's or Llama 3.2 Vision's mllama: a vision model plus a
language model) is read through its ``text_config``. Each family's keys and quirks follow its ``transformers`` configuration and
modeling code:

- gpt2: ``n_embd``/``n_layer``/``n_head``, ``n_inner`` null -> 4*n_embd, ``n_positions`` learned
  positions, tied head, biases, LayerNorm, GELU (``gelu_new``).
- llama / mistral / mixtral / qwen2: RMSNorm, SwiGLU, RoPE, GQA via ``num_key_value_heads``,
  untied head unless ``tie_word_embeddings``; llama's ``attention_bias``/``mlp_bias``; qwen2 has
  Q/K/V biases but none on the output projection or MLP; mixtral's ``num_local_experts`` and
  ``num_experts_per_tok`` (router h x E without bias); qwen2_moe: ``num_experts`` of
  ``moe_intermediate_size``, top ``num_experts_per_tok``, a shared expert of
  ``shared_expert_intermediate_size`` with its sigmoid gate (h weights), every block MoE
  (``mlp_only_layers`` empty, ``decoder_sparse_step`` 1; otherwise refused); qwen3 / qwen3_moe:
  no biases, an RMSNorm on each query and key head (``q_norm``/``k_norm``, head_dim weights each),
  ``head_dim`` stated apart from hidden / heads, qwen3_moe's experts as qwen2_moe's without a
  shared expert; phi3: Llama's layout with fused QKV and gate-up projections (same counts);
  mistral / mixtral / phi3: ``sliding_window`` (every block; null = full attention); qwen's
  ``use_sliding_window`` is refused.
- gemma2 / gemma3_text: :mod:`planner.hf_gemma` (four norms per block, GeGLU, windowed blocks
  among global ones; Gemma 3's q/k head norms and 5:1 pattern).
- mllama_text_model: :mod:`planner.hf_mllama` (Llama with cross-attention blocks to the image
  encoder's states, sized from the composite config's ``vision_config``).
- falcon: :func:`planner.hf_families.falcon` (multi-query or grouped KV heads, one or two
  LayerNorms per parallel block, ALiBi or RoPE).
- deepseek_v2 / deepseek_v3: multi-head latent attention (``q_lora_rank`` null = one query
  projection, ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``; no
  biases), ``n_routed_experts`` of ``moe_intermediate_size`` top ``num_experts_per_tok``,
  ``n_shared_experts`` of the same width, the first ``first_k_dense_replace`` blocks dense of
  ``intermediate_size`` (``moe_layer_freq`` other than 1 is refused); transformers'
  ``DeepseekV3MoE``. Not counted: V3's per-expert routing bias (``e_score_correction_bias``,
  256 numbers per block) and the multi-token-prediction module (``num_nextn_predict_layers``),
  which the published 671B excludes too.
- opt: ``ffn_dim``; ``word_embed_proj_dim`` != hidden_size adds project_in/out (opt-350m);
  learned positions with an offset of 2; ``do_layer_norm_before`` false drops the final norm;
  ``enable_bias``; ReLU.
- gpt_neox: rotary (``rotary_pct`` of each head), untied ``embed_out``, ``use_parallel_residual``,
  biases (``attention_bias``), LayerNorm, GELU.
- mpt: ``d_model``/``n_heads``/``n_layers``, ``expansion_ratio``, ``max_seq_len``, ``no_bias``
  (no bias on linear layers or LayerNorms), ALiBi from ``attn_config.alibi``, and a learned
  ``wpe`` table when ``learned_pos_emb`` (true in mosaicml/mpt-7b, alongside ALiBi: llm-foundry
  builds ``wpe`` whenever it is set and adds it to the token embedding); RoPE from
  ``attn_config.rope``; GQA/MQA from ``attn_type``; tied head.

A top-level config must state the architecture keys (a missing one is an InputError naming it).
Inside a nested ``text_config`` transformers fills absent keys with the sub-config class's
defaults, and published llava configs rely on that (llava-1.5's text_config gives only
vocab_size and max_position_embeddings); those defaults are reproduced for llama, mistral,
gemma3_text and mllama_text_model text configs only, from transformers' ``LlamaConfig``,
``MistralConfig``, ``Gemma3TextConfig`` and ``MllamaTextConfig``.

The default sequence length is a training length: the one a config states
(``rope_scaling.original_max_position_embeddings``), else its longest context up to
:data:`planner.hf_families.DEFAULT_TRAINING_SEQ_LEN`, said in a note where that is shorter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from planner.errors import InputError
from planner.hf_families import ConfigReader, deepseek, falcon, gpt2, gpt_neox, llama_like, mpt, opt, seq_len_note
from planner.hf_gemma import GEMMA3_TEXT_DEFAULTS, gemma2, gemma3
from planner.hf_mllama import MLLAMA_TEXT_DEFAULTS, mllama_text
from planner.io import read_input_text
from planner.model import ModelSpec, parse_json_config

SUPPORTED_TYPES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
                   "gemma2", "gemma3_text", "deepseek_v2", "deepseek_v3", "opt", "gpt_neox", "mpt", "falcon",
                   "mllama_text_model")

# transformers' LlamaConfig / MistralConfig __init__ defaults (architecture keys only).
_TEXT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "tie_word_embeddings": False},
    "gemma3_text": GEMMA3_TEXT_DEFAULTS,
    "mllama_text_model": MLLAMA_TEXT_DEFAULTS,
}


_PARSERS: dict[str, Callable[[ConfigReader, str, str], ModelSpec]] = {
    "gpt2": gpt2, "llama": llama_like, "mistral": llama_like, "mixtral": llama_like,
    "qwen2": llama_like, "qwen2_moe": llama_like, "qwen3": llama_like, "qwen3_moe": llama_like,
    "phi3": llama_like, "gemma2": gemma2, "gemma3_text": gemma3, "deepseek_v2": deepseek, "deepseek_v3": deepseek,
    "opt": opt, "gpt_neox": gpt_neox, "mpt": mpt, "falcon": falcon,
}

_LENGTH_KEY = {"gpt2": "n_positions", "mpt": "max_seq_len"}
"""The key holding a family's longest context (default: ``max_position_embeddings``)."""


def spec_from_hf_config(data: dict[str, Any], name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a parsed config.json mapping (nested ``text_config`` allowed)."""
    return spec_and_note(data, name)[0]


def spec_and_note(data: dict[str, Any], name: str | None = None) -> tuple[ModelSpec, str]:
    """:func:`spec_from_hf_config` and the line stating a default training length the config
    does not give ("" where it does: :func:`planner.hf_families.seq_len_note`)."""
    if not isinstance(data, dict):
        raise InputError("config", f"must be a JSON object, got {type(data).__name__}")
    where, cfg_data, defaults = "config", data, None
    top_type = data.get("model_type")
    if "text_config" in data and data["text_config"] is not None:
        text = data["text_config"]
        if not isinstance(text, dict):
            raise InputError("config.text_config", f"must be a mapping, got {text!r}")
        where, cfg_data = "config.text_config", text
        model_type = text.get("model_type")
        if model_type is None:
            raise InputError("config.text_config.model_type",
                             f"missing (the top-level model_type is {top_type!r})")
        defaults = _TEXT_CONFIG_DEFAULTS.get(model_type)
    else:
        model_type = top_type
        if model_type is None:
            raise InputError("config.model_type", f"missing (supported: {', '.join(SUPPORTED_TYPES)})")
    if model_type not in SUPPORTED_TYPES:
        raise InputError(f"{where}.model_type",
                         f"unsupported model type {model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    label = name or data.get("_name_or_path") or top_type or model_type
    cfg = ConfigReader(cfg_data, where, defaults)
    try:
        if model_type == "mllama_text_model":  # its cross-attention length is the vision encoder's
            spec = mllama_text(cfg, str(label), data.get("vision_config"))
        else:
            spec = _PARSERS[model_type](cfg, str(label), model_type)
    except InputError as err:
        if err.field.startswith("config"):
            raise
        # a ModelSpec invariant (e.g. heads not dividing hidden): say it came from this config
        raise InputError(f"{where}:{err.field}", err.reason) from None
    return spec, seq_len_note(cfg, _LENGTH_KEY.get(model_type, "max_position_embeddings"), spec.seq_len)


def read_hf_config(path: str | Path, notes: list[str] | None = None) -> ModelSpec:
    """Read ``path`` (a config.json) into a :class:`ModelSpec`; the name defaults to the
    config's ``_name_or_path``, else its directory's name. ``notes`` gets the line stating a
    default training length the config does not give."""
    path = Path(path)
    data = parse_json_config(read_input_text(path, "model"), str(path))
    name = data.get("_name_or_path") if isinstance(data.get("_name_or_path"), str) else None
    spec, note = spec_and_note(data, name or path.parent.name or path.stem)
    if note and notes is not None:
        notes.append(note)
    return spec
