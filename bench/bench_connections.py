"""Benchmark 1: connected agents held by one aggregator, and its RSS per connection.

Each run starts a fresh aggregator, measures its RSS at rest, ramps `--agents` simulated
agents (distinct peer ids, one beat every `--beat-period`) from `--processes` load generator
processes, waits until the established TCP connections stop growing, then reads the
aggregator's RSS, its `connections` gauge and its CPU time. RSS per connection is
(RSS under load − RSS at rest) / connections.

    .venv/bin/python -m bench.bench_connections --agents 10000 --processes 2 --ramp 60/s
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    AggregatorProcess,
    LoadgenProcess,
    add_aggregator_variants,
    fmt_spread,
    http_get,
    machine_note,
    print_table,
    variant_flags,
)
from heartbeat.tools.loadgen import parse_rate

__all__ = ["established", "main", "run_once"]


def established(port: int) -> int:
    """ESTABLISHED TCP sockets whose local port is `port` (from /proc/net/tcp{,6})."""
    count = 0
    hex_port = f"{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as table:
                next(table)
                for line in table:
                    fields = line.split(None, 4)
                    if fields[3] == "01" and fields[1].endswith(":" + hex_port):
                        count += 1
        except FileNotFoundError:
            continue
    return count


def time_scrapes(agg: AggregatorProcess, n: int = 3) -> dict[str, Any]:
    """Wall time of raw GETs (no parsing here) of /healthz and /metrics while agents beat.

    /healthz is what the event loop alone costs a request; /metrics adds the snapshot and
    the render of every node's series.
    """
    health, scrape, size = [], [], 0
    for _ in range(n):
        t = time.monotonic()
        http_get(agg.http_url + "/healthz", timeout=60.0)
        health.append(time.monotonic() - t)
        t = time.monotonic()
        size = len(http_get(agg.http_url + "/metrics", timeout=120.0))
        scrape.append(time.monotonic() - t)
        time.sleep(1.0)
    return {"healthz_s": health, "metrics_raw_s": scrape, "metrics_bytes": size}


def _mid(values: list[float] | None) -> float:
    ordered = sorted(values or [0.0])
    return ordered[len(ordered) // 2]


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ramp = parse_rate(args.ramp)
    max_time = args.max_time
    # All simulated agents share 127.0.0.1: lift the per-IP cap (256) for the bench.
    cap = str(args.agents + 1000)
    flags = (
        "--max-connections",
        cap,
        "--max-nodes",
        cap,
        "--max-connections-per-ip",
        cap,
        # ...and the per-IP probation bound (64): one loopback IP stands in for many hosts.
        "--max-probation-per-ip",
        cap,
        "--max-probation",
        cap,
        *variant_flags(args),
    )
    if args.workers > 1:  # the production mode: one port and identity, one fleet
        flags = (*flags, "--workers", str(args.workers))
    aggs = [AggregatorProcess.start(workdir, *flags)]  # RSS and CPU: the whole group
    agg = aggs[0]

    def rss() -> int:
        return sum(a.rss_kb() for a in aggs)

    try:
        time.sleep(1.0)
        rss0 = rss()
        cpu0 = sum(a.cpu_seconds() for a in aggs)
        # Slack beyond the ramp: accepting slows down as connections add up.
        duration = min(max_time, args.agents / ramp * 1.5 + args.settle + 60)
        t0 = time.monotonic()
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
        best, best_at, peak_rss = 0, time.monotonic(), rss0
        # Held: no new connection for `settle` seconds (or all of them are there).
        while time.monotonic() - t0 < duration - 15:
            time.sleep(2.0)
            now_est = established(agg.port)
            peak_rss = max(peak_rss, rss())
            if now_est > best:
                best, best_at = now_est, time.monotonic()
            if now_est >= args.agents or time.monotonic() - best_at > args.settle:
                break
        held_at = time.monotonic() - t0
        time.sleep(2.0)
        rss1 = rss()
        cpu1 = sum(a.cpu_seconds() for a in aggs)
        est = established(agg.port)
        scrape = time.monotonic()
        try:
            gauge = sum(a.metric("fil_heartbeat_connections") for a in aggs)
        except OSError as exc:  # a saturated aggregator may not answer: count sockets
            print(f"metrics_unavailable err={exc!r}; using established sockets", flush=True)
            gauge = est
        scrape = time.monotonic() - scrape
        try:
            scrapes = time_scrapes(agg)
        except OSError as exc:
            scrapes = {"error": repr(exc)}
        summary = loadgen.result(timeout=duration + 120)
    finally:
        for a in aggs:
            a.stop()
    conns = max(1, int(gauge))
    loadgen_rss = sum(w.get("rss_kb") or 0 for w in summary["workers"])
    return {
        "agents": args.agents,
        "connections": int(gauge),
        "established": est,
        "time_to_hold_s": round(held_at, 1),
        "accept_per_s": round(int(gauge) / max(held_at, 0.001), 1),
        "rss0_mb": rss0 / 1024,
        "rss_mb": rss1 / 1024,
        "peak_rss_mb": peak_rss / 1024,
        "kb_per_conn": (rss1 - rss0) / conns,
        "cpu_s": cpu1 - cpu0,
        "scrape_s": scrape,
        **scrapes,
        "loadgen_kb_per_agent": loadgen_rss / max(1, args.agents),
        "loadgen_failures": summary["totals"].get("failures", {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--ramp", default="60/s")
    p.add_argument("--beat-period", default="10s")
    p.add_argument("--settle", type=float, default=20.0, help="s without new connections")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-time", type=float, default=600.0, help="hard cap per run (s)")
    add_aggregator_variants(p)
    args = p.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-conn-") as tmp:
            result = run_once(args, Path(tmp))
        runs.append(result)
        print(f"run {i + 1}: {result}", flush=True)
    print(
        f"\nbench_connections agents={args.agents} processes={args.processes} "
        f"workers={args.workers} fast_task_lookup={args.fast_task_lookup} "
        f"identify_peers={args.identify_peers} throttle_reconcile={args.throttle_reconcile} "
        f"aggregator_args={' '.join(args.aggregator_arg) or '-'} "
        f"ramp={args.ramp} beat_period={args.beat_period} runs={len(runs)} {machine_note()}"
    )
    print_table(
        ["figure", "median (min–max)"],
        [
            ["connections held", fmt_spread(r["connections"] for r in runs)],
            ["time to hold (s)", fmt_spread((r["time_to_hold_s"] for r in runs), "{:.0f}")],
            ["accepted conns/s", fmt_spread((r["accept_per_s"] for r in runs), "{:.1f}")],
            ["RSS at rest (MB)", fmt_spread((r["rss0_mb"] for r in runs), "{:.0f}")],
            ["RSS held (MB)", fmt_spread((r["rss_mb"] for r in runs), "{:.0f}")],
            ["RSS per connection (KB)", fmt_spread((r["kb_per_conn"] for r in runs), "{:.1f}")],
            [
                "/metrics raw GET under load (s), median of 3",
                fmt_spread((_mid(r.get("metrics_raw_s")) for r in runs), "{:.2f}"),
            ],
            [
                "/healthz GET under load (s), median of 3",
                fmt_spread((_mid(r.get("healthz_s")) for r in runs), "{:.3f}"),
            ],
            [
                "/metrics GET + parse in the bench (s)",
                fmt_spread((r["scrape_s"] for r in runs), "{:.1f}"),
            ],
            ["aggregator CPU during run (s)", fmt_spread((r["cpu_s"] for r in runs), "{:.0f}")],
            [
                "loadgen RSS per agent (KB)",
                fmt_spread((r["loadgen_kb_per_agent"] for r in runs), "{:.1f}"),
            ],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
