"""A published run's model from the architecture columns of its row (``clusterplan validate``).

The columns ``n_layers, hidden_size, n_heads, n_kv_heads, ffn_hidden_size, vocab_size`` (and the
row's ``seq_len``) build the :class:`planner.model.ModelSpec`, so any CSV in the dataset's schema
works whether or not its model has a preset. A preset matching the row's ``model`` name supplies
what the columns do not state (and the family details no column holds: MLP kind, norm, positions,
biases, tied embeddings, dropout). Without one, each gap is filled from a documented default and
the assumption is returned with the model:

* ``n_kv_heads`` not stated: multi-head attention (``n_kv_heads = n_heads``, the GPT / Megatron
  default; ``--num-query-groups`` is opt-in).
* family from the model name: Nemotron-4 (a 2-matrix squared-ReLU MLP, LayerNorm, RoPE, no
  biases, untied head; Nemotron-4 15B report, arXiv:2402.16819, Sec. 2); LLaMA-style (SwiGLU,
  RMSNorm, RoPE, no biases, untied head; Touvron et al. 2023) for LLaMA / Mistral / Mixtral / Qwen /
  DeepSeek / Grok (gated GELU: the same three matrices) / other Nemotron names; else GPT (GELU, LayerNorm, learned positions, biases, tied
  head; Megatron-LM's ``pretrain_gpt.py``).
* ``ffn_hidden_size`` not stated: GPT ``4h`` (Megatron's default); LLaMA-style
  ``256 * ceil(8h/3 / 256)`` (Meta's ``multiple_of=256`` rule).
* ``n_experts`` / ``top_k`` (optional columns): routed experts of ``ffn_hidden_size`` each; top-2
  where ``top_k`` is not stated.
* dropout 0.1 for Megatron-LM frameworks (``--hidden-dropout`` / ``--attention-dropout``
  defaults), else 0.
"""
from __future__ import annotations

import dataclasses
import math

from planner.catalog import load_model, preset_for_published_row
from planner.errors import InputError
from planner.model import ModelSpec

LLAMA_STYLE_NAMES = ("llama", "mistral", "mixtral", "qwen", "deepseek", "nemotron", "yi-", "gemma", "grok")
LLAMA_STYLE = dict(mlp="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False, bias=False)
NEMOTRON4_NAMES = ("nemotron-4", "nemotron4")
NEMOTRON4_STYLE = dict(mlp="gelu", activation="squared-relu", norm="layernorm", position="rope",
                       tied_embeddings=False, bias=False)


def _cell_int(row: dict, key: str) -> int | None:
    v = row.get(key)
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(float(v))


@dataclasses.dataclass(frozen=True)
class RowModel:
    """The row's model (None when it cannot be built), what was assumed, why it failed."""

    model: ModelSpec | None
    preset: str = ""
    assumptions: tuple[str, ...] = ()
    reason: str = ""


def row_model(row: dict, seq_len: int) -> RowModel:
    """Build the model of ``row`` (a dict of the dataset's columns) at ``seq_len``."""
    name = str(row.get("model") or "").strip() or "unnamed"
    framework = str(row.get("framework") or "").lower()
    preset = preset_for_published_row(name) or ""
    base = load_model(preset) if preset else None
    notes: list[str] = []
    dims: dict[str, int] = {}
    for col in ("n_layers", "hidden_size", "n_heads", "vocab_size"):
        value = _cell_int(row, col)
        if value is None and base is not None:
            value = getattr(base, col)
        if value is None:
            return RowModel(None, preset, reason=f"architecture not given ({col} not stated, no preset for {name!r})")
        dims[col] = value
    kv = _cell_int(row, "n_kv_heads")
    if kv is None:
        if base is not None and base.n_heads == dims["n_heads"]:
            kv = base.n_kv_heads
        else:
            kv = dims["n_heads"]
            notes.append("n_kv_heads not stated: multi-head attention assumed")
    if base is not None:
        family = {}
    else:
        lower = name.lower()
        if any(k in lower for k in NEMOTRON4_NAMES):
            family, kind = dict(NEMOTRON4_STYLE), "Nemotron-4 (squared-ReLU MLP, LayerNorm, RoPE)"
        elif any(k in lower for k in LLAMA_STYLE_NAMES):
            family, kind = dict(LLAMA_STYLE), "LLaMA-style (SwiGLU, RMSNorm, RoPE)"
        else:
            family, kind = {}, "GPT (GELU, LayerNorm, learned positions)"
        notes.append("architecture family from the name: " + kind)
        if "megatron" in framework:
            family["dropout"] = 0.1
    ffn = _cell_int(row, "ffn_hidden_size")
    if ffn is None:
        if base is not None and base.hidden_size == dims["hidden_size"]:
            ffn = base.ffn_hidden_size
        elif (family or {}).get("mlp", base.mlp if base else "gelu") == "swiglu":
            ffn = 256 * math.ceil(8 * dims["hidden_size"] / 3 / 256)
            notes.append(f"ffn_hidden_size not stated: {ffn} (256 * ceil(8h/3 / 256)) assumed")
        else:
            ffn = 4 * dims["hidden_size"]
            if base is None:
                notes.append(f"ffn_hidden_size not stated: 4h = {ffn} assumed")
    fields = dict(dims, n_kv_heads=kv, ffn_hidden_size=ffn, seq_len=seq_len)
    experts, top_k = _cell_int(row, "n_experts"), _cell_int(row, "top_k")
    if experts:  # routed experts of ffn_hidden_size each (Mixtral-style)
        fields.update(n_experts=experts, top_k=top_k or 2)
        if not top_k:
            notes.append("top_k not stated: 2 assumed")
    try:
        if base is not None:
            model = dataclasses.replace(base, **fields)
        else:
            model = ModelSpec(name=name, **fields, **family)
    except InputError as err:
        return RowModel(None, preset, tuple(notes), f"architecture invalid: {err}")
    return RowModel(model, preset, tuple(notes))
