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
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from aggregator.alerts.service import ChangeSignal
from aggregator.bus import BeatAccepted, Bus, Event, PeerConnected, PeerDisconnected
from aggregator.config import AggregatorConfig, http_url, parse_allowlist
from aggregator.fleet import Fleet, FleetPolicy, FleetSnapshot
from aggregator.gcmon import GcMonitor, tune_gc
from aggregator.ingest import Ingest, IngestSettings
from aggregator.metrics import AggregatorMetrics, create_metrics
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


def fleet_policy(config: AggregatorConfig) -> FleetPolicy:
    return FleetPolicy(
        lag_epochs=config.lag_threshold,
        stall_after=config.stall_after,
        beat_timeout_default=config.beat_timeout,
        beat_timeout_min=config.beat_timeout_min,
        beat_timeout_max=config.beat_timeout_max,
        retention=config.retention,
        max_nodes=config.max_nodes,
        probation=config.probation,
        max_probation=config.max_probation,
        max_probation_per_ip=config.max_probation_per_ip,
    )


def host_limits(config: AggregatorConfig) -> p2p.HostLimits:
    """All four layers of py-libp2p's limits from the config (unset ones derived)."""
    return p2p.HostLimits.server(
        config.max_connections,
        max_streams_total=config.max_streams_total,
        max_memory_mb=config.max_memory_mb,
        max_peers=config.max_peers,
        max_pending_inbound=config.max_pending_inbound,
        max_connections_per_peer=config.max_connections_per_peer,
        handshake_queue_wait=config.handshake_queue_wait,
        first_bytes_timeout=config.first_bytes_timeout,
        upgrade_timeout=config.upgrade_timeout,
        refusal_cap=config.refusal_cap,
        refusal_window=config.refusal_window,
    )


def load_allowlist(path: Path | None) -> frozenset[str] | None:
    """Read and parse the allowlist file (None: everyone is allowed)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
        return parse_allowlist(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError("allowlist_file", f"{path}: {exc}") from exc


def local_ip_addresses() -> tuple[list[str], list[str]]:
    """This machine's IPv4 and IPv6 addresses (loopback first), best effort."""
    v4: list[str] = ["127.0.0.1"]
    v6: list[str] = ["::1"]
    candidates: set[tuple[int, str]] = set()
    try:
        for family, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            candidates.add((family, str(sockaddr[0])))
    except OSError as exc:
        log.debug("hostname_lookup_failed err=%r", exc)
    # The address the default route would use (a UDP connect sends nothing).
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                candidates.add((family, str(sock.getsockname()[0])))
        except OSError:
            continue  # no route for this family
    for kind, addr in sorted(candidates):
        if kind == socket.AF_INET and addr not in v4 and not addr.startswith("127."):
            v4.append(addr)
        elif kind == socket.AF_INET6 and addr not in v6 and not addr.startswith("fe80"):
            v6.append(addr.split("%")[0])
    return v4, v6


def dialable_multiaddrs(
    listening: Iterable[str], peer_id: str, v4: Iterable[str], v6: Iterable[str]
) -> list[str]:
    """Full `/…/tcp/N/p2p/<id>` addresses; wildcard listeners expand to `v4`/`v6`."""
    v4, v6 = list(v4), list(v6)
    out: list[str] = []
    for addr in listening:
        parts = addr.split("/")  # ["", "ip4", host, "tcp", port]
        hosts = [parts[2]] if len(parts) > 2 else []
        if addr.startswith("/ip4/0.0.0.0/"):
            hosts = v4
        elif addr.startswith("/ip6/::/"):
            hosts = v6
        for host in hosts:
            full = "/".join([*parts[:2], host, *parts[3:]]) + f"/p2p/{peer_id}"
            if full not in out:
                out.append(full)
    return out


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


async def _start_alerts(
    agg: Aggregator, nursery: trio.Nursery, env: Mapping[str, str] | None = None
) -> None:
    """The built-in alerter (aggregator/alerts): on unless `[alerts] enabled = false`; its
    state in the state db (aggregator/alerts/state_store.py)."""
    from aggregator.alerts.delivery import DeliveryCollector
    from aggregator.alerts.service import AlertingService
    from aggregator.alerts.state_store import AlertStateStore
    from aggregator.alerts.wiring import build_delivery, load_settings

    settings = load_settings(agg.config.alerts, agg.config.alerts_file, env)
    if not settings.enabled:
        return
    delivery = build_delivery(
        settings, agg.config.name, f"{agg.http_url}/api/v1/alerts" if agg.http_url else ""
    )
    agg.metrics.registry.register(DeliveryCollector(delivery))
    service = AlertingService(
        agg.snapshot,
        settings.policy,
        delivery,
        interval=settings.evaluation_interval,
        static_labels={"aggregator": agg.config.name},
        send_test_alert=settings.send_test_alert,
        wall_clock=agg.wall_clock,
        changes=agg.alert_changes,
        runbook_base_url=agg.config.runbook_base_url,
        state_store=AlertStateStore(agg.config.state_db),
        leader=await _start_leader(agg, nursery) if agg.nats is not None else None,
    )
    if agg.nats_export is not None:
        service.on_transitions = agg.nats_export.on_alert_transitions
    await nursery.start(service.run)
    agg.metrics.set_alerts_provider(service.firing)
    if agg.http is not None:
        agg.http.set_alerts_provider(service.current)
        agg.http.alerts_leader = service.leader_name
        if service.leader is not None:  # several aggregators: the page says which one sends
            agg.http.page.alerts_leader = service.leader_name


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


