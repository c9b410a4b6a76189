"""Go-style durations: the forms the original service accepted, and clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat.common.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("3s", 3.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("2.5s", 2.5),
        ("1.5h", 5400.0),
        ("10us", 10e-6),
        ("10µs", 10e-6),
        ("10μs", 10e-6),
        ("250ns", 250e-9),
        ("1h2m3s4ms", 3723.004),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("+3s", 3.0),
        ("0.1s", 0.1),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("-3s", "negative"),
        ("-0s", "negative"),
        ("3", "missing unit"),
        ("1.5", "missing unit"),
        ("3x", "unknown unit"),
        ("3sec", "unknown unit"),
        ("3 s", "unknown unit"),
        ("1e3s", "unknown unit"),
        ("s", "invalid duration"),
        (" 3s", "invalid duration"),
        ("1.2.3s", "invalid duration"),
        (".s", "invalid duration"),
        ("+", "empty"),
        ("300000000h", "too long"),
    ],
)
def test_parse_duration_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_parse_duration_refuses_non_string() -> None:
    with pytest.raises(ValueError, match="string"):
        parse_duration(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (3, "3s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (3600, "1h0m0s"),
        (2.5, "2.5s"),
        (1.5e-6, "1.5µs"),
        (7e-9, "7ns"),
        (3723.004, "1h2m3.004s"),
        (-3, "-3s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_format_parse_round_trip(ns: int) -> None:
    assert round(parse_duration(format_duration(ns / 1e9)) * 1e9) == ns
