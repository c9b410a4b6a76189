"""Table tests of the pure fleet model, with explicit `now` values."""

from __future__ import annotations

from itertools import pairwise

import pytest

from aggregator.consensus import head_hash
from aggregator.errors import FleetFull
from aggregator.fleet import Fleet, FleetPolicy, NodeState
from aggregator.networks import CALIBNET_GENESIS_CID, MAINNET_GENESIS_CID, short_cid
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_000.0
MAIN = MAINNET_GENESIS_CID
CALIB = CALIBNET_GENESIS_CID


def cid(tag: str) -> str:
    """A plausible CIDv1 text; `tag` must use lowercase letters only."""
    return "bafy2bzacea" + tag


def head(*tags: str) -> str:
    return "{" + ",".join(cid(t) for t in tags) + "}"


def beat(height: int, *tags: str, genesis: str | None = MAIN, **kw: object) -> Beat:
    return Beat(
        head=head(*(tags or ("x",))),
        height=height,
        nickname=str(kw.pop("nickname", "alpha")),
        miner_address=str(kw.pop("miner", "")),
        genesis_cid=genesis,
        **kw,  # type: ignore[arg-type]
    )


def joined(fleet: Fleet, peer: str, b: Beat, now: float = T0) -> None:
    fleet.on_connect(peer, f"/ip4/10.0.0.1/tcp/{len(peer)}", now)
    fleet.on_beat(peer, b, now)


def states(fleet: Fleet, now: float) -> dict[str, NodeState]:
    return {v.peer_id: v.state for v in fleet.snapshot(now).nodes}


def test_empty_fleet_snapshot() -> None:
    snap = Fleet().snapshot(T0)
    assert snap.nodes == ()
    assert dict(snap.networks) == {}
    assert snap.node("nobody") is None
    assert snap.taken_at == T0


def test_consensus_fork_and_disjoint_rule() -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(100, "aa", "ab"))
    joined(fleet, "b", beat(100, "ab", "aa"))  # same set, other order
    joined(fleet, "c", beat(100, "aa"))  # saw fewer blocks of the same tipset: not forked
    joined(fleet, "d", beat(100, "zz"))  # disjoint head at the top height: forked
    snap = fleet.snapshot(T0 + 1)
    assert {v.peer_id: v.state for v in snap.nodes} == {
        "a": NodeState.IN_CONSENSUS,
        "b": NodeState.IN_CONSENSUS,
        "c": NodeState.IN_CONSENSUS,
        "d": NodeState.FORKED,
    }
    net = snap.networks[MAIN]
    assert net.name == "mainnet"
    assert net.height == 100
    assert net.consensus_head == frozenset({cid("aa"), cid("ab")})
    assert net.consensus_votes == 2
    assert net.consensus_head_hash == head_hash(frozenset({cid("aa"), cid("ab")}))
    assert (net.in_consensus, net.in_dispute, net.nodes_up, net.nodes_total) == (3, 1, 4, 4)
    assert net.counts[NodeState.FORKED] == 1
    assert net.counts[NodeState.DOWN] == 0


@pytest.mark.parametrize(
    ("height", "expected"),
    [
        (100, NodeState.IN_CONSENSUS),
        (99, NodeState.IN_CONSENSUS),  # one epoch behind, different head: no flapping
        (98, NodeState.IN_CONSENSUS),  # null round: top jumped by 2
        (96, NodeState.IN_CONSENSUS),
        (95, NodeState.LAGGING),  # exactly lag_epochs behind
        (10, NodeState.LAGGING),
    ],
)
def test_lag_threshold(height: int, expected: NodeState) -> None:
    fleet = Fleet()
    joined(fleet, "top", beat(100, "top"))
    joined(fleet, "n", beat(height, "other"))
    snap = fleet.snapshot(T0 + 1)
    node = snap.node("n")
    assert node is not None
    assert node.state is expected
    assert node.lag_epochs == 100 - height


