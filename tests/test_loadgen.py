"""The load generator: its pure planning and summaries, its CLI guard rails, and a short real
run against an in-process aggregator on loopback."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from heartbeat.agent.cli import main as agent_main
from heartbeat.errors import ConfigError
from heartbeat.protocol.wire import BeatDecoder, encode_cbor
from heartbeat.tools import loadgen
from heartbeat.tools.loadgen import (
    KINDS,
    AgentStats,
    LoadgenConfig,
    assign_kinds,
    format_table,
    head_for,
    is_loopback_target,
    merge_reports,
    parse_mix,
    parse_rate,
    parse_stamp,
    run_worker,
    stamp_version,
    summarize,
)
from tests.helpers import assert_counted_by_reason, eventually
from tests.test_aggregator_e2e import make_config, running

PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
LOOPBACK = f"/ip4/127.0.0.1/tcp/9081/p2p/{PEER}"


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "healthy=90,lagging=5,forked=3,flapping=2",
            (("healthy", 90), ("lagging", 5), ("forked", 3), ("flapping", 2)),
        ),
        ("healthy", (("healthy", 1),)),
        (" garbage=1 , garbage=2,silent=0", (("garbage", 3),)),
    ],
)
def test_parse_mix(text: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_mix(text) == expected


@pytest.mark.parametrize("text", ["zombie=1", "healthy=x", "healthy=-1", "healthy=0", ""])
def test_parse_mix_refuses(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mix(text)
    assert info.value.setting == "--mix"


@pytest.mark.parametrize(
    ("text", "per_second"), [("50/s", 50.0), ("50", 50.0), ("3000/m", 50.0), ("7200/h", 2.0)]
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["0/s", "-3/s", "fast", "5/day", "nan/s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        (f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", True),
        (f"/ip4/127.5.6.7/tcp/1/p2p/{PEER}", True),
        (f"/ip6/::1/tcp/1/p2p/{PEER}", True),
        (f"/dns4/localhost/tcp/1/p2p/{PEER}", True),
        (f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}", False),
        (f"/ip4/0.0.0.0/tcp/1/p2p/{PEER}", False),
        (f"/dns4/example.com/tcp/1/p2p/{PEER}", False),
        ("/ip4/not-an-ip/tcp/1", False),
        ("", False),
    ],
)
def test_is_loopback_target(addr: str, loopback: bool) -> None:
    assert is_loopback_target(addr) is loopback


def test_assign_kinds_counts_and_interleaving() -> None:
    mix = (("healthy", 90), ("lagging", 5), ("forked", 3), ("flapping", 2))
    kinds = assign_kinds(1000, mix)
    assert Counter(kinds) == {"healthy": 900, "lagging": 50, "forked": 30, "flapping": 20}
    # Interleaved: the first tenth already holds its share of every kind (within one).
    first = Counter(kinds[:100])
    assert first["lagging"] in (4, 5, 6) and first["flapping"] in (1, 2, 3)
    assert assign_kinds(1000, mix) == kinds  # deterministic
    # Rounding: exactly n agents, the largest remainders win.
    three = assign_kinds(3, (("healthy", 1), ("garbage", 1)))
    assert len(three) == 3 and Counter(three)["healthy"] >= 1 and Counter(three)["garbage"] >= 1


def test_head_for_is_a_valid_beat_and_behaviours_differ() -> None:
    now = 1_800_000_000.0
    healthy, lagging, forked = (head_for(k, now, lag=10) for k in ("healthy", "lagging", "forked"))
    assert lagging.height == healthy.height - 10
    assert forked.height == healthy.height and forked.head != healthy.head
    assert head_for("healthy", now + 1) == healthy  # the same epoch: the same head for all
    assert head_for("healthy", now + 30).height == healthy.height + 1
    beat = replace(
        healthy, nickname="lg-healthy-1", miner_address="f010001", version=stamp_version(123456789)
    )
    decoded = BeatDecoder().feed(encode_cbor(beat))
    assert decoded == [beat]
    assert parse_stamp(decoded[0].version) == 123456789  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [None, "", "fil-heartbeat/0.1.0", "lg t=", "lg t=12x"])
def test_parse_stamp_ignores_other_versions(version: str | None) -> None:
    assert parse_stamp(version) is None


def test_config_guard_rails() -> None:
    ok = LoadgenConfig(target=LOOPBACK)
    assert ok.validate() is ok
    refused = {
        "--target": [
            replace(ok, target=f"/ip4/10.1.2.3/tcp/9081/p2p/{PEER}"),
            replace(ok, target="/ip4/127.0.0.1/tcp/9081"),
        ],
        "--agents": [replace(ok, agents=0), replace(ok, agents=loadgen.MAX_AGENTS + 1)],
        "--processes": [
            replace(ok, processes=loadgen.MAX_PROCESSES + 1),
            replace(ok, agents=loadgen.MAX_AGENTS, processes=2),
        ],
        "--duration": [replace(ok, duration=loadgen.MAX_DURATION + 1)],
        "--ramp": [replace(ok, ramp=loadgen.MAX_RAMP * 2)],
        "--storm-at": [replace(ok, storm_at=61.0)],
        "--hog-streams": [replace(ok, hog_streams=1000)],
        "--flood-rate": [replace(ok, flood_rate=1e6)],
        "--beats-per-write": [replace(ok, beats_per_write=0), replace(ok, beats_per_write=257)],
    }
    for setting, configs in refused.items():
        for config in configs:
            with pytest.raises(ConfigError) as info:
                config.validate()
            assert info.value.setting == setting, config
    remote = replace(ok, target=f"/ip4/10.1.2.3/tcp/9081/p2p/{PEER}", allow_remote=True)
    assert remote.validate() is remote


def test_summaries_merge_across_workers() -> None:
    a = AgentStats(
        "healthy",
        started=True,
        connected=True,
        ever_connected=True,
        dials=1,
        sessions=1,
        beats_sent=10,
        recoveries=[1.0],
    )
    b = AgentStats("healthy", started=True, dials=3, beats_sent=5)
    b.failures["dial_failed"] += 2
    c = AgentStats("garbage", started=True, dials=4, cut_off=4, cut_after=[0.1, 0.2])
    c.failures["cut_off"] += 4
    reports = [
        {**summarize([a, c]), "worker": 0, "agents": 2, "rss_kb": 1000},
        {**summarize([b]), "worker": 1, "agents": 1, "rss_kb": 1000},
    ]
    merged = merge_reports(reports, elapsed=12.5)
    healthy = merged["kinds"]["healthy"]
    assert (healthy["agents"], healthy["connected"], healthy["beats_sent"]) == (2, 1, 15)
    assert healthy["failures"] == {"dial_failed": 2}
    assert healthy["recoveries"] == {"count": 1, "p50": 1.0, "p99": 1.0, "max": 1.0}
    assert merged["kinds"]["garbage"]["cut_after"]["max"] == 0.2
    assert merged["totals"]["beats_sent"] == 15 and merged["totals"]["cut_off"] == 4
    assert merged["totals"]["failures"] == {"dial_failed": 2, "cut_off": 4}
    assert list(merged["kinds"]) == ["healthy", "garbage"]  # in KINDS order
    table = format_table(merged)
    assert table.splitlines()[0].split()[:3] == ["kind", "agents", "started"]
    assert "cut_off=4" in table and "elapsed 12.5s" in table


def test_cli_refuses_remote_targets_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    remote = f"/ip4/192.0.2.1/tcp/9081/p2p/{PEER}"
    assert agent_main(["loadgen", "--target", remote]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert agent_main(["loadgen", "--target", LOOPBACK, "--mix", "zombie=1"]) == 2
    assert "unknown behaviour" in capsys.readouterr().err
    assert agent_main(["loadgen", "--target", LOOPBACK, "--duration", "2h"]) == 2


# -- a short real run ------------------------------------------------------------------------


def _received(nodes: dict[str, dict[str, Any]], kind: str) -> int:
    return sum(n["beats_received"] for name, n in nodes.items() if name.startswith(f"lg-{kind}-"))


@pytest.mark.integration
async def test_short_run_against_a_real_aggregator(tmp_path: Path) -> None:
    config = make_config(tmp_path, beat_timeout=3.0, beat_timeout_min=3.0)
    async with running(config) as agg:
        lg = LoadgenConfig(
            target=agg.multiaddrs[0],
            agents=10,
            ramp=50.0,
            duration=6.0,
            beat_period=0.5,
            mix=(
                ("healthy", 4),
                ("lagging", 1),
                ("forked", 1),
                ("garbage", 1),
                ("oversize", 1),
                ("silent", 1),
                ("flood", 1),
            ),
            reconnect_period=10.0,
            flood_rate=200.0,
            key_seed="test",
        ).validate()
        started = time.monotonic()
        report, stats = await run_worker(lg, range(lg.agents))
        assert time.monotonic() - started < lg.duration + lg.close_grace + 4  # stops by itself
        beating = ("healthy", "lagging", "forked")
        async with httpx.AsyncClient(base_url=agg.http_url) as client:

            async def nodes() -> dict[str, dict[str, Any]]:
                data = (await client.get("/api/v1/nodes")).json()
                listed = data["nodes"] if isinstance(data, dict) else data
                return {n["nickname"]: n for n in listed}

            async def all_counted() -> bool:
                seen = await nodes()
                return all(_received(seen, k) >= report["kinds"][k]["beats_sent"] for k in beating)

            try:  # the last beats may still be on their way through the aggregator
                await eventually(all_counted, timeout=10)
            except trio.TooSlowError:
                pass  # the assertions below say what is missing
            seen = await nodes()
            metrics = (await client.get("/metrics")).text

    by_kind: dict[str, list[AgentStats]] = {}
    for s in stats:
        by_kind.setdefault(s.kind, []).append(s)
    assert sorted(by_kind) == sorted(
        ["healthy", "lagging", "forked", "garbage", "oversize", "silent", "flood"]
    )
    # The well-behaved agents appear in the node list, every beat counted.
    for kind in beating:
        kinds = report["kinds"][kind]
        assert kinds["connected"] == kinds["agents"], kind
        names = [n for n in seen if n.startswith(f"lg-{kind}-")]
        assert len(names) == kinds["agents"], kind
        assert _received(seen, kind) == kinds["beats_sent"], kind
    assert report["kinds"]["healthy"]["beats_sent"] >= 4 * 8
    # The hostile ones were cut off, and the aggregator counted them by reason.
    assert report["kinds"]["garbage"]["cut_off"] >= 1
    assert report["kinds"]["oversize"]["cut_off"] >= 1
    assert report["kinds"]["silent"]["cut_off"] >= 1
    assert report["kinds"]["flood"]["cut_off"] >= 1
    counters = agg.ingest.counters
    assert_counted_by_reason(report["kinds"]["garbage"], counters.decode_errors["malformed_cbor"])
    assert_counted_by_reason(report["kinds"]["oversize"], counters.decode_errors["oversize"])
    assert_counted_by_reason(report["kinds"]["silent"], counters.peers_disconnected["read_timeout"])
    assert counters.peers_disconnected["flooding"] >= report["kinds"]["flood"]["cut_off"]
    assert 'fil_heartbeat_decode_errors_total{reason="malformed_cbor"}' in metrics
    assert all(k in KINDS for k in report["kinds"])
    assert not any(n.startswith(("lg-garbage-", "lg-oversize-", "lg-silent-")) for n in seen)


@pytest.mark.integration
@pytest.mark.parametrize(("beats_per_write", "beats_per_frame"), [(1, 1), (16, 1), (5, 3)])
async def test_packed_writes_are_every_beat_counted(
    tmp_path: Path, beats_per_write: int, beats_per_frame: int
) -> None:
    """Several Yamux frames in one Noise message (and several beats per frame): the real
    aggregator counts every beat the load generator says it sent, nothing refused."""
    config = make_config(tmp_path, rate_limit=100_000.0, rate_burst=100_000, flood_drops=10**9)
    async with running(config) as agg:
        lg = LoadgenConfig(
            target=agg.multiaddrs[0],
            agents=3,
            ramp=50.0,
            duration=3.0,
            beat_period=0.01,
            beats_per_write=beats_per_write,
            beats_per_frame=beats_per_frame,
            key_seed="packed",
        ).validate()
        report, _ = await run_worker(lg, range(lg.agents))
        sent = int(report["kinds"]["healthy"]["beats_sent"])
        async with httpx.AsyncClient(base_url=agg.http_url) as client:

            async def received() -> int:
                data = (await client.get("/api/v1/nodes")).json()
                listed = data["nodes"] if isinstance(data, dict) else data
                return _received({n["nickname"]: n for n in listed}, "healthy")

            async def all_counted() -> bool:
                return await received() >= sent

            try:
                await eventually(all_counted, timeout=10)
            except trio.TooSlowError:
                pass  # the assertion below says what is missing
            assert await received() == sent
        counters = agg.ingest.counters
    assert report["kinds"]["healthy"]["connected"] == 3
    assert sent >= 3 * 20 * beats_per_write * beats_per_frame  # it really beat, in batches
    assert sent % (beats_per_write * beats_per_frame) == 0
    assert not any(counters.decode_errors.values())
    assert not any(counters.peers_disconnected.values())


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_workers_exit_when_the_load_generator_is_killed() -> None:
    """SIGKILL skips the parent's clean-up: its worker processes notice and exit."""
    import os
    import signal
    import subprocess
    import sys

    from bench.common import proc_children
    from tests.helpers import eventually_blocking

    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heartbeat.tools.loadgen",
            "--target",
            LOOPBACK,
            "--agents",
            "2",
            "--processes",
            "2",
            "--duration",
            "10m",
            "--reconnect-period",
            "1s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def spawned() -> list[int] | None:  # the workers, not multiprocessing's resource tracker
        found = []
        for pid in proc_children(parent.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if b"spawn_main" in cmdline.read():
                        found.append(pid)
            except OSError:
                continue
        return found if len(found) == 2 else None

    try:
        workers = eventually_blocking(spawned, timeout=30, what="two worker processes")
    finally:
        parent.kill()
        parent.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                return stat.read().split(") ", 1)[1].startswith("Z")  # a zombie has exited
        except OSError:
            return True

    eventually_blocking(
        lambda: all(gone(w) for w in workers) or None,
        timeout=15,
        what="the orphaned workers to exit",
    )
    for w in workers:  # never leave one behind, even when the assertion above failed
        if not gone(w):
            os.kill(w, signal.SIGKILL)
