"""The history tables over a real SQLite file, and the service under trio's fake clock."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from aggregator.errors import StoreError
from aggregator.fleet import Fleet, FleetPolicy
from aggregator.history import EPOCH, HOUR_SLOTS, UNKNOWN, ChunkEncoder, Totals, Transition
from aggregator.history_api import HistoryApi
from aggregator.history_service import HistoryService
from aggregator.history_store import Batch, HistoryStore
from aggregator.store import NodeStore
from heartbeat.protocol.wire import Beat

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_010.0  # on an epoch slot boundary
DAY = 86_400.0


def beat(height: int) -> Beat:
    tag = "".join(chr(ord("a") + int(d)) for d in str(height))
    return Beat(head=f"{{bafy2bzacea{tag}}}", height=height, nickname="n", miner_address="")


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_write_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = HistoryStore(path)
    marks, last_alive, chunks = store.start_run(T0)
    assert (marks, last_alive, chunks) == ({}, None, {})
    slot = int(T0 // EPOCH)
    enc = ChunkEncoder(slot // HOUR_SLOTS)
    enc.add(slot, 100, 0)
    enc.add(slot + 1, 101, None)
    batch = Batch(
        [
            Transition("a", T0, "in_consensus", None, Totals()),
            Transition("a", T0 + 60, "source_down", "refused", Totals(60, 60, 60)),
        ],
        {("a", enc.hour): enc},
        T0,
        T0 + 61,
    )
    store.write(batch)
    reader = store.reader()
    rows = reader.history("a", T0 - 10, T0 + 100, 10)
    assert rows is not None
    assert rows.transitions == [(T0, "in_consensus", None), (T0 + 60, "source_down", "refused")]
    assert rows.heights == [(slot, 100, 0), (slot + 1, 101, None)]
    assert rows.start is None and rows.end is not None and rows.end.state == "source_down"
    assert rows.runs == [(T0, T0 + 61)]
    assert reader.history("nobody", 0, T0, 10) is None
    later = reader.history("a", T0 + 30, T0 + 100, 10)  # led by the state in effect at since
    assert later is not None and later.transitions == [
        (T0, "in_consensus", None),
        (T0 + 60, "source_down", "refused"),
    ]
    truncated = reader.history("a", 0, T0 + 100, 1)
    assert truncated is not None and truncated.truncated and len(truncated.transitions) == 1
    assert reader.marks_at(T0 + 30)["a"].state == "in_consensus"
    assert reader.marks_at(T0 - 1) == {}
    reader.close()
    store.close()
    # a new run finds the last marks, the previous run's alive mark and the open chunk
    again = HistoryStore(path)
    marks, last_alive, chunks = again.start_run(T0 + 100)
    assert marks["a"].state == "source_down" and marks["a"].totals == Totals(60, 60, 60)
    assert last_alive == T0 + 61
    assert list(chunks) == ["a"] and not chunks["a"].add(slot + 1, 1, 0)  # resumed after slot+1
    again.close()


def test_the_history_shares_the_registrys_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    nodes = NodeStore(path)
    assert nodes.load() == []
    history = HistoryStore(path)
    history.start_run(T0)
    history.write(Batch([Transition("a", T0, "down", None, Totals())], {}, T0, T0 + 1))
    assert nodes.load() == []  # the registry still reads its schema
    nodes.close()
    history.close()
    tables = {r[0] for r in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"nodes", "history_transitions", "history_heights", "history_runs"} <= tables


def test_prune_keeps_each_nodes_state_at_the_horizon(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state.db")
    store.start_run(T0)
    old_slot = int(T0 // EPOCH)
    old = ChunkEncoder(old_slot // HOUR_SLOTS)
    old.add(old_slot, 1, 0)
    new_slot = int((T0 + 40 * DAY) // EPOCH)
    new = ChunkEncoder(new_slot // HOUR_SLOTS)
    new.add(new_slot, 2, 0)
    transitions = [
        Transition("a", T0, "in_consensus", None, Totals()),
        Transition("a", T0 + DAY, "lagging", None, Totals(DAY, DAY, DAY)),
        Transition("a", T0 + 40 * DAY, "down", None, Totals(40 * DAY, 40 * DAY, DAY)),
        Transition("b", T0, "syncing", None, Totals()),
    ]
    store.write(Batch(transitions, {("a", old.hour): old, ("a", new.hour): new}, T0, T0 + 40 * DAY))
    gone, chunks, forgotten = store.prune(T0 + 40 * DAY - 30 * DAY, live={"b"})
    assert (gone, chunks, forgotten) == (1, 1, [])  # a's first transition and its old chunk
    reader = store.reader()
    rows = reader.history("a", 0, math.inf, 100)
    assert rows is not None
    assert [s for _, s, _ in rows.transitions] == ["lagging", "down"]
    assert rows.heights == [(new_slot, 2, 0)]
    assert reader.marks_at(T0 + 20 * DAY)["b"].state == "syncing"  # b's only one is kept
    # b left the fleet: with no transition since the horizon, it is forgotten
    assert store.prune(T0 + 40 * DAY - 30 * DAY) == (0, 0, ["b"])
    assert reader.history("b", 0, T0 + 50 * DAY, 10) is None
    assert set(reader.marks_at(T0 + 50 * DAY)) == {"a"}
    reader.close()
    store.close()


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """SQLite on the loop: the fake clock cannot jump while a worker thread works."""
    return fn(*args)


async def _run_service(
    service: HistoryService, body: Callable[[], Awaitable[None]] | None = None
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        if body is not None:
            await body()
        nursery.cancel_scope.cancel()


async def test_service_records_transitions_heights_and_gaps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "state.db"
    fleet = Fleet(FleetPolicy(beat_timeout_default=30.0))

    def clock() -> float:
        return T0 + trio.current_time()

    def make() -> HistoryService:
        return HistoryService(
            HistoryStore(path),
            lambda: fleet.snapshot(clock()),
            flush_interval=2.0,
            clock=clock,
            run_sync=inline,
        )

    async def beating() -> None:
        fleet.on_connect("a", "10.0.0.1", clock())
        for i in range(13):  # every 5 s for 60 s, one epoch more every 30 s
            fleet.on_beat("a", beat(100 + i // 6), clock())
            await trio.sleep(5)
        # silent from T0 + 60: down after its 15 s beat timeout (3 beat periods), once the
        # service has seen it (its worker-thread writes let the fake clock run ahead of it)
        while (mark := service.tracker.mark("a")) is None or mark.state != "down":
            await trio.sleep(1)

    service = make()
    await _run_service(service, beating)
    stopped = clock()
    rows = await trio.to_thread.run_sync(_read, path, "a")
    assert rows.transitions[0] == (T0 + 1, "in_consensus", None)  # the first tick
    assert [s for _, s, _ in rows.transitions] == ["in_consensus", "down"]
    down_at = rows.transitions[1][0]
    assert down_at == T0 + 76  # the first tick with the last beat (T0 + 60) 15 s old
    heights = [h for _, h, _ in rows.heights]
    slots = [s for s, _, _ in rows.heights]
    assert 2 <= len(heights) <= 3 and heights == sorted(heights) and heights[0] == 100
    assert slots == sorted(set(slots)) and slots[0] == int(T0 // EPOCH)  # one per epoch slot
    assert all(T0 <= s * EPOCH < T0 + 75 for s in slots)  # only while up
    assert rows.runs == [(T0, stopped)]  # the final flush marked the stop

    await trio.sleep(500)  # the aggregator is away
    restarted = make()
    ups: list[dict[str, Any]] = []

    async def later() -> None:
        await trio.sleep(10)
        await restarted.refresh_uptime()  # on its own timer every 30 s
        ups.append(restarted.uptime["a"])

    await _run_service(restarted, later)
    rows = await trio.to_thread.run_sync(_read, path, "a")
    # the gap is no transition; the restored node is down again after it, from the first tick
    assert [s for _, s, _ in rows.transitions] == ["in_consensus", "down", "down"]
    assert rows.transitions[2][0] == stopped + 501
    assert restarted.gaps(rows.runs) == [(stopped, stopped + 500)]
    unknown = _rows(path, "SELECT at FROM history_transitions WHERE state = 'unknown'")
    assert unknown == [(stopped,)]
    # available (and healthy) from T0 + 1 to down_at; observed: the first run, then from the
    # restarted run's first tick (the gap, and the second before it, are left out)
    observed = (stopped - T0 - 1) + 9
    assert ups[0]["24h"] == {
        "available": pytest.approx((down_at - T0 - 1) / observed),
        "healthy": pytest.approx((down_at - T0 - 1) / observed),
        "excluded_seconds": pytest.approx(DAY - observed),
    }
    assert ups[0]["30d"]["excluded_seconds"] == pytest.approx(30 * DAY - observed)


def _read(path: Path, peer_id: str):  # type: ignore[no-untyped-def]
    store = HistoryStore(path)
    reader = store.reader()
    try:
        rows = reader.history(peer_id, 0, math.inf, 100)
        assert rows is not None
        return rows
    finally:
        reader.close()
        store.close()


async def test_service_prunes_on_its_timer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "state.db"
    store = HistoryStore(path)
    store.start_run(T0 - 10 * DAY)
    store.write(
        Batch(
            [
                Transition("a", T0 - 10 * DAY, "in_consensus", None, Totals()),
                Transition("a", T0 - 9 * DAY, "lagging", None, Totals(DAY, DAY, DAY)),
                Transition("a", T0 - 8 * DAY, "down", None, Totals(2 * DAY, 2 * DAY, DAY)),
            ],
            {},
            T0 - 10 * DAY,
            T0 - 8 * DAY,
        )
    )
    store.close()
    fleet = Fleet()
    service = HistoryService(
        HistoryStore(path),
        lambda: fleet.snapshot(T0 + trio.current_time()),
        retention=DAY * 8.5,
        prune_interval=3600.0,
        clock=lambda: T0 + trio.current_time(),
        run_sync=inline,
    )
    await _run_service(service, lambda: trio.sleep(1.5))
    states = [r[0] for r in _rows(path, "SELECT state FROM history_transitions ORDER BY at")]
    # the horizon (T0 - 8.5 d) is after "lagging": it stays as the state there
    assert states == ["lagging", "down", UNKNOWN]
    runs = _rows(path, "SELECT count(*) FROM history_runs")
    assert runs == [(2,)]  # the old run was alive past the horizon: its gap is still shown


async def test_the_final_flush_writes_what_the_timer_did_not(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "state.db"
    fleet = Fleet()
    service = HistoryService(
        HistoryStore(path),
        lambda: fleet.snapshot(T0 + trio.current_time()),
        flush_interval=3600.0,  # only the first flush (at start) and the last one
        clock=lambda: T0 + trio.current_time(),
        run_sync=inline,
    )

    async def beat_once() -> None:
        fleet.on_connect("a", "10.0.0.1", T0 + trio.current_time())
        fleet.on_beat("a", beat(7), T0 + trio.current_time())
        await trio.sleep(3)

    await _run_service(service, beat_once)
    assert _rows(path, "SELECT state FROM history_transitions") == [("in_consensus",)]
    assert _rows(path, "SELECT started, alive_until FROM history_runs") == [(T0, T0 + 3)]


async def test_uptime_stops_at_the_retention_horizon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "state.db"
    store = HistoryStore(path)
    store.start_run(T0 - 20 * DAY)
    store.write(
        Batch(
            [
                Transition("a", T0 - 20 * DAY, "in_consensus", None, Totals()),
                Transition("a", T0 - DAY, "lagging", None, Totals(19 * DAY, 19 * DAY, 19 * DAY)),
            ],
            {},
            T0 - 20 * DAY,
            T0 - 1,
        )
    )
    store.close()
    fleet = Fleet()
    service = HistoryService(
        HistoryStore(path),
        lambda: fleet.snapshot(T0 + trio.current_time()),
        retention=2 * DAY,
        clock=lambda: T0 + trio.current_time(),
        run_sync=inline,
    )
    ups: list[dict[str, Any]] = []

    async def read() -> None:
        ups.append(service.uptime["a"])
        api = HistoryApi(service, lambda: fleet.snapshot(T0 + trio.current_time()))
        history = await api.history("a", T0 - 30 * DAY, T0)
        assert history is not None
        ups.append(history["uptime"])

    await _run_service(service, read)
    # 30d and 7d: only the 2 days kept count (1 in consensus, 1 lagging, less the 1 s gap)
    observed = 2 * DAY - 1
    for window, seconds in (("30d", 30 * DAY), ("7d", 7 * DAY)):
        assert ups[0][window] == {
            "available": 1.0,
            "healthy": pytest.approx(DAY / observed, abs=1e-6),
            "excluded_seconds": seconds - observed,
        }
    assert ups[0]["24h"] == {"available": 1.0, "healthy": 0.0, "excluded_seconds": 1}
    assert ups[1] == ups[0]["30d"]  # the history's own uptime over the same 30 days


class FailingOnce(HistoryStore):
    """A store whose second write fails (the disk full for a moment)."""

    writes = 0

    def write(self, batch: Batch) -> None:
        self.writes += 1
        if self.writes == 2:
            raise StoreError(str(self.path), "disk I/O error")
        super().write(batch)


async def test_a_failed_write_is_retried_with_the_next_batch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    fleet = Fleet()
    store = FailingOnce(path)
    service = HistoryService(
        store,
        lambda: fleet.snapshot(T0 + trio.current_time()),
        flush_interval=2.0,
        clock=lambda: T0 + trio.current_time(),
        run_sync=inline,
    )

    async def body() -> None:
        fleet.on_connect("a", "10.0.0.1", T0 + trio.current_time())
        fleet.on_beat("a", beat(7), T0 + trio.current_time())
        await trio.sleep(2.5)  # the flush at 2 s fails
        assert _rows(path, "SELECT count(*) FROM history_transitions") == [(0,)]
        assert [t.state for t in service.unflushed("a")] == ["in_consensus"]
        await trio.sleep(2)  # the next one writes it

    await _run_service(service, body)
    assert store.writes >= 3
    assert _rows(path, "SELECT state FROM history_transitions") == [("in_consensus",)]
    assert any("history_write_failed" in r.getMessage() for r in caplog.records)
