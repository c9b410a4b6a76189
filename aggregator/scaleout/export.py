"""The JetStream export: every accepted beat and fleet event, at least once, via a spool.

- Intake (never waits on NATS): the exporter is a REQUIRED, inline bus subscriber
  (`on_event`): each `BeatAccepted` is encoded (aggregator/scaleout/schema.py, a few µs) into
  an in-memory batch, bounded by `nats_spool_max`. (A channel and a task per event cost more
  than the encoding; `events`, a channel, is still accepted.) The history tracker's node
  transitions and the alerter's firing / resolved transitions arrive through
  `on_node_transitions` / `on_alert_transitions`, plain calls, into the same batch. Ingest
  never waits because NATS is slow or down.
- Every `flush_interval` the batch moves on. While the spool is empty and NATS acknowledges
  (`_direct_ok`), it goes from memory straight to the publisher: no SQLite write in the
  steady state. Otherwise it is appended to the spool (a state-db table,
  aggregator/scaleout/spool.py, in a worker thread).
- Publisher: publishes a handed-over batch, or a window of the spool oldest first, with
  their `Nats-Msg-Id` (pipelined on one connection, so in order). What NATS does not
  acknowledge within `publish_timeout` is spooled, with every batch waiting behind it, and
  the spool is drained (deleting what NATS acknowledged) until it is empty again. A failure
  retries with backoff (0.2 s doubling to 10 s); a re-send of something NATS did store is
  dropped by the server's duplicate window. Beyond `nats_spool_max` messages the oldest are
  dropped and counted. What a SIGKILL loses: what was neither acknowledged nor spooled
  (normally one interval and a round trip); a clean stop spools it.
- Node transitions and alert events: aggregator/scaleout/events.py (the lease's leader
  publishes the transitions).

`stats()` feeds the `fil_heartbeat_nats_*` metrics (aggregator/self_metrics.py).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from aggregator.bus import BeatAccepted, Bus
from aggregator.errors import StoreError
from aggregator.networks import network_key
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsSettings, NatsUnavailable, open_bridge
from aggregator.scaleout.events import FleetEvents, Row, alert_key
from aggregator.scaleout.spool import Spool

if TYPE_CHECKING:
    from aggregator.alerts.model import Transition as AlertTransition
    from aggregator.config import AggregatorConfig
    from aggregator.history import Transition as NodeTransition

__all__ = ["EXPORT_CHANNEL_CAPACITY", "ExportStats", "Exporter", "alert_key", "run_bridge"]

log = logging.getLogger(__name__)

#: The exporter's bus channel: it only encodes, so a few seconds of a large fleet suffice.
EXPORT_CHANNEL_CAPACITY = 8192
RETRY_MIN, RETRY_MAX = 0.2, 10.0
#: Batches handed to the publisher from memory at most (then the spool takes the rest).
DIRECT_BATCHES = 8
#: Peers whose last beat's millisecond is remembered (to number beats of one millisecond).
LAST_MS_PEERS = 100_000
#: Accepted beats kept as they came before being encoded in one pass (at each flush, before
#: any event row, or when this many wait): one tight loop per batch instead of the encoder's
#: code and caches warmed up again for every beat between two of the ingest's.
ENCODE_BATCH = 1024

_Row = Row


async def run_bridge(
    settings: NatsSettings, *, task_status: trio.TaskStatus[NatsBridge] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hold the process's one NATS bridge (and trio-asyncio loop) open until cancelled."""
    async with open_bridge(settings) as bridge:
        task_status.started(bridge)
        await trio.sleep_forever()


@dataclass
class ExportStats:
    published: int = 0
    duplicates: int = 0
    publish_errors: int = 0
    dropped: int = 0
    encoded: int = 0


