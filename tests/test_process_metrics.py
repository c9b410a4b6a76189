"""Both programs export prometheus_client's `process_*` families on their real /metrics: the
memory, CPU, descriptors and start time of the process that serves them (an operator's first
questions about a daemon that runs for years), checked against what /proc says of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.metrics import create_metrics
from aggregator.self_metrics import process_usage
from tests.helpers import eventually_blocking

REPO = Path(__file__).resolve().parent.parent
PROCESS_FAMILIES = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)
#: Any peer id: the agent's dials to a closed port fail, it keeps running and serving.
UNREACHABLE = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWLx3SYaRUvBMvgeSbswwVgEX5XMc4rZZw15LhKMD1SMV4"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    metrics_url: str
    launched: float  # wall clock just before the launch
    ready: float  # wall clock once it served


@contextmanager
def running(args: Sequence[str], log: Path, url_pattern: str) -> Iterator[Running]:
    """Start `args`, wait for `url_pattern` (one group: HOST:PORT) in its output, stop it."""
    launched = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:

        def bound() -> str | None:
            assert proc.poll() is None, log.read_text(errors="replace")
            found = re.search(url_pattern, log.read_text(errors="replace"))
            return found.group(1) if found else None

        where = eventually_blocking(bound, timeout=30, what=f"{args[2]} to listen")
        yield Running(proc, f"http://{where}/metrics", launched, time.time())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def scrape(url: str) -> dict[str, float]:
    """Every unlabelled sample of the process families."""
    text = httpx.get(url, timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("process_") and not sample.labels
    }


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def assert_describes(values: dict[str, float], run: Running) -> None:
    """The process_* values are those of `run.proc`, not of this test's process."""
    missing = [name for name in PROCESS_FAMILIES if name not in values]
    assert not missing, f"missing {missing} in {sorted(values)}"
    pid = run.proc.pid
    # /proc/stat's boot time has a one-second resolution
    assert run.launched - 2 <= values["process_start_time_seconds"] <= run.ready + 2
    rss = vm_rss_bytes(pid)
    assert 10e6 < values["process_resident_memory_bytes"]
    assert rss / 2 < values["process_resident_memory_bytes"] < rss * 2
    assert 0 < values["process_cpu_seconds_total"] < 600
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(values["process_open_fds"] - fds) <= 16
    assert values["process_max_fds"] >= 1024


@pytest.mark.integration
def test_agent_metrics_endpoint_exports_its_process(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "heartbeat",
        "run",
        "--head-source",
        "static",
        "--target",
        UNREACHABLE,
        "--metrics-listen",
        "127.0.0.1:0",
        "--identity-file",
        str(tmp_path / "agent.key"),
    ]
    with running(
        args, tmp_path / "agent.log", r"metrics_listening binds=http://(127\.0\.0\.1:\d+)"
    ) as run:
        assert_describes(scrape(run.metrics_url), run)


@pytest.mark.integration
def test_aggregator_metrics_exports_its_process(tmp_path: Path) -> None:
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
        str(tmp_path / "agg.key"),
        "--state-db",
        str(tmp_path / "agg.db"),
    ]
    # the HTTP URL, printed on stdout once everything listens
    with running(args, tmp_path / "agg.log", r"(?m)^http://(127\.0\.0\.1:\d+)$") as run:
        assert_describes(scrape(run.metrics_url), run)


@pytest.mark.integration
def test_aggregator_with_workers_exports_each_workers_memory_and_cpu(tmp_path: Path) -> None:
    """process_* describes worker 0; fil_heartbeat_worker_* each worker process."""
    args = [
        sys.executable,
        "-m",
        "aggregator",
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http-listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--identity-file",
        str(tmp_path / "agg.key"),
        "--state-db",
        str(tmp_path / "agg.db"),
    ]
    with running(args, tmp_path / "agg.log", r"(?m)^http://(127\.0\.0\.1:\d+)$") as run:
        base = run.metrics_url.removesuffix("/metrics")
        workers = httpx.get(f"{base}/api/v1/workers", timeout=10).json()
        pids = {str(w["index"]): w["pid"] for w in workers}
        assert set(pids) == {"0", "1"} and pids["0"] == run.proc.pid
        text = httpx.get(run.metrics_url, timeout=10).text
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fil_heartbeat_worker_resident_memory_bytes":
                    rss[sample.labels["worker"]] = sample.value
                elif sample.name == "fil_heartbeat_worker_cpu_seconds_total":
                    cpu[sample.labels["worker"]] = sample.value
        assert set(rss) == set(cpu) == {"0", "1"}
        for worker, pid in pids.items():
            held = vm_rss_bytes(pid)
            assert held / 2 < rss[worker] < held * 2, (worker, rss[worker], held)
            assert 0 < cpu[worker] < 600
        assert_describes(scrape(run.metrics_url), run)  # process_* is worker 0's


def test_process_usage_reads_proc() -> None:
    usage = process_usage(os.getpid())
    assert usage is not None
    resident, seconds = usage
    assert vm_rss_bytes(os.getpid()) / 2 < resident < vm_rss_bytes(os.getpid()) * 2
    assert seconds > 0  # this test process has run Python for a while
    assert process_usage(None) is None
    assert process_usage(2**22 + 12345) is None  # above pid_max: no such process


def test_without_workers_process_families_only() -> None:
    body = create_metrics(lambda: None).render().decode()
    assert "\nprocess_resident_memory_bytes " in body
    assert "fil_heartbeat_worker_resident_memory_bytes{" not in body