def test_null_round_does_not_fork_or_lag() -> None:
    fleet = Fleet()
    for p in ("a", "b", "c"):
        joined(fleet, p, beat(100, "ha"))
    # a and b move on across a null round (101 empty) to 102; c is still at 100
    fleet.on_beat("a", beat(102, "hc"), T0 + 60)
    fleet.on_beat("b", beat(102, "hc"), T0 + 60)
    fleet.on_beat("c", beat(100, "ha"), T0 + 60)
    assert set(states(fleet, T0 + 61).values()) == {NodeState.IN_CONSENSUS}


def test_tie_break_is_deterministic() -> None:
    results = set()
    orders: tuple[tuple[str, str], ...] = (("a", "b"), ("b", "a"))
    for order in orders:
        fleet = Fleet()
        joined(fleet, order[0], beat(7, "hb" if order[0] == "a" else "ha"))
        joined(fleet, order[1], beat(7, "hb" if order[1] == "a" else "ha"))
        snap = fleet.snapshot(T0)
        results.add(snap.networks[MAIN].consensus_head)
        b, a = snap.node("b"), snap.node("a")
        assert b is not None and a is not None
        assert b.state is NodeState.IN_CONSENSUS  # "ha" < "hb"
        assert a.state is NodeState.FORKED
    assert results == {frozenset({cid("ha")})}


