"""The README demo runs by itself, shows the three nodes, an alert firing and resolving,
what to open next, and stops on Ctrl-C with one line."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heartbeat.tools.demo import run_demo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


async def test_demo_prints_multiaddr_and_node_lines() -> None:
    out = io.StringIO()
    await run_demo(7.0, block_delay=1.0, refresh=1.0, out=out)
    text = out.getvalue()
    match = re.search(r"^aggregator multiaddr: (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)$", text, re.M)
    assert match, text
    url = re.search(r"^metrics: +(http://127\.0\.0\.1:\d+)/metrics$", text, re.M)
    assert url, text
    # what to open next, and the exact command that points a real agent at it
    assert f"status page:          {url.group(1)}/\n" in text
    assert "FULLNODE_API_INFO=$(lotus auth api-info --perm read | cut -d= -f2)" in text
    assert re.search(rf"fil-heartbeat run --target {re.escape(match.group(1))} --nick", text)
    last = text.rsplit("-- ", 1)[1]
    assert "nodes=3" in last
    lines = {line.split()[0]: line for line in last.splitlines()[1:]}
    assert set(lines) == {"alpha", "bravo", "charlie"}
    assert "in_consensus" in lines["alpha"]
    lag = re.search(r"lag=(\d+)", lines["bravo"])
    assert "lagging" in lines["bravo"] and lag and 6 <= int(lag.group(1)) <= 11  # null rounds


async def test_charlies_absence_fires_and_its_return_resolves_an_alert() -> None:
    """charlie leaves after 8 s for 14 s: FilNodeDown (10 s `for` in the demo) fires while
    it is away and resolves once it is back (5 s hold-down), as /api/v1/alerts says; its
    next absence (from 30 s) has not fired yet at 38 s."""
    out = io.StringIO()
    await run_demo(38.0, block_delay=1.0, out=out, present=8.0, away=14.0)
    text = out.getvalue()
    alerts = [line for line in text.splitlines() if " ALERT " in line]
    assert [a.split(" ALERT ", 1)[1].split(":")[0].split(" after")[0] for a in alerts] == [
        "firing    FilNodeDown (critical) charlie",
        "resolved  FilNodeDown (critical) charlie",
    ], text
    assert alerts[0].endswith(": Filecoin node charlie is down")


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "heartbeat.tools.demo", "--block-delay", "1", *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_demo_module_runs_with_duration() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "heartbeat.tools.demo",
            "--duration",
            "5",
            "--block-delay",
            "1",
            "--verbose",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    # the addresses come first, before any log line (stdout and stderr on one pipe here)
    first = proc.stdout.splitlines()[:3]
    assert first[0].startswith("aggregator multiaddr: /ip4/127.0.0.1/tcp/"), proc.stdout
    assert first[1].startswith("metrics: ") and first[2].startswith("nodes (JSON): ")
    assert re.search(r"^  alpha +\w+ +height=\d+ .* last_beat= *\d+\.\d+s ago", proc.stdout, re.M)
    # hypercorn logs through the root handler only: each of its lines once
    assert proc.stdout.count("Running on http://127.0.0.1:") == 1
    assert "demo stopped" not in proc.stdout  # --duration ran out: nobody stopped it


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_demo_with_one_line(signum: signal.Signals) -> None:
    proc = _demo()
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "nodes=" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.rstrip().splitlines()[-1] == f"demo stopped ({signum.name})", out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "Traceback" not in out
