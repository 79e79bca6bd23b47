"""One parser per Hugging Face ``config.json`` family (:mod:`planner.hf_config` says which keys
and quirks each reads) and the typed, field-naming access they share."""
from __future__ import annotations

from typing import Any

from planner.errors import InputError
from planner.model import ModelSpec


class ConfigReader:
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

    def mapping(self, key: str) -> "ConfigReader":
        found, value = self._get(key)
        if not found or value is None:
            return ConfigReader({}, f"{self.where}.{key}")
        if not isinstance(value, dict):
            raise InputError(f"{self.where}.{key}", f"must be a mapping, got {value!r}")
        return ConfigReader(value, f"{self.where}.{key}")


def positive(cfg: ConfigReader, key: str, default: float) -> float:
    """A positive number the config may state; absent, the family's ``transformers`` config
    default (LlamaConfig, MistralConfig, Qwen2Config: rope_theta 10000, rms_norm_eps 1e-6;
    MixtralConfig 1e6 and 1e-5; GPTNeoXConfig rotary_pct 0.25, rotary_emb_base 10000)."""
    value = cfg.number(key, default)
    if not value > 0:
        raise InputError(f"{cfg.where}.{key}", f"must be > 0, got {value!r}")
    return value


DEFAULT_TRAINING_SEQ_LEN = 8192
"""The training length a config gets where it states only the context it can take: torchtitan's
Llama 3 training configs' ``seq_len`` (8192); Mistral 7B's paper trained at 8192 (its config's
max_position_embeddings says 32768)."""


def trained_context(cfg: ConfigReader, max_positions: int) -> int:
    """Default seq_len: the context the model was trained with. Llama 3.1-style configs state
    the pre-extension length in ``rope_scaling.original_max_position_embeddings``; otherwise
    ``max_position_embeddings`` is a limit, not a training length, and the default is at most
    :data:`DEFAULT_TRAINING_SEQ_LEN` (:func:`seq_len_note` says so)."""
    scaling = cfg.mapping("rope_scaling")
    original = scaling.int("original_max_position_embeddings", None)
    return original if original else min(max_positions, DEFAULT_TRAINING_SEQ_LEN)


def seq_len_note(cfg: ConfigReader, key: str, seq_len: int) -> str:
    """The line that states a default training length below the config's ``key`` limit ("" where
    the config gives the length itself)."""
    limit = cfg.int(key, None)
    if not limit or limit <= seq_len or cfg.mapping("rope_scaling").int("original_max_position_embeddings", None):
        return ""
    return (f"seq_len {seq_len} by default: the config's {key} {limit} is the longest context, not a training "
            f"length (--seq-len sets one)")


def llama_like(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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
        seq_len=trained_context(cfg, max_pos),
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
        rope_theta=positive(cfg, "rope_theta", 1e6 if model_type == "mixtral" else 10000.0),
        norm_eps=positive(cfg, "rms_norm_eps", 1e-5 if model_type == "mixtral" else 1e-6),
    )


def deepseek(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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
        seq_len=trained_context(cfg, cfg.int("max_position_embeddings")),
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
        rope_theta=positive(cfg, "rope_theta", 10000.0),
        norm_eps=positive(cfg, "rms_norm_eps", 1e-6),
    )


def gpt2(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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
        norm_eps=positive(cfg, "layer_norm_epsilon", 1e-5),
    )


def opt(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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


def gpt_neox(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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
        seq_len=trained_context(cfg, max_pos),
        mlp="gelu", norm="layernorm", position="rope",
        tied_embeddings=cfg.bool("tie_word_embeddings", False),
        bias=cfg.bool("attention_bias", True),
        parallel_residual=cfg.bool("use_parallel_residual", True),
        dropout=cfg.number("hidden_dropout", 0.0),
        activation=cfg.str("hidden_act", "gelu"),
        rope_theta=positive(cfg, "rotary_emb_base", 10000.0),
        rotary_fraction=positive(cfg, "rotary_pct", 0.25),
        norm_eps=positive(cfg, "layer_norm_eps", 1e-5),
    )


def mpt(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
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
        seq_len=trained_context(cfg, max_seq),
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


def falcon(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
    """transformers' ``FalconConfig`` and ``FalconDecoderLayer``: fused QKV of
    ``num_kv_heads`` heads (``new_decoder_architecture``), one (``multi_query``) or every head;
    LayerNorms with biases (two where attention is sequential or the new architecture's
    ``num_ln_in_parallel_attn`` is 2, its default; one shared by the parallel branches
    otherwise); ``bias`` on every linear layer; GELU MLP of ``ffn_hidden_size`` (4h); tied head;
    ALiBi or RoPE."""
    hidden = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    new_arch = cfg.bool("new_decoder_architecture", False)
    parallel = cfg.bool("parallel_attn", True)
    if new_arch:
        kv_heads = cfg.int("num_kv_heads", heads)
    else:
        kv_heads = 1 if cfg.bool("multi_query", True) else heads
    lns = cfg.int("num_ln_in_parallel_attn", 2 if new_arch else 1)
    alibi = cfg.bool("alibi", False)
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_hidden_size=cfg.int("ffn_hidden_size", 4 * hidden),
        vocab_size=cfg.int("vocab_size"),
        seq_len=trained_context(cfg, cfg.int("max_position_embeddings", 2048)),
        mlp="gelu", norm="layernorm", position="alibi" if alibi else "rope",
        tied_embeddings=cfg.bool("tie_word_embeddings", True),
        bias=cfg.bool("bias", False),
        norms_per_block=2 if (not parallel or lns == 2) else 1,
        parallel_residual=parallel or new_arch,
        dropout=cfg.number("hidden_dropout", 0.0),
        activation=cfg.str("activation", "gelu"),
        rope_theta=0.0 if alibi else positive(cfg, "rope_theta", 10000.0),
        norm_eps=positive(cfg, "layer_norm_epsilon", 1e-5),
    )
