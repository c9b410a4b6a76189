"""The HTTP endpoint, served by a real hypercorn on 127.0.0.1 (port 0), queried with httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from aggregator.fleet import Fleet
from aggregator.http import HttpApi, serve_http
from aggregator.metrics import create_metrics
from aggregator.networks import MAINNET_GENESIS_CID
from heartbeat.protocol.wire import Beat

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
A = "bafy2bzaceaaa"
B = "bafy2bzaceabb"


def make_fleet() -> Fleet:
    fleet = Fleet()
    for pid, h, cid in (("peer1", 100, A), ("peer2", 100, B), ("peer3", 100, A)):
        fleet.on_connect(pid, "/ip4/10.0.0.1/tcp/1", T0)
        fleet.on_beat(
            pid,
            Beat(
                head="{" + cid + "}",
                height=h,
                nickname="n" + pid[-1],
                miner_address="",
                genesis_cid=MAINNET_GENESIS_CID,
            ),
            T0,
        )
    fleet.on_disconnect("peer3", T0 + 1)
    return fleet


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpApi, httpx.AsyncClient]]:
    fleet = make_fleet()

    def provider():  # type: ignore[no-untyped-def]
        return fleet.snapshot(T0 + 2)

    api = HttpApi(provider, create_metrics(provider))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, api, "127.0.0.1", 0)
        assert port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield api, client
        nursery.cancel_scope.cancel()


async def test_health_and_readiness(served: tuple[HttpApi, httpx.AsyncClient]) -> None:
    api, client = served
    r = await client.get("/healthz")
    assert (r.status_code, r.text) == (200, "ok\n")
    assert (await client.get("/readyz")).status_code == 503
    api.set_ready()
    assert (await client.get("/readyz")).status_code == 200


async def test_metrics(served: tuple[HttpApi, httpx.AsyncClient]) -> None:
    _, client = served
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }
    assert values[("fil_heartbeat_nodes_in_consensus", (("network", "mainnet"),))] == 1
    assert values[("fil_heartbeat_nodes_in_dispute", (("network", "mainnet"),))] == 1


async def test_nodes_and_fleet(served: tuple[HttpApi, httpx.AsyncClient]) -> None:
    _, client = served
    nodes = (await client.get("/api/v1/nodes")).json()
    assert [n["peer_id"] for n in nodes] == ["peer1", "peer2", "peer3"]
    assert [n["state"] for n in nodes] == ["in_consensus", "forked", "down"]
    assert nodes[0]["head_cids"] == [A] and nodes[0]["lag_epochs"] == 0
    one = await client.get("/api/v1/nodes/peer2")
    assert one.status_code == 200 and one.json()["nickname"] == "n2"
    missing = await client.get("/api/v1/nodes/nobody")
    assert missing.status_code == 404 and missing.json()["peer_id"] == "nobody"
    assert (await client.get("/nodes")).json() == ["peer1", "peer2"]
    fleet = (await client.get("/api/v1/fleet")).json()
    (net,) = fleet["networks"]
    assert net["network"] == "mainnet" and net["height"] == 100
    assert net["consensus_head"] == [A]  # tie between A and B: smallest wins
    assert net["counts"]["down"] == 1 and net["in_consensus"] == 1 and net["in_dispute"] == 1
    assert net["expected_height"] == int((T0 + 2 - 1598306400) // 30)


async def test_alerts_provider(served: tuple[HttpApi, httpx.AsyncClient]) -> None:
    api, client = served
    assert (await client.get("/api/v1/alerts")).json() == []
    api.set_alerts_provider(lambda: [{"alertname": "NodeDown", "peer_id": "peer3"}])
    assert (await client.get("/api/v1/alerts")).json() == [
        {"alertname": "NodeDown", "peer_id": "peer3"}
    ]


async def test_workers_single_process_and_provider(
    served: tuple[HttpApi, httpx.AsyncClient],
) -> None:
    import os

    api, client = served
    [me] = (await client.get("/api/v1/workers")).json()
    assert me["index"] == 0 and me["pid"] == os.getpid() and me["up"] is True
    api.set_workers_provider(lambda: [{"index": 0, "pid": 1}, {"index": 1, "pid": 2}])
    assert [w["pid"] for w in (await client.get("/api/v1/workers")).json()] == [1, 2]


async def test_errors(served: tuple[HttpApi, httpx.AsyncClient]) -> None:
    _, client = served
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not found"
    r = await client.post("/api/v1/nodes", content=b"x" * 1000)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert (await client.delete("/metrics")).status_code == 405
    r = await client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    assert (await client.get("/api/v1/nodes/")).status_code == 200  # trailing slash: the list
    r = await client.get("/api/v1/nodes/%ff%00")
    assert r.status_code == 404
    assert (await client.get("/healthz")).status_code == 200  # still serving
