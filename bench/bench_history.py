"""Benchmark: node history's cost (prints figures, asserts nothing).

Usage: python -m bench.bench_history [--nodes 10000] [--transitions-per-day 4] [--days 30]

1. Bytes per node per day in the state db: one day of history for NODES nodes, 2,880 epoch
   height samples each (a shared chain with ~3 % null rounds; each node one epoch late on ~5 %
   of its samples), TRANSITIONS_PER_DAY state changes each; written as the service writes it
   (hourly zlib chunks of varint deltas, transitions with running totals). Compared with the
   naive layout (one row per sample) on a tenth of the nodes.
2. The uptime refresh for all nodes (24h/7d/30d) over DAYS days of transitions: the three
   index look-ups per node at the windows' starts, and the arithmetic.
3. The tracker's step at NODES nodes, once a second: on a tick inside an epoch slot, on the
   first tick of a slot (every node samples its height), and the fleet snapshot it reads; the
   flush after a slot's first tick (every node's chunk rewritten).
4. One node's history over 30 days (the API's query).
5. Memory (tracker marks, an hour's open chunks, the uptime cache) and what `uptime` adds to
   `/api/v1/nodes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from aggregator.history import (
    EPOCH,
    HOUR_SLOTS,
    ChunkEncoder,
    HistoryTracker,
    Mark,
    Totals,
    Transition,
    totals_at,
)
from aggregator.history_service import HistoryService, uptime_table
from aggregator.history_store import Batch, HistoryStore
from bench.bench_fleet import sample_fleet

DAY = 86_400
T0 = 1_700_006_400  # an hour boundary


def peer(i: int) -> str:
    return f"12D3KooW{i:044d}"


def timed(fn: Callable[[], object], runs: int = 5) -> tuple[float, float, float]:
    """(median, min, max) milliseconds."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), min(times), max(times)


def ms(figures: tuple[float, float, float]) -> str:
    return f"{figures[0]:.1f} ms (min {figures[1]:.1f}, max {figures[2]:.1f})"


def db_bytes(path: Path) -> tuple[int, dict[str, int]]:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    tables = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    conn.close()
    return os.path.getsize(path), tables


def chain(slots: int, rng: random.Random) -> list[int]:
    """The network height at each slot: one epoch per slot, a head held over null rounds."""
    heights: list[int] = []
    h = 3_000_000
    for _ in range(slots):
        h += 1
        heights.append(h if rng.random() >= 0.03 else heights[-1] if heights else h)
    return heights


def day_transitions(i: int, per_day: int, start: float, rng: random.Random) -> list[Transition]:
    out: list[Transition] = []
    mark: Mark | None = None
    times = sorted(start + rng.uniform(0, DAY) for _ in range(per_day))
    states = ["in_consensus"] + ["lagging", "in_consensus"] * per_day
    for at, state in zip([start, *times], states, strict=False):
        totals = totals_at(mark, at)
        out.append(Transition(peer(i), at, state, None, totals))
        mark = Mark(at, state, totals)
    return out


