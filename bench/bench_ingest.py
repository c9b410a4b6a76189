"""Benchmark 2 (+5): saturated ingest in beats/s and aggregator CPU µs per beat.

Each run starts fresh aggregator(s) with the per-peer rate limit lifted, has the load
generator beat as fast as it can (`--beat-period 1ms` per agent, one beat per frame like the
agent, or `--beats-per-frame`), and samples the aggregator's `beats_received_total` and its
CPU time (/proc) over a window after warm-up. In the same run, the plain-TCP receiver with the
same `BeatDecoder` (bench/tcp_baseline.py) gives the ceiling, and the ratio is printed.

`--aggregators 2` runs two independent aggregator processes on two ports with half the agents
each and sums their ingest: the upper bound of a two-worker (SO_REUSEPORT) design.

    .venv/bin/python -m bench.bench_ingest --agents 32 --duration 15 --repeat 3

`--py-spy OUT` profiles the (first) aggregator over the first run's measurement window
(`py-spy record --format raw`, 100 Hz, CPU samples only: collapsed stacks in OUT, e.g. for
`bench/../flamegraph.pl` or a grep); py-spy comes from the venv or PATH.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import tcp_baseline
from bench.common import (
    AggregatorProcess,
    LoadgenProcess,
    fmt_spread,
    machine_note,
    print_table,
    start_py_spy,
    start_workers,
)

__all__ = ["UNLIMITED", "main", "run_once", "run_paired"]

BEATS = "fil_heartbeat_beats_received_total"

#: Aggregator flags lifting the per-peer rate limit (a saturation test, not a policy).
UNLIMITED = (
    "--rate-limit",
    "1000000",
    "--rate-burst",
    "1000000",
    "--flood-drops",
    "1000000",
    "--max-connections-per-ip",
    "20000",
)


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = dict(kv.split("=", 1) for kv in args.aggregator_env)
    if args.against:
        return run_paired(args, workdir, env)
    if args.reuseport:  # N workers behind one port and one identity
        aggs = start_workers(workdir, args.aggregators, *UNLIMITED, *args.aggregator_arg, env=env)
    else:  # N independent aggregators, each on its own port with its share of the agents
        aggs = [
            AggregatorProcess.start(workdir / f"agg{i}", *UNLIMITED, *args.aggregator_arg, env=env)
            for i in range(args.aggregators)
        ]
    loadgens: list[LoadgenProcess] = []
    try:
        per = max(1, args.agents // args.aggregators)
        if args.reuseport:
            per = args.agents
        run_for = args.warmup + args.duration + 5
        for agg in aggs[:1] if args.reuseport else aggs:
            loadgens.append(
                LoadgenProcess(
                    agg.multiaddr,
                    "--agents",
                    str(per),
                    "--processes",
                    str(args.loadgen_processes),
                    "--ramp",
                    "200/s",
                    "--beat-period",
                    args.beat_period,
                    "--beats-per-frame",
                    str(args.beats_per_frame),
                    "--duration",
                    f"{run_for:.0f}s",
                )
            )
        time.sleep(args.warmup + 1.0)  # loadgen start-up + ramp + warm-up

        def sample() -> tuple[float, float, float]:
            beats = sum(a.metric("fil_heartbeat_beats_received_total") for a in aggs)
            cpu = sum(a.cpu_seconds() for a in aggs)
            return time.monotonic(), beats, cpu

        spy = start_py_spy(args.py_spy, aggs[0].proc.pid, args.duration) if args.py_spy else None
        t0, b0, c0 = sample()
        time.sleep(args.duration)
        t1, b1, c1 = sample()
        if spy is not None:
            spy.wait(timeout=60)
            args.py_spy = None  # the first run only
        rss = [a.rss_kb() / 1024 for a in aggs]
        for lg in loadgens:
            lg.result(timeout=run_for + 60)
    finally:
        for agg in aggs:
            agg.stop()
    beats = b1 - b0
    return {
        "beats_per_s": beats / (t1 - t0),
        "cpu_us_per_beat": (c1 - c0) / max(beats, 1) * 1e6,
        "cpu_cores": (c1 - c0) / (t1 - t0),
        "rss_mb": sum(rss),
    }


def run_paired(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """This tree's aggregator and `--against`'s at the same time, one load generator each
    (`--agents` agents): both see the same machine, so the difference is the code's."""
    against = Path(args.against).resolve()
    trees: list[Path | None] = [None, against]
    if args.pair_index % 2:  # alternate which one starts first
        trees.reverse()
    args.pair_index += 1
    flags = (*UNLIMITED, *args.aggregator_arg)
    aggs = {
        tree: AggregatorProcess.start(workdir / f"agg{i}", *flags, env=env, source=tree)
        for i, tree in enumerate(trees)
    }
    run_for = args.warmup + args.duration + 5
    loadgens = [
        LoadgenProcess(
            agg.multiaddr,
            *("--agents", str(args.agents), "--ramp", "200/s", "--beat-period", args.beat_period),
            *("--beats-per-frame", str(args.beats_per_frame), "--duration", f"{run_for:.0f}s"),
        )
        for agg in aggs.values()
    ]
    try:
        time.sleep(args.warmup + 1.0)
        first = {t: (time.monotonic(), a.metric(BEATS), a.cpu_seconds()) for t, a in aggs.items()}
        time.sleep(args.duration)
        last = {t: (time.monotonic(), a.metric(BEATS), a.cpu_seconds()) for t, a in aggs.items()}
        for lg in loadgens:
            lg.result(timeout=run_for + 60)
    finally:
        for agg in aggs.values():
            agg.stop()
    out: dict[str, Any] = {}
    for tree, key in ((None, ""), (against, "against_")):
        (t0, b0, c0), (t1, b1, c1) = first[tree], last[tree]
        beats = b1 - b0
        out[key + "beats_per_s"] = beats / (t1 - t0)
        out[key + "cpu_us_per_beat"] = (c1 - c0) / max(beats, 1) * 1e6
        out[key + "cpu_cores"] = (c1 - c0) / (t1 - t0)
    out["rss_mb"] = 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=32)
    p.add_argument("--aggregators", type=int, default=1, choices=(1, 2, 3, 4))
    p.add_argument(
        "--reuseport",
        action="store_true",
        help="the aggregators share one port and identity (SO_REUSEPORT)",
    )
    p.add_argument("--loadgen-processes", type=int, default=1)
    p.add_argument("--beat-period", default="1ms", help="per agent; 1ms = as fast as possible")
    p.add_argument("--beats-per-frame", type=int, default=1)
    p.add_argument("--duration", type=float, default=15.0, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-tcp", action="store_true", help="skip the plain-TCP ceiling")
    p.add_argument(
        "--aggregator-arg",
        action="append",
        default=[],
        help="extra aggregator flag (repeatable), e.g. --aggregator-arg=--no-gc-freeze",
    )
    p.add_argument(
        "--aggregator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="aggregator environment, e.g. PY_YAMUX_RELEASE_ON_READ=0",
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        help="paired A/B: also run the aggregator of the source tree DIR (e.g. `git archive "
        "<commit> | tar -x -C DIR`) at the same time, with its own load generator",
    )
    p.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile the aggregator over the first run's window into OUT (collapsed stacks)",
    )
    args = p.parse_args(argv)
    args.pair_index = 0
    if args.against and (args.aggregators != 1 or args.reuseport):
        p.error("--against compares one aggregator with one")
    args.duration = min(args.duration, 300.0)
    runs, tcp_runs = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            runs.append(run_once(args, Path(tmp)))
        print(f"run {i + 1} libp2p: {runs[-1]}", flush=True)
        if not args.no_tcp:
            tcp_runs.append(tcp_baseline.measure(args.duration, connections=16))
            print(f"run {i + 1} tcp: {tcp_runs[-1]}", flush=True)
    print(
        f"\nbench_ingest agents={args.agents} aggregators={args.aggregators} "
        f"reuseport={args.reuseport} "
        f"env={','.join(args.aggregator_env) or '-'} "
        f"beats_per_frame={args.beats_per_frame} window={args.duration}s runs={len(runs)} "
        f"{machine_note()}"
    )
    rows = [
        ["libp2p ingest beats/s", fmt_spread(r["beats_per_s"] for r in runs)],
        [
            "libp2p aggregator CPU µs/beat",
            fmt_spread((r["cpu_us_per_beat"] for r in runs), "{:.1f}"),
        ],
        ["libp2p aggregator CPU (cores)", fmt_spread((r["cpu_cores"] for r in runs), "{:.2f}")],
        ["libp2p beats/s per full core", fmt_spread(1e6 / r["cpu_us_per_beat"] for r in runs)],
    ]
    if tcp_runs:
        rows += [
            ["plain TCP beats/s", fmt_spread(r["beats_per_s"] for r in tcp_runs)],
            [
                "plain TCP CPU µs/beat",
                fmt_spread((r["cpu_us_per_beat"] for r in tcp_runs), "{:.1f}"),
            ],
            [
                "ratio TCP/libp2p (beats/s)",
                fmt_spread(
                    (
                        t["beats_per_s"] / r["beats_per_s"]
                        for r, t in zip(runs, tcp_runs, strict=True)
                    ),
                    "{:.1f}",
                ),
            ],
            [
                "ratio libp2p/TCP (CPU per beat)",
                fmt_spread(
                    (
                        r["cpu_us_per_beat"] / t["cpu_us_per_beat"]
                        for r, t in zip(runs, tcp_runs, strict=True)
                    ),
                    "{:.1f}",
                ),
            ],
        ]
    if args.against:
        rows += [
            [f"{args.against}: beats/s", fmt_spread(r["against_beats_per_s"] for r in runs)],
            [
                f"{args.against}: CPU µs/beat",
                fmt_spread((r["against_cpu_us_per_beat"] for r in runs), "{:.1f}"),
            ],
            [
                "this tree − that one, µs/beat (same runs)",
                fmt_spread(
                    (r["cpu_us_per_beat"] - r["against_cpu_us_per_beat"] for r in runs), "{:.1f}"
                ),
            ],
        ]
    print_table(["figure", "median (min–max)"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
