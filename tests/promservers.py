"""Real Prometheus and Alertmanager (Debian's packages) for end-to-end tests.

Each server runs on 127.0.0.1 on a free port, with its data directory under the test's temp
folder, and is stopped (SIGTERM, then SIGKILL) when its context exits, whatever happened.
`fast_rules` writes a test copy of grafana/prometheus/rules.yml with every `for` shortened,
so that an alert fires in seconds instead of minutes; the expressions stay those of the
real file.

Tests that need one of these tools carry `@pytest.mark.requires_tools("promtool", ...)`
(see tests/conftest.py and `require_tools`): locally a missing tool skips the test with
the package to install; under CI (`CI=true`) it fails it, so a broken set-up shows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import eventually_blocking

__all__ = [
    "ALERTMANAGER_BIN",
    "HTTP_NOT_YET",
    "PROMETHEUS_BIN",
    "REPO",
    "TOOLS",
    "Server",
    "alertmanager",
    "fast_rules",
    "free_port",
    "prometheus",
    "require_tools",
    "stop_process",
    "tool_path",
]

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "grafana" / "prometheus" / "rules.yml"
#: The system tools tests drive: the names each goes by and the Debian package that has it.
TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "promtool": (("promtool",), "prometheus"),
    "prometheus": (("prometheus",), "prometheus"),
    "alertmanager": (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    "amtool": (("amtool",), "prometheus-alertmanager"),
    "nats-server": (("nats-server",), "nats-server"),
}


def tool_path(tool: str) -> str | None:
    """Where `tool` (a key of TOOLS, or a plain command name) is installed, if it is."""
    names, _ = TOOLS.get(tool, ((tool,), "?"))
    return next((path for name in names if (path := shutil.which(name))), None)


def require_tools(*tools: str, environ: Mapping[str, str] = os.environ) -> None:
    """Skip the calling test when a tool is missing, or fail it under CI (`CI=true`)."""
    missing = [
        f"{tool} (Debian package {TOOLS.get(tool, ((), '?'))[1]})"
        for tool in tools
        if tool_path(tool) is None
    ]
    if not missing:
        return
    reason = f"not installed: {', '.join(missing)}; `scripts/setup --system` installs them"
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing tool is a broken set-up)", pytrace=False)
    pytest.skip(reason)


PROMETHEUS_BIN = tool_path("prometheus")
ALERTMANAGER_BIN = tool_path("alertmanager")
#: What a poll of a server that is still starting (or restarting) raises.
HTTP_NOT_YET = (httpx.HTTPError, OSError)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; always reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextlib.contextmanager
def _serve(args: Sequence[str], url: str, data_dir: Path, log_path: Path) -> Iterator[Server]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Server(proc, url, data_dir, log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{server.log()}")
            return httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200

        eventually_blocking(ready, timeout=30, what=f"{args[0]} ready", transient=HTTP_NOT_YET)
        yield server
    finally:
        stop_process(proc)


@contextlib.contextmanager
def alertmanager(tmp: Path, config: dict[str, Any] | None = None) -> Iterator[Server]:
    """Alertmanager with `config` (default: one null receiver), clustering off."""
    if ALERTMANAGER_BIN is None:
        raise RuntimeError("prometheus-alertmanager is not installed")
    base = tmp / "alertmanager"
    (base / "data").mkdir(parents=True)
    config = config or {
        "route": {
            "receiver": "null",
            "group_by": ["alertname", "peer_id"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "null"}],
    }
    (base / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        ALERTMANAGER_BIN,
        f"--config.file={base / 'alertmanager.yml'}",
        f"--storage.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=info",
    ]
    with _serve(args, f"http://127.0.0.1:{port}", base / "data", base / "log") as server:
        yield server


@contextlib.contextmanager
def prometheus(
    tmp: Path,
    *,
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_url: str | None = None,
    interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
    extra_scrape_configs: Sequence[dict[str, Any]] = (),
) -> Iterator[Server]:
    """Prometheus scraping `targets` (host:port) as job fil-heartbeat-aggregator; with
    `external_labels` (dropped from the alerts, as grafana/prometheus/prometheus.yml does
    with runbook_base_url); `extra_scrape_configs`: more jobs, as in its scrape_configs."""
    if PROMETHEUS_BIN is None:
        raise RuntimeError("prometheus is not installed")
    base = tmp / "prometheus"
    (base / "data").mkdir(parents=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "fil-heartbeat-aggregator",
                "static_configs": [{"targets": list(targets)}],
            },
            *extra_scrape_configs,
        ],
    }
    if external_labels:
        config["global"]["external_labels"] = dict(external_labels)
    if alertmanager_url is not None:
        host = alertmanager_url.removeprefix("http://")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        if external_labels:
            drop = "|".join(external_labels)
            config["alerting"]["alert_relabel_configs"] = [{"action": "labeldrop", "regex": drop}]
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        PROMETHEUS_BIN,
        f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    with _serve(args, f"http://127.0.0.1:{port}", base / "data", base / "log") as server:
        yield server


def fast_rules(dst: Path, for_: str = "2s", source: Path = RULES) -> Path:
    """A copy of the rules with every alert's `for` set to `for_` (expressions unchanged)."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst
