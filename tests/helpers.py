"""Waiting on conditions and reading metrics, for tests over real sockets and processes.

Fake-clock tests wait on events; tests that drive real servers cannot always do so and
poll a condition instead, always under a deadline so that a condition that never holds
fails the test (with what was awaited) instead of hanging it:

    await eventually(lambda: len(agg.fleet) == 2)                # trio tests
    node = await eventually(fetch_node, timeout=15)               # async predicates too
    url = eventually_blocking(read_url, timeout=30, what="the HTTP address")  # no trio
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import trio

__all__ = ["eventually", "eventually_blocking", "metric_value"]

T = TypeVar("T")


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]], *, timeout: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None], *, timeout: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `predicate` (plain or async) until it returns a truthy value, and return it.

    Raises `trio.TooSlowError` after `timeout` seconds.
    """
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(interval)


def eventually_blocking(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    transient: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for tests without trio (subprocess-driven): blocks the thread.

    An exception of a `transient` type (a server still starting: connection refused)
    counts as "not yet". Raises `TimeoutError` naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except transient:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` carrying `labels` in a Prometheus text scrape."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
