"""The live feed (`/api/v1/feed`): a real hypercorn on 127.0.0.1 (port 0) serving `HttpApi`
with a real `Bus`, real trio-websocket clients, events published on the bus by the test."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from aggregator.bus import BeatAccepted, Bus, Event, PeerConnected, PeerDisconnected
from aggregator.feed import feed_json
from aggregator.fleet import Fleet
from aggregator.http import HttpApi, serve_http
from heartbeat.protocol.wire import Beat
from tests.test_http import T0, make_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

A = "12D3KooWAlpha"
B = "12D3KooWBravo"


def beat_event(peer_id: str, height: int, at: float, nickname: str = "alpha") -> BeatAccepted:
    head = "{bafy2bzacea" + str(height) + "}"
    return BeatAccepted(
        peer_id, Beat(head=head, height=height, nickname=nickname, miner_address="f01234"), at
    )


@contextlib.asynccontextmanager
async def serving(api: HttpApi) -> AsyncIterator[str]:
    """Serve `api`; yields the base URL `127.0.0.1:PORT`."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, api, "127.0.0.1", 0)
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def feed_api(bus: Bus | None, **kwargs: Any) -> HttpApi:
    fleet = make_fleet()
    return HttpApi(lambda: fleet.snapshot(T0 + 2), bus=bus, **kwargs)


