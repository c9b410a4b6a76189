"""Alerting end to end: aggregator + two agents (subprocesses) + Prometheus + Alertmanager.

Stop one agent: FilNodeDown for its peer shows up in Alertmanager's /api/v2/alerts twice,
once from Prometheus (rules.yml with `for` shortened to 2 s, see tests/promservers.py) and
once from the aggregator's built-in alerter (`--alertmanager-url`, `node_down_for=1s`,
label `aggregator` kept by `alertmanager_labels=aggregator`; by default the two are one
alert, tests/test_alert_delivery_dedup.py). Restart it (same identity, same peer id): both
resolve. The start-up test alert (`--alert-test`) arrives too. Every process is stopped in
a `finally`.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import eventually_blocking
from tests.promservers import (
    HTTP_NOT_YET,
    REPO,
    alertmanager,
    fast_rules,
    prometheus,
    stop_process,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.requires_tools("prometheus", "alertmanager"),
]

AGGREGATOR_NAME = "agg-e2e"

#: Every wait here: 30 s, a server still (re)starting counting as "not yet".
poll = functools.partial(eventually_blocking, timeout=30, transient=HTTP_NOT_YET)


@contextlib.contextmanager
def process(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
        )
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def aggregator(tmp: Path, alertmanager_url: str) -> Iterator[tuple[str, str]]:
    """Yields (libp2p multiaddr, http url) once the aggregator prints them."""
    log = tmp / "aggregator.log"
    out = tmp / "aggregator.out"
    args = [
        sys.executable,
        "-m",
        "aggregator",
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http-listen",
        "127.0.0.1:0",
        "--identity-file",
        str(tmp / "aggregator.key"),
        "--state-db",
        str(tmp / "agg.db"),
        "--name",
        AGGREGATOR_NAME,
        "--beat-timeout",
        "10s",
        "--probation",  # the alerts under test start at a node's first beat
        "0s",
        "--alertmanager-url",
        alertmanager_url,
        "--alert-test",
        "--alert-set",
        "evaluation_interval=0.5",
        "--alert-set",
        "node_down_for=1s",
        "--alert-set",
        "keep_firing_for=1s",
        "--alert-set",
        "resend_interval=5s",
        "--alert-set",  # keep the `aggregator` label: two alerts, one from each path
        "alertmanager_labels=aggregator",
    ]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(
            args, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO
        )
    try:

        def ready() -> tuple[str, str] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"aggregator exited {proc.returncode}:\n{log.read_text()}")
            lines = out.read_text().split()
            http = [line for line in lines if line.startswith("http://")]
            addrs = [line for line in lines if line.startswith("/ip4/127.0.0.1/")]
            return (addrs[0], http[0]) if http and addrs else None

        yield poll(ready, what="the aggregator to listen")
    finally:
        stop_process(proc)


def agent_args(tmp: Path, name: str, target: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "heartbeat",
        "run",
        "--target",
        target,
        "--nickname",
        name,
        "--identity-file",
        str(tmp / f"{name}.key"),
        "--head-source",
        "simulated",
        "--seed",
        "7",
        "--block-delay",
        "4s",
        "--beat-period",
        "1s",
        "--reconnect-period",
        "1s",
        "--jitter",
        "0",
        "--miner-address",
        "f01234",
    ]


def am_alerts(am_url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{am_url}/api/v2/alerts", timeout=2.0)
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def node_down(am_url: str, peer_id: str) -> dict[str, str]:
    """Sources ('prometheus' / 'builtin') of the active FilNodeDown alerts for `peer_id`."""
    found = {}
    for a in am_alerts(am_url):
        labels = a["labels"]
        if (
            labels.get("alertname") == "FilNodeDown"
            and labels.get("peer_id") == peer_id
            and a["status"]["state"] == "active"
        ):
            found["builtin" if "aggregator" in labels else "prometheus"] = labels["nickname"]
    return found


def peer_of(http_url: str, nickname: str) -> str | None:
    nodes = httpx.get(f"{http_url}/api/v1/nodes", timeout=2.0).json()
    items = nodes if isinstance(nodes, list) else nodes.get("nodes", [])
    for node in items:
        if node.get("nickname") == nickname and node.get("up"):
            return str(node["peer_id"])
    return None


def test_node_down_alert_fires_and_resolves_through_prometheus_and_built_in(tmp_path: Path) -> None:
    rules = fast_rules(tmp_path / "rules-fast.yml", for_="2s")
    with (
        alertmanager(tmp_path) as am,
        aggregator(tmp_path, am.url) as (multiaddr, http_url),
        prometheus(
            tmp_path,
            targets=[http_url.removeprefix("http://")],
            rule_files=[rules],
            alertmanager_url=am.url,
        ),
        process(agent_args(tmp_path, "bravo", multiaddr), tmp_path / "bravo.log"),
    ):
        alpha_args = agent_args(tmp_path, "alpha", multiaddr)
        with process(alpha_args, tmp_path / "alpha.log"):
            alpha = poll(lambda: peer_of(http_url, "alpha"), what="alpha to beat")
            poll(lambda: peer_of(http_url, "bravo"), what="bravo to beat")
            # the start-up test alert came straight from the aggregator
            names = {a["labels"]["alertname"] for a in am_alerts(am.url)}
            assert "FilHeartbeatTestAlert" in names
            assert node_down(am.url, alpha) == {}
        # alpha stopped: both sources raise FilNodeDown for alpha, none for bravo
        both = {"prometheus": "alpha", "builtin": "alpha"}
        poll(lambda: node_down(am.url, alpha) == both, what="FilNodeDown for alpha")
        bravo = peer_of(http_url, "bravo")
        assert bravo is not None and node_down(am.url, bravo) == {}
        built_in = next(
            a
            for a in am_alerts(am.url)
            if a["labels"].get("peer_id") == alpha
            and a["labels"].get("aggregator") == AGGREGATOR_NAME
        )
        assert built_in["labels"]["severity"] == "critical"
        assert built_in["labels"]["miner"] == "f01234"
        assert "alpha" in built_in["annotations"]["summary"]
        firing = httpx.get(f"{http_url}/api/v1/alerts", timeout=2.0).json()
        assert any(
            a["labels"]["alertname"] == "FilNodeDown" and a["state"] == "firing" for a in firing
        )
        metrics = httpx.get(f"{http_url}/metrics", timeout=2.0).text
        assert (
            'fil_heartbeat_alerts_firing{alertname="FilNodeDown",severity="critical"} 1.0'
            in metrics
        )
        # alpha back with the same identity: both resolve
        with process(alpha_args, tmp_path / "alpha2.log"):
            poll(lambda: peer_of(http_url, "alpha") == alpha, what="alpha to return")
            poll(lambda: node_down(am.url, alpha) == {}, what="FilNodeDown to resolve")
