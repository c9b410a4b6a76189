"""The built-in alerter's state in the state db (SQLite, the aggregator's `--state-db`).

What a restart must not lose: every pending and firing alert (when it became active, when
it was last sent, since when it is held down), the fleet heights the stall alert measures,
and per receiver when each alert was last notified (`repeat_interval`). With them restored
a restart neither resolves an alert nor notifies it again beyond the normal repeat.

Own tables, `alert_state` (the evaluator's export, one JSON row per alert plus one for the
heights) and `alert_notified` (receiver, alert key, when), rewritten in one transaction per
save. `AlertStateStore` is blocking: `run_state_writer` calls it through
`trio.to_thread.run_sync`, one call at a time, so one connection serves them all. A save
that fails is logged and tried again at the next change; alerting goes on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

__all__ = ["AlertState", "AlertStateStore", "StateWriter"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_notified (
    receiver TEXT NOT NULL,
    alert_key TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (receiver, alert_key)
);
"""


@dataclass
class AlertState:
    """`evaluator`: `AlertEvaluator.export_state()`; `notified`: receiver ident -> alert key
    -> wall-clock time (`AlertDelivery.notified_state()`)."""

    evaluator: dict[str, Any] = field(default_factory=lambda: {"tracks": [], "heights": {}})
    notified: dict[str, dict[str, float]] = field(default_factory=dict)


class AlertStateStore:
    """Blocking; call through `trio.to_thread.run_sync`."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    def load(self) -> AlertState:
        conn = self._connect()
        tracks = []
        heights: dict[str, Any] = {}
        for key, value in conn.execute("SELECT key, value FROM alert_state ORDER BY key"):
            if key == "heights":
                heights = json.loads(value)
            else:
                tracks.append(json.loads(value))
        notified: dict[str, dict[str, float]] = {}
        for receiver, alert_key, at in conn.execute(
            "SELECT receiver, alert_key, at FROM alert_notified"
        ):
            notified.setdefault(receiver, {})[alert_key] = float(at)
        return AlertState({"tracks": tracks, "heights": heights}, notified)

    def save(self, state: AlertState) -> None:
        conn = self._connect()
        rows = [
            ("track:" + "\x1f".join(t["key"]), json.dumps(t, sort_keys=True))
            for t in state.evaluator.get("tracks", [])
        ]
        rows.append(("heights", json.dumps(state.evaluator.get("heights", {}))))
        notified = [
            (receiver, key, at)
            for receiver, alerts in state.notified.items()
            for key, at in alerts.items()
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM alert_state")
            conn.executemany("INSERT INTO alert_state (key, value) VALUES (?, ?)", rows)
            conn.execute("DELETE FROM alert_notified")
            conn.executemany(
                "INSERT INTO alert_notified (receiver, alert_key, at) VALUES (?, ?, ?)", notified
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class StateWriter:
    """Saves the alerter's state off the event loop, at most once per `min_gap` seconds,
    whenever `mark()` was called since the last save; once more (shielded) at shutdown."""

    def __init__(
        self,
        store: AlertStateStore,
        snapshot: Callable[[], AlertState],
        *,
        min_gap: float = 1.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.min_gap = min_gap
        self.shutdown_timeout = shutdown_timeout
        self.saves = 0
        self.failures = 0
        # Changes are counted, not flagged: a save only clears what it really wrote (a save
        # cancelled before its thread started must leave the change for the final one).
        self._marked = 0
        self._saved = 0
        self._wake = trio.Event()

    async def load(self) -> AlertState | None:
        try:
            return await trio.to_thread.run_sync(self.store.load)
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            log.error("alert_state_load_failed path=%s err=%s", self.store.path, exc)
            return None

    @property
    def dirty(self) -> bool:
        return self._saved < self._marked

    def mark(self) -> None:
        self._marked += 1
        self._wake.set()

    async def _save(self) -> None:
        generation = self._marked
        state = self.snapshot()  # taken on the event loop: a consistent copy
        try:
            await trio.to_thread.run_sync(self.store.save, state)
        except sqlite3.Error as exc:
            self.failures += 1
            log.error("alert_state_save_failed path=%s err=%s", self.store.path, exc)
            return
        self._saved = max(self._saved, generation)
        self.saves += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if self.dirty:
                    await self._save()
                await trio.sleep(self.min_gap)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.shutdown_timeout):
                if self.dirty:
                    await self._save()
                await trio.to_thread.run_sync(self.store.close)
