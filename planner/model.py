"""Model descriptions: :class:`ModelSpec` for decoder-only transformers.

A spec is a frozen dataclass validated on construction. It is loaded from a preset name
(:data:`PRESETS`) or a Hugging Face ``config.json`` (see :func:`load_model`); parameter counts
follow the architecture exactly (GQA, SwiGLU/GELU MLP, tied embeddings, MoE), so presets can be
checked against published counts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.errors import InputError, require

MLP_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("learned", "rope", "alibi", "none")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer.

    Fields:
        name: display name (preset name or the config's ``_name_or_path``/model type).
        n_layers: transformer blocks.
        hidden_size: model width h.
        n_heads: attention heads a.
        n_kv_heads: key/value heads (== n_heads for MHA, < n_heads for GQA, 1 for MQA).
        ffn_hidden_size: MLP inner width f (per expert for MoE if ``expert_ffn_hidden_size`` is 0).
        vocab_size: V (padded as the framework pads it, when the preset says so).
        seq_len: default sequence length s (the context the model was trained with).
        mlp: ``gelu`` (2 matrices) or ``swiglu`` (3 matrices: gate, up, down).
        norm: ``layernorm`` (weight + bias) or ``rmsnorm`` (weight only).
        position: ``learned`` absolute embeddings (s x h parameters), ``rope``, ``alibi``, ``none``.
        tied_embeddings: LM head shares the input embedding matrix.
        bias: linear layers carry biases (GPT-2/OPT/NeoX style).
        head_dim: per-head width; 0 means hidden_size // n_heads.
        n_experts: MoE experts per MoE layer; 0 for a dense model.
        top_k: experts each token is routed to (MoE only).
        expert_ffn_hidden_size: expert MLP width; 0 means ffn_hidden_size.
        dropout: dropout probability used in training (Megatron GPTs 0.1; Llama 0). With dropout,
            activation memory includes the 1-byte masks of Korthikanti et al. (2022).
    """

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    seq_len: int
    mlp: str = "gelu"
    norm: str = "layernorm"
    position: str = "learned"
    tied_embeddings: bool = True
    bias: bool = True
    head_dim: int = 0
    n_experts: int = 0
    top_k: int = 0
    expert_ffn_hidden_size: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for field in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "ffn_hidden_size",
                      "vocab_size", "seq_len"):
            value = getattr(self, field)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    field, f"must be a positive integer, got {value!r}")
        require(self.mlp in MLP_KINDS, "mlp", f"must be one of {MLP_KINDS}, got {self.mlp!r}")
        require(self.norm in NORM_KINDS, "norm", f"must be one of {NORM_KINDS}, got {self.norm!r}")
        require(self.position in POSITION_KINDS, "position",
                f"must be one of {POSITION_KINDS}, got {self.position!r}")
        require(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
                f"{self.n_kv_heads} does not divide n_heads={self.n_heads}")
        require(self.head_dim >= 0, "head_dim", "must be >= 0")
        if self.head_dim == 0:
            require(self.hidden_size % self.n_heads == 0, "n_heads",
                    f"{self.n_heads} does not divide hidden_size={self.hidden_size}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        require(self.n_experts >= 0, "n_experts", "must be >= 0")
        if self.n_experts > 0:
            require(1 <= self.top_k <= self.n_experts, "top_k",
                    f"must be in 1..n_experts={self.n_experts}, got {self.top_k}")

    # ----- derived shapes -------------------------------------------------------------------
    @property
    def d_head(self) -> int:
        """Per-head width."""
        return self.head_dim or self.hidden_size // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): n_kv_heads * d_head."""
        return self.n_kv_heads * self.d_head

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.d_head

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_ffn(self) -> int:
        return self.expert_ffn_hidden_size or self.ffn_hidden_size

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices in one MLP: 3 for SwiGLU, 2 for GELU."""
        return 3 if self.mlp == "swiglu" else 2

    # ----- parameter counts -----------------------------------------------------------------
    def attention_params(self) -> int:
        """Q, K, V and output projections (+ biases)."""
        h = self.hidden_size
        weights = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        biases = (self.q_dim + 2 * self.kv_dim + h) if self.bias else 0
        return weights + biases

    def mlp_params(self, ffn: int | None = None) -> int:
        """One dense MLP of inner width ``ffn`` (default ffn_hidden_size), with biases if any."""
        f = self.ffn_hidden_size if ffn is None else ffn
        h = self.hidden_size
        weights = self.mlp_matrices * h * f
        biases = ((self.mlp_matrices - 1) * f + h) if self.bias else 0
        return weights + biases

    def norm_params(self) -> int:
        return 2 * self.hidden_size if self.norm == "layernorm" else self.hidden_size

    def layer_params(self) -> int:
        """All parameters of one transformer block (all experts of an MoE block)."""
        if self.is_moe:
            ffn = self.n_experts * self.mlp_params(self.expert_ffn) + self.hidden_size * self.n_experts
        else:
            ffn = self.mlp_params()
        return self.attention_params() + ffn + 2 * self.norm_params()

    def layer_active_params(self) -> int:
        """Parameters one token touches in a block (top_k experts for MoE)."""
        if not self.is_moe:
            return self.layer_params()
        ffn = self.top_k * self.mlp_params(self.expert_ffn) + self.hidden_size * self.n_experts
        return self.attention_params() + ffn + 2 * self.norm_params()

    def embedding_params(self) -> int:
        """Token embedding (+ learned positions)."""
        pos = self.seq_len * self.hidden_size if self.position == "learned" else 0
        return self.vocab_size * self.hidden_size + pos

    def head_params(self) -> int:
        """Final norm + LM head (the head is free when tied)."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return self.norm_params() + head

    def total_params(self) -> int:
        return self.embedding_params() + self.n_layers * self.layer_params() + self.head_params()

    def active_params(self) -> int:
        return (self.embedding_params() + self.n_layers * self.layer_active_params()
                + self.head_params())

    def non_embedding_params(self) -> int:
        return self.n_layers * self.layer_params()

    def with_seq_len(self, seq_len: int) -> "ModelSpec":
        return dataclasses.replace(self, seq_len=seq_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError(f"model.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return cls(**data)
