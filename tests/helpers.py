"""Waiting on conditions and reading metrics, for tests over real sockets and processes.

Fake-clock tests wait on events; tests that drive real servers cannot always do so and
poll a condition instead, always under a deadline so that a condition that never holds
fails the test (with what was awaited) instead of hanging it:

    await eventually(lambda: len(agg.fleet) == 2)                # trio tests
    node = await eventually(fetch_node, timeout=15)               # async predicates too
    url = eventually_blocking(read_url, timeout=30, what="the HTTP address")  # no trio

`assert_counted_by_reason` holds an aggregator's count of hostile streams against what the
load generator saw of them, without racing the end of the run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

import trio

__all__ = ["assert_counted_by_reason", "eventually", "eventually_blocking", "metric_value"]

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


def assert_counted_by_reason(sent: Mapping[str, Any], counted: float) -> None:
    """The aggregator counted (`counted`, for one reason) every stream of one kind of hostile
    load generator agent that it cut off, and none that was not sent (`sent`: the kind's
    summary, or several kinds' summed).

    The aggregator counts a stream before it resets it, so every cut the sender saw is
    counted already: `cut_off <= counted`. A stream opened just before the run stopped (at
    most one per agent, plus any that a failure ended) may have reached the aggregator and
    been counted without its sender staying to see the cut: `counted <= streams_opened`.
    """
    failed = sum(n for reason, n in sent["failures"].items() if reason.startswith("stream_"))
    assert sent["cut_off"] <= counted <= sent["streams_opened"], (counted, dict(sent))
    assert sent["streams_opened"] - sent["cut_off"] <= sent["agents"] + failed, dict(sent)
