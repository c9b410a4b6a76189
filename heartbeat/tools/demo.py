"""The README demo: an aggregator and three agents on a simulated chain, in one process.

`python -m heartbeat.tools.demo [--duration SECONDS] [--block-delay SECONDS]` (what
`scripts/demo` runs). Everything listens on loopback; identities and the node
registry live in a temporary directory. The agents: `alpha` is healthy,
`bravo` lags 8 epochs, `charlie` leaves and comes back periodically. Prints the
aggregator's multiaddr and URLs first, then a one-line-per-node summary every
second on stdout, until Ctrl-C or `--duration`; log lines go to stderr, held
back until the addresses are out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import AggregatorConfig, build_config
from aggregator.fleet import FleetSnapshot
from heartbeat.agent.loop import Agent, BeatLoop, Libp2pConnector
from heartbeat.agent.sources import SimulatedChain
from heartbeat.agent.targets import parse_target
from heartbeat.net import p2p

__all__ = ["LogGate", "demo_config", "format_summary", "main", "run_demo"]

log = logging.getLogger(__name__)

BEAT_PERIOD = 2.0
#: charlie's rhythm: connected this long, then away this long.
PRESENT, AWAY = 20.0, 15.0


def demo_config(state_dir: Path) -> AggregatorConfig:
    config = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(state_dir / "aggregator.key"),
            "state_db": str(state_dir / "aggregator.db"),
            "gc_freeze": False,
        }
    )
    # No probation: the demo's three agents are known, and a run lasts seconds, not minutes.
    return replace(config, stall_after=60.0, beat_timeout_min=5.0, probation=0.0)


def format_summary(snap: FleetSnapshot, now: float) -> list[str]:
    """One line per node: nickname, state, height, lag, ages of the last beat and the head."""
    lines = []
    for node in sorted(snap.nodes, key=lambda n: n.nickname):
        lag = "-" if node.lag_epochs is None else str(node.lag_epochs)
        age = max(0.0, now - node.last_beat)
        head = "-" if node.head_timestamp is None else f"{max(0.0, now - node.head_timestamp):.1f}s"
        lines.append(
            f"  {node.nickname or node.peer_id[:12]:<10} {node.state.value:<13} "
            f"height={node.height:<7} lag={lag:<4} last_beat={age:5.1f}s ago  head_age={head}"
        )
    return lines


class LogGate(logging.Handler):
    """Holds the root logger's records until `release_held()`, then hands them to its handlers.

    The demo's first lines are the addresses an operator copies; start-up log lines (stderr)
    would otherwise come first in the terminal.
    """

    def __init__(self, limit: int = 10_000) -> None:
        super().__init__()
        self.limit = limit
        self.held: list[logging.LogRecord] = []
        self.root = logging.getLogger()
        self.targets = list(self.root.handlers)
        for handler in self.targets:
            self.root.removeHandler(handler)
        self.root.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.held) < self.limit:
            self.held.append(record)

    def release_held(self) -> None:
        if self not in self.root.handlers:
            return
        self.root.removeHandler(self)
        for handler in self.targets:
            self.root.addHandler(handler)
        for record in self.held:
            for handler in self.targets:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.held.clear()


def _agent(host: Any, addr: str, nickname: str, chain: SimulatedChain, period: float) -> Agent:
    target = replace(parse_target(addr), beat_period=period, reconnect_period=3.0)
    loop = BeatLoop(
        target, Libp2pConnector(host), lambda: chain.latest, nickname=nickname, jitter=0.0
    )
    return Agent([loop])


async def _steady_agent(addr: str, nickname: str, chain: SimulatedChain, period: float) -> None:
    async with p2p.running_host(p2p.new_identity(), []) as host:
        agent = _agent(host, addr, nickname, chain, period)
        await agent.run()


async def _coming_and_going(addr: str, nickname: str, chain: SimulatedChain, period: float) -> None:
    key = p2p.new_identity()  # the same identity every time it comes back
    while True:
        async with p2p.running_host(key, []) as host, trio.open_nursery() as nursery:
            agent = _agent(host, addr, nickname, chain, period)
            await nursery.start(agent.run)
            await trio.sleep(PRESENT)
            await agent.stop()
            nursery.cancel_scope.cancel()
        log.info("demo_agent_left nickname=%s for=%.0fs", nickname, AWAY)
        await trio.sleep(AWAY)


async def run_demo(
    duration: float | None = None,
    *,
    block_delay: float = 4.0,
    refresh: float = 1.0,
    out: IO[str] | None = None,
    on_header: Callable[[], None] | None = None,
) -> None:
    """Run the demo; `on_header` is called once the addresses are printed."""
    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="fil-heartbeat-demo-") as tmp,
        trio.move_on_after(duration if duration is not None else float("inf")),
    ):
        holder: list[Aggregator] = []
        async with trio.open_nursery() as nursery:
            config = demo_config(Path(tmp))
            start = partial(run_aggregator, config, handle_signals=False, on_ready=holder.append)
            await nursery.start(start)
            agg = holder[0]
            addr = agg.multiaddrs[0]
            say(f"aggregator multiaddr: {addr}")
            say(f"metrics:              {agg.http_url}/metrics")
            say(f"nodes (JSON):         {agg.http_url}/api/v1/nodes")
            if on_header is not None:
                on_header()
            chain = SimulatedChain(block_delay=block_delay, null_round_probability=0.0)
            await nursery.start(chain.run)
            lagging = SimulatedChain(
                block_delay=block_delay,
                null_round_probability=0.0,
                lag_epochs=8,
                seed=chain.seed,
                genesis_timestamp=chain.genesis_timestamp,
            )
            await nursery.start(lagging.run)
            nursery.start_soon(_steady_agent, addr, "alpha", chain, BEAT_PERIOD)
            nursery.start_soon(_steady_agent, addr, "bravo", lagging, BEAT_PERIOD)
            nursery.start_soon(_coming_and_going, addr, "charlie", chain, BEAT_PERIOD)
            # Every 1 s by default, half a period out of phase with the beats: a refresh that
            # coincides with the 2 s beats shows the same age forever (or races with the beat).
            deadline = trio.current_time() - refresh / 2
            while True:
                deadline += refresh
                await trio.sleep_until(deadline)
                now = time.time()
                snap = agg.fleet.snapshot(now)
                say(f"-- {time.strftime('%H:%M:%S')} nodes={len(snap.nodes)}")
                for line in format_summary(snap, now):
                    say(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heartbeat.tools.demo", description=__doc__)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--block-delay", type=float, default=4.0, help="simulated block time")
    parser.add_argument("--refresh", type=float, default=1.0, help="summary period (seconds)")
    parser.add_argument("--verbose", action="store_true", help="log at INFO instead of WARNING")
    args = parser.parse_args(argv)
    from heartbeat.common.logs import setup_logging

    setup_logging("text", logging.INFO if args.verbose else logging.WARNING)
    p2p.restore_libp2p_logging()
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    gate = LogGate()
    try:
        trio.run(
            partial(
                run_demo,
                args.duration,
                block_delay=args.block_delay,
                refresh=args.refresh,
                on_header=gate.release_held,
            )
        )
    except KeyboardInterrupt:
        print("demo stopped", flush=True)
    finally:
        gate.release_held()  # a start-up failure's log lines must not stay held
    return 0


if __name__ == "__main__":
    sys.exit(main())
