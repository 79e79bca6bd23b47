"""Parameter counts of a :class:`planner.model.ModelSpec` (a mixin of its methods): every
weight and bias of the architecture the spec describes, as the frameworks and Hugging Face
checkpoints hold them (checked against published counts in ``tests/test_model.py``)."""
from __future__ import annotations


class ParameterCounts:
    """Methods of :class:`planner.model.ModelSpec` that count its parameters."""

    def attention_params(self) -> int:
        """Q, K, V and output projections (+ biases; + MLA's RMSNorms of its latents)."""
        h = self.hidden_size
        weights = sum(i * o for i, o, _ in self.attention_projections())
        qkv = self.q_dim + self.kv_dim + self.v_dim
        if self.bias:
            biases = qkv + h
        elif self.qkv_bias_only:
            biases = qkv
        else:
            biases = 0
        latent_norms = self.q_lora_rank + self.kv_lora_rank
        head_norms = 2 * self.d_head if self.qk_norm else 0
        return weights + biases + latent_norms + head_norms

    def mlp_params(self, ffn: int | None = None) -> int:
        """One dense MLP of inner width ``ffn`` (default ffn_hidden_size), with biases if any."""
        f = self.ffn_hidden_size if ffn is None else ffn
        h = self.hidden_size
        weights = self.mlp_matrices * h * f
        biases = ((self.mlp_matrices - 1) * f + h) if self.bias else 0
        return weights + biases

    def norm_params(self) -> int:
        """One norm: weight (+ bias for a LayerNorm with bias)."""
        if self.norm == "layernorm" and self.norm_bias:
            return 2 * self.hidden_size
        return self.hidden_size

    def shared_expert_params(self) -> int:
        """The shared expert(s) of one MoE block and their gate (0 without)."""
        if not self.shared_expert_ffn_hidden_size:
            return 0
        return self.mlp_params(self.shared_expert_ffn_hidden_size) + (self.hidden_size if self.shared_expert_gate else 0)

    def layer_params(self) -> int:
        """All parameters of one transformer block (all experts of an MoE block; the MoE blocks
        of a model with ``dense_layers``)."""
        if self.is_moe:
            ffn = (self.n_experts * self.mlp_params(self.expert_ffn) + self.hidden_size * self.n_experts
                   + self.shared_expert_params())
        else:
            ffn = self.mlp_params()
        gates = 2 if self.is_cross_block else 0  # mllama's cross_attn_attn_gate and cross_attn_mlp_gate
        return self.attention_params() + ffn + self.norms_per_block * self.norm_params() + gates

    def expert_params_per_layer(self) -> int:
        """The routed experts' parameters of one block (0 for a dense model): what expert
        parallelism spreads over ranks."""
        return self.n_experts * self.mlp_params(self.expert_ffn) if self.is_moe else 0

    def layer_active_params(self) -> int:
        """Parameters one token touches in a block (top_k experts for MoE)."""
        if not self.is_moe:
            return self.layer_params()  # (a cross-attention model is not MoE: model_checks)
        ffn = (self.top_k * self.mlp_params(self.expert_ffn) + self.hidden_size * self.n_experts
               + self.shared_expert_params())
        return self.attention_params() + ffn + self.norms_per_block * self.norm_params()

    def embedding_params(self) -> int:
        """Token embedding (+ learned positions, + OPT's project_in, + BLOOM's embedding norm)."""
        tokens = (self.vocab_size + self.embedding_extra_rows) * self.embed_dim
        positions = self.position_rows * self.hidden_size
        project_in = self.embed_dim * self.hidden_size if self.embed_proj_dim else 0
        norm = self.norm_params() if self.embed_norm else 0
        return tokens + positions + project_in + norm

    def head_params(self) -> int:
        """Final norm + OPT's project_out + LM head (the head is free when tied)."""
        norm = self.norm_params() if self.final_norm else 0
        project_out = self.embed_dim * self.hidden_size if self.embed_proj_dim else 0
        head = 0 if self.tied_embeddings else self.vocab_size * self.embed_dim
        return norm + project_out + head

    def _alt_blocks_params(self, active: bool = False) -> int:
        if not self.alt_layers:
            return 0
        block = self.alt_block()
        return self.alt_layers * (block.layer_active_params() if active else block.layer_params())

    def total_params(self) -> int:
        return self.embedding_params() + self.non_embedding_params() + self.head_params()

    def active_params(self) -> int:
        blocks = (self.n_layers - self.alt_layers) * self.layer_active_params() + self._alt_blocks_params(active=True)
        return self.embedding_params() + blocks + self.head_params()

    def non_embedding_params(self) -> int:
        return (self.n_layers - self.alt_layers) * self.layer_params() + self._alt_blocks_params()
