"""The live feed: bus events as JSON over a WebSocket (`GET /api/v1/feed`, served by http.py).

Each client is an OPTIONAL bus subscriber (`Bus.optional_subscription`): events wait in a
bounded channel (`capacity`, default 1024) and, when the client falls behind, the bus drops
them for that client and counts them in `fil_heartbeat_bus_dropped_total{subscriber}`. A slow
or stuck client never slows the ingest.

- One text message per event, in publication order: `{"type": "beat", "peer_id", "at",
  "head", "height", "nickname", "miner_address"}`, `{"type": "connected", "peer_id", "at",
  "remote_addr"}` or `{"type": "disconnected", "peer_id", "at"}` (`at`: unix seconds).
- `?peer=<peer_id>` keeps one peer's events.
- `?mode=nodes`: the summarised feed the status page reads (aggregator/statuspage/live.py):
  instead of every event, at most one message per `nodes_interval` (1 s): first the whole
  fleet as the JSON API has it, then per-node deltas (only the nodes, and the fields, that
  changed). At 10,000 nodes beating 3,000 times a second a browser reads one message a
  second. It needs `nodes_source` (set by http.py); without one the client is closed with
  1008, as is one asking for an unknown mode. The fleet is taken once per interval for all
  summarised clients, whatever their number.
- `public`: the events as a public status page may show them (`redact_public`: no remote
  addresses).
- At most `max_clients` (64) at once; one more is accepted and closed at once with code 1013
  (try again later). Subscriber names are `feed-<slot>`, the slot being the lowest free one
  below `max_clients`: unique among the open feeds, and the dropped-events counter has at
  most `max_clients` label values however many clients come and go.
- The client closing (or its connection dying) unsubscribes it; `Bus.close()` ends the feed
  with code 1001 (going away).

What a client sends is read and ignored. hypercorn shields its socket writes from
cancellation: a client that stops reading while its connection stays up holds its slot (and
its task, blocked in a write), with its events dropped meanwhile, until the kernel cuts the
connection (`TCP_USER_TIMEOUT`, 30 s, set by `heartbeat.common.asgi.serve_asgi` on Linux).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from aggregator.bus import BeatAccepted, PeerConnected, PeerDisconnected
from aggregator.statuspage.live import NodesDiff
from aggregator.statuspage.privacy import redact_public

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregator.bus import Bus
    from heartbeat.common.asgi import Receive, Scope, Send

__all__ = [
    "FEED_CAPACITY",
    "MAX_FEED_CLIENTS",
    "NODES_INTERVAL",
    "POLICY_VIOLATION",
    "TRY_AGAIN_LATER",
    "Feed",
    "feed_json",
]

log = logging.getLogger(__name__)

#: Clients at once; more are closed with `TRY_AGAIN_LATER`.
MAX_FEED_CLIENTS = 64
#: Events buffered per client before the bus drops them for it (~1 s of 1,000 beating nodes).
FEED_CAPACITY = 1024
#: WebSocket close codes (RFC 6455, 7.4.1; 1013 from the IANA registry).
TRY_AGAIN_LATER = 1013
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
#: Seconds between two messages of the summarised feed (`?mode=nodes`).
NODES_INTERVAL = 1.0


def feed_json(event: object) -> dict[str, Any] | None:
    """The feed's JSON object for a bus event (None for an event the feed does not carry)."""
    if isinstance(event, BeatAccepted):
        beat = event.beat
        return {
            "type": "beat",
            "peer_id": event.peer_id,
            "at": event.at,
            "head": beat.head,
            "height": beat.height,
            "nickname": beat.nickname,
            "miner_address": beat.miner_address,
        }
    if isinstance(event, PeerConnected):
        return {
            "type": "connected",
            "peer_id": event.peer_id,
            "at": event.at,
            "remote_addr": event.remote_addr,
        }
    if isinstance(event, PeerDisconnected):
        return {"type": "disconnected", "peer_id": event.peer_id, "at": event.at}
    return None


