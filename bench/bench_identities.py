"""Throwaway peer ids against the registry: do they lock legitimate peers out, do they alert?

Runs the aggregator as a subprocess (`--max-nodes 1500` by default), sends `--identities`
(2,000) fresh peer ids one valid beat each (the load generator with a beat period longer than
its run: each agent connects, beats once, holds its connection for `--hold`, then leaves),
then one legitimate agent that keeps beating. Prints: registered (nodes the registry shows
after the throwaway ids), refused (`peers_refused_total{reason="fleet_full"}`), whether the
legitimate peer got in (a node with more than one beat), and the alerts raised
(/api/v1/alerts, read after FilNodeDown's 1m `for` has passed for the throwaway ids).

`--tree PATH` runs the aggregator of another checkout (e.g. `git worktree add /tmp/before-ids
e12e14f`): the same script measures before and after. The load generator is always this
tree's. Bounded: a ramp, few load generator processes, every wait under a deadline.

    .venv/bin/python -m bench.bench_identities
    .venv/bin/python -m bench.bench_identities --tree /tmp/before-ids
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import REPO, LoadgenProcess, wait_for

PYTHON = sys.executable


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=20) as resp:
        body = resp.read()
    return body


def _nodes(http: str) -> list[dict[str, Any]]:
    return list(json.loads(_get(http + "/api/v1/nodes")))


def _refused(http: str) -> float:
    for line in _get(http + "/metrics").decode().splitlines():
        if line.startswith("fil_heartbeat_peers_refused_total{") and 'reason="fleet_full"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def start_aggregator(
    tree: Path, workdir: Path, extra: list[str]
) -> tuple[subprocess.Popen[bytes], str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        PYTHON, "-m", "aggregator", "run",
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--http-listen", "127.0.0.1:0",
        "--identity-file", str(workdir / "aggregator.key"),
        "--state-db", str(workdir / "aggregator.db"),
        "--log-level", "WARNING",
        *extra,
    ]  # fmt: skip
    log = open(workdir / "aggregator.log", "ab")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=tree, env=env)
    log.close()
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        lines.append(raw.decode().strip())
        if lines[-1].startswith("http://"):
            return proc, lines[0], lines[-1]
    proc.kill()
    proc.wait()
    raise RuntimeError(f"aggregator did not start: {lines!r} (log in {workdir})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=REPO, help="checkout whose aggregator runs")
    p.add_argument("--identities", type=int, default=2000)
    p.add_argument("--max-nodes", type=int, default=1500)
    p.add_argument("--ramp", default="100/s", help="new throwaway ids per second")
    p.add_argument("--processes", type=int, default=2, help="load generator processes")
    p.add_argument("--hold", type=float, default=25.0, help="seconds of the throwaway run")
    p.add_argument(
        "--retry",
        default="1h",
        metavar="DURATION",
        help="a throwaway id that failed to connect redials after this (1h: never)",
    )
    p.add_argument("--alert-wait", type=float, default=80.0, help="then wait for alerts")
    p.add_argument("--aggregator-arg", action="append", default=[], metavar="ARG")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ids-") as tmp:
        proc, multiaddr, http = start_aggregator(
            args.tree.resolve(),
            Path(tmp) / "agg",
            ["--max-nodes", str(args.max_nodes), *args.aggregator_arg],
        )
        try:
            started = time.monotonic()
            junk = LoadgenProcess(
                multiaddr,
                "--agents", str(args.identities),
                "--processes", str(args.processes),
                "--ramp", args.ramp,
                "--beat-period", "1h",
                "--duration", f"{args.hold:g}s",
                "--reconnect-period", args.retry,
                "--key-seed", f"junk-{started}",
                "--log-level", "error",
            )  # fmt: skip
            junk.result(timeout=args.hold + 120)
            registered = len(_nodes(http))
            refused = _refused(http)
            legit = LoadgenProcess(
                multiaddr,
                "--agents", "1",
                "--beat-period", "1s",
                "--duration", "60s",
                "--reconnect-period", "1s",
                "--key-seed", f"legit-{started}",
                "--log-level", "error",
            )  # fmt: skip
            admitted_at: list[float] = []

            def legit_in() -> bool:
                if any(int(n["beats_received"]) >= 2 for n in _nodes(http)):
                    admitted_at.append(time.monotonic())
                    return True
                return False

            legit_started = time.monotonic()
            got_in = wait_for(legit_in, timeout=55.0, interval=1.0)
            rest = args.alert_wait - (time.monotonic() - legit_started)
            if rest > 0:
                time.sleep(rest)
            alerts = json.loads(_get(http + "/api/v1/alerts"))
            shown = _nodes(http)
            legit.result(timeout=120)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    by_name: dict[str, int] = {}
    for a in alerts:
        name = str(a.get("labels", {}).get("alertname", a.get("alertname", "?")))
        by_name[name] = by_name.get(name, 0) + 1
    print(f"tree: {args.tree}")
    print(f"throwaway identities: {args.identities} (one beat each), --max-nodes {args.max_nodes}")
    print(f"registered: {registered}")
    print(f"refused (fleet_full, refusals counted per attempt): {refused:.0f}")
    print(f"not registered: {args.identities - registered} (refused, shed or failed to connect)")
    when = f" after {admitted_at[0] - legit_started:.1f} s" if admitted_at else ""
    print(f"legitimate peer got in: {'yes' if got_in else 'no'}{when}")
    on_probation = sum(1 for n in shown if n.get("probation"))
    print(f"nodes shown at the end: {len(shown)} ({on_probation} on probation)")
    print(f"alerts raised: {len(alerts)} {json.dumps(by_name, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
