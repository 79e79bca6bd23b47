"""FLOP accounting: model FLOPs (MFU) and hardware FLOPs (HFU) of one training step.

Convention (printed by ``clusterplan predict``, see :data:`FLOP_CONVENTION`):

* A matmul of an (m x k) by a (k x n) matrix is ``2*m*n*k`` FLOPs. Forward FLOPs of a block are the
  sum of its matmuls: Q/K/V/output projections, the MLP (2 or 3 matrices), the MoE router and
  the ``top_k`` experts a token visits, and the attention core ``QK^T`` and ``AV``, counted as a
  full (non-causal) ``s x s`` product: ``4*b*s^2*(n_heads*d_head)`` per layer. Plus the LM head
  ``2*b*s*h*V``. Element-wise ops (norms, softmax, activations) count 0.
* Backward = 2x forward (input gradient + weight gradient), so training = 3x forward.
* Model FLOPs (MFU) exclude recomputation; hardware FLOPs (HFU) add the recomputed forward
  (full: the whole block; selective: the attention core). The LM head is never recomputed.

For a GPT (ffn = 4h, MHA, no GQA, biases ignored) this reproduces Narayanan et al., SC'21 eq. 3:
``96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h))`` hardware FLOPs with full recomputation, and
``72*B*s*l*h^2*(1 + s/(6h) + V/(12*l*h))`` model FLOPs (the V term is the same ``6*B*s*h*V`` in
both: eq. 3's ``V/(16lh)`` already excludes the head from recomputation).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model import ModelSpec

FLOP_CONVENTION = (
    "model FLOPs (MFU) = 3 x forward matmul FLOPs (2*m*n*k per matmul, attention core counted as a "
    "full s x s product, LM head included, element-wise ops 0); hardware FLOPs (HFU) add the "
    "recomputed forward (full: whole block, selective: attention core). Peak = device dense peak "
    "of the compute dtype."
)


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one transformer block for ``tokens`` tokens, split by where they go.

    qkv/proj/mlp/router: projection matmuls (scale with tokens); core: ``QK^T`` + ``AV``
    (scale with tokens x attended length).
    """

    qkv: float
    core: float
    proj: float
    mlp: float
    router: float

    @property
    def total(self) -> float:
        return self.qkv + self.core + self.proj + self.mlp + self.router

    @property
    def dense(self) -> float:
        """Everything except the attention core."""
        return self.qkv + self.proj + self.mlp + self.router


def layer_forward_flops(model: ModelSpec, tokens: float, attended: float) -> LayerFlops:
    """Forward matmul FLOPs of one block for ``tokens`` query tokens each attending to
    ``attended`` keys (= seq_len for a full sequence, no causal discount, as Megatron counts).

    Per Narayanan et al. SC'21 Sec. 3 / appendix: ``24*B*s*h^2 + 4*B*s^2*h`` for a GPT layer.
    A cross-attention block projects keys and values from ``tokens / attended *
    cross_attention_tokens`` encoder states and attends to those (no mask: all of them).
    """
    h = model.hidden_size
    *qkv_weights, (out_in, out_out, _) = model.attention_projections()
    rows = [tokens] * len(qkv_weights)
    if model.is_cross_block:
        rows[1] = tokens / attended * model.cross_attention_tokens  # K/V from the encoder states
        attended = model.cross_attention_tokens
    qkv = 2.0 * sum(r * i * o for r, (i, o, _) in zip(rows, qkv_weights))
    proj = 2.0 * tokens * out_in * out_out
    core = 2.0 * tokens * attended * (model.q_dim + model.attn_out_dim)  # Q K^T, then A V
    router = 2.0 * tokens * h * model.n_experts if model.is_moe else 0.0
    mlp = 2.0 * tokens * model.mlp_matrices * h * model.token_mlp_width
    return LayerFlops(qkv=qkv, core=core, proj=proj, mlp=mlp, router=router)


