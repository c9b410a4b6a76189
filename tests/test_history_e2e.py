"""Node history over a real aggregator (a subprocess) with real agents on loopback.

Agents (the load generator) beat; the history JSON, both CSVs and each node's `uptime` are
read over HTTP. Then the aggregator is killed with SIGKILL: its alive mark in the state db is
at most one flush interval old, and after a restart the time it was away is a gap, left out
of the uptime.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bench.common import AggregatorProcess, LoadgenProcess, http_get
from tests.helpers import eventually_blocking

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FLUSH = 1.0  # the store flush interval: what a SIGKILL may lose


def _get(agg: AggregatorProcess, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(agg.http_url + path, timeout=10) as resp:
            return resp.status, resp.headers["content-type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read()


def _json(agg: AggregatorProcess, path: str) -> Any:
    return json.loads(http_get(agg.http_url + path))


def _alive_until(db: Path) -> float:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)) as conn:
        return float(conn.execute("SELECT max(alive_until) FROM history_runs").fetchone()[0])


def _agents(agg: AggregatorProcess, seconds: str) -> LoadgenProcess:
    return LoadgenProcess(
        agg.multiaddr,
        "--agents", "3",
        "--beat-period", "1s",
        "--duration", seconds,
        "--reconnect-period", "1s",
        "--key-seed", "history",
    )  # fmt: skip


def test_history_csv_uptime_and_a_sigkill_gap(tmp_path: Path) -> None:
    workdir = tmp_path / "agg"
    db = workdir / "aggregator.db"
    env = {"FIL_HEARTBEAT_AGGREGATOR_STORE_FLUSH_INTERVAL": f"{FLUSH}s"}
    agg = AggregatorProcess.start(workdir, "--probation", "0", env=env)
    agents = _agents(agg, "12s")
    try:
        eventually_blocking(
            lambda: sum(n["state"] == "in_consensus" for n in agg.nodes()) == 3,
            timeout=30,
            what="three nodes in consensus",
        )
        # the tracker runs once a second: a node in consensus has its uptime from then on
        eventually_blocking(
            lambda: all(n["uptime"]["24h"]["available"] is not None for n in agg.nodes()),
            timeout=10,
            what="every node's uptime",
        )
        node = agg.nodes()[0]
        peer = node["peer_id"]
        assert set(node["uptime"]) == {"24h", "7d", "30d"}
        assert node["uptime"]["24h"]["available"] == pytest.approx(1.0)
        assert 0 < node["uptime"]["24h"]["healthy"] <= 1  # in consensus once all three beat
        assert node["uptime"]["30d"]["excluded_seconds"] > 30 * 86_400 - 60
        assert set(_json(agg, f"/api/v1/nodes/{peer}")["uptime"]["7d"]) == {
            "available",
            "healthy",
            "excluded_seconds",
        }

        time.sleep(2 * FLUSH + 0.5)  # flushed
        history = _json(agg, f"/api/v1/nodes/{peer}/history")
        assert history["peer_id"] == peer
        assert history["until"] - history["since"] == 86_400
        assert [t["state"] for t in history["transitions"]][-1] == "in_consensus"
        assert history["heights"] and history["heights"][0]["at"] % 30 == 0
        assert history["gaps"] == []
        assert history["uptime"]["available"] == pytest.approx(1.0)

        status, ctype, body = _get(agg, f"/api/v1/nodes/{peer}/history.csv")
        assert status == 200 and ctype.startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert {r["kind"] for r in rows} == {"transition", "height"}
        assert all(r["peer_id"] == peer for r in rows)
        assert body.endswith(b"\r\n")

        status, _, body = _get(agg, "/api/v1/uptime.csv?window=7d")
        assert status == 200
        table = list(csv.reader(io.StringIO(body.decode())))
        assert table[0] == [
            "peer_id",
            "nickname",
            "miner",
            "window",
            "available",
            "healthy",
            "excluded_seconds",
        ]
        assert len(table) == 4 and {r[3] for r in table[1:]} == {"7d"}
        assert all(float(r[4]) == pytest.approx(1.0) for r in table[1:])

        for bad in ("?since=yesterday", "?since=200&until=100", "?until=-5"):
            status, ctype, body = _get(agg, f"/api/v1/nodes/{peer}/history{bad}")
            assert status == 400 and ctype == "application/json", bad
            assert "error" in json.loads(body)
        assert _get(agg, "/api/v1/uptime.csv?window=1y")[0] == 400
        status, _, body = _get(agg, "/api/v1/nodes/12D3KooWNobody/history")
        assert status == 404 and json.loads(body)["error"] == "unknown peer"

        # SIGKILL: what the history lost is at most the last flush interval
        time.sleep(1.5)
        killed_at = time.time()
        agg.kill()
        alive = _alive_until(db)
        assert killed_at - FLUSH - 0.5 <= alive <= killed_at
    finally:
        agg.kill()
        agents.result(timeout=60)

    time.sleep(3)  # away
    agg = AggregatorProcess.start(workdir, "--probation", "0", env=env)
    agents = _agents(agg, "6s")
    try:
        since = int(alive) - 60

        def back() -> bool:  # in the history within a tracker tick (1 s)
            h = _json(agg, f"/api/v1/nodes/{peer}/history?since={since}")
            return bool(h["transitions"]) and h["transitions"][-1]["state"] == "in_consensus"

        eventually_blocking(back, timeout=30, what="the node back in consensus")
        history = _json(agg, f"/api/v1/nodes/{peer}/history?since={since}")
        [gap] = history["gaps"]
        assert gap["from"] == pytest.approx(alive)
        assert gap["to"] - gap["from"] >= 3
        states = [t["state"] for t in history["transitions"]]
        assert "unknown" not in states and states[-1] == "in_consensus"
        # the gap is left out of the uptime: excluded, not down
        assert history["uptime"]["excluded_seconds"] >= gap["to"] - gap["from"]
        assert history["uptime"]["available"] > 0.5
        # SIGTERM: the final flush marks the run alive until the stop
        stopping = time.time()
        assert agg.stop() == 0
        assert _alive_until(db) >= stopping
    finally:
        agg.stop()
        agents.result(timeout=60)
