"""Value parsers shared by both programs' configurations.

Pure. Each takes a value as it comes from a flag or an environment variable (text) or from a
TOML file (already typed), and returns it typed or raises `ValueError` with a short reason; the
callers turn that into a `ConfigError` naming the setting. A TOML boolean is never a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from heartbeat.common.durations import parse_duration

__all__ = ["parse_bool", "parse_choice", "parse_duration_value", "parse_float", "parse_int"]


def parse_int(value: Any) -> int:
    """An integer: a TOML integer, or decimal text (`12000`, `12_000`)."""
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def parse_float(value: Any) -> float:
    """A number: a TOML number or text."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def parse_duration_value(value: Any) -> float:
    """Seconds: a TOML number, or a Go-style duration (`3s`, `1m30s`, `500ms`)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(parse_duration(str(value).strip()))
    except ArithmeticError as exc:
        raise ValueError(str(exc)) from exc


def parse_bool(value: Any) -> bool:
    """A TOML boolean, or `1/true/yes/on`, `0/false/no/off` (any case; empty is false)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_choice(value: Any, choices: Sequence[str]) -> str:
    """One of `choices` (compared in lower case)."""
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"choose one of {', '.join(choices)}")
    return text
