"""A worker 1..N-1: ingest on worker 0's port and forward what it sees over the link.

Started by worker 0's `WorkerHub` (aggregator/workers.py) as `python -m aggregator worker …`;
gets its configuration over the link and exits when the link closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import trio

from aggregator.bus import Bus, Event
from aggregator.config import AggregatorConfig, build_config
from aggregator.errors import AggregatorError
from aggregator.fleet import Fleet
from aggregator.gcmon import tune_gc
from aggregator.ingest import Ingest, IngestSettings
from aggregator.linkstream import HELLO_TIMEOUT, LINK_DOWN, Link
from aggregator.variants import BenchVariants
from aggregator.worklink import LinkError, counters_to_wire, event_to_wire
from heartbeat.errors import ConfigError
from heartbeat.net import p2p

__all__ = ["WorkerError", "run_worker"]

log = logging.getLogger(__name__)

#: A worker's outbox towards worker 0 (a required bus subscriber: when the link lags,
#: the worker's ingest waits, as worker 0's does for its store writer).
LINK_CHANNEL_CAPACITY = 8192
#: Events per `events` frame at most.
MAX_BATCH = 1024
#: How long a worker gathers events before it sends them: the latency it adds to a beat
#: on workers 1..N-1 (the target is p99 <= 50 ms from the agent's write to the fleet).
BATCH_DELAY = 0.005
COUNTERS_INTERVAL = 1.0


class WorkerError(AggregatorError):
    """A worker could not start (no link, no configuration, no identity)."""


async def run_worker(
    index: int,
    link_path: str,
    *,
    variants: BenchVariants | None = None,
    handle_signals: bool = True,
    orphaned: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ingest on worker 0's port and forward to it; returns when the link closes.

    `orphaned()` is called first when the link closes or breaks (worker 0 is gone): the CLI
    exits the process there and then, so that its listener leaves the port at once (a
    restarted worker 0's group shares the port: a dying worker would still accept dials
    meant for it) and no seconds go to closing thousands of connections one by one.
    """
    from aggregator.app import (
        fleet_policy,
        fleet_subscriber,
        install_accept_path_patches,
        load_allowlist,
        serving_heartbeats,
    )

    try:
        stream = await trio.open_unix_socket(link_path)
    except OSError as exc:
        raise WorkerError(f"cannot reach worker 0 at {link_path}: {exc}") from exc
    link = Link(stream)
    try:
        await link.send(["hello", index, os.getpid()])
        with trio.fail_after(HELLO_TIMEOUT):
            reply = await link.receive()
        if not (reply and reply[0] == "config" and len(reply) == 2):
            raise WorkerError(f"worker 0 did not send a configuration: {reply!r}")
        config = _worker_config(reply[1])
        if not config.identity_file.exists():
            raise WorkerError(f"identity file {config.identity_file} is missing")
        key_pair = p2p.load_or_create_identity(config.identity_file)
        # A local fleet only for each peer's read deadline (its observed beat period).
        fleet = Fleet(fleet_policy(config))
        bus = Bus()
        bus.subscribe_sync("fleet", fleet_subscriber(fleet))
        outbox = bus.subscribe_required("link", LINK_CHANNEL_CAPACITY)
        ingest = Ingest(
            IngestSettings.from_config(config),
            bus,
            beat_timeout=fleet.beat_timeout,
            allowlist=load_allowlist(config.allowlist_file),
        )
        variants = variants or BenchVariants()
        install_accept_path_patches(config, variants)
        async with trio.open_nursery() as nursery:
            await nursery.start(ingest.run)
            async with serving_heartbeats(
                ingest, key_pair, config, identify_peers=variants.identify_peers
            ):
                nursery.start_soon(_forward, outbox, link)
                nursery.start_soon(_report_counters, ingest, link)
                if handle_signals:
                    await nursery.start(_worker_signals, ingest, config, nursery.cancel_scope)
                tune_gc(config.gc_threshold, freeze=config.gc_freeze)
                await link.send(["ready"])
                log.info(
                    "worker_listening index=%d pid=%d listen=%s",
                    index,
                    os.getpid(),
                    ",".join(config.listen),
                )
                task_status.started()
                await _follow_commands(link, ingest)
                log.warning("worker_stopping index=%d reason=worker_0_gone", index)
                if orphaned is not None:
                    orphaned()
                nursery.cancel_scope.cancel()
    except LINK_DOWN as exc:  # before the nursery: during hello
        raise WorkerError(f"link to worker 0 lost: {exc!r}") from exc
    finally:
        await link.aclose()


def _worker_config(mapping: Any) -> AggregatorConfig:
    if not isinstance(mapping, Mapping):
        raise WorkerError(f"bad configuration from worker 0: {type(mapping).__name__}")
    try:
        return replace(build_config(file=mapping), workers=1)
    except ConfigError as exc:
        raise WorkerError(f"bad configuration from worker 0: {exc}") from exc


async def _forward(outbox: trio.MemoryReceiveChannel[Event], link: Link) -> None:
    """Batches to worker 0; a broken link ends it (`_follow_commands` sees the end)."""
    with contextlib.suppress(*LINK_DOWN):
        async for event in outbox:
            # Collect for BATCH_DELAY: one frame (a send here, a wake-up and a receive in
            # worker 0) per ~BATCH_DELAY of events instead of one per event under load.
            await trio.sleep(BATCH_DELAY)
            batch = [event_to_wire(event)]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(event_to_wire(outbox.receive_nowait()))
                except trio.WouldBlock:
                    break
            await link.send(["events", batch])
    await trio.sleep_forever()  # keep the bus's required subscriber from failing ingest


async def _report_counters(ingest: Ingest, link: Link) -> None:
    with contextlib.suppress(*LINK_DOWN):
        while True:
            await link.send(["counters", counters_to_wire(ingest.counters)])
            await trio.sleep(COUNTERS_INTERVAL)


async def _follow_commands(link: Link, ingest: Ingest) -> None:
    """Worker 0's commands until the link ends (closed, broken or malformed)."""
    try:
        async for message in link.messages():
            if message[0] == "evict" and len(message) == 3:
                ingest.evict(str(message[1]), str(message[2]))
            else:
                log.warning("worker_unknown_command message=%r", message[:1])
    except (*LINK_DOWN, LinkError) as exc:
        log.warning("worker_link_lost err=%r", exc)


async def _worker_signals(
    ingest: Ingest,
    config: AggregatorConfig,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    from aggregator.app import load_allowlist

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    ingest.set_allowlist(load_allowlist(config.allowlist_file))
                except ConfigError as exc:
                    log.error("allowlist_reload_failed err=%s (keeping the previous list)", exc)
                continue
            scope.cancel()
            return
