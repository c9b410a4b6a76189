"""The history service: the tracker every second, batched writes, uptime cache, pruning.

`HistoryService.run` (a task of the app's root nursery) starts a run in `HistoryStore`
(aggregator/history_store.py), seeds the pure `HistoryTracker` (aggregator/history.py) with
each node's last mark and writes `unknown` at the previous run's alive mark for the gap since.
Then, every `interval` (1 s), it feeds the tracker a fleet snapshot; every `flush_interval`
it writes what the tracker emitted, with the run's alive mark, in one transaction in a worker
thread (a SIGKILL loses at most that interval, and the next run's gap starts at the mark);
every `uptime_refresh` (30 s) it recomputes every node's 24h/7d/30d uptime in a worker thread
(`uptime_table`: one index look-up per node and window, the arithmetic on running totals);
every `prune_interval` (1 h) it forgets what is older than `retention`. At shutdown it flushes
once more (shielded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from aggregator.errors import StoreError
from aggregator.history import (
    HOUR_SLOTS,
    WINDOWS,
    ChunkEncoder,
    HistoryTracker,
    Mark,
    Transition,
    gaps_between,
    totals_at,
    uptime_between,
)
from aggregator.history_store import Batch, HistoryReader, HistoryStore

if TYPE_CHECKING:
    from aggregator.nodestate import FleetSnapshot

__all__ = ["HistoryService", "uptime_table"]

log = logging.getLogger(__name__)


def uptime_table(
    starts: Mapping[str, tuple[float, Mapping[str, Mark]]], marks: Mapping[str, Mark], now: float
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per node and window, its uptime as JSON. `starts`: window -> (where its data starts,
    the marks there): the window's start, or the retention's horizon when that is later (what
    lies before it is gone, and counted as excluded)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    windows = [(name, WINDOWS[name], start, at) for name, (start, at) in starts.items()]
    for peer_id, mark in marks.items():
        end = totals_at(mark, now)
        out[peer_id] = {
            name: uptime_between(totals_at(at.get(peer_id), start), end, seconds).as_json()
            for name, seconds, start, at in windows
        }
    return out


class HistoryService:
    """Tracker, writer, uptime cache and pruning under one task (`run`)."""

    def __init__(
        self,
        store: HistoryStore,
        snapshot: Callable[[], FleetSnapshot],
        *,
        retention: float = 30 * 86_400.0,
        flush_interval: float = 2.0,
        interval: float = 1.0,
        uptime_refresh: float = 30.0,
        prune_interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
        shutdown_timeout: float = 10.0,
        run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.retention = retention
        self.flush_interval = flush_interval
        self.interval = interval
        self.uptime_refresh = uptime_refresh
        self.prune_interval = prune_interval
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        #: How blocking SQLite calls run: a worker thread (tests may run them inline, so
        #: that trio's fake clock cannot run ahead while a thread works).
        self.run_sync = run_sync
        self.tracker = HistoryTracker()
        self.started_at = 0.0
        self.uptime: dict[str, dict[str, dict[str, float | None]]] = {}
        self._batch = Batch()
        self._inflight: Batch | None = None
        self._chunks: dict[str, ChunkEncoder] = {}
        self._reader: HistoryReader | None = None
        self._read_lock = trio.Lock()
        #: Called (inline, must be cheap) with each step's node transitions: the NATS export.
        self.on_transitions: Callable[[list[Transition]], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = self.started_at = self.clock()
        marks, last_alive, self._chunks = await self.run_sync(self.store.start_run, now)
        self.tracker.seed(marks)
        if last_alive is not None:
            self._batch.transitions.extend(self.tracker.gap_transitions(last_alive))
        self._reader = await self.run_sync(self.store.reader)
        log.info("history_loaded nodes=%d last_alive=%s", len(marks), last_alive)
        try:
            await self.flush()
            await self.refresh_uptime()
            task_status.started()
            await self._loop()
        finally:
            with trio.move_on_after(self.shutdown_timeout) as scope:
                scope.shield = True
                await self.flush()
                await self.run_sync(self.store.close)
                async with self._read_lock:
                    await self.run_sync(self._reader.close)

    async def _loop(self) -> None:
        ticks = trio.current_time()
        flush_at = ticks + self.flush_interval
        uptime_at = ticks + self.uptime_refresh
        prune_at = ticks
        while True:
            # after a stall (a slow write), one tick now rather than a burst of snapshots
            ticks = max(ticks + self.interval, trio.current_time())
            await trio.sleep_until(ticks)
            self.observe(self.snapshot())
            if ticks >= flush_at:
                flush_at += self.flush_interval
                await self.flush()
            if ticks >= uptime_at:
                uptime_at += self.uptime_refresh
                await self.refresh_uptime()
            if ticks >= prune_at:
                prune_at += self.prune_interval
                await self.prune()

    def observe(self, snap: FleetSnapshot) -> None:
        """One tracker step: its transitions and samples join the next batch (cheap, inline)."""
        observed = self.tracker.observe_snapshot(snap)
        self._batch.transitions.extend(observed.transitions)
        if self.on_transitions is not None and observed.transitions:
            self.on_transitions(observed.transitions)
        chunks, dirty = self._chunks, self._batch.chunks
        for s in observed.samples:
            hour = s.slot // HOUR_SLOTS
            enc = chunks.get(s.peer_id)
            if enc is None or enc.hour != hour:
                enc = chunks[s.peer_id] = ChunkEncoder(hour)
            if enc.add(s.slot, s.height, s.lag):
                dirty[(s.peer_id, hour)] = enc

    async def flush(self) -> None:
        batch, self._batch = self._batch, Batch()
        batch.run_started, batch.alive_until = self.started_at, self.clock()
        self._inflight = batch
        try:
            await self.run_sync(self.store.write, batch)
        except StoreError as exc:
            self._inflight = None
            log.warning("history_write_failed transitions=%d err=%s", len(batch.transitions), exc)
            batch.transitions.extend(self._batch.transitions)  # retried with the next batch
            batch.chunks.update(self._batch.chunks)
            self._batch = batch
            return
        self._inflight = None
        hour = int(batch.alive_until // 30) // HOUR_SLOTS
        for peer_id in [p for p, enc in self._chunks.items() if enc.hour < hour]:
            if (peer_id, self._chunks[peer_id].hour) not in self._batch.chunks:
                del self._chunks[peer_id]

    def unflushed(self, peer_id: str) -> list[Transition]:
        """The node's transitions not committed yet (the next batch, and one being written)."""
        batches = [b for b in (self._inflight, self._batch) if b is not None]
        return [t for b in batches for t in b.transitions if t.peer_id == peer_id]

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a `HistoryReader` method in a worker thread, one query at a time."""
        assert self._reader is not None
        async with self._read_lock:
            return await self.run_sync(fn, self._reader, *args)

    async def refresh_uptime(self) -> None:
        now = self.clock()
        marks = dict(self.tracker.marks)

        def compute(reader: HistoryReader) -> dict[str, dict[str, dict[str, float | None]]]:
            starts = {}
            for name, seconds in WINDOWS.items():
                start = now - min(seconds, self.retention)
                starts[name] = (start, reader.marks_at(start))
            return uptime_table(starts, marks, now)

        self.uptime = await self.read(compute)

    async def prune(self) -> None:
        horizon = self.clock() - self.retention
        live = frozenset(v.peer_id for v in self.snapshot().nodes)
        try:
            gone, chunks, forgotten = await self.run_sync(self.store.prune, horizon, live)
        except StoreError as exc:
            log.warning("history_prune_failed err=%s", exc)
            return
        self.tracker.forget(forgotten)
        for peer_id in forgotten:
            self.uptime.pop(peer_id, None)
        if gone or chunks or forgotten:
            log.info(
                "history_pruned transitions=%d chunks=%d nodes=%d", gone, chunks, len(forgotten)
            )

    def gaps(self, runs: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
        """The gaps between stored runs (the current one alive until now)."""
        now = self.clock()
        return gaps_between([(a, now if a == self.started_at else b) for a, b in runs])