class Exporter:
    """Bus → spool → JetStream (see the module docstring)."""

    def __init__(
        self,
        events: trio.MemoryReceiveChannel[Any] | None,
        spool_factory: Callable[[], Spool],
        origin: str,
        *,
        spool_max: int = 100_000,
        node_of: Callable[[str], tuple[str | None, float | None]] = lambda _peer: (None, None),
        flush_interval: float = 0.1,
        window: int = 256,
        publish_timeout: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.spool_factory = spool_factory
        self.origin = origin
        self.spool_max = spool_max
        self.flush_interval = flush_interval
        self.window = window
        self.publish_timeout = publish_timeout
        self.wall_clock = wall_clock
        self.spool: Spool | None = None
        self.stats_ = ExportStats()
        self._pending: deque[_Row] = deque()
        #: Beats accepted and not yet encoded (`_encode_beats` moves them to `_pending`).
        self._beats: list[BeatAccepted] = []
        self._last_ms: dict[str, tuple[int, int]] = {}
        self._encoder = schema.BeatEncoder(origin)
        self._spooled = trio.Event()
        self._spool_lock = trio.Lock()
        self.connected = False
        #: Batches `flush` handed straight to the publisher (the spool was empty and NATS
        #: acknowledging: `_direct_ok`), and the one being published.
        self._direct: deque[list[_Row]] = deque()
        self._inflight: list[_Row] = []
        self._direct_ok = False
        #: Node transitions and alert events (published by the lease's leader).
        self.fleet_events = FleetEvents(origin, self._offer_event, node_of, wall_clock, spool_max)

    @classmethod
    def for_aggregator(
        cls, config: AggregatorConfig, peer_id: str, bus: Bus, fleet: Any, **kwargs: Any
    ) -> Exporter:
        """Subscribe to `bus` (required, inline) and spool into the state db."""

        def node_of(peer: str) -> tuple[str | None, float | None]:
            records = fleet.records([peer])
            if not records:
                return None, None
            return network_key(records[0].genesis_cid), records[0].last_beat

        exporter = cls(
            None,
            partial(Spool, config.state_db, config.nats_spool_max),
            f"{config.name}/{peer_id}",
            spool_max=config.nats_spool_max,
            node_of=node_of,
            **kwargs,
        )
        bus.subscribe_sync("nats_export", exporter.on_event)
        return exporter

    # -- intake (synchronous, cheap) ------------------------------------------

    def _offer(self, row: _Row) -> None:
        self._pending.append(row)
        self.stats_.encoded += 1
        if len(self._pending) > self.spool_max:  # the spool is stuck: keep the newest
            self._pending.popleft()
            self.stats_.dropped += 1

    def _offer_event(self, row: _Row) -> None:
        """An event's row, behind every beat accepted before it (the stream keeps the order)."""
        self._encode_beats()
        self._offer(row)

    def offer_beat(self, event: BeatAccepted) -> None:
        beats = self._beats
        beats.append(event)
        if len(beats) >= ENCODE_BATCH:
            self._encode_beats()

    def _encode_beats(self) -> None:
        """Every waiting beat as its row (subject, msg id, payload, at), in order."""
        beats, self._beats = self._beats, []
        last_ms = self._last_ms
        encode = self._encoder.subject_and_payload
        origin, offer = self.origin, self._offer
        for event in beats:
            peer_id, at = event.peer_id, event.at
            ms = schema.at_ms(at)
            last = last_ms.get(peer_id)
            repeat = last[1] + 1 if last is not None and last[0] == ms else 0
            last_ms[peer_id] = (ms, repeat)
            if len(last_ms) > LAST_MS_PEERS:
                last_ms.clear()  # only beats of one millisecond need telling apart
            subject, payload = encode(network_key, peer_id, at, event.beat)
            offer((subject, schema.beat_msg_id(origin, peer_id, at, repeat), payload, at))

    # -- fleet events (aggregator/scaleout/events.py) -----------------------------

    def on_node_transitions(self, transitions: Iterable[NodeTransition]) -> None:
        """The history tracker's hook (see `FleetEvents.node_transitions`)."""
        self.fleet_events.node_transitions(transitions)

    def on_alert_transitions(self, transitions: Iterable[AlertTransition]) -> None:
        """The alerter's hook (see `FleetEvents.alert_transitions`)."""
        self.fleet_events.alert_transitions(transitions)

    async def follow_leader(self, leader: Any, read_published: Any = None) -> None:
        """See `FleetEvents.follow_leader`."""
        await self.fleet_events.follow_leader(leader, read_published)

    # -- the tasks ------------------------------------------------------------

    async def run(
        self, bridge: NatsBridge, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            self.spool = await trio.to_thread.run_sync(self.spool_factory)
        except StoreError as exc:
            log.error("nats_spool_unavailable err=%s", exc)
            raise
        log.info("nats_export_started origin=%s spooled=%d", self.origin, self.spool.depth)
        try:
            async with trio.open_nursery() as nursery:
                if self.events is not None:
                    nursery.start_soon(self._intake)
                nursery.start_soon(self._flusher)
                nursery.start_soon(self._publisher, bridge)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                # a clean stop loses nothing: what is in flight or waiting for the publisher
                # and the batch go to the spool (the next start drains it; what NATS had
                # stored already is dropped there as a duplicate)
                waiting, self._inflight = self._inflight, []
                await self._to_spool(waiting)
                await self.flush(to_spool=True)
                spool, self.spool = self.spool, None
                if spool is not None:
                    await trio.to_thread.run_sync(spool.close)

    def on_event(self, event: object) -> None:
        """The inline bus subscriber."""
        if isinstance(event, BeatAccepted):
            self.offer_beat(event)

    async def _intake(self) -> None:
        assert self.events is not None
        async for event in self.events:
            self.on_event(event)

    async def _flusher(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + self.flush_interval, trio.current_time())
            await trio.sleep_until(deadline)
            await self.flush()

    async def flush(self, *, to_spool: bool = False) -> None:
        """Move the in-memory batch on: straight to the publisher while the spool is empty
        and NATS acknowledges (no SQLite in the steady state), else into the spool."""
        self._encode_beats()
        if not self._pending or self.spool is None:
            return
        rows = list(self._pending)
        self._pending.clear()
        if self._direct_ok and not to_spool and self.spool.depth == 0:
            if len(self._direct) >= DIRECT_BATCHES:
                # the publisher is behind (or waiting for acks that may not come): the batch
                # waits here, so that whatever happens to those ahead, order is kept
                self._pending.extendleft(reversed(rows))
                return
            self._direct.append(rows)
            self._spooled.set()
            return
        await self._append(rows)

    async def _append(self, rows: list[_Row]) -> None:
        """Rows into the spool (a worker thread); on failure back into the batch."""
        spool = self.spool
        if spool is None or not rows:
            return
        async with self._spool_lock:
            try:
                dropped = await trio.to_thread.run_sync(spool.append, rows)
            except StoreError as exc:
                log.error("nats_spool_write_failed rows=%d err=%s", len(rows), exc)
                self._pending.extendleft(reversed(rows))  # retried next time
                return
        if dropped:
            self.stats_.dropped += dropped
            log.warning("nats_spool_full dropped=%d max=%d", dropped, spool.max_items)
        self._spooled.set()

    async def _to_spool(self, first: list[_Row]) -> None:
        """Direct mode ends (NATS did not acknowledge): `first`, then every batch waiting for
        the publisher, into the spool in order, ahead of anything newer."""
        self._direct_ok = False
        rows = list(first)
        while self._direct:
            rows.extend(self._direct.popleft())
        self._inflight = rows
        try:
            await self._append(rows)
        finally:
            self._inflight = []

    def _count(self, results: list[bool | None]) -> None:
        self.stats_.published += sum(1 for r in results if r is True)
        self.stats_.duplicates += sum(1 for r in results if r is False)

    async def _publish_direct(self, bridge: NatsBridge) -> str | None:
        """Publish the oldest batch handed over by `flush`; the reason when some of it
        was not acknowledged (then it and the rest went to the spool)."""
        rows = self._direct.popleft()
        self._inflight = rows
        reason: str | None = None
        try:
            items = [(r[0], r[2], r[1]) for r in rows]
            results = await bridge.publish_many(items, timeout=self.publish_timeout)
        except NatsUnavailable as exc:
            results, reason = [None] * len(rows), exc.reason
        self._count(results)
        unacked = [row for row, r in zip(rows, results, strict=True) if r is None]
        if not unacked:
            self._inflight = []
            return None
        await self._to_spool(unacked)
        return reason or f"{len(unacked)} of {len(rows)} not acknowledged"

    async def _publisher(self, bridge: NatsBridge) -> None:
        delay = RETRY_MIN
        stream_ready = False
        while True:
            spool = self.spool
            assert spool is not None
            if self._direct:
                reason = await self._publish_direct(bridge)
                if reason is None:
                    delay = RETRY_MIN
                    continue
                self._failed(reason, delay)
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            if spool.depth == 0:
                self._spooled = trio.Event()
                await self._spooled.wait()
                continue
            try:
                if not stream_ready:
                    await bridge.ensure_stream()
                    stream_ready = True
                async with self._spool_lock:
                    batch = await trio.to_thread.run_sync(spool.peek, self.window)
                items = [(m.subject, m.data, m.msg_id) for m in batch]
                results = await bridge.publish_many(items, timeout=self.publish_timeout)
            except NatsUnavailable as exc:
                self._failed(exc.reason, delay)
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            done = [m.seq for m, r in zip(batch, results, strict=True) if r is not None]
            self._count(results)
            async with self._spool_lock:
                await trio.to_thread.run_sync(spool.remove, done)
            if len(done) < len(batch):
                self._failed(f"{len(batch) - len(done)} of {len(batch)} not acknowledged", delay)
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            if not self.connected:
                log.info("nats_export_flowing spooled=%d", spool.depth)
            self.connected = True
            # the spool is drained: the next batches go straight to NATS again
            self._direct_ok = spool.depth == 0
            delay = RETRY_MIN

    def _failed(self, reason: str, delay: float) -> None:
        self.stats_.publish_errors += 1
        if self.connected or self.stats_.publish_errors == 1:
            log.warning("nats_export_spooling reason=%s retry_in=%.1fs", reason, delay)
        self.connected = False

    # -- metrics --------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """The values of the `fil_heartbeat_nats_*` metrics, read on the event loop."""
        spool = self.spool
        oldest = spool.oldest_at if spool is not None else None
        in_memory = len(self._beats) + len(self._pending) + len(self._inflight)
        firsts = [self._pending[0][3]] if self._pending else []
        if self._beats:
            firsts.append(self._beats[0].at)
        if self._inflight:
            firsts.append(self._inflight[0][3])
        for rows in self._direct:
            in_memory += len(rows)
            if rows:
                firsts.append(rows[0][3])
        if firsts:
            oldest = min(firsts) if oldest is None else min(oldest, *firsts)
        depth = (spool.depth if spool is not None else 0) + in_memory
        s = self.stats_
        return {
            "spool_depth": float(depth),
            "spool_oldest_age_seconds": max(0.0, self.wall_clock() - oldest) if oldest else 0.0,
            "spool_dropped_total": float(s.dropped),
            "published_total": float(s.published),
            "duplicates_total": float(s.duplicates),
            "publish_errors_total": float(s.publish_errors),
            "connected": 1.0 if self.connected else 0.0,
        }
