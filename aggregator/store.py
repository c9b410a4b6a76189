"""The node registry on disk: SQLite (WAL), written in batches off the event loop.

`NodeStore` is blocking and knows nothing of trio; `run_store_writer` is the trio service that
restores the fleet at start, then every `period` writes the nodes changed since the last batch
and deletes the ones the fleet forgot (one transaction), and writes once more at shutdown. Every
store call runs in a worker thread (`trio.to_thread.run_sync`); calls never overlap, so one
connection serves them all.

The writer is a REQUIRED bus subscriber: it reads every event, in order, from a bounded channel
and marks the peer for the next batch (the fleet, updated inline before, holds the state to
write). When it falls behind, the channel fills and the publisher waits (measured as bus
back-pressure) rather than a change going unwritten. What a SIGKILL loses is the last `period`
of changes (docs/ARCHITECTURE.md, "Persistence").
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from aggregator.errors import StoreError
from aggregator.fleet import NodeRecord

if TYPE_CHECKING:
    from aggregator.fleet import Fleet

__all__ = ["SCHEMA_VERSION", "NodeStore", "run_store_writer"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_COLUMNS = (
    "peer_id",
    "nickname",
    "miner_address",
    "head",
    "height",
    "head_timestamp",
    "genesis_cid",
    "syncing",
    "version",
    "first_seen",
    "last_beat",
    "beats_received",
    "remote_address",
    "beat_period",
    "head_changed_at",
    "height_changed_at",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    peer_id TEXT PRIMARY KEY,
    nickname TEXT NOT NULL,
    miner_address TEXT NOT NULL,
    head TEXT NOT NULL,
    height INTEGER NOT NULL,
    head_timestamp INTEGER,
    genesis_cid TEXT,
    syncing INTEGER,
    version TEXT,
    first_seen REAL NOT NULL,
    last_beat REAL NOT NULL,
    beats_received INTEGER NOT NULL,
    remote_address TEXT NOT NULL,
    beat_period REAL,
    head_changed_at REAL NOT NULL,
    height_changed_at REAL NOT NULL
) WITHOUT ROWID
"""
_UPSERT = (
    f"INSERT INTO nodes ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT(peer_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
)


def _row(r: NodeRecord) -> tuple[object, ...]:
    return (
        r.peer_id,
        r.nickname,
        r.miner_address,
        r.head,
        r.height,
        r.head_timestamp,
        r.genesis_cid,
        None if r.syncing is None else int(r.syncing),
        r.version,
        r.first_seen,
        r.last_beat,
        r.beats_received,
        r.remote_address,
        r.beat_period,
        r.head_changed_at,
        r.height_changed_at,
    )


def _record(row: tuple[object, ...]) -> NodeRecord:
    (
        peer_id,
        nickname,
        miner,
        head,
        height,
        head_ts,
        genesis,
        syncing,
        version,
        first_seen,
        last_beat,
        beats,
        remote,
        period,
        head_changed,
        height_changed,
    ) = row
    if not isinstance(peer_id, str) or not isinstance(height, int):
        raise TypeError("bad peer_id or height")
    return NodeRecord(
        peer_id=peer_id,
        nickname=str(nickname),
        miner_address=str(miner),
        head=str(head),
        height=height,
        head_timestamp=None if head_ts is None else int(head_ts),  # type: ignore[call-overload]
        genesis_cid=None if genesis is None else str(genesis),
        syncing=None if syncing is None else bool(syncing),
        version=None if version is None else str(version),
        first_seen=float(first_seen),  # type: ignore[arg-type]
        last_beat=float(last_beat),  # type: ignore[arg-type]
        beats_received=int(beats),  # type: ignore[call-overload]
        remote_address=str(remote),
        beat_period=None if period is None else float(period),  # type: ignore[arg-type]
        head_changed_at=float(head_changed),  # type: ignore[arg-type]
        height_changed_at=float(height_changed),  # type: ignore[arg-type]
    )