def test_stall_after_five_minutes_without_height_change() -> None:
    fleet = Fleet()
    joined(fleet, "s", beat(100, "a"))
    joined(fleet, "m", beat(100, "a"))
    for t in range(3, 301, 3):
        fleet.on_beat("s", beat(100, "a"), T0 + t)  # keeps beating, height never moves
        fleet.on_beat("m", beat(100 + t // 30, "a" if t < 30 else "b"), T0 + t)
    # at T0+299 "s" has not changed height for 299 s, then passes the 300 s mark
    fleet.on_beat("s", beat(100, "a"), T0 + 299)
    assert states(fleet, T0 + 299.5)["s"] is NodeState.LAGGING
    assert states(fleet, T0 + 300)["s"] is NodeState.STALLED
    fleet.on_beat("s", beat(110, "b"), T0 + 301)
    assert states(fleet, T0 + 301)["s"] is NodeState.IN_CONSENSUS


def test_down_on_disconnect_and_on_beat_timeout() -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(5))
    joined(fleet, "b", beat(5))
    assert fleet.beat_timeout("a") == 30.0  # no period observed yet
    assert states(fleet, T0 + 30) == {"a": NodeState.IN_CONSENSUS, "b": NodeState.IN_CONSENSUS}
    assert states(fleet, T0 + 30.5)["a"] is NodeState.DOWN
    fleet.on_beat("a", beat(5), T0 + 31)
    fleet.on_disconnect("a", T0 + 32)
    snap = fleet.snapshot(T0 + 32)
    a = snap.node("a")
    assert a is not None and a.state is NodeState.DOWN and not a.connected and not a.up
    net = snap.networks[MAIN]
    assert (net.nodes_up, net.nodes_total, net.counts[NodeState.DOWN]) == (0, 2, 2)
    assert net.height is None and net.consensus_head is None and net.consensus_head_hash == 0
    assert a.lag_epochs is None


def test_peer_counted_once_across_connections() -> None:
    fleet = Fleet()
    fleet.on_connect("a", "/ip4/1.1.1.1/tcp/1", T0)
    fleet.on_connect("a", "/ip4/1.1.1.1/tcp/2", T0)
    fleet.on_beat("a", beat(5), T0)
    fleet.on_disconnect("a", T0 + 1)  # one of two connections closed
    snap = fleet.snapshot(T0 + 1)
    assert len(snap.nodes) == 1
    a = snap.node("a")
    assert a is not None
    assert a.state is NodeState.IN_CONSENSUS
    fleet.on_disconnect("a", T0 + 2)
    assert states(fleet, T0 + 2)["a"] is NodeState.DOWN


def test_connected_but_never_beaten_is_not_a_node() -> None:
    fleet = Fleet()
    fleet.on_connect("ghost", "/ip4/1.1.1.1/tcp/1", T0)
    snap = fleet.snapshot(T0)
    assert snap.nodes == () and snap.pending_peers == 1
    fleet.on_disconnect("ghost", T0 + 1)
    assert fleet.snapshot(T0 + 1).pending_peers == 0


def test_syncing_wins_over_lag() -> None:
    fleet = Fleet()
    joined(fleet, "top", beat(1000))
    joined(fleet, "s", beat(10, syncing=True))
    assert states(fleet, T0)["s"] is NodeState.SYNCING


def test_genesis_separation() -> None:
    fleet = Fleet()
    joined(fleet, "m1", beat(4_000_000, "ma", genesis=MAIN))
    joined(fleet, "m2", beat(4_000_000, "ma", genesis=MAIN))
    joined(fleet, "c1", beat(2_000_000, "ca", genesis=CALIB))
    joined(fleet, "u1", beat(50, "ua", genesis=None))
    snap = fleet.snapshot(T0)
    assert set(snap.networks) == {MAIN, CALIB, "unknown"}
    assert {v.state for v in snap.nodes} == {NodeState.IN_CONSENSUS}
    assert snap.networks[CALIB].name == "calibnet"
    assert snap.networks[CALIB].height == 2_000_000
    u1 = snap.node("u1")
    assert u1 is not None
    assert u1.network == "unknown"
    assert snap.networks[MAIN].expected_height == int((T0 - 1598306400) // 30)
    assert snap.networks["unknown"].expected_height is None


def test_unknown_network_learns_timing_from_beats() -> None:
    fleet = Fleet()
    other = cid("devnet")
    joined(fleet, "d", beat(100, genesis=other, head_timestamp=1_000_400))
    info = fleet.network_info(other)
    assert (info.genesis_timestamp, info.block_delay) == (1_000_400 - 100 * 30, 30.0)
    fleet.on_beat("d", beat(110, genesis=other, head_timestamp=1_000_440), T0 + 3)  # 4 s epochs
    info = fleet.network_info(other)
    assert (info.genesis_timestamp, info.block_delay, info.source) == (1_000_000, 4.0, "learned")
    snap = fleet.snapshot(1_000_800.0)
    assert snap.networks[other].name == short_cid(other)
    assert snap.networks[other].expected_height == 200
    # a registered (authoritative) value is never overridden by what beats say
    fleet.register_network(other, 999_000, 5.0)
    fleet.on_beat("d", beat(120, genesis=other, head_timestamp=1_000_480), T0 + 6)
    assert fleet.network_info(other).genesis_timestamp == 999_000


def test_head_age_and_view_fields() -> None:
    fleet = Fleet()
    joined(
        fleet,
        "a",
        beat(
            100, "aa", head_timestamp=int(T0) - 20, nickname="alpha", miner="f01234", version="v1"
        ),
    )
    v = fleet.snapshot(T0 + 5).node("a")
    assert v is not None
    assert v.head_age_seconds == 25.0
    got = (v.nickname, v.miner_address, v.version, v.beats_received)
    assert got == ("alpha", "f01234", "v1", 1)
    assert v.head_cids == (cid("aa"),)
    assert v.remote_address.startswith("/ip4/10.0.0.1/")


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [(3.0, 10.0), (10.0, 30.0), (20.0, 60.0), (60.0, 120.0)],
)
def test_beat_timeout_follows_observed_period(interval: float, timeout: float) -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(1))
    for i in range(1, 30):
        fleet.on_beat("a", beat(1), T0 + i * interval)
    assert fleet.beat_timeout("a") == pytest.approx(timeout)
    last = T0 + 29 * interval
    assert states(fleet, last + timeout - 0.01)["a"] is not NodeState.DOWN
    assert states(fleet, last + timeout + 0.01)["a"] is NodeState.DOWN


def test_reconnect_gap_does_not_inflate_period() -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(1))
    fleet.on_beat("a", beat(1), T0 + 3)
    fleet.on_disconnect("a", T0 + 4)
    fleet.on_connect("a", "", T0 + 100)
    fleet.on_beat("a", beat(1), T0 + 100)
    assert fleet.beat_timeout("a") == 10.0  # 3 * 3 s, clamped to the 10 s minimum