def head_forward_flops(model: ModelSpec, tokens: float) -> float:
    """LM head (logits) forward: ``2*tokens*h*V``."""
    return 2.0 * tokens * model.hidden_size * model.vocab_size


def op_sac_applies(model: ModelSpec, selective: str) -> bool:
    """Whether a runtime's selective recomputation ``selective`` is torchtitan's per-op policy on
    this model's blocks (dense blocks with standard attention; MoE, MLA and cross-attention models
    keep the attention-core rule)."""
    return (selective == "every_second_mm" and not model.is_moe and not model.is_mla
            and not model.cross_attention_layers)


def op_sac_gemms(model: ModelSpec, tokens: float, tp: int) -> list[tuple[float, float, float]]:
    """(M, N, K) of each ``aten.mm`` of a dense block on one tp rank in torchtitan's forward order:
    the query, key, value and output projections (separate matmuls), then the MLP's w1, w3
    (gated) and w2, or its two matmuls (torchtitan/models/llama/model.py)."""
    h, T, f = model.hidden_size, tokens, model.ffn_hidden_size
    gemms = [(T, model.q_dim / tp, h), (T, model.kv_dim / tp, h), (T, model.v_dim / tp, h),
             (T, h, model.attn_out_dim / tp)]
    up = [(T, f / tp, h)] * (model.mlp_matrices - 1)
    return gemms + up + [(T, h, f / tp)]


def op_sac_recomputed_gemms(model: ModelSpec, tokens: float, tp: int) -> list[tuple[float, float, float]]:
    """The matmuls torchtitan's ``op`` selective AC recomputes: every second one of the block in
    forward order (its policy counts ``aten.mm`` calls and saves the odd ones; for Llama: the key,
    output and w3 projections)."""
    return op_sac_gemms(model, tokens, tp)[1::2]


def recompute_forward_flops(layer: LayerFlops, recompute: str) -> float:
    """Forward FLOPs recomputed during backward (Korthikanti et al. 2022, Sec. 5):
    full = the whole block, selective = the attention core (QK^T, softmax, AV)."""
    if recompute == "full":
        return layer.total
    if recompute == "selective":
        return layer.core
    return 0.0


def step_flops(model: ModelSpec, global_batch: int, seq_len: int, recompute: str,
               selective: str = "attention_core") -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one optimizer step over ``global_batch`` sequences;
    ``selective``: the runtime's selective recomputation (``every_second_mm``: torchtitan's,
    :func:`op_sac_recomputed_gemms`, on dense standard-attention blocks)."""
    tokens = float(global_batch) * seq_len
    alt = model.alt_layers
    if recompute == "selective" and op_sac_applies(model, selective):
        model_flops, _ = step_flops(model, global_batch, seq_len, "none")
        redone = sum(2.0 * m * n * k for m, n, k in op_sac_recomputed_gemms(model, tokens, 1))
        return model_flops, model_flops + model.n_layers * redone
    kinds = [(n, layer_forward_flops(m, tokens, seq_len))
             for n, m in ((model.n_layers - alt, model), (alt, model.alt_block())) if n]
    head = head_forward_flops(model, tokens)
    model_flops = 3.0 * (sum(n * layer.total for n, layer in kinds) + head)
    hardware_flops = model_flops + sum(n * recompute_forward_flops(layer, recompute) for n, layer in kinds)
    return model_flops, hardware_flops


def megatron_eq3_flops(batch: int, seq_len: int, n_layers: int, hidden: int, vocab: int,
                       recompute: bool = True) -> float:
    """Narayanan et al. SC'21 eq. 3 (factor 96, with full recomputation) and its no-recompute
    form (factor 72 with the head term V/(12lh)), for a GPT with ffn = 4h."""
    B, s, l, h, V = batch, seq_len, n_layers, hidden, vocab
    if recompute:
        return 96.0 * B * s * l * h * h * (1 + s / (6.0 * h) + V / (16.0 * l * h))
    return 72.0 * B * s * l * h * h * (1 + s / (6.0 * h) + V / (12.0 * l * h))
