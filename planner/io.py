"""File writing conventions: whole files atomically (temp + rename), records append-only JSONL."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and an atomic rename."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(handle, record: dict) -> None:
    """Append one record to an open text handle and flush (one record per line)."""
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a torn last line (a killed writer) is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_lines_atomically(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def read_json_object(path: str | os.PathLike, field: str, missing: str | None = None) -> dict:
    """Read a file holding one JSON object; bad input raises InputError naming ``field``.

    ``missing`` is the message when the file does not exist (default "<path> does not exist")."""
    from planner.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(field, missing or f"{path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(field, f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(field, f"{path} must hold a JSON object")
    return data


def resolve_named_yaml(name_or_path: str | os.PathLike, folder: Path, *, field: str, kind: str) -> Path:
    """A YAML path as given, or ``folder/<name>.yaml`` for a bare name; InputError naming
    ``field`` (and listing the known names) otherwise. Used for profiles and cluster files."""
    from planner.errors import InputError

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise InputError(field, f"{kind} file {name_or_path} does not exist")
        return path
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise InputError(field, f"unknown {kind} {str(name_or_path)!r} (known: {known})")
    return candidate
