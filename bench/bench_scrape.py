"""Benchmark: /metrics of an aggregator holding N connections while the agents beat.

One aggregator (`bench/probe_aggregator.py`, which also serves `/metrics-thread`) is ramped
to `--agents` connections as in bench_connections; once they are held it scrapes, in
alternation, `/metrics` (production: rendered on the event loop in batches of 500 nodes,
yielding between them) and `/metrics-thread` (rendered in a worker thread, as before),
`--rounds` times each. During every scrape a thread polls `/healthz` every 50 ms: its worst
latency is how long the event loop (ingest, handshakes) was held up by that scrape. The same
poll with no scrape running is the baseline.

    .venv/bin/python -m bench.bench_scrape --agents 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_connections import established
from bench.common import AggregatorProcess, LoadgenProcess, http_get, machine_note, print_table
from heartbeat.tools.loadgen import parse_rate

__all__ = ["main", "run_once"]


def _poll_health(url: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.monotonic()
        try:
            http_get(url + "/healthz", timeout=60.0)
        except OSError:
            out.append(float("inf"))
        else:
            out.append(time.monotonic() - t)
        stop.wait(0.05)


def _timed(url: str, path: str | None, idle: float) -> tuple[float, float, int]:
    """(GET seconds, worst /healthz latency meanwhile, body bytes); path None: no scrape."""
    stop, health = threading.Event(), list[float]()
    poller = threading.Thread(target=_poll_health, args=(url, stop, health), daemon=True)
    poller.start()
    t = time.monotonic()
    size = 0
    if path is None:
        time.sleep(idle)
    else:
        size = len(http_get(url + path, timeout=120.0))
    took = time.monotonic() - t
    stop.set()
    poller.join(65.0)
    return took, max(health, default=0.0), size


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cap = str(args.agents + 1000)
    agg = AggregatorProcess.start(
        workdir,
        "--max-connections",
        cap,
        "--max-nodes",
        cap,
        "--max-connections-per-ip",
        cap,
        module="bench.probe_aggregator",
        env={"BENCH_PROBE_DIR": str(workdir / "probe")},
    )
    ramp_s = args.agents / parse_rate(args.ramp)
    duration = ramp_s * 1.5 + args.settle + 60 + args.rounds * 2 * 30
    loadgen = LoadgenProcess(
        agg.multiaddr,
        "--agents",
        str(args.agents),
        "--processes",
        str(args.processes),
        "--ramp",
        args.ramp,
        "--beat-period",
        args.beat_period,
        "--duration",
        f"{duration:.0f}s",
        "--reconnect-period",
        "10s",
    )
    try:
        t0, best, best_at = time.monotonic(), 0, time.monotonic()
        while time.monotonic() - t0 < ramp_s * 1.5 + 60:
            time.sleep(2.0)
            now = established(agg.port)
            if now > best:
                best, best_at = now, time.monotonic()
            if now >= args.agents or time.monotonic() - best_at > args.settle:
                break
        held = established(agg.port)
        time.sleep(args.settle)  # let the dial retries drain: measure the steady state
        base = [_timed(agg.http_url, None, 3.0)[1] for _ in range(2)]
        runs: dict[str, list[tuple[float, float, int]]] = {"/metrics": [], "/metrics-thread": []}
        for _ in range(args.rounds):
            for path in runs:
                runs[path].append(_timed(agg.http_url, path, 0.0))
                time.sleep(2.0)
        nodes = agg.metric("fil_heartbeat_connections")
        loadgen.result(timeout=duration + 120)
    finally:
        agg.stop()
    return {"held": held, "connections": nodes, "healthz_idle_max_s": max(base), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--ramp", default="50/s")
    p.add_argument("--beat-period", default="10s")
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        r = run_once(args, Path(tmp))
    print(f"run: {r}", flush=True)
    print(
        f"\nbench_scrape agents={args.agents} held={r['held']} connections={r['connections']:.0f}"
        f" rounds={args.rounds} beat_period={args.beat_period} {machine_note()}"
    )
    rows = [["/healthz alone, worst (s)", f"{r['healthz_idle_max_s']:.3f}", "", ""]]
    for path, samples in r["runs"].items():
        took = [s[0] for s in samples]
        worst = [s[1] for s in samples]
        rows.append(
            [
                path,
                f"{statistics.median(took):.2f} ({min(took):.2f}–{max(took):.2f})",
                f"{statistics.median(worst):.2f} ({min(worst):.2f}–{max(worst):.2f})",
                f"{samples[-1][2] / 1e6:.1f}",
            ]
        )
    print_table(["scrape", "GET (s) median (min–max)", "worst /healthz meanwhile (s)", "MB"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