class NodeStore:
    """SQLite node registry. Blocking: call it through `trio.to_thread.run_sync`.

    Every failure of the database (unreadable, corrupt, newer schema) is a `StoreError` that
    names the path. With `reset_broken` (`--reset-state`), `load` instead moves such a file
    aside (with its -wal/-shm, a timestamp suffix), logs an ERROR naming both paths, and
    starts an empty registry.
    """

    def __init__(self, path: str | Path, *, reset_broken: bool = False) -> None:
        self.path = Path(path)
        self.reset_broken = reset_broken
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot open: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    str(self.path), f"schema version {version} is newer than {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(str(self.path), f"unusable database: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        return conn

    def load(self) -> list[NodeRecord]:
        """Every stored node; rows that do not make sense are skipped with a warning."""
        if not self.reset_broken:
            return self._load()
        suffix = time.strftime(".broken-%Y%m%dT%H%M%SZ", time.gmtime())
        # SQLite may delete the -wal/-shm files when it closes a database it could not use:
        # hard links keep them for the move aside, and are dropped when the open succeeds.
        kept = self._keep_sidecars(suffix)
        try:
            records = self._load()
        except StoreError as exc:
            self._set_aside(exc, suffix)
            return self._load()
        for link in kept:
            link.unlink(missing_ok=True)
        return records

    def _sidecars(self) -> list[Path]:
        return [self.path.with_name(self.path.name + extra) for extra in ("-wal", "-shm")]

    def _keep_sidecars(self, suffix: str) -> list[Path]:
        kept = []
        for path in self._sidecars():
            link = path.with_name(path.name + suffix)
            try:
                os.link(path, link)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(str(path), f"cannot keep a link at {link}: {exc}") from exc
            kept.append(link)
        return kept

    def _set_aside(self, exc: StoreError, suffix: str) -> None:
        """Move the broken database and its -wal/-shm files aside; the next open is empty."""
        self.close()
        for path in (self.path, *self._sidecars()):
            aside = path.with_name(path.name + suffix)
            try:
                if path.exists():
                    os.replace(path, aside)
                elif not aside.exists():
                    continue
            except OSError as err:
                raise StoreError(str(path), f"cannot move aside to {aside}: {err}") from err
            log.error(
                "state_db_reset path=%s moved_to=%s err=%s (starting with an empty registry)",
                path,
                aside,
                exc.message,
            )

    def _load(self) -> list[NodeRecord]:
        conn = self._connect()
        try:
            rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM nodes ORDER BY peer_id")
            records = []
            for row in rows:
                try:
                    records.append(_record(row))
                except (TypeError, ValueError) as exc:
                    log.warning("store_bad_row path=%s err=%s", self.path, exc)
            return records
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot read: {exc}") from exc

    def write(self, records: Iterable[NodeRecord], deleted: Iterable[str] = ()) -> None:
        """Upsert `records` and delete `deleted` peer ids, in one transaction."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            try:
                conn.executemany(_UPSERT, (_row(r) for r in records))
                conn.executemany("DELETE FROM nodes WHERE peer_id = ?", ((p,) for p in deleted))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(str(self.path), f"cannot write: {exc}") from exc

    def save(self, records: Iterable[NodeRecord]) -> None:
        self.write(records)

    def delete(self, peer_ids: Iterable[str]) -> None:
        self.write((), peer_ids)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


#: The bus consumer takes what is queued, then sleeps this long: one wake-up per interval
#: under load instead of one per beat (the channel's 8,192 events absorb the interval).
MARK_INTERVAL = 0.05


async def _mark_changed(events: trio.MemoryReceiveChannel[Any], changed: set[str]) -> None:
    """The bus consumer: every event names a peer whose record may have changed."""
    async for event in events:
        changed.add(event.peer_id)
        while True:
            try:
                changed.add(events.receive_nowait().peer_id)
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                return
        await trio.sleep(MARK_INTERVAL)


async def run_store_writer(
    fleet: Fleet,
    store: NodeStore,
    events: trio.MemoryReceiveChannel[Any],
    period: float = 2.0,
    *,
    clock: Callable[[], float] = time.time,
    shutdown_timeout: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Restore the fleet from `store`, then persist its changes every `period` seconds.

    `events` is this writer's required subscription to the bus (`Bus.subscribe_required`).
    `task_status.started(n)` reports how many nodes were restored. A load failure raises
    `StoreError` before starting; a failed batch is logged and retried with the next one.
    Nodes the fleet expired (`Fleet.expire`, the app's own timer) are deleted at the next batch.
    """
    records = await trio.to_thread.run_sync(store.load)
    restored = fleet.load_records(records, clock())
    log.info("store_loaded path=%s nodes=%d", store.path, restored)
    task_status.started(restored)
    changed: set[str] = set()
    pending: dict[str, NodeRecord] = {}
    removed: set[str] = set()

    async def flush() -> None:
        while True:  # what the consumer has not taken yet belongs to this batch
            try:
                changed.add(events.receive_nowait().peer_id)
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        for r in fleet.records(changed):
            pending[r.peer_id] = r
            removed.discard(r.peer_id)
        changed.clear()
        for pid in fleet.drain_removed():
            pending.pop(pid, None)
            removed.add(pid)
        if not pending and not removed:
            return
        batch, deleted = list(pending.values()), sorted(removed)
        try:
            await trio.to_thread.run_sync(store.write, batch, deleted)
        except StoreError as exc:
            log.warning("store_write_failed nodes=%d err=%s", len(batch), exc)
            return
        pending.clear()
        removed.clear()
        log.debug("store_written nodes=%d deleted=%d", len(batch), len(deleted))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_mark_changed, events, changed)
            deadline = trio.current_time()
            while True:
                deadline += period
                await trio.sleep_until(deadline)
                await flush()
    finally:
        with trio.move_on_after(shutdown_timeout) as scope:
            scope.shield = True
            await flush()
            await trio.to_thread.run_sync(store.close)
