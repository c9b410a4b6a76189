"""Node history on disk: the history tables in the state db, and the trio service that fills them.

`HistoryStore` is blocking SQLite (its own connections to the node registry's file, WAL):
`history_peers` (peer id -> small integer), `history_transitions` (every state change with the
node's running totals, aggregator/history.py), `history_heights` (one zlib-compressed chunk
per hour and node, keyed (hour, node) so the rows being rewritten sit together),
`history_runs` (each run of the aggregator: started, alive until; the gaps between are its
down time). `HistoryService` drives the pure `HistoryTracker` from a fleet snapshot every
`interval` (1 s), writes what it emits every `flush_interval` in one transaction in a worker
thread (with the run's alive mark: a SIGKILL loses at most that interval, and the gap starts
at the mark), refreshes the per-node uptime cache every `uptime_refresh` (30 s) and prunes
past `retention` every `prune_interval` (1 h), always keeping each node's last transition
before the horizon (its state there).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from aggregator.errors import StoreError
from aggregator.history import (
    HOUR_SLOTS,
    WINDOWS,
    ChunkEncoder,
    HistoryTracker,
    Mark,
    Totals,
    Transition,
    decode_chunk,
    gaps_between,
    totals_at,
    uptime_between,
)

if TYPE_CHECKING:
    from aggregator.nodestate import FleetSnapshot

__all__ = ["HistoryRows", "HistoryService", "HistoryStore", "uptime_table"]

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS history_peers (id INTEGER PRIMARY KEY, "
    "peer_id TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS history_transitions (node INTEGER NOT NULL, at REAL NOT NULL, "
    "state TEXT NOT NULL, error TEXT, observed REAL NOT NULL, available REAL NOT NULL, "
    "healthy REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS history_transitions_node ON history_transitions (node, at)",
    "CREATE TABLE IF NOT EXISTS history_heights (hour INTEGER NOT NULL, node INTEGER NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY (hour, node)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS history_runs (started REAL PRIMARY KEY, alive_until REAL NOT NULL)",
)
_MARKS = (
    "SELECT p.peer_id, t.at, t.state, t.observed, t.available, t.healthy FROM history_peers p "
    "JOIN history_transitions t ON t.rowid = (SELECT rowid FROM history_transitions "
    "WHERE node = p.id AND at <= ? ORDER BY at DESC LIMIT 1)"
)
_PRUNE_TRANSITIONS = (
    "WITH keep AS (SELECT (SELECT rowid FROM history_transitions WHERE node = p.id AND at < :h "
    "ORDER BY at DESC LIMIT 1) AS r FROM history_peers p) DELETE FROM history_transitions "
    "WHERE at < :h AND rowid NOT IN (SELECT r FROM keep WHERE r IS NOT NULL)"
)
_UPSERT_CHUNK = (
    "INSERT INTO history_heights (hour, node, data) VALUES (?, ?, ?) "
    "ON CONFLICT (hour, node) DO UPDATE SET data = excluded.data"
)


def _mark(row: tuple[Any, ...]) -> tuple[str, Mark]:
    peer_id, at, state, observed, available, healthy = row
    return str(peer_id), Mark(float(at), str(state), Totals(observed, available, healthy))


@dataclass
class Batch:
    """What one flush writes, in one transaction."""

    transitions: list[Transition] = field(default_factory=list)
    chunks: dict[tuple[str, int], ChunkEncoder] = field(default_factory=dict)
    run_started: float = 0.0
    alive_until: float = 0.0


@dataclass(frozen=True)
class HistoryRows:
    """One node's stored history over a range (the API formats it)."""

    transitions: list[tuple[float, str, str | None]]  # (at, state, error), unknown left out
    truncated: bool
    start: Mark | None  # the last mark at or before `since`
    end: Mark | None  # the last mark at or before `until`
    heights: list[tuple[int, int, int | None]]  # (slot, height, lag)
    runs: list[tuple[float, float]]


