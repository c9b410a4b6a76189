"""Benchmark 3: beat→fleet-model latency, p50/p99, with N agents at 1 beat/s.

The load generator stamps every beat with its CLOCK_MONOTONIC (`--stamp`); the aggregator runs
under bench/probe_aggregator.py, which records `now - stamp` once the fleet model has applied
the beat. Each run: ramp, settle, then a measurement window. `--gc default` runs the
aggregator with CPython's default collector (`--gc-threshold 700,10,10 --no-gc-freeze`),
`--gc tuned` with the aggregator's defaults (raised thresholds, `gc.freeze()` after start-up).

    .venv/bin/python -m bench.bench_latency --agents 1000 --gc tuned --repeat 3
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
    machine_note,
    print_table,
    variant_flags,
)
from bench.probe_aggregator import request
from heartbeat.tools.loadgen import parse_rate

__all__ = ["GC_FLAGS", "main", "percentile", "run_once"]

GC_FLAGS = {
    "default": ("--gc-threshold", "700,10,10", "--no-gc-freeze"),
    "tuned": (),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    probe_dir = workdir / "probe"
    cap = str(args.agents + 1000)
    agg = AggregatorProcess.start(
        workdir,
        "--max-connections-per-ip",
        cap,
        "--max-connections",
        cap,
        # Every agent of the load generator comes from one loopback IP standing in for
        # many hosts: lift the per-IP probation bound (64) so admission keeps them all.
        "--max-probation-per-ip",
        cap,
        "--max-probation",
        cap,
        *GC_FLAGS[args.gc],
        "--workers",
        str(args.workers),
        *variant_flags(args),
        module="bench.probe_aggregator",
        env={"BENCH_PROBE_DIR": str(probe_dir)},
    )
    ramp_s = args.agents / parse_rate(args.ramp)
    run_for = ramp_s + args.settle + args.window + 10
    try:
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
            "--stamp",
            "--duration",
            f"{run_for:.0f}s",
        )
        time.sleep(2.0 + ramp_s + args.settle)
        pauses0 = agg.metric("fil_heartbeat_gc_pause_seconds_count")
        request(probe_dir, "reset")
        cpu0 = agg.cpu_seconds()
        time.sleep(args.window)
        samples = request(probe_dir, "dump") or []
        cpu1 = agg.cpu_seconds()
        pauses = agg.metric("fil_heartbeat_gc_pause_seconds_count") - pauses0
        connections = agg.metric("fil_heartbeat_connections")
        loadgen.result(timeout=run_for + 60)
    finally:
        agg.stop()
    lat = [ns / 1e6 for ns in samples]
    if not lat:
        raise RuntimeError("no stamped beats reached the fleet model")
    return {
        "samples": len(lat),
        "connections": connections,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": max(lat),
        "cpu_cores": (cpu1 - cpu0) / args.window,
        "gc_pauses": pauses,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--beat-period", default="1s")
    p.add_argument("--ramp", default="100/s")
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--gc", choices=tuple(GC_FLAGS), default="tuned")
    p.add_argument("--repeat", type=int, default=3)
    add_aggregator_variants(p)
    args = p.parse_args(argv)
    args.window = min(args.window, 300.0)
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
            runs.append(run_once(args, Path(tmp)))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    print(
        f"\nbench_latency agents={args.agents} beat_period={args.beat_period} gc={args.gc} "
        f"workers={args.workers} aggregator_args={' '.join(args.aggregator_arg) or '-'} "
        f"window={args.window}s runs={len(runs)} {machine_note()}"
    )
    print_table(
        ["figure", "median (min–max)"],
        [
            ["beats measured", fmt_spread(r["samples"] for r in runs)],
            ["connections", fmt_spread(r["connections"] for r in runs)],
            ["p50 (ms)", fmt_spread((r["p50_ms"] for r in runs), "{:.1f}")],
            ["p99 (ms)", fmt_spread((r["p99_ms"] for r in runs), "{:.1f}")],
            ["max (ms)", fmt_spread((r["max_ms"] for r in runs), "{:.0f}")],
            ["aggregator CPU (cores)", fmt_spread((r["cpu_cores"] for r in runs), "{:.2f}")],
            ["GC collections in window", fmt_spread(r["gc_pauses"] for r in runs)],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
