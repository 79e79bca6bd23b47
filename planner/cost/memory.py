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
  its backward. The two are not live at once (the head's backward ends before the first
  block's starts): the peak takes the larger (:func:`stage_memory`).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.cost import framework as fw
from planner.cost.flops import op_sac_applies, op_sac_gemms
from planner.cost.precision import activation_bytes_per_element, state_bytes_per_param
from planner.cost.routing import busiest_rank_load
from planner.cost.stacks import FUSED
from planner.executor_rules import ties_embeddings
from planner.model import ModelSpec


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
                           attention: str = "unfused", executor: bool = False,
                           selective: str = "attention_core", ep: int = 1) -> float:
    """Activation bytes one block keeps for its backward, per micro-batch and rank (under
    expert parallelism ``ep`` the busiest rank's routed tokens:
    :func:`planner.cost.routing.busiest_rank_load`; a cross-attention block keeps the keys and
    values of its encoder states, which are held once for all such blocks and not counted).

    Korthikanti et al. 2022 Sec. 4.1 itemised (bpe = bytes per element, 2 for fp16/bf16):
    replicated over tp (``/t`` with SP): norm inputs 2x bpe*sbh, QKV input bpe*sbh, fc1 input
    bpe*sbh, two dropout masks 1*sbh; tp-split: Q, K, V, attention output, MLP activations
    (4h + 4h for GELU, 3x f for SwiGLU); the attention core: softmax output bpe*a*s^2*b, dropout
    mask 1*a*s^2*b and dropout output bpe*a*s^2*b (``5*a*s^2*b`` at 2 bytes).

    executor: the local executor's modules as written (executor/model.py, parallel/tp.py, counted
    with ``SavedActivationMeter``): under SP the column-parallel linears keep their all-gathered
    input (``b*s*h``, not ``/t``), as DTensor's SP does (Megatron keeps the shard and gathers
    again in backward, Korthikanti Sec. 4.2.2); the unfused RMSNorm also keeps its normalised
    output before the weight (one more sbh per norm); SwiGLU keeps the SiLU output besides
    the gate, up and product tensors (4 f instead of 3 f).

    selective ``every_second_mm`` (torchtitan's ``op`` policy, :class:`planner.cost.runtime.Runtime`):
    the block's input, the outputs of the matmuls it saves (every odd one in forward order) and
    the attention kernel's output; element-wise intermediates are recomputed, not kept.
    """
    bpe = activation_bytes_per_element(precision)
    h = model.hidden_size
    s_local = seq_len / cp
    sbh = micro_batch * s_local * h
    rep_div = tp if sequence_parallel else 1
    if recompute == "full":
        return bpe * sbh / rep_div
    if recompute == "selective" and op_sac_applies(model, selective):
        tokens = micro_batch * s_local
        saved_mm = sum(n for _, n, _ in op_sac_gemms(model, tokens, tp)[0::2])
        return bpe * (sbh / rep_div + tokens * (saved_mm + model.attn_out_dim / tp))
    mask = 1 if model.dropout > 0 else 0
    linear_inputs_div = 1 if executor else rep_div
    norm_inputs = model.norms_per_block * (2 if executor and model.norm == "rmsnorm" else 1)
    replicated = (norm_inputs * bpe + 2 * mask) * sbh / rep_div + (bpe + bpe) * sbh / linear_inputs_div
    tokens = micro_batch * s_local
    attn_split = bpe * tokens * (model.q_dim + model.kv_dim + model.v_dim + model.attn_out_dim)
    attended = seq_len
    if model.is_cross_block:  # keys and values of the encoder states, every query attending to all
        encoder = micro_batch * model.cross_attention_tokens
        attn_split += bpe * (encoder - tokens) * (model.kv_dim + model.v_dim)
        attended = model.cross_attention_tokens
    if model.is_mla:  # each latent's norm input and up-projection input, on every tp rank
        replicated += 2 * bpe * tokens * (model.q_lora_rank + model.kv_lora_rank)
    mlp_tensors = (4 if executor else 3) if model.mlp == "swiglu" else 2
    width = model.token_mlp_width
    if model.is_moe:  # the busiest rank's share of the routed tokens (padded to capacity: the padding too)
        width += (busiest_rank_load(model, tokens * model.top_k, ep) - 1) * model.top_k * model.expert_ffn
    mlp_split = bpe * tokens * width * mlp_tensors
    split = (attn_split + mlp_split) / tp
    core = 0.0
    if recompute != "selective" and attention == "unfused":
        scores = micro_batch * model.n_heads * s_local * attended / tp
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


