"""Benchmark: gzip of the /metrics body, as `aggregator/http.py` sends it to Prometheus.

For 1,000 and 10,000 nodes (or the counts given), on `bench_fleet.sample_fleet`: the plain and
gzipped sizes, the median of 3 compressions at level 1 (what the endpoint uses) and, for
comparison, at level 6 (gzip's default); then the compression in a worker thread, as the
endpoint runs it, while the event loop spins on `trio.sleep(0)`: the wall time and the longest
the loop went without running (zlib releases the GIL, so that stays short). Prints figures,
asserts nothing.

Usage: python -m bench.bench_metrics_gzip [NODES ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable
from functools import partial

import trio

from aggregator.fleet import FleetSnapshot
from aggregator.http import gzip_body
from aggregator.metrics import AggregatorMetrics, create_metrics
from bench.bench_fleet import sample_fleet  # the same sample fleet

RUNS = 3
NOW = 1_700_000_000.0


def metrics_of(snap: FleetSnapshot) -> AggregatorMetrics:
    return create_metrics(lambda: snap)


def median_ms(work: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        work()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


async def in_thread(body: bytes) -> tuple[float, float]:
    """(wall ms of the threaded compression, longest loop gap ms meanwhile)."""
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await trio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0)
        t0 = time.perf_counter()
        await trio.to_thread.run_sync(gzip_body, body)
        elapsed = time.perf_counter() - t0
        done = True
    return elapsed * 1000.0, max(gaps) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("nodes", nargs="*", type=int, default=[1_000, 10_000])
    counts = parser.parse_args().nodes
    for count in counts:
        metrics = metrics_of(sample_fleet(count, NOW).snapshot(NOW + 1.0))
        render_ms = median_ms(metrics.render)
        body = metrics.render()
        gz1 = gzip_body(body)
        gz6 = zlib.compress(body, 6, 31)
        ms1 = median_ms(partial(gzip_body, body))
        ms6 = median_ms(partial(zlib.compress, body, 6, 31))
        runs = [trio.run(in_thread, body) for _ in range(RUNS)]
        wall = statistics.median(r[0] for r in runs)
        gap = statistics.median(r[1] for r in runs)
        print(f"nodes={count:>6} plain_mb={len(body) / 1e6:6.2f} render_ms={render_ms:7.1f}")
        print(
            f"nodes={count:>6} level=1 gzip_mb={len(gz1) / 1e6:6.2f} "
            f"ratio={len(body) / len(gz1):5.1f} median_ms={ms1:7.1f}"
        )
        print(
            f"nodes={count:>6} level=6 gzip_mb={len(gz6) / 1e6:6.2f} "
            f"ratio={len(body) / len(gz6):5.1f} median_ms={ms6:7.1f}"
        )
        print(
            f"nodes={count:>6} level=1 in_thread wall_ms={wall:7.1f} worst_loop_gap_ms={gap:6.2f}"
        )


if __name__ == "__main__":
    main()
