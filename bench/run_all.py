"""Run every capacity benchmark in sequence with the figures of docs/CAPACITY.md.

Sequential on purpose: on a 2-core machine two benchmarks at once measure each other.
`--quick` scales everything down (a smoke run of the tooling, minutes instead of an hour).

    .venv/bin/python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import bench_connections, bench_ingest, bench_latency, bench_storm, tcp_baseline

__all__ = ["PLAN", "main"]

#: (title, module, full arguments, quick arguments)
PLAN = [
    (
        "1. connections held, RSS per connection",
        bench_connections,
        ["--agents", "10000", "--processes", "2", "--ramp", "50/s", "--repeat", "3"],
        ["--agents", "300", "--ramp", "100/s", "--settle", "5", "--repeat", "1"],
    ),
    (
        "2+5. saturated ingest vs plain TCP",
        bench_ingest,
        ["--agents", "32", "--duration", "15", "--repeat", "3"],
        ["--agents", "8", "--duration", "4", "--warmup", "3", "--repeat", "1"],
    ),
    (
        "2b. ingest, two aggregator processes (upper bound of two workers)",
        bench_ingest,
        ["--agents", "32", "--aggregators", "2", "--duration", "15", "--repeat", "3", "--no-tcp"],
        [
            "--agents",
            "8",
            "--aggregators",
            "2",
            "--duration",
            "4",
            "--warmup",
            "3",
            "--repeat",
            "1",
            "--no-tcp",
        ],
    ),
    (
        "3. latency, 1,000 agents at 1 beat/s, GC tuned",
        bench_latency,
        ["--agents", "1000", "--gc", "tuned", "--repeat", "3"],
        ["--agents", "100", "--window", "5", "--settle", "3", "--repeat", "1"],
    ),
    (
        "3b. latency, 1,000 agents at 1 beat/s, default GC",
        bench_latency,
        ["--agents", "1000", "--gc", "default", "--repeat", "3"],
        ["--agents", "100", "--gc", "default", "--window", "5", "--settle", "3", "--repeat", "1"],
    ),
    (
        "4. reconnect storm after SIGKILL",
        bench_storm,
        ["--agents", "2000", "--repeat", "3"],
        ["--agents", "100", "--ramp", "100/s", "--settle", "5", "--budget", "60", "--repeat", "1"],
    ),
    (
        "5. plain TCP ceiling alone",
        tcp_baseline,
        ["--duration", "10", "--repeat", "3"],
        ["--duration", "3", "--repeat", "1"],
    ),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", type=int, action="append", help="run only these (1-based)")
    args = p.parse_args(argv)
    for i, (title, module, full, quick) in enumerate(PLAN, start=1):
        if args.only and i not in args.only:
            continue
        argv_i = quick if args.quick else full
        print(f"\n## {title}\n$ python -m {module.__name__} {' '.join(argv_i)}", flush=True)
        started = time.monotonic()
        module.main(argv_i)
        print(f"({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
