"""Go-style duration strings (``3s``, ``1m30s``, ``500ms``), as the original service took them.

Parsing follows Go's ``time.ParseDuration`` except that negative durations are refused: every
duration this project reads is a period, timeout or threshold. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NS = 2**63 - 1  # Go's limit, about 292 years
_TERM = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]+)")
_TERM_SYNTAX = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)[^\d.]+)+")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string: ``"1m30s"`` gives ``90.0``.

    Units: ns, us (µs), ms, s, m, h; fractions allowed (``2.5s``); a bare ``0`` is zero.
    Raises ValueError for empty text, a sign, a bare number, an unknown unit or overflow.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '3s', got {type(text).__name__}")
    if text == "0":
        return 0.0
    body = text[1:] if text[:1] == "+" else text
    if text[:1] == "-":
        raise ValueError(f"invalid duration {text!r}: negative durations are not allowed")
    if not body:
        raise ValueError("invalid duration '': empty (use e.g. '3s', '1m30s', '500ms')")
    if _TERM_SYNTAX.fullmatch(body) is None:
        if body.replace(".", "", 1).isdigit():
            raise ValueError(f"invalid duration {text!r}: missing unit (e.g. '{text}s')")
        raise ValueError(f"invalid duration {text!r} (use e.g. '3s', '1m30s', '500ms')")
    total = 0
    for whole, frac, unit in _TERM.findall(body):
        scale = _NS_PER_UNIT.get(unit)
        if scale is None:
            known = ", ".join(u for u in _NS_PER_UNIT if u != "μs")
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (known: {known})")
        total += int(whole or "0") * scale
        if frac:
            # integer arithmetic, as Go does: no float rounding on "0.1s"
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS:
            raise ValueError(f"invalid duration {text!r}: too long")
    return total / 1e9


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def format_duration(seconds: float) -> str:
    """Go's ``Duration.String()``: ``90`` gives ``"1m30s"``, ``0.5`` gives ``"500ms"``.

    Rounded to the nanosecond; ``parse_duration`` reads every result back.
    """
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(f'{ns // 1_000}.{ns % 1_000:03d}')}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(f'{ns // 1_000_000}.{ns % 1_000_000:06d}')}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(f"{rest // 1_000_000_000}.{rest % 1_000_000_000:09d}")
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"
