"""The aggregator's Prometheus exposition: custom collectors on an own registry.

Every value is read at scrape time: the fleet families from the latest `FleetSnapshot` (a node
that is forgotten simply stops appearing), the self families from the plain counters the ingest
(`IngestCounters`), the bus (`Bus.backpressure_seconds`, `Bus.dropped`) and the GC monitor
(`GcMonitor`) keep. Nothing here registers on prometheus_client's global registry.

The per-node and per-network families are written by hand (`FleetRenderer`, see why there);
prometheus_client renders the self families. `FleetCollector` is the same fleet families as a
prometheus_client collector: the reference the tests and `bench/bench_metrics.py` compare with.

Label values are bounded: a head is exported as `node_head_hash` (a VALUE < 2**52), never as a
label; reject and refuse reasons come from fixed sets and are pre-initialised to 0 so that
`rate()` works from the first scrape.

The module holds the /metrics body (`AggregatorMetrics`, `create_metrics`); the families live by
concern: aggregator/exposition.py (the text format), aggregator/fleet_metrics.py (the fleet,
hand-written), aggregator/fleet_reference.py (the fleet through prometheus_client),
aggregator/self_metrics.py (the aggregator's own health). Their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from aggregator.exposition import CONTENT_TYPE, PREFIX, escape_label_value
from aggregator.fleet_metrics import FleetRenderer
from aggregator.fleet_reference import FleetCollector, render_reference
from aggregator.libp2p_metrics import Libp2pCollector
from aggregator.self_metrics import (
    DISCONNECT_REASONS,
    REFUSE_REASONS,
    AlertsProvider,
    SelfCollector,
    SelfFrame,
)
from heartbeat.version import __version__

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot

__all__ = [
    "CONTENT_TYPE",
    "DISCONNECT_REASONS",
    "PREFIX",
    "REFUSE_REASONS",
    "AggregatorMetrics",
    "FleetCollector",
    "FleetRenderer",
    "Prepared",
    "SelfCollector",
    "SelfFrame",
    "create_metrics",
    "escape_label_value",
    "render",
    "render_reference",
]

SnapshotProvider = Callable[[], "FleetSnapshot | None"]


@dataclass
class AggregatorMetrics:
    """The /metrics body: the hand-written fleet families, then the self registry's."""

    registry: CollectorRegistry  # the self families only
    fleet: FleetRenderer
    own: SelfCollector
    snapshot_provider: SnapshotProvider

    def set_alerts_provider(self, provider: AlertsProvider | None) -> None:
        self.own.alerts_provider = provider

    def render(self) -> bytes:
        return self.render_prepared(self.prepare())

    def prepare(self) -> Prepared:
        """Read every source on the event loop, for `render_prepared` (any thread) or
        `render_prepared_chunked` (on the loop, in batches: what the HTTP shell does).

        Rendering 10,000 nodes takes ~0.2 s: never in one piece on the loop.
        """
        return Prepared(self.snapshot_provider(), self.own.frame())

    def render_prepared(self, prepared: Prepared) -> bytes:
        """Render the prepared values; safe to run in a worker thread."""
        return self._with_own(prepared, self.fleet.render(prepared.snapshot).encode())

    async def render_prepared_chunked(
        self, prepared: Prepared, checkpoint: Callable[[], Awaitable[object]]
    ) -> bytes:
        """`render_prepared` on the event loop, awaiting `checkpoint()` between node batches."""
        fleet = await self.fleet.render_chunked(prepared.snapshot, checkpoint)
        return self._with_own(prepared, fleet.encode())

    def _with_own(self, prepared: Prepared, fleet: bytes) -> bytes:
        self.own.pin(prepared.frame)
        try:
            return fleet + render(self.registry)
        finally:
            self.own.pin(None)


@dataclass(frozen=True)
class Prepared:
    snapshot: FleetSnapshot | None
    frame: SelfFrame


def create_metrics(
    snapshot_provider: SnapshotProvider,
    *,
    legacy: bool = False,
    name: str = "aggregator",
    peer_id: str = "",
    version: str = __version__,
    process: bool = True,
) -> AggregatorMetrics:
    """The fleet renderer and a fresh registry holding the self collector; `name` is the
    legacy families' `aggregator` label (`--name`); `process`: the `process_*` families
    (off where a test compares two bodies byte for byte)."""
    registry = CollectorRegistry(auto_describe=False)
    own = SelfCollector(peer_id=peer_id, version=version)
    registry.register(own)
    registry.register(Libp2pCollector())
    # process_* (RSS, CPU, open fds, start time) of this process: worker 0 (--workers N)
    if process:
        ProcessCollector(registry=registry)
    renderer = FleetRenderer(legacy=legacy, name=name)
    return AggregatorMetrics(registry, renderer, own, snapshot_provider)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (0.0.4) of `registry`."""
    return generate_latest(registry)
