"""Memory per rank: weights, gradients, optimizer state, activations, logits, reserved.

* States (Rajbhandari et al. 2020, ZeRO, Sec. 3): mixed-precision Adam keeps 2 (half weights)
  + 2 (half grads) + 12 (fp32 master, m, v) bytes per parameter; fp32 training 4 + 4 + 8.
  ZeRO-1 shards the optimizer state over dp, ZeRO-2 also the gradients, ZeRO-3 / FSDP also the
  weights (plus the gathered working copy of the layers in flight: prefetch keeps two blocks).
* Activations per block (Korthikanti et al. 2022, Sec. 4, Table 2), at 2 bytes per element:
  ``s*b*h*(34 + 5*a*s/h)`` without parallelism; ``s*b*h*(10 + 24/t + 5*a*s/(h*t))`` with tensor
  parallel t; ``s*b*h/t*(34 + 5*a*s/h)`` with sequence parallel; selective recomputation drops
  the ``5*a*s/h`` term; full recomputation keeps the block input ``2*s*b*h`` (``/t`` with SP).
  The terms are derived per tensor (below) so they follow GQA, SwiGLU, MoE, cp, fp32 (4 bytes
  per element), no dropout (no 1-byte masks, no dropout output of the scores) and flash
  attention (no ``s x s`` tensors).
* Micro-batches in flight per schedule come from the simulated timeline (1F1B: ``p - i`` on
  stage i; GPipe: m; interleaved per Narayanan et al. SC'21 Sec. 2.2.2).
* The last stage holds the fp32 logits of one micro-batch: ``b*s*V*4/t`` (plus their gradient
  in the compute dtype); with full recomputation one block's full activations are live during
  its backward.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.cost.compute import activation_bytes_per_element
from planner.model import ModelSpec


def state_bytes_per_param(precision: str) -> tuple[float, float, float]:
    """(weights, grads, optimizer) bytes per parameter for Adam."""
    if precision == "fp32":
        return 4.0, 4.0, 8.0
    return 2.0, 2.0, 12.0


def shard_divisors(sharding: str, dp: int) -> tuple[int, int, int]:
    """(weights, grads, optimizer) sharding factors over the dp group."""
    if sharding == "zero1":
        return 1, 1, dp
    if sharding == "zero2":
        return 1, dp, dp
    if sharding in ("zero3", "fsdp"):
        return dp, dp, dp
    return 1, 1, 1


def layer_activation_bytes(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, cp: int,
                           sequence_parallel: bool, recompute: str, precision: str,
                           attention: str = "unfused") -> float:
    """Activation bytes one block keeps for its backward, per micro-batch and rank.

    Korthikanti et al. 2022 Sec. 4.1 itemised (bpe = bytes per element, 2 for fp16/bf16):
    replicated over tp (``/t`` with SP): norm inputs 2x bpe*sbh, QKV input bpe*sbh, fc1 input
    bpe*sbh, two dropout masks 1*sbh; tp-split: Q, K, V, attention output, MLP activations
    (4h + 4h for GELU, 3x f for SwiGLU); the attention core: softmax output bpe*a*s^2*b, dropout
    mask 1*a*s^2*b and dropout output bpe*a*s^2*b (``5*a*s^2*b`` at 2 bytes).
    """
    bpe = activation_bytes_per_element(precision)
    h = model.hidden_size
    s_local = seq_len / cp
    sbh = micro_batch * s_local * h
    rep_div = tp if sequence_parallel else 1
    if recompute == "full":
        return bpe * sbh / rep_div
    mask = 1 if model.dropout > 0 else 0
    replicated = (2 * bpe + bpe + bpe + 2 * mask) * sbh / rep_div
    tokens = micro_batch * s_local
    q, kv = model.q_dim, model.kv_dim
    attn_split = bpe * tokens * (q + kv) + bpe * tokens * kv + bpe * tokens * q
    if model.is_moe:
        f = model.expert_ffn
        mult = model.top_k
    else:
        f = model.ffn_hidden_size
        mult = 1
    mlp_split = bpe * tokens * f * (3 if model.mlp == "swiglu" else 2) * mult
    split = (attn_split + mlp_split) / tp
    core = 0.0
    if recompute != "selective" and attention == "unfused":
        scores = micro_batch * model.n_heads * s_local * seq_len / tp
        core = (bpe + (1 + bpe if model.dropout > 0 else 0)) * scores
    return replicated + split + core


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False,
                            recompute: str = "none") -> float:
    """The closed forms of Korthikanti et al. 2022 (Table 2), fp16, GPT with dropout."""
    if recompute == "full":
        return 2.0 * s * b * h / (t if sp else 1)
    attn = 0.0 if recompute == "selective" else 5.0 * a * s / h
    if sp:
        return s * b * h / t * (34 + attn)
    return s * b * h * (10 + 24.0 / t + attn / t)


@dataclass(frozen=True)
class StageMemory:
    """Peak bytes on the busiest rank of one pipeline stage."""

    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    logits_bytes: float
    reserved_bytes: float

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.grads_bytes + self.optimizer_bytes
                + self.activations_bytes + self.logits_bytes + self.reserved_bytes)

    def to_dict(self) -> dict:
        return {"weights_bytes": self.weights_bytes, "grads_bytes": self.grads_bytes,
                "optimizer_bytes": self.optimizer_bytes, "activations_bytes": self.activations_bytes,
                "logits_bytes": self.logits_bytes, "reserved_bytes": self.reserved_bytes}


def stage_memory(*, params: float, layer_params: float, activation_bytes: float, logits_bytes: float,
                 precision: str, sharding: str, dp: int, device_reserved: float,
                 fragmentation: float) -> StageMemory:
    """Combine states and activations of one rank.

    params: parameters this rank holds before ZeRO sharding (its stage's share of layers,
    embedding/head, already divided by tp). layer_params: one block's parameters on this rank
    (ZeRO-3/FSDP keep two gathered blocks: the one computing and the one prefetched).
    """
    w_b, g_b, o_b = state_bytes_per_param(precision)
    w_div, g_div, o_div = shard_divisors(sharding, dp)
    weights = params * w_b / w_div
    if w_div > 1:
        weights += 2 * layer_params * w_b
    grads = params * g_b / g_div
    optimizer = params * o_b / o_div
    tensors = weights + grads + optimizer + activation_bytes + logits_bytes
    reserved = device_reserved + fragmentation * tensors
    return StageMemory(weights, grads, optimizer, activation_bytes, logits_bytes, reserved)
