"""The merged fleet's figures: merge cost at 10,000 nodes, and a restarted aggregator's catch-up.

1. Merge, in process (no NATS): `--nodes` peers held by another aggregator, each beating
   `--rounds` times through `RemoteMerger.merge` (the payload decoded by the stream schema
   first, as the consumer does): µs per remote beat (decode, merge, both). Then the fleet
   snapshot over those nodes (remote holders checked per node, `held_by` built) against the
   same fleet held by local connections: the merge's cost per snapshot.
2. Catch-up, on a real 3-node NATS cluster on loopback: `--nodes` x `--backlog` beats of
   another aggregator on the stream (published pipelined, as the export does), then a
   consumer started as a restarted aggregator's is (the newest beat per node first): the
   time until every node is merged, and until it reports ready (plus the idle check).

    .venv/bin/python -m bench.bench_nats_merge --nodes 10000 --rounds 5 --backlog 6
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from aggregator.fleet import Fleet, FleetPolicy
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsSettings, open_bridge
from aggregator.scaleout.merge import RemoteMerger
from aggregator.scaleout.merge_consumer import MergeConsumer
from bench.common import machine_note, print_table
from heartbeat.protocol.beat import Beat
from tests.natscluster import nats_cluster

__all__ = ["main"]

ORIGIN = "agg-a/12D3KooWBenchOriginAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def _beat(i: int, height: int) -> Beat:
    return Beat(
        head="{bafy2bzacea" + "".join(chr(97 + (height // 26**k) % 26) for k in range(4)) + "}",
        height=height,
        nickname=f"n{i}",
        miner_address="",
        genesis_cid=MAINNET_GENESIS_CID,
        version="bench",
    )


def bench_merge(nodes: int, rounds: int) -> list[list[str]]:
    now0 = time.time()
    payloads = [
        [
            schema.encode_beat(ORIGIN, f"P{i}", now0 + 3 * r, _beat(i, 1000 + r))
            for i in range(nodes)
        ]
        for r in range(rounds)
    ]
    fleet = Fleet(FleetPolicy(max_nodes=nodes * 2))
    fleet.origin = "agg-b/self"
    merger = RemoteMerger(fleet, fleet.origin)
    t_decode = t_merge = 0.0
    for batch in payloads:
        t0 = time.perf_counter()
        decoded = [schema.decode(p) for p in batch]
        t1 = time.perf_counter()
        for d in decoded:
            assert isinstance(d, schema.StreamBeat)
            merger.merge(d.origin, d.peer_id, d.beat, d.at)
        t2 = time.perf_counter()
        t_decode += t1 - t0
        t_merge += t2 - t1
    n = nodes * rounds
    now = now0 + 3 * rounds
    del payloads, decoded
    remote_snap = _snapshot_ms(fleet, now)
    local = Fleet(FleetPolicy(max_nodes=nodes * 2))
    local.origin = "agg-b/self"
    for r in range(rounds):
        for i in range(nodes):
            if r == 0:
                local.on_connect(f"P{i}", "10.0.0.1", now0)
            local.on_beat(f"P{i}", _beat(i, 1000 + r), now0 + 3 * r)
    local_snap = _snapshot_ms(local, now)
    snap = fleet.snapshot(now)
    assert sum(v.up for v in snap.nodes) == nodes, "every merged node up"
    return [
        ["decode a stream beat", f"{t_decode / n * 1e6:.1f} µs/beat"],
        ["merge a remote beat", f"{t_merge / n * 1e6:.1f} µs/beat"],
        ["decode + merge", f"{(t_decode + t_merge) / n * 1e6:.1f} µs/beat"],
        [
            f"at {nodes:,} nodes / 3 s beats",
            f"{(t_decode + t_merge) / n * nodes / 3 * 100:.1f} % of a core",
        ],
        [f"snapshot, {nodes:,} nodes held remotely", f"{remote_snap:.1f} ms"],
        [f"snapshot, {nodes:,} nodes held here", f"{local_snap:.1f} ms"],
    ]


def _snapshot_ms(fleet: Fleet, now: float, repeat: int = 5) -> float:
    """Median of `repeat` snapshots, the heap frozen first as the aggregator does
    (`--gc-freeze`): GC pauses over the benchmark's own garbage would swamp the figure."""
    gc.collect()
    gc.freeze()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fleet.snapshot(now)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def bench_catch_up(tmp: Path, nodes: int, backlog: int) -> list[list[str]]:
    async with nats_cluster(tmp / "nats") as cluster:
        settings = NatsSettings(urls=tuple(cluster.urls), replicas=3)
        async with open_bridge(settings) as bridge:
            await bridge.ensure_stream()
            now0 = time.time() - 3 * backlog
            items = []
            for r in range(backlog):
                for i in range(nodes):
                    at = now0 + 3 * r + i * 3.0 / nodes
                    items.append(
                        (
                            schema.beat_subject(MAINNET_GENESIS_CID, f"P{i}"),
                            schema.encode_beat(ORIGIN, f"P{i}", at, _beat(i, 1000 + r)),
                            schema.beat_msg_id(ORIGIN, f"P{i}", at),
                        )
                    )
            t = time.perf_counter()
            for start in range(0, len(items), 256):
                results = await bridge.publish_many(items[start : start + 256])
                assert all(x is not None for x in results), "every publish acknowledged"
            publish_s = time.perf_counter() - t
            fleet = Fleet(FleetPolicy(max_nodes=nodes * 2))
            fleet.origin = "agg-b/restarted"
            consumer = MergeConsumer(bridge, RemoteMerger(fleet, fleet.origin), catch_up=600)
            total = len(items)
            async with trio.open_nursery() as nursery:
                t0 = trio.current_time()
                await nursery.start(consumer.run)
                with trio.fail_after(120):
                    while len(fleet) < nodes:
                        await trio.sleep(0.01)
                merged_s = trio.current_time() - t0
                up = sum(v.up for v in fleet.snapshot(time.time()).nodes)
                with trio.fail_after(120):
                    await consumer.caught_up.wait()
                ready_s = trio.current_time() - t0
                nursery.cancel_scope.cancel()
    return [
        ["backlog on the stream", f"{total:,} beats ({nodes:,} nodes x {backlog})"],
        ["publishing it (pipelined, replicas 3)", f"{total / publish_s:,.0f} msg/s"],
        [
            "catch-up: every node merged",
            f"{merged_s:.2f} s ({consumer.received:,} beats read: the newest per node)",
        ],
        [
            "catch-up: ready (the stream read to its end)",
            f"{ready_s:.2f} s",
        ],
        ["nodes up when merged", f"{up:,} of {nodes:,}"],
    ]


async def _main(args: argparse.Namespace) -> None:
    print(machine_note())
    print_table(["merge (in process)", "figure"], bench_merge(args.nodes, args.rounds))
    if args.skip_nats:
        return
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        rows = await bench_catch_up(Path(tmp), args.nodes, args.backlog)
    print_table(["catch-up (3-node NATS on loopback)", "figure"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="remote beats per node (merge)")
    parser.add_argument("--backlog", type=int, default=6, help="beats per node on the stream")
    parser.add_argument("--skip-nats", action="store_true", help="the in-process part only")
    args = parser.parse_args(argv)
    trio.run(_main, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
