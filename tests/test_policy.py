"""Tests for heartbeat.agent.policy: escalation, jitter, drift-free timers (pure, table-driven)."""

from __future__ import annotations

import logging

import pytest

from heartbeat.agent.policy import FailureLog, format_seconds, jittered, next_deadline


def test_thirty_minute_outage_with_ten_second_reconnects() -> None:
    flog = FailureLog(error_every=600.0)
    levels: dict[int, int] = {}
    for i in range(180):  # t = 0, 10, ..., 1790
        level, _msg = flog.on_failure(i * 10.0, "refused")
        levels[i * 10] = level
    warnings = [t for t, lv in levels.items() if lv == logging.WARNING]
    errors = [t for t, lv in levels.items() if lv == logging.ERROR]
    debugs = [t for t, lv in levels.items() if lv == logging.DEBUG]
    assert warnings == [0]
    assert errors == [600, 1200]
    assert len(debugs) == 177
    assert flog.attempts == 180
    assert flog.on_success(1800.0) == (
        logging.INFO,
        "down for 30m0s after 180 failed attempts",
    )
    assert not flog.failing
    assert flog.on_success(1810.0) is None


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0], [logging.WARNING]),
        ([0.0, 1.0, 599.0], [logging.WARNING, logging.DEBUG, logging.DEBUG]),
        ([0.0, 600.0, 601.0], [logging.WARNING, logging.ERROR, logging.DEBUG]),
        # the ERROR timer restarts at each ERROR, not at a fixed grid
        (
            [0.0, 700.0, 1299.0, 1300.0],
            [logging.WARNING, logging.ERROR, logging.DEBUG, logging.ERROR],
        ),
    ],
)
def test_escalation_table(times: list[float], expected: list[int]) -> None:
    flog = FailureLog(error_every=600.0)
    assert [flog.on_failure(t, "x")[0] for t in times] == expected


def test_success_resets_the_outage() -> None:
    flog = FailureLog(error_every=600.0)
    flog.on_failure(0.0, "a")
    flog.on_failure(500.0, "a")
    assert flog.on_success(550.0) == (logging.INFO, "down for 9m10s after 2 failed attempts")
    # a new outage starts with a WARNING again and its own ERROR timer
    assert flog.on_failure(560.0, "b")[0] == logging.WARNING
    assert flog.on_failure(1100.0, "b")[0] == logging.DEBUG
    assert flog.on_failure(1160.0, "b")[0] == logging.ERROR


def test_warning_reports_outage_duration_from_since() -> None:
    flog = FailureLog()
    level, msg = flog.on_failure(100.0, "boom", since=70.0)
    assert level == logging.WARNING
    assert msg == "down_for=30s attempts=1 err=boom"
    assert flog.failing_since == 70.0
    # the first ERROR counts from the outage start
    assert flog.on_failure(670.0, "boom")[0] == logging.ERROR


def test_success_without_failure_says_nothing() -> None:
    assert FailureLog().on_success(5.0) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (1.5, "1.5s"), (59, "59s"), (60, "1m0s"), (600, "10m0s"), (3723, "1h2m3s")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("period", "fraction", "u", "expected"),
    [
        (10.0, 0.2, 0.0, 8.0),
        (10.0, 0.2, 0.5, 10.0),
        (10.0, 0.2, 0.75, 11.0),
        (3.0, 0.0, 0.9, 3.0),
    ],
)
def test_jittered(period: float, fraction: float, u: float, expected: float) -> None:
    assert jittered(period, fraction, u) == pytest.approx(expected)


def test_jittered_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        jittered(1.0, 1.5, 0.5)


@pytest.mark.parametrize(
    ("deadline", "period", "now", "expected"),
    [
        (0.0, 3.0, 0.1, 3.0),  # on time
        (0.0, 3.0, 3.0, 3.0),  # exactly at the next tick: fire it
        (0.0, 3.0, 3.5, 6.0),  # one tick missed: skip it
        (0.0, 3.0, 10.0, 12.0),  # several missed: no burst, next grid point
        (100.0, 10.0, 95.0, 110.0),  # early caller
    ],
)
def test_next_deadline(deadline: float, period: float, now: float, expected: float) -> None:
    assert next_deadline(deadline, period, now) == expected


def test_next_deadline_rejects_non_positive_period() -> None:
    with pytest.raises(ValueError):
        next_deadline(0.0, 0.0, 1.0)
