"""The fan-out from ingest to its consumers, like a small event broker.

- REQUIRED subscribers see every event, in publication order (so in order per
  node). A synchronous callback runs inline and must be cheap (the fleet model
  update; the alert evaluator's change signal); an asynchronous one reads a
  bounded trio channel that the publisher awaits (the persistence writer), so a
  slow consumer applies back-pressure. The time the publisher spends waiting is
  measured (`backpressure_seconds`, exported as
  `fil_heartbeat_bus_backpressure_seconds_total`).
- OPTIONAL subscribers (live feeds) get events through bounded channels with
  `send_nowait`; when full, the event is dropped for that subscriber and
  counted. A slow optional consumer never slows ingest.

Events are the small frozen dataclasses below; ingest publishes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from aggregator.events import BeatAccepted, Event, PeerConnected, PeerDisconnected

__all__ = [
    "BeatAccepted",
    "Bus",
    "Event",
    "PeerConnected",
    "PeerDisconnected",
]

log = logging.getLogger(__name__)


class Bus:
    """One publisher (ingest), many subscribers; see the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._sync: list[tuple[str, Callable[[Any], None]]] = []
        self._required: list[tuple[str, trio.MemorySendChannel[Any]]] = []
        self._optional: dict[str, trio.MemorySendChannel[Any]] = {}
        self.backpressure_seconds = 0.0
        self.dropped: dict[str, int] = {}
        self.published = 0

    # -- subscribing ---------------------------------------------------------

    def subscribe_sync(self, name: str, callback: Callable[[Any], None]) -> None:
        """A required subscriber called inline for every event (must be fast)."""
        self._sync.append((name, callback))

    def subscribe_required(self, name: str, capacity: int = 1024) -> trio.MemoryReceiveChannel[Any]:
        """A required asynchronous subscriber: a bounded channel the publisher awaits."""
        send, receive = trio.open_memory_channel[Any](capacity)
        self._required.append((name, send))
        return receive

    def subscribe_optional(self, name: str, capacity: int = 256) -> trio.MemoryReceiveChannel[Any]:
        """An optional subscriber: events are dropped (and counted) when it lags."""
        if name in self._optional:
            raise ValueError(f"optional subscriber {name!r} already exists")
        send, receive = trio.open_memory_channel[Any](capacity)
        self._optional[name] = send
        self.dropped.setdefault(name, 0)
        return receive

    def unsubscribe_optional(self, name: str) -> None:
        send = self._optional.pop(name, None)
        if send is not None:
            send.close()

    @contextmanager
    def optional_subscription(
        self, name: str, capacity: int = 256
    ) -> Iterator[trio.MemoryReceiveChannel[Any]]:
        receive = self.subscribe_optional(name, capacity)
        try:
            yield receive
        finally:
            self.unsubscribe_optional(name)

    @property
    def optional_subscribers(self) -> list[str]:
        return list(self._optional)

    # -- publishing ----------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Deliver `event` to every subscriber; waits only for required ones."""
        self.published += 1
        for _name, callback in self._sync:
            callback(event)
        for name, send in self._required:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                started = self._clock()
                try:
                    await send.send(event)
                finally:
                    self.backpressure_seconds += self._clock() - started
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.error("bus_required_subscriber_gone subscriber=%s", name)
                raise
        gone: list[str] = []
        for name, send in self._optional.items():
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped[name] = self.dropped.get(name, 0) + 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.append(name)
        for name in gone:
            log.info("bus_subscriber_left subscriber=%s", name)
            self._optional.pop(name, None)

    def close(self) -> None:
        """Close every channel: subscribers see end-of-stream."""
        for _name, send in self._required:
            send.close()
        for send in self._optional.values():
            send.close()
        self._required.clear()
        self._optional.clear()
