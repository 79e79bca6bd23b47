"""The checks a :class:`planner.model.ModelSpec` passes on construction: one line naming the
field and the reason for anything a real model cannot have."""
from __future__ import annotations

import math

from planner.errors import require

MLP_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("learned", "rope", "alibi", "none")


MAX_SHAPE = {"n_layers": 1 << 14, "hidden_size": 1 << 20, "n_heads": 1 << 16, "n_kv_heads": 1 << 16,
             "ffn_hidden_size": 1 << 22, "vocab_size": 1 << 24, "seq_len": 1 << 24}
"""Bounds far beyond any published model (the largest have ~200 layers, hidden 25,600, a
256k vocabulary): a shape above them is a typo or an attack, refused in one line."""
MAX_EXPERTS = 1 << 16
MAX_CAPACITY_FACTOR = 64.0
"""Megatron's recipes use 1.0-2.0; beyond this every expert could take all the tokens anyway."""


def check_model_spec(spec) -> None:
    """Raise :class:`planner.errors.InputError` naming the first field ``spec`` (a ModelSpec,
    checked while it is constructed) cannot have."""
    for field in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "ffn_hidden_size",
                  "vocab_size", "seq_len"):
        value = getattr(spec, field)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                field, f"must be a positive integer, got {value!r}")
        limit = MAX_SHAPE[field]
        require(value <= limit, field, f"{value:,} is beyond any real model (at most {limit:,})")
    require(spec.n_experts <= MAX_EXPERTS, "n_experts", f"{spec.n_experts:,} is beyond any real model "
                                                       f"(at most {MAX_EXPERTS:,})")
    require(spec.mlp in MLP_KINDS, "mlp", f"must be one of {MLP_KINDS}, got {spec.mlp!r}")
    require(spec.norm in NORM_KINDS, "norm", f"must be one of {NORM_KINDS}, got {spec.norm!r}")
    require(spec.position in POSITION_KINDS, "position",
            f"must be one of {POSITION_KINDS}, got {spec.position!r}")
    require(spec.n_heads % spec.n_kv_heads == 0, "n_kv_heads",
            f"{spec.n_kv_heads} does not divide n_heads={spec.n_heads}")
    require(spec.head_dim >= 0, "head_dim", "must be >= 0")
    if spec.head_dim == 0:
        require(spec.hidden_size % spec.n_heads == 0, "n_heads",
                f"{spec.n_heads} does not divide hidden_size={spec.hidden_size}")
    require(0.0 <= spec.dropout < 1.0, "dropout", f"must be in [0, 1), got {spec.dropout!r}")
    require(spec.n_experts >= 0, "n_experts", "must be >= 0")
    if spec.n_experts > 0:
        require(1 <= spec.top_k <= spec.n_experts, "top_k",
                f"must be in 1..n_experts={spec.n_experts}, got {spec.top_k}")
    require(not spec.shared_expert_ffn_hidden_size or spec.n_experts > 0, "shared_expert_ffn_hidden_size",
            "needs routed experts (n_experts > 0)")
    cf = spec.moe_capacity_factor
    require(isinstance(cf, (int, float)) and not isinstance(cf, bool) and math.isfinite(cf)
            and 0 <= cf <= MAX_CAPACITY_FACTOR, "moe_capacity_factor",
            f"must be 0 (dropless) or a number up to {MAX_CAPACITY_FACTOR}, got {cf!r}")
    require(not cf or spec.n_experts > 0, "moe_capacity_factor", "needs routed experts (n_experts > 0)")
    require(not spec.moe_pad_to_capacity or cf > 0, "moe_pad_to_capacity", "needs a moe_capacity_factor")
    load = spec.moe_load_imbalance
    require(isinstance(load, (int, float)) and not isinstance(load, bool) and math.isfinite(load)
            and (load == 0 or 1 <= load <= MAX_CAPACITY_FACTOR), "moe_load_imbalance",
            f"must be 0 (a uniform router) or a number from 1 to {MAX_CAPACITY_FACTOR}, got {load!r}")
    require(not load or spec.n_experts > 0, "moe_load_imbalance", "needs routed experts (n_experts > 0)")
    for field in ("max_positions", "position_offset", "embed_proj_dim", "expert_ffn_hidden_size",
                  "shared_expert_ffn_hidden_size", "dense_layers", "kv_lora_rank", "q_lora_rank",
                  "qk_rope_head_dim", "v_head_dim", "sliding_window", "global_attention_every",
                  "norms_per_block", "cross_attention_tokens", "embedding_extra_rows"):
        value = getattr(spec, field)
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                field, f"must be an integer >= 0, got {value!r}")
    for field in ("rope_theta", "norm_eps"):
        value = getattr(spec, field)
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and 0.0 <= value < 1e12, field, f"must be a finite number >= 0, got {value!r}")
    require(isinstance(spec.rotary_fraction, (int, float)) and not isinstance(spec.rotary_fraction, bool)
            and 0.0 < spec.rotary_fraction <= 1.0, "rotary_fraction",
            f"must be in (0, 1], got {spec.rotary_fraction!r}")
    require(not spec.global_attention_every or spec.sliding_window, "global_attention_every",
            "needs a sliding_window (the other blocks' window)")
    if not spec.is_mla:
        for field in ("q_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            require(getattr(spec, field) == 0, field, "is a multi-head latent attention width: needs kv_lora_rank > 0")
    else:
        require(spec.n_kv_heads == spec.n_heads, "n_kv_heads",
                "multi-head latent attention up-projects keys and values for every head (n_kv_heads = n_heads)")
        require(not spec.bias and not spec.qkv_bias_only, "bias", "multi-head latent attention has no biases here")
    if spec.dense_layers:
        require(spec.n_experts > 0, "dense_layers", "needs routed experts (n_experts > 0)")
        require(spec.dense_layers < spec.n_layers, "dense_layers",
                f"{spec.dense_layers} leaves no MoE block among the model's {spec.n_layers} layers")
    _check_cross_attention(spec)
    for field in ("shared_expert_gate", "qk_norm"):
        require(isinstance(getattr(spec, field), bool), field, f"must be true or false, got {getattr(spec, field)!r}")
    require(not (spec.bias and spec.qkv_bias_only), "qkv_bias_only",
            "needs bias=False (bias=True already puts biases on every linear layer)")
    if spec.has_position_table and spec.max_positions:
        require(spec.seq_len <= spec.max_positions, "seq_len",
                f"{spec.seq_len} exceeds the model's {spec.max_positions} learned positions")


def _check_cross_attention(spec) -> None:
    """Cross-attention blocks: distinct block indices in order, encoder tokens to attend to, and
    no routed experts or latent attention beside them (no model has both)."""
    layers = spec.cross_attention_layers
    require(isinstance(layers, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers),
            "cross_attention_layers", f"must be a list of block indices, got {layers!r}")
    if not layers:
        require(spec.cross_attention_tokens == 0, "cross_attention_tokens", "needs cross_attention_layers")
        return
    require(list(layers) == sorted(set(layers)) and 0 <= layers[0] and layers[-1] < spec.n_layers,
            "cross_attention_layers", f"must be distinct increasing block indices below n_layers={spec.n_layers}, "
            f"got {list(layers)}")
    require(spec.cross_attention_tokens > 0, "cross_attention_tokens",
            "must be > 0: the encoder states the cross-attention blocks attend to")
    require(not spec.is_moe and not spec.is_mla and not spec.sliding_window, "cross_attention_layers",
            "cross-attention blocks beside experts, latent attention or a sliding window are not modelled")
