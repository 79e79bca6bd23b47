"""Llama 3.2 Vision (``model_type`` mllama): its language model as a :class:`ModelSpec`.

The ``text_config`` (``mllama_text_model``) is Llama's decoder with cross-attention blocks at
``cross_attention_layers`` (transformers' ``MllamaTextModel``: each such block is a
``MllamaCrossAttentionDecoderLayer``, queries from the text, keys and values projected from the
image encoder's states, q/k head RMSNorms, two scalar tanh gates) and an embedding of
``vocab_size + 8`` rows (the image tokens) beside an LM head of ``vocab_size``. The states each
sample's cross-attention attends to: ``max_num_tiles`` tiles of ``(image_size // patch_size)^2``
patches plus a class token each (``MllamaVisionModel``; 4 x 1601 = 6404 for 560-px tiles of
14-px patches). The vision encoder is not priced: plan it apart or freeze it.

Absent keys take transformers' ``MllamaTextConfig`` / ``MllamaVisionConfig`` defaults (checked
against transformers 5.25.0), as the hub configs rely on. The parameter count of the
Llama-3.2-11B-Vision text config, 9,775,192,080, is what transformers 5.25.0's
``MllamaForCausalLM`` holds (counted on the meta device).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from planner.errors import InputError
from planner.hf_families import ConfigReader, llama_like
from planner.model import ModelSpec

MLLAMA_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "hidden_act": "silu"}
"""transformers' ``MllamaTextConfig`` defaults (architecture keys)."""

_VISION_DEFAULTS = {"image_size": 448, "patch_size": 14, "max_num_tiles": 4}
"""transformers' ``MllamaVisionConfig`` defaults of the keys that size the encoder's output."""

IMAGE_TOKEN_ROWS = 8
"""Embedding rows ``MllamaTextModel`` adds beyond ``vocab_size`` (``nn.Embedding(vocab_size + 8, ...)``)."""


def encoder_tokens(vision: Any, where: str) -> int:
    """States per sample the cross-attention blocks attend to, from the ``vision_config``."""
    if vision is not None and not isinstance(vision, dict):
        raise InputError(where, f"must be a mapping, got {vision!r}")
    cfg = ConfigReader(vision or {}, where, _VISION_DEFAULTS)
    image, patch = cfg.int("image_size"), cfg.int("patch_size")
    if patch > image:
        raise InputError(f"{where}.patch_size", f"{patch} is larger than image_size {image}")
    return cfg.int("max_num_tiles") * ((image // patch) ** 2 + 1)


def mllama_text(cfg: ConfigReader, name: str, vision: Any) -> ModelSpec:
    """The ``mllama_text_model`` config ``cfg`` with the composite config's ``vision_config``."""
    layers = cfg.data.get("cross_attention_layers", cfg.defaults.get("cross_attention_layers"))
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise InputError(f"{cfg.where}.cross_attention_layers", f"must be a list of block indices, got {layers!r}")
    spec = llama_like(cfg, name, "llama")
    try:
        return dataclasses.replace(spec, cross_attention_layers=tuple(layers),
                                   cross_attention_tokens=encoder_tokens(vision, "config.vision_config"),
                                   embedding_extra_rows=IMAGE_TOKEN_ROWS)
    except InputError as err:
        if err.field.startswith("config"):
            raise
        raise InputError(f"{cfg.where}.{err.field}", err.reason) from None