def logits_bytes_per_token(model: ModelSpec, tp: int, precision: str, fp32_loss: bool) -> float:
    """Bytes the loss needs per token on the last stage. Megatron's fused vocab-parallel cross
    entropy: the fp32 logits and their gradient in the compute dtype. ``fp32_loss`` (the
    executor; torchtitan, :attr:`planner.cost.runtime.Runtime.fp32_cross_entropy`):
    F.cross_entropy on fp32 logits keeps the fp32 log-softmax output plus two fp32 buffers of the
    same size in its backward (the NLL gradient, then the input gradient); with
    ``loss_parallel`` (TP) one more (its fused backward's zero-initialised gradient besides the
    exp and the result)."""
    if fp32_loss:
        per_vocab = (4 if tp > 1 else 3) * 4.0
    else:
        per_vocab = 4.0 + activation_bytes_per_element(precision)
    return per_vocab * model.vocab_size / tp


def executor_saved_logits_bytes_per_token(model: ModelSpec, tp: int, executor: bool) -> float:
    """Bytes per token the executor's loss keeps for backward of every micro-batch in flight on
    the last stage besides the one at the peak: ``F.cross_entropy``'s fp32 log-softmax output
    (``loss_parallel``: its fp32 exp), 4 bytes per vocabulary entry of the tp rank. Under 1F1B
    the last stage holds one micro-batch, so this counts only for GPipe, interleaved and the
    executor's zero-bubble schedule."""
    return 4.0 * model.vocab_size / tp if executor else 0.0


def executor_zb_held_grad_bytes_per_token(model: ModelSpec, n_layers: int, last_stage: bool, tp: int,
                                          sequence_parallel: bool, precision: str) -> float:
    """Bytes per token of one micro-batch that the executor's zero-bubble schedule keeps from its
    input-gradient pass to its weight pass: torch's ``stage_backward_input``
    (torch/distributed/pipelining/_backward.py) puts a pre-hook on every autograd node where a
    weight's path branches off the input path and stores the gradient arriving there
    (``param_groups[...]["grads"]``) until ``stage_backward_weight`` (Qi et al., "Zero Bubble
    Pipeline Parallelism", ICLR 2024, sec. 2: W needs the output gradient of each weight's op).
    That gradient is each op's output: per block every linear's (q, k, v, the MLP's first
    matrices per tp rank; the output projection and the last MLP matrix whole, per tp rank
    with SP) and both norms'; on the last stage also the final norm's and the LM head's
    logits (vocabulary per tp rank)."""
    bpe = activation_bytes_per_element(precision)
    h = model.hidden_size
    rows = tp if sequence_parallel else 1
    mlp_in = (2 if model.mlp == "swiglu" else 1) * model.ffn_hidden_size
    per_block = (model.q_dim + 2 * model.kv_dim + mlp_in) / tp + 2 * h / rows + 2 * h / rows
    head = (h / rows + model.vocab_size / tp) if last_stage else 0.0
    return bpe * (n_layers * per_block + head)


def executor_untied_head_params(model: ModelSpec, tp: int, pp: int, executor: bool) -> float:
    """Head parameters per tp rank the executor adds by untying a tied head under TP without
    PP (executor/train.py ``tie_embeddings``; with PP the copy is already counted)."""
    if executor and model.tied_embeddings and pp == 1 and not ties_embeddings(model, tp, pp):
        return model.vocab_size * model.hidden_size / tp
    return 0.0


