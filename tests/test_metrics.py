"""The Prometheus exposition: rendered text parsed back, values and label sets checked."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from aggregator.consensus import head_hash
from aggregator.fleet import Fleet, FleetSnapshot
from aggregator.gcmon import GcMonitor
from aggregator.metrics import FleetRenderer, create_metrics, render_reference
from aggregator.networks import MAINNET_GENESIS_CID
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.wire import Beat, RejectReason

T0 = 1_700_000_000.0
A = "bafy2bzaceaaa"
B = "bafy2bzaceabb"


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def names(body: bytes) -> set[str]:
    return {name for name, _ in samples(body)}


def lbl(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def fleet_snapshot() -> FleetSnapshot:
    fleet = Fleet()
    for pid, h, cids in (("p1", 100, A), ("p2", 100, A), ("p3", 90, B)):
        fleet.on_connect(pid, "/ip4/10.0.0.1/tcp/1", T0)
        fleet.on_beat(
            pid,
            Beat(
                head="{" + cids + "}",
                height=h,
                nickname=pid.upper(),
                miner_address="f01234",
                genesis_cid=MAINNET_GENESIS_CID,
                head_timestamp=1598306400 + h * 30,
                syncing=False,
                version="v9",
            ),
            T0,
        )
    return fleet.snapshot(T0 + 1)


def node_labels(pid: str) -> dict[str, str]:
    return {"peer_id": pid, "nickname": pid.upper(), "miner": "f01234", "network": "mainnet"}


def test_per_node_and_fleet_values() -> None:
    snap = fleet_snapshot()
    m = create_metrics(lambda: snap)
    got = samples(m.render())
    p1 = node_labels("p1")
    p3 = node_labels("p3")
    assert got[("fil_heartbeat_node_height", lbl(**p1))] == 100
    assert got[("fil_heartbeat_node_height", lbl(**p3))] == 90
    assert got[("fil_heartbeat_node_lag_epochs", lbl(**p3))] == 10
    assert got[("fil_heartbeat_node_up", lbl(**p1))] == 1
    assert got[("fil_heartbeat_node_beats_total", lbl(**p1))] == 1
    assert got[("fil_heartbeat_node_last_beat_timestamp_seconds", lbl(**p1))] == T0
    assert got[("fil_heartbeat_node_head_timestamp_seconds", lbl(**p1))] == 1598306400 + 3000
    assert got[("fil_heartbeat_node_state", lbl(**p3, state="lagging"))] == 1
    assert got[("fil_heartbeat_node_state", lbl(**p3, state="in_consensus"))] == 0
    states = [k for k in got if k[0] == "fil_heartbeat_node_state" and ("peer_id", "p1") in k[1]]
    assert len(states) == 7
    info = lbl(**p1, version="v9", remote_address="/ip4/10.0.0.1/tcp/1")
    assert got[("fil_heartbeat_node_info", info)] == 1
    # the head is a VALUE, exact in the float sample; no label carries a CID
    assert got[("fil_heartbeat_node_head_hash", lbl(**p1))] == head_hash(frozenset({A}))
    assert not any(A in v or B in v for _, labels in got for _, v in labels)

    net = lbl(network="mainnet")
    assert got[("fil_heartbeat_network_height", net)] == 100
    assert got[("fil_heartbeat_network_expected_height", net)] == int((T0 + 1 - 1598306400) // 30)
    assert got[("fil_heartbeat_nodes_in_consensus", net)] == 2
    assert got[("fil_heartbeat_nodes_in_dispute", net)] == 1
    assert got[("fil_heartbeat_nodes", lbl(network="mainnet", state="lagging"))] == 1
    assert got[("fil_heartbeat_nodes", lbl(network="mainnet", state="down"))] == 0
    assert got[("fil_heartbeat_consensus_head_hash", net)] == head_hash(frozenset({A}))
    assert "connected_nodes" not in names(m.render())


def test_departed_nodes_disappear_and_empty_fleet_renders() -> None:
    current: list[FleetSnapshot | None] = [fleet_snapshot()]
    m = create_metrics(lambda: current[0])
    assert ("fil_heartbeat_node_height", lbl(**node_labels("p1"))) in samples(m.render())
    current[0] = Fleet().snapshot(T0)
    body = m.render()
    assert not any(n.startswith("fil_heartbeat_node_") for n in names(body))
    current[0] = None
    assert "fil_heartbeat_beats_received_total" in names(m.render())


def test_legacy_flag() -> None:
    snap = fleet_snapshot()
    plain = names(create_metrics(lambda: snap).render())
    assert not {"connected_nodes", "nodes_in_consensus", "nodes_in_dispute"} & plain
    got = samples(create_metrics(lambda: snap, legacy=True).render())
    agg = lbl(aggregator="aggregator")
    assert got[("connected_nodes", agg)] == 3
    assert got[("nodes_in_consensus", agg)] == 2
    assert got[("nodes_in_dispute", agg)] == 1


class FakeCounters:
    def __init__(self) -> None:
        self.beats_received = 7
        self.beats_accepted = 5
        self.beats_rejected: Counter[str] = Counter({"bad_head": 2})
        self.beats_rate_limited = 1
        self.decode_errors: Counter[str] = Counter({"oversize": 1})
        self.streams_open = 3
        self.connections = 4
        self.handshakes_shed = 6
        self.peers_refused: Counter[str] = Counter({"fleet_full": 2})
        self.peers_disconnected: Counter[str] = Counter({"read_timeout": 1, "custom": 1})


class FakeBus:
    backpressure_seconds = 0.25
    dropped = {"websocket": 3}  # noqa: RUF012


def test_self_metrics_zero_initialised() -> None:
    m = create_metrics(lambda: None, peer_id="12D3Koo", version="1.2.3")
    got = samples(m.render())
    for reason in RejectReason:
        assert got[("fil_heartbeat_beats_rejected_total", lbl(reason=reason.value))] == 0
        assert got[("fil_heartbeat_decode_errors_total", lbl(reason=reason.value))] == 0
    assert got[("fil_heartbeat_peers_refused_total", lbl(reason="fleet_full"))] == 0
    assert got[("fil_heartbeat_beats_received_total", lbl())] == 0
    assert got[("fil_heartbeat_gc_pause_seconds_count", lbl())] == 0
    assert got[("fil_heartbeat_aggregator_info", lbl(peer_id="12D3Koo", version="1.2.3"))] == 1
    assert any(n == "fil_heartbeat_build_info" for n, _ in got)
    assert not any(n == "fil_heartbeat_alerts_firing" for n, _ in got)


def test_self_metrics_read_sources_at_scrape_time() -> None:
    m = create_metrics(lambda: None)
    counters = FakeCounters()
    m.own.counters = counters
    m.own.bus = FakeBus()
    gc = GcMonitor()
    gc.record(0.003)
    gc.record(0.2)
    m.own.gc = gc
    m.set_alerts_provider(
        lambda: [("NodeDown", "critical"), ("NodeDown", "critical"), ("NodeLagging", "warning")]
    )
    got = samples(m.render())
    assert got[("fil_heartbeat_beats_received_total", lbl())] == 7
    assert got[("fil_heartbeat_beats_accepted_total", lbl())] == 5
    assert got[("fil_heartbeat_beats_rate_limited_total", lbl())] == 1
    assert got[("fil_heartbeat_beats_rejected_total", lbl(reason="bad_head"))] == 2
    assert got[("fil_heartbeat_decode_errors_total", lbl(reason="oversize"))] == 1
    assert got[("fil_heartbeat_peers_refused_total", lbl(reason="fleet_full"))] == 2
    assert got[("fil_heartbeat_peers_disconnected_total", lbl(reason="custom"))] == 1
    assert got[("fil_heartbeat_streams_open", lbl())] == 3
    assert got[("fil_heartbeat_connections", lbl())] == 4
    assert got[("fil_heartbeat_handshakes_shed_total", lbl())] == 6
    assert got[("fil_heartbeat_bus_backpressure_seconds_total", lbl())] == 0.25
    assert got[("fil_heartbeat_bus_dropped_total", lbl(subscriber="websocket"))] == 3
    assert got[("fil_heartbeat_gc_pause_seconds_count", lbl())] == 2
    assert got[("fil_heartbeat_gc_pause_seconds_bucket", lbl(le="0.005"))] == 1
    assert got[("fil_heartbeat_alerts_firing", lbl(alertname="NodeDown", severity="critical"))] == 2
    counters.beats_received = 8
    assert samples(m.render())[("fil_heartbeat_beats_received_total", lbl())] == 8


def test_prepared_render_uses_the_values_read_on_the_loop() -> None:
    current: list[FleetSnapshot | None] = [fleet_snapshot()]
    m = create_metrics(lambda: current[0])
    prepared = m.prepare()
    current[0] = None  # the fleet moves on after prepare
    got = samples(m.render_prepared(prepared))
    assert got[("fil_heartbeat_node_height", lbl(**node_labels("p1")))] == 100
    # unpinned again afterwards
    assert ("fil_heartbeat_node_height", lbl(**node_labels("p1"))) not in samples(m.render())


def test_own_registry_not_global() -> None:
    snap = fleet_snapshot()
    create_metrics(lambda: snap)
    assert REGISTRY.get_sample_value("fil_heartbeat_beats_received_total") is None


# -- the hand-written fleet families against prometheus_client's ------------------------------

NASTY = ('quo"te', "back\\slash", "new\nline", "nœud-日本-🚀", 'all\\"\n\\n', "")


def nasty_snapshot(nickname_suffix: str = "") -> FleetSnapshot:
    """Two networks, nasty label values, a node without head timestamp, a down node, no lag."""
    fleet = Fleet()
    for i, nasty in enumerate(NASTY):
        pid = f"12D3KooW{i:044d}"
        fleet.on_connect(pid, f"/ip4/10.0.0.{i}/tcp/4001{nasty}", T0)
        fleet.on_beat(
            pid,
            Beat(
                head="{" + (A if i % 3 else B) + "}",
                height=100 - i,
                nickname=nasty + nickname_suffix,
                miner_address=f"f0{i}{nasty}",
                genesis_cid=MAINNET_GENESIS_CID,
                head_timestamp=None if i == 2 else 1598306400 + (100 - i) * 30,
                syncing=i == 4,
                version=None if i == 1 else f"v{nasty}",
                source_state=(None, SourceState.OK, SourceState.UNAUTHORIZED)[i % 3],
                source_error="401 from Lotus" if i % 3 == 2 else None,
                head_seen_at=int((1598306400 + (100 - i) * 30 + 1.5 * i) * 1000),
                network_name="mainnet" if i == 3 else None,
            ),
            T0 + i / 7,
        )
    fleet.on_disconnect("12D3KooW" + "0" * 44, T0 + 2)
    # alone on its network and down: no lag, no network height
    fleet.on_connect("lonely", "", T0)
    fleet.on_beat(
        "lonely",
        Beat(
            head="{" + A + "}",
            height=5,
            nickname="lonely",
            miner_address="f09",
            genesis_cid="bafyOtherGenesis",
            head_timestamp=None,
            syncing=None,
            version="v",
        ),
        T0,
    )
    fleet.on_disconnect("lonely", T0 + 1)
    return fleet.snapshot(T0 + 2.5)


def families(body: bytes) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(body.decode())
    ]


def test_fast_renderer_matches_prometheus_client() -> None:
    snap = nasty_snapshot()
    assert any(v.lag_epochs is None for v in snap.nodes)
    assert any(v.head_timestamp is None for v in snap.nodes)
    for legacy in (False, True):
        fast = FleetRenderer(legacy=legacy).render(snap).encode()
        reference = render_reference(snap, legacy=legacy)
        assert families(fast) == families(reference)
        # node_probation, node_source_state and head_delay_seconds included
        assert len(families(fast)) == 20 + (3 if legacy else 0)
    for empty in (None, Fleet().snapshot(T0)):
        assert families(FleetRenderer().render(empty).encode()) == families(render_reference(empty))


def test_fast_renderer_escapes_label_values() -> None:
    text = FleetRenderer().render(nasty_snapshot())
    assert 'nickname="quo\\"te"' in text
    assert 'nickname="back\\\\slash"' in text
    assert 'nickname="new\\nline"' in text
    assert 'nickname="all\\\\\\"\\n\\\\n"' in text
    assert 'nickname="nœud-日本-🚀"' in text
    assert all(line.startswith(("#", "fil_heartbeat_")) for line in text.splitlines())


def test_fast_renderer_label_cache_follows_the_fleet() -> None:
    renderer = FleetRenderer()
    renderer.render(nasty_snapshot())
    renamed = nasty_snapshot("-renamed")
    fast = renderer.render(renamed).encode()
    assert families(fast) == families(render_reference(renamed))
    assert 'nickname="quo\\"te-renamed"' in fast.decode()
    assert 'nickname="quo\\"te"' not in fast.decode()
    renderer.render(Fleet().snapshot(T0))
    assert renderer._cache == {}


def test_full_body_is_fleet_then_self_families() -> None:
    snap = nasty_snapshot()
    m = create_metrics(lambda: snap, legacy=True)
    got = families(m.render())
    fleet = families(render_reference(snap, legacy=True))
    assert got[: len(fleet)] == fleet
    assert "fil_heartbeat_beats_received" in {name for name, *_ in got[len(fleet) :]}


# -- agent health: the source state, the head delay histogram ---------------------------------


def _health_beat(height: int, state: SourceState | None, delay: float | None) -> Beat:
    ts = 1598306400 + height * 30
    return Beat(
        head="{" + (A if height % 2 else B) + "}" if height else "{}",
        height=height,
        nickname="n",
        miner_address="",
        genesis_cid=MAINNET_GENESIS_CID,
        head_timestamp=ts if height else None,
        source_state=state,
        source_error="connection refused" if state is SourceState.UNREACHABLE else None,
        head_seen_at=None if delay is None else int((ts + delay) * 1000),
    )


def test_source_state_series_and_source_down_counts() -> None:
    fleet = Fleet()
    for pid in ("ok1", "ok2", "old", "gone"):
        fleet.on_connect(pid, "", T0)
    fleet.on_beat("ok1", _health_beat(101, SourceState.OK, 1.0), T0)
    fleet.on_beat("ok2", _health_beat(101, SourceState.OK, 2.0), T0)
    fleet.on_beat("old", _health_beat(101, None, None), T0)
    fleet.on_beat("gone", _health_beat(0, SourceState.UNREACHABLE, None), T0)
    got = samples(FleetRenderer().render(fleet.snapshot(T0 + 1)).encode())

    def src(pid: str, state: str) -> float | None:
        key = lbl(peer_id=pid, nickname="n", miner="", network="mainnet", state=state)
        return got.get(("fil_heartbeat_node_source_state", key))

    assert [src("ok1", s.value) for s in SourceState] == [1, 0, 0, 0, 0]
    assert [src("gone", s.value) for s in SourceState] == [0, 1, 0, 0, 0]
    assert src("old", "ok") is None  # an older agent says nothing about its source
    net = lbl(network="mainnet")
    assert got[("fil_heartbeat_nodes", lbl(network="mainnet", state="source_down"))] == 1
    assert got[("fil_heartbeat_nodes_in_consensus", net)] == 3
    assert got[("fil_heartbeat_nodes_in_dispute", net)] == 0  # source_down is no dispute
    assert got[("fil_heartbeat_network_height", net)] == 101
    gone = lbl(peer_id="gone", nickname="n", miner="", network="mainnet")
    assert ("fil_heartbeat_node_lag_epochs", gone) not in got
    assert got[("fil_heartbeat_node_state", gone | {("state", "source_down")})] == 1


def test_head_delay_histogram_observed_once_per_node_per_head() -> None:
    fleet = Fleet()
    for pid in ("a", "b"):
        fleet.on_connect(pid, "", T0)
    for t, height, delays in ((0, 101, (0.4, 2.5)), (3, 101, (9.0, 9.0)), (30, 102, (-3.0, 31.0))):
        for pid, delay in zip(("a", "b"), delays, strict=True):
            fleet.on_beat(pid, _health_beat(height, SourceState.OK, delay), T0 + t)
    snap = fleet.snapshot(T0 + 31)
    got = samples(FleetRenderer().render(snap).encode())
    assert families(FleetRenderer().render(snap).encode()) == families(render_reference(snap))

    def bucket(le: str) -> float:
        return got[("fil_heartbeat_head_delay_seconds_bucket", lbl(le=le, network="mainnet"))]

    # observed: 0.4, 2.5 (first heads), 0 (clamped from -3), 31 (second heads); the repeated
    # beats at t=3 carried the same heads and count nothing
    assert [bucket(le) for le in ("0.5", "1.0", "2.0", "3.0", "30.0", "+Inf")] == [2, 2, 2, 3, 3, 4]
    assert got[("fil_heartbeat_head_delay_seconds_count", lbl(network="mainnet"))] == 4
    assert got[("fil_heartbeat_head_delay_seconds_sum", lbl(network="mainnet"))] == pytest.approx(
        33.9
    )
