"""The SQLite node registry and its trio writer (fake clock for the periodic batches)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from aggregator.app import fleet_subscriber
from aggregator.bus import BeatAccepted, Bus, PeerConnected
from aggregator.errors import StoreError
from aggregator.fleet import Fleet, FleetPolicy, NodeRecord, NodeState
from aggregator.store import SCHEMA_VERSION, NodeStore, run_store_writer
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_000.0


def beat(height: int, tag: str = "aa") -> Beat:
    return Beat(
        head="{bafy2bzacea" + tag + "}",
        height=height,
        nickname="alpha",
        miner_address="f01234",
    )


def wired(fleet: Fleet, capacity: int = 64) -> tuple[Bus, trio.MemoryReceiveChannel[object]]:
    """A bus as the app wires it: the fleet inline, the store writer on a bounded channel."""
    bus = Bus()
    bus.subscribe_sync("fleet", fleet_subscriber(fleet))
    return bus, bus.subscribe_required("store", capacity)


def record(pid: str, **kw: object) -> NodeRecord:
    base: dict[str, object] = dict(
        peer_id=pid,
        nickname="n",
        miner_address="",
        head="{bafy2bzaceaaa}",
        height=1,
        head_timestamp=None,
        genesis_cid=None,
        syncing=None,
        version=None,
        first_seen=T0,
        last_beat=T0,
        beats_received=1,
        remote_address="",
        beat_period=None,
        head_changed_at=T0,
        height_changed_at=T0,
    )
    base.update(kw)
    return NodeRecord(**base)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    store = NodeStore(path)
    a = record("a", syncing=True, head_timestamp=123, genesis_cid="g", version="v", beat_period=3.0)
    b = record("b", syncing=False)
    store.save([a, b])
    store.save([record("b", height=5)])  # upsert
    store.delete(["a", "zzz"])
    store.close()
    again = NodeStore(path)
    assert again.load() == [record("b", height=5)]
    again.save([a])
    assert again.load() == [a, record("b", height=5)]
    again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_file_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError) as info:
        NodeStore(path).load()
    assert info.value.path == str(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        NodeStore(path).load()


def test_unopenable_path_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        NodeStore(tmp_path / "missing-dir" / "nodes.db").load()


class SignallingStore(NodeStore):
    """Tells the test (on the event loop) each time a batch has been committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0
        self.written = trio.Event()

    def write(self, records: object, deleted: object = ()) -> None:
        super().write(records, deleted)  # type: ignore[arg-type]
        trio.from_thread.run_sync(self._signal)

    def _signal(self) -> None:
        self.writes += 1
        self.written.set()
        self.written = trio.Event()


