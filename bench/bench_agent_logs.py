"""Log lines of an agent redialing a dead aggregator, counted by level.

Starts `python -m heartbeat run` (from `--tree PATH`: run it on another checkout, e.g.
`git worktree add /tmp/before-logs <commit>`, to count the "before") with one target on
a loopback port nobody listens on, `--reconnect-period 3s`, a static head, for
`--duration` seconds (40), then SIGINT; prints the stderr lines by level and by logger,
and how many are at WARNING or above (what an operator's alert on the log would see).

    .venv/bin/python -m bench.bench_agent_logs
    .venv/bin/python -m bench.bench_agent_logs --tree /tmp/before-logs
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import PYTHON, REPO

__all__ = ["LEVELS", "count_levels", "dead_target", "main", "run_agent"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# "<date> <time> LEVEL logger message" (the agent's text format)
_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) ")
#: A fixed, well-formed peer id: nothing answers on the port anyway.
PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"


def dead_target() -> str:
    """A multiaddr on a loopback port the kernel just handed out and nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}"


def count_levels(text: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(lines by level, WARNING-or-worse lines by 'LEVEL logger'); other lines: 'OTHER'."""
    levels: collections.Counter[str] = collections.Counter()
    loud: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            levels["OTHER"] += 1
            continue
        level, logger = match.groups()
        levels[level] += 1
        if LEVELS.index(level) >= LEVELS.index("WARNING"):
            loud[f"{level} {logger}"] += 1
    return levels, loud


def run_agent(tree: Path, duration: float, reconnect: str, workdir: Path) -> tuple[int, str]:
    """Run the agent of `tree` against a dead target for `duration` s; (exit code, stderr)."""
    cmd = [
        PYTHON, "-m", "heartbeat", "run",
        "--target", dead_target(),
        "--reconnect-period", reconnect,
        "--head-source", "static",
        "--identity-file", str(workdir / "agent.key"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("FIL_HEARTBEAT_CONFIG", None)
    with open(workdir / "agent.log", "wb") as err:
        proc = subprocess.Popen(cmd, stderr=err, stdout=subprocess.DEVNULL, cwd=tree, env=env)
        try:
            time.sleep(duration)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, (workdir / "agent.log").read_text(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_agent_logs", description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, default=REPO, help="checkout whose agent runs")
    p.add_argument("--duration", type=float, default=40.0, help="seconds (40)")
    p.add_argument("--reconnect-period", default="3s", help="the agent's flag (3s)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-agent-logs-") as tmp:
        code, text = run_agent(args.tree.resolve(), args.duration, args.reconnect_period, Path(tmp))
    levels, loud = count_levels(text)
    print(f"tree: {args.tree}")
    print(
        f"agent: {args.duration:g}s against a dead target, "
        f"--reconnect-period {args.reconnect_period}, exit {code}"
    )
    print("lines by level: " + ", ".join(f"{lvl}={levels[lvl]}" for lvl in (*LEVELS, "OTHER")))
    print(f"WARNING or above: {sum(loud.values())}")
    for key, n in loud.most_common():
        print(f"  {n:5d}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
