"""The pure history core: transitions, epoch samples, uptime arithmetic, height chunks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.fleet import Fleet, FleetPolicy
from aggregator.history import (
    EPOCH,
    HOUR_SLOTS,
    UNKNOWN,
    ChunkEncoder,
    HistoryTracker,
    Mark,
    Totals,
    decode_chunk,
    gaps_between,
    snapshot_rows,
    totals_at,
    uptime,
)
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_020.0  # 10 s into an epoch slot


def row(pid: str, state: str, height: int = 100, lag: int | None = 0) -> tuple:  # type: ignore[type-arg]
    return (pid, state, height, lag, None)


def test_the_module_is_pure() -> None:
    tree = ast.parse(Path("aggregator/history.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(str(node.module).split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    assert imported <= {"__future__", "collections", "typing", "aggregator"}
    assert "time.time(" not in Path("aggregator/history.py").read_text()


def test_a_transition_only_when_the_state_changes() -> None:
    tracker = HistoryTracker()
    first = tracker.observe([row("a", "in_consensus"), row("b", "down")], T0)
    assert [(t.peer_id, t.state, t.at) for t in first.transitions] == [
        ("a", "in_consensus", T0),
        ("b", "down", T0),
    ]
    assert all(t.totals == Totals() for t in first.transitions)
    assert tracker.observe([row("a", "in_consensus"), row("b", "down")], T0 + 1).transitions == []
    later = tracker.observe([row("a", "lagging", lag=7), row("b", "down")], T0 + 100)
    assert [(t.peer_id, t.state) for t in later.transitions] == [("a", "lagging")]
    # 100 s in consensus accrued before the change
    assert later.transitions[0].totals == Totals(100.0, 100.0, 100.0)


def test_source_error_travels_with_the_transition() -> None:
    tracker = HistoryTracker()
    out = tracker.observe([("a", "source_down", 0, None, "connection refused")], T0)
    assert out.transitions[0].error == "connection refused"
    assert out.samples == []  # no head, no height


def test_heights_sampled_once_per_epoch_slot() -> None:
    tracker = HistoryTracker()
    slots: list[tuple[int, int]] = []
    for second in range(0, 95):  # a tick a second for 95 s
        out = tracker.observe([row("a", "in_consensus", 100 + second // 30)], T0 + second)
        slots.extend((s.slot, s.height) for s in out.samples)
    first = int(T0 // EPOCH)
    # T0 is 10 s into its slot: samples at the start, then at each new slot (20 s, 50 s, 80 s)
    assert slots == [(first, 100), (first + 1, 100), (first + 2, 101), (first + 3, 102)]


def test_down_nodes_are_not_sampled() -> None:
    tracker = HistoryTracker()
    assert tracker.observe([row("a", "down")], T0).samples == []
    assert len(tracker.observe([row("a", "syncing", 50)], T0 + 30).samples) == 1


def test_a_vanished_node_keeps_its_totals_when_it_comes_back() -> None:
    tracker = HistoryTracker()
    tracker.observe([row("a", "down")], T0)
    tracker.observe([], T0 + 10)  # expired from the fleet
    back = tracker.observe([row("a", "in_consensus")], T0 + 50)
    assert back.transitions[0].totals == Totals(50.0, 0.0, 0.0)  # down all along


def test_probation_nodes_have_no_history() -> None:
    fleet = Fleet(FleetPolicy(probation=60.0))
    fleet.on_connect("p", "10.0.0.1", T0)
    fleet.on_beat("p", Beat(head="{bafy2bzaceaaa}", height=5, nickname="n", miner_address=""), T0)
    snap = fleet.snapshot(T0 + 1)
    assert snap.node("p") is not None and snap.node("p").probation  # type: ignore[union-attr]
    tracker = HistoryTracker()
    assert tracker.observe_snapshot(snap).transitions == []
    assert len(tracker) == 0


def test_gap_transitions_move_known_marks_to_unknown() -> None:
    tracker = HistoryTracker()
    tracker.seed(
        {
            "a": Mark(T0, "in_consensus", Totals(10, 10, 10)),
            "b": Mark(T0 - 5, UNKNOWN, Totals(3, 3, 0)),
        }
    )
    gap = tracker.gap_transitions(T0 + 20)
    assert [(t.peer_id, t.state, t.totals) for t in gap] == [("a", UNKNOWN, Totals(30, 30, 30))]
    # once back, the gap counts as nothing
    back = tracker.observe([row("a", "in_consensus"), row("b", "down")], T0 + 100)
    assert {t.peer_id: t.totals for t in back.transitions} == {
        "a": Totals(30, 30, 30),
        "b": Totals(3, 3, 0),
    }


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("in_consensus", Totals(10, 10, 10)),
        ("lagging", Totals(10, 10, 0)),
        ("forked", Totals(10, 10, 0)),
        ("stalled", Totals(10, 10, 0)),
        ("syncing", Totals(10, 10, 0)),
        ("down", Totals(10, 0, 0)),
        ("source_down", Totals(10, 0, 0)),
        (UNKNOWN, Totals(0, 0, 0)),
    ],
)
def test_what_each_state_accrues(state: str, expected: Totals) -> None:
    assert totals_at(Mark(T0, state, Totals()), T0 + 10) == expected


def test_totals_never_run_backwards() -> None:
    assert totals_at(Mark(T0, "in_consensus", Totals(1, 1, 1)), T0 - 50) == Totals(1, 1, 1)
    assert totals_at(None, T0) == Totals()


def _history(*marks: tuple[float, str]) -> list[Mark]:
    """Marks with their totals as the tracker would have computed them."""
    out: list[Mark] = []
    for at, state in marks:
        totals = totals_at(out[-1], at) if out else Totals()
        out.append(Mark(at, state, totals))
    return out


def _last_before(marks: list[Mark], t: float) -> Mark | None:
    before = [m for m in marks if m.at <= t]
    return before[-1] if before else None


Window = tuple[float | None, float | None, float]


def _window(marks: list[Mark], start: float, end: float) -> Window:
    u = uptime(_last_before(marks, start), start, _last_before(marks, end), end)
    return u.available, u.healthy, u.excluded_seconds


def test_uptime_window_edges_cut_intervals() -> None:
    marks = _history((0, "in_consensus"), (100, "down"), (150, "lagging"), (200, "in_consensus"))
    # [50, 250]: 50 healthy, 50 down, 50 lagging, 50 healthy
    assert _window(marks, 50, 250) == (0.75, 0.5, 0.0)
    # a window inside one interval
    assert _window(marks, 110, 140) == (0.0, 0.0, 0.0)
    # a window starting exactly on a transition
    assert _window(marks, 100, 200) == (0.5, 0.0, 0.0)


def test_uptime_excludes_the_aggregators_gaps() -> None:
    # up 100 s, the aggregator away 300 s, then down 100 s
    marks = _history((0, "in_consensus"), (100, UNKNOWN), (400, "down"), (500, "down"))
    available, healthy, excluded = _window(marks, 0, 500)
    assert (available, healthy, excluded) == (0.5, 0.5, 300.0)


def test_uptime_before_history_is_excluded_and_nothing_is_none() -> None:
    marks = _history((1000, "lagging"))
    assert _window(marks, 0, 1100) == (1.0, 0.0, 1000.0)
    assert _window(marks, 0, 500) == (None, None, 500.0)
    assert _window(_history((0, UNKNOWN)), 0, 50) == (None, None, 50.0)


def test_gaps_between_runs() -> None:
    runs = [(100.0, 200.0), (0.0, 50.0), (200.0, 300.0), (250.0, 260.0)]
    assert gaps_between(runs) == [(50.0, 100.0)]
    assert gaps_between([]) == []


def test_chunk_round_trip_and_resume() -> None:
    hour = int(T0 // EPOCH) // HOUR_SLOTS
    base = hour * HOUR_SLOTS
    enc = ChunkEncoder(hour)
    samples = [(base, 4_000_000, 0), (base + 1, 4_000_001, None), (base + 5, 3_999_990, -2)]
    for s in samples:
        assert enc.add(*s)
    assert not enc.add(base + 5, 1, 0)  # not after the last one
    assert not enc.add(base + HOUR_SLOTS, 1, 0)  # the next hour
    assert decode_chunk(hour, bytes(enc.raw)) == samples
    resumed = ChunkEncoder.resume(hour, bytes(enc.raw))
    assert resumed.add(base + 6, 3_999_991, 1)
    assert decode_chunk(hour, bytes(resumed.raw)) == [*samples, (base + 6, 3_999_991, 1)]
    assert decode_chunk(hour, bytes(enc.raw)[:-1]) == samples[:2]  # a cut tail is dropped


@given(
    st.lists(
        st.tuples(
            st.integers(1, 5),
            st.integers(0, 2**40),
            st.one_of(st.none(), st.integers(-(2**20), 2**20)),
        ),
        max_size=HOUR_SLOTS,
    )
)
def test_chunk_round_trips_anything(steps: list[tuple[int, int, int | None]]) -> None:
    enc = ChunkEncoder(7)
    slot = 7 * HOUR_SLOTS - 1
    expected = []
    for step, height, lag in steps:
        slot += step
        if enc.add(slot, height, lag):
            expected.append((slot, height, lag))
    assert decode_chunk(7, bytes(enc.raw)) == expected


def test_observe_snapshot_is_observe_over_its_rows() -> None:
    fleet = Fleet(FleetPolicy(probation=0.0))
    for i, height in enumerate((100, 100, 90)):
        fleet.on_connect(f"p{i}", f"10.0.0.{i}", T0)
        fleet.on_beat(
            f"p{i}",
            Beat(head=f"{{bafy2bzacea{'abc'[i]}}}", height=height, nickname="n", miner_address=""),
            T0,
        )
    fast, slow = HistoryTracker(), HistoryTracker()
    for t in (T0 + 1, T0 + 40, T0 + 100):  # up, up in the next slot, then down
        snap = fleet.snapshot(t)
        assert fast.observe_snapshot(snap) == slow.observe(snapshot_rows(snap), t)
    assert {m.state for m in fast.marks.values()} == {"down"}
    assert all(type(m.state) is str for m in fast.marks.values())
