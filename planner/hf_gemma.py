"""Gemma 2 and Gemma 3 ``config.json`` readers (:mod:`planner.hf_config` says what each reads).

Both: four RMSNorms per block (before and after attention and the MLP), GeGLU (three matrices,
``gelu_pytorch_tanh``), heads of ``head_dim``, the embedding tied to the head, windowed blocks
among global ones. Gemma 3 adds an RMSNorm on each query and key head (``q_norm``/``k_norm``,
transformers' ``Gemma3Attention``) and a 5:1 local:global pattern: block ``i`` is global when
``(i + 1) % sliding_window_pattern == 0`` (``Gemma3TextConfig``; newer configs list
``layer_types`` instead). Logit soft-capping and ``query_pre_attn_scalar`` change no parameter
or FLOP.
"""
from __future__ import annotations

from typing import Any

from planner.errors import InputError
from planner.hf_families import ConfigReader, positive, trained_context
from planner.model import ModelSpec

GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "attention_bias": False, "sliding_window": 4096,
    "sliding_window_pattern": 6, "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh",
}
"""transformers' ``Gemma3TextConfig.__init__`` defaults (architecture keys only): a published
gemma3 ``text_config`` states only the keys that differ (gemma-3-4b: hidden, FFN, layers, window)."""


def _gemma_block(cfg: ConfigReader, name: str, family: str, window: int, global_every: int,
                 qk_norm: bool, rope_theta_default: float) -> ModelSpec:
    if cfg.bool("attention_bias", False):
        raise InputError(f"{cfg.where}.attention_bias", f"{family} with attention biases is not modelled")
    return ModelSpec(
        name=name,
        n_layers=cfg.int("num_hidden_layers"),
        hidden_size=cfg.int("hidden_size"),
        n_heads=cfg.int("num_attention_heads"),
        n_kv_heads=cfg.int("num_key_value_heads"),
        ffn_hidden_size=cfg.int("intermediate_size"),
        vocab_size=cfg.int("vocab_size"),
        seq_len=trained_context(cfg, cfg.int("max_position_embeddings")),
        mlp="swiglu", norm="rmsnorm", position="rope",  # GeGLU: SwiGLU's three matrices
        tied_embeddings=cfg.bool("tie_word_embeddings", True),
        bias=False,
        head_dim=cfg.int("head_dim"),
        norms_per_block=4,
        qk_norm=qk_norm,
        sliding_window=window,
        global_attention_every=global_every if window else 0,
        dropout=cfg.number("attention_dropout", 0.0),
        activation=cfg.str("hidden_activation", "gelu_pytorch_tanh"),
        rope_theta=positive(cfg, "rope_theta", rope_theta_default),
        norm_eps=positive(cfg, "rms_norm_eps", 1e-6),
    )


def gemma2(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
    """Every second block windowed (``Gemma2DecoderLayer``: block ``i`` slides when ``i`` is even)."""
    return _gemma_block(cfg, name, "Gemma 2", cfg.int("sliding_window", 0, minimum=0), 2, False, 10000.0)


def _global_every(cfg: ConfigReader, n_layers: int) -> int:
    """The period n of Gemma 3's global blocks (block i global when (i + 1) % n == 0); 1: every
    block global. From ``layer_types`` where the config lists them (refused unless periodic so),
    else ``sliding_window_pattern``."""
    types = cfg.data.get("layer_types")
    if types is None:
        return cfg.int("sliding_window_pattern", 6)
    where = f"{cfg.where}.layer_types"
    if not isinstance(types, list) or len(types) != n_layers or \
            any(t not in ("sliding_attention", "full_attention") for t in types):
        raise InputError(where, f"must list sliding_attention / full_attention for each of the {n_layers} layers")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if not full:
        return 0
    period = full[0] + 1
    if full != list(range(period - 1, n_layers, period)):
        raise InputError(where, "global blocks not at a fixed period ((i + 1) % n == 0) are not modelled")
    return period


def gemma3(cfg: ConfigReader, name: str, model_type: str) -> ModelSpec:
    n_layers = cfg.int("num_hidden_layers")
    every = _global_every(cfg, n_layers)
    window = cfg.int("sliding_window", 0, minimum=0)
    if every == 1:  # every block global
        window, every = 0, 0
    return _gemma_block(cfg, name, "Gemma 3", window, every, True, 1_000_000.0)
