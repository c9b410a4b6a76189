"""The README demo: an aggregator and three agents on a simulated chain, in one process.

`python -m heartbeat.tools.demo [--duration SECONDS] [--block-delay SECONDS]` (what
`scripts/demo` runs). Everything listens on loopback; identities and the node
registry live in a temporary directory. The agents: `alpha` is healthy,
`bravo` lags 8 epochs, `charlie` leaves for `AWAY` seconds every `PRESENT + AWAY`.
The demo's aggregator alerts with short `for` durations (`DEMO_ALERTS`): charlie's
absence fires FilNodeDown within the first minute and its return resolves it, and the
demo prints each alert as it fires and resolves (it polls /api/v1/alerts as any client
would). Prints the aggregator's multiaddr and URLs first, then what to open next and how
to point a real agent at it, then a one-line-per-node summary every second on stdout,
until Ctrl-C (one line, exit 0) or `--duration`; log lines go to stderr, held back until
the addresses are out.

The chains are the simulated network every `--head-source simulated` agent beats (one
genesis time, heartbeat/agent/sources.py): an agent started by hand with the printed
command joins alpha's consensus.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import AggregatorConfig, build_config
from aggregator.fleet import FleetSnapshot
from heartbeat.agent.connector import Libp2pConnector
from heartbeat.agent.loop import Agent, BeatLoop
from heartbeat.agent.sources import SimulatedChain
from heartbeat.agent.targets import parse_target
from heartbeat.net import p2p

__all__ = [
    "DEMO_ALERTS",
    "AlertWatch",
    "LogGate",
    "demo_config",
    "format_summary",
    "main",
    "next_steps",
    "run_demo",
]

log = logging.getLogger(__name__)

BEAT_PERIOD = 2.0
#: charlie's rhythm: connected this long, then away this long (longer than FilNodeDown's
#: `for` in `DEMO_ALERTS`, so that its absence fires and its return resolves the alert).
PRESENT, AWAY = 20.0, 25.0
#: The demo aggregator's `[alerts]` table: the shipped thresholds, with `for` durations a
#: demo can show (FilNodeDown after 10 s instead of 60 s, resolved 5 s after the node is
#: back instead of 60 s), evaluated every second.
DEMO_ALERTS: Mapping[str, Any] = {
    "node_down_for": "10s",
    "keep_firing_for": "5s",
    "evaluation_interval": "1s",
}
#: How often the demo polls /api/v1/alerts.
ALERT_POLL = 1.0


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
    return replace(
        config, stall_after=60.0, beat_timeout_min=5.0, probation=0.0, alerts=dict(DEMO_ALERTS)
    )


def format_summary(snap: FleetSnapshot, now: float) -> list[str]:
    """One line per node: nickname, state, height, lag, ages of the last beat and the head."""
    lines = []
    for node in sorted(snap.nodes, key=lambda n: n.nickname):
        lag = "-" if node.lag_epochs is None else str(node.lag_epochs)
        age = max(0.0, now - node.last_beat)
        head = "-" if node.head_timestamp is None else f"{max(0.0, now - node.head_timestamp):.1f}s"
        lines.append(
            f"  {node.nickname or node.peer_id[:12]:<10} {node.state.value:<13} "
            f"height={node.height:<8} lag={lag:<4} last_beat={age:5.1f}s ago  head_age={head}"
        )
    return lines


def _program() -> str:
    """How to call the agent from here: `fil-heartbeat`, or its path when not on PATH."""
    beside = Path(sys.executable).with_name("fil-heartbeat")
    if not beside.exists() or shutil.which("fil-heartbeat") == str(beside):
        return "fil-heartbeat"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def next_steps(
    multiaddr: str,
    http_url: str,
    block_delay: float,
    program: str,
    present: float = PRESENT,
    away: float = AWAY,
) -> list[str]:
    """What to open next, and how to point a real agent at the demo's aggregator."""
    return [
        f"status page:          {http_url}/",
        f"alerts (JSON):        {http_url}/api/v1/alerts",
        "",
        "next: open the status page in a browser; scrape /metrics with Prometheus",
        "(grafana/prometheus/rules.yml); point a real agent beside a Lotus node at this",
        "aggregator:",
        "    FULLNODE_API_INFO=$(lotus auth api-info --perm read | cut -d= -f2) \\",
        f"    {program} run --target {multiaddr} --nickname my-node",
        "or add a simulated one (it joins the demo's chain):",
        f"    {program} run --target {multiaddr} --head-source simulated \\",
        f"        --block-delay {block_delay:g}s --nickname delta --identity-file /tmp/delta.key",
        f"charlie leaves for {away:g} s every {present + away:g} s: FilNodeDown fires after "
        f"{DEMO_ALERTS['node_down_for']} away and resolves once it is back. Ctrl-C stops the demo.",
        "",
    ]


def _alert_key(alert: Mapping[str, Any]) -> tuple[str, ...]:
    labels = alert.get("labels", {})
    return tuple(f"{k}={labels[k]}" for k in sorted(labels) if k != "aggregator")


def _subject(labels: Mapping[str, str]) -> str:
    return labels.get("nickname") or labels.get("peer_id") or labels.get("network", "")


