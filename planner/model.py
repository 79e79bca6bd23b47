"""Model descriptions: :class:`ModelSpec` for decoder-only transformers.

A spec is a frozen dataclass validated on construction. It is loaded from a preset name
(:data:`PRESETS`, defined in :mod:`planner.presets`) or a Hugging Face ``config.json`` (parsed by
:mod:`planner.hf_config`); see :func:`load_model`. Parameter counts follow the architecture exactly
(GQA, SwiGLU/GELU MLP, tied embeddings, MoE, and the per-family quirks listed on the fields), so
presets can be checked against published counts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.errors import InputError
from planner.io import parse_json
from planner.model_checks import check_model_spec
from planner.model_params import ParameterCounts

OMITTED_AT_DEFAULT = {"rope_theta": 0.0, "rotary_fraction": 1.0, "norm_eps": 0.0,
                        "shared_expert_ffn_hidden_size": 0, "dense_layers": 0, "q_lora_rank": 0,
                        "kv_lora_rank": 0, "qk_rope_head_dim": 0, "v_head_dim": 0, "shared_expert_gate": True,
                        "qk_norm": False, "sliding_window": 0, "global_attention_every": 0, "norms_per_block": 2,
                        "moe_capacity_factor": 0.0, "moe_pad_to_capacity": False, "moe_load_imbalance": 0.0,
                        "cross_attention_layers": (), "cross_attention_tokens": 0, "embedding_extra_rows": 0}
"""ModelSpec fields left out of :meth:`ModelSpec.to_dict` (and so of a plan's id) at these
defaults, which mean "not stated" or "none": fields added after plans were recorded."""


@dataclass(frozen=True)
class ModelSpec(ParameterCounts):
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
        shared_expert_ffn_hidden_size: inner width of the shared expert(s) every token passes
            beside its routed ones (DeepSeek-MoE: n_shared x the expert width; Qwen2-MoE's
            ``shared_expert_intermediate_size``, whose output a sigmoid gate of h weights scales);
            a dense MLP replicated over ep, split by tp. 0: none.
        shared_expert_gate: the shared expert's output is scaled by a gate of h weights
            (Qwen2-MoE); DeepSeek's shared experts have none.
        dense_layers: MoE models whose first blocks are dense: the first ``dense_layers`` blocks
            have one MLP of ``ffn_hidden_size`` and no router (DeepSeek-V2/V3
            ``first_k_dense_replace``; Megatron-Core ``--moe-layer-freq "([0]*k+[1]*(L-k))"``);
            every block after them is an MoE block. 0: every block is MoE.
        moe_capacity_factor: each expert takes at most this times its balanced share of the routed
            tokens, the rest are dropped (Megatron-Core ``moe_expert_capacity_factor``, a
            TransformerConfig field like the expert count); 0: dropless. Without padding an expert
            is priced at its balanced share (the load dropping bounds is not known).
        moe_pad_to_capacity: every expert's input is padded to its capacity (Megatron-Core
            ``moe_pad_expert_input_to_capacity``): expert GEMMs, routed activations and the token
            exchange are ``moe_capacity_factor`` times the balanced ones.
        moe_load_imbalance: routed token copies the busiest expert-parallel rank receives over
            the mean, as measured on the user's router (e.g. Megatron-Core's per-expert token
            counts); 0: a uniform router's expectation (:mod:`planner.cost.routing`).
        kv_lora_rank: multi-head latent attention (MLA; DeepSeek-V2, arXiv:2405.04434, Sec. 2.1):
            keys and values are up-projected per head from a shared latent of this width (plus
            ``qk_rope_head_dim`` decoupled RoPE key dims), ``head_dim`` being the non-rotary
            query/key width per head. 0: standard multi-head / grouped-query attention.
        q_lora_rank: MLA's query latent width (queries down- then up-projected); 0: one query
            projection.
        qk_rope_head_dim: MLA's decoupled rotary query/key width per head.
        v_head_dim: MLA's value width per head; 0 means ``head_dim``.
        cross_attention_layers: indices of the blocks that attend to ``cross_attention_tokens``
            encoder states (an image encoder's) instead of the sequence: Llama 3.2 Vision
            (transformers' ``MllamaCrossAttentionDecoderLayer``): queries from the sequence, keys
            and values projected from the encoder states, no causal mask, an RMSNorm on each query
            and key head and two scalar tanh gates (attention and MLP); same MLP. ():
            none. A spec listing every block is one cross-attention block (:meth:`cross_block`).
        cross_attention_tokens: encoder states each sample's cross-attention blocks attend to
            (mllama: ``max_num_tiles * ((image_size // patch_size)^2 + 1)``, 6404 for four 560-px
            tiles of 14-px patches); the encoder itself is not priced.
        dropout: dropout probability used in training (Megatron GPTs 0.1; Llama 0). With dropout,
            activation memory includes the 1-byte masks of Korthikanti et al. (2022).

    Family quirks (all default to the plain GPT/Llama layout, so older specs are unchanged):
        max_positions: rows of a learned position table; 0 means the table follows seq_len (as
            Megatron sets --max-position-embeddings to --seq-length). A config's n_positions is
            kept here, so the model can run at a shorter seq_len without changing its size.
        position_offset: extra learned position rows (OPT reserves 2: ``OPTLearnedPositional
            Embedding`` has ``max_position_embeddings + 2`` rows).
        position_table: a learned position table exists besides ``position`` (MPT with
            ``learned_pos_emb: true`` and ALiBi keeps ``wpe`` of max_seq_len rows).
        embed_proj_dim: token-embedding width when it differs from hidden_size (OPT-350m's
            ``word_embed_proj_dim`` 512): embedding and LM head are V x e, plus ``project_in`` and
            ``project_out`` e x h matrices without bias. 0 means hidden_size.
        embedding_extra_rows: token-embedding rows beyond ``vocab_size`` that the LM head does not
            have (mllama's ``vocab_size + 8``: its image tokens).
        embed_norm: a norm right after the token embedding (BLOOM's word_embeddings_layernorm).
        final_norm: a norm before the LM head (OPT-350m has none: do_layer_norm_before false).
        norm_bias: LayerNorms carry a bias (MPT with no_bias: weight only). Ignored for RMSNorm.
        qkv_bias_only: Q, K and V projections carry biases, the output projection and the MLP do
            not (Qwen2). Only meaningful with ``bias`` false.
        sliding_window: each query attends to at most this many preceding tokens (itself
            included) in the windowed blocks (Mistral-7B-v0.1 4096, Phi-3 2047, Gemma 2, gpt-oss); 0:
            full causal attention.
        global_attention_every: with ``sliding_window``, every n-th block attends to the whole
            sequence (Megatron ``--window-attn-skip-freq``: Gemma 2 and gpt-oss 2); 0: every block
            is windowed.
        norms_per_block: norms in one block: 2 (before attention and before the MLP), 4 with
            Gemma 2's norms after each sublayer too.
        qk_norm: an RMSNorm over each query and key head before RoPE (Qwen3, OLMo-2, Gemma 3):
            2 x head_dim weights per block (its element-wise work is not priced).
        parallel_residual: attention and MLP read the same input and are summed (GPT-J / NeoX
            ``use_parallel_residual``); same parameters and FLOPs, different dependency graph.
        activation: the MLP's pointwise activation as the source names it (``gelu``,
            ``gelu_new``, ``relu``, ``silu``); empty means the ``mlp`` kind's usual one. A
            ``gelu`` spec is any 2-matrix MLP with a pointwise activation (OPT's ReLU included).

    Numerics the cost model does not price, carried so exports configure the same model (left out
    of :meth:`to_dict`, and so of a plan's id, at their defaults):
        rope_theta: RoPE base (``rope_theta``; Llama 3 500000, Mixtral / Qwen2 1e6); 0 = not
            stated (the framework's default, 10000 in Megatron-LM).
        rotary_fraction: share of each head's dimensions that RoPE rotates (GPT-NeoX
            ``rotary_pct``: 0.25 for Pythia); 1 = all.
        norm_eps: the norms' epsilon (``rms_norm_eps`` / ``layer_norm_eps``); 0 = not stated.
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
    shared_expert_ffn_hidden_size: int = 0
    shared_expert_gate: bool = True
    dense_layers: int = 0
    moe_capacity_factor: float = 0.0
    moe_pad_to_capacity: bool = False
    moe_load_imbalance: float = 0.0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    cross_attention_layers: tuple[int, ...] = ()
    cross_attention_tokens: int = 0
    dropout: float = 0.0
    max_positions: int = 0
    position_offset: int = 0
    position_table: bool = False
    embed_proj_dim: int = 0
    embedding_extra_rows: int = 0
    embed_norm: bool = False
    final_norm: bool = True
    norm_bias: bool = True
    qkv_bias_only: bool = False
    parallel_residual: bool = False
    qk_norm: bool = False
    sliding_window: int = 0
    global_attention_every: int = 0
    norms_per_block: int = 2
    activation: str = ""
    rope_theta: float = 0.0
    rotary_fraction: float = 1.0
    norm_eps: float = 0.0

    def __post_init__(self) -> None:
        check_model_spec(self)

    # ----- derived shapes -------------------------------------------------------------------
    @property
    def d_head(self) -> int:
        """Per-head width."""
        return self.head_dim or self.hidden_size // self.n_heads

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def qk_head_dim(self) -> int:
        """Query / key width per head (MLA: the non-rotary and the decoupled rotary parts)."""
        return self.d_head + self.qk_rope_head_dim

    @property
    def value_head_dim(self) -> int:
        """Width of one value head (MLA's ``v_head_dim``; else the head width)."""
        return self.v_head_dim or self.d_head

    @property
    def kv_dim(self) -> int:
        """Width of K: n_kv_heads * d_head (MLA: every head's up-projected key)."""
        return self.n_kv_heads * self.qk_head_dim

    @property
    def v_dim(self) -> int:
        """Width of V (n_kv_heads value heads)."""
        return self.n_kv_heads * self.value_head_dim

    @property
    def q_dim(self) -> int:
        """Width of Q."""
        return self.n_heads * self.qk_head_dim

    @property
    def attn_out_dim(self) -> int:
        """Width of the attention output (n_heads value heads): the output projection's input."""
        return self.n_heads * self.value_head_dim

    @property
    def rotary_dim(self) -> int:
        """Q and K columns RoPE rotates on one token (MLA: each query head's and the shared key's
        decoupled rotary part)."""
        if self.is_mla:
            return (self.n_heads + 1) * self.qk_rope_head_dim
        return self.q_dim + self.kv_dim

    def causal_pairs_fraction(self, seq_len: int) -> float:
        """Share of the s x s query-key pairs a causal block computes, averaged over the blocks:
        1/2 with full causal attention (the fused kernels' benchmark convention); a window w < s
        keeps sum_i min(i, w) ~ s w - w^2 / 2 of them; a cross-attention block has no mask: all."""
        if self.is_cross_block:
            return 1.0
        w = self.sliding_window
        if not w or w >= seq_len:
            return 0.5
        windowed = (seq_len * w - w * w / 2) / (seq_len * seq_len)
        share = 1.0 - 1.0 / self.global_attention_every if self.global_attention_every else 1.0
        return share * windowed + (1.0 - share) * 0.5

    def attention_projections(self) -> list[tuple[int, int, str]]:
        """(in, out, tensor-parallel split) of each attention weight matrix in execution order,
        the output projection last; split ``column`` (out over tp), ``row`` (in over tp) or
        ``none`` (every tp rank holds it). Standard: fused QKV (column) and output (row).
        MLA as Megatron-Core builds it (``MLASelfAttention``): query down (none) and up
        (column) projections, or one query projection without ``q_lora_rank``; the KV down
        projection to the latent plus the rotary key (none); the KV up projection to every
        head's non-rotary key and value (column); output (row)."""
        h = self.hidden_size
        if self.is_cross_block:  # queries from the sequence, keys and values from the encoder states
            return [(h, self.q_dim, "column"), (h, self.kv_dim + self.v_dim, "column"), (self.attn_out_dim, h, "row")]
        if not self.is_mla:
            return [(h, self.q_dim + self.kv_dim + self.v_dim, "column"), (self.attn_out_dim, h, "row")]
        q = ([(h, self.q_lora_rank, "none"), (self.q_lora_rank, self.q_dim, "column")] if self.q_lora_rank
             else [(h, self.q_dim, "column")])
        kv_up = self.n_heads * (self.d_head + self.value_head_dim)
        return q + [(h, self.kv_lora_rank + self.qk_rope_head_dim, "none"), (self.kv_lora_rank, kv_up, "column"),
                    (self.attn_out_dim, h, "row")]

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_token_load(self) -> float:
        """Routed tokens an expert processes per its balanced share: the capacity factor when its
        input is padded to capacity, else 1 (see ``moe_capacity_factor``)."""
        return self.moe_capacity_factor if self.moe_pad_to_capacity else 1.0

    @property
    def moe_layers(self) -> int:
        """Blocks with routed experts (0 for a dense model)."""
        return self.n_layers - self.dense_layers if self.is_moe else 0

    def dense_block(self) -> "ModelSpec":
        """The model every one of whose blocks is this model's dense block (its leading
        ``dense_layers``): what prices, sizes and builds those blocks."""
        if not self.is_moe:
            return self
        dense = self.__dict__.get("_dense_block")  # built once: the search asks often
        if dense is None:
            dense = dataclasses.replace(self, n_experts=0, top_k=0, expert_ffn_hidden_size=0,
                                        shared_expert_ffn_hidden_size=0, shared_expert_gate=True, dense_layers=0,
                                        moe_capacity_factor=0.0, moe_pad_to_capacity=False,
                                        moe_load_imbalance=0.0)
            object.__setattr__(self, "_dense_block", dense)
        return dense

    @property
    def is_cross_block(self) -> bool:
        """Every block of this spec is a cross-attention block (:meth:`cross_block`)."""
        return len(self.cross_attention_layers) == self.n_layers

    def cross_block(self) -> "ModelSpec":
        """The model every one of whose blocks is this model's cross-attention block: what
        prices and sizes those blocks (queries and keys normalised per head)."""
        block = self.__dict__.get("_cross_block")
        if block is None:
            block = dataclasses.replace(self, cross_attention_layers=tuple(range(self.n_layers)), qk_norm=True)
            object.__setattr__(self, "_cross_block", block)
        return block

    @property
    def _mixes_cross_attention(self) -> bool:
        """Some blocks, not all, are cross-attention blocks: those are its second kind."""
        return bool(self.cross_attention_layers) and not self.is_cross_block

    @property
    def alt_layers(self) -> int:
        """Blocks of the model's second kind (:meth:`alt_block`): an MoE model's leading dense
        blocks, or the cross-attention blocks; 0 where every block is alike."""
        if self._mixes_cross_attention:
            return len(self.cross_attention_layers)
        return self.dense_layers if self.is_moe else 0

    def alt_block(self) -> "ModelSpec":
        """The model every one of whose blocks is this model's second kind of block (itself where
        it has one kind)."""
        if self._mixes_cross_attention:
            return self.cross_block()
        return self.dense_block()

    def is_alt_layer(self, index: int) -> bool:
        """Block ``index`` (from 0) is of the second kind (:attr:`alt_layers`)."""
        if self._mixes_cross_attention:
            return index in self.cross_attention_layers
        return self.is_moe and index < self.dense_layers

    def block_kinds(self, layers_per_stage) -> list[tuple[int, int]]:
        """(second kind, first kind) blocks of each stage, given its layers in model order:
        (dense, MoE) for an MoE model with leading dense blocks, (cross-attention,
        self-attention) for one with cross-attention blocks, (0, n) where all blocks are alike."""
        out, first = [], 0
        for n in layers_per_stage:
            alt = sum(1 for i in range(first, first + n) if self.is_alt_layer(i)) if self.alt_layers else 0
            out.append((alt, n - alt))
            first += n
        return out

    @property
    def expert_ffn(self) -> int:
        return self.expert_ffn_hidden_size or self.ffn_hidden_size

    @property
    def token_mlp_width(self) -> int:
        """Inner MLP width one token passes in a block: its top_k routed experts' and the shared
        expert's (MoE), or the dense MLP's."""
        if self.is_moe:
            return self.top_k * self.expert_ffn + self.shared_expert_ffn_hidden_size
        return self.ffn_hidden_size

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding and of the LM head's input (OPT's word_embed_proj_dim)."""
        return self.embed_proj_dim or self.hidden_size

    @property
    def has_position_table(self) -> bool:
        """A learned absolute position table exists (``learned`` position or an extra table)."""
        return self.position == "learned" or self.position_table

    @property
    def position_rows(self) -> int:
        """Rows of the learned position table (0 when there is none)."""
        if not self.has_position_table:
            return 0
        return (self.max_positions or self.seq_len) + self.position_offset

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices in one MLP: 3 for SwiGLU, 2 for GELU."""
        return 3 if self.mlp == "swiglu" else 2

    def with_seq_len(self, seq_len: int) -> "ModelSpec":
        """The same model at ``seq_len``. A learned table with ``max_positions`` set keeps its
        size (seq_len may not exceed it); with max_positions 0 the table follows seq_len."""
        return dataclasses.replace(self, seq_len=seq_len)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, default in OMITTED_AT_DEFAULT.items():  # a plan's id does not change with them unset
            if data[key] == default:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InputError(f"model.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise InputError(f"model.{missing[0]}", "missing")
        if isinstance(data.get("cross_attention_layers"), list):  # JSON has no tuples
            data = dict(data, cross_attention_layers=tuple(data["cross_attention_layers"]))
        return cls(**data)


def parse_json_config(text: str, source: str) -> dict[str, Any]:
    """Parse a config.json's text; errors name the file as the ``model`` field."""
    data = parse_json(text, "model", source)
    if not isinstance(data, dict):
        raise InputError("model", f"{source} must hold a JSON object, got {type(data).__name__}")
    return data
