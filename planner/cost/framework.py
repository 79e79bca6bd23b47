"""The executor's own structure, for profiles with a calibrated ``framework:`` section.

Where the local executor (``executor/``) does something a production stack does not, the cost
model follows the executor as it is, but only for profiles that carry
:class:`planner.hardware.FrameworkSpec` (the CPU profile ``clusterplan calibrate`` writes); GPU
profiles have none and keep the Megatron-style model of :mod:`planner.cost.compute` and
:mod:`planner.cost.step` unchanged.

Facts of the executor's code (torch 2.13) used here:

* aten ops per transformer block and for embedding + final norm + LM head + loss, forward and
  backward, per recompute mode (:data:`BLOCK_OPS`, :data:`EDGE_OPS`): counted with a
  ``TorchDispatchMode`` on ``executor.model`` (``executor/bench/framework.py`` counts them again
  at calibration and the profile notes both). Each op pays ``op_forward_s`` / ``op_backward_s``.
* ``AdamW(foreach=False)``: :data:`ADAM_OPS_PER_PARAM` ops per parameter tensor and
  :data:`ADAMW_BYTES_PER_PARAM` bytes per parameter (at the profile's ``adamw`` rate).
* Element-wise traffic (:func:`block_elementwise_bytes`): the executor's RMSNorm and RoPE are
  eager chains of aten ops in fp32 (``executor/model.py``), SwiGLU is ``silu(gate) * up``
  (two kernels), there is no fused bias-dropout-add, and backward adds the input gradients of
  every tensor read twice (the residual stream, the Q/K/V input, the gate/up input) and sums
  each bias gradient. Bytes read + written per element, counted with a ``TorchDispatchMode``
  (tests/test_elementwise_bytes.py counts them again on the executor's block). Each kind of
  :data:`ELEMENTWISE_CLASSES` runs at its own calibrated rate where the profile has one
  (``FrameworkSpec.elementwise_rates``; one eager thread runs an add at ~25 GB/s and a tanh
  GELU at ~2), else at the device's pooled memory-bound rate.
* Tensor parallel (``executor/parallel/tp.py``): Q, K, V are three ColwiseParallel linears and
  the MLP's up (and gate) too, each wrapping the same replicated input as its own DTensor, so the
  backward all-reduces the input gradient once per column-parallel linear (Megatron fuses QKV:
  one); the token embedding is row-parallel and the LM head column-parallel over the
  vocabulary (two more TP modules, :func:`tp_modules`), the loss vocabulary-parallel
  (``loss_parallel``: three per-token all-reduces forward, a local backward), the head's input
  gradient all-reduced once backward.
* Zero bubble (``executor/parallel/pp.py``: ``ScheduleInterleavedZeroBubble``, one stage per
  rank): the input-gradient step B keeps the micro-batch's autograd graph for its weight-gradient
  step W, so activations live from F to W; torch's order holds ``min(p, m)`` of them on every
  rank (:func:`zb_in_flight`), where ZB-H1's own accounting (Qi et al. 2024) frees them at B.
* FSDP2 (``executor/parallel/fsdp.py``): one ``fully_shard`` unit per block, one for the
  untied embedding, one for the root module; ZeRO-2 is FSDP2 without reshard after forward
  (no second all-gather in backward), ZeRO-3/FSDP with it.
"""
from __future__ import annotations

from planner.cost.comm import GroupShape, collective_time
from planner.executor_rules import ties_embeddings
from planner.hardware import NodeSpec
from planner.model import ModelSpec

ADAM_OPS_PER_PARAM = 10
"""aten ops of one parameter's ``torch.optim.AdamW(foreach=False)`` update (counted)."""

