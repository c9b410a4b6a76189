"""The running agent: its head source, one beat loop per target, the metrics endpoint and
the signals that stop it. `heartbeat.agent.cli` parses the settings and calls
`run_until_signal`; tests run `run_agent` directly.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from heartbeat.agent.config import AgentConfig
from heartbeat.agent.connector import Libp2pConnector
from heartbeat.agent.head import Head, HeadSource
from heartbeat.agent.loop import Agent, BeatLoop
from heartbeat.net.p2p import load_or_create_identity, peer_id_of, running_host
from heartbeat.version import AGENT_VERSION, STATIC_MARKER

__all__ = ["SHUTDOWN_SIGNALS", "STOP_GRACE", "make_head_source", "run_agent", "run_until_signal"]

log = logging.getLogger("heartbeat.main")

#: How long stopping loops get to half-close and see the remote close.
STOP_GRACE = 1.2


def make_head_source(config: AgentConfig) -> HeadSource:
    """The head source the configuration asks for."""
    if config.head_source == "static":
        from heartbeat.agent.sources import StaticHeadSource

        head = Head(
            cids=config.static_head,
            height=config.static_height,
            genesis_cid=config.genesis_cid,
            miner_address=config.miner_address,
        )
        return StaticHeadSource(head)
    if config.head_source == "simulated":
        from heartbeat.agent.sources import SimulatedChain

        kwargs: dict[str, Any] = {
            "block_delay": config.block_delay,
            "lag_epochs": config.lag_epochs,
            "seed": config.seed,
            "miner_address": config.miner_address,
        }
        if config.genesis_cid:
            kwargs["genesis_cid"] = config.genesis_cid
        return SimulatedChain(**kwargs)
    from heartbeat.agent.lotus.apiinfo import parse_api_info
    from heartbeat.agent.lotus.source import LotusHeadSource

    full = parse_api_info(config.fullnode_api_info or "", setting="FULLNODE_API_INFO")
    miner = (
        parse_api_info(config.miner_api_info, setting="MINER_API_INFO", miner=True)
        if config.miner_api_info
        else None
    )
    # Poll twice a beat period (1.5 s at most) and call a silent node unreachable as long
    # into a call (0.5 s at least: a loaded Lotus is not a dead one): a node that stops
    # answering just after a poll is reported within poll + stall <= one beat period, by
    # the extra beat its new state sends at once.
    poll = min(3.0, config.beat_period) / 2
    stall = min(1.5, max(0.5, poll))
    return LotusHeadSource(full, miner, config.miner_address or None, poll, stall_after=stall)


SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signal(config: AgentConfig) -> None:
    """`run_agent` until the first SIGTERM or SIGINT (caught from the very start).

    Later signals are logged and ignored: systemd and `timeout` signal the whole process
    group, so a second SIGTERM often lands during the graceful stop. Trio re-delivers the
    signals still queued when its receiver closes, so both are set to SIG_IGN underneath
    it for the whole run: a re-delivered one must not kill the process after a clean stop.
    """
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in SHUTDOWN_SIGNALS}
    try:
        with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
            stopping = trio.Event()

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stopping.is_set():
                        log.info("shutdown_signal_ignored signal=%s reason=already_stopping", name)
                    else:
                        log.info("shutdown signal=%s", name)
                        stopping.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals)
                await run_agent(config, shutdown=stopping.wait)
                nursery.cancel_scope.cancel()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def run_agent(
    config: AgentConfig,
    *,
    shutdown: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `shutdown()` returns, then stop gracefully.

    `task_status.started(agent)` once every service is up.
    """
    key_pair = await trio.to_thread.run_sync(load_or_create_identity, config.identity_file)
    head_source = make_head_source(config)
    rng = random.Random()
    # a static head never moves: said in Version, so the aggregator's stall alerts stay quiet
    version = AGENT_VERSION + (STATIC_MARKER if config.head_source == "static" else "")
    # The agent dials a known address and protocol: identifying the aggregator buys nothing.
    async with running_host(key_pair, identify_peers=False) as host:
        connector = Libp2pConnector(host)
        loops = [
            BeatLoop(
                target,
                connector,
                lambda: head_source.latest,
                nickname=config.nickname,
                miner_address=config.miner_address,
                encoding=config.encoding,
                write_timeout=config.write_timeout,
                dial_timeout=config.dial_timeout,
                jitter=config.jitter,
                error_log_period=config.error_log_period,
                rand=rng.random,
                status=lambda: head_source.status,
                version=version,
            )
            for target in config.targets
        ]
        for loop in loops:
            head_source.on_change(loop.wake)  # an extra beat when the head or state changes
        agent = Agent(loops, head_source)
        async with trio.open_nursery() as nursery:
            await nursery.start(head_source.run)
            if config.metrics_listen is not None:
                from heartbeat.agent.metrics import make_registry, serve_metrics

                mhost, mport = config.metrics_listen
                rpc_stats = getattr(head_source, "rpc_stats", None)  # the Lotus source's
                registry = make_registry(loops, head_source, rpc_stats)
                await nursery.start(serve_metrics, registry, mhost, mport)
            await nursery.start(agent.run)
            log.info(
                "agent_started peer_id=%s targets=%d encoding=%s head_source=%s",
                peer_id_of(key_pair),
                len(loops),
                config.encoding,
                config.head_source,
            )
            task_status.started(agent)
            await shutdown()
            clean = await agent.stop(grace=STOP_GRACE)
            log.info("agent_stopped clean=%s", clean)
            nursery.cancel_scope.cancel()
