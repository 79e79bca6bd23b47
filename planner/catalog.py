"""Where a :class:`planner.model.ModelSpec` comes from: a preset name (:mod:`planner.presets`)
or a Hugging Face ``config.json`` (:mod:`planner.hf_config`)."""
from __future__ import annotations

import difflib
from pathlib import Path

from planner.errors import InputError
from planner.hf_config import read_hf_config
from planner.model import ModelSpec
from planner.presets import PRESETS, PUBLISHED_MODEL_PRESETS


def available_models() -> list[str]:
    """Preset names, sorted."""
    return sorted(PRESETS)


def _spelling(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def preset_for_published_row(row_model_name: str) -> str | None:
    """The preset for a ``model`` value of ``benchmarks/published_runs.csv``, or None when the
    row gives no architecture (e.g. the Megatron v1.0 scaling models): the dataset's own names,
    else a preset whose name is spelled the same up to case and punctuation ("Mixtral 8x7B" is
    ``mixtral-8x7b``, "DeepSeek-V3" ``deepseek-v3``)."""
    if row_model_name in PUBLISHED_MODEL_PRESETS:
        return PUBLISHED_MODEL_PRESETS[row_model_name]
    wanted = _spelling(row_model_name)
    return next((name for name in PRESETS if _spelling(name) == wanted), None) if wanted else None


def _looks_like_path(name_or_path: str) -> bool:
    return (name_or_path.endswith(".json") or "/" in name_or_path or "\\" in name_or_path
            or name_or_path.startswith("."))


def load_model(name_or_path: str, seq_len: int | None = None, notes: list[str] | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a preset name or a Hugging Face ``config.json`` (a file, or a
    directory holding one). ``seq_len`` overrides the default sequence length (the preset's
    training length; for a config, the trained context it states, else at most
    :data:`planner.hf_families.DEFAULT_TRAINING_SEQ_LEN`, said in a line appended to ``notes``). Bad input raises
    :class:`InputError` naming the field: ``model`` for an unknown name or unreadable file,
    ``config.<key>`` for a missing or malformed key, ``seq_len`` for a bad length."""
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0):
        raise InputError("seq_len", f"must be a positive integer, got {seq_len!r}")
    if not isinstance(name_or_path, str) or not name_or_path:
        raise InputError("model", "needs a preset name or a path to a config.json")
    if name_or_path in PRESETS:
        spec = PRESETS[name_or_path]
    else:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise InputError("model", f"directory {name_or_path} has no config.json")
        if path.is_file():
            spec = read_hf_config(path, notes if seq_len is None else None)
        elif _looks_like_path(name_or_path):
            raise InputError("model", f"config file {name_or_path} does not exist")
        else:
            close = difflib.get_close_matches(name_or_path.lower(), list(PRESETS), n=4, cutoff=0.5)
            listing = (f"did you mean {', '.join(close)}?" if close
                       else f"known: {', '.join(sorted(PRESETS))}")
            raise InputError("model", f"unknown preset {name_or_path!r} ({listing} "
                                      "Or give a path to a config.json.)")
    if seq_len is not None and seq_len != spec.seq_len:
        try:
            spec = spec.with_seq_len(seq_len)
        except InputError as err:
            raise InputError("seq_len", err.reason) from None
    return spec