# (mlp, norm, position, bias, recompute) -> (forward ops, backward ops) of one block
BLOCK_OPS: dict[tuple[str, str, str, bool, str], tuple[int, int]] = {}
# (norm, position) -> (forward, backward) ops of embedding + final norm + LM head + loss
EDGE_OPS: dict[tuple[str, str], tuple[int, int]] = {
    ("layernorm", "learned"): (15, 22), ("layernorm", "rope"): (11, 19),
    ("rmsnorm", "learned"): (21, 37), ("rmsnorm", "rope"): (17, 34),
}
_COUNTS = """
gelu layernorm learned 1 39 93 38 101 38 173
gelu layernorm learned 0 39 73 38 81 38 149
gelu layernorm rope 1 69 119 68 127 68 229
gelu layernorm rope 0 69 99 68 107 68 205
gelu rmsnorm learned 1 51 123 50 131 48 223
gelu rmsnorm learned 0 51 105 50 113 48 205
gelu rmsnorm rope 1 81 149 80 157 78 279
gelu rmsnorm rope 0 81 131 80 139 78 261
swiglu layernorm learned 1 44 108 43 116 43 201
swiglu layernorm learned 0 44 85 43 93 43 174
swiglu layernorm rope 1 74 134 73 142 73 257
swiglu layernorm rope 0 74 111 73 119 73 230
swiglu rmsnorm learned 1 56 138 55 146 53 251
swiglu rmsnorm learned 0 56 117 55 125 53 230
swiglu rmsnorm rope 1 86 164 85 172 83 307
swiglu rmsnorm rope 0 86 143 85 151 83 286
"""
for _line in _COUNTS.strip().splitlines():
    _mlp, _norm, _pos, _bias, *_n = _line.split()
    _n = [int(v) for v in _n]
    for _i, _rc in enumerate(("none", "selective", "full")):
        BLOCK_OPS[(_mlp, _norm, _pos, _bias == "1", _rc)] = (_n[2 * _i], _n[2 * _i + 1])


RMSNORM_FP32_BYTES = (28, 96)
"""(forward, backward) bytes per element of the executor's RMSNorm in fp32: forward pow, mean,
two muls (7 fp32 passes), backward 24 passes (the muls' and pow's gradients, the mean's
expansion, the accumulation of x's two gradient paths)."""
ROPE_FP32_BYTES = (36, 56)
"""(forward, backward) bytes per rotated element of the executor's ``apply_rope`` in fp32: four
half-width muls, a sub, an add and the stack (9 passes); backward 14."""
ADAMW_BYTES_PER_PARAM = 84
"""Bytes read + written per parameter by one ``AdamW(foreach=False)`` step in fp32 (weight decay,
the two moment updates, the bias-corrected denominator, the ``addcdiv_``): 21 passes, counted
with a ``TorchDispatchMode`` (tests/test_elementwise_bench.py)."""
FP32_CAST_BYTES = 12
"""An eager fp32 chain on half-precision input casts in (2 + 4 bytes) and out (4 + 2), each way."""


def _fp32_cast_bytes(bpe: int) -> int:
    """Cast bytes per element of an eager fp32 chain on activations of ``bpe`` bytes."""
    return FP32_CAST_BYTES if bpe != 4 else 0


def elementwise_bytes_per_element(kind: str, bpe: int) -> tuple[int, int]:
    """(forward, backward) bytes read + written per element of one ``kind`` of
    :data:`ELEMENTWISE_CLASSES` on activations of ``bpe`` bytes: the counts behind
    :func:`block_elementwise_bytes` (and the calibration's conversion of times into rates)."""
    cast = _fp32_cast_bytes(bpe)
    table = {
        "arith": (3 * bpe, 3 * bpe),  # read two, write one (a gradient sum in backward)
        "rmsnorm": (RMSNORM_FP32_BYTES[0] + cast, RMSNORM_FP32_BYTES[1] + cast),
        "layernorm": (2 * bpe, 3 * bpe),  # fused native_layer_norm: read x, write y; dy, x -> dx
        "gelu": (2 * bpe, 3 * bpe),       # gelu; gelu_backward reads dy and x, writes dx
        "swiglu": (5 * bpe, 9 * bpe),     # silu(gate), * up; silu_backward and the mul's two grads
        "rope": (ROPE_FP32_BYTES[0] + cast, ROPE_FP32_BYTES[1] + cast),
        "adamw": (ADAMW_BYTES_PER_PARAM, ADAMW_BYTES_PER_PARAM),  # fp32 master weights and states
    }
    return table[kind]