class Feed:
    """The feed's clients on one bus; `serve` runs one accepted-or-refused WebSocket."""

    def __init__(
        self, bus: Bus, *, max_clients: int = MAX_FEED_CLIENTS, capacity: int = FEED_CAPACITY
    ) -> None:
        self.bus = bus
        self.max_clients = max_clients
        self.capacity = capacity
        self._slots: set[int] = set()
        self.public = False
        self.nodes_source: (
            Callable[[], tuple[float, list[dict[str, Any]], list[dict[str, Any]]]] | None
        ) = None
        self.nodes_interval = NODES_INTERVAL
        self.live = NodesDiff()
        self._live_taken: float | None = None  # trio time of the last `live.update`

    @property
    def clients(self) -> int:
        return len(self._slots)

    def _take_slot(self) -> int | None:
        # Synchronous between the check and the claim: no other client can take it meanwhile.
        for slot in range(self.max_clients):
            if slot not in self._slots:
                self._slots.add(slot)
                return slot
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One WebSocket whose `websocket.connect` has been received."""
        client = _client(scope)
        slot = self._take_slot()
        if slot is None:
            log.warning(
                "feed_refused reason=too_many_clients max=%d client=%s", self.max_clients, client
            )
            await send({"type": "websocket.accept"})
            await send(
                {
                    "type": "websocket.close",
                    "code": TRY_AGAIN_LATER,
                    "reason": "too many feed clients",
                }
            )
            return
        name = f"feed-{slot}"
        peer = _query_param(scope, "peer")
        mode = _query_param(scope, "mode")
        if mode is not None:
            try:
                await self._serve_summary(mode, name, client, receive, send)
            finally:
                self._slots.discard(slot)
            return
        try:
            # Subscribed before the accept: a client sees every event published after its
            # handshake completed.
            with self.bus.optional_subscription(name, self.capacity) as events:
                await send({"type": "websocket.accept"})
                log.info("feed_opened subscriber=%s client=%s peer=%s", name, client, peer)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, events, peer, send, nursery.cancel_scope)
                    await _until_disconnect(receive)
                    nursery.cancel_scope.cancel()
        finally:
            self._slots.discard(slot)
        log.info(
            "feed_closed subscriber=%s client=%s dropped_total=%d",
            name,
            client,
            self.bus.dropped.get(name, 0),
        )

    async def _serve_summary(
        self, mode: str, name: str, client: str, receive: Receive, send: Send
    ) -> None:
        await send({"type": "websocket.accept"})
        if mode != "nodes" or self.nodes_source is None:
            log.info("feed_refused reason=unknown_mode mode=%s client=%s", mode, client)
            reason = "unknown mode" if mode != "nodes" else "no summary here"
            await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": reason})
            return
        log.info("feed_opened subscriber=%s client=%s mode=%s", name, client, mode)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_nodes, send)
            await _until_disconnect(receive)
            nursery.cancel_scope.cancel()
        log.info("feed_closed subscriber=%s client=%s mode=%s", name, client, mode)

    def _refresh_live(self) -> None:
        """Take the fleet into `live` unless another client did so this interval."""
        assert self.nodes_source is not None
        now = trio.current_time()
        # 0.9: clients wake at their own phases; one of them refreshes about once a period.
        if self._live_taken is None or now - self._live_taken >= 0.9 * self.nodes_interval:
            at, nodes, networks = self.nodes_source()
            self.live.update(nodes, networks, at)
            self._live_taken = now

    async def _pump_nodes(self, send: Send) -> None:
        seq: int | None = None
        deadline = trio.current_time()
        while True:
            self._refresh_live()
            texts = self.live.since(seq)
            seq = self.live.seq  # read before the sends: an update meanwhile comes next time
            for text in texts:
                await send({"type": "websocket.send", "text": text})
            deadline += self.nodes_interval
            await trio.sleep_until(deadline)

    async def _pump(
        self,
        events: trio.MemoryReceiveChannel[Any],
        peer: str | None,
        send: Send,
        done: trio.CancelScope,
    ) -> None:
        async for first in events:
            # Whatever else is queued, without a trip through the scheduler per event: a
            # filtered feed then costs little per event it skips.
            batch = [first]
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while True:
                    batch.append(events.receive_nowait())
            for event in batch:
                if peer is not None and getattr(event, "peer_id", None) != peer:
                    continue
                payload = feed_json(event)
                if payload is not None:
                    if self.public:
                        payload = redact_public(payload)
                    await send({"type": "websocket.send", "text": json.dumps(payload)})
        # The bus closed: nothing more will come.
        await send({"type": "websocket.close", "code": GOING_AWAY, "reason": "feed ended"})
        done.cancel()


async def _until_disconnect(receive: Receive) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return


def _query_param(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[-1] if values else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
