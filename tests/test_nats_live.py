"""The merged fleet's live reader against a real 3-node JetStream cluster on loopback: a core
subscription on a `no_echo` connection gets what the others publish and never this
connection's own, and the merge consumer re-reads the stream after its connection is lost
(a beat only the stream has is merged then)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from aggregator.fleet import Fleet, FleetPolicy
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsSettings, NatsUnavailable, open_bridge
from aggregator.scaleout.merge import MergeResult, RemoteMerger
from aggregator.scaleout.merge_consumer import BEAT_SUBJECTS, MergeConsumer
from heartbeat.protocol.beat import Beat
from tests.natscluster import NatsCluster, nats_cluster

pytestmark = [pytest.mark.integration, pytest.mark.requires_tools("nats-server")]

HERE = "agg-b/12D3KooWHereAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OTHER = "agg-a/12D3KooWOtherAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def _beat(height: int) -> Beat:
    return Beat(
        head="{bafy2bzaceaaaaa}",
        height=height,
        nickname="n",
        miner_address="",
        genesis_cid=MAINNET_GENESIS_CID,
        version="test",
    )


async def _publish(bridge: NatsBridge, origin: str, peer: str, height: int) -> None:
    at = time.time()
    stored = await bridge.publish(
        schema.beat_subject(MAINNET_GENESIS_CID, peer),
        schema.encode_beat(origin, peer, at, _beat(height)),
        schema.beat_msg_id(origin, peer, at),
    )
    assert stored


def _server_index(cluster: NatsCluster, bridge: NatsBridge) -> int:
    nc = bridge._nc
    assert nc is not None and nc.connected_url is not None
    url = nc.connected_url
    return [f"nats://{url.netloc}" == u for u in cluster.urls].index(True)


async def test_live_gets_the_others_beats_and_never_its_own(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 3) as cluster:
        here_settings = NatsSettings(urls=(cluster.url(0),), stream="L1")
        other_settings = NatsSettings(urls=(cluster.url(1),), stream="L1")
        async with open_bridge(here_settings) as here, open_bridge(other_settings) as other:
            await here.ensure_stream()
            async with here.live(BEAT_SUBJECTS) as live:
                await _publish(here, HERE, "mine", 1)
                await _publish(other, OTHER, "theirs", 2)  # through another server
                got: list[bytes] = []
                with trio.fail_after(10):
                    while not got:
                        got += await live.take(0.05)
                await _publish(here, HERE, "mine", 3)
                got += await live.take(0.5)
            decoded = [schema.decode(p) for p in got]
            assert [(b.origin, b.peer_id) for b in decoded] == [(OTHER, "theirs")]  # type: ignore[union-attr]
            # the stream has all three: only the live delivery skips the connection's own
            js = here._js
            assert js is not None
            info = await here._aio("stream_info", lambda: js.stream_info("L1"))
            assert info.state.messages == 3
            # a lost connection ends the reader: it may have missed something
            async with here.live(BEAT_SUBJECTS) as live:
                cluster.kill(_server_index(cluster, here))
                with pytest.raises(NatsUnavailable, match="lost"), trio.fail_after(10):
                    while True:
                        await live.take(0.05)


async def test_the_merge_consumer_re_reads_the_stream_after_a_lost_connection(
    tmp_path: Path,
) -> None:
    async with nats_cluster(tmp_path, 3) as cluster:
        settings = NatsSettings(urls=tuple(cluster.urls), stream="L2")
        async with (
            open_bridge(settings) as here,
            open_bridge(settings) as other,
            trio.open_nursery() as nursery,
        ):
            fleet = Fleet(FleetPolicy(max_nodes=100))
            fleet.origin = HERE
            merger = RemoteMerger(fleet, HERE)
            consumer = MergeConsumer(here, merger, catch_up=600)
            await nursery.start(consumer.run)
            with trio.fail_after(20):
                await consumer.caught_up.wait()
            assert consumer.resyncs == 1
            # a beat only the stream will give `here`: published on its own connection, so
            # never delivered live, under another origin (as if another aggregator's)
            await _publish(here, OTHER, "stream-only", 7)
            await _publish(other, OTHER, "live", 8)
            with trio.fail_after(10):
                while "live" not in fleet._nodes:
                    await trio.sleep(0.05)
            # the server hands a message to core subscriptions before it stores and acks it:
            # had "stream-only" been delivered live, it would have come before "live"
            assert "stream-only" not in fleet._nodes
            assert merger.stats.counts[MergeResult.OWN] == 0  # nothing of its own read back
            # the connection lost: the consumer reads the stream again, on another server
            cluster.kill(_server_index(cluster, here))
            with trio.fail_after(30):
                while "stream-only" not in fleet._nodes:
                    await trio.sleep(0.1)
            assert fleet._nodes["stream-only"].height == 7
            assert consumer.resyncs >= 2 and consumer.consumer_errors >= 1
            # and it is live again
            await _publish(other, OTHER, "after", 9)
            with trio.fail_after(10):
                while "after" not in fleet._nodes:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