def norm_bytes_per_element(model: ModelSpec, bpe: int) -> tuple[int, int]:
    """(forward, backward) bytes per element of one executor norm: the eager fp32 RMSNorm, or the
    fused ``native_layer_norm`` (read x, write y; backward read dy and x, write dx)."""
    return elementwise_bytes_per_element(norm_kind(model), bpe)


def norm_kind(model: ModelSpec) -> str:
    """The :data:`ELEMENTWISE_CLASSES` entry of the model's norm."""
    return "rmsnorm" if model.norm == "rmsnorm" else "layernorm"


def block_elementwise_bytes(model: ModelSpec, tokens: float, rows: float, tp: int,
                            bpe: int) -> dict[str, tuple[float, float, float]]:
    """Per kind of :data:`ELEMENTWISE_CLASSES`, (forward bytes, backward bytes, forward bytes of
    one call) read + written by the element-wise ops of one executor block on one tp rank: the
    two norms and residual adds over ``rows`` (``tokens / tp`` under sequence parallelism), the
    activation over the tp rank's FFN columns, RoPE over its Q and K, bias gradients and
    gradient accumulations in backward. One call's size (what the measured rate depends on):
    a norm's, the activation's, the mean of RoPE's Q and K calls, a residual add's.
    ``bpe``: bytes of an activation."""
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    routed = model.top_k if model.is_moe else 1
    ffn = (model.expert_ffn if model.is_moe else model.ffn_hidden_size) / tp * routed
    add = 3 * bpe
    arith_f = 2 * add * rows * h                 # two residual adds
    arith_b = 2 * add * rows * h                 # the residual stream's two gradient sums
    arith_b += 2 * add * tokens * h              # Q, K, V input gradients summed
    out: dict[str, tuple[float, float, float]] = {}
    norm_f, norm_b = norm_bytes_per_element(model, bpe)
    out[norm_kind(model)] = (2 * norm_f * rows * h, 2 * norm_b * rows * h, norm_f * rows * h)
    act = "swiglu" if model.mlp == "swiglu" else "gelu"
    act_f, act_b = elementwise_bytes_per_element(act, bpe)
    out[act] = (act_f * tokens * ffn, act_b * tokens * ffn, act_f * tokens * ffn)
    if act == "swiglu":
        arith_b += add * tokens * h              # gate and up input gradients summed
    if model.position == "rope":
        rope_f, rope_b = elementwise_bytes_per_element("rope", bpe)
        rotated = tokens * (q + kv) / tp
        out["rope"] = (rope_f * rotated, rope_b * rotated, rope_f * rotated / 2)
    if model.bias:  # each bias gradient: a sum over the tokens of its output gradient
        arith_b += bpe * tokens * ((q + 2 * kv) / tp + (model.mlp_matrices - 1) * ffn + 2 * h)
    if model.dropout > 0:  # two dropouts (attention output, MLP output): x, out, a byte mask
        arith_f += 2 * (2 * bpe + 1) * rows * h
        arith_b += 2 * (2 * bpe + 1) * rows * h
    out["arith"] = (arith_f, arith_b, add * rows * h)
    return out


def _key_parts(model: ModelSpec) -> tuple[str, str, str]:
    mlp = "swiglu" if model.mlp == "swiglu" else "gelu"
    norm = "rmsnorm" if model.norm == "rmsnorm" else "layernorm"
    pos = "rope" if model.position == "rope" else "learned"
    return mlp, norm, pos


EP_DISPATCH_OPS = (20, 12)
"""(forward, backward) ops of one expert-parallel dispatch and combine in ``executor/parallel/ep.py``
beyond the experts' own: routing bookkeeping (arange, repeat, div, argsort, bincount, gathers,
index_add, the product with the weights) and its four all-to-all calls (counted from the code)."""


