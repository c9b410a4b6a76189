"""The NATS bridge against a real 3-node JetStream cluster on loopback."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from aggregator.scaleout.bridge import NatsSettings, NatsUnavailable, StreamMsg, open_bridge
from tests.natscluster import nats_cluster

pytestmark = [pytest.mark.integration, pytest.mark.requires_tools("nats-server")]


async def test_publish_dedup_consume_and_kv_from_other_tasks(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 3) as cluster:
        settings = NatsSettings(urls=tuple(cluster.urls), stream="T1")
        async with open_bridge(settings) as bridge, trio.open_nursery() as nursery:
            await bridge.ensure_stream()
            await bridge.ensure_stream()  # present: nothing to do
            stored: list[bool] = []

            async def publisher() -> None:  # another task than the one that opened the loop
                stored.append(await bridge.publish("fil.heartbeat.n.beat.p", b"1", "id-1"))
                stored.append(await bridge.publish("fil.heartbeat.n.beat.p", b"1", "id-1"))
                stored.append(await bridge.publish("fil.heartbeat.n.event.transition", b"2", "e"))

            nursery.start_soon(publisher)
            got: list[StreamMsg] = []
            with trio.fail_after(15):
                subjects = ["fil.heartbeat.*.beat.*", "fil.heartbeat.*.event.*"]
                stream = bridge.consume("tail", subjects, deliver_since=None)
                async with contextlib.aclosing(stream) as messages:
                    async for msg, ack in messages:
                        got.append(msg)
                        await ack()
                        if len(got) == 2:
                            break
            assert stored == [True, False, True]
            assert [(m.seq, m.msg_id, m.data) for m in got] == [(1, "id-1", b"1"), (2, "e", b"2")]

            assert await bridge.kv_create("leader", b"a") == 1
            assert await bridge.kv_create("leader", b"b") is None
            assert await bridge.kv_get("leader") == (b"a", 1)
            assert await bridge.kv_update("leader", b"a2", 1) == 2
            assert await bridge.kv_update("leader", b"stale", 1) is None
            await bridge.kv_delete("leader")
            assert await bridge.kv_get("leader") is None
            assert await bridge.kv_create("leader", b"c") is not None


async def test_cluster_down_is_nats_unavailable_then_recovers(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 1) as cluster:
        settings = NatsSettings(urls=tuple(cluster.urls), stream="T2")
        async with open_bridge(settings) as bridge:
            await bridge.ensure_stream()  # one server: replicas lowered to 1
            cluster.kill(0)
            with pytest.raises(NatsUnavailable), trio.fail_after(10):
                await bridge.publish("fil.heartbeat.n.beat.p", b"x", "id-x", timeout=1.0)
            await cluster.start(0)
            with trio.fail_after(20):
                while True:
                    try:
                        # the timed-out publish may have been sent on reconnect: a duplicate
                        await bridge.publish("fil.heartbeat.n.beat.p", b"x", "id-x", timeout=1.0)
                        break
                    except NatsUnavailable:
                        await trio.sleep(0.2)
