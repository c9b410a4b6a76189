"""Where a held connection's memory goes (docs/CAPACITY.md, section 1b).

Each run starts a fresh aggregator (`python -m aggregator run` inside
`bench/memory_probe.py`, the limits lifted as in bench_connections), connects `--low` agents
with the load generator (light dialer, one beat every `--beat-period`), waits until they are
held and `--settle` seconds more, takes snapshot A, connects more agents up to `--agents`, and
takes snapshot B. Per-connection figures are B − A divided by the connections added:
start-up, imports and first-connection caches cancel out.

- `--repeat` plain runs (no tracing; the probe only reads the heaps' sizes): RSS per
  connection from /proc, the figure to compare with bench_connections, and how it splits
  between pymalloc's arenas and glibc's heap (in use, free), and what one full
  `gc.collect()` after B frees.
- `--traced` runs under tracemalloc (`--frames` frames, from the start; `--traced-agents` at
  B and `--traced-ramp`, because a traced aggregator accepts ~5x slower): the bytes per
  connection by allocation site (file:line, module, and "owner": the innermost frame outside
  the standard library and trio), gc-tracked objects per connection by type, and what
  tracemalloc does not see (plain RSS − traced: C allocations of OpenSSL/cryptography,
  allocator rounding and free blocks).

Loopback only, bounded: at most 3,000 agents, a ramp of at most 200/s, a hard time cap per
run; the load generators and the aggregator are stopped by their own pids.

    .venv/bin/python -m bench.bench_memory --low 500 --agents 2000 --repeat 3 --traced 1
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from bench import memory_probe
from bench.bench_connections import established
from bench.common import (
    AggregatorProcess,
    LoadgenProcess,
    fmt_spread,
    machine_note,
    print_table,
    proc_children,
    proc_rss_kb,
)
from heartbeat.tools.loadgen import parse_rate

__all__ = ["main", "per_connection", "run_once"]

MAX_AGENTS = 3000
MAX_RAMP = 200.0


def _stop_loadgen(lg: LoadgenProcess) -> None:
    """SIGTERM its worker processes (ours), then the parent; SIGKILL what is left."""
    for pid in proc_children(lg.proc.pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    try:
        lg.proc.wait(10)
    except subprocess.TimeoutExpired:
        lg.proc.terminate()
        try:
            lg.proc.wait(5)
        except subprocess.TimeoutExpired:
            lg.proc.kill()
            lg.proc.wait(5)
    if lg.proc.stdout is not None:
        lg.proc.stdout.close()


def _wait_held(port: int, want: int, stall: float, deadline: float) -> int:
    """Poll established connections until `want`, `stall` s without growth, or `deadline`."""
    best, best_at = 0, time.monotonic()
    while time.monotonic() < deadline:
        now = established(port)
        if now > best:
            best, best_at = now, time.monotonic()
        if now >= want or time.monotonic() - best_at > stall:
            return now
        time.sleep(1.0)
    return established(port)


def run_once(args: argparse.Namespace, workdir: Path, *, traced: bool) -> dict[str, Any]:
    """One run: snapshots at `--low` and `--agents` connections (see the module docstring)."""
    cap = str(args.agents + 1000)
    flags = (
        "--max-connections",
        cap,
        "--max-nodes",
        cap,
        "--max-connections-per-ip",
        cap,
        # Every agent of the load generator comes from one loopback IP standing in for
        # many hosts: lift the per-IP probation bound (64) so admission keeps them all.
        "--max-probation-per-ip",
        cap,
        "--max-probation",
        cap,
        *args.aggregator_arg,
    )
    probe_dir = workdir / "probe"
    env = {
        "BENCH_PROBE_DIR": str(probe_dir),
        "BENCH_TRACEMALLOC_FRAMES": str(args.frames if traced else 0),
    }
    started = time.monotonic()
    hard_stop = started + args.max_time
    agg = AggregatorProcess.start(
        workdir, *flags, env=env, module="bench.memory_probe", timeout=60.0
    )
    loadgens: list[LoadgenProcess] = []
    snaps: dict[str, dict[str, Any]] = {}

    def snapshot(name: str, command: str) -> None:
        # Upgraded connections (the aggregator's gauge): established TCP sockets also count
        # those still queued for a handshake.
        try:
            conns = int(agg.metric("fil_heartbeat_connections"))
        except OSError:
            conns = established(agg.port)
        rss_kb = proc_rss_kb(agg.pid)  # before the probe allocates anything
        snap = memory_probe.request(probe_dir, command, name)
        if "traces_file" in snap:
            snap.update(memory_probe.group_traces(Path(snap.pop("traces_file"))))
        snap["connections"] = conns
        snap["rss_kb"] = rss_kb
        print(
            f"  snapshot {name}: connections={conns} rss_kb={rss_kb} "
            f"probe_s={snap.get('probe_s', 0):.1f} t={time.monotonic() - started:.0f}s",
            flush=True,
        )
        snaps[name] = snap

    def connect(count: int, ramp_text: str) -> None:
        duration = args.max_time + 60  # stopped by us long before
        loadgens.append(
            LoadgenProcess(
                agg.multiaddr,
                "--agents",
                str(count),
                "--processes",
                str(args.processes),
                "--ramp",
                ramp_text,
                "--beat-period",
                args.beat_period,
                "--duration",
                f"{duration:.0f}s",
                "--reconnect-period",
                "10s",
            )
        )

    try:
        time.sleep(1.0)
        snapshot("rest", "light")
        high = args.traced_agents if traced else args.agents
        for name, total, added in (("low", args.low, args.low), ("high", high, high - args.low)):
            ramp = args.traced_ramp if traced else args.ramp
            connect(added, ramp)
            budget = min(hard_stop, time.monotonic() + added / parse_rate(ramp) * 3 + 60)
            _wait_held(agg.port, total, args.stall, budget)
            time.sleep(args.settle)
            snapshot(name, "snapshot" if traced else "light")
        # What a full collection frees: garbage cycles the raised thresholds let live.
        snapshot("collected", "collect")
    finally:
        for lg in loadgens:
            _stop_loadgen(lg)
        agg.stop()
    return {"traced": traced, "snaps": snaps, "seconds": time.monotonic() - started}


def per_connection(
    a: dict[str, Any], b: dict[str, Any], key: Callable[[dict[str, Any]], float]
) -> float:
    """(key(b) − key(a)) per connection added between the two snapshots."""
    added = b["connections"] - a["connections"]
    return (key(b) - key(a)) / added if added > 0 else float("nan")


def _group_delta(
    a: dict[str, Any], b: dict[str, Any], group: str, top: int
) -> list[tuple[str, float, float]]:
    """(key, bytes per connection, blocks per connection), largest first."""
    added = max(1, b["connections"] - a["connections"])
    before: dict[str, list[int]] = a.get(group, {})
    rows = []
    for key, (size, count) in b.get(group, {}).items():
        size0, count0 = before.get(key, (0, 0))
        rows.append((key, (size - size0) / added, (count - count0) / added))
    for key, (size0, count0) in before.items():
        if key not in b.get(group, {}):
            rows.append((key, -size0 / added, -count0 / added))
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def _type_delta(a: dict[str, Any], b: dict[str, Any], top: int) -> list[tuple[str, float]]:
    added = max(1, b["connections"] - a["connections"])
    before: dict[str, int] = a.get("types", {})
    rows = [(k, (n - before.get(k, 0)) / added) for k, n in b.get("types", {}).items()]
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def _kb(values: Iterable[float]) -> str:
    vals = [v / 1024 for v in values]
    return fmt_spread(vals, "{:.1f}") if len(vals) > 1 else f"{vals[0]:.1f}"


def _mi(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda s: float(s.get("mallinfo", {}).get(name, 0))


def _pm(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda s: float(s.get("pymalloc", {}).get(name, 0))


def _spread_kb(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> str:
    return _kb(per_connection(r["snaps"]["low"], r["snaps"]["high"], key) for r in runs)


def _median_per_conn(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(
        per_connection(r["snaps"]["low"], r["snaps"]["high"], key) for r in runs
    )


def _glibc(s: dict[str, Any]) -> float:
    return _mi("arena")(s) + _mi("hblkhd")(s)


def _glibc_used(s: dict[str, Any]) -> float:
    return _mi("uordblks")(s) + _mi("hblkhd")(s)


def _traced(s: dict[str, Any]) -> float:
    return float(s.get("traced_bytes", 0))


def _report_plain(runs: list[dict[str, Any]]) -> None:
    def med(key: str, field: str) -> float:
        return float(statistics.median(r["snaps"][key][field] for r in runs))

    col = partial(_spread_kb, runs)
    print_table(
        ["plain runs (no tracing), per held connection A→B", "median (min–max)"],
        [
            [
                "connections at A / B",
                f"{med('low', 'connections'):.0f} / {med('high', 'connections'):.0f}",
            ],
            [
                "RSS at rest / A / B (MB)",
                " / ".join(f"{med(k, 'rss_kb') / 1024:.0f}" for k in ("rest", "low", "high")),
            ],
            ["**RSS per connection (KB)**", col(_rss)],
            [
                "RSS per connection rest→B (KB, bench_connections' definition)",
                _kb(per_connection(r["snaps"]["rest"], r["snaps"]["high"], _rss) for r in runs),
            ],
            ["pymalloc arenas (objects ≤ 512 B) (KB)", col(_pm("arena_bytes"))],
            ["… in allocated blocks (KB)", col(_pm("allocated_bytes"))],
            ["… free blocks inside the arenas (KB)", col(_pm("available_bytes"))],
            ["glibc malloc heap + mmaps (larger objects, C libraries) (KB)", col(_glibc)],
            ["… in use (KB)", col(_glibc_used)],
            ["… free inside the heap (KB)", col(_mi("fordblks"))],
            ["rest of RSS (KB)", col(lambda s: _rss(s) - _pm("arena_bytes")(s) - _glibc(s))],
            [
                "freed by one gc.collect() at B, per connection held (KB): pymalloc blocks",
                _kb(_freed(r, _pm("allocated_bytes")) for r in runs),
            ],
            ["… glibc in use", _kb(_freed(r, _glibc_used) for r in runs)],
            ["… RSS", _kb(_freed(r, _rss) for r in runs)],
        ],
    )


def _freed(run: dict[str, Any], key: Callable[[dict[str, Any]], float]) -> float:
    """What the full collection after snapshot B freed, per connection held at B."""
    high, after = run["snaps"]["high"], run["snaps"]["collected"]
    return float((key(high) - key(after)) / max(1, high["connections"]))


def _report_traced(runs: list[dict[str, Any]], plain: list[dict[str, Any]], top: int) -> None:
    traced = _median_per_conn(runs, _traced)
    rows = [
        ["traced by tracemalloc: Python's allocations (KB)", _spread_kb(runs, _traced)],
        [
            "… freed by one gc.collect() at B, per connection held (KB)",
            _kb(_freed(r, _traced) for r in runs),
        ],
    ]
    if plain:
        rss = _median_per_conn(plain, _rss)
        py_small = _median_per_conn(plain, _pm("allocated_bytes"))
        used = _median_per_conn(plain, _glibc_used)
        rows += [
            ["RSS per connection, plain runs (KB)", f"{rss / 1024:.1f}"],
            ["**not seen by tracemalloc** = RSS − traced (KB)", f"{(rss - traced) / 1024:.1f}"],
            [
                "… C allocations ≈ glibc in use − (traced − pymalloc blocks in use) (KB)",
                f"{(used - (traced - py_small)) / 1024:.1f}",
            ],
        ]
    print_table(["traced runs, per held connection A→B", "value"], rows)
    a, b = runs[0]["snaps"]["low"], runs[0]["snaps"]["high"]
    for group, title in (
        ("by_line", "allocating line"),
        ("by_owner", "owner (innermost frame outside the stdlib and trio)"),
        ("by_module", "allocating module"),
        ("by_owner_module", "owner module"),
    ):
        print(f"\ntop {top} by {title}, bytes per connection (traced run 1)", flush=True)
        print_table(
            ["site", "bytes/conn", "blocks/conn"],
            [
                [k, f"{size:,.0f}", f"{count:.1f}"]
                for k, size, count in _group_delta(a, b, group, top)
            ],
        )
    print(f"\ntop {top} gc-tracked objects per connection by type (traced run 1)", flush=True)
    print_table(["type", "objects/conn"], [[k, f"{n:.1f}"] for k, n in _type_delta(a, b, top)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--low", type=int, default=500, help="connections at snapshot A")
    p.add_argument("--agents", type=int, default=2000, help="connections at snapshot B")
    p.add_argument("--processes", type=int, default=2, help="load generator processes")
    p.add_argument("--ramp", default="100/s")
    p.add_argument(
        "--traced-agents",
        type=int,
        default=1000,
        help="connections at snapshot B of the traced runs",
    )
    p.add_argument(
        "--traced-ramp",
        default="10/s",
        help="ramp of the traced runs (tracing slows the accept path ~5x)",
    )
    p.add_argument("--beat-period", default="10s")
    p.add_argument("--settle", type=float, default=10.0, help="s after held, before a snapshot")
    p.add_argument("--stall", type=float, default=20.0, help="held: s without a new connection")
    p.add_argument("--repeat", type=int, default=3, help="plain runs (RSS per connection)")
    p.add_argument("--traced", type=int, default=1, help="runs under tracemalloc (the tables)")
    p.add_argument("--frames", type=int, default=5, help="tracemalloc frames per allocation")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--max-time", type=float, default=600.0, help="hard cap per run (s)")
    p.add_argument(
        "--aggregator-arg",
        action="append",
        default=[],
        help="extra aggregator flag (repeatable), e.g. --aggregator-arg=--identify-peers",
    )
    args = p.parse_args(argv)
    if not (
        0 < args.low < min(args.agents, args.traced_agents)
        and max(args.agents, args.traced_agents) <= MAX_AGENTS
    ):
        p.error(f"need 0 < --low < --agents, --traced-agents <= {MAX_AGENTS}")
    if max(parse_rate(args.ramp), parse_rate(args.traced_ramp)) > MAX_RAMP:
        p.error(f"--ramp above {MAX_RAMP:g}/s")
    plain: list[dict[str, Any]] = []
    traced: list[dict[str, Any]] = []
    for i in range(args.repeat + args.traced):
        is_traced = i >= args.repeat
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
            result = run_once(args, Path(tmp), traced=is_traced)
        (traced if is_traced else plain).append(result)
        s = result["snaps"]
        print(
            f"run {i + 1} traced={is_traced}: conns rest/A/B="
            f"{s['rest']['connections']}/{s['low']['connections']}/{s['high']['connections']} "
            f"rss_kb={s['rest']['rss_kb']}/{s['low']['rss_kb']}/{s['high']['rss_kb']} "
            f"kb_per_conn={per_connection(s['low'], s['high'], _rss) / 1024:.1f} "
            f"({result['seconds']:.0f} s)",
            flush=True,
        )
    print(
        f"\nbench_memory low={args.low} agents={args.agents} ramp={args.ramp} "
        f"traced_ramp={args.traced_ramp} "
        f"beat_period={args.beat_period} plain_runs={len(plain)} traced_runs={len(traced)} "
        f"frames={args.frames} aggregator_args={' '.join(args.aggregator_arg) or '-'} "
        f"{machine_note()}",
        flush=True,
    )
    if plain:
        _report_plain(plain)
    if traced:
        print()
        _report_traced(traced, plain, args.top)
    return 0


def _rss(s: dict[str, Any]) -> float:
    return float(s["rss_kb"] * 1024)


if __name__ == "__main__":
    raise SystemExit(main())
