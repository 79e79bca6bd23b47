"""One error type for bad user input.

Every parser and validator raises :class:`InputError` (a ``ValueError``) whose message starts with
the offending field's name, so the CLI can print one line and exit with status 2.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: ``field`` names what was wrong, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


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
