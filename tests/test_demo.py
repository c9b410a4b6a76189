"""The README demo runs by itself for a few seconds and shows the three nodes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from heartbeat.tools.demo import run_demo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


async def test_demo_prints_multiaddr_and_node_lines() -> None:
    out = io.StringIO()
    await run_demo(7.0, block_delay=1.0, refresh=1.0, out=out)
    text = out.getvalue()
    assert re.search(r"^aggregator multiaddr: /ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+$", text, re.M)
    assert re.search(r"^metrics: +http://127\.0\.0\.1:\d+/metrics$", text, re.M)
    last = text.rsplit("-- ", 1)[1]
    assert "nodes=3" in last
    lines = {line.split()[0]: line for line in last.splitlines()[1:]}
    assert set(lines) == {"alpha", "bravo", "charlie"}
    assert "in_consensus" in lines["alpha"]
    assert "lagging" in lines["bravo"] and "lag=8" in lines["bravo"]


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