def block_ops(model: ModelSpec, recompute: str, ep: int = 1, dispatch_measured: bool = False) -> tuple[int, int]:
    """(forward, backward) aten ops of one executor block per micro-batch. MoE blocks: the
    dense block's count plus one expert MLP's per expert the rank holds (``n_experts / ep``), and
    under expert parallelism the dispatch's bookkeeping (an estimate), unless the profile measured
    the dispatch (``dispatch_measured``: :meth:`FrameworkSpec.ep_dispatch_s` prices it)."""
    mlp, norm, pos = _key_parts(model)
    rc = recompute if recompute in ("none", "selective", "full") else "none"
    f, b = BLOCK_OPS[(mlp, norm, pos, bool(model.bias), rc)]
    if model.is_moe:
        mlp_f, mlp_b = (13, 26) if mlp == "swiglu" else (8, 18)
        f += model.n_experts // ep * mlp_f + 12
        b += model.n_experts // ep * mlp_b + 12
        if ep > 1 and not dispatch_measured:
            f, b = f + EP_DISPATCH_OPS[0], b + EP_DISPATCH_OPS[1]
    return f, b


def edge_ops(model: ModelSpec) -> tuple[int, int]:
    """(forward, backward) ops of embedding + final norm + head + loss (whole model)."""
    _, norm, pos = _key_parts(model)
    return EDGE_OPS[(norm, pos)]


def linears_per_block(model: ModelSpec) -> int:
    """nn.Linear modules of one block (Q, K, V, O + the MLP's matrices, per expert for MoE)."""
    experts = model.n_experts if model.is_moe else 1
    return 4 + experts * model.mlp_matrices


def tp_modules(model: ModelSpec, layers: int) -> int:
    """TP-sharded modules of the whole executor model: every block's linears, the
    vocabulary-parallel embedding and LM head."""
    return layers * linears_per_block(model) + 2


def colwise_per_block(model: ModelSpec) -> int:
    """Column-parallel linears of one block: Q, K, V and the MLP's up (and gate)."""
    experts = model.n_experts if model.is_moe else 1
    return 3 + experts * (model.mlp_matrices - 1)


def block_param_tensors(model: ModelSpec) -> int:
    """Parameter tensors of one block (weights, biases, norm weights / biases, router)."""
    norm_tensors = 2 if (model.norm == "layernorm" and model.bias) else 1
    router = 1 if model.is_moe else 0
    return linears_per_block(model) * (2 if model.bias else 1) + 2 * norm_tensors + router


def edge_param_tensors(model: ModelSpec, tied: bool) -> tuple[int, int]:
    """(first stage, last stage) parameter tensors outside the blocks: token (+ position)
    embedding; final norm (+ bias) and the LM head unless tied."""
    first = 2 if model.position == "learned" else 1
    norm_tensors = 2 if (model.norm == "layernorm" and model.bias) else 1
    last = norm_tensors + (0 if tied else 1)
    return first, last


def param_tensors(model: ModelSpec, P, ranks: tuple[int, ...] | None = None) -> int:
    """Parameter tensors of the busiest pipeline rank (of ``ranks``, default all) in the executor."""
    kinds = model.block_kinds(P.layers_per_stage(model.n_layers))
    n_vs, pp = P.pp * P.vpp, P.pp
    first, last = edge_param_tensors(model, ties_embeddings(model, P.tp, pp))
    per_dense, per_other = block_param_tensors(model.alt_block()), block_param_tensors(model)
    best = 0
    for r in (range(pp) if ranks is None else ranks):
        ks = list(range(r, n_vs, pp))
        n = sum(kinds[k][0] * per_dense + kinds[k][1] * per_other for k in ks)
        n += (first if 0 in ks else 0) + (last if n_vs - 1 in ks else 0)
        best = max(best, n)
    return best


