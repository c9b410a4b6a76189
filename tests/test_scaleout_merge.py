"""The merged fleet (aggregator/scaleout/merge.py): remote beats, holders, newest beat wins.

Pure: explicit `now` values, no sockets.
"""

from __future__ import annotations

import pytest

from aggregator.fleet import Fleet, FleetPolicy, NodeState
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.scaleout.merge import MergeResult, RemoteMerger
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_000.0
HERE, A, B = "agg-here", "agg-a", "agg-b"


def beat(height: int, tag: str = "x", nickname: str = "n") -> Beat:
    return Beat(
        head="{bafy2bzacea" + tag + "}",
        height=height,
        nickname=nickname,
        miner_address="",
        genesis_cid=MAINNET_GENESIS_CID,
    )


def fleet() -> Fleet:
    f = Fleet(FleetPolicy())
    f.origin = HERE
    return f


def test_a_remote_only_node_is_up_while_its_holder_beats_then_down() -> None:
    f = fleet()
    for i in range(4):
        assert f.on_remote_beat(A, "p", beat(100 + i), T0 + 3 * i) is MergeResult.APPLIED
    v = f.snapshot(T0 + 9).node("p")
    assert v is not None
    assert v.up and v.state is NodeState.IN_CONSENSUS
    assert not v.connected
    assert v.held_by == (A,)
    assert v.beat_period == pytest.approx(3.0)  # measured between A's beats
    assert v.height == 103
    # The timeout is 3 periods bounded below by 10 s: at last beat + 10 s still up, after: down.
    assert f.snapshot(T0 + 9 + 10).node("p").up  # type: ignore[union-attr]
    late = f.snapshot(T0 + 9 + 10.5).node("p")
    assert late is not None
    assert not late.up and late.state is NodeState.DOWN
    assert late.held_by == ()


def test_one_node_over_two_aggregators_newest_beat_wins() -> None:
    f = fleet()
    f.on_connect("p", "10.0.0.1", T0)
    f.on_beat("p", beat(100, "aa"), T0)
    # The same node's beat via A, older than ours: A becomes a holder, our beat stays.
    assert f.on_remote_beat(A, "p", beat(99, "zz"), T0 - 1) is MergeResult.STALE
    snap = f.snapshot(T0 + 1)
    assert len(snap.nodes) == 1
    v = snap.node("p")
    assert v is not None
    assert v.height == 100 and v.head.endswith("aa}")
    assert v.held_by == (A, HERE)
    # A newer one via B wins.
    assert f.on_remote_beat(B, "p", beat(101, "bb"), T0 + 2) is MergeResult.APPLIED
    v = f.snapshot(T0 + 2).node("p")
    assert v is not None
    assert v.height == 101 and v.head.endswith("bb}")
    assert v.held_by == (A, B, HERE)


def test_up_while_any_aggregator_holds_it() -> None:
    f = fleet()
    f.on_connect("p", "10.0.0.1", T0)
    f.on_beat("p", beat(100), T0)
    f.on_remote_beat(A, "p", beat(100), T0 + 0.1)
    f.on_disconnect("p", T0 + 1)  # our connection closes; A still holds it
    for i in range(1, 5):
        f.on_remote_beat(A, "p", beat(100 + i), T0 + 3 * i)
    v = f.snapshot(T0 + 13).node("p")
    assert v is not None
    assert v.up and not v.connected and v.held_by == (A,)
    # A's beats stop: down one timeout later (the period measured here, 3 s -> 10 s floor).
    assert not f.snapshot(T0 + 12 + 10.5).node("p").up  # type: ignore[union-attr]


def test_a_closed_local_connection_without_remote_holder_is_down() -> None:
    """Control for the test above: without A, the same disconnect is DOWN at once."""
    f = fleet()
    f.on_connect("p", "10.0.0.1", T0)
    f.on_beat("p", beat(100), T0)
    f.on_disconnect("p", T0 + 1)
    v = f.snapshot(T0 + 2).node("p")
    assert v is not None
    assert not v.up and v.held_by == ()


def test_redelivered_and_own_beats_are_dropped() -> None:
    f = fleet()
    m = RemoteMerger(f, HERE)
    assert m.merge(A, "p", beat(100), T0) is MergeResult.APPLIED
    assert m.merge(A, "p", beat(100), T0) is MergeResult.DUPLICATE
    assert m.merge(A, "p", beat(99), T0 - 3) is MergeResult.DUPLICATE
    assert m.merge(HERE, "q", beat(100), T0) is MergeResult.OWN
    assert "q" not in f
    assert f.snapshot(T0).node("p").beats_received == 1  # type: ignore[union-attr]
    assert m.stats.counts[MergeResult.APPLIED] == 1
    assert m.stats.counts[MergeResult.DUPLICATE] == 2
    assert m.stats.counts[MergeResult.OWN] == 1
    assert m.stats.newest_at == T0


def test_consensus_and_forks_over_the_merged_fleet() -> None:
    f = fleet()
    f.on_connect("local", "10.0.0.1", T0)
    f.on_beat("local", beat(100, "bad"), T0)
    f.on_remote_beat(A, "r1", beat(100, "good"), T0)
    f.on_remote_beat(B, "r2", beat(100, "good"), T0)
    snap = f.snapshot(T0 + 1)
    net = next(iter(snap.networks.values()))
    assert net.nodes_up == 3
    assert net.consensus_votes == 2
    assert snap.node("local").state is NodeState.FORKED  # type: ignore[union-attr]
    assert snap.node("r1").state is NodeState.IN_CONSENSUS  # type: ignore[union-attr]


def test_remote_beats_obey_admission() -> None:
    f = Fleet(FleetPolicy(max_nodes=1))
    f.origin = HERE
    f.on_connect("p", "10.0.0.1", T0)
    f.on_beat("p", beat(100), T0)
    assert f.on_remote_beat(A, "q", beat(100), T0) is MergeResult.REFUSED
    assert "q" not in f


def test_remote_nodes_serve_probation_like_local_ones() -> None:
    f = Fleet(FleetPolicy(probation=60.0))
    f.origin = HERE
    f.on_remote_beat(A, "p", beat(100), T0)
    assert f.snapshot(T0).node("p").probation  # type: ignore[union-attr]
    for i in range(1, 25):
        f.on_remote_beat(A, "p", beat(100 + i), T0 + 3 * i)
    assert not f.snapshot(T0 + 72).node("p").probation  # type: ignore[union-attr]


def test_without_origin_held_by_is_empty() -> None:
    f = Fleet()
    f.on_connect("p", "10.0.0.1", T0)
    f.on_beat("p", beat(100), T0)
    assert f.snapshot(T0).node("p").held_by == ()  # type: ignore[union-attr]
    f.origin = HERE
    assert f.snapshot(T0).node("p").held_by == (HERE,)  # type: ignore[union-attr]