def bytes_per_day(nodes: int, per_day: int, workdir: Path) -> None:
    rng = random.Random(1)
    slots = DAY // EPOCH
    net = chain(slots, rng)
    first = T0 // EPOCH
    store = HistoryStore(workdir / "day.db")
    store.start_run(T0)
    naive = sqlite3.connect(workdir / "naive.db")
    naive.execute(
        "CREATE TABLE samples (node INTEGER, at INTEGER, height INTEGER, lag INTEGER, "
        "PRIMARY KEY (node, at)) WITHOUT ROWID"
    )
    t = time.perf_counter()
    for hour in range(24):
        batch = Batch(run_started=T0, alive_until=T0 + (hour + 1) * 3600)
        rows = []
        for i in range(nodes):
            enc = ChunkEncoder((first // HOUR_SLOTS) + hour)
            for k in range(hour * HOUR_SLOTS, (hour + 1) * HOUR_SLOTS):
                late = rng.random() < 0.05
                height = net[k] - 1 if late else net[k]
                enc.add(first + k, height, int(late))
                if i % 10 == 0:
                    rows.append((i, (first + k) * EPOCH, height, int(late)))
            batch.chunks[(peer(i), enc.hour)] = enc
        if hour == 0:
            for i in range(nodes):
                batch.transitions.extend(day_transitions(i, per_day, T0, rng))
        store.write(batch)
        naive.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", rows)
        naive.commit()
    store.close()
    naive.close()
    took = time.perf_counter() - t
    size, tables = db_bytes(workdir / "day.db")
    naive_size, _ = db_bytes(workdir / "naive.db")
    heights = tables.get("history_heights", 0)
    trans = sum(v for k, v in tables.items() if k.startswith("history_transitions"))
    print(f"1. one day, {nodes} nodes, {slots} height samples and {per_day} transitions each")
    per_node = f"{size / nodes:.0f} bytes/node/day"
    print(f"   db file {size / 1e6:.1f} MB = {per_node} (written in {took:.0f} s)")
    print(
        f"   heights {heights / nodes:.0f} B/node/day ({heights / nodes / slots:.2f} B/sample), "
        f"transitions {trans / nodes:.0f} B/node/day, "
        f"peers {tables.get('history_peers', 0) / nodes:.0f} B/node"
    )
    naive_nodes = math.ceil(nodes / 10)
    print(
        f"   naive one row per sample: {naive_size / naive_nodes:.0f} bytes/node/day "
        f"({naive_size / naive_nodes / slots:.1f} B/sample)"
    )
    print(
        f"   at 30 days' retention: {size * 30 / 1e9:.2f} GB for {nodes} nodes "
        f"(naive: {naive_size / naive_nodes * nodes * 30 / 1e9:.1f} GB)"
    )


def uptime_refresh(nodes: int, per_day: int, days: int, workdir: Path) -> None:
    rng = random.Random(2)
    path = workdir / "month.db"
    store = HistoryStore(path)
    start = T0 - days * DAY
    store.start_run(start)
    marks: dict[str, Mark] = {}
    t = time.perf_counter()
    for d in range(days):
        batch = Batch(run_started=start, alive_until=start + (d + 1) * DAY)
        for i in range(nodes):
            day = day_transitions(i, per_day, start + d * DAY, rng)
            last = marks.get(peer(i))
            if last is not None:  # continue the node's totals across days
                base = totals_at(last, day[0].at)
                day = [
                    t._replace(totals=Totals(*(a + b for a, b in zip(t.totals, base, strict=True))))
                    for t in day
                ]
            batch.transitions.extend(day)
            marks[peer(i)] = Mark(day[-1].at, day[-1].state, day[-1].totals)
        store.write(batch)
    size, _ = db_bytes(path)
    count = nodes * days * (per_day + 1)
    print(
        f"2. uptime refresh over {days} days: {count:,} transitions "
        f"({size / 1e6:.0f} MB, written in {time.perf_counter() - t:.0f} s)"
    )
    reader = store.reader()
    now = float(T0)
    windows = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
    for name, seconds in windows.items():
        lookups = timed(partial(reader.marks_at, now - seconds), 3)
        print(f"   marks at the {name} start, all nodes: {ms(lookups)}")
    starts = {name: (now - s, reader.marks_at(now - s)) for name, s in windows.items()}
    arithmetic = timed(partial(uptime_table, starts, marks, now), 3)
    print(f"   the arithmetic, 3 windows x {nodes} nodes: {ms(arithmetic)}")
    reader.close()
    store.close()


def tracker_cost(nodes: int, workdir: Path) -> None:
    now = float(T0 + 5)  # inside a slot
    fleet = sample_fleet(nodes, now - 1)
    snap = fleet.snapshot(now)
    print(f"3. the tracker at {nodes} nodes, once a second")
    print(f"   fleet snapshot (what it reads): {ms(timed(lambda: fleet.snapshot(now)))}")
    service = HistoryService(HistoryStore(workdir / "tracker.db"), lambda: snap)
    service.observe(snap)  # every node's first transition
    service._batch = Batch()
    inside = timed(lambda: service.observe(snap))
    print(f"   a tick inside a slot (no change, no sample): {ms(inside)}")
    slot_times = []
    batches = []
    for k in range(1, 6):
        later = dataclasses.replace(snap, taken_at=now + k * EPOCH)  # the nodes still up
        service._batch = Batch(run_started=T0, alive_until=now)
        t = time.perf_counter()
        service.observe(later)
        slot_times.append((time.perf_counter() - t) * 1000)
        batches.append(service._batch)
    print(
        f"   the first tick of a slot (every node samples): {statistics.median(slot_times):.1f} ms "
        f"(min {min(slot_times):.1f}, max {max(slot_times):.1f})"
    )
    service.store.start_run(now)
    flushes = timed(lambda: service.store.write(batches.pop()), 5)
    print(f"   the next flush ({nodes} chunks rewritten, worker thread): {ms(flushes)}")
    tracker = HistoryTracker()
    tracker.observe_snapshot(snap)
    alone = timed(partial(tracker.observe_snapshot, snap))
    print(f"   HistoryTracker.observe alone, steady: {ms(alone)}")
    service.store.close()


def one_history(nodes: int, workdir: Path) -> None:
    store = HistoryStore(workdir / "day.db")
    reader = store.reader()
    f = timed(lambda: reader.history(peer(nodes // 2), T0 - 29 * DAY, T0 + DAY, 10_000), 5)
    rows = reader.history(peer(nodes // 2), T0 - 29 * DAY, T0 + DAY, 10_000)
    assert rows is not None
    print(f"4. one node's history over 30 days (1 stored): {ms(f)}, {len(rows.heights)} heights")
    reader.close()
    store.close()


def memory_and_json(nodes: int, workdir: Path) -> None:
    from aggregator.http import node_json

    hour = float(T0)  # an hour boundary
    fleet = sample_fleet(nodes, hour)
    snap = fleet.snapshot(hour + 1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    service = HistoryService(HistoryStore(workdir / "memory.db"), lambda: snap)
    for k in range(HOUR_SLOTS):  # a full hour of samples in the open chunks
        service.observe(dataclasses.replace(snap, taken_at=hour + k * EPOCH + 1))
        service._batch = Batch()
    held = tracemalloc.get_traced_memory()[0] - base
    service.uptime = uptime_table(
        {n: (hour, {}) for n in ("24h", "7d", "30d")}, service.tracker.marks, hour + DAY
    )
    cached = tracemalloc.get_traced_memory()[0] - base - held
    tracemalloc.stop()
    print(f"5. memory at {nodes} nodes: tracker marks, an hour's open chunks {held / 1e6:.1f} MB,")
    print(f"   the uptime cache {cached / 1e6:.1f} MB")

    def provider(peer_id: str) -> dict[str, Any]:
        return service.uptime[peer_id]

    def dump(uptime: Callable[[str], dict[str, Any]] | None) -> int:
        return len(json.dumps([node_json(v, uptime) for v in snap.nodes]))

    plain, with_uptime = timed(lambda: dump(None), 3), timed(lambda: dump(provider), 3)
    print(
        f"   /api/v1/nodes body: {dump(None) / 1e6:.1f} MB in {ms(plain)}; with uptime "
        f"{dump(provider) / 1e6:.1f} MB in {ms(with_uptime)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--transitions-per-day", type=int, default=4)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bytes_per_day(args.nodes, args.transitions_per_day, workdir)
        uptime_refresh(args.nodes, args.transitions_per_day, args.days, workdir)
        tracker_cost(args.nodes, workdir)
        one_history(args.nodes, workdir)
        memory_and_json(args.nodes, workdir)


if __name__ == "__main__":
    main()