async def _start_store(agg: Aggregator, nursery: trio.Nursery) -> None:
    """Restore the node registry into the fleet, then run the batched writer."""
    from aggregator import store

    # The writer restores the fleet before it starts and flushes once more
    # (shielded) at shutdown; expiry is `run_expiry`'s.
    restored = await nursery.start(
        partial(
            store.run_store_writer,
            agg.fleet,
            store.NodeStore(agg.config.state_db, reset_broken=agg.config.reset_state),
            agg.store_events,
            agg.config.store_flush_interval,
            clock=agg.wall_clock,
        )
    )
    log.info("fleet_restored nodes=%s path=%s", restored, agg.config.state_db)


async def _start_history(agg: Aggregator, nursery: trio.Nursery) -> None:
    """Node history and uptime (aggregator/history_service.py) in the state db's own tables."""
    from aggregator.history_service import HistoryService
    from aggregator.history_store import HistoryStore

    agg.history = HistoryService(
        HistoryStore(agg.config.state_db),
        agg.snapshot,
        retention=agg.config.history_retention,
        flush_interval=agg.config.store_flush_interval,
        clock=agg.wall_clock,
    )
    if agg.nats_export is not None:
        agg.history.on_transitions = agg.nats_export.on_node_transitions
    await nursery.start(agg.history.run)


async def _start_nats(agg: Aggregator, nursery: trio.Nursery) -> None:
    """The process's one NATS bridge, then the JetStream export (aggregator/scaleout/)."""
    from aggregator.scaleout.bridge import settings_from_config
    from aggregator.scaleout.export import run_bridge

    agg.nats = await nursery.start(run_bridge, settings_from_config(agg.config))
    await nursery.start(agg.nats_export.run, agg.nats)


async def _start_merge(agg: Aggregator, nursery: trio.Nursery) -> None:
    from aggregator.scaleout.merge_consumer import start_merge

    await start_merge(agg, nursery)


async def _start_leader(agg: Aggregator, nursery: trio.Nursery) -> Any:
    from aggregator.scaleout.leader import start_leader

    return await start_leader(agg, nursery)


def _attach_history(agg: Aggregator) -> None:
    """The history routes and each node's `uptime` in the HTTP API."""
    from aggregator.history_api import HistoryApi

    public = getattr(agg.config, "status_page", "private") == "public"
    agg.http.history = HistoryApi(agg.history, agg.snapshot, public=public)


async def _start_http(agg: Aggregator, nursery: trio.Nursery) -> str:
    from aggregator.http import HttpApi, serve_http

    agg.http = HttpApi(agg.snapshot, agg.metrics, bus=agg.bus, status_page=agg.config.status_page)
    agg.http.propagation = agg.fleet.propagation  # /api/v1/propagation
    port: int = await nursery.start(
        partial(serve_http, agg.http, agg.config.http_host, agg.config.http_port)
    )
    return http_url(agg.config.http_host, port)


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


async def _start_workers(agg: Aggregator, nursery: trio.Nursery) -> None:
    """Workers 1..N-1 on this process's port (aggregator/workers.py)."""
    from aggregator.workers import WorkerHub

    agg.hub = WorkerHub(agg)
    agg.metrics.own.counters = agg.hub.counters
    agg.metrics.own.workers_provider = agg.hub.summary
    agg.http.set_workers_provider(agg.hub.summary)
    await nursery.start(agg.hub.run, p2p.listen_multiaddrs(agg.host))


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
            await _start_store(agg, nursery)
            if config.nats_url:
                await _start_nats(agg, nursery)
                await _start_merge(agg, nursery)
            await _start_history(agg, nursery)
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
                agg.http_url = await _start_http(agg, nursery)
                _attach_history(agg)
                if config.workers > 1:
                    await _start_workers(agg, nursery)
                await _start_alerts(agg, nursery, alert_env)
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
