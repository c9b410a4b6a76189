"""Reconnect and log-escalation policy, jitter and drift-free timers.

Pure: no trio, no clock reads. Every function takes `now` (the caller's clock,
in seconds) and returns what to do; the trio shells do the sleeping and logging.

`FailureLog` reproduces the original heartbeat service's escalating severity for
a thing that keeps failing (the aggregator connection, the Lotus node):

* the first failure since the last success is a WARNING that says how long the
  outage has lasted so far;
* later failures are DEBUG, except one ERROR each time `error_every` seconds have
  passed since the previous ERROR (the first ERROR counts from the first
  failure), so a long outage is still visible at the default log level without
  flooding it;
* the first success after failures is an INFO that says how long the outage
  lasted and how many attempts failed; a success without failures says nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ERROR_EVERY",
    "FailureLog",
    "LogRecordSpec",
    "format_seconds",
    "jittered",
    "next_deadline",
]

DEFAULT_ERROR_EVERY = 600.0

LogRecordSpec = tuple[int, str]
"""(logging level, message) that the caller passes to `logger.log`."""


def format_seconds(seconds: float) -> str:
    """Go-style rendering of a duration: `0s`, `1.5s`, `10m0s`, `1h2m3s`."""
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


@dataclass(slots=True)
class FailureLog:
    """Decides the log level of each failure of a retried operation.

    `on_failure(now, error)` returns the (level, message) to log; `on_success(now)`
    returns the recovery message, or None when nothing had failed.
    """

    error_every: float = DEFAULT_ERROR_EVERY
    _failing_since: float | None = None
    _last_error_ref: float | None = None
    _attempts: int = 0

    @property
    def failing(self) -> bool:
        """True between a failure and the next success."""
        return self._failing_since is not None

    @property
    def attempts(self) -> int:
        """Failed attempts in the current outage (0 when not failing)."""
        return self._attempts

    @property
    def failing_since(self) -> float | None:
        """When the current outage started, or None."""
        return self._failing_since

    def on_failure(self, now: float, error: object, *, since: float | None = None) -> LogRecordSpec:
        """Record one failed attempt at `now` and return what to log.

        `since` optionally dates the start of the outage earlier than this first
        failure (e.g. when a working connection was lost); it is only used on the
        first failure of an outage.
        """
        self._attempts += 1
        if self._failing_since is None:
            start = now if since is None else min(since, now)
            self._failing_since = start
            self._last_error_ref = start
            return (
                logging.WARNING,
                f"down_for={format_seconds(now - start)} attempts=1 err={error}",
            )
        assert self._last_error_ref is not None
        detail = (
            f"down_for={format_seconds(now - self._failing_since)} "
            f"attempts={self._attempts} err={error}"
        )
        if now - self._last_error_ref >= self.error_every:
            self._last_error_ref = now
            return logging.ERROR, detail
        return logging.DEBUG, detail

    def on_success(self, now: float) -> LogRecordSpec | None:
        """Record a success; return the INFO recovery message if it ends an outage."""
        if self._failing_since is None:
            return None
        message = (
            f"down for {format_seconds(now - self._failing_since)} "
            f"after {self._attempts} failed attempts"
        )
        self._failing_since = None
        self._last_error_ref = None
        self._attempts = 0
        return logging.INFO, message


def jittered(period: float, fraction: float, u: float) -> float:
    """`period` spread uniformly over ±`fraction` of itself.

    `u` is a uniform random number in [0, 1) supplied by the caller, so this stays
    pure: u=0 gives period*(1-fraction), u→1 gives period*(1+fraction).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return period * (1.0 - fraction + 2.0 * fraction * u)


def next_deadline(deadline: float, period: float, now: float) -> float:
    """The next tick of a drift-free timer that skips missed ticks.

    Normally `deadline + period`. When the caller overran (that tick is already in
    the past), the ticks that were missed are skipped rather than fired back to
    back: the result is the first tick of the grid `deadline + k*period` (k >= 1)
    that is not before `now`.
    """
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    nxt = deadline + period
    if nxt >= now:
        return nxt
    k = math.ceil((now - deadline) / period)
    return deadline + k * period
