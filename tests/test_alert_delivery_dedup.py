"""Both alerting paths into one real Alertmanager: one notification per alert.

The shipped Prometheus rules (`for` shortened, tests/promservers.py) and the aggregator's
built-in alerter (`--alertmanager-url`, default `alertmanager_labels = "prometheus"`) both
raise FilNodeDown for a stopped agent. The built-in alert carries exactly the labels the rule
gives it, so Alertmanager holds one alert and its webhook (a counting HTTP server here) gets
one firing notification with one alert in it, not two, then one recovery. Both run with a
runbook base URL (Prometheus: the external label runbook_base_url, dropped from the alerts
as the example prometheus.yml does; the aggregator: --runbook-base-url): the runbook links
are absolute in both. Every process is stopped in a `finally`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from tests.test_alerting_e2e import agent_args, am_alerts, peer_of, process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.timeout(150),
    pytest.mark.requires_tools("prometheus", "alertmanager"),
]

poll = functools.partial(eventually_blocking, timeout=40, transient=HTTP_NOT_YET)
RUNBOOK_BASE = "https://github.com/example/fil-heartbeat/blob/main"
RUNBOOK = f"{RUNBOOK_BASE}/grafana/RUNBOOK.md#filnodedown"


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def counting_hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    class Hook(_Hook):
        pass

    Hook.bodies = bodies
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def aggregator(tmp: Path, am_url: str) -> Iterator[tuple[str, str]]:
    out = tmp / "aggregator.out"
    args = [
        sys.executable, "-m", "aggregator", "run",
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--http-listen", "127.0.0.1:0",
        "--identity-file", str(tmp / "aggregator.key"),
        "--state-db", str(tmp / "agg.db"),
        "--name", "agg-dedup",
        "--beat-timeout", "5s",
        "--probation", "0s",
        "--alertmanager-url", am_url,
        "--runbook-base-url", RUNBOOK_BASE,
        "--alert-set", "evaluation_interval=0.5",
        "--alert-set", "node_down_for=2s",
        "--alert-set", "keep_firing_for=1s",
        "--alert-set", "resend_interval=2s",
        "--alert-set", "disabled=FilFleetShrunk",
    ]  # fmt: skip
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            args,
            stdout=stdout,
            stderr=(tmp / "aggregator.log").open("wb"),
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    try:

        def ready() -> tuple[str, str] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"aggregator exited {proc.returncode}")
            lines = out.read_text().split()
            http = [x for x in lines if x.startswith("http://")]
            addrs = [x for x in lines if x.startswith("/ip4/127.0.0.1/")]
            return (addrs[0], http[0]) if http and addrs else None

        yield poll(ready, what="the aggregator to listen")
    finally:
        stop_process(proc)


def _node_down_notices(bodies: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    return [
        b
        for b in bodies
        if any(
            a["labels"].get("alertname") == "FilNodeDown" and a["labels"].get("peer_id") == peer
            for a in b["alerts"]
        )
    ]


def _firing_in(url: str, path: str, peer: str) -> dict[str, Any] | None:
    doc = httpx.get(f"{url}{path}", timeout=2.0).json()
    alerts = doc["data"]["alerts"] if isinstance(doc, dict) else doc
    return next(
        (
            a
            for a in alerts
            if a["labels"].get("alertname") == "FilNodeDown"
            and a["labels"].get("peer_id") == peer
            and a["state"] == "firing"
        ),
        None,
    )


def test_prometheus_and_built_in_alerts_make_one_notification(tmp_path: Path) -> None:
    rules = fast_rules(tmp_path / "rules-fast.yml", for_="2s")
    with counting_hook() as (hook_url, bodies):
        am_config = {
            "route": {
                "receiver": "hook",
                "group_by": ["alertname", "peer_id"],
                "group_wait": "2s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {"name": "hook", "webhook_configs": [{"url": hook_url, "send_resolved": True}]}
            ],
        }
        with (
            alertmanager(tmp_path, am_config) as am,
            aggregator(tmp_path, am.url) as (multiaddr, http_url),
            prometheus(
                tmp_path,
                targets=[http_url.removeprefix("http://")],
                rule_files=[rules],
                alertmanager_url=am.url,
                external_labels={"runbook_base_url": RUNBOOK_BASE},
            ) as prom,
            process(agent_args(tmp_path, "bravo", multiaddr), tmp_path / "bravo.log"),
        ):
            alpha_args = agent_args(tmp_path, "alpha", multiaddr)
            with process(alpha_args, tmp_path / "alpha.log"):
                alpha = poll(lambda: peer_of(http_url, "alpha"), what="alpha to beat")
                poll(lambda: peer_of(http_url, "bravo"), what="bravo to beat")
            # alpha stopped: both paths fire...
            by_rule = poll(lambda: _firing_in(prom.url, "/api/v1/alerts", alpha), what="Prometheus")
            built_in = poll(lambda: _firing_in(http_url, "/api/v1/alerts", alpha), what="built-in")
            assert by_rule["annotations"]["runbook"] == RUNBOOK
            assert built_in["annotations"]["runbook"] == RUNBOOK
            poll(lambda: _node_down_notices(bodies, alpha), what="a notification")

            # ...both reached Alertmanager (the built-in one's annotation says whose)...
            def merged() -> bool:
                mine = [
                    a
                    for a in am_alerts(am.url)
                    if a["labels"].get("peer_id") == alpha
                    and a["labels"]["alertname"] == "FilNodeDown"
                ]
                return len(mine) == 1 and "aggregator" not in mine[0]["labels"]

            poll(merged, what="one FilNodeDown alert in Alertmanager")
            time.sleep(6.0)  # several group intervals and resends of both sources
            alerts = [
                a
                for a in am_alerts(am.url)
                if a["labels"].get("peer_id") == alpha and a["labels"]["alertname"] == "FilNodeDown"
            ]
            assert len(alerts) == 1
            assert alerts[0]["annotations"]["runbook"] == RUNBOOK
            assert set(alerts[0]["labels"]) == {
                "alertname",
                "severity",
                "peer_id",
                "nickname",
                "miner",
                "network",
            }
            # ...and the receiver heard of it once, one alert in the notification
            notices = _node_down_notices(bodies, alpha)
            assert len(notices) == 1, json.dumps(notices, indent=1)[:3000]
            assert notices[0]["status"] == "firing" and len(notices[0]["alerts"]) == 1
            metrics = httpx.get(f"{http_url}/metrics", timeout=2.0).text
            sent = [
                line
                for line in metrics.splitlines()
                if line.startswith("fil_heartbeat_alert_notifications_total{")
                and 'kind="alertmanager"' in line
            ]
            assert sent and float(sent[0].rsplit(" ", 1)[1]) >= 2  # fired + resends
            # alpha back: both resolve, and the receiver hears of the recovery
            with process(alpha_args, tmp_path / "alpha2.log"):
                poll(lambda: peer_of(http_url, "alpha") == alpha, what="alpha to return")

                def recovered() -> bool:
                    return any(b["status"] == "resolved" for b in _node_down_notices(bodies, alpha))

                poll(recovered, what="the recovery notification")
                time.sleep(4.0)
            notices = _node_down_notices(bodies, alpha)
            assert [b["status"] for b in notices] == ["firing", "resolved"], json.dumps(
                notices, indent=1
            )[:3000]
