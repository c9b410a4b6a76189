"""The aggregator, wired under one root nursery.

`run_aggregator(config, task_status=...)` starts, in order: the ingest, the
node registry (SQLite, restored into the fleet, then a batched writer), the
libp2p host with the heartbeat handler on `fil/heartbeat/1.0.0` and its alias,
the HTTP endpoint, the fleet expiry timer, the alerting service (when
configured) and the signal handlers (SIGTERM/SIGINT: clean shutdown with the
store flushed; SIGHUP: allowlist reload). It reports `(multiaddrs, http_url)`
through `task_status.started` once everything listens.

The bus's required subscribers, in order: the fleet model (inline), the alert
evaluator's change signal (inline) and the store writer (a bounded channel: when
it lags, ingest waits and `bus_backpressure_seconds_total` grows); with `--nats-url`,
the JetStream export too (inline: it only encodes into its spool's batch,
aggregator/scaleout/export.py).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from aggregator.alerts.service import ChangeSignal
from aggregator.assembly import (
    dialable_multiaddrs,
    fleet_policy,
    host_limits,
    load_allowlist,
    local_ip_addresses,
)
from aggregator.bus import BeatAccepted, Bus, Event, PeerConnected, PeerDisconnected
from aggregator.config import AggregatorConfig
from aggregator.fleet import Fleet, FleetSnapshot
from aggregator.gcmon import GcMonitor, tune_gc
from aggregator.ingest import Ingest, IngestSettings
from aggregator.metrics import AggregatorMetrics, create_metrics
from aggregator.services import (
    attach_history,
    start_alerts,
    start_history,
    start_http,
    start_merge,
    start_nats,
    start_store,
    start_workers,
)
from aggregator.variants import BenchVariants
from heartbeat.errors import ConfigError
from heartbeat.net import compat, p2p
from heartbeat.net.compat import yamux_session
from heartbeat.net.streams import serve_protocols
from heartbeat.protocol.wire import PROTOCOL_ALIASES, PROTOCOL_ID

__all__ = [
    "Aggregator",
    "dialable_multiaddrs",
    "fleet_policy",
    "fleet_subscriber",
    "host_limits",
    "load_allowlist",
    "local_ip_addresses",
    "run_aggregator",
    "run_expiry",
]

log = logging.getLogger(__name__)

#: The store writer's bus channel: ~1 s of 10,000 agents beating every 3 s, twice over.
STORE_CHANNEL_CAPACITY = 8192


@dataclass
class Aggregator:
    """What the running aggregator is made of (for the alerting hook and tests)."""

    config: AggregatorConfig
    peer_id: str
    fleet: Fleet
    bus: Bus
    ingest: Ingest
    metrics: AggregatorMetrics
    gc: GcMonitor
    alert_changes: ChangeSignal
    store_events: trio.MemoryReceiveChannel[Event]
    host: Any = None
    http: Any = None  # aggregator.http.HttpApi
    hub: Any = None  # aggregator.workers.WorkerHub when workers > 1
    history: Any = None  # aggregator.history_service.HistoryService
    nats: Any = None  # aggregator.scaleout.bridge.NatsBridge (--nats-url)
    nats_export: Any = None  # aggregator.scaleout.export.Exporter (--nats-url)
    nats_merge: Any = None  # aggregator.scaleout.merge_consumer.MergeConsumer (--nats-url)
    alert_leader: Any = None  # aggregator.scaleout.leader.Leader (--nats-url)
    ha_metrics: Any = None  # aggregator.scaleout.ha_metrics.HaCollector (--nats-url)
    multiaddrs: list[str] = field(default_factory=list)
    http_url: str = ""
    wall_clock: Callable[[], float] = time.time
    #: Benchmark runs only: the py-libp2p fixes they turn off (aggregator/variants.py).
    variants: BenchVariants = field(default_factory=BenchVariants)

    def snapshot(self) -> FleetSnapshot:
        return self.fleet.snapshot(self.wall_clock())

    def reload_allowlist(self) -> bool:
        try:
            allowlist = load_allowlist(self.config.allowlist_file)
        except ConfigError as exc:
            log.error("allowlist_reload_failed err=%s (keeping the previous list)", exc)
            return False
        self.ingest.set_allowlist(allowlist)
        self.fleet.set_trusted(allowlist)
        return True


def fleet_subscriber(fleet: Fleet) -> Callable[[Event], None]:
    """The fleet model's required, inline bus subscriber."""

    def update(event: Event) -> None:
        if isinstance(event, BeatAccepted):
            fleet.on_beat(event.peer_id, event.beat, event.at)
        elif isinstance(event, PeerConnected):
            fleet.on_connect(event.peer_id, event.remote_addr, event.at)
        elif isinstance(event, PeerDisconnected):
            fleet.on_disconnect(event.peer_id, event.at)

    return update


async def _signals(
    agg: Aggregator,
    shutdown: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()  # handled from here on: a SIGTERM right after "ready" is clean
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("sighup_received action=reload_allowlist")
                agg.reload_allowlist()
                if agg.hub is not None:
                    agg.hub.signal_workers(signal.SIGHUP)
                continue
            log.info("shutdown_requested signal=%s", signal.Signals(signum).name)
            shutdown.cancel()
            return


async def run_expiry(
    fleet: Fleet,
    interval: float,
    *,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forget nodes past the fleet's retention now, then every `interval` seconds.

    Its own timer rather than part of the store's batches: expiry must not depend on
    persistence. The store deletes expired nodes at its next batch (`Fleet.drain_removed`).
    """
    fleet.expire(clock())
    task_status.started()
    deadline = trio.current_time()
    while True:
        deadline += interval
        await trio.sleep_until(deadline)
        fleet.expire(clock())


def build_aggregator(
    config: AggregatorConfig, key_pair: Any, *, wall_clock: Callable[[], float] = time.time
) -> Aggregator:
    """Everything but the I/O: fleet, bus, ingest, metrics."""
    peer_id = p2p.peer_id_of(key_pair)
    fleet = Fleet(fleet_policy(config))
    allowlist = load_allowlist(config.allowlist_file)
    fleet.set_trusted(allowlist)  # allowlisted peers skip probation
    bus = Bus()
    bus.subscribe_sync("fleet", fleet_subscriber(fleet))
    alert_changes = ChangeSignal()
    bus.subscribe_sync("alerts", alert_changes)
    store_events = bus.subscribe_required("store", STORE_CHANNEL_CAPACITY)
    ingest = Ingest(
        IngestSettings.from_config(config),
        bus,
        beat_timeout=fleet.beat_timeout,
        allowlist=allowlist,
        wall_clock=wall_clock,
    )
    metrics = create_metrics(
        lambda: fleet.snapshot(wall_clock()),
        legacy=config.legacy_metrics,
        name=config.name,
        peer_id=peer_id,
    )
    gc_monitor = GcMonitor()
    metrics.own.counters = ingest.counters
    metrics.own.bus = bus
    metrics.own.gc = gc_monitor
    nats_export = None
    if config.nats_url:  # the JetStream export: a required subscriber into its spool
        from aggregator.scaleout.export import Exporter

        nats_export = Exporter.for_aggregator(config, peer_id, bus, fleet, wall_clock=wall_clock)
        metrics.own.nats_provider = nats_export.stats
    agg = Aggregator(
        config,
        peer_id,
        fleet,
        bus,
        ingest,
        metrics,
        gc_monitor,
        alert_changes,
        store_events,
        wall_clock=wall_clock,
    )
    agg.nats_export = nats_export
    return agg


def install_accept_path_patches(
    config: AggregatorConfig, variants: BenchVariants | None = None
) -> None:
    """Every py-libp2p fix (heartbeat.net.compat) as configured, behind its version gate.

    Raises `CompatError` on another py-libp2p unless `allow_unpatched_libp2p`.
    """
    installed = compat.install_all(
        (variants or BenchVariants()).compat_options(),
        allow_unpatched=config.allow_unpatched_libp2p,
    )
    log.info("libp2p_fixes %s", " ".join(f"{k}={int(v)}" for k, v in installed.items()))


@asynccontextmanager
async def serving_heartbeats(
    ingest: Ingest, key_pair: Any, config: AggregatorConfig, *, identify_peers: bool = False
) -> AsyncIterator[Any]:
    """A running libp2p host whose heartbeat streams and connections go to `ingest`."""
    async with (
        p2p.running_host(
            key_pair,
            list(config.listen),
            host_limits(config),
            identify_peers=identify_peers,
        ) as host,
        yamux_session.yamux_sweeper(),
    ):
        ingest.bind(
            disconnect_peer=partial(p2p.close_peer, host),
            close_connection=p2p.close_connection,
        )
        p2p.watch_connections(host, ingest.on_connected, ingest.on_disconnected)
        gate = p2p.handshake_gate(host)  # installed by build_host with the same limits
        if gate is not None:
            gate.on_shed = ingest.on_shed
            ingest.on_inbound_refused = gate.refuse
        serve_protocols(host, [PROTOCOL_ID, *PROTOCOL_ALIASES], ingest.handle_stream)
        yield host


async def run_aggregator(
    config: AggregatorConfig,
    *,
    variants: BenchVariants | None = None,
    handle_signals: bool = True,
    on_ready: Callable[[Aggregator], None] | None = None,
    alert_env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[tuple[list[str], str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the aggregator until cancelled or signalled (see the module docstring);
    `alert_env` resolves the alert receivers' `*_env` secrets."""
    key_pair = p2p.load_or_create_identity(config.identity_file)
    agg = build_aggregator(config, key_pair)
    agg.variants = variants or BenchVariants()
    install_accept_path_patches(config, agg.variants)
    with trio.CancelScope() as shutdown, agg.gc:
        async with trio.open_nursery() as nursery:
            await nursery.start(agg.ingest.run)
            await start_store(agg, nursery)
            if config.nats_url:
                await start_nats(agg, nursery)
                await start_merge(agg, nursery)
            await start_history(agg, nursery)
            await nursery.start(
                partial(run_expiry, agg.fleet, config.expire_interval, clock=agg.wall_clock)
            )
            async with serving_heartbeats(
                agg.ingest, key_pair, config, identify_peers=agg.variants.identify_peers
            ) as host:
                agg.host = host
                v4, v6 = local_ip_addresses()
                agg.multiaddrs = dialable_multiaddrs(
                    p2p.listen_multiaddrs(host), agg.peer_id, v4, v6
                )
                agg.http_url = await start_http(agg, nursery)
                attach_history(agg)
                if config.workers > 1:
                    await start_workers(agg, nursery)
                await start_alerts(agg, nursery, alert_env)
                if handle_signals:
                    await nursery.start(_signals, agg, shutdown)
                if agg.nats_merge is not None:  # the whole fleet first (bounded)
                    await agg.nats_merge.caught_up.wait()
                agg.http.set_ready(True)
                tune_gc(config.gc_threshold, freeze=config.gc_freeze)
                for addr in agg.multiaddrs:
                    log.info("listening multiaddr=%s", addr)
                log.info("http_listening url=%s peer_id=%s", agg.http_url, agg.peer_id)
                if on_ready is not None:
                    on_ready(agg)
                task_status.started((list(agg.multiaddrs), agg.http_url))
                await trio.sleep_forever()
    log.info("aggregator_stopped")