def peak_transients(logits_bytes: float, gathered_bytes: float, block_working_bytes: float
                    ) -> tuple[float, float, float]:
    """(logits, gathered, block working set) at the rank's peak: the logits live from the end of
    the forward through the head's backward, before any block's backward starts, so the peak
    holds either them or a block's backward working set (its gathered ZeRO-3 parameters, its
    recomputed activations), whichever is larger."""
    if logits_bytes > gathered_bytes + block_working_bytes:
        return logits_bytes, 0.0, 0.0
    return 0.0, gathered_bytes, block_working_bytes


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
                 fragmentation: float, block_working_bytes: float = 0.0,
                 sharded_params: float | None = None, grad_bytes: float | None = None) -> StageMemory:
    """Combine states and activations of one rank.

    params: parameters this rank holds before ZeRO sharding (its stage's share of layers,
    embedding/head, already divided by tp). layer_params: one block's parameters on this rank
    (ZeRO-3/FSDP keep two gathered blocks: the one computing and the one prefetched).
    activation_bytes: what the in-flight micro-batches keep for backward. block_working_bytes:
    what a block's backward needs on top (its full activations under full recomputation).
    The logits or the block working set, whichever is larger, is in the peak
    (:func:`peak_transients`); the other is reported as 0. sharded_params: what ZeRO divides over
    dp (with expert parallelism every expert's state is spread over the ``dp/ep`` ranks holding
    it, which is all experts over dp: the stage's parameters as if ``ep`` were 1); default
    ``params``. grad_bytes: bytes per gradient where the stack holds them otherwise than the
    precision does (:meth:`planner.cost.runtime.Runtime.accumulated_grad_bytes`).
    """
    w_b, g_b, o_b = state_bytes_per_param(precision)
    g_b = g_b if grad_bytes is None else grad_bytes
    w_div, g_div, o_div = shard_divisors(sharding, dp)
    shared = params if sharded_params is None else sharded_params

    def held(div: int) -> float:
        return shared / div if div > 1 else params

    weights = held(w_div) * w_b
    logits_bytes, gathered, block_working_bytes = peak_transients(
        logits_bytes, 2 * layer_params * w_b if w_div > 1 else 0.0, block_working_bytes)
    weights += gathered
    activation_bytes += block_working_bytes
    grads = held(g_div) * g_b
    optimizer = held(o_div) * o_b
    tensors = weights + grads + optimizer + activation_bytes + logits_bytes
    reserved = device_reserved + fragmentation * tensors
    return StageMemory(weights, grads, optimizer, activation_bytes, logits_bytes, reserved)


def rank_layer_params(model: ModelSpec, tp: int, ep: int = 1, etp: int = 0) -> float:
    """One block's parameters on a rank: all of it over tp, its routed experts over etp*ep
    (``etp`` 0: tp)."""
    experts = model.expert_params_per_layer()
    return (model.layer_params() - experts) / tp + experts / ((etp or tp) * ep)


def stage_parameters(model: ModelSpec, parallel, ep: int | None = None) -> list[float]:
    """Parameters each pipeline rank holds per tp rank, before ZeRO sharding: its chunks'
    blocks (their experts over ``ep``, default the plan's), the embedding on rank 0, the LM head
    on the last virtual stage's rank (plus the tied embedding's copy there when pp > 1, as
    Megatron keeps it)."""
    P = parallel
    tp, pp, n_vs = P.tp, P.pp, P.pp * P.vpp
    kinds = model.block_kinds(P.layers_per_stage(model.n_layers))
    tied_copy = model.tied_embeddings and pp > 1
    emb = model.embedding_params() / tp
    head = (model.head_params() + (model.vocab_size * model.hidden_size if tied_copy else 0)) / tp
    per_layer = rank_layer_params(model, tp, P.ep, P.etp) if ep is None else rank_layer_params(model, tp, ep)
    per_dense = rank_layer_params(model.alt_block(), tp)
    last_rank = (n_vs - 1) % pp
    out = []
    for r in range(pp):
        params = sum(kinds[k][0] * per_dense + kinds[k][1] * per_layer for k in range(r, n_vs, pp))
        if r == 0:
            params += emb
        if r == last_rank:
            params += head
        out.append(params)
    return out


