"""The merged fleet's consumer (trio shell): beats other aggregators accepted, read from the
stream and merged into this aggregator's fleet (aggregator/scaleout/merge.py).

`MergeConsumer(bridge, merger, catch_up=600).run(task_status=...)` reads
`fil.heartbeat.*.beat.>` in two ways, both without acknowledgements:

- **Live**, a core subscription on the bridge's connection (`NatsBridge.live`), taken every
  `POLL_INTERVAL` in one burst. The connection is made with `no_echo`, so the server sends
  it only the beats the other aggregators published: a lone aggregator reads nothing back,
  and two read each other's beats only (the stream is not read for them).
- **From the stream**, an ephemeral consumer asking for the newest beat of every subject
  (every node; its own dropped unread by their msg id), polled until nothing is left behind
  it: after the live subscription is in place, at start (the catch-up) and again whenever
  the live one may have missed a beat (the connection lost or re-made, its buffer full).
  One message per node rather than the window's every beat; a newest beat older than
  `catch_up` seconds (wall clock) is skipped. What both deliver is merged twice and dropped
  the second time as a duplicate.

Ready (`caught_up`): once the start-up read of the stream is done, or at the latest
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
from aggregator.scaleout.bridge import NatsBridge, NatsUnavailable
from aggregator.scaleout.merge import RemoteMerger

__all__ = ["BEAT_SUBJECTS", "GIVE_UP", "MergeConsumer", "start_merge"]

log = logging.getLogger(__name__)

BEAT_SUBJECTS = ["fil.heartbeat.*.beat.>"]
#: Ready after this long (seconds) even if NATS never answered.
GIVE_UP = 30.0
RETRY_PAUSE = 1.0
#: Messages per pull request (reading the stream).
FETCH_BATCH = 1024
#: How often the live beats are taken (seconds): a remote beat is merged at most this much
#: later, and they come in bursts (one wakeup each), not one per beat.
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
        self.resyncs = 0  # reads of the stream done (the catch-up, then after each loss)

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
        self.window_start = self.started_at - self.catch_up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._give_up, began)
            task_status.started(self)
            while True:
                try:
                    await self._consume(began)
                except NatsUnavailable as exc:
                    self.consumer_errors += 1
                    log.warning("nats_merge_consumer_failed err=%s", exc.reason)
                await trio.sleep(RETRY_PAUSE)

    async def _give_up(self, began: float) -> None:
        """Ready at the give-up time, whatever NATS does."""
        await trio.sleep(GIVE_UP)
        if not self.caught_up.is_set():
            log.warning("nats_catch_up_gave_up seconds=%.0f merged=%d", GIVE_UP, self.received)
            self._ready("gave_up", began)

    async def _consume(self, began: float) -> None:
        await self.bridge.ensure_stream()  # the first aggregator up creates it
        async with self.bridge.live(BEAT_SUBJECTS) as live:
            # in place: what is published from now on comes live; what is stored, from here
            await self._read_stream()
            self.resyncs += 1
            self._ready("read", began)
            on_payload = self._on_payload
            while True:
                for data in await live.take(POLL_INTERVAL):
                    on_payload(data)

    async def _read_stream(self) -> None:
        """The newest stored beat of every node, until nothing is left behind the last."""
        stream = self.bridge.poll(
            BEAT_SUBJECTS,
            deliver_since=None,
            batch=FETCH_BATCH,
            last_per_subject=True,
            until_drained=True,
            # this aggregator's own beats (their msg ids start with its origin) are dropped
            # in the bridge, before their metadata and payload are read
            skip_id_prefix=self.merger.origin + ":",
            on_skipped=self.merger.skipped_own,
        )
        on_payload = self._on_payload
        async with contextlib.aclosing(stream) as batches:
            async for msgs in batches:
                for msg in msgs:
                    on_payload(msg.data)

    def _on_payload(self, data: bytes) -> None:
        try:
            decoded = schema.decode(data)
        except schema.StreamDecodeError as exc:
            self.undecodable += 1
            log.debug("nats_merge_undecodable err=%s", exc)
            return
        if isinstance(decoded, schema.StreamBeat):
            if decoded.at < self.window_start:  # a node silent since before the window
                self.too_old += 1
                return
            self.received += 1
            self.merger.merge(decoded.origin, decoded.peer_id, decoded.beat, decoded.at)


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
