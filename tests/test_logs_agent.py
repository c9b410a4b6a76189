"""The real agent redialing a dead aggregator: its log says so once (WARNING), py-libp2p's
dial errors are DEBUG lines, and `--log-format json` types the fields.

bench/bench_agent_logs.py runs the 40 s / 3 s case and prints the counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.bench_agent_logs import count_levels, dead_target

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, seconds: float, *extra: str) -> str:
    cmd = [
        sys.executable, "-m", "heartbeat", "run",
        "--target", dead_target(),
        "--reconnect-period", "1s",
        "--head-source", "static",
        "--identity-file", str(tmp_path / "agent.key"),
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIL_HEARTBEAT_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return err


def test_a_dead_target_redialed_every_second_logs_one_warning(tmp_path: Path) -> None:
    err = _run(tmp_path, 12.0)
    levels, loud = count_levels(err)
    assert "libp2p" not in err, err  # py-libp2p's dial errors: DEBUG, not shown at INFO
    assert loud == {"WARNING heartbeat.agent.loop": 1}, err
    assert levels["INFO"] >= 2 and levels["OTHER"] == 0, err  # started, stopped; no traceback
    warning = next(line for line in err.splitlines() if " WARNING " in line)
    assert "dial_failed" in warning and "attempts=1" in warning
    assert "agent_stopped clean=True" in err


def test_at_debug_level_the_libp2p_dial_errors_are_debug_lines(tmp_path: Path) -> None:
    err = _run(tmp_path, 5.0, "--log-level", "debug", "--log-format", "json")
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    tcp = [o for o in lines if o["logger"] == "libp2p.transport.tcp.tcp"]
    assert tcp and all(o["level"] == "DEBUG" for o in tcp), err
    assert any(o["msg"].startswith("Failed to open TCP stream") for o in tcp)
    failed = [o for o in lines if o["event"] == "dial_failed"]
    assert failed[0]["level"] == "WARNING" and failed[0]["attempts"] == 1
    assert [o["attempts"] for o in failed] == list(range(1, len(failed) + 1))
    assert all(o["level"] == "DEBUG" for o in failed[1:])
    started = next(o for o in lines if o["event"] == "agent_started")
    assert started["targets"] == 1 and started["head_source"] == "static"
    stopped = next(o for o in lines if o["event"] == "agent_stopped")
    assert stopped["clean"] is True
