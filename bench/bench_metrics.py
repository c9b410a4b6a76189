"""Benchmark: how long the /metrics body takes to render for a large fleet, and how big it is.

Prints, for 1,000 and 10,000 nodes (or the counts given), the median of 3 renders of the full
body (`AggregatorMetrics.render`: the hand-written fleet families plus prometheus_client's self
families) and of prometheus_client's generator over the reference collector (`FleetCollector`),
which is how every family was rendered before. Prints figures, asserts nothing.

Usage: python -m bench.bench_metrics [NODES ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from aggregator.fleet import FleetSnapshot
from aggregator.metrics import create_metrics
from bench.bench_fleet import sample_fleet  # the same sample fleet

RUNS = 3
NOW = 1_700_000_000.0


def snapshot(count: int) -> FleetSnapshot:
    """A mainnet fleet of `count` nodes with realistic peer ids, a few lagging."""
    return sample_fleet(count, NOW).snapshot(NOW + 1.0)


def measure(render: Callable[[], bytes]) -> tuple[float, int]:
    times = []
    size = 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        size = len(render())
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("nodes", nargs="*", type=int, default=[1_000, 10_000])
    counts = parser.parse_args().nodes
    for count in counts:
        snap = snapshot(count)

        def current(snap: FleetSnapshot = snap) -> FleetSnapshot:
            return snap

        metrics = create_metrics(current)
        ms, size = measure(metrics.render)
        print(f"nodes={count:>6} render      median_ms={ms:7.1f} size_mb={size / 1e6:6.2f}")
        try:
            from aggregator.metrics import render_reference
        except ImportError:
            continue

        def reference(snap: FleetSnapshot = snap) -> bytes:
            return render_reference(snap)

        ms, size = measure(reference)
        print(f"nodes={count:>6} prom_client median_ms={ms:7.1f} size_mb={size / 1e6:6.2f}")


if __name__ == "__main__":
    main()
