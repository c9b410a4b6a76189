"""The JetStream export end to end: a real aggregator, real beats, a real 3-node NATS cluster.

Every beat the aggregator accepts is on the stream exactly once by message id, even when
re-published; a NATS member killed under load loses nothing; all of NATS down for ~10 s
(the benchmark does 30 s) fills the spool, which drains in order once NATS is back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import AggregatorConfig, build_config
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsUnavailable, StreamMsg
from heartbeat.protocol.wire import Beat, encode_cbor
from tests.helpers import eventually, metric_value
from tests.legacy_sender import ScriptedSender, scripted_sender
from tests.natscluster import NatsCluster, nats_cluster

pytestmark = [pytest.mark.integration, pytest.mark.requires_tools("nats-server")]

GENESIS = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
HEAD = "{bafy2bzaceheadaaaaaaaaaaaaaaa}"


def make_config(tmp_path: Path, cluster: NatsCluster, **overrides: Any) -> AggregatorConfig:
    base = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(tmp_path / "aggregator.key"),
            "state_db": str(tmp_path / "aggregator.db"),
            "gc_freeze": False,
            "probation": "0s",
            # the tests send faster than an agent would
            "rate_limit": "1000",
            "rate_burst": "1000",
            "nats_url": cluster.urls,
            "name": "agg-a",
        }
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running(config: AggregatorConfig) -> AsyncIterator[Aggregator]:
    holder: list[Aggregator] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_aggregator(
                config, handle_signals=False, on_ready=holder.append, task_status=task_status
            )
        )
        yield holder[0]
        nursery.cancel_scope.cancel()


async def send_beats(sender: ScriptedSender, first: int, count: int, pause: float = 0.0) -> None:
    for height in range(first, first + count):
        beat = Beat(head=HEAD, height=height, nickname="n1", miner_address="", genesis_cid=GENESIS)
        await sender.write(encode_cbor(beat))
        await trio.sleep(pause)


async def read_stream(bridge: NatsBridge, expected: int, idle: float = 3.0) -> list[StreamMsg]:
    """The stream's beats from its start: until `expected` arrived and `idle` s brought none
    (a fresh reader each try while the cluster elects new leaders after a kill)."""
    for attempt in range(20):
        try:
            return await _read_stream(bridge, expected, idle)
        except NatsUnavailable:
            if attempt == 19:
                raise
            await trio.sleep(0.5)
    raise AssertionError("unreachable")


async def _read_stream(bridge: NatsBridge, expected: int, idle: float) -> list[StreamMsg]:
    got: list[StreamMsg] = []
    stream = bridge.consume(None, ["fil.heartbeat.*.beat.*"], deliver_since=None)
    async with contextlib.aclosing(stream) as messages:
        while True:
            with trio.move_on_after(idle if len(got) >= expected else 20.0) as scope:
                msg, ack = await messages.__anext__()
                await ack()
                got.append(msg)
            if scope.cancelled_caught:
                return got


async def drained(agg: Aggregator, accepted: int) -> None:
    def done() -> bool:
        s: dict[str, float] = agg.nats_export.stats()
        return s["spool_depth"] == 0 and s["published_total"] >= accepted

    try:
        await eventually(done, timeout=40, interval=0.1)
    except trio.TooSlowError:
        print("export stats:", agg.nats_export.stats(), agg.ingest.counters.beats_accepted)
        raise


def heights(msgs: list[StreamMsg]) -> list[int]:
    out = []
    for m in msgs:
        decoded = schema.decode(m.data)
        assert isinstance(decoded, schema.StreamBeat)
        out.append(decoded.beat.height)
    return out


async def test_each_accepted_beat_is_on_the_stream_once_even_when_republished(
    tmp_path: Path,
) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster:
        async with (
            running(make_config(tmp_path, cluster)) as agg,
            scripted_sender(agg.multiaddrs[0]) as sender,
        ):
            await send_beats(sender, 100, 30)
            await eventually(lambda: agg.ingest.counters.beats_accepted == 30)
            await drained(agg, 30)
            msgs = await read_stream(agg.nats, 30, idle=1.0)
            ids = [m.msg_id for m in msgs]
            assert len(ids) == 30 and len(set(ids)) == 30
            assert heights(msgs) == list(range(100, 130))
            first = schema.decode(msgs[0].data)
            assert isinstance(first, schema.StreamBeat)
            assert first.origin == f"agg-a/{agg.peer_id}" and first.peer_id == sender.peer_id
            assert msgs[0].subject == f"fil.heartbeat.{GENESIS}.beat.{sender.peer_id}"

            # as after a crash between publish and spool delete: the same messages again
            spool = agg.nats_export.spool
            rows = [(m.subject, m.msg_id or "", m.data, 0.0) for m in msgs]
            await trio.to_thread.run_sync(spool.append, rows)
            agg.nats_export._spooled.set()
            await eventually(lambda: agg.nats_export.stats()["duplicates_total"] == 30)
            assert agg.nats_export.stats()["spool_depth"] == 0
            again = await read_stream(agg.nats, 30, idle=1.0)
            assert [m.msg_id for m in again] == ids  # the server dropped every re-publish

            async with httpx.AsyncClient() as client:
                text = (await client.get(f"{agg.http_url}/metrics")).text
            published = metric_value(text, "fil_heartbeat_nats_published_total")
            assert published is not None and published >= 30  # the beats and a transition
            assert metric_value(text, "fil_heartbeat_nats_duplicates_total") == 30
            assert metric_value(text, "fil_heartbeat_nats_spool_depth") == 0


async def test_killing_one_nats_node_under_load_loses_no_beat(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster:
        async with (
            running(make_config(tmp_path, cluster)) as agg,
            scripted_sender(agg.multiaddrs[0]) as sender,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_beats, sender, 1, 300, 0.01)
                await eventually(lambda: agg.ingest.counters.beats_accepted >= 80, timeout=20)
                connected = agg.nats._nc.connected_url.port  # the member we publish through
                victim = [u.endswith(f":{connected}") for u in cluster.urls].index(True)
                cluster.kill(victim)
            accepted = agg.ingest.counters.beats_accepted
            assert accepted == 300
            await drained(agg, accepted)
            msgs = await read_stream(agg.nats, accepted, idle=1.0)
            assert len({m.msg_id for m in msgs}) == accepted == len(msgs)
            assert sorted(heights(msgs)) == list(range(1, 301))


async def test_all_of_nats_down_the_spool_holds_then_drains_in_order(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster:
        async with (
            running(make_config(tmp_path, cluster)) as agg,
            scripted_sender(agg.multiaddrs[0]) as sender,
        ):
            await send_beats(sender, 1, 20)
            await drained(agg, 20)
            for i in range(3):
                cluster.kill(i)
            # ~10 s of beats with no NATS at all; ingest never waits for it
            with trio.fail_after(15):
                await send_beats(sender, 21, 100, 0.1)
            await eventually(lambda: agg.ingest.counters.beats_accepted == 120)
            await eventually(lambda: agg.nats_export.stats()["spool_depth"] >= 100)
            stats = agg.nats_export.stats()
            assert stats["spool_oldest_age_seconds"] >= 5 and stats["connected"] == 0
            assert stats["spool_dropped_total"] == 0
            assert agg.bus.backpressure_seconds < 1.0
            for i in range(3):
                await cluster.start(i)
            await drained(agg, 120)
            msgs = await read_stream(agg.nats, 120, idle=1.0)
            assert len({m.msg_id for m in msgs}) == 120
            order = heights(msgs)
            assert sorted(order) == list(range(1, 121))
            assert order == sorted(order)  # drained in order