async def messages(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(10):
        return [json.loads(await ws.get_message()) for _ in range(count)]


async def until_unsubscribed(bus: Bus) -> None:
    """Until the server has unsubscribed every feed (the close is handled on its side)."""
    with trio.fail_after(10):
        while bus.optional_subscribers:
            await trio.testing.wait_all_tasks_blocked()


def test_feed_json_shapes() -> None:
    assert feed_json(PeerConnected(A, "/ip4/10.0.0.1/tcp/4001", T0)) == {
        "type": "connected",
        "peer_id": A,
        "at": T0,
        "remote_addr": "/ip4/10.0.0.1/tcp/4001",
    }
    assert feed_json(beat_event(A, 7, T0 + 1)) == {
        "type": "beat",
        "peer_id": A,
        "at": T0 + 1,
        "head": "{bafy2bzacea7}",
        "height": 7,
        "nickname": "alpha",
        "miner_address": "f01234",
    }
    assert feed_json(PeerDisconnected(A, T0 + 2)) == {
        "type": "disconnected",
        "peer_id": A,
        "at": T0 + 2,
    }
    assert feed_json(object()) is None


async def test_events_arrive_in_order() -> None:
    bus = Bus()
    events: list[Event] = [PeerConnected(A, "/ip4/10.0.0.1/tcp/4001", T0)]
    events += [beat_event(A, h, T0 + h) for h in (10, 11, 12)]
    events.append(PeerDisconnected(A, T0 + 20))
    async with serving(feed_api(bus)) as base, open_websocket_url(f"ws://{base}/api/v1/feed") as ws:
        assert bus.optional_subscribers == ["feed-0"]
        for event in events:
            await bus.publish(event)
        got = await messages(ws, len(events))
    assert got == [feed_json(e) for e in events]
    assert [m["type"] for m in got] == ["connected", "beat", "beat", "beat", "disconnected"]
    assert [m.get("height") for m in got] == [None, 10, 11, 12, None]
    assert got[0]["remote_addr"] == "/ip4/10.0.0.1/tcp/4001"


async def test_peer_filter() -> None:
    bus = Bus()
    async with (
        serving(feed_api(bus)) as base,
        open_websocket_url(f"ws://{base}/api/v1/feed") as everything,
        open_websocket_url(f"ws://{base}/api/v1/feed?peer={A}") as only_a,
    ):
        for event in (
            PeerConnected(B, "/ip4/10.0.0.2/tcp/1", T0),
            beat_event(A, 1, T0),
            beat_event(B, 1, T0, "bravo"),
            PeerDisconnected(B, T0 + 1),
            beat_event(A, 2, T0 + 1),
        ):
            await bus.publish(event)
        # Each connection is in order: the filtered one's last event comes after every other.
        got_a = await messages(only_a, 2)
        got_all = await messages(everything, 5)
    assert [(m["peer_id"], m["type"], m.get("height")) for m in got_a] == [
        (A, "beat", 1),
        (A, "beat", 2),
    ]
    assert [m["peer_id"] for m in got_all] == [B, A, B, B, A]


async def test_a_client_that_never_reads_blocks_neither_publish_nor_other_clients() -> None:
    bus = Bus()
    # Large, incompressible events fill the socket buffers quickly; 4 queued per client.
    nickname = os.urandom(24 * 1024).hex()
    published: list[BeatAccepted] = []
    received: list[dict[str, Any]] = []

    async def publish() -> None:
        event = beat_event(A, len(published), T0, nickname)
        await bus.publish(event)  # never waits on an optional subscriber
        published.append(event)
        # Let the server and both clients run as far as they can.
        await trio.testing.wait_all_tasks_blocked()

    async with (
        serving(feed_api(bus, feed_capacity=4)) as base,
        open_websocket_url(f"ws://{base}/api/v1/feed", message_queue_size=1) as stuck,
        open_websocket_url(f"ws://{base}/api/v1/feed") as reader,
    ):
        assert bus.optional_subscribers == ["feed-0", "feed-1"]  # stuck, reader
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:
                while True:
                    received.append(json.loads(await reader.get_message()))

            nursery.start_soon(read_all)
            with trio.fail_after(30):
                while bus.dropped["feed-0"] == 0:
                    assert len(published) < 2000, "the stuck client never fell behind"
                    await publish()
                for _ in range(20):  # and it stays behind
                    await publish()
            nursery.cancel_scope.cancel()
        dropped = bus.dropped["feed-0"]
        assert dropped >= 20
        assert bus.dropped["feed-1"] == 0
        assert [m["height"] for m in received] == list(range(len(published)))
        # The stuck client reads at last: what was not dropped, in order, then new events.
        heights = [m["height"] for m in await messages(stuck, len(published) - dropped)]
        assert heights == sorted(heights) and heights[0] == 0
        assert len(set(range(len(published))) - set(heights)) == dropped
        await bus.publish(beat_event(A, 9999, T0))
        assert (await messages(stuck, 1))[0]["height"] == 9999
        assert bus.dropped["feed-0"] == dropped


async def test_disconnect_unsubscribes_and_frees_the_slot() -> None:
    bus = Bus()
    api = feed_api(bus)
    async with serving(api) as base:
        async with open_websocket_url(f"ws://{base}/api/v1/feed") as first:
            async with open_websocket_url(f"ws://{base}/api/v1/feed"):
                assert bus.optional_subscribers == ["feed-0", "feed-1"]
                assert api.feed is not None and api.feed.clients == 2
            await until_unsubscribed_one(bus, "feed-1")
            assert bus.optional_subscribers == ["feed-0"]
            await bus.publish(beat_event(A, 1, T0))
            assert (await messages(first, 1))[0]["height"] == 1
        await until_unsubscribed(bus)
        assert api.feed.clients == 0
        await bus.publish(beat_event(A, 2, T0))  # nobody listening: nothing dropped either
        assert bus.dropped == {"feed-0": 0, "feed-1": 0}
        async with open_websocket_url(f"ws://{base}/api/v1/feed") as again:
            assert bus.optional_subscribers == ["feed-0"]  # the lowest free slot again
            await bus.publish(beat_event(A, 3, T0))
            assert (await messages(again, 1))[0]["height"] == 3


async def until_unsubscribed_one(bus: Bus, name: str) -> None:
    with trio.fail_after(10):
        while name in bus.optional_subscribers:
            await trio.testing.wait_all_tasks_blocked()


async def test_clients_beyond_the_limit_are_closed_with_1013() -> None:
    bus = Bus()
    async with serving(feed_api(bus, max_feed_clients=2)) as base:
        url = f"ws://{base}/api/v1/feed"
        async with open_websocket_url(url) as first, open_websocket_url(url):
            async with open_websocket_url(url) as third:
                with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
                    await third.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1013
            assert bus.optional_subscribers == ["feed-0", "feed-1"]
            await bus.publish(beat_event(A, 1, T0))
            assert (await messages(first, 1))[0]["height"] == 1
        await until_unsubscribed(bus)
        async with open_websocket_url(url) as later:  # room again
            await bus.publish(beat_event(A, 2, T0))
            assert (await messages(later, 1))[0]["height"] == 2


async def test_the_bus_closing_ends_the_feed_with_1001() -> None:
    bus = Bus()
    async with serving(feed_api(bus)) as base, open_websocket_url(f"ws://{base}/api/v1/feed") as ws:
        await bus.publish(beat_event(A, 1, T0))
        bus.close()
        assert (await messages(ws, 1))[0]["height"] == 1
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
            await ws.get_message()
        assert info.value.reason is not None and info.value.reason.code == 1001


async def test_without_a_bus_the_feed_is_404() -> None:
    async with serving(feed_api(None)) as base:
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"ws://{base}/api/v1/feed"):
                pass
        assert info.value.status_code == 404
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://{base}/api/v1/feed")
        assert r.status_code == 404 and r.json()["error"] == "not found"


