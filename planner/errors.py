"""One error type for bad user input.

Every parser and validator raises :class:`InputError` (a ``ValueError``) whose message starts with
the offending field's name, so the CLI can print one line and exit with status 2.
"""
from __future__ import annotations


MAX_REASON_CHARS = 400
"""An error is one line: a value echoed from the input (a huge nested YAML, a binary cell) is cut here."""


def _bounded(text: str, limit: int) -> str:
    """``text`` on one printable line (control characters escaped, as ``repr`` writes them), cut
    at ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 15] + " ... (cut)"


class InputError(ValueError):
    """Bad input: ``field`` names what was wrong, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        self.field = _bounded(str(field), 200)
        self.reason = _bounded(" ".join(str(reason).split()), MAX_REASON_CHARS)
        super().__init__(f"{self.field}: {self.reason}")


def require(condition: bool, field: str, reason: str) -> None:
    """Raise :class:`InputError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise InputError(field, reason)


def reject_unknown_keys(mapping: dict, allowed: set[str] | frozenset[str], where: str) -> None:
    """Strict parsing: an unknown key is an error, with the allowed keys as a hint."""
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise InputError(
            f"{where}.{unknown[0]}",
            f"unknown key (allowed: {', '.join(sorted(allowed))})",
        )
