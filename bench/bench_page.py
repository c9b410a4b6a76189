"""Benchmark: the status page in headless Chromium at 10,000 nodes under 3,000 beats/s.

Fills a `Fleet` in-process with NODES nodes on mainnet (most in consensus; some lagging,
syncing, down or with a source error), serves it with `HttpApi` on 127.0.0.1 (a trio thread)
and applies RATE beats a second to it (round robin, new heights every 30 s epoch, as a
simulated chain would) while Debian's Chromium, driven by selenium, opens the page. Prints:

- the server: `GET /` time and size (plain and gzip), one summarised-feed update's CPU time
  (the fleet read as JSON plus the per-node diff), the summarised feed's bytes a second;
- the page: navigation timings, time until the live feed's first update is applied, and
  time to interactive: the page loaded (table rendered) and a sort click handled and painted;
- responsiveness under the live feed for DURATION seconds: long tasks (count, total, the
  longest; PerformanceObserver `longtask`), the delay from a real click (CDP input) on a
  cheap control to the next frame, sampled every second, and a few sort clicks;
- the JS heap, and the size of the static assets.

Figures only, no asserts. Usage: python -m bench.bench_page [--nodes N] [--rate R]
[--duration S]. Needs chromium and chromedriver (scripts/setup --system) and selenium.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import random
import statistics
import sys
import threading
import time
import urllib.request
from typing import Any

import trio
from trio_websocket import open_websocket_url

from aggregator.bus import Bus
from aggregator.fleet import Fleet, FleetPolicy
from aggregator.http import HttpApi, serve_http
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.statuspage.assets import Assets
from heartbeat.agent.sources import fake_cid
from heartbeat.protocol.wire import Beat

GENESIS_TS = 1598306400
EPOCH = 30

#: Installed before the page's own scripts: long tasks and click-to-frame delays.
PROBE = """
window.__bench = {long: [], clicks: [], applies: [], messages: []};
new PerformanceObserver(function (list) {
  list.getEntries().forEach(function (e) {
    window.__bench.long.push([e.startTime, e.duration]);
  });
}).observe({type: "longtask", buffered: true});
document.addEventListener("click", function (ev) {
  var t = ev.timeStamp;
  requestAnimationFrame(function () {
    setTimeout(function () { window.__bench.clicks.push(performance.now() - t); }, 0);
  });
}, true);
"""


@functools.lru_cache(maxsize=256)
def head_cid(height: int, fork: bool) -> str:
    return fake_cid("bench", height, fork)


def height_now() -> int:
    return int((time.time() - GENESIS_TS) // EPOCH)


class Load:
    """The fleet and its beats; every method runs in the trio thread."""

    def __init__(self, nodes: int, seed: int = 1) -> None:
        self.fleet = Fleet(FleetPolicy(beat_timeout_default=30.0, beat_timeout_max=60.0))
        rng = random.Random(seed)
        self.peers = [f"12D3KooWBench{i:06d}{rng.getrandbits(40):010x}" for i in range(nodes)]
        self.kind = {p: rng.random() for p in self.peers}
        self.beats = 0
        now = time.time()
        for i, peer in enumerate(self.peers):
            self.fleet.on_connect(
                peer, f"/ip4/10.{i // 65536}.{i // 256 % 256}.{i % 256}/tcp/1", now
            )
            self.beat(peer, now)
        for peer in self.peers:
            if self.kind[peer] > 0.985:
                self.fleet.on_disconnect(peer, now)

    def beat(self, peer: str, now: float) -> None:
        kind = self.kind[peer]
        top = height_now()
        lag = 0 if kind < 0.9 else 1 + int((kind - 0.9) * 100)
        height = top - lag
        ts = GENESIS_TS + height * EPOCH
        error = "dial tcp 127.0.0.1:1234: connection refused" if 0.97 < kind <= 0.975 else None
        b = Beat(
            head="{" + head_cid(height, kind > 0.98) + "}",
            height=height,
            nickname=f"sp-{peer[-6:]}",
            miner_address=f"f0{10000 + int(kind * 1e6)}",
            genesis_cid=MAINNET_GENESIS_CID,
            head_timestamp=ts,
            syncing=0.95 < kind <= 0.96,
            version="lotus/1.34.1+mainnet",
            source_error=error,
            head_seen_at=int((ts + 1 + kind * 8) * 1000),
        )
        self.fleet.on_beat(peer, b, now)
        self.beats += 1

    async def run(self, rate: float, running: threading.Event) -> None:
        """RATE beats a second, in 100 slices, over the nodes that are up."""
        up = [p for p in self.peers if self.kind[p] <= 0.985]
        i = 0
        per_tick = rate / 100
        owed = 0.0
        deadline = trio.current_time()
        while True:
            deadline += 0.01
            await trio.sleep_until(deadline)
            if not running.is_set():
                continue
            owed += per_tick
            now = time.time()
            while owed >= 1:
                self.beat(up[i % len(up)], now)
                i += 1
                owed -= 1


def serve_in_thread(
    load: Load, running: threading.Event, rate: float
) -> tuple[str, HttpApi, threading.Event, list[Any]]:
    api = HttpApi(lambda: load.fleet.snapshot(time.time()), bus=Bus())
    ready = threading.Event()
    stop = threading.Event()
    holder: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, api, "127.0.0.1", 0)
            holder.append(f"http://127.0.0.1:{port}")
            holder.append(trio.lowlevel.current_trio_token())
            nursery.start_soon(load.run, rate, running)
            ready.set()
            while not stop.is_set():
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    ready.wait(60)
    return holder[0], api, stop, holder


def fetch(url: str, gz: bool) -> tuple[float, int, int]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip" if gz else "identity"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    took = time.perf_counter() - t0
    plain = len(gzip.decompress(body)) if gz else len(body)
    return took, len(body), plain


async def feed_bytes(url: str, seconds: float) -> tuple[int, int, int]:
    """(first message bytes, later bytes, later messages) of `?mode=nodes` over `seconds`."""
    ws_url = url.replace("http://", "ws://") + "/api/v1/feed?mode=nodes"
    first = later = count = 0
    async with open_websocket_url(ws_url, max_message_size=64 * 2**20) as ws:
        first = len(await ws.get_message())
        with trio.move_on_after(seconds):
            while True:
                later += len(await ws.get_message())
                count += 1
    return first, later, count


def driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_page_load_timeout(180)
    d.set_script_timeout(120)
    return d


def ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return (
        f"median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, max {values[-1]:.0f} ms"
        f" (n={len(values)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=3000.0, help="beats per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of live feed")
    parser.add_argument("--screenshot", help="save a screenshot of the loaded page here")
    args = parser.parse_args(argv)

    assets = Assets.load()
    sizes = {name: len(a.body) for name, a in assets.static.items()}
    gz = sum(len(gzip.compress(a.body)) for a in assets.static.values())
    print(f"assets: {sum(sizes.values())} bytes ({gz} gzipped): {sizes}")

    t0 = time.perf_counter()
    load = Load(args.nodes)
    print(f"fleet: {args.nodes} nodes filled in {time.perf_counter() - t0:.1f} s")
    running = threading.Event()
    url, api, stop, holder = serve_in_thread(load, running, args.rate)
    token = holder[1]
    try:
        took, size, _ = fetch(url + "/", gz=False)
        took_gz, size_gz, _ = fetch(url + "/", gz=True)
        print(
            f"server GET / : {took * 1000:.0f} ms, {size / 1e6:.2f} MB plain;"
            f" gzip {took_gz * 1000:.0f} ms, {size_gz / 1e6:.2f} MB"
        )

        def one_update() -> float:
            c0 = time.process_time()
            at, nodes, networks = api._feed_nodes()
            assert api.feed is not None
            api.feed.live.update(nodes, networks, at)
            return time.process_time() - c0

        cpu = [trio.from_thread.run_sync(one_update, trio_token=token) for _ in range(3)]
        print(f"summarised feed: one update (fleet read + diff) {min(cpu) * 1000:.0f} ms CPU")

        running.set()
        beats0, t_beats = load.beats, time.perf_counter()
        first, later, count = trio.from_thread.run(feed_bytes, url, 10.0, trio_token=token)
        rate = (load.beats - beats0) / (time.perf_counter() - t_beats)
        print(f"beats applied: {rate:.0f}/s (asked {args.rate:.0f}/s)")
        print(
            f"summarised feed: first (whole fleet) {first / 1e6:.2f} MB; then"
            f" {later / 10 / 1e3:.0f} kB/s in {count} messages over 10 s"
        )

        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        d = driver()
        try:
            d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
            d.get(url + "/")
            nav = d.execute_script(
                "var n = performance.getEntriesByType('navigation')[0];"
                " return [n.responseStart, n.responseEnd, n.domContentLoadedEventEnd,"
                " n.loadEventEnd];"
            )
            print(
                f"page: first byte {nav[0]:.0f} ms, HTML received {nav[1]:.0f} ms,"
                f" DOMContentLoaded {nav[2]:.0f} ms, load {nav[3]:.0f} ms"
            )
            boot = d.execute_script("return window.__bench.long.slice()")
            print(
                f"page: long tasks until load: {len(boot)}, "
                + ", ".join(f"{x[1]:.0f} ms at {x[0]:.0f}" for x in boot[:8])
            )
            rows = d.execute_script("return window.filHeartbeat.rows()")
            # A sort click as soon as the page is loaded: handled and painted.
            sort = d.execute_async_script(
                "var done = arguments[0], b = document.querySelector("
                "'th[data-col=height] button'), t = performance.now(); b.click();"
                " var h = performance.now() - t;"
                " requestAnimationFrame(function () { setTimeout(function () {"
                " done([h, performance.now() - t, performance.now()]); }, 0); });"
            )
            print(
                f"time to interactive: {sort[2]:.0f} ms after navigation"
                f" ({rows} rows; the first sort click: handler {sort[0]:.0f} ms,"
                f" to the next frame {sort[1]:.0f} ms)"
            )
            live_at = d.execute_async_script(
                "var done = arguments[0]; (function wait() {"
                " if (document.body.dataset.live === 'ws' && window.filHeartbeat.applied())"
                "  done(window.filHeartbeat.applied() - performance.timeOrigin);"
                " else setTimeout(wait, 20); })();"
            )
            print(f"live: the feed's first update applied {live_at:.0f} ms after navigation")
            if args.screenshot:
                d.save_screenshot(args.screenshot)

            # -- under the live feed --
            d.execute_script(
                "window.__bench.long = []; window.__bench.clicks = []; window.__bench.applies = [];"
            )
            start = d.execute_script("return performance.now()")
            copies = d.find_elements(By.CSS_SELECTOR, "#rows tr button.copy")[:3]
            sorts = []
            t_end = time.monotonic() + args.duration
            n = 0
            while time.monotonic() < t_end:
                ActionChains(d).click(copies[n % len(copies)]).perform()
                n += 1
                time.sleep(1.0)
            cheap = d.execute_script("return window.__bench.clicks.slice()")
            for col in ("lag", "nickname", "state"):
                d.execute_script("window.__bench.clicks = [];")
                ActionChains(d).click(
                    d.find_element(By.CSS_SELECTOR, f"th[data-col={col}] button")
                ).perform()
                time.sleep(1.5)
                sorts.extend(d.execute_script("return window.__bench.clicks.slice()"))
            end = d.execute_script("return performance.now()")
            longs = d.execute_script("return window.__bench.long.slice()")
            longs = [x for x in longs if x[0] >= start]
            applies = d.execute_script("return window.__bench.applies.slice()")
            counts: list[float] = [a[1] for a in applies]
            print(
                f"  feed updates applied: {len(applies)}, nodes per update median"
                f" {statistics.median(counts) if counts else 0:.0f},"
                f" max {max(counts, default=0):.0f};"
                f" time per update {ms([a[2] for a in applies])}"
            )
            for t, dur in sorted(longs, key=lambda x: -x[1])[:3]:
                near = [a for a in applies if t - 50 <= a[0] <= t + dur]
                print(
                    f"  long task {dur:.0f} ms at {t:.0f}: feed updates in it"
                    f" {[(a[1], round(a[2])) for a in near]}"
                )
            busy = sum(x[1] for x in longs)
            span = (end - start) / 1000
            print(
                f"under {args.rate:.0f} beats/s for {span:.0f} s:"
                f" {len(longs)} long tasks, {busy / span:.0f} ms/s in them"
                f" ({busy / (end - start) * 100:.1f} % of the main thread),"
                f" longest {max((x[1] for x in longs), default=0):.0f} ms"
            )
            print(f"  click to next frame, a cheap control (copy), once a second: {ms(cheap)}")
            print(f"  click to next frame, a sort of {rows} rows: {ms(sorts)}")
            heap = d.execute_script(
                "return performance.memory ? performance.memory.usedJSHeapSize : null"
            )
            if heap:
                print(f"JS heap: {heap / 1e6:.0f} MB")
            print(f"beats applied in all: {load.beats}")
        finally:
            d.quit()
    finally:
        stop.set()
        running.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