class AlertWatch:
    """Turns successive /api/v1/alerts answers into one line per firing and per resolution.

    Pure: `update(alerts, now)` takes the answer (a list of alert dicts) and the time.
    """

    def __init__(self) -> None:
        self.firing: dict[tuple[str, ...], tuple[Mapping[str, str], float]] = {}

    def update(self, alerts: Iterable[Mapping[str, Any]], now: float) -> list[str]:
        lines = []
        current = {_alert_key(a): a for a in alerts if a.get("state") == "firing"}
        for key, alert in current.items():
            if key not in self.firing:
                labels = alert.get("labels", {})
                self.firing[key] = (labels, now)
                summary = alert.get("annotations", {}).get("summary", "")
                lines.append(
                    f"ALERT firing    {labels.get('alertname', '?')} "
                    f"({labels.get('severity', '?')}) {_subject(labels)}: {summary}"
                )
        for key in [k for k in self.firing if k not in current]:
            labels, since = self.firing.pop(key)
            lines.append(
                f"ALERT resolved  {labels.get('alertname', '?')} "
                f"({labels.get('severity', '?')}) {_subject(labels)} after {now - since:.0f}s"
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
        chain.on_change(agent.loops[0].wake)  # a new head goes out at once, as an agent's does
        await agent.run()


async def _coming_and_going(
    addr: str,
    nickname: str,
    chain: SimulatedChain,
    period: float,
    present: float = PRESENT,
    away: float = AWAY,
) -> None:
    key = p2p.new_identity()  # the same identity every time it comes back
    current: list[BeatLoop] = []  # this visit's loop: one listener for every visit

    def wake() -> None:
        for loop in current:
            loop.wake()

    chain.on_change(wake)
    while True:
        async with p2p.running_host(key, []) as host, trio.open_nursery() as nursery:
            agent = _agent(host, addr, nickname, chain, period)
            current[:] = agent.loops
            await nursery.start(agent.run)
            await trio.sleep(present)
            await agent.stop()
            nursery.cancel_scope.cancel()
        log.info("demo_agent_left nickname=%s for=%.0fs", nickname, away)
        await trio.sleep(away)


async def _watch_alerts(http_url: str, say: Callable[[str], None]) -> None:
    """Poll /api/v1/alerts; say each alert as it fires and resolves."""
    watch = AlertWatch()
    async with httpx.AsyncClient(base_url=http_url, timeout=5.0) as client:
        deadline = trio.current_time()
        while True:
            deadline += ALERT_POLL
            await trio.sleep_until(deadline)
            try:
                reply = await client.get("/api/v1/alerts")
                reply.raise_for_status()
                alerts = reply.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("demo_alerts_poll_failed err=%s", exc)
                continue
            stamp = time.strftime("%H:%M:%S")
            for line in watch.update(alerts, time.time()):
                say(f"-- {stamp} {line}")


async def run_demo(
    duration: float | None = None,
    *,
    block_delay: float = 4.0,
    refresh: float = 1.0,
    out: IO[str] | None = None,
    on_header: Callable[[], None] | None = None,
    present: float = PRESENT,
    away: float = AWAY,
) -> None:
    """Run the demo; `on_header` is called once the addresses are printed; charlie is
    connected `present` seconds, then away `away` seconds, over and over."""
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
            for line in next_steps(addr, agg.http_url, block_delay, _program(), present, away):
                say(line)
            if on_header is not None:
                on_header()
            # The network every simulated agent beats (one genesis time): a hand-started
            # `--head-source simulated --block-delay` agent agrees with alpha.
            chain = SimulatedChain(block_delay=block_delay)
            await nursery.start(chain.run)
            lagging = SimulatedChain(block_delay=block_delay, lag_epochs=8)
            await nursery.start(lagging.run)
            nursery.start_soon(_steady_agent, addr, "alpha", chain, BEAT_PERIOD)
            nursery.start_soon(_steady_agent, addr, "bravo", lagging, BEAT_PERIOD)
            charlie = partial(_coming_and_going, present=present, away=away)
            nursery.start_soon(charlie, addr, "charlie", chain, BEAT_PERIOD)
            nursery.start_soon(_watch_alerts, agg.http_url, say)
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


async def _until_signal(demo: Callable[[], Any]) -> str | None:
    """Run `demo()` until it returns or SIGINT/SIGTERM arrives; the signal's name, or None."""
    received: list[str] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    received.append(signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await demo()
            nursery.cancel_scope.cancel()
    return received[0] if received else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heartbeat.tools.demo", description=__doc__)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--block-delay", type=float, default=4.0, help="simulated block time")
    parser.add_argument("--refresh", type=float, default=1.0, help="summary period (seconds)")
    parser.add_argument("--verbose", action="store_true", help="log at INFO instead of WARNING")
    args = parser.parse_args(argv)
    from heartbeat.common.logs import setup_logging
    from heartbeat.net.compat import log_fold

    setup_logging("text", logging.INFO if args.verbose else logging.WARNING)
    p2p.restore_libp2p_logging()
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    log_fold.install_agent_demotion()  # the demo's agents dial: their own lines say it
    gate = LogGate()
    demo = partial(
        run_demo,
        args.duration,
        block_delay=args.block_delay,
        refresh=args.refresh,
        on_header=gate.release_held,
    )
    # Trio re-delivers signals still queued when its receiver closes (a second Ctrl-C
    # while stopping): ignored underneath it, they cannot turn a clean stop into a traceback.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopped_by = trio.run(_until_signal, demo)
    except* KeyboardInterrupt:  # not expected with SIGINT handled, but never a traceback
        stopped_by = "SIGINT"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        gate.release_held()  # a start-up failure's log lines must not stay held
        log_fold.uninstall_agent_demotion()
    if stopped_by is not None:
        print(f"demo stopped ({stopped_by})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
