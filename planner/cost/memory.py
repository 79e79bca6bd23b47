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


def stage_parameters(model: ModelSpec, parallel) -> list[float]:
    """Parameters each pipeline rank holds per tp rank, before ZeRO sharding: its chunks'
    blocks, the embedding on rank 0, the LM head on the last virtual stage's rank (plus the
    tied embedding's copy there when pp > 1, as Megatron keeps it)."""
    P = parallel
    tp, pp, n_vs = P.tp, P.pp, P.pp * P.vpp
    layers = P.layers_per_stage(model.n_layers)
    tied_copy = model.tied_embeddings and pp > 1
    emb = model.embedding_params() / tp
    head = (model.head_params() + (model.vocab_size * model.hidden_size if tied_copy else 0)) / tp
    per_layer = model.layer_params() / tp
    last_rank = (n_vs - 1) % pp
    out = []
    for r in range(pp):
        params = sum(layers[k] for k in range(r, n_vs, pp)) * per_layer
        if r == 0:
            params += emb
        if r == last_rank:
            params += head
        out.append(params)
    return out


def stage_memories(model: ModelSpec, parallel, device, in_flight, attention: str,
                   framework=None) -> list:
    """Per pipeline rank ``(rank, layers, StageMemory)`` given the micro-batches in flight per
    rank (from the schedule).

    framework: a calibrated :class:`planner.hardware.FrameworkSpec` (CPU profile): its
    measured fragmentation and per-process training overhead replace the device's, and under
    TP the logits are the executor's (a local shard plus the all-gathered full-vocabulary
    logits every rank computes the loss on)."""
    P = parallel
    tp, pp, n_vs = P.tp, P.pp, P.pp * P.vpp
    b, s = P.micro_batch, P.seq_len
    bpe = activation_bytes_per_element(P.precision)
    layers = P.layers_per_stage(model.n_layers)
    params_all = stage_parameters(model, P)
    layer_params_rank = model.layer_params() / tp
    last_rank = (n_vs - 1) % pp
    one_layer = layer_activation_bytes(model, b, s, tp, P.cp, P.sequence_parallel, P.recompute,
                                       P.precision, attention)
    full_layer = (layer_activation_bytes(model, b, s, tp, P.cp, P.sequence_parallel, "none",
                                         P.precision, attention) if P.recompute == "full" else 0.0)
    out = []
    for r in range(pp):
        chunks = list(range(r, n_vs, pp))
        n_layers_r = sum(layers[k] for k in chunks)
        act = in_flight[r] * (sum(layers[k] * one_layer for k in chunks) / len(chunks)) + full_layer
        tokens = b * (s / P.cp)
        if framework is not None and tp > 1:
            logits = ((4 + bpe) * tokens * model.vocab_size + bpe * tokens * model.vocab_size / tp
                      if r == last_rank else 0.0)
        else:
            logits = (4 + bpe) * tokens * model.vocab_size / tp if r == last_rank else 0.0
        reserved = device.reserved_bytes if framework is None else framework.training_overhead_bytes
        frag = device.fragmentation_fraction if framework is None else framework.fragmentation_fraction
        mem = stage_memory(params=params_all[r], layer_params=layer_params_rank, activation_bytes=act,
                           logits_bytes=logits, precision=P.precision, sharding=P.sharding, dp=P.dp,
                           device_reserved=reserved, fragmentation=frag)
        out.append((r, n_layers_r, mem))
    return out


def peak_memory_bytes(model: ModelSpec, cluster, parallel, runtime=None) -> float:
    """Peak bytes of the largest rank, without simulating the schedule (for pruning).

    Equals ``predict(...).peak_memory_bytes`` for GPipe, 1F1B and interleaved (their
    in-flight counts depend only on the order, :func:`planner.schedule.closed_form_in_flight`);
    for ZB-H1 it uses 1F1B's limit ``p - i``, an upper bound of the simulated count."""
    from planner.cost.runtime import DEFAULT_RUNTIME
    from planner.schedule import closed_form_in_flight

    runtime = runtime or DEFAULT_RUNTIME
    P = parallel
    P.validate_for(model)
    sched = P.schedule if P.pp > 1 else ("interleaved" if P.vpp > 1 else "1f1b")
    in_flight = closed_form_in_flight(sched, P.pp, P.num_micro_batches, P.vpp)
    mems = stage_memories(model, P, cluster.node.device, in_flight, runtime.attention,
                          framework=cluster.node.framework)
    return max(mem.total_bytes for _, _, mem in mems)