async def test_writer_batches_and_restart_shows_down_nodes(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "nodes.db"
    fleet = Fleet()
    bus, events = wired(fleet)
    store = SignallingStore(path)
    async with trio.open_nursery() as nursery:
        restored = await nursery.start(
            lambda task_status: run_store_writer(
                fleet, store, events, 10.0, clock=lambda: T0, task_status=task_status
            )
        )
        assert restored == 0
        await bus.publish(PeerConnected("a", "/ip4/1.2.3.4/tcp/1", T0))
        await bus.publish(BeatAccepted("a", beat(100), T0))
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked()
        assert store.writes == 0  # nothing before the first period elapsed
        written = store.written
        mock_clock.jump(0.2)
        await written.wait()
        assert [(r.peer_id, r.height) for r in NodeStore(path).load()] == [("a", 100)]
        mock_clock.jump(10)  # nothing changed: no write
        await trio.testing.wait_all_tasks_blocked()
        assert store.writes == 1
        await bus.publish(BeatAccepted("a", beat(101, "ab"), T0 + 12))
        nursery.cancel_scope.cancel()  # the final flush writes the last change
    assert store.writes == 2
    assert [(r.peer_id, r.height) for r in NodeStore(path).load()] == [("a", 101)]

    # a restarted aggregator shows the node, DOWN until it beats again
    fresh = Fleet()
    async with trio.open_nursery() as nursery:
        restored = await nursery.start(
            lambda task_status: run_store_writer(
                fresh,
                NodeStore(path),
                wired(fresh)[1],
                clock=lambda: T0,
                task_status=task_status,
            )
        )
        assert restored == 1
        view = fresh.snapshot(T0 + 20).node("a")
        assert view is not None and view.state is NodeState.DOWN and view.height == 101
        nursery.cancel_scope.cancel()


async def test_writer_deletes_expired_nodes(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "nodes.db"
    NodeStore(path).save([record("old", last_beat=T0 - 100_000), record("new")])
    fleet = Fleet(FleetPolicy(retention=86400.0))
    store = SignallingStore(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_store_writer(
                fleet, store, wired(fleet)[1], 10.0, clock=lambda: T0, task_status=task_status
            )
        )
        assert "old" in fleet
        assert fleet.expire(T0) == ["old"]  # the app's expiry timer (`run_expiry`)
        written = store.written
        mock_clock.jump(10)
        await written.wait()
        assert [r.peer_id for r in NodeStore(path).load()] == ["new"]
        assert "old" not in fleet
        nursery.cancel_scope.cancel()


async def test_writer_refuses_to_start_on_corrupt_db(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError):
        fleet = Fleet()
        await run_store_writer(fleet, NodeStore(path), wired(fleet)[1])


async def test_every_event_reaches_the_writer_even_through_a_full_channel(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The writer is a required subscriber: when its channel is full the publisher waits
    instead of a change going unwritten."""
    path = tmp_path / "nodes.db"
    fleet = Fleet()
    bus, events = wired(fleet, capacity=2)
    store = SignallingStore(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_store_writer(
                fleet, store, events, 10.0, clock=lambda: T0, task_status=task_status
            )
        )
        # Publish without yielding: the writer's consumer cannot run, so the channel fills
        # and the third event makes the publisher wait until the consumer drains it.
        async with trio.open_nursery() as publishers:

            async def publish_all() -> None:
                for i, pid in enumerate(["a", "b", "c", "d"]):
                    await bus.publish(BeatAccepted(pid, beat(10 + i), T0))

            publishers.start_soon(publish_all)
        assert bus.published == 4
        await trio.testing.wait_all_tasks_blocked()  # the consumer took what it was handed
        written = store.written
        mock_clock.jump(10)
        await written.wait()
        got = [(r.peer_id, r.height) for r in NodeStore(path).load()]
        assert got == [("a", 10), ("b", 11), ("c", 12), ("d", 13)]
        nursery.cancel_scope.cancel()


async def test_writer_measures_backpressure_when_it_lags(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    bus, events = wired(fleet, capacity=1)
    # No consumer yet: the second publish waits until one starts 5 virtual seconds later.
    await bus.publish(BeatAccepted("a", beat(1), T0))

    async def late_consumer() -> None:
        await trio.sleep(5)
        async for _ in events:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_consumer)
        await bus.publish(BeatAccepted("b", beat(1), T0))
        nursery.cancel_scope.cancel()
    assert bus.backpressure_seconds == pytest.approx(5.0)


# -- probation and --reset-state -------------------------------------------------------------


async def test_probation_nodes_are_written_only_once_through(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "nodes.db"
    fleet = Fleet(FleetPolicy(probation=60.0))
    bus, events = wired(fleet)
    store = SignallingStore(path)
    now = T0
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_store_writer(
                fleet, store, events, 10.0, clock=lambda: now, task_status=task_status
            )
        )
        await bus.publish(PeerConnected("new", "/ip4/1.2.3.4/tcp/1", T0))
        for i in range(3):  # 3 beats in 20 s: still on probation
            await bus.publish(BeatAccepted("new", beat(100 + i), T0 + 10 * i))
        mock_clock.jump(30)
        await trio.testing.wait_all_tasks_blocked()
        assert store.writes == 0
        assert NodeStore(path).load() == []
        written = store.written
        await bus.publish(BeatAccepted("new", beat(103), T0 + 60))  # through probation
        mock_clock.jump(50)  # several flush periods, wherever the timer stands
        await written.wait()
        assert [r.peer_id for r in NodeStore(path).load()] == ["new"]
        nursery.cancel_scope.cancel()


def test_reset_state_moves_a_corrupt_db_aside_and_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nodes.db"
    garbage = b"this is not a database at all" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError):  # without the setting: the typed error, file untouched
        NodeStore(path).load()
    assert path.read_bytes() == garbage
    (tmp_path / "nodes.db-wal").write_bytes(b"stale wal")
    (tmp_path / "nodes.db-shm").write_bytes(b"stale shm")
    store = NodeStore(path, reset_broken=True)
    with caplog.at_level("ERROR", logger="aggregator.store"):
        assert store.load() == []
    store.save([record("a")])
    store.close()
    assert [r.peer_id for r in NodeStore(path).load()] == ["a"]
    moved = sorted(p.name for p in tmp_path.glob("*.broken-*"))
    assert len(moved) == 3
    assert {m.split(".broken-")[0] for m in moved} == {"nodes.db", "nodes.db-shm", "nodes.db-wal"}
    main = next(p for p in tmp_path.glob("nodes.db.broken-*"))
    assert main.read_bytes() == garbage
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(path) in m and str(main) in m for m in errors), errors


def test_reset_state_leaves_a_good_db_alone(tmp_path: Path) -> None:
    path = tmp_path / "nodes.db"
    NodeStore(path).save([record("a")])
    assert [r.peer_id for r in NodeStore(path, reset_broken=True).load()] == ["a"]
    assert list(tmp_path.glob("*.broken-*")) == []
