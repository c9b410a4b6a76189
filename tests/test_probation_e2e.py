"""Throwaway peer ids against a real aggregator over real libp2p on loopback.

Many fresh identities (the load generator, each with its own key) beat once and leave; the
registry stays bounded by the probation limits, none of them is persisted or alerted on, and a
legitimate new peer arriving afterwards is still admitted and shown at once (on probation).
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bench.common import AggregatorProcess, LoadgenProcess, run_loadgen
from tests.helpers import eventually_blocking

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

PER_IP, TOTAL, MAX_NODES, JUNK = 10, 20, 40, 60


def _alerts(agg: AggregatorProcess) -> list[Any]:
    with urllib.request.urlopen(agg.http_url + "/api/v1/alerts", timeout=10) as resp:
        return list(json.loads(resp.read()))


def _stored(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)) as conn:
        return int(conn.execute("SELECT count(*) FROM nodes").fetchone()[0])


def test_throwaway_ids_are_bounded_and_a_new_peer_still_gets_in(tmp_path: Path) -> None:
    workdir = tmp_path / "agg"
    agg = AggregatorProcess.start(
        workdir,
        "--probation", "1m",
        "--max-probation", str(TOTAL),
        "--max-probation-per-ip", str(PER_IP),
        "--max-nodes", str(MAX_NODES),
        "--beat-timeout", "10s",
    )  # fmt: skip
    try:
        summary = run_loadgen(
            agg.multiaddr,
            "--agents", str(JUNK),
            "--ramp", "100/s",
            "--beat-period", "1h",  # one beat each, then they hold their connection
            "--duration", "5s",
            "--reconnect-period", "1h",
            "--key-seed", "throwaway",
            timeout=60,
        )  # fmt: skip
        assert summary["kinds"]["healthy"]["agents"] == JUNK
        nodes = agg.nodes()
        # all from 127.0.0.1 and all connected while they arrived: the per-IP bound held
        assert 0 < len(nodes) <= PER_IP
        assert all(n["probation"] for n in nodes)
        assert agg.metric("fil_heartbeat_peers_refused_total", reason="fleet_full") >= JUNK - PER_IP

        legit = LoadgenProcess(
            agg.multiaddr,
            "--agents", "1",
            "--beat-period", "1s",
            "--duration", "8s",
            "--reconnect-period", "1s",
            "--key-seed", "legitimate",
        )  # fmt: skip
        try:
            # the throwaway ids left: down, never through probation, so evicted for it
            eventually_blocking(
                lambda: any(int(n["beats_received"]) >= 2 for n in agg.nodes()),
                timeout=30,
                what="the legitimate peer shown",
            )
        finally:
            legit.result(timeout=60)
        shown = [n for n in agg.nodes() if int(n["beats_received"]) >= 2]
        assert len(shown) == 1 and shown[0]["probation"] is True
        assert len(agg.nodes()) <= PER_IP
        assert _alerts(agg) == []
        assert _stored(workdir / "aggregator.db") == 0  # nobody completed probation
    finally:
        agg.stop()
