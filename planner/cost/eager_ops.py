"""A block's element-wise work as PyTorch eager runs it, op by op (no torch.compile).

Without a compiler every element-wise op of the model's Python code is its own kernel that reads
its inputs from HBM and writes its output back. The inventory is torchtitan's Llama code at
9dec370 (2024-12-26; the code of its published H100 benchmark, docs/performance.md at d4c86e375):

* ``RMSNorm.forward`` (torchtitan/models/norms.py): ``x.float()``, ``pow(2)``, ``mean(-1)``,
  ``+ eps``, ``rsqrt``, ``x * rsqrt``, ``type_as(x)``, ``* weight``: the fp32 intermediates move
  4 bytes per element; ``+ eps`` and ``rsqrt`` touch one value per row.
* ``apply_rotary_emb`` (torchtitan/models/llama/model.py): Q and K each ``float()``, a complex
  multiply by ``freqs_cis`` (fp32 in and out; the table is shared by the batch and the heads),
  ``type_as``.
* ``repeat_kv`` (grouped-query attention): ``expand(...).reshape(...)`` copies K and V out to
  every query head.
* the attention output ``transpose(1, 2).contiguous()``: one copy.
* ``F.silu(w1(x)) * w3(x)``: two kernels; the two residual adds.

The fused stack's description (:meth:`planner.cost.stacks.FusedStack.block_elementwise_s`) is
what torch.compile or hand-fused kernels leave of the same work.
"""
from __future__ import annotations

from planner.model import ModelSpec

FP32_BYTES = 4


def eager_block_bytes(model: ModelSpec, tokens: float, rows: float, tp: int, bpe: int) -> tuple[float, int]:
    """(bytes moved, kernels) of one block's forward element-wise ops on one rank: ``rows`` tokens
    of the replicated ops (norms, residual adds: ``tokens / tp`` under sequence parallelism),
    ``tokens`` of the tensor-parallel ones (RoPE, the MLP activation, the attention copies)."""
    h = model.hidden_size
    cast = bpe != FP32_BYTES  # float() and type_as() are no kernels on fp32 tensors
    to_fp32 = (bpe + FP32_BYTES) if cast else 0
    norm_per_element = to_fp32 + 2 * FP32_BYTES + FP32_BYTES + 2 * FP32_BYTES + to_fp32 + 2 * bpe
    norm_kernels = 6 + (2 if cast else 0)
    total = model.norms_per_block * norm_per_element * rows * h
    kernels = model.norms_per_block * norm_kernels
    total += 2 * 3 * bpe * rows * h  # two residual adds
    kernels += 2
    if model.mlp == "swiglu":
        total += (2 + 3) * bpe * tokens * model.token_mlp_width / tp  # silu, then the product
        kernels += 2
    else:
        total += 2 * bpe * tokens * model.token_mlp_width / tp
        kernels += 1
    if model.position == "rope":
        rope_per_element = to_fp32 + 2 * FP32_BYTES + to_fp32
        total += rope_per_element * tokens * model.rotary_dim / tp
        kernels += 2 * (1 + (2 if cast else 0))
    if model.n_kv_heads < model.n_heads:  # repeat_kv: K and V written once per query head
        total += bpe * tokens * (model.kv_dim + model.v_dim + model.q_dim + model.attn_out_dim) / tp
        kernels += 2
    total += 2 * bpe * tokens * model.attn_out_dim / tp  # transpose(1, 2).contiguous()
    kernels += 1
    return total, kernels
