"""The aggregator's services, each started in the app's one root nursery: the registry
writer, the history, NATS (export, merge, the alert lease), the alerter, HTTP and the
ingest workers. `aggregator.app.run_aggregator` starts them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from aggregator.config import http_url
from heartbeat.net import p2p

if TYPE_CHECKING:
    from aggregator.app import Aggregator

__all__ = [
    "attach_history",
    "start_alerts",
    "start_history",
    "start_http",
    "start_leader",
    "start_merge",
    "start_nats",
    "start_store",
    "start_workers",
]

log = logging.getLogger("aggregator.app")


async def start_alerts(
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
        leader=await start_leader(agg, nursery) if agg.nats is not None else None,
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


async def start_store(agg: Aggregator, nursery: trio.Nursery) -> None:
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


async def start_history(agg: Aggregator, nursery: trio.Nursery) -> None:
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


async def start_nats(agg: Aggregator, nursery: trio.Nursery) -> None:
    """The process's one NATS bridge, then the JetStream export (aggregator/scaleout/)."""
    from aggregator.scaleout.bridge import settings_from_config
    from aggregator.scaleout.export import run_bridge

    agg.nats = await nursery.start(run_bridge, settings_from_config(agg.config))
    await nursery.start(agg.nats_export.run, agg.nats)


async def start_merge(agg: Aggregator, nursery: trio.Nursery) -> None:
    from aggregator.scaleout.merge_consumer import start_merge

    await start_merge(agg, nursery)


async def start_leader(agg: Aggregator, nursery: trio.Nursery) -> Any:
    from aggregator.scaleout.leader import start_leader

    return await start_leader(agg, nursery)


def attach_history(agg: Aggregator) -> None:
    """The history routes and each node's `uptime` in the HTTP API."""
    from aggregator.history_api import HistoryApi

    public = getattr(agg.config, "status_page", "private") == "public"
    agg.http.history = HistoryApi(agg.history, agg.snapshot, public=public)


async def start_http(agg: Aggregator, nursery: trio.Nursery) -> str:
    from aggregator.http import HttpApi, serve_http

    agg.http = HttpApi(agg.snapshot, agg.metrics, bus=agg.bus, status_page=agg.config.status_page)
    agg.http.propagation = agg.fleet.propagation  # /api/v1/propagation
    port: int = await nursery.start(
        partial(serve_http, agg.http, agg.config.http_host, agg.config.http_port)
    )
    return http_url(agg.config.http_host, port)


async def start_workers(agg: Aggregator, nursery: trio.Nursery) -> None:
    """Workers 1..N-1 on this process's port (aggregator/workers.py)."""
    from aggregator.workers import WorkerHub

    agg.hub = WorkerHub(agg)
    agg.metrics.own.counters = agg.hub.counters
    agg.metrics.own.workers_provider = agg.hub.summary
    agg.http.set_workers_provider(agg.hub.summary)
    await nursery.start(agg.hub.run, p2p.listen_multiaddrs(agg.host))