def test_retention_expiry() -> None:
    fleet = Fleet(FleetPolicy(retention=3600.0))
    joined(fleet, "old", beat(1))
    joined(fleet, "new", beat(1))
    fleet.on_disconnect("old", T0 + 10)
    fleet.on_beat("new", beat(2), T0 + 3000)
    assert fleet.expire(T0 + 3610) == []
    assert fleet.expire(T0 + 3611) == ["old"]
    assert [v.peer_id for v in fleet.snapshot(T0 + 3611).nodes] == ["new"]
    assert fleet.drain_removed() == ["old"]
    assert fleet.drain_removed() == []


def test_node_cap_refuses_new_peers() -> None:
    fleet = Fleet(FleetPolicy(max_nodes=2))
    joined(fleet, "a", beat(1))
    fleet.on_connect("b", "", T0)  # pending peers take a slot too
    with pytest.raises(FleetFull) as info:
        fleet.on_beat("c", beat(1), T0)
    assert info.value.limit == 2 and info.value.peer_id == "c"
    with pytest.raises(FleetFull):
        fleet.on_connect("c", "", T0)
    fleet.on_beat("b", beat(1), T0)  # known peers still get in
    fleet.on_beat("a", beat(2), T0)
    assert len(fleet) == 2


def test_restore_gives_down_nodes_until_they_beat() -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(100, "aa", nickname="alpha"))
    fleet.on_beat("a", beat(100, "aa", nickname="alpha"), T0 + 3)
    records = fleet.export_records()
    back = Fleet.restore(records, FleetPolicy(), T0 + 600)
    assert back.export_records() == records
    v = back.snapshot(T0 + 600).node("a")
    assert v is not None
    assert v.state is NodeState.DOWN and v.nickname == "alpha" and v.height == 100
    assert back.beat_timeout("a") == 10.0  # period survives the restart
    back.on_connect("a", "", T0 + 601)
    back.on_beat("a", beat(101, "ab", nickname="alpha"), T0 + 601)
    v = back.snapshot(T0 + 601).node("a")
    assert v is not None
    assert v.state is NodeState.IN_CONSENSUS and v.beats_received == 3


def test_records_of_the_given_nodes_only() -> None:
    fleet = Fleet()
    joined(fleet, "a", beat(1))
    joined(fleet, "b", beat(1))
    fleet.on_connect("pending", "", T0)
    fleet.on_beat("b", beat(2), T0 + 3)
    records = fleet.records({"b", "pending", "gone", "a"})
    assert [(r.peer_id, r.height) for r in records] == [("a", 1), ("b", 2)]
    assert fleet.records(()) == []


def test_fork_window_compares_lower_heights() -> None:
    fleet = Fleet(FleetPolicy(fork_window_epochs=1))
    joined(fleet, "t", beat(100, "top"))
    joined(fleet, "a", beat(99, "pa"))
    joined(fleet, "b", beat(99, "pa"))
    joined(fleet, "c", beat(99, "pc"))
    got = states(fleet, T0)
    assert got["c"] is NodeState.FORKED and got["a"] is NodeState.IN_CONSENSUS


