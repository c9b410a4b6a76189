"""Idle sockets from one address against the handshake gate: do other addresses still connect?

Runs the aggregator as a subprocess, then (from this process) holds `--idle` (200) TCP
sockets from 127.0.0.2 that never send a byte, reopening each one the server closes, for at
most `--attack` seconds (30). After `--settle` seconds of attack, `--agents` (50) dialers
from 127.0.0.1 connect at once (Noise + Yamux, each under a `--dial-timeout` deadline,
retrying once a second as an agent would, until connected or the attack ends). Prints the
connect times (median, max), the failed dials, the idle sockets the server closed, and the
aggregator's `fil_heartbeat_refusals_total` / `handshakes_shed_total` lines.

`--tree PATH` runs another checkout's aggregator (e.g. `git worktree add /tmp/before-gate
e12e14f`): the same script measures before and after. The dialers are always this tree's.

    .venv/bin/python -m bench.bench_gate_attack
    .venv/bin/python -m bench.bench_gate_attack --tree /tmp/before-gate
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import trio

from bench.bench_identities import start_aggregator
from bench.common import REPO, http_get
from heartbeat.net import p2p
from heartbeat.tools.loadgen.light import light_connection


async def _attack(host: str, port: int, idle: int, until: float, stats: dict[str, int]) -> None:
    async def one_slot() -> None:
        while trio.current_time() < until:
            try:
                stream = await trio.open_tcp_stream(host, port, local_address="127.0.0.2")
            except OSError:
                stats["open_errors"] += 1
                await trio.sleep(0.1)
                continue
            stats["opened"] += 1
            with trio.move_on_at(until):
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
                stats["closed_by_server"] += 1
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(idle):
            nursery.start_soon(one_slot)


async def _agent(addr: str, until: float, dial_timeout: float, out: dict[str, list[float]]) -> None:
    started = trio.current_time()
    while trio.current_time() < until:
        try:
            async with light_connection(p2p.new_identity(), addr, timeout=dial_timeout):
                out["connected"].append(trio.current_time() - started)
                return
        except p2p.StreamError:
            out["failed"].append(trio.current_time() - started)
            await trio.sleep(1.0)
    out["never"].append(trio.current_time() - started)


async def run(args: argparse.Namespace, multiaddr: str) -> dict[str, object]:
    parts = multiaddr.split("/")
    host, port = parts[2], int(parts[4])
    stats = {"opened": 0, "closed_by_server": 0, "open_errors": 0}
    out: dict[str, list[float]] = {"connected": [], "failed": [], "never": []}
    until = trio.current_time() + args.attack
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_attack, host, port, args.idle, until, stats)
        await trio.sleep(args.settle)
        async with trio.open_nursery() as agents:
            for _ in range(args.agents):
                agents.start_soon(_agent, multiaddr, until, args.dial_timeout, out)
        nursery.cancel_scope.cancel()
    return {"stats": stats, **out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=REPO, help="checkout whose aggregator runs")
    p.add_argument("--idle", type=int, default=200, help="idle sockets from 127.0.0.2")
    p.add_argument("--attack", type=float, default=30.0, help="seconds the attack lasts")
    p.add_argument("--settle", type=float, default=3.0, help="attack seconds before the dials")
    p.add_argument("--agents", type=int, default=50, help="dialers from 127.0.0.1")
    p.add_argument("--dial-timeout", type=float, default=10.0)
    p.add_argument("--aggregator-arg", action="append", default=[], metavar="ARG")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        proc, multiaddr, http = start_aggregator(
            args.tree.resolve(), Path(tmp) / "agg", list(args.aggregator_arg)
        )
        try:
            result = trio.run(run, args, multiaddr)
            metrics = [
                line
                for line in http_get(http + "/metrics").decode().splitlines()
                if line.startswith(
                    ("fil_heartbeat_refusals_total", "fil_heartbeat_handshakes_shed")
                )
            ]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()
                proc.wait()
    connected: list[float] = result["connected"]  # type: ignore[assignment]
    print(f"tree: {args.tree}")
    print(
        f"attack: {args.idle} idle sockets from 127.0.0.2 for {args.attack:g}s, {result['stats']}"
    )
    print(f"agents: {args.agents} from 127.0.0.1, connected {len(connected)}")
    if connected:
        print(f"connect time: median {statistics.median(connected):.2f}s max {max(connected):.2f}s")
    print(f"failed dials: {len(result['failed'])}, never connected: {len(result['never'])}")  # type: ignore[arg-type]
    for line in metrics:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