class HistoryStore:
    """The history tables. Blocking: call through `trio.to_thread.run_sync`. One connection
    writes (the service's flushes); `reader` connections answer queries meanwhile (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._ids: dict[str, int] = {}

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot open the history: {exc}") from exc
        return conn

    def connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = self._open()
            try:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                self._ids = dict(conn.execute("SELECT peer_id, id FROM history_peers"))
            except sqlite3.Error as exc:
                conn.close()
                raise StoreError(str(self.path), f"unusable history tables: {exc}") from exc
            self._conn = conn
        return self._conn

    def reader(self) -> HistoryReader:
        self.connect()  # the tables exist
        return HistoryReader(self._open())

    def start_run(
        self, now: float
    ) -> tuple[dict[str, Mark], float | None, dict[str, ChunkEncoder]]:
        """Record a new run; the last marks, the previous run's alive mark, the open chunks."""
        conn = self.connect()
        try:
            last = conn.execute("SELECT max(alive_until) FROM history_runs").fetchone()[0]
            conn.execute("INSERT OR REPLACE INTO history_runs VALUES (?, ?)", (now, now))
            marks = dict(_mark(r) for r in conn.execute(_MARKS, (math.inf,)))
            hour = int(now // 30) // HOUR_SLOTS
            chunks = []
            names = {v: k for k, v in self._ids.items()}
            for node, data in conn.execute(
                "SELECT node, data FROM history_heights WHERE hour = ?", (hour,)
            ):
                enc = ChunkEncoder.resume(hour, zlib.decompress(data))
                chunks.append((names[node], enc))
        except (sqlite3.Error, zlib.error, KeyError) as exc:
            raise StoreError(str(self.path), f"cannot read the history: {exc}") from exc
        return marks, None if last is None else float(last), dict(chunks)

    def _id(self, conn: sqlite3.Connection, peer_id: str) -> int:
        node = self._ids.get(peer_id)
        if node is None:
            cur = conn.execute("INSERT INTO history_peers (peer_id) VALUES (?)", (peer_id,))
            node = self._ids[peer_id] = int(cur.lastrowid or 0)
        return node

    def write(self, batch: Batch) -> None:
        """Transitions, chunks and the alive mark, in one transaction."""
        conn = self.connect()
        added: list[str] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = []
                for t in batch.transitions:
                    if t.peer_id not in self._ids:
                        added.append(t.peer_id)
                    rows.append((self._id(conn, t.peer_id), t.at, t.state, t.error, *t.totals))
                conn.executemany(
                    "INSERT INTO history_transitions VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
                chunks = []
                for (peer_id, hour), enc in batch.chunks.items():
                    if peer_id not in self._ids:
                        added.append(peer_id)
                    chunks.append((hour, self._id(conn, peer_id), zlib.compress(enc.raw, 9)))
                conn.executemany(_UPSERT_CHUNK, chunks)
                conn.execute(
                    "UPDATE history_runs SET alive_until = ? WHERE started = ?",
                    (batch.alive_until, batch.run_started),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                for peer_id in added:
                    self._ids.pop(peer_id, None)
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot write the history: {exc}") from exc

    def prune(self, horizon: float) -> tuple[int, int]:
        """Forget what is older than `horizon` (each node's state there is kept)."""
        conn = self.connect()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes  # rowcount is -1 for a WITH statement
                conn.execute(_PRUNE_TRANSITIONS, {"h": horizon})
                gone = conn.total_changes - before
                hour = int(horizon // 30) // HOUR_SLOTS
                chunks = conn.execute(
                    "DELETE FROM history_heights WHERE hour < ?", (hour,)
                ).rowcount
                conn.execute(
                    "DELETE FROM history_runs WHERE alive_until < ? AND started < "
                    "(SELECT max(started) FROM history_runs)",
                    (horizon,),
                )
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot prune the history: {exc}") from exc
        return gone, chunks

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class HistoryReader:
    """Queries on a connection of their own (WAL: they never wait for the writer)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def marks_at(self, t: float) -> dict[str, Mark]:
        """Every node's last mark at or before `t` (one index seek per node)."""
        return dict(_mark(r) for r in self.conn.execute(_MARKS, (t,)))

    def runs(self) -> list[tuple[float, float]]:
        rows = self.conn.execute("SELECT started, alive_until FROM history_runs ORDER BY started")
        return [(float(a), float(b)) for a, b in rows]

    def history(
        self, peer_id: str, since: float, until: float, max_transitions: int
    ) -> HistoryRows | None:
        """One node's transitions in [since, until] (at most `max_transitions`), its marks
        at both edges, its height samples and the runs; None if it has no history."""
        row = self.conn.execute(
            "SELECT id FROM history_peers WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        if row is None:
            return None
        node = int(row[0])
        last = (
            "SELECT ?, at, state, observed, available, healthy FROM history_transitions "
            "WHERE node = ? AND at <= ? ORDER BY at DESC LIMIT 1"
        )
        start = self.conn.execute(last, (peer_id, node, since)).fetchone()
        end = self.conn.execute(last, (peer_id, node, until)).fetchone()
        rows = self.conn.execute(
            "SELECT at, state, error FROM history_transitions WHERE node = ? AND at >= ? "
            "AND at <= ? AND state != 'unknown' ORDER BY at LIMIT ?",
            (node, since, until, max_transitions + 1),
        ).fetchall()
        heights: list[tuple[int, int, int | None]] = []
        stored = self.conn.execute("SELECT min(hour), max(hour) FROM history_heights").fetchone()
        first = int(max(since, 0) // 30)
        stop = int(min(until, (stored[1] or 0) * 3600 + 3600) // 30)
        # one look-up per stored hour in range: retention bounds the loop
        for hour in range(max(first // HOUR_SLOTS, stored[0] or 0), stop // HOUR_SLOTS + 1):
            chunk = self.conn.execute(
                "SELECT data FROM history_heights WHERE hour = ? AND node = ?", (hour, node)
            ).fetchone()
            if chunk is not None:
                samples = decode_chunk(hour, zlib.decompress(chunk[0]))
                heights.extend(s for s in samples if first <= s[0] <= stop)
        return HistoryRows(
            transitions=[(float(a), str(s), e) for a, s, e in rows[:max_transitions]],
            truncated=len(rows) > max_transitions,
            start=None if start is None else _mark(start)[1],
            end=None if end is None else _mark(end)[1],
            heights=heights,
            runs=self.runs(),
        )

    def close(self) -> None:
        self.conn.close()


def uptime_table(
    starts: Mapping[str, Mapping[str, Mark]], marks: Mapping[str, Mark], now: float
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per node and window, its uptime as JSON (`starts`: window -> marks at its start)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    windows = [(name, seconds, now - seconds, starts[name]) for name, seconds in WINDOWS.items()]
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
            ticks += self.interval
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
            starts = {name: reader.marks_at(now - s) for name, s in WINDOWS.items()}
            return uptime_table(starts, marks, now)

        self.uptime = await self.read(compute)

    async def prune(self) -> None:
        horizon = self.clock() - self.retention
        try:
            gone, chunks = await self.run_sync(self.store.prune, horizon)
        except StoreError as exc:
            log.warning("history_prune_failed err=%s", exc)
            return
        if gone or chunks:
            log.info("history_pruned transitions=%d chunks=%d", gone, chunks)

    def gaps(self, runs: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
        """The gaps between stored runs (the current one alive until now)."""
        now = self.clock()
        return gaps_between([(a, now if a == self.started_at else b) for a, b in runs])