# -- fork rule near the top: compare only at one height, and only against a clear majority --
# Each row: up nodes as (peer, height, head tags); the peers expected FORKED. Top is the
# highest height in the row. "p*" heads are parents (epoch 99), "g*" grandparents (epoch 98).
FORK_TABLE = [
    (
        "alone one behind, on the parent: not forked",
        [("a", 100, ("t",)), ("b", 100, ("t",)), ("c", 99, ("pa",))],
        set(),
    ),
    (
        "several one behind on the same parent",
        [("a", 100, ("t",)), ("b", 99, ("pa", "pb")), ("c", 99, ("pa", "pb")), ("d", 99, ("pa",))],
        set(),
    ),
    (
        "one behind, majority there disagrees: forked",
        [("a", 100, ("t",)), ("b", 99, ("pa",)), ("c", 99, ("pa",)), ("d", 99, ("px",))],
        {"d"},
    ),
    (
        "one behind, 1-1 split: no reference, nobody forked",
        [("a", 100, ("t",)), ("b", 99, ("pa",)), ("c", 99, ("px",))],
        set(),
    ),
    (
        "one behind, 2-2 split: no majority",
        [
            ("a", 100, ("t",)),
            ("b", 99, ("pa",)),
            ("c", 99, ("pa",)),
            ("d", 99, ("px",)),
            ("e", 99, ("px",)),
        ],
        set(),
    ),
    (
        "one behind, 2-1-1: a plurality but no majority",
        [
            ("a", 100, ("t",)),
            ("b", 99, ("pa",)),
            ("c", 99, ("pa",)),
            ("d", 99, ("px",)),
            ("e", 99, ("py",)),
        ],
        set(),
    ),
    (
        "one behind, saw fewer blocks of the majority tipset",
        [("a", 100, ("t",)), ("b", 99, ("pa", "pb")), ("c", 99, ("pa", "pb")), ("d", 99, ("pb",))],
        set(),
    ),
    (
        "two behind, majority disagrees: forked",
        [("a", 100, ("t",)), ("b", 98, ("ga",)), ("c", 98, ("ga",)), ("d", 98, ("gx",))],
        {"d"},
    ),
    (
        "three behind: outside the window, not compared",
        [("a", 100, ("t",)), ("b", 97, ("ka",)), ("c", 97, ("ka",)), ("d", 97, ("kx",))],
        set(),
    ),
    (
        "null round at 101: nodes at 100 compared among themselves",
        [("a", 102, ("t",)), ("b", 100, ("ha",)), ("c", 100, ("ha",)), ("d", 100, ("hx",))],
        {"d"},
    ),
    (
        "null round at 101, one node trailing alone",
        [("a", 102, ("t",)), ("b", 102, ("t",)), ("c", 100, ("ha",))],
        set(),
    ),
    (
        "top keeps the plurality rule",
        [("a", 100, ("t",)), ("b", 100, ("t",)), ("c", 100, ("tx",)), ("d", 99, ("pa",))],
        {"c"},
    ),
]


@pytest.mark.parametrize(
    ("rows", "forked"), [r[1:] for r in FORK_TABLE], ids=[r[0] for r in FORK_TABLE]
)
def test_fork_rule_near_the_top(
    rows: list[tuple[str, int, tuple[str, ...]]], forked: set[str]
) -> None:
    fleet = Fleet()
    for peer, height, tags in rows:
        joined(fleet, peer, beat(height, *tags))
    got = states(fleet, T0)
    assert {p for p, s in got.items() if s is NodeState.FORKED} == forked
    assert {p for p, s in got.items() if s is not NodeState.FORKED} == (
        {p for p, _, _ in rows} - forked
    )
    assert all(s in (NodeState.FORKED, NodeState.IN_CONSENSUS) for s in got.values())


def test_down_and_other_network_nodes_do_not_vote_below_the_top() -> None:
    fleet = Fleet()
    joined(fleet, "top", beat(100, "t"))
    joined(fleet, "a", beat(99, "pa"))
    joined(fleet, "x", beat(99, "px"))
    for p in ("gone1", "gone2"):  # would make px the majority, but they are down
        joined(fleet, p, beat(99, "px"))
        fleet.on_disconnect(p, T0 + 1)
    for p in ("cal1", "cal2"):  # another network entirely
        joined(fleet, p, beat(99, "px", genesis=CALIB))
    got = states(fleet, T0 + 2)
    assert got["a"] is NodeState.IN_CONSENSUS and got["x"] is NodeState.IN_CONSENSUS