def model_param_tensors(model: ModelSpec, tied: bool) -> int:
    """Parameter tensors of the whole executor model (every block and both edges)."""
    alt = model.alt_layers
    return (alt * block_param_tensors(model.alt_block()) + (model.n_layers - alt) * block_param_tensors(model)
            + sum(edge_param_tensors(model, tied)))


def zb_in_flight(pp: int, num_micro_batches: int) -> tuple[int, ...]:
    """Per rank, the micro-batches whose autograd graph the executor's zero-bubble schedule holds
    at once (F to W). torch 2.13 ``ScheduleInterleavedZeroBubble`` with one stage per rank
    (``_get_1f1b_rank_ops(enable_zero_bubble=True)``): rank r runs ``p - 1 - r`` warm-up forwards,
    then F and B pairs, its first W after ``r`` of them, so ``p - 1 - r + r + 1 = p`` graphs are
    live before the first W frees one; at most m. (tests/test_cost_cpu.py checks this
    against torch's own order.)"""
    return tuple(min(pp, num_micro_batches) for _ in range(pp))


def zb_pending_weight_passes(pp: int, num_micro_batches: int) -> tuple[int, ...]:
    """Per rank, the micro-batches whose input-gradient pass (B) is done and whose weight pass
    (W) is not yet, at the executor's zero-bubble peak (the B that runs while :func:`zb_in_flight`
    graphs are live). In torch 2.13's one-stage-per-rank order rank r's first W follows r F/B
    pairs, so the B of pair r + 1 runs with r weight passes pending: the last rank r = p - 1
    holds p - 1, rank 0 none (at most m - 1). (tests/test_cost_cpu.py checks this against
    torch's own order.)"""
    return tuple(min(r, max(0, num_micro_batches - 1)) for r in range(pp))


def pipeline_actions(fwd_s: list[float], bwd_s: list[float], w_s: list[float], framework, rates,
                     schedule: str) -> tuple[list[float], list[float], list[float]]:
    """Per virtual stage, the (forward, backward-input, weight-gradient) action times under the
    executor's pipelining runtime (``torch.distributed.pipelining``) from the stages' work at the
    plain step's rates (backward-input and weight-gradient work apart): each action costs
    ``1 + pp_compute_slowdown`` times its work plus ``pp_action_s`` (the runtime's bookkeeping).

    Zero bubble (the weight-gradient pass W is an action of its own): the first stage's input
    needs no gradient, so its B does nothing and its W runs the whole (fused) backward; every
    other stage splits it (``stage_backward_input``, then ``stage_backward_weight`` walking the
    retained graph again), which costs ``zb_split_slowdown`` of the fused backward more, booked
    on W. Other schedules fold W into B. ``predict`` and the search's bound both use it (through
    :class:`planner.cost.executor_stack.ExecutorStack`)."""
    scale = 1.0 + framework.pp_compute_slowdown
    action = rates.ops(1, framework.pp_action_s)
    fwd = [scale * f + action for f in fwd_s]
    if schedule != "zb":
        return fwd, [scale * b + action for b in bwd_s], [scale * w for w in w_s]
    split = framework.zb_split_slowdown
    bwd = [action] + [scale * b + action for b in bwd_s[1:]]
    wgt = [scale * (bwd_s[0] + w_s[0]) + action] + [scale * (w + split * (b + w)) + action
                                                     for b, w in zip(bwd_s[1:], w_s[1:])]
    return fwd, bwd, wgt


def tp_edge_comm_s(model: ModelSpec, tokens: float, bytes_per_element: float, group: GroupShape,
                   node: NodeSpec) -> tuple[float, float, float]:
    """(embedding forward, head forward, head backward) TP communication per micro-batch of the
    executor: the vocabulary-parallel embedding's output all-reduce, ``loss_parallel``'s three
    per-token fp32 all-reduces (max, sum of exponentials, target logit), the LM head's
    input-gradient all-reduce."""
    act = bytes_per_element * tokens * model.hidden_size
    return (collective_time("all_reduce", act, group, node),
            3 * collective_time("all_reduce", 4.0 * tokens, group, node),
            collective_time("all_reduce", act, group, node))