async def test_plain_http_gets_426_and_other_websocket_paths_404() -> None:
    bus = Bus()
    async with serving(feed_api(bus)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://{base}/api/v1/feed")
            assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
            assert (await client.post(f"http://{base}/api/v1/feed")).status_code == 405
            assert (await client.get(f"http://{base}/healthz")).status_code == 200
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"ws://{base}/api/v1/nodes"):
                pass
        assert info.value.status_code == 404
        assert json.loads(info.value.body or b"{}")["path"] == "/api/v1/nodes"
    assert bus.optional_subscribers == []


# -- the summarised feed (`?mode=nodes`, what the status page reads) -----------------------


def live_api(fleet: Fleet, now: list[float], **kwargs: Any) -> HttpApi:
    api = HttpApi(lambda: fleet.snapshot(now[0]), bus=Bus(), **kwargs)
    assert api.feed is not None
    api.feed.nodes_interval = 0.05
    return api


async def test_nodes_mode_sends_the_fleet_then_only_what_changed() -> None:
    fleet = make_fleet()
    now = [T0 + 2]
    api = live_api(fleet, now)
    async with (
        serving(api) as base,
        open_websocket_url(f"ws://{base}/api/v1/feed?mode=nodes") as ws,
    ):
        (full,) = await messages(ws, 1)
        assert full["type"] == "nodes" and full["full"] is True
        assert sorted(n["peer_id"] for n in full["nodes"]) == ["peer1", "peer2", "peer3"]
        assert {n["peer_id"]: n["state"] for n in full["nodes"]}["peer3"] == "down"
        assert full["networks"][0]["height"] == 100
        assert full["nodes"][0]["remote_address"] == "/ip4/10.0.0.1/tcp/1"  # private
        # Three beats of peer1 within one interval: one delta, with just what changed.
        for height in (101, 102, 103):
            fleet.on_beat(
                "peer1",
                Beat(head="{bafy2bzaceccc}", height=height, nickname="n1", miner_address=""),
                T0 + 3,
            )
        now[0] = T0 + 3
        with trio.fail_after(10):
            while True:
                msg = json.loads(await ws.get_message())
                if msg["nodes"]:
                    break
        assert msg["full"] is False and msg["seq"] > full["seq"]
        changed = {n["peer_id"]: n for n in msg["nodes"]}
        assert changed["peer1"]["height"] == 103
        assert "nickname" not in changed["peer1"]  # unchanged fields are not sent again
        assert "peer3" not in changed


async def test_nodes_mode_shares_one_fleet_read_between_clients() -> None:
    fleet = make_fleet()
    reads = 0

    def snapshot():  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return fleet.snapshot(T0 + 2)

    api = HttpApi(snapshot, bus=Bus())
    assert api.feed is not None
    api.feed.nodes_interval = 0.2
    async with serving(api) as base:
        url = f"ws://{base}/api/v1/feed?mode=nodes"
        async with open_websocket_url(url) as a, open_websocket_url(url) as b:
            await messages(a, 1)
            await messages(b, 1)
            await trio.sleep(1.0)
    # ~5 intervals: about 5 reads however many clients (not 10).
    assert 2 <= reads <= 7, reads


async def test_public_feeds_carry_no_addresses() -> None:
    fleet = make_fleet()
    api = live_api(fleet, [T0 + 2], status_page="public")
    assert api.feed is not None
    async with serving(api) as base:
        async with open_websocket_url(f"ws://{base}/api/v1/feed?mode=nodes") as ws:
            (full,) = await messages(ws, 1)
        assert full["nodes"] and all("remote_address" not in n for n in full["nodes"])
        async with open_websocket_url(f"ws://{base}/api/v1/feed") as ws:
            await api.feed.bus.publish(PeerConnected(A, "/ip4/10.0.0.1/tcp/4001", T0))
            (event,) = await messages(ws, 1)
        assert event == {"type": "connected", "peer_id": A, "at": T0}


async def test_an_unknown_mode_is_closed_with_1008() -> None:
    async with (
        serving(feed_api(Bus())) as base,
        open_websocket_url(f"ws://{base}/api/v1/feed?mode=everything") as ws,
    ):
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
            await ws.get_message()
        assert info.value.reason is not None and info.value.reason.code == 1008
