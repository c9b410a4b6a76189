"""The fan-out from ingest to its consumers, like a small event broker.

- REQUIRED subscribers see every event, in publication order (so in order per
  node). A synchronous callback runs inline and must be cheap (the fleet model
  update; the alert evaluator's change signal); an asynchronous one reads a
  bounded trio channel that the publisher awaits (the persistence writer), so a
  slow consumer applies back-pressure. The time the publisher spends waiting is
  measured (`backpressure_seconds`, exported as
  `fil_heartbeat_bus_backpressure_seconds_total`).
- `publish_nowait` is the synchronous fast path (ingest's: no coroutine, no checkpoint
  per beat): it delivers at once where it can; an event a full required channel cannot
  take waits in that subscriber's backlog, in order, and `publish_nowait` returns False:
  the publisher then owes the wait, `await flush()`, before it publishes more.
- OPTIONAL subscribers (live feeds) get events through bounded channels with
  `send_nowait`; when full, the event is dropped for that subscriber and
  counted. A slow optional consumer never slows ingest.

Events are the small frozen dataclasses below; ingest publishes them.
"""

from __future__ import annotations

import logging
from collections import deque
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


class _Required:
    """An asynchronous required subscriber: its channel, and what it could not take yet."""

    __slots__ = ("backlog", "name", "send")

    def __init__(self, name: str, send: trio.MemorySendChannel[Any]) -> None:
        self.name = name
        self.send = send
        self.backlog: deque[Any] = deque()


class Bus:
    """One publisher (ingest), many subscribers; see the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._sync: list[tuple[str, Callable[[Any], None]]] = []
        self._callbacks: tuple[Callable[[Any], None], ...] = ()
        self._required: list[_Required] = []
        self._optional: dict[str, trio.MemorySendChannel[Any]] = {}
        self.backpressure_seconds = 0.0
        self.dropped: dict[str, int] = {}
        self.published = 0

    # -- subscribing ---------------------------------------------------------

    def subscribe_sync(self, name: str, callback: Callable[[Any], None]) -> None:
        """A required subscriber called inline for every event (must be fast)."""
        self._sync.append((name, callback))
        self._callbacks = tuple(cb for _name, cb in self._sync)

    def subscribe_required(self, name: str, capacity: int = 1024) -> trio.MemoryReceiveChannel[Any]:
        """A required asynchronous subscriber: a bounded channel the publisher awaits."""
        send, receive = trio.open_memory_channel[Any](capacity)
        self._required.append(_Required(name, send))
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

    def publish_nowait(self, event: Event) -> bool:
        """Deliver `event` now; False when a required subscriber must be waited for.

        Sync and optional subscribers always get it at once. A full required channel
        keeps it in that subscriber's backlog (behind any earlier one, so the order
        holds): the caller must `await flush()` before it publishes again.
        """
        self.published += 1
        for callback in self._callbacks:
            callback(event)
        delivered = True
        for sub in self._required:
            if sub.backlog:
                sub.backlog.append(event)
                delivered = False
                continue
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.backlog.append(event)
                delivered = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.error("bus_required_subscriber_gone subscriber=%s", sub.name)
                raise
        if self._optional:
            self._offer_optional(event)
        return delivered

    async def publish(self, event: Event) -> None:
        """Deliver `event` to every subscriber; waits only for required ones."""
        if not self.publish_nowait(event):
            await self.flush()

    async def flush(self) -> None:
        """Wait until every required subscriber has taken its backlog (back-pressure).

        Several publishers may flush at once: each event is taken off the backlog before
        its send, and trio queues blocked senders in order, so the order still holds.
        """
        for sub in self._required:
            if not sub.backlog:
                continue
            started = self._clock()
            try:
                while sub.backlog:
                    event = sub.backlog.popleft()
                    try:
                        await sub.send.send(event)
                    except trio.Cancelled:
                        sub.backlog.appendleft(event)  # not sent: the next flush sends it
                        raise
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        log.error("bus_required_subscriber_gone subscriber=%s", sub.name)
                        raise
            finally:
                self.backpressure_seconds += self._clock() - started

    def _offer_optional(self, event: Event) -> None:
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
        for sub in self._required:
            sub.send.close()
        for send in self._optional.values():
            send.close()
        self._required.clear()
        self._optional.clear()
