"""Who leads and who holds, as the API, the page and /metrics say it (no sockets: the ASGI
app's router and the collectors are called directly)."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest

from aggregator.fleet import Fleet
from aggregator.http import HttpApi
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.scaleout.ha_metrics import HaCollector, origin_name
from aggregator.scaleout.leader import Leader
from aggregator.scaleout.lease import Holder, Role
from aggregator.scaleout.merge import MergeResult, RemoteMerger
from heartbeat.protocol.wire import Beat
from tests.helpers import metric_value
from tests.test_scaleout_lease import Bucket, Client

T0 = 1_700_000_000.0
HERE, OTHER = "agg-b/12D3KooWBbb", "agg-a/12D3KooWAaa"


def _beat() -> Beat:
    return Beat(
        head="{bafy2bzaceaxx}",
        height=100,
        nickname="n",
        miner_address="",
        genesis_cid=MAINNET_GENESIS_CID,
    )


def _fleet() -> Fleet:
    fleet = Fleet()
    fleet.origin = HERE
    fleet.on_connect("both", "10.0.0.1", T0)
    fleet.on_beat("both", _beat(), T0)
    fleet.on_remote_beat(OTHER, "both", _beat(), T0 + 0.1)
    fleet.on_remote_beat(OTHER, "theirs", _beat(), T0)
    return fleet


async def _page(api: HttpApi) -> bytes:
    reply = await api.page.respond("GET", "/", {"type": "http", "headers": []})
    assert reply is not None and reply.status == 200
    return reply.body


async def test_the_leader_route_and_the_page_header() -> None:
    fleet = _fleet()
    api = HttpApi(lambda: fleet.snapshot(T0 + 1))
    status, _, body = await api._route("GET", "/api/v1/alerts/leader")
    assert (status, json.loads(body)) == (200, {"leader": None})
    page = await _page(api)
    assert b"alerts sent by" not in page
    api.alerts_leader = api.page.alerts_leader = lambda: "agg-a"
    _, _, body = await api._route("GET", "/api/v1/alerts/leader")
    assert json.loads(body) == {"leader": "agg-a"}
    page = await _page(api)
    assert b'<span class="leader">alerts sent by agg-a</span>' in page
    # /api/v1/alerts keeps its list shape
    _, _, body = await api._route("GET", "/api/v1/alerts")
    assert json.loads(body) == []
    # held_by in the node JSON
    _, _, body = await api._route("GET", "/api/v1/nodes/both")
    assert json.loads(body)["held_by"] == [OTHER, HERE]


async def test_the_ha_metrics() -> None:
    fleet = _fleet()
    merger = RemoteMerger(fleet, HERE)
    merger.merge(HERE, "x", _beat(), T0)  # own: skipped
    merger.merge(OTHER, "theirs", _beat(), T0)  # a redelivery

    class Merge:
        catch_up_seconds = 1.25
        resyncs = 2
        consumer_errors = 1

    Merge.merger = merger  # type: ignore[attr-defined]
    leader = Leader(Client(Bucket()), None, Holder("agg-b", HERE, "r"), 9.0)
    registry = CollectorRegistry(auto_describe=False)
    collector = HaCollector("agg-b", fleet, lambda: T0 + 1, Merge(), leader)
    registry.register(collector)
    body = generate_latest(registry).decode()
    assert metric_value(body, "fil_heartbeat_alert_leader", aggregator="agg-b") == 0
    leader.lease.role, leader.lease.valid_until = Role.LEADER, float("inf")
    body = generate_latest(registry).decode()
    assert metric_value(body, "fil_heartbeat_alert_leader", aggregator="agg-b") == 1
    assert metric_value(body, "fil_heartbeat_node_holder", peer_id="both", holder="agg-a") == 1
    assert metric_value(body, "fil_heartbeat_node_holder", peer_id="both", holder="agg-b") == 1
    assert metric_value(body, "fil_heartbeat_node_holder", peer_id="theirs", holder="agg-a") == 1
    assert metric_value(body, "fil_heartbeat_node_holder", peer_id="theirs", holder="agg-b") is None
    for result, count in ((MergeResult.OWN, 1), (MergeResult.DUPLICATE, 1)):
        value = metric_value(body, "fil_heartbeat_nats_merged_beats_total", result=result.value)
        assert value == count
    assert metric_value(body, "fil_heartbeat_nats_catch_up_seconds") == 1.25
    assert metric_value(body, "fil_heartbeat_nats_merge_stream_reads_total") == 2
    assert metric_value(body, "fil_heartbeat_nats_merge_errors_total") == 1
    # 15 s later the other aggregator's beats are past the timeout: it holds nothing
    collector.wall_clock = lambda: T0 + 40
    body = generate_latest(registry).decode()
    assert metric_value(body, "fil_heartbeat_node_holder", peer_id="theirs", holder="agg-a") is None
    assert origin_name(OTHER) == "agg-a" and origin_name("plain") == "plain"