def test_nodes_trailing_by_one_epoch_never_flap_to_forked() -> None:
    """Every epoch three nodes see the new tipset first and two follow one epoch later, now and
    then across a null round: no snapshot along the way shows anyone forked."""
    fleet = Fleet()
    leaders, followers = ("a", "b", "c"), ("d", "e")
    heights = [100, 101, 102, 104, 105, 106]  # 103 is a null round
    tipset = {h: (f"h{chr(97 + i)}", f"h{chr(97 + i)}z") for i, h in enumerate(heights)}
    now = T0
    for p in (*leaders, *followers):
        joined(fleet, p, beat(heights[0], *tipset[heights[0]]), now)
    for prev, h in pairwise(heights):
        now += 30
        for i, p in enumerate(leaders):
            fleet.on_beat(p, beat(h, *tipset[h][: 1 + i % 2]), now)  # some saw one block
            assert NodeState.FORKED not in states(fleet, now).values()
        now += 3
        for p in followers:
            fleet.on_beat(p, beat(prev, *tipset[prev]), now)
        assert NodeState.FORKED not in states(fleet, now).values()
        now += 3
        for p in followers:
            fleet.on_beat(p, beat(h, *tipset[h]), now)
            assert NodeState.FORKED not in states(fleet, now).values()


# -- probation ---------------------------------------------------------------------------------

PROBATION = FleetPolicy(probation=60.0, max_probation=4, max_probation_per_ip=2, max_nodes=6)


def arrive(fleet: Fleet, peer: str, ip: str, now: float, height: int = 100) -> None:
    fleet.on_connect(peer, f"/ip4/{ip}/tcp/4001", now)
    fleet.on_beat(peer, beat(height, "aa"), now)


def test_probation_needs_time_and_beats() -> None:
    fleet = Fleet(PROBATION)
    arrive(fleet, "new", "10.0.0.1", T0)
    assert fleet.snapshot(T0).node("new").probation  # type: ignore[union-attr]
    # 3 beats but not a minute yet: still on probation
    fleet.on_beat("new", beat(100, "aa"), T0 + 10)
    fleet.on_beat("new", beat(100, "aa"), T0 + 20)
    assert fleet.on_probation("new")
    # a minute of beating but the 3rd beat already counted: passes on the next beat at 60 s
    fleet.on_beat("new", beat(101, "aa"), T0 + 60)
    view = fleet.snapshot(T0 + 60).node("new")
    assert view is not None and not view.probation
    assert not fleet.on_probation("new")


def test_one_beat_over_a_minute_is_not_enough() -> None:
    fleet = Fleet(PROBATION)
    arrive(fleet, "slow", "10.0.0.1", T0)
    fleet.on_beat("slow", beat(100, "aa"), T0 + 90)  # 2 beats over 90 s
    assert fleet.on_probation("slow")
    fleet.on_beat("slow", beat(100, "aa"), T0 + 95)
    assert not fleet.on_probation("slow")


def test_probation_nodes_do_not_vote_nor_count() -> None:
    fleet = Fleet(PROBATION)
    fleet.set_trusted(["a", "b"])
    joined(fleet, "a", beat(100, "aa"))
    joined(fleet, "b", beat(100, "aa"))
    # three junk ids on another head, one higher: with a vote they would win and fork a, b
    for i, ip in enumerate(("10.0.0.7", "10.0.0.8", "10.0.0.9")):
        arrive(fleet, f"junk{i}", ip, T0, height=101)
    snap = fleet.snapshot(T0)
    (main,) = snap.networks.values()  # junk ids make no network of their own either
    assert main.height == 100
    assert main.nodes_total == 2
    assert main.consensus_head == frozenset({cid("aa")})
    assert snap.probation_nodes == 3
    assert {v.peer_id: v.state for v in snap.nodes if not v.probation} == {
        "a": NodeState.IN_CONSENSUS,
        "b": NodeState.IN_CONSENSUS,
    }
    assert all(v.probation for v in snap.nodes if v.peer_id.startswith("junk"))


def test_allowlisted_peers_skip_probation() -> None:
    fleet = Fleet(PROBATION)
    fleet.set_trusted(["friend"])
    arrive(fleet, "friend", "10.0.0.1", T0)
    assert not fleet.on_probation("friend")
    assert not fleet.snapshot(T0).node("friend").probation  # type: ignore[union-attr]
    assert [r.peer_id for r in fleet.export_records()] == ["friend"]


