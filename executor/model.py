"""A decoder-only transformer built from :class:`planner.model.ModelSpec`.

Module names follow the planner's layer graph so a pipeline stage cut maps one to one:
``embed`` (token + learned position embedding), ``layers.{i}`` (a ``ModuleDict`` keyed by the
global layer index, so a pipeline stage that keeps layers 4..7 still calls them ``layers.4`` ..),
``final_norm``, ``lm_head``.

GPT style (``mlp="gelu"``, ``norm="layernorm"``, ``position="learned"``) and Llama style
(``mlp="swiglu"``, ``norm="rmsnorm"``, ``position="rope"``, GQA via ``n_kv_heads``). MoE blocks
(``n_experts > 0``) use a top-k softmax router and loop over the experts (Shazeer et al., 2017;
Fedus et al., 2021) — simple, not fast. Attention heads are inferred from the local weight shape
(``view(b, s, -1, d_head)``) so the same code runs on a tensor-parallel shard.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.errors import InputError
from planner.model import ModelSpec

from executor import recompute


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): x / rms(x) · w."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def make_norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return RMSNorm(spec.hidden_size)
    return nn.LayerNorm(spec.hidden_size, bias=spec.bias)


def rope_tables(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary position embeddings (Su et al., 2021, eq. 34), shape (s, d_head/2)."""
    inv = 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (b, s, heads, d) by the position angle."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


class Embedding(nn.Module):
    """Token embedding plus learned absolute positions (GPT-2) when the spec has them."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.tok = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos = nn.Embedding(spec.seq_len, spec.hidden_size) if spec.position == "learned" else None
        self.dropout = spec.dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens)
        if self.pos is not None:
            h = h + self.pos(torch.arange(tokens.shape[1], device=tokens.device))[None]
        return F.dropout(h, self.dropout, self.training)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal scaled dot-product attention over (batch, heads, seq, d_head) Q, K, V; K/V may
    have fewer heads than Q (grouped-query attention)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)


class Attention(nn.Module):
    """Causal multi-head / grouped-query attention; the score·softmax·value core is the part
    selective recomputation checkpoints (Korthikanti et al., 2022, sec. 5)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        h = spec.hidden_size
        self.d_head = spec.d_head
        self.rope = spec.position == "rope"
        self.q_proj = nn.Linear(h, spec.q_dim, bias=spec.bias)
        self.k_proj = nn.Linear(h, spec.kv_dim, bias=spec.bias)
        self.v_proj = nn.Linear(h, spec.kv_dim, bias=spec.bias)
        self.o_proj = nn.Linear(spec.q_dim, h, bias=spec.bias)
        self.dropout = spec.dropout
        self.recompute = "none"
        if self.rope:
            cos, sin = rope_tables(spec.seq_len, spec.d_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention_core(q, k, v, self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.d_head)
        k = self.k_proj(x).view(b, s, -1, self.d_head)
        v = self.v_proj(x).view(b, s, -1, self.d_head)
        if self.rope:
            cos, sin = self.rope_cos[:s].to(x.device), self.rope_sin[:s].to(x.device)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.recompute == "selective":
            out = recompute.checkpointed(self.core, q, k, v)
        else:
            out = self.core(q, k, v)
        out = out.transpose(1, 2).reshape(b, s, -1)
        return F.dropout(self.o_proj(out), self.dropout, self.training)


class MLP(nn.Module):
    """GELU MLP (fc_in, fc_out) or SwiGLU (gate_proj, up_proj, down_proj; Shazeer, 2020)."""

    def __init__(self, spec: ModelSpec, ffn: int):
        super().__init__()
        h = spec.hidden_size
        self.swiglu = spec.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(h, ffn, bias=spec.bias)
            self.up_proj = nn.Linear(h, ffn, bias=spec.bias)
            self.down_proj = nn.Linear(ffn, h, bias=spec.bias)
        else:
            self.up_proj = nn.Linear(h, ffn, bias=spec.bias)
            self.down_proj = nn.Linear(ffn, h, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class MoE(nn.Module):
    """Top-k routed experts: y = sum_k softmax(router(x))_k · expert_k(x) over the k chosen
    experts, weights renormalised over the top k (Mixtral). A loop over experts; with expert
    parallelism (``ep_group`` set by :func:`executor.parallel.ep.shard_experts`) the tokens go to
    the rank holding their expert."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k = spec.top_k
        self.router = nn.Linear(spec.hidden_size, spec.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(spec, spec.expert_ffn) for _ in range(spec.n_experts))
        self.ep_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.router(flat).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        if self.ep_group is not None:
            from executor.parallel.ep import dispatch_combine

            return dispatch_combine(self, flat, weights, chosen).view(shape)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                # keep the expert in the graph so every rank reduces the same gradients
                out = out + 0.0 * expert(flat[:1]).sum()
                continue
            out = out.index_add(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        return out.view(shape)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.attn_norm = make_norm(spec)
        self.attn = Attention(spec)
        self.mlp_norm = make_norm(spec)
        self.mlp = MoE(spec) if spec.is_moe else MLP(spec, spec.ffn_hidden_size)
        self.dropout = spec.dropout
        self.recompute = "none"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + F.dropout(self.mlp(self.mlp_norm(x)), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute == "full":
            return recompute.checkpointed(self._forward, x)
        return self._forward(x)


class Transformer(nn.Module):
    """The whole model or one pipeline stage of it (absent parts are ``None``)."""

    def __init__(self, spec: ModelSpec, tie_embeddings: bool):
        super().__init__()
        self.spec = spec
        self.embed = Embedding(spec)
        dense = spec.dense_block()  # the leading dense_layers blocks of an MoE model
        self.layers = nn.ModuleDict({str(i): Block(dense if i < spec.dense_layers else spec)
                                     for i in range(spec.n_layers)})
        self.final_norm = make_norm(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.tied = bool(tie_embeddings)
        if self.tied:
            self.lm_head.weight = self.embed.tok.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for layer in self.layers.values():
            h = layer(h)
        if self.final_norm is not None:
            h = self.final_norm(h)
        if self.lm_head is not None:
            h = self.lm_head(h)
        return h

    def keep_stage(self, layer_ids: list[int], first: bool, last: bool) -> "Transformer":
        """Drop everything a pipeline stage does not own (in place); names stay global."""
        for name in list(self.layers.keys()):
            if int(name) not in layer_ids:
                del self.layers[name]
        if not first:
            self.embed = None
        if not last:
            self.final_norm = None
            self.lm_head = None
        return self


def init_weights(model: Transformer, spec: ModelSpec) -> None:
    """GPT-2 init: N(0, 0.02) for linears and embeddings, output projections scaled by
    1/sqrt(2·n_layers) (Radford et al., 2019), zero biases, unit norms."""
    std = 0.02
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scale = 1.0 / math.sqrt(2 * spec.n_layers) if name.endswith(("o_proj", "down_proj")) else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def build_model(spec: ModelSpec, tie_embeddings: bool | None = None, seed: int = 0) -> Transformer:
    """The full model on CPU in fp32, initialised deterministically from ``seed`` (every rank
    builds the same weights, then keeps / shards its part)."""
    if spec.n_experts and spec.top_k < 1:
        raise InputError("top_k", "MoE needs top_k >= 1")
    tie = spec.tied_embeddings if tie_embeddings is None else tie_embeddings
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Transformer(spec, tie)
        init_weights(model, spec)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over all tokens of the (micro-)batch, in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
