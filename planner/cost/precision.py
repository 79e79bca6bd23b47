"""Bytes per element and per parameter of each training precision (the facts every cost module
shares): fp32 training keeps everything in 4 bytes; mixed precision (bf16 / fp16 / fp8) keeps
activations and the working weights in 2, an fp32 master copy and Adam's moments (ZeRO, Sec. 3)."""
from __future__ import annotations


FULL_PRECISIONS = ("fp32", "tf32")
"""Trainings that keep every tensor in fp32: plain FP32 matmuls (PyTorch's default
``allow_tf32=False``), or TF32 tensor-core matmuls on fp32 tensors (NVIDIA's PyTorch containers
set ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1``; Megatron-LM without ``--bf16`` / ``--fp16``)."""


def compute_dtype(precision: str) -> str:
    """Peak column used for matmuls: the precision's own (``tf32``: the TF32 tensor-core rate on
    fp32 tensors), mixed precision its half-precision dtype."""
    return precision


def is_full_precision(precision: str) -> bool:
    return precision in FULL_PRECISIONS


def activation_bytes_per_element(precision: str) -> int:
    """Activations are stored in the compute dtype: 4 bytes for fp32 / tf32, 2 for bf16/fp16,
    and 2 for fp8 (FP8 training keeps activations in bf16; only GEMM inputs are cast)."""
    return 4 if is_full_precision(precision) else 2


def weight_bytes_per_param(precision: str) -> float:
    """Bytes of one working weight copy (what ZeRO-3 gathers): fp32, else half precision."""
    return 4.0 if is_full_precision(precision) else 2.0


def grad_bytes_per_param(precision: str) -> float:
    """Bytes per gradient element reduced over dp: fp16 runs reduce in half precision; fp32, bf16
    and fp8 in fp32. Megatron-LM forces fp32 gradient accumulation and reduction with ``--bf16``
    (``arguments.py``: "bfloat16 requires gradient accumulation and all-reduce to be done in
    fp32"); an FP8 run is a bf16 run whose linears compute in FP8 (NeMo's ``bf16_with_fp8_mixed``
    is ``bf16_mixed`` with ``grad_reduce_in_fp32=True`` plus ``fp8='hybrid'``)."""
    return 2.0 if precision == "fp16" else 4.0


def state_bytes_per_param(precision: str) -> tuple[float, float, float]:
    """(weights, grads, optimizer) bytes per parameter for Adam."""
    if is_full_precision(precision):
        return 4.0, 4.0, 8.0
    return 2.0, 2.0, 12.0


OPTIMIZER_BYTES_PER_PARAM = 28.0
"""Fused Adam's traffic per local parameter: read fp32 master, m, v and the fp32 gradient (16),
write master, m, v (12); the bf16 weight copy is written from the master in the same pass."""