def test_probation_bounded_per_ip_then_down_ones_evicted() -> None:
    fleet = Fleet(PROBATION)
    arrive(fleet, "p1", "10.0.0.1", T0)
    arrive(fleet, "p2", "10.0.0.1", T0 + 1)
    with pytest.raises(FleetFull):  # both up: nobody to evict from 10.0.0.1
        fleet.on_connect("p3", "/ip4/10.0.0.1/tcp/1", T0 + 2)
    arrive(fleet, "q1", "10.0.0.2", T0 + 2)  # another IP still has room
    fleet.on_disconnect("p1", T0 + 3)
    arrive(fleet, "p3", "10.0.0.1", T0 + 4)  # p1 is down: evicted for p3
    assert "p1" not in fleet and "p3" in fleet
    assert fleet.evicted == 1
    assert fleet.drain_removed() == []  # never persisted: nothing to delete


def test_probation_bounded_in_total() -> None:
    fleet = Fleet(PROBATION)
    for i in range(4):
        arrive(fleet, f"p{i}", f"10.0.1.{i}", T0)
    with pytest.raises(FleetFull):
        fleet.on_connect("late", "/ip4/10.0.2.1/tcp/1", T0 + 1)
    # silent past the beat timeout (30 s): down while connected, so evictable
    arrive(fleet, "late", "10.0.2.1", T0 + 31)
    assert "late" in fleet and len(fleet) == 4


def test_full_registry_evicts_probation_then_longest_down() -> None:
    policy = FleetPolicy(probation=60.0, max_probation=10, max_probation_per_ip=10, max_nodes=3)
    fleet = Fleet(policy)
    fleet.set_trusted(["old", "older"])
    arrive(fleet, "older", "10.0.0.1", T0)
    arrive(fleet, "old", "10.0.0.1", T0 + 5)
    arrive(fleet, "junk", "10.0.0.9", T0 + 10)
    fleet.on_disconnect("older", T0 + 20)
    fleet.on_disconnect("old", T0 + 30)
    fleet.on_disconnect("junk", T0 + 40)
    fleet.set_trusted(["old", "older", "n1", "n2", "n3"])
    arrive(fleet, "n1", "10.0.0.2", T0 + 50)  # the down probation node goes first
    assert "junk" not in fleet and "old" in fleet and "older" in fleet
    arrive(fleet, "n2", "10.0.0.2", T0 + 51)  # then the longest down
    assert "older" not in fleet and "old" in fleet
    assert fleet.drain_removed() == ["older"]  # persisted: the store deletes it
    arrive(fleet, "n3", "10.0.0.2", T0 + 52)
    assert "old" not in fleet
    with pytest.raises(FleetFull):  # everyone up: refused
        fleet.on_connect("n4", "/ip4/10.0.0.2/tcp/1", T0 + 53)


def test_probation_nodes_are_not_persisted_and_disconnect_frees_the_slot() -> None:
    fleet = Fleet(PROBATION)
    arrive(fleet, "p", "10.0.0.1", T0)
    assert fleet.export_records() == []
    assert fleet.records(["p"]) == []
    fleet.on_connect("q", "/ip4/10.0.0.1/tcp/1", T0)  # pending: holds a slot of 10.0.0.1
    with pytest.raises(FleetFull):
        fleet.on_connect("r", "/ip4/10.0.0.1/tcp/2", T0)
    fleet.on_disconnect("q", T0 + 1)
    fleet.on_connect("r", "/ip4/10.0.0.1/tcp/2", T0 + 1)


def test_restored_nodes_are_through_probation() -> None:
    fleet = Fleet(PROBATION)
    fleet.set_trusted(["a"])
    arrive(fleet, "a", "10.0.0.1", T0)
    again = Fleet.restore(fleet.export_records(), PROBATION, now=T0 + 5)
    assert not again.on_probation("a")
    assert again.export_records() == fleet.export_records()


def test_probation_per_ip_counts_plain_ips_as_the_ingest_gives_them() -> None:
    fleet = Fleet(PROBATION)
    fleet.on_connect("a", "127.0.0.1", T0)
    fleet.on_connect("b", "127.0.0.1", T0)
    with pytest.raises(FleetFull):
        fleet.on_connect("c", "127.0.0.1", T0)
    fleet.on_connect("d", "::1", T0)
