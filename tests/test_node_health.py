"""The fleet model's view of agent health (pure): source_down, head delays, network names."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.fleet import Fleet, FleetPolicy, NodeState
from aggregator.networks import (
    CALIBNET_GENESIS_CID,
    MAINNET_GENESIS_CID,
    display_name,
    network_name,
    short_cid,
)
from aggregator.nodestate import NodeRecord
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_000.0
MAIN = MAINNET_GENESIS_CID
GENESIS_TS = 1598306400
DEVNET = "bafy2bzacedevnetdevnetdevnetdevnetdevnetdevnetdevnetdevnet2345"


def cid(tag: str) -> str:
    return "bafy2bzacea" + tag


def beat(height: int, tag: str = "x", genesis: str | None = MAIN, **kw: Any) -> Beat:
    fields: dict[str, Any] = dict(
        head="{" + cid(tag) + "}",
        height=height,
        nickname="alpha",
        miner_address="",
        genesis_cid=genesis,
        head_timestamp=GENESIS_TS + height * 30,
        source_state=SourceState.OK,
    )
    fields.update(kw)
    return Beat(**fields)


def no_head(state: SourceState | None, error: str | None = None) -> Beat:
    """What an agent sends while it knows no head: Head "{}", Height 0."""
    return beat(0, head="{}", head_timestamp=None, source_state=state, source_error=error)


def fleet_of(*peers: str) -> Fleet:
    fleet = Fleet()
    for p in peers:
        fleet.on_connect(p, "/ip4/10.0.0.1/tcp/1", T0)
    return fleet


# --- the state machine ------------------------------------------------------------------------

#: (beat of "c", its state) with "a" and "b" at height 100 on head "x"
SOURCE_TABLE = [
    (beat(100), NodeState.IN_CONSENSUS),
    (beat(100, source_state=None), NodeState.IN_CONSENSUS),  # older agent, real head
    (beat(100, source_state=SourceState.SYNCING, syncing=True), NodeState.SYNCING),
    (no_head(SourceState.UNREACHABLE, "connection refused"), NodeState.SOURCE_DOWN),
    (no_head(SourceState.UNAUTHORIZED, "401 Unauthorized"), NodeState.SOURCE_DOWN),
    (no_head(SourceState.NO_HEAD), NodeState.SOURCE_DOWN),
    (no_head(SourceState.SYNCING), NodeState.SOURCE_DOWN),  # no head at all: not usable
    (no_head(None), NodeState.SOURCE_DOWN),  # older agent without a head
    # the agent keeps its last head but says its Lotus stopped answering
    (beat(100, source_state=SourceState.UNREACHABLE), NodeState.SOURCE_DOWN),
    # its last head is old and on a fork: still source_down, never forked or lagging
    (beat(80, "zz", source_state=SourceState.UNAUTHORIZED), NodeState.SOURCE_DOWN),
    (beat(100, "zz", source_state=SourceState.NO_HEAD, syncing=True), NodeState.SOURCE_DOWN),
]


@pytest.mark.parametrize(("b", "expected"), SOURCE_TABLE)
def test_source_state_table(b: Beat, expected: NodeState) -> None:
    fleet = fleet_of("a", "b", "c")
    fleet.on_beat("a", beat(100), T0)
    fleet.on_beat("b", beat(100), T0)
    fleet.on_beat("c", b, T0)
    snap = fleet.snapshot(T0 + 1)
    view = snap.node("c")
    assert view is not None and view.state is expected
    assert view.source_state == b.source_state and view.source_error == b.source_error
    net = snap.networks[MAIN]
    assert net.height == 100 and net.consensus_votes == 2 + (expected is not NodeState.SOURCE_DOWN)
    assert net.counts[NodeState.SOURCE_DOWN] == (expected is NodeState.SOURCE_DOWN)
    assert net.nodes_up == 3
    assert net.in_dispute == (expected is NodeState.SYNCING)  # source_down is no dispute
    if expected is NodeState.SOURCE_DOWN:
        assert view.lag_epochs is None


def test_down_wins_over_source_down() -> None:
    fleet = fleet_of("a")
    fleet.on_beat("a", no_head(SourceState.UNREACHABLE), T0)
    fleet.on_disconnect("a", T0 + 1)
    view = fleet.snapshot(T0 + 2).node("a")
    assert view is not None and view.state is NodeState.DOWN and not view.up


def test_source_down_never_sets_the_height_nor_votes() -> None:
    """Three nodes whose Lotus lost the token keep a stale head at 120 on another chain: the
    one healthy node at 100 is the network, in consensus, not lagging nor forked."""
    fleet = fleet_of("ok", "s1", "s2", "s3")
    fleet.on_beat("ok", beat(100), T0)
    for p in ("s1", "s2", "s3"):
        fleet.on_beat(p, beat(120, "zz", source_state=SourceState.UNAUTHORIZED), T0)
    snap = fleet.snapshot(T0 + 1)
    net = snap.networks[MAIN]
    assert net.height == 100 and net.consensus_head == frozenset({cid("x")})
    assert (net.in_consensus, net.in_dispute, net.nodes_up) == (1, 0, 4)
    ok = snap.node("ok")
    assert ok is not None and ok.state is NodeState.IN_CONSENSUS and ok.lag_epochs == 0


def test_source_down_with_the_next_beat_and_back_with_the_next_ok_beat() -> None:
    """Lotus stops answering: the very next beat (3 s later) turns the node source_down; the
    first ok beat gives its normal state back, lagging when it comes back behind."""
    fleet = fleet_of("a", "b")
    t = T0
    for height in range(100, 103):
        fleet.on_beat("a", beat(height), t)
        fleet.on_beat("b", beat(height), t)
        t += 3
    assert fleet.snapshot(t).node("b").state is NodeState.IN_CONSENSUS  # type: ignore[union-attr]
    fleet.on_beat("a", beat(103), t)
    fleet.on_beat("b", beat(102, source_state=SourceState.UNREACHABLE, source_error="EOF"), t)
    view = fleet.snapshot(t).node("b")
    assert view is not None and view.state is NodeState.SOURCE_DOWN
    assert (view.source_state, view.source_error) == ("unreachable", "EOF")
    # ten minutes later, the head still at 102: source_down, never stalled
    t += 600
    fleet.on_beat("a", beat(123), t)
    fleet.on_beat("b", beat(102, source_state=SourceState.UNREACHABLE, source_error="EOF"), t)
    assert fleet.snapshot(t).node("b").state is NodeState.SOURCE_DOWN  # type: ignore[union-attr]
    t += 3
    fleet.on_beat("b", beat(110), t)
    view = fleet.snapshot(t).node("b")
    assert view is not None and view.state is NodeState.LAGGING and view.lag_epochs == 13
    assert (view.source_state, view.source_error) == ("ok", None)
    t += 3
    fleet.on_beat("b", beat(123), t)
    assert fleet.snapshot(t).node("b").state is NodeState.IN_CONSENSUS  # type: ignore[union-attr]


def test_source_down_beats_do_not_teach_network_timing() -> None:
    fleet = fleet_of("d")
    fleet.on_beat("d", beat(100, genesis=DEVNET, head_timestamp=1_000_000), T0)
    learned = fleet.network_info(DEVNET)
    fleet.on_beat(
        "d",
        beat(50, genesis=DEVNET, head_timestamp=5, source_state=SourceState.UNREACHABLE),
        T0 + 3,
    )
    assert fleet.network_info(DEVNET) == learned


def test_records_round_trip_without_the_health_fields() -> None:
    fleet = fleet_of("a")
    fleet.on_beat("a", beat(100, head_seen_at=(GENESIS_TS + 3000 + 4) * 1000), T0)
    (record,) = fleet.export_records()
    assert isinstance(record, NodeRecord)
    restored = Fleet.restore([record], now=T0 + 10).snapshot(T0 + 10).node("a")
    assert restored is not None and restored.state is NodeState.DOWN
    assert restored.source_state is None and restored.head_delay_p50 is None


# --- head delays ------------------------------------------------------------------------------


def seen(height: int, delay: float) -> int:
    return int((GENESIS_TS + height * 30 + delay) * 1000)


def test_head_delay_percentiles_over_distinct_heads() -> None:
    fleet = fleet_of("a")
    delays = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    for i, d in enumerate(delays):
        h = 100 + i
        fleet.on_beat("a", beat(h, f"h{chr(97 + i)}", head_seen_at=seen(h, d)), T0 + 3 * i)
        # the same head again, later: not a new head, no new delay
        fleet.on_beat("a", beat(h, f"h{chr(97 + i)}", head_seen_at=seen(h, d + 20)), T0 + 3 * i + 1)
    view = fleet.snapshot(T0 + 40).node("a")
    assert view is not None
    assert (view.head_delay_p50, view.head_delay_p90) == (5.0, 9.0)
    assert view.head_seen_at == pytest.approx(GENESIS_TS + 109 * 30 + 30.0)


def test_head_delay_ring_keeps_the_last_32_and_clamps_negative_delays() -> None:
    fleet = fleet_of("a")
    for i in range(40):
        h = 100 + i
        d = 100.0 if i < 8 else (-5.0 if i % 2 else 2.0)  # the 8 big ones fall out of the ring
        fleet.on_beat(
            "a", beat(h, chr(97 + i // 26) + chr(97 + i % 26), head_seen_at=seen(h, d)), T0 + i
        )
    view = fleet.snapshot(T0 + 41).node("a")
    assert view is not None and (view.head_delay_p50, view.head_delay_p90) == (0.0, 2.0)


def test_no_delay_without_both_keys() -> None:
    fleet = fleet_of("a", "b")
    fleet.on_beat("a", beat(100, head_seen_at=None), T0)
    fleet.on_beat("b", beat(100, head_timestamp=None, head_seen_at=seen(100, 1)), T0)
    snap = fleet.snapshot(T0 + 1)
    for p in ("a", "b"):
        v = snap.node(p)
        assert v is not None and v.head_delay_p50 is None and v.head_delay_p90 is None
    assert dict(snap.head_delays) == {}
    assert snap.node("b").head_seen_at == pytest.approx(GENESIS_TS + 3001)  # type: ignore[union-attr]


def test_probation_nodes_keep_a_ring_but_stay_out_of_the_network_histogram() -> None:
    fleet = Fleet(FleetPolicy(probation=60.0))
    fleet.on_connect("junk", "/ip4/10.0.0.9/tcp/1", T0)
    fleet.on_beat("junk", beat(100, head_seen_at=seen(100, 25.0)), T0)
    snap = fleet.snapshot(T0 + 1)
    assert snap.node("junk").head_delay_p50 == 25.0  # type: ignore[union-attr]
    assert dict(snap.head_delays) == {}
    assert fleet.propagation.tipsets(MAIN) == []


def test_the_fleet_feeds_propagation_once_per_node_per_height() -> None:
    fleet = fleet_of("a", "b")
    fleet.on_beat("a", beat(100, "x", nickname="A", head_seen_at=seen(100, 1.5)), T0)
    fleet.on_beat("b", beat(100, "y", nickname="B", head_seen_at=seen(100, 4.0)), T0)
    # b learns more blocks of height 100: same height, not counted again
    fleet.on_beat("b", beat(100, "x", nickname="B", head_seen_at=seen(100, 6.0)), T0 + 3)
    fleet.on_beat("a", beat(101, "z", nickname="A", head_seen_at=seen(101, 0.5)), T0 + 30)
    (top, first) = fleet.propagation.tipsets(MAIN, 30)
    assert (top.height, [(s.peer_id, s.delay) for s in top.seen]) == (101, [("a", 0.5)])
    assert first.height == 100 and first.timestamp == GENESIS_TS + 3000
    assert [(s.peer_id, s.nickname, s.delay) for s in first.seen] == [
        ("a", "A", 1.5),
        ("b", "B", 4.0),
    ]
    assert fleet.snapshot(T0 + 31).head_delays["mainnet"].count == 4


# --- network names ----------------------------------------------------------------------------


def test_short_cid_and_names_from_the_key() -> None:
    assert short_cid(DEVNET) == "bafy2bza…2345"
    assert short_cid("bafyshort") == "bafyshort"
    assert network_name(MAIN) == "mainnet" and network_name(CALIBNET_GENESIS_CID) == "calibnet"
    assert network_name(DEVNET) == "bafy2bza…2345"
    assert network_name(None) == "unknown" and network_name("unknown") == "unknown"
    assert display_name(DEVNET, "devnet-7") == "devnet-7"
    assert display_name(MAIN, None) == "mainnet"


def test_reported_name_is_the_plurality_of_up_nodes() -> None:
    fleet = fleet_of("a", "b", "c", "d")
    fleet.on_beat("a", beat(10, genesis=DEVNET, network_name="devnet-7"), T0)
    fleet.on_beat("b", beat(10, genesis=DEVNET, network_name="devnet-7"), T0)
    fleet.on_beat("c", beat(10, genesis=DEVNET, network_name="other"), T0)
    fleet.on_beat("d", beat(10, genesis=DEVNET), T0)  # an older agent: no name
    snap = fleet.snapshot(T0 + 1)
    assert snap.networks[DEVNET].name == "devnet-7"
    assert {v.network for v in snap.nodes} == {"devnet-7"}  # the label follows the network
    # two of them go down: "other" is now what most UP nodes say
    fleet.on_disconnect("a", T0 + 2)
    fleet.on_disconnect("b", T0 + 2)
    assert fleet.snapshot(T0 + 3).networks[DEVNET].name == "other"
    # nobody up reports a name: the down ones' names still beat the short CID
    fleet.on_disconnect("c", T0 + 4)
    assert fleet.snapshot(T0 + 5).networks[DEVNET].name == "devnet-7"


def test_node_reported_name_wins_over_the_built_in_one_and_fallbacks() -> None:
    fleet = fleet_of("c", "m", "x")
    fleet.on_beat("c", beat(10, genesis=CALIBNET_GENESIS_CID, network_name="calibrationnet"), T0)
    fleet.on_beat("m", beat(10), T0)
    fleet.on_beat("x", beat(10, genesis=DEVNET), T0)
    snap = fleet.snapshot(T0 + 1)
    names = {k: n.name for k, n in snap.networks.items()}
    assert names == {
        CALIBNET_GENESIS_CID: "calibrationnet",
        MAIN: "mainnet",
        DEVNET: "bafy2bza…2345",
    }


def test_two_networks_never_share_a_name() -> None:
    """A devnet whose nodes call it "mainnet" is told apart from the real one."""
    fleet = fleet_of("m", "fake")
    fleet.on_beat("m", beat(10, network_name="mainnet"), T0)
    fleet.on_beat("fake", beat(10, genesis=DEVNET, network_name="mainnet"), T0)
    names = {k: n.name for k, n in fleet.snapshot(T0 + 1).networks.items()}
    assert names == {MAIN: "mainnet", DEVNET: "mainnet (bafy2bza…2345)"}


def test_probation_nodes_cannot_rename_a_network() -> None:
    fleet = Fleet(FleetPolicy(probation=60.0))
    fleet.set_trusted(["real"])
    for p in ("real", "j1", "j2"):
        fleet.on_connect(p, "/ip4/10.0.0.1/tcp/1", T0)
    fleet.on_beat("real", beat(10), T0)
    for p in ("j1", "j2"):
        fleet.on_beat(p, beat(10, network_name="scamnet"), T0)
    assert fleet.snapshot(T0 + 1).networks[MAIN].name == "mainnet"


def test_genesis_less_nodes_stay_unknown_whatever_they_report() -> None:
    fleet = fleet_of("a")
    fleet.on_beat("a", beat(10, genesis=None, network_name="mainnet"), T0)
    assert fleet.snapshot(T0 + 1).networks["unknown"].name == "unknown"


def test_networks_nobody_is_in_lose_their_histogram_and_propagation_at_expiry() -> None:
    fleet = fleet_of("a")
    fleet.on_beat("a", beat(100, head_seen_at=seen(100, 1.0)), T0)
    fleet.on_beat("a", beat(101, "y", genesis=DEVNET, head_seen_at=seen(101, 1.0)), T0 + 3)
    assert set(fleet.snapshot(T0 + 4).head_delays) == {"mainnet", "bafy2bza…2345"}
    assert fleet.propagation.networks() == sorted([MAIN, DEVNET])
    fleet.expire(T0 + 5)
    assert set(fleet.snapshot(T0 + 6).head_delays) == {"bafy2bza…2345"}
    assert fleet.propagation.networks() == [DEVNET]
