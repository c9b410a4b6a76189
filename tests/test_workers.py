"""`--workers 2`: two ingest processes on one port and one identity, one fleet.

Real processes on loopback: the aggregator (worker 0, which starts worker 1), and the load
generator's simulated agents (distinct peer ids, Noise + Yamux). The kernel spreads their
connections over both processes (SO_REUSEPORT); worker 0's fleet, /metrics and state db see
them all; a killed worker is restarted and its agents come back; worker 0's death takes its
workers down, and its clean stop stops them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.common import AggregatorProcess, LoadgenProcess, http_get, proc_children
from tests.helpers import assert_counted_by_reason, eventually_blocking

pytestmark = [pytest.mark.integration]

WORKER_FLAGS = ("--workers", "2", "--max-connections-per-ip", "2000")


def _children(pid: int) -> list[int]:
    """`pid`'s live child processes (its ingest workers)."""
    return [p for p in proc_children(pid) if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metric(metrics: Metrics, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in metrics.items() if n == name and want <= set(lab))


def _metrics_once(
    agg: AggregatorProcess, ready: Callable[[Metrics], bool]
) -> Callable[[], Metrics | None]:
    """A poll for eventually_blocking: the aggregator's metrics once `ready` holds for them."""

    def poll() -> Metrics | None:
        metrics = agg.metrics()
        return metrics if ready(metrics) else None

    return poll


def _healthy_up(agg: AggregatorProcess) -> int:
    return sum(1 for n in agg.nodes() if n["nickname"].startswith("lg-healthy-") and n["up"])


def _worker_pid(agg: AggregatorProcess) -> int:
    [pid] = eventually_blocking(lambda: _children(agg.pid), timeout=15, what="worker 1's pid")
    return pid


@pytest.mark.timeout(120)
def test_two_workers_one_fleet_every_beat_and_reject_counted(tmp_path: Path) -> None:
    healthy, garbage = 40, 6
    agg = AggregatorProcess.start(tmp_path / "agg", *WORKER_FLAGS)
    try:
        assert len(_children(agg.pid)) == 1
        lg = LoadgenProcess(
            agg.multiaddr,
            "--agents",
            str(healthy + garbage),
            "--mix",
            f"healthy={healthy},garbage={garbage}",
            "--ramp",
            "100/s",
            "--beat-period",
            "1s",
            "--duration",
            "10s",
            "--reconnect-period",
            "2s",
        )
        # Both processes hold agents, and worker 0's fleet has every one of them, up.
        split = eventually_blocking(
            _metrics_once(
                agg,
                lambda m: all(
                    _metric(m, "fil_heartbeat_worker_connections", worker=w) > 0 for w in "01"
                ),
            ),
            timeout=20,
            what="connections on both workers",
        )
        assert _metric(split, "fil_heartbeat_worker_up", worker="1") == 1
        eventually_blocking(
            lambda: _healthy_up(agg) == healthy, timeout=20, what=f"{healthy} healthy nodes up"
        )
        kinds = lg.result(timeout=60)["kinds"]
        sent = kinds["healthy"]["beats_sent"]

        def counted() -> bool:  # worker 1 reports its counters every second
            m = agg.metrics()
            nodes = sum(
                n["beats_received"] for n in agg.nodes() if n["nickname"].startswith("lg-healthy-")
            )
            errors = _metric(m, "fil_heartbeat_decode_errors_total", reason="malformed_cbor")
            return bool(nodes == sent and errors >= kinds["garbage"]["cut_off"])

        eventually_blocking(counted, timeout=15, what=f"{sent} beats and the garbage counted")
        metrics = agg.metrics()
    finally:
        assert agg.stop() == 0
    assert kinds["healthy"]["connected"] == healthy and kinds["healthy"]["failures"] == {}
    assert sent >= healthy * 5
    # Every beat is in worker 0's counters once, whichever process read it.
    assert _metric(metrics, "fil_heartbeat_beats_accepted_total") == sent
    assert_counted_by_reason(
        kinds["garbage"],
        _metric(metrics, "fil_heartbeat_decode_errors_total", reason="malformed_cbor"),
    )


@pytest.mark.timeout(90)
def test_full_fleet_is_enforced_by_worker_zero_on_every_worker(tmp_path: Path) -> None:
    agents, cap = 24, 6
    agg = AggregatorProcess.start(tmp_path / "agg", *WORKER_FLAGS, "--max-nodes", str(cap))
    lg = LoadgenProcess(
        agg.multiaddr,
        "--agents",
        str(agents),
        "--ramp",
        "100/s",
        "--beat-period",
        "1s",
        "--duration",
        "8s",
        "--reconnect-period",
        "1s",
    )
    try:
        # Agents beyond the cap are refused wherever they landed: worker 1 evicts a peer
        # when worker 0's fleet says it is full. Without the eviction the refused agents that
        # landed on worker 1 (about half) would stay connected there.
        eventually_blocking(
            lambda: (
                _metric(agg.metrics(), "fil_heartbeat_peers_refused_total", reason="fleet_full")
                >= agents - cap
            ),
            timeout=20,
            what="refusals counted",
        )
        metrics = eventually_blocking(
            _metrics_once(agg, lambda m: _metric(m, "fil_heartbeat_connections") <= cap + 2),
            timeout=20,
            what="only the admitted agents connected",
        )
        nodes = agg.nodes()
        lg.result(timeout=60)
    finally:
        assert agg.stop() == 0
    assert len(nodes) == cap
    assert _metric(metrics, "fil_heartbeat_worker_up", worker="1") == 1


@pytest.mark.timeout(120)
def test_killed_worker_is_restarted_and_its_agents_return(tmp_path: Path) -> None:
    agents = 30
    agg = AggregatorProcess.start(tmp_path / "agg", *WORKER_FLAGS)
    lg = LoadgenProcess(
        agg.multiaddr,
        "--agents",
        str(agents),
        "--ramp",
        "100/s",
        "--beat-period",
        "1s",
        "--duration",
        "30s",
        "--reconnect-period",
        "2s",
        "--jitter",
        "0.2",
    )
    try:
        eventually_blocking(
            lambda: _healthy_up(agg) == agents, timeout=20, what=f"{agents} nodes up"
        )
        first = _worker_pid(agg)
        on_worker_1 = eventually_blocking(
            lambda: _metric(agg.metrics(), "fil_heartbeat_worker_connections", worker="1"),
            timeout=10,
            what="agents on worker 1",
        )
        before = _metric(agg.metrics(), "fil_heartbeat_beats_accepted_total")
        os.kill(first, signal.SIGKILL)
        # Its agents are marked down at once (worker 0 publishes the disconnects it could
        # not send), then come back on either process within a reconnect period or two.
        eventually_blocking(
            lambda: _healthy_up(agg) <= agents - on_worker_1,
            timeout=10,
            what="worker 1's agents marked down",
        )
        eventually_blocking(lambda: _healthy_up(agg) == agents, timeout=20, what="every agent back")
        second = eventually_blocking(
            lambda: [p for p in _children(agg.pid) if p != first],
            timeout=20,
            what="a new worker 1",
        )
        metrics = eventually_blocking(
            _metrics_once(agg, lambda m: _metric(m, "fil_heartbeat_worker_up", worker="1") == 1),
            timeout=20,
            what="worker 1 up again",
        )
        assert _metric(metrics, "fil_heartbeat_worker_restarts_total", worker="1") == 1
        assert _metric(metrics, "fil_heartbeat_beats_accepted_total") > before  # never reset
        assert len(second) == 1 and not _alive(first)
        workers = json.loads(http_get(agg.http_url + "/api/v1/workers"))
        assert [(w["index"], w["pid"], w["restarts"]) for w in workers] == [
            (0, agg.pid, 0),
            (1, second[0], 1),
        ]
        summary = lg.result(timeout=60)
    finally:
        assert agg.stop() == 0
    assert summary["kinds"]["healthy"]["connected"] == agents


@pytest.mark.timeout(60)
def test_hung_worker_is_killed_and_restarted(tmp_path: Path) -> None:
    agg = AggregatorProcess.start(tmp_path / "agg", *WORKER_FLAGS, "--worker-watchdog", "2s")
    try:
        hung = _worker_pid(agg)
        os.kill(hung, signal.SIGSTOP)  # alive, linked, silent
        eventually_blocking(lambda: not _alive(hung), timeout=15, what="the hung worker killed")
        metrics = eventually_blocking(
            _metrics_once(agg, lambda m: _metric(m, "fil_heartbeat_worker_up", worker="1") == 1),
            timeout=15,
            what="worker 1 up again",
        )
        assert _metric(metrics, "fil_heartbeat_worker_restarts_total", worker="1") == 1
        assert _children(agg.pid) != [hung]
    finally:
        assert agg.stop() == 0


@pytest.mark.timeout(90)
def test_worker_zero_takes_its_workers_along(tmp_path: Path) -> None:
    workdir = tmp_path / "agg"
    agg = AggregatorProcess.start(workdir, *WORKER_FLAGS)
    worker = _worker_pid(agg)
    agg.kill()  # SIGKILL: worker 1 sees its link close and exits by itself
    eventually_blocking(lambda: not _alive(worker), timeout=15, what="worker 1 gone")
    # The port is free again: a new group starts on it, and a clean stop stops it all.
    again = AggregatorProcess.start(workdir, *WORKER_FLAGS, port=agg.port)
    worker = _worker_pid(again)
    assert again.port == agg.port
    started = time.monotonic()
    assert again.stop() == 0
    assert not _alive(worker) and time.monotonic() - started < 15


def test_worker_subcommand_without_worker_zero_fails_clearly(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "worker",
            "--worker-index",
            "1",
            "--worker-link",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot reach worker 0" in proc.stderr
