"""Node history on disk: the history tables in the state db (blocking SQLite).

`HistoryStore` has its own connections to the node registry's file (WAL): `history_peers`
(peer id -> small integer, never reused), `history_transitions` (every state change with the
node's running totals, aggregator/history.py), `history_heights` (one zlib-compressed chunk
per hour and node, keyed (hour, node) so the rows being rewritten sit together) and
`history_runs` (each run of the aggregator: started, alive until; the gaps between are its
down time). One connection writes (`write`, `prune`: the service's batches, one transaction
each); `HistoryReader`s answer queries on their own. `HistoryService`
(aggregator/history_service.py) drives them from the event loop through worker threads.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.errors import StoreError
from aggregator.history import (
    HOUR_SLOTS,
    UNKNOWN,
    ChunkEncoder,
    Mark,
    Totals,
    Transition,
    decode_chunk,
)

__all__ = ["Batch", "HistoryReader", "HistoryRows", "HistoryStore"]

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS history_peers (id INTEGER PRIMARY KEY AUTOINCREMENT, "
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
_STALE_PEERS = (
    "SELECT id, peer_id FROM history_peers p WHERE NOT EXISTS (SELECT 1 FROM "
    "history_transitions WHERE node = p.id AND at >= ?)"
)
#: Ids are never reused (AUTOINCREMENT): a forgotten node's last chunks age out on their own.
_DROP_PEER = "DELETE FROM history_peers WHERE id = ?"
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

    def prune(self, horizon: float, live: Collection[str] = ()) -> tuple[int, int, list[str]]:
        """Forget what is older than `horizon`, keeping each node's state there; forget the
        nodes not `live` (in the fleet) with no transition since: gone longer than that."""
        conn = self.connect()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                stale = [
                    (int(node), str(peer_id))
                    for node, peer_id in conn.execute(_STALE_PEERS, (horizon,))
                    if peer_id not in live
                ]
                forgotten = [peer_id for _, peer_id in stale]
                for statement in ("DELETE FROM history_transitions WHERE node = ?", _DROP_PEER):
                    conn.executemany(statement, ((node,) for node, _ in stale))
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
        for peer_id in forgotten:
            self._ids.pop(peer_id, None)
        return gone, chunks, forgotten

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

    def mark_at(self, peer_id: str, t: float) -> Mark | None:
        """One node's last mark at or before `t`."""
        row = self.conn.execute(
            "SELECT p.peer_id, t.at, t.state, t.observed, t.available, t.healthy "
            "FROM history_peers p JOIN history_transitions t ON t.node = p.id "
            "WHERE p.peer_id = ? AND t.at <= ? ORDER BY t.at DESC LIMIT 1",
            (peer_id, t),
        ).fetchone()
        return None if row is None else _mark(row)[1]

    def runs(self) -> list[tuple[float, float]]:
        rows = self.conn.execute("SELECT started, alive_until FROM history_runs ORDER BY started")
        return [(float(a), float(b)) for a, b in rows]

    def history(
        self, peer_id: str, since: float, until: float, max_transitions: int
    ) -> HistoryRows | None:
        """One node's transitions in [since, until] (at most `max_transitions`), led by the
        one in effect at `since` (earlier), its marks at both edges, its height samples and
        the runs; None if it has no history."""
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
            "SELECT at, state, error FROM history_transitions WHERE node = ? AND at < ? "
            "ORDER BY at DESC LIMIT 1",
            (node, since),
        ).fetchall()
        if rows and rows[0][1] == UNKNOWN:
            rows = []  # a gap: the gaps say so
        rows += self.conn.execute(
            "SELECT at, state, error FROM history_transitions WHERE node = ? AND at >= ? "
            "AND at <= ? AND state != ? ORDER BY at LIMIT ?",
            (node, since, until, UNKNOWN, max_transitions + 1 - len(rows)),
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
