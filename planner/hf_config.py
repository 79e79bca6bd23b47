"""Hugging Face ``config.json`` -> :class:`ModelSpec`, without downloading anything.

Supported ``model_type`` values: gpt2, llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe,
phi3, gemma2, deepseek_v2, deepseek_v3, opt, gpt_neox, mpt; a
composite config (llava-style: a vision model plus a language model) is read through its
``text_config``. Each family's keys and quirks follow its ``transformers`` configuration and
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
- gemma2: four RMSNorms per block (before and after attention and the MLP), GeGLU (three
  matrices, ``gelu_pytorch_tanh``), heads of ``head_dim``, the embedding tied to the head (Gemma2Config
  default), every second block attending within ``sliding_window`` (the others globally); the
  logit soft-capping and ``query_pre_attn_scalar`` change no parameter or FLOP.
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
vocab_size and max_position_embeddings); those defaults are reproduced for llama and mistral
text configs only, from transformers' ``LlamaConfig`` and ``MistralConfig``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from planner.errors import InputError
from planner.io import read_input_text
from planner.model import ModelSpec, parse_json_config

SUPPORTED_TYPES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
                   "gemma2", "deepseek_v2", "deepseek_v3", "opt", "gpt_neox", "mpt")

# transformers' LlamaConfig / MistralConfig __init__ defaults (architecture keys only).
_TEXT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "tie_word_embeddings": False},
}


class _Config:
    """Typed, field-naming access to one config mapping."""

    def __init__(self, data: dict[str, Any], where: str, defaults: dict[str, Any] | None = None):
        self.data = data
        self.where = where
        self.defaults = defaults or {}

    def _get(self, key: str) -> tuple[bool, Any]:
        if key in self.data:
            return True, self.data[key]
        if key in self.defaults:
            return True, self.defaults[key]
        return False, None

    def int(self, key: str, default: Any = ..., *, minimum: int = 1) -> Any:
        found, value = self._get(key)
        if not found:
            if default is ...:
                raise InputError(f"{self.where}.{key}", "missing")
            return default
        if value is None and default is not ...:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(f"{self.where}.{key}", f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        found, value = self._get(key)
        if not found or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{self.where}.{key}", f"must be a number, got {value!r}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        found, value = self._get(key)
        if not found or value is None:
            return default
        if not isinstance(value, bool):
            raise InputError(f"{self.where}.{key}", f"must be true or false, got {value!r}")
        return value

    def str(self, key: str, default: str) -> str:
        found, value = self._get(key)
        if not found or value is None:
            return default
        if not isinstance(value, str):
            raise InputError(f"{self.where}.{key}", f"must be a string, got {value!r}")
        return value

    def mapping(self, key: str) -> "_Config":
        found, value = self._get(key)
        if not found or value is None:
            return _Config({}, f"{self.where}.{key}")
        if not isinstance(value, dict):
            raise InputError(f"{self.where}.{key}", f"must be a mapping, got {value!r}")
        return _Config(value, f"{self.where}.{key}")


def _positive(cfg: _Config, key: str, default: float) -> float:
    """A positive number the config may state; absent, the family's ``transformers`` config
    default (LlamaConfig, MistralConfig, Qwen2Config: rope_theta 10000, rms_norm_eps 1e-6;
    MixtralConfig 1e6 and 1e-5; GPTNeoXConfig rotary_pct 0.25, rotary_emb_base 10000)."""
    value = cfg.number(key, default)
    if not value > 0:
        raise InputError(f"{cfg.where}.{key}", f"must be > 0, got {value!r}")
    return value


def _trained_context(cfg: _Config, max_positions: int) -> int:
    """Default seq_len: the context the model was trained with. Llama 3.1-style configs state
    the pre-extension length in ``rope_scaling.original_max_position_embeddings``."""
    scaling = cfg.mapping("rope_scaling")
    original = scaling.int("original_max_position_embeddings", None)
    return original if original else max_positions


def _llama_like(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    hidden = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    kv_default = {"llama": heads, "mistral": 8, "mixtral": 8, "qwen2": 32, "qwen2_moe": 16, "qwen3": 8,
                  "qwen3_moe": 4, "phi3": heads}[model_type]
    kv_heads = cfg.int("num_key_value_heads", kv_default)
    max_pos = cfg.int("max_position_embeddings")
    attention_bias = cfg.bool("attention_bias", False)
    mlp_bias = cfg.bool("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise InputError(f"{cfg.where}.attention_bias",
                         f"attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported "
                         "(ModelSpec has biases on all linear layers or none)")
    n_experts = top_k = expert_ffn = shared_ffn = 0
    if model_type == "mixtral":
        n_experts = cfg.int("num_local_experts")
        top_k = cfg.int("num_experts_per_tok")
    if model_type in ("qwen2_moe", "qwen3_moe"):
        n_experts = cfg.int("num_experts")
        top_k = cfg.int("num_experts_per_tok")
        expert_ffn = cfg.int("moe_intermediate_size")
        if model_type == "qwen2_moe":
            shared_ffn = cfg.int("shared_expert_intermediate_size", 0, minimum=0)
        dense = cfg.data.get("mlp_only_layers") or []
        if cfg.int("decoder_sparse_step", 1) != 1 or dense:
            raise InputError(f"{cfg.where}.mlp_only_layers",
                             "dense layers among the MoE ones are not modelled (every block must be MoE)")
    head_dim = cfg.int("head_dim", 0, minimum=0)
    if head_dim == hidden // heads and hidden % heads == 0:
        head_dim = 0
    window = cfg.int("sliding_window", 0, minimum=0) if model_type in ("mistral", "mixtral", "phi3") else 0
    if model_type.startswith("qwen") and cfg.bool("use_sliding_window", False):
        raise InputError(f"{cfg.where}.use_sliding_window",
                         "windowed layers chosen by max_window_layers are not modelled (full attention only)")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_hidden_size=cfg.int("intermediate_size"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=_trained_context(cfg, max_pos),
        mlp="swiglu", norm="rmsnorm", position="rope",
        tied_embeddings=cfg.bool("tie_word_embeddings", False),
        bias=attention_bias and mlp_bias,
        qkv_bias_only=model_type in ("qwen2", "qwen2_moe"),
        head_dim=head_dim,
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        sliding_window=window,
        n_experts=n_experts, top_k=top_k, expert_ffn_hidden_size=expert_ffn,
        shared_expert_ffn_hidden_size=shared_ffn,
        dropout=cfg.number("attention_dropout", 0.0),
        activation=cfg.str("hidden_act", "silu"),
        rope_theta=_positive(cfg, "rope_theta", 1e6 if model_type == "mixtral" else 10000.0),
        norm_eps=_positive(cfg, "rms_norm_eps", 1e-5 if model_type == "mixtral" else 1e-6),
    )


def _gemma2(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    if cfg.bool("attention_bias", False):
        raise InputError(f"{cfg.where}.attention_bias", "Gemma 2 with attention biases is not modelled")
    window = cfg.int("sliding_window", 0, minimum=0)
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=cfg.int("hidden_size"),
        n_heads=cfg.int("num_attention_heads"),
        n_kv_heads=cfg.int("num_key_value_heads"),
        ffn_hidden_size=cfg.int("intermediate_size"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=cfg.int("max_position_embeddings"),
        mlp="swiglu", norm="rmsnorm", position="rope",  # GeGLU: SwiGLU's three matrices
        tied_embeddings=cfg.bool("tie_word_embeddings", True),
        bias=False,
        head_dim=cfg.int("head_dim"),
        norms_per_block=4,
        sliding_window=window,
        global_attention_every=2 if window else 0,
        dropout=cfg.number("attention_dropout", 0.0),
        activation=cfg.str("hidden_activation", "gelu_pytorch_tanh"),
        rope_theta=_positive(cfg, "rope_theta", 10000.0),
        norm_eps=_positive(cfg, "rms_norm_eps", 1e-6),
    )


def _deepseek(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    if cfg.bool("attention_bias", False):
        raise InputError(f"{cfg.where}.attention_bias", "multi-head latent attention with biases is not modelled")
    if cfg.int("moe_layer_freq", 1) != 1:
        raise InputError(f"{cfg.where}.moe_layer_freq", "only every block after the dense ones being MoE is modelled")
    heads = cfg.int("num_attention_heads")
    expert_ffn = cfg.int("moe_intermediate_size")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=cfg.int("hidden_size"),
        n_heads=heads,
        n_kv_heads=heads,
        ffn_hidden_size=cfg.int("intermediate_size"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=_trained_context(cfg, cfg.int("max_position_embeddings")),
        mlp="swiglu", norm="rmsnorm", position="rope",
        tied_embeddings=cfg.bool("tie_word_embeddings", False),
        bias=False,
        head_dim=cfg.int("qk_nope_head_dim"),
        kv_lora_rank=cfg.int("kv_lora_rank"),
        q_lora_rank=cfg.int("q_lora_rank", 0, minimum=0),
        qk_rope_head_dim=cfg.int("qk_rope_head_dim"),
        v_head_dim=cfg.int("v_head_dim"),
        n_experts=cfg.int("n_routed_experts"), top_k=cfg.int("num_experts_per_tok"),
        expert_ffn_hidden_size=expert_ffn,
        shared_expert_ffn_hidden_size=cfg.int("n_shared_experts", 0, minimum=0) * expert_ffn,
        shared_expert_gate=False,
        dense_layers=cfg.int("first_k_dense_replace", 0, minimum=0),
        dropout=cfg.number("attention_dropout", 0.0),
        activation=cfg.str("hidden_act", "silu"),
        rope_theta=_positive(cfg, "rope_theta", 10000.0),
        norm_eps=_positive(cfg, "rms_norm_eps", 1e-6),
    )


def _gpt2(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    hidden = cfg.int("n_embd")
    n_pos = cfg.int("n_positions")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("n_layer"),
        hidden_size=hidden,
        n_heads=cfg.int("n_head"),
        n_kv_heads=cfg.int("n_head"),
        ffn_hidden_size=cfg.int("n_inner", 4 * hidden),
        vocab_size=cfg.int("vocab_size"),
        seq_len=n_pos,
        max_positions=n_pos,
        mlp="gelu", norm="layernorm", position="learned",
        tied_embeddings=cfg.bool("tie_word_embeddings", True),
        bias=True,
        dropout=cfg.number("resid_pdrop", 0.1),
        activation=cfg.str("activation_function", "gelu_new"),
        norm_eps=_positive(cfg, "layer_norm_epsilon", 1e-5),
    )


def _opt(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    hidden = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    max_pos = cfg.int("max_position_embeddings")
    embed = cfg.int("word_embed_proj_dim", hidden)
    layer_norm_before = cfg.bool("do_layer_norm_before", True)
    final_norm = layer_norm_before and not cfg.bool("_remove_final_layer_norm", False)
    if not cfg.bool("layer_norm_elementwise_affine", True):
        raise InputError(f"{cfg.where}.layer_norm_elementwise_affine",
                         "false (LayerNorms without parameters) is not supported")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=heads,
        ffn_hidden_size=cfg.int("ffn_dim"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=max_pos,
        max_positions=max_pos,
        position_offset=2,  # OPTLearnedPositionalEmbedding: num_embeddings + offset (2)
        embed_proj_dim=0 if embed == hidden else embed,
        final_norm=final_norm,
        mlp="gelu", norm="layernorm", position="learned",
        tied_embeddings=cfg.bool("tie_word_embeddings", True),
        bias=cfg.bool("enable_bias", True),
        dropout=cfg.number("dropout", 0.1),
        activation=cfg.str("activation_function", "relu"),
    )


def _gpt_neox(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    heads = cfg.int("num_attention_heads")
    max_pos = cfg.int("max_position_embeddings")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=cfg.int("hidden_size"),
        n_heads=heads,
        n_kv_heads=heads,
        ffn_hidden_size=cfg.int("intermediate_size"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=max_pos,
        mlp="gelu", norm="layernorm", position="rope",
        tied_embeddings=cfg.bool("tie_word_embeddings", False),
        bias=cfg.bool("attention_bias", True),
        parallel_residual=cfg.bool("use_parallel_residual", True),
        dropout=cfg.number("hidden_dropout", 0.0),
        activation=cfg.str("hidden_act", "gelu"),
        rope_theta=_positive(cfg, "rotary_emb_base", 10000.0),
        rotary_fraction=_positive(cfg, "rotary_pct", 0.25),
        norm_eps=_positive(cfg, "layer_norm_eps", 1e-5),
    )


def _mpt(cfg: _Config, name: str, model_type: str) -> ModelSpec:
    hidden = cfg.int("d_model")
    heads = cfg.int("n_heads")
    max_seq = cfg.int("max_seq_len")
    attn = cfg.mapping("attn_config")
    alibi = attn.bool("alibi", False)
    rope = attn.bool("rope", False)
    learned = cfg.bool("learned_pos_emb", True)
    if alibi and rope:
        raise InputError(f"{attn.where}.rope", "true together with alibi true")
    if not alibi and not learned and not rope:
        raise InputError(f"{cfg.where}.learned_pos_emb",
                         "false with attn_config.alibi and rope false leaves the model without positions")
    attn_type = attn.str("attn_type", "multihead_attention")
    if attn_type == "multihead_attention":
        kv_heads = heads
    elif attn_type == "multiquery_attention":
        kv_heads = 1
    elif attn_type == "grouped_query_attention":
        kv_heads = attn.int("kv_n_heads")
    else:
        raise InputError(f"{attn.where}.attn_type", f"unknown attention type {attn_type!r}")
    ratio = cfg.number("expansion_ratio", 4.0)
    ffn = int(hidden * ratio)
    if ffn <= 0 or ffn != hidden * ratio:
        raise InputError(f"{cfg.where}.expansion_ratio", f"d_model x {ratio} is not a positive integer")
    no_bias = cfg.bool("no_bias", True)
    return ModelSpec(
        name=name,
        n_layers=cfg.int("n_layers"),
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_hidden_size=ffn,
        vocab_size=cfg.int("vocab_size"),
        seq_len=max_seq,
        max_positions=max_seq if learned else 0,
        mlp="gelu", norm="layernorm",
        position="alibi" if alibi else "rope" if rope else "learned",
        position_table=learned and (alibi or rope),
        tied_embeddings=True,  # SharedEmbedding: the LM head reuses wte
        bias=not no_bias,
        norm_bias=not no_bias,
        dropout=cfg.number("resid_pdrop", 0.0),
        activation="gelu",
    )


_PARSERS: dict[str, Callable[[_Config, str, str], ModelSpec]] = {
    "gpt2": _gpt2, "llama": _llama_like, "mistral": _llama_like, "mixtral": _llama_like,
    "qwen2": _llama_like, "qwen2_moe": _llama_like, "qwen3": _llama_like, "qwen3_moe": _llama_like,
    "phi3": _llama_like, "gemma2": _gemma2, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek, "opt": _opt, "gpt_neox": _gpt_neox, "mpt": _mpt,
}


def spec_from_hf_config(data: dict[str, Any], name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a parsed config.json mapping (nested ``text_config`` allowed)."""
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
    if model_type not in _PARSERS:
        raise InputError(f"{where}.model_type",
                         f"unsupported model type {model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})")
    label = name or data.get("_name_or_path") or top_type or model_type
    cfg = _Config(cfg_data, where, defaults)
    try:
        return _PARSERS[model_type](cfg, str(label), model_type)
    except InputError as err:
        if err.field.startswith("config"):
            raise
        # a ModelSpec invariant (e.g. heads not dividing hidden): say it came from this config
        raise InputError(f"{where}:{err.field}", err.reason) from None


def read_hf_config(path: str | Path) -> ModelSpec:
    """Read ``path`` (a config.json) into a :class:`ModelSpec`; the name defaults to the
    config's ``_name_or_path``, else its directory's name."""
    path = Path(path)
    data = parse_json_config(read_input_text(path, "model"), str(path))
    name = data.get("_name_or_path") if isinstance(data.get("_name_or_path"), str) else None
    return spec_from_hf_config(data, name or path.parent.name or path.stem)
