"""The merged fleet's consumer (trio shell): beats other aggregators accepted, read from the
stream and merged into this aggregator's fleet (aggregator/scaleout/merge.py).

`MergeConsumer(bridge, merger, catch_up=600).run(task_status=...)` reads
`fil.heartbeat.*.beat.>` through an ephemeral consumer without acknowledgements, polled
every `POLL_INTERVAL` (what is stored since, in one burst; its own beats dropped unread by
their msg id). At start
(the catch-up) it asks for the newest beat of every subject (every node), then every new
one: one message per node rather than the window's every beat; a newest beat older than
`catch_up` seconds (wall clock) is skipped. When NATS fails it re-creates the consumer from
the newest beat merged, minus a little (the repeats are dropped as duplicates). Ready
(`caught_up`): once a message stored after the start has been merged (the backlog is behind
it), or once the stream has been idle for `IDLE_CAUGHT_UP` seconds, or at the latest
`GIVE_UP` seconds after the start (NATS down: the aggregator serves its own agents meanwhile,
and says so in its log).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsUnavailable, StreamMsg
from aggregator.scaleout.merge import RemoteMerger

__all__ = ["BEAT_SUBJECTS", "GIVE_UP", "IDLE_CAUGHT_UP", "MergeConsumer", "start_merge"]

log = logging.getLogger(__name__)

BEAT_SUBJECTS = ["fil.heartbeat.*.beat.>"]
#: No message for this long (seconds): the backlog is read.
IDLE_CAUGHT_UP = 2.0
#: Ready after this long (seconds) even if NATS never answered.
GIVE_UP = 30.0
#: A re-created consumer starts this far before the newest beat merged (seconds): the
#: redeliveries are dropped as duplicates, and nothing in between is missed.
RESUME_OVERLAP = 5.0
RETRY_PAUSE = 1.0
#: Messages per pull request.
FETCH_BATCH = 1024
#: How often the consumer asks for what is new (seconds): a remote beat is merged at most
#: this much later, and the reads come in bursts (one wakeup each), not one per beat.
POLL_INTERVAL = 0.25


class MergeConsumer:
    """Stream → `RemoteMerger` (see the module doc)."""

    def __init__(
        self,
        bridge: NatsBridge,
        merger: RemoteMerger,
        *,
        catch_up: float = 600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.bridge = bridge
        self.merger = merger
        self.catch_up = catch_up
        self.wall_clock = wall_clock
        self.caught_up = trio.Event()
        self.started_at = 0.0  # wall clock
        self.catch_up_seconds: float | None = None  # how long the catch-up took (monotonic)
        self.received = 0
        self.undecodable = 0
        self.consumer_errors = 0
        self.too_old = 0  # newest beats of nodes silent since before the window, skipped
        self.window_start = 0.0  # wall clock: beats older than this are not merged
        self._last_msg = 0.0  # trio clock

    def _ready(self, why: str, began: float) -> None:
        if not self.caught_up.is_set():
            self.catch_up_seconds = trio.current_time() - began
            self.caught_up.set()
            log.info(
                "nats_catch_up_done reason=%s seconds=%.2f merged=%d",
                why,
                self.catch_up_seconds,
                self.received,
            )

    async def run(
        self, *, task_status: trio.TaskStatus[MergeConsumer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        began = trio.current_time()
        self.started_at = self.wall_clock()
        self._last_msg = began
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, began)
            task_status.started(self)
            since = self.started_at - self.catch_up
            self.window_start = since
            first = True
            while True:
                try:
                    await self._consume(since, began, last_per_subject=first)
                except NatsUnavailable as exc:
                    self.consumer_errors += 1
                    log.warning("nats_merge_consumer_failed err=%s", exc.reason)
                first = False
                newest = self.merger.stats.newest_at
                since = max(since, newest - RESUME_OVERLAP) if newest else since
                await trio.sleep(RETRY_PAUSE)

    async def _watch(self, began: float) -> None:
        """Ready once idle (the backlog read), or at the give-up time."""
        while not self.caught_up.is_set():
            now = trio.current_time()
            if now - began >= GIVE_UP:
                log.warning("nats_catch_up_gave_up seconds=%.0f merged=%d", GIVE_UP, self.received)
                self._ready("gave_up", began)
                return
            if self.received and now - self._last_msg >= IDLE_CAUGHT_UP:
                self._ready("idle", began)
                return
            if not self.received and self._connected_idle(now, began):
                self._ready("empty", began)
                return
            await trio.sleep(0.2)

    def _connected_idle(self, now: float, began: float) -> bool:
        return self.bridge.connected and now - max(began, self._last_msg) >= IDLE_CAUGHT_UP

    async def _consume(self, since: float, began: float, *, last_per_subject: bool) -> None:
        merge = self.merger.merge
        await self.bridge.ensure_stream()  # the first aggregator up creates it
        # No acknowledgements: an ephemeral reader that re-creates its consumer from the
        # newest beat it merged (duplicates dropped) needs none, and one round trip per beat
        # through the asyncio bridge capped the catch-up at ~2,000 beats/s.
        stream = self.bridge.poll(
            BEAT_SUBJECTS,
            deliver_since=since,
            batch=FETCH_BATCH,
            last_per_subject=last_per_subject,
            interval=POLL_INTERVAL,
            # this aggregator's own beats (their msg ids start with its origin) are dropped
            # in the bridge, before their metadata and payload are read
            skip_id_prefix=self.merger.origin + ":",
            on_skipped=lambda count, stored: self._on_skipped(count, stored, began),
        )
        async with contextlib.aclosing(stream) as batches:
            async for msgs in batches:
                for msg in msgs:
                    self._on_message(msg, merge, began)

    def _on_skipped(self, count: int, stored: float, began: float) -> None:
        """Own beats dropped unread: counted, and (their store time) the resume point and
        the catch-up's progress."""
        self._last_msg = trio.current_time()
        self.merger.skipped_own(count, stored)
        if stored >= self.started_at and not self.caught_up.is_set():
            self._ready("live", began)

    def _on_message(self, msg: StreamMsg, merge: Callable[..., object], began: float) -> None:
        self._last_msg = trio.current_time()
        try:
            decoded = schema.decode(msg.data)
        except schema.StreamDecodeError as exc:
            self.undecodable += 1
            log.debug("nats_merge_undecodable seq=%d err=%s", msg.seq, exc)
            return
        if isinstance(decoded, schema.StreamBeat):
            if decoded.at < self.window_start:  # a node silent since before the window
                self.too_old += 1
                return
            self.received += 1
            merge(decoded.origin, decoded.peer_id, decoded.beat, decoded.at)
            if msg.timestamp >= self.started_at and not self.caught_up.is_set():
                self._ready("live", began)


async def start_merge(agg: Any, nursery: trio.Nursery) -> MergeConsumer:
    """The aggregator's wiring (aggregator/app.py, after the bridge and the export): this
    aggregator's origin in the fleet, the consumer, the HA metrics; `run_aggregator` waits for
    `caught_up` before it reports ready."""
    from aggregator.scaleout.ha_metrics import HaCollector

    origin = agg.nats_export.origin
    agg.fleet.origin = origin
    agg.nats_merge = MergeConsumer(
        agg.nats,
        RemoteMerger(agg.fleet, origin),
        catch_up=agg.config.nats_catch_up,
        wall_clock=agg.wall_clock,
    )
    agg.ha_metrics = HaCollector(agg.config.name, agg.fleet, agg.wall_clock, agg.nats_merge)
    agg.metrics.registry.register(agg.ha_metrics)
    await nursery.start(agg.nats_merge.run)
    # The lease runs with or without the alerter: its leader also publishes the fleet's node
    # transitions (once on the stream across aggregators, docs/STREAM.md).
    from aggregator.scaleout.leader import start_leader

    await start_leader(agg, nursery)
    consumer: MergeConsumer = agg.nats_merge
    return consumer