def stage_memories(model: ModelSpec, parallel, device, in_flight, attention: str,
                   stack=FUSED, selective: str = "attention_core", fp32_loss: bool = False,
                   grad_bytes: float | None = None) -> list:
    """Per pipeline rank ``(rank, layers, StageMemory)`` given the micro-batches in flight per
    rank (from the schedule).

    stack: :mod:`planner.cost.stacks`: its fragmentation and per-process overhead; under the
    executor's the executor's own structure applies (DTensor SP keeps gathered linear inputs,
    its loss buffers, a tied head untied under TP, the zero-bubble gradients held to W)."""
    P = parallel
    tp, pp, n_vs = P.tp, P.pp, P.pp * P.vpp
    b, s = P.micro_batch, P.seq_len
    kinds = model.block_kinds(P.layers_per_stage(model.n_layers))
    params_all = stage_parameters(model, P)
    params_sharded = stage_parameters(model, P, ep=1)
    dense = model.alt_block()
    # a block's gathered working copy and its activations: the larger kind where blocks differ
    layer_params_rank = max(rank_layer_params(model, tp, P.ep, P.etp), rank_layer_params(dense, tp))
    last_rank = (n_vs - 1) % pp
    executor = stack.executor

    def activations(m: ModelSpec, recompute: str) -> float:
        return layer_activation_bytes(m, b, s, tp, P.cp, P.sequence_parallel, recompute, P.precision, attention,
                                      executor=executor, selective=selective, ep=P.ep)

    one_layer, one_dense = activations(model, P.recompute), activations(dense, P.recompute)
    full_layer = max(activations(model, "none"), activations(dense, "none")) if P.recompute == "full" else 0.0
    tokens = b * (s / P.cp)
    logits_per_token = logits_bytes_per_token(model, tp, P.precision, executor or fp32_loss)
    untied_head = executor_untied_head_params(model, tp, pp, executor)
    zb_pending = (fw.zb_pending_weight_passes(pp, P.num_micro_batches)
                  if executor and pp > 1 and P.schedule == "zb" else None)
    out = []
    for r in range(pp):
        chunks = list(range(r, n_vs, pp))
        n_layers_r = sum(sum(kinds[k]) for k in chunks)
        act = in_flight[r] * (sum(kinds[k][0] * one_dense + kinds[k][1] * one_layer for k in chunks) / len(chunks))
        logits = logits_per_token * tokens if r == last_rank else 0.0
        if r == last_rank:  # the loss state of the other micro-batches in flight (executor)
            others_in_flight = max(0.0, in_flight[r] / len(chunks) - 1.0)
            act += others_in_flight * executor_saved_logits_bytes_per_token(model, tp, executor) * tokens
        if zb_pending:  # output gradients held from B to W of the micro-batches pending W
            act += zb_pending[r] * tokens * executor_zb_held_grad_bytes_per_token(
                model, n_layers_r, r == last_rank, tp, P.sequence_parallel, P.precision)
        reserved, frag = stack.reserved_bytes(device), stack.fragmentation(device)
        extra = untied_head if r == last_rank else 0.0
        mem = stage_memory(params=params_all[r] + extra, sharded_params=params_sharded[r] + extra,
                           layer_params=layer_params_rank, activation_bytes=act,
                           logits_bytes=logits, precision=P.precision, sharding=P.sharding, dp=P.data_parallel_ranks,
                           device_reserved=reserved, fragmentation=frag, block_working_bytes=full_layer,
                           grad_bytes=grad_bytes)
        out.append((r, n_layers_r, mem))
    return out
