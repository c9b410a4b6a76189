"""The JetStream export's figures, on a real 3-node NATS cluster on loopback.

1. Publish: one message at a time (the round trip: latency p50/p99) and pipelined windows
   of 256 as the exporter sends them (messages/s), replicas 3.
2. The export path in process: `BeatAccepted` events on a bus at `--rate` for `--duration`
   through the exporter (encode, publish: from memory while the spool is empty, through
   SQLite while NATS does not acknowledge): this process's CPU per beat
   (threads included) and the added latency per beat, from the beat's acceptance to its
   store time on the stream (p50/p99/max); then `--outage` seconds with every NATS server
   killed while beats keep coming: the spool's peak, the drain time once NATS is back, and
   the beats lost (read back from the stream by message id).
3. A real aggregator under the load generator at a fixed rate (`--agents`, `--beat-period`),
   with and without `--nats-url`: its CPU µs per beat, and the ratio (target: ≤ 1.20).
   With `--nats-url` the aggregator also runs the merge consumer (reading the stream back)
   and the leader lease: the ratio is the whole scale-out's cost, not the export's alone.

    .venv/bin/python -m bench.bench_nats --rate 2000 --duration 10 --outage 30
    .venv/bin/python -m bench.bench_nats --aggregator-only --repeat 3   # part 3 alone
    .venv/bin/python -m bench.bench_nats --aggregator-only --py-spy /tmp/nats.txt  # its profile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from aggregator.bus import BeatAccepted, Bus
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsBridge, NatsSettings, open_bridge
from aggregator.scaleout.export import Exporter
from aggregator.scaleout.spool import Spool
from bench.common import (
    AggregatorProcess,
    LoadgenProcess,
    machine_note,
    print_table,
    start_py_spy,
)
from heartbeat.common.durations import parse_duration
from heartbeat.protocol.beat import Beat
from tests.natscluster import NatsCluster, nats_cluster

__all__ = ["main"]

GENESIS = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
UNLIMITED = ("--rate-limit", "1000000", "--rate-burst", "1000000", "--probation", "0s")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_publish(bridge: NatsBridge, n_single: int, n_window: int) -> dict[str, float]:
    beat = Beat(head="{bafy2bzaceabc}", height=1, nickname="n", miner_address="")
    payload = schema.encode_beat("bench", "P", 1.0, beat)
    rtt = []
    for i in range(n_single):
        t = time.perf_counter()
        await bridge.publish("fil.heartbeat.bench.beat.P", payload, f"single-{i}")
        rtt.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    for start in range(0, n_window, 256):
        items = [
            ("fil.heartbeat.bench.beat.P", payload, f"window-{i}")
            for i in range(start, min(n_window, start + 256))
        ]
        results = await bridge.publish_many(items)
        assert all(r is True for r in results), "a pipelined publish was not stored"
    elapsed = time.perf_counter() - t
    return {
        "rtt_p50_ms": pct(rtt, 0.5),
        "rtt_p99_ms": pct(rtt, 0.99),
        "window_msgs_per_s": n_window / elapsed,
    }


async def _feed(bus: Bus, first: int, count: int, rate: float, peers: int) -> None:
    period = 1.0 / rate
    deadline = trio.current_time()
    for i in range(first, first + count):
        beat = Beat(
            head="{bafy2bzaceheadaaaa}",
            height=i,
            nickname=f"n{i % peers}",
            miner_address="f01234",
            genesis_cid=GENESIS,
        )
        await bus.publish(BeatAccepted(f"12D3KooWPeer{i % peers:05d}", beat, time.time()))
        deadline += period
        await trio.sleep_until(deadline)


async def _read_back(bridge: NatsBridge, since: float, expected: int) -> dict[str, float]:
    """msg id → store time minus the beat's acceptance time (s), for the export's beats."""
    out: dict[str, float] = {}
    stream = bridge.consume(None, [f"fil.heartbeat.{GENESIS}.beat.*"], deliver_since=since)
    async with contextlib.aclosing(stream) as messages:
        while len(out) < expected:
            with trio.move_on_after(5) as scope:
                msg, ack = await messages.__anext__()
                await ack()
            if scope.cancelled_caught:
                break
            decoded = schema.decode(msg.data)
            if msg.msg_id is not None and isinstance(decoded, schema.StreamBeat):
                out[msg.msg_id] = msg.timestamp - decoded.at
    return out


async def feed_baseline(args: argparse.Namespace) -> float:
    """CPU µs per beat of feeding the bus alone (an inline subscriber doing nothing)."""
    bus = Bus()
    bus.subscribe_sync("nothing", lambda _event: None)
    count = int(args.rate * min(args.duration, 5.0))
    cpu0 = time.process_time()
    await _feed(bus, 0, count, args.rate, args.peers)
    return (time.process_time() - cpu0) / count * 1e6


async def bench_export(
    cluster: NatsCluster, bridge: NatsBridge, tmp: Path, args: argparse.Namespace
) -> dict[str, float]:
    bus = Bus()
    exporter = Exporter(
        None, lambda: Spool(tmp / "spool.db", 1_000_000), "bench/agg", spool_max=1_000_000
    )
    bus.subscribe_sync("nats_export", exporter.on_event)  # as the aggregator subscribes it
    steady = int(args.rate * args.duration)
    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run, bridge)
        t0 = time.time()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await _feed(bus, 0, steady, args.rate, args.peers)
        while exporter.stats()["spool_depth"] > 0:
            await trio.sleep(0.01)
        cpu = time.process_time() - cpu0
        out["steady_beats_per_s"] = steady / (time.perf_counter() - wall0)
        out["process_cpu_us_per_beat"] = cpu / steady * 1e6
        out["feed_alone_cpu_us_per_beat"] = args.baseline
        out["export_cpu_us_per_beat"] = cpu / steady * 1e6 - args.baseline
        lat = list((await _read_back(bridge, t0 - 1, steady)).values())
        out["latency_p50_ms"] = pct(lat, 0.5) * 1000
        out["latency_p99_ms"] = pct(lat, 0.99) * 1000
        out["latency_max_ms"] = max(lat) * 1000 if lat else float("nan")
        out["steady_on_stream"] = float(len(lat))
        if args.outage > 0:
            t1 = time.time()
            outage = int(args.rate_outage * args.outage)
            for i in range(len(cluster.members)):
                cluster.kill(i)
            await _feed(bus, steady, outage, args.rate_outage, args.peers)
            await trio.sleep(0.5)
            out["outage_spool_peak"] = exporter.stats()["spool_depth"]
            t_back = time.perf_counter()
            for i in range(len(cluster.members)):
                await cluster.start(i)
            with trio.fail_after(300):
                while exporter.stats()["spool_depth"] > 0:
                    await trio.sleep(0.05)
            out["outage_drain_s"] = time.perf_counter() - t_back
            got = await _read_back(bridge, t1 - 1, outage)
            out["outage_beats"] = float(outage)
            out["outage_lost"] = float(outage - len(got))
            out["spool_dropped"] = exporter.stats()["spool_dropped_total"]
        nursery.cancel_scope.cancel()
    return out


def bench_aggregator(cluster: NatsCluster | None, tmp: Path, args: argparse.Namespace) -> float:
    """CPU µs per accepted beat of a real aggregator under the load generator."""
    extra: tuple[str, ...] = ()
    if cluster is not None:
        extra = ("--nats-url", ",".join(cluster.urls))
    agg = AggregatorProcess.start(tmp, *UNLIMITED, *extra)
    try:
        run_for = args.agg_warmup + args.agg_duration + 5
        lg = LoadgenProcess(
            agg.multiaddr,
            "--agents",
            str(args.agents),
            "--ramp",
            "500/s",
            "--beat-period",
            args.beat_period,
            "--duration",
            f"{run_for:.0f}s",
        )
        time.sleep(args.agg_warmup)
        flowing = time.monotonic() + 30
        while agg.metric("fil_heartbeat_beats_accepted_total") < args.agents:
            if time.monotonic() > flowing:
                log = (tmp / "aggregator.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"no beats accepted; aggregator log:\n{log}")
            time.sleep(0.5)
        spy = None
        if args.py_spy and cluster is not None:
            spy = start_py_spy(args.py_spy, agg.proc.pid, args.agg_duration)
            args.py_spy = None  # the first run with NATS only
        b0, c0 = agg.metric("fil_heartbeat_beats_accepted_total"), agg.cpu_seconds()
        time.sleep(args.agg_duration)
        b1, c1 = agg.metric("fil_heartbeat_beats_accepted_total"), agg.cpu_seconds()
        if spy is not None:
            spy.wait(timeout=60)
        lg.result(timeout=run_for + 60)
    finally:
        agg.stop()
    return (c1 - c0) / max(b1 - b0, 1) * 1e6


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as name:
        tmp = Path(name)
        if not args.aggregator_only:
            await run_export_parts(tmp, args)
        if args.agents > 0:
            await run_aggregator_part(tmp, args)
    print(machine_note())


async def run_export_parts(tmp: Path, args: argparse.Namespace) -> None:
    async with nats_cluster(tmp / "nats") as cluster:
        async with open_bridge(NatsSettings(urls=tuple(cluster.urls))) as bridge:
            await bridge.ensure_stream()
            pub = await bench_publish(bridge, args.single, args.window)
            (
                print_table(
                    ["publish (R3)", "value"],
                    [
                        ["single round trip p50 (ms)", f"{pub['rtt_p50_ms']:.2f}"],
                        ["single round trip p99 (ms)", f"{pub['rtt_p99_ms']:.2f}"],
                        ["pipelined 256/window (msgs/s)", f"{pub['window_msgs_per_s']:.0f}"],
                    ],
                )
            )
            args.baseline = await feed_baseline(args)
            exp = await bench_export(cluster, bridge, tmp, args)
        print_table(["export path", "value"], [[k, f"{v:.2f}"] for k, v in exp.items()])


async def _side_load(bridge: NatsBridge, rate: float) -> None:
    """Keep the cluster as busy as an exporting aggregator would, from outside it, until
    cancelled: `rate` beats/s published in batches every 0.1 s (R3, acknowledged) and read
    back by a poll."""
    beat = Beat(head="{bafy2bzaceheadaaaa}", height=1, nickname="n", miner_address="f01234")
    payload = schema.encode_beat("side", "P", 1.0, beat)
    per_batch = max(1, int(rate / 10))
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            stream = bridge.poll(["fil.heartbeat.*.beat.>"], deliver_since=time.time())
            async with contextlib.aclosing(stream) as batches:
                async for _msgs in batches:
                    pass

        nursery.start_soon(read)
        seq, deadline = 0, trio.current_time()
        while True:
            items = [
                (f"fil.heartbeat.side.beat.P{(seq + i) % 1000}", payload, f"side-{seq + i}")
                for i in range(per_batch)
            ]
            seq += per_batch
            await bridge.publish_many(items)
            deadline += 0.1
            await trio.sleep_until(deadline)


async def run_aggregator_part(tmp: Path, args: argparse.Namespace) -> None:
    """Without and with --nats-url, interleaved, same agents and rate; medians and ratio.
    `--loaded-baseline`: also without --nats-url while a NATS cluster beside it takes the
    same publishes and read-back from another client (what sharing the cores with NATS
    costs the aggregator, apart from its own export)."""
    without, with_nats, loaded = [], [], []
    rate = args.agents / parse_duration(args.beat_period)
    for r in range(args.repeat):
        without.append(bench_aggregator(None, tmp / f"plain{r}", args))
        async with nats_cluster(tmp / f"nats-agg{r}") as cluster:
            with_nats.append(
                await trio.to_thread.run_sync(bench_aggregator, cluster, tmp / f"nats{r}", args)
            )
        if args.loaded_baseline:
            async with (
                nats_cluster(tmp / f"nats-side{r}") as cluster,
                open_bridge(NatsSettings(urls=tuple(cluster.urls))) as bridge,
            ):
                await bridge.ensure_stream()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_side_load, bridge, rate)
                    loaded.append(
                        await trio.to_thread.run_sync(
                            bench_aggregator, None, tmp / f"loaded{r}", args
                        )
                    )
                    nursery.cancel_scope.cancel()
    a, b = statistics.median(without), statistics.median(with_nats)
    rows = [
        ["without --nats-url (µs/beat)", f"{a:.1f}", " ".join(f"{x:.1f}" for x in without)],
        ["with --nats-url (µs/beat)", f"{b:.1f}", " ".join(f"{x:.1f}" for x in with_nats)],
        ["ratio", f"{b / a:.2f}", "target <= 1.20"],
    ]
    if loaded:
        c = statistics.median(loaded)
        rows += [
            [
                "without, NATS loaded beside it (µs/beat)",
                f"{c:.1f}",
                " ".join(f"{x:.1f}" for x in loaded),
            ],
            ["with / loaded baseline", f"{b / c:.2f}", "the export's own share"],
        ]
    print_table(["aggregator CPU", "median", "runs"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", type=int, default=2000, help="one-at-a-time publishes")
    p.add_argument("--window", type=int, default=20000, help="pipelined publishes")
    p.add_argument("--rate", type=float, default=2000.0, help="export path: beats/s")
    p.add_argument("--duration", type=float, default=10.0, help="export path: seconds")
    p.add_argument("--peers", type=int, default=1000)
    p.add_argument("--outage", type=float, default=30.0, help="all NATS down (s); 0: skip")
    p.add_argument("--rate-outage", type=float, default=1000.0, help="beats/s in the outage")
    p.add_argument("--agents", type=int, default=200, help="aggregator part; 0: skip")
    p.add_argument("--beat-period", default="100ms", help="per agent (200 x 100ms = 2000/s)")
    p.add_argument("--agg-warmup", type=float, default=8.0)
    p.add_argument("--agg-duration", type=float, default=15.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--loaded-baseline",
        action="store_true",
        help="also measure without --nats-url beside a NATS cluster loaded from outside",
    )
    p.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile the aggregator with --nats-url over the first run's window into OUT",
    )
    p.add_argument(
        "--aggregator-only", action="store_true", help="only part 3 (CPU per beat, the ratio)"
    )
    args = p.parse_args(argv)
    args.duration = min(args.duration, 120.0)
    args.outage = min(args.outage, 120.0)
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
