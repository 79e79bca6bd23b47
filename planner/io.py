"""The one input and output layer.

Reading: every file the tool reads goes through :func:`read_input_text` (a regular file, at most
:data:`MAX_INPUT_BYTES`, UTF-8), JSON through :func:`parse_json` (nesting bounded by Python's
recursion limit, reported as one line) and YAML through :func:`parse_yaml` (at most
:data:`MAX_YAML_ALIASES` aliases: no alias bombs). Writing: whole files atomically (temp + rename)
after :func:`check_output_path`; records append-only JSONL. Every failure is an
:class:`planner.errors.InputError` naming the field, one line.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from planner.errors import InputError

MAX_INPUT_BYTES = 64 * 2**20
"""Largest input file read (profiles, plans, configs and run records are kilobytes to megabytes)."""
MAX_YAML_ALIASES = 16
"""YAML aliases allowed in one document (the profiles and cluster files use none)."""
MAX_YAML_DEPTH = 64
"""YAML nesting allowed (a profile is 4 levels deep)."""


def read_input_text(path: str | os.PathLike, field: str, *, missing: str | None = None,
                    limit: int = MAX_INPUT_BYTES) -> str:
    """The text of the regular file ``path``: one-line errors for a missing file, a directory, a
    device or FIFO (``/dev/zero``), a file over ``limit`` bytes, unreadable bytes or non-UTF-8."""
    path = Path(path)
    try:
        if not path.exists():
            raise InputError(field, missing or f"{path} does not exist")
        if path.is_dir():
            raise InputError(field, f"{path} is a directory, not a file")
        if not path.is_file():
            raise InputError(field, f"{path} is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise InputError(field, f"cannot read {path} ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        raise InputError(field, f"{path} is larger than {limit // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(field, f"{path} is not UTF-8 text (byte {err.start})") from None


def parse_json(text: str, field: str, source: str) -> Any:
    """``json.loads`` with one-line errors (syntax, nesting too deep)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(field, f"{source} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise InputError(field, f"{source} is nested too deeply") from None


def parse_yaml(text: str, field: str, source: str) -> Any:
    """``yaml.safe_load`` with one-line errors, at most :data:`MAX_YAML_ALIASES` aliases and
    :data:`MAX_YAML_DEPTH` levels of nesting (checked on the token stream, before composing)."""
    import yaml

    opening = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
               yaml.BlockMappingStartToken)
    closing = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
    try:
        aliases = depth = 0
        for token in yaml.scan(text):
            if isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise InputError(field, f"{source} uses more than {MAX_YAML_ALIASES} YAML aliases")
            elif isinstance(token, opening):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise InputError(field, f"{source} is nested too deeply (more than {MAX_YAML_DEPTH} levels)")
            elif isinstance(token, closing):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(field, f"{source} is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise InputError(field, f"{source} is nested too deeply") from None


def check_output_path(path: str | os.PathLike, field: str = "out") -> Path:
    """``path`` can be written as a file: not a directory, its folder exists (or can be made) and
    is writable. Call it before the work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise InputError(field, f"{path} is a directory; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(field, f"cannot create {parent} ({err.strerror or type(err).__name__})") from None
    if not parent.is_dir():
        raise InputError(field, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(field, f"{parent} is not writable")
    return path


def check_output_dir(path: str | os.PathLike, field: str = "out_dir") -> Path:
    """``path`` is (or can be made) a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(field, f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(field, f"cannot create {path} ({err.strerror or type(err).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(field, f"{path} is not writable")
    return path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and an atomic rename."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give; a
    target that cannot be written is an InputError naming ``out`` (nothing half-written stays)."""
    path = check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise InputError("out", f"cannot write in {path.parent} ({err.strerror or type(err).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):  # a full disk, a folder made read-only meanwhile
            raise InputError("out", f"cannot write {path} ({err.strerror or type(err).__name__})") from None
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a torn last line (a killed writer) is skipped."""
    out = []
    for line in read_input_text(path, "records").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(record, dict):  # valid JSON that is not a record is skipped like a torn line
            out.append(record)
    return out


def write_lines_atomically(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def read_json_object(path: str | os.PathLike, field: str, missing: str | None = None) -> dict:
    """Read a file holding one JSON object; bad input raises InputError naming ``field``.

    ``missing`` is the message when the file does not exist (default "<path> does not exist")."""
    path = Path(path)
    data = parse_json(read_input_text(path, field, missing=missing), field, str(path))
    if not isinstance(data, dict):
        raise InputError(field, f"{path} must hold a JSON object")
    return data


def resolve_named_yaml(name_or_path: str | os.PathLike, folder: Path, *, field: str, kind: str) -> Path:
    """A YAML path as given (it must end in ``.yaml`` / ``.yml``: nothing else on the machine is
    read as a profile), or ``folder/<name>.yaml`` for a bare name; InputError naming ``field``
    (and listing the known names) otherwise. Used for profiles and cluster files."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise InputError(field, f"{kind} file {name_or_path} does not exist")
        return path
    if path.exists():
        raise InputError(field, f"{name_or_path} is not a {kind}: give a name or a .yaml file")
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise InputError(field, f"unknown {kind} {str(name_or_path)!r} (known: {known})")
    return candidate


def finite_number(data: dict, key: str, where: str, default: float | None = None) -> float:
    """``data[key]`` as a float; missing (without a ``default``), a bool, a non-number or
    not finite is an :class:`InputError` naming ``where.key``."""
    if key not in data:
        if default is not None:
            return default
        raise InputError(f"{where}.{key}", "missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}.{key}", f"must be a finite number, got {value!r}")
    return float(value)
