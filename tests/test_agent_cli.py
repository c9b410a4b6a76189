"""The `fil-heartbeat` command line, run as a subprocess; and the metrics endpoint."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from heartbeat.agent.head import Head
from heartbeat.agent.loop import BeatLoop
from heartbeat.agent.metrics import make_registry, serve_metrics
from heartbeat.agent.sources import StaticHeadSource
from heartbeat.agent.targets import parse_target
from heartbeat.version import __version__

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
TARGET = f"/ip4/127.0.0.1/tcp/9081/p2p/{PEER}"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FIL_HEARTBEAT_") and not k.endswith("_API_INFO")
    }
    return subprocess.run(
        [sys.executable, "-m", "heartbeat", *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_bad_settings_exit_2_with_one_line() -> None:
    result = cli("run", "--target", TARGET, "--head-source", "static", "--beat-period", "3")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD" in result.stderr
    # no subcommand = run; env var named too
    result = cli("--head-source", "static", env={"FIL_HEARTBEAT_TARGETS": "/ip4/1.2.3.4/tcp/1"})
    assert result.returncode == 2
    assert "FIL_HEARTBEAT_TARGETS" in result.stderr and "/p2p/" in result.stderr
    result = cli("--target", TARGET)
    assert result.returncode == 2
    assert "FULLNODE_API_INFO" in result.stderr and "static|simulated" in result.stderr


def test_id_creates_a_private_key_and_is_stable(tmp_path: Path) -> None:
    key = tmp_path / "state" / "agent.key"
    first = cli("id", "--identity-file", str(key))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = cli("id", env={"FIL_HEARTBEAT_IDENTITY_FILE": str(key)})
    assert again.stdout == first.stdout
    assert first.stdout.strip().startswith("12D3KooW")


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


async def test_metrics_endpoint() -> None:
    head = Head(cids=("bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2",), height=77)
    source = StaticHeadSource(head)

    class NeverConnects:
        async def connect(self, target: object) -> object:
            raise ConnectionRefusedError("nope")

    loop = BeatLoop(parse_target(TARGET), NeverConnects(), lambda: source.latest)  # type: ignore[arg-type]
    loop.stats.dial_attempts = 3
    loop.stats.beats_sent = 5
    loop.stats.streams_died_early = 2
    async with trio.open_nursery() as nursery:
        bind = await nursery.start(serve_metrics, make_registry([loop], source), "127.0.0.1", 0)
        url = bind if bind.startswith("http") else f"http://{bind}"
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/metrics")
            missing = await client.get(f"{url}/nope")
        nursery.cancel_scope.cancel()
    assert response.status_code == 200
    text = response.text
    labels = f'role="primary",target="{TARGET}"'
    assert f"fil_heartbeat_agent_target_connected{{{labels}}} 0.0" in text
    assert f"fil_heartbeat_agent_beats_sent_total{{{labels}}} 5.0" in text
    assert f"fil_heartbeat_agent_reconnect_attempts_total{{{labels}}} 3.0" in text
    assert f"fil_heartbeat_agent_streams_died_early_total{{{labels}}} 2.0" in text
    assert 'fil_heartbeat_agent_head_source_reachable{mode="static"} 1.0' in text
    assert "fil_heartbeat_agent_head_height 77.0" in text
    assert 'fil_heartbeat_agent_source_state{state="ok"} 1.0' in text
    assert 'fil_heartbeat_agent_source_state{state="unauthorized"} 0.0' in text
    assert f"fil_heartbeat_agent_extra_beats_total{{{labels}}} 0.0" in text
    assert missing.status_code == 404


def test_metrics_listen_on_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        key = tmp_path / "agent.key"
        result = cli(
            "run",
            "--target",
            TARGET,
            "--head-source",
            "static",
            "--identity-file",
            str(key),
            "--metrics-listen",
            f"127.0.0.1:{port}",
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "--metrics-listen / FIL_HEARTBEAT_METRICS_LISTEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not key.exists()  # checked before the identity was created


def test_identity_file_readable_by_others_exits_2_naming_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    assert cli("id", "--identity-file", str(key)).returncode == 0
    key.chmod(0o644)
    for args in (("id",), ("run", "--target", TARGET, "--head-source", "static")):
        result = cli(*args, "--identity-file", str(key))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"chmod 600 {key}" in result.stderr
