"""Benchmark: the event loop's CPU per event that a live-feed client costs (`/api/v1/feed`).

Serves `HttpApi` with a real `Bus` on 127.0.0.1, starts N WebSocket clients in their own
processes (so that their decoding is not counted), publishes EVENTS beats (yielding to the
loop after each, as the ingest does) and reports this process's CPU time per event and per
client, above the same run without clients: once with clients taking every event, once with
clients filtering on a peer that never beats (`?peer=`). Prints figures, asserts nothing.

Usage: python -m bench.bench_feed [EVENTS [CLIENTS]]
"""

from __future__ import annotations

import argparse
import sys
import time

import trio
import trio.testing

from aggregator.bus import BeatAccepted, Bus
from aggregator.fleet import Fleet
from aggregator.http import HttpApi, serve_http
from heartbeat.protocol.wire import Beat

CLIENT = """
import sys, trio
from trio_websocket import open_websocket_url
async def main(url, count):
    async with open_websocket_url(url) as ws:
        for _ in range(count):
            await ws.get_message()
trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def event(i: int) -> BeatAccepted:
    beat = Beat(
        head="{bafy2bzaceaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}",
        height=1000 + i,
        nickname=f"node-{i % 10_000}",
        miner_address="f010000",
    )
    return BeatAccepted(f"12D3KooW{i % 10_000:044d}", beat, 1_700_000_000.0 + i / 1000)


async def run(events: int, clients: int, query: str) -> float:
    """CPU seconds this process spent publishing `events` and serving `clients`."""
    bus = Bus()
    api = HttpApi(lambda: Fleet().snapshot(0.0), bus=bus, feed_capacity=events)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, api, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}/api/v1/feed{query}"
        # A filtering client waits for an event that never comes (and is killed at the end).
        expect = 1 if query else events
        procs = [
            await trio.lowlevel.open_process([sys.executable, "-c", CLIENT, url, str(expect)])
            for _ in range(clients)
        ]
        while len(bus.optional_subscribers) < clients:
            await trio.sleep(0.01)
        started = time.process_time()
        for i in range(events):
            await bus.publish(event(i))
            await trio.sleep(0)
        if not query:
            for proc in procs:
                await proc.wait()  # every event delivered
        else:
            await trio.testing.wait_all_tasks_blocked()
        cpu = time.process_time() - started
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        if any(bus.dropped.values()):
            print(f"  (dropped: {dict(bus.dropped)})")
        nursery.cancel_scope.cancel()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("events", nargs="?", type=int, default=30_000)
    parser.add_argument("clients", nargs="?", type=int, default=2)
    args = parser.parse_args()
    events, clients = args.events, args.clients
    base = trio.run(run, events, 0, "")
    print(f"events={events} no_client cpu_s={base:.2f} us_per_event={base * 1e6 / events:.1f}")
    for label, query in (("all_events", ""), ("filtered_out", "?peer=nobody")):
        cpu = trio.run(run, events, clients, query)
        per = (cpu - base) * 1e6 / events / clients
        print(
            f"events={events} clients={clients} {label:<12} cpu_s={cpu:.2f} "
            f"us_per_event_per_client={per:.1f}"
        )


if __name__ == "__main__":
    main()
