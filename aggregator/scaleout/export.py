"""The JetStream export: every accepted beat and fleet event, at least once, via a spool.

- Intake (never waits on NATS): the exporter is a REQUIRED, inline bus subscriber
  (`on_event`): each `BeatAccepted` is encoded (aggregator/scaleout/schema.py, a few µs) into
  an in-memory batch, bounded by `nats_spool_max`. (A channel and a task per event cost more
  than the encoding; `events`, a channel, is still accepted.) The history tracker's node
  transitions and the alerter's firing / resolved transitions arrive through
  `on_node_transitions` / `on_alert_transitions`, plain calls, into the same batch. Ingest
  never waits because NATS is slow or down.
- Spool: every `flush_interval` the batch is appended to the spool (a state-db table,
  aggregator/scaleout/spool.py, in a worker thread). What a SIGKILL loses is that last
  interval; a clean stop spools it first.
- Publisher: reads the spool oldest first, publishes a window of messages with their
  `Nats-Msg-Id` (pipelined on one connection, so in order), and deletes what NATS
  acknowledged. A failure keeps the rest in the spool and retries with backoff (0.2 s
  doubling to 10 s); a re-send of something NATS did store is dropped by the server's
  duplicate window. Beyond `nats_spool_max` messages the oldest are dropped and counted.

`stats()` feeds the `fil_heartbeat_nats_*` metrics (aggregator/self_metrics.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from aggregator.bus import BeatAccepted, Bus
from aggregator.errors import StoreError
from aggregator.networks import network_key
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsSettings, NatsUnavailable, open_bridge
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
#: Peers whose last beat's millisecond is remembered (to number beats of one millisecond).
LAST_MS_PEERS = 100_000

_Row = tuple[str, str, bytes, float]  # subject, msg id, payload, at


async def run_bridge(
    settings: NatsSettings, *, task_status: trio.TaskStatus[NatsBridge] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hold the process's one NATS bridge (and trio-asyncio loop) open until cancelled."""
    async with open_bridge(settings) as bridge:
        task_status.started(bridge)
        await trio.sleep_forever()


def alert_key(labels: Mapping[str, str]) -> str:
    """A stable short fingerprint of an alert's labels (its events' msg-id key)."""
    text = "\x1f".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        network_of: Callable[[str], str | None] = lambda _peer: None,
        flush_interval: float = 0.1,
        window: int = 256,
        publish_timeout: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.spool_factory = spool_factory
        self.origin = origin
        self.spool_max = spool_max
        self.network_of = network_of
        self.flush_interval = flush_interval
        self.window = window
        self.publish_timeout = publish_timeout
        self.wall_clock = wall_clock
        self.spool: Spool | None = None
        self.stats_ = ExportStats()
        self._pending: deque[_Row] = deque()
        self._last_ms: dict[str, tuple[int, int]] = {}
        self._spooled = trio.Event()
        self._spool_lock = trio.Lock()
        self.connected = False

    @classmethod
    def for_aggregator(
        cls, config: AggregatorConfig, peer_id: str, bus: Bus, fleet: Any, **kwargs: Any
    ) -> Exporter:
        """Subscribe to `bus` (required, inline) and spool into the state db."""

        def network_of(peer: str) -> str | None:
            records = fleet.records([peer])
            return network_key(records[0].genesis_cid) if records else None

        exporter = cls(
            None,
            partial(Spool, config.state_db, config.nats_spool_max),
            f"{config.name}/{peer_id}",
            spool_max=config.nats_spool_max,
            network_of=network_of,
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

    def offer_beat(self, event: BeatAccepted) -> None:
        beat = event.beat
        ms = schema.at_ms(event.at)
        last = self._last_ms.get(event.peer_id)
        repeat = last[1] + 1 if last is not None and last[0] == ms else 0
        self._last_ms[event.peer_id] = (ms, repeat)
        if len(self._last_ms) > LAST_MS_PEERS:
            self._last_ms.clear()  # only beats of one millisecond need telling apart
        self._offer(
            (
                schema.beat_subject(network_key(beat.genesis_cid), event.peer_id),
                schema.beat_msg_id(self.origin, event.peer_id, event.at, repeat),
                schema.encode_beat(self.origin, event.peer_id, event.at, beat),
                event.at,
            )
        )

    def offer_event(
        self, kind: str, network: str | None, key: str, at: float, fields: Mapping[str, Any]
    ) -> None:
        self._offer(
            (
                schema.event_subject(network, kind),
                schema.event_msg_id(kind, key, at),
                schema.encode_event(self.origin, kind, at, fields),
                at,
            )
        )

    def on_node_transitions(self, transitions: Iterable[NodeTransition]) -> None:
        """The history tracker's hook: each node state change as a `transition` event."""
        for t in transitions:
            self.offer_event(
                "transition",
                self.network_of(t.peer_id),
                t.peer_id,
                t.at,
                {"peer_id": t.peer_id, "state": t.state, "error": t.error},
            )

    def on_alert_transitions(self, transitions: Iterable[AlertTransition]) -> None:
        """The alerter's hook: `alert_firing` / `alert_resolved` (re-sends are not events)."""
        for tr in transitions:
            kind = {"fired": "alert_firing", "resolved": "alert_resolved"}.get(str(tr.kind))
            if kind is None:
                continue
            alert = tr.alert
            at = alert.ends_at if kind == "alert_resolved" and alert.ends_at else alert.starts_at
            self.offer_event(
                kind,
                alert.labels.get("network"),
                alert_key(alert.labels),
                at,
                {
                    "alertname": alert.alertname,
                    "severity": alert.severity,
                    "labels": dict(alert.labels),
                    "annotations": dict(alert.annotations),
                    "starts_at": alert.starts_at,
                    "ends_at": alert.ends_at,
                    "fingerprint": alert_key(alert.labels),
                },
            )

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
                await self.flush()  # a clean stop loses nothing: the next start drains it
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

    async def flush(self) -> None:
        """Move the in-memory batch into the spool (a worker thread)."""
        if not self._pending or self.spool is None:
            return
        rows = list(self._pending)
        self._pending.clear()
        spool = self.spool
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

    async def _publisher(self, bridge: NatsBridge) -> None:
        delay = RETRY_MIN
        stream_ready = False
        while True:
            spool = self.spool
            assert spool is not None
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
            self.stats_.published += sum(1 for r in results if r is True)
            self.stats_.duplicates += sum(1 for r in results if r is False)
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
        if self._pending:
            oldest = min(oldest, self._pending[0][3]) if oldest is not None else self._pending[0][3]
        depth = (spool.depth if spool is not None else 0) + len(self._pending)
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
