"""The export's on-disk spool: messages NATS has not acknowledged, oldest first (blocking).

A table of the state db (SQLite, WAL), its own connection. The exporter appends every
message here before it publishes anything and deletes a message only once NATS acknowledged
it, so a NATS outage, or an aggregator restart during one, loses nothing up to `max_items`.
Beyond that the oldest messages are dropped (and counted): the spool stays bounded.

Blocking and trio-free: the exporter calls it through `trio.to_thread.run_sync`, one call at
a time (its own lock), so one connection serves every call.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple

from aggregator.errors import StoreError

__all__ = ["Spool", "SpooledMsg"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nats_spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    data BLOB NOT NULL,
    at REAL NOT NULL
)
"""


class SpooledMsg(NamedTuple):
    seq: int  # the spool's own order
    subject: str
    msg_id: str
    data: bytes
    at: float  # when the event happened (unix s): the spool's age is measured from it


class Spool:
    """A bounded FIFO of messages in SQLite (see the module docstring)."""

    def __init__(self, path: Path, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.path = path
        self.max_items = max_items
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(_SCHEMA)
            row = self._db.execute("SELECT COUNT(*), MIN(at) FROM nats_spool").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(str(path), f"nats spool: {exc}") from exc
        self._depth = int(row[0])
        self._oldest: float | None = row[1]
        #: Messages dropped because the spool was full (this process's lifetime).
        self.dropped = 0

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def oldest_at(self) -> float | None:
        """When the oldest waiting message happened (None: empty)."""
        return self._oldest

    def append(self, items: list[tuple[str, str, bytes, float]]) -> int:
        """Add (subject, msg_id, data, at) rows, then drop the oldest beyond the bound.

        Returns how many were dropped."""
        if not items:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO nats_spool (subject, msg_id, data, at) VALUES (?, ?, ?, ?)",
                    items,
                )
                self._depth += len(items)
                dropped = max(0, self._depth - self.max_items)
                if dropped:
                    self._db.execute(
                        "DELETE FROM nats_spool WHERE seq IN "
                        "(SELECT seq FROM nats_spool ORDER BY seq LIMIT ?)",
                        (dropped,),
                    )
                    self._depth -= dropped
                    self.dropped += dropped
                self._db.execute("COMMIT")
                if dropped or self._oldest is None:
                    self._refresh_oldest()
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(str(self.path), f"nats spool append: {exc}") from exc
        return dropped

    def peek(self, limit: int) -> list[SpooledMsg]:
        """The oldest `limit` messages, in order."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, subject, msg_id, data, at FROM nats_spool ORDER BY seq LIMIT ?",
                    (limit,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(str(self.path), f"nats spool read: {exc}") from exc
        return [SpooledMsg(int(r[0]), r[1], r[2], bytes(r[3]), float(r[4])) for r in rows]

    def remove(self, seqs: list[int]) -> None:
        """Forget acknowledged messages."""
        if not seqs:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                cur = self._db.executemany(
                    "DELETE FROM nats_spool WHERE seq = ?", [(s,) for s in seqs]
                )
                self._db.execute("COMMIT")
                self._depth = max(0, self._depth - max(cur.rowcount, 0))
                self._refresh_oldest()
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(str(self.path), f"nats spool delete: {exc}") from exc

    def _refresh_oldest(self) -> None:
        row = self._db.execute(
            "SELECT at FROM nats_spool WHERE seq = (SELECT MIN(seq) FROM nats_spool)"
        ).fetchone()
        self._oldest = None if row is None else float(row[0])
        if row is None:
            self._depth = 0

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction open: the failure came before BEGIN took effect

    def close(self) -> None:
        with self._lock:
            self._db.close()
