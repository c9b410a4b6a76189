"""The aggregator's own metrics: ingest, bus, GC, alerts and workers, read at scrape time.

`SelfCollector` reads the plain counters the ingest (`IngestCounters`), the bus and the GC
monitor keep; `SelfFrame` is those values copied at one instant, to render in another thread.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aggregator.exposition import PREFIX
from heartbeat.protocol.wire import RejectReason
from heartbeat.version import __version__

__all__ = [
    "DISCONNECT_REASONS",
    "REFUSE_REASONS",
    "AlertsProvider",
    "BusLike",
    "CountersLike",
    "GcLike",
    "SelfCollector",
    "SelfFrame",
    "process_usage",
]

#: Reasons the ingest refuses a peer with; pre-initialised (others appear when first used).
REFUSE_REASONS = ("fleet_full", "not_allowed", "too_many_connections_per_ip", "too_many_streams")
#: Reasons the ingest disconnects a peer with; pre-initialised likewise.
DISCONNECT_REASONS = ("flooding", "read_timeout")

_REJECT_REASONS = tuple(r.value for r in RejectReason)

AlertsProvider = Callable[[], Iterable[Any]]


# Read-only members: the collector never writes them, and a settable `Mapping` member would not
# accept the ingest's `Counter` (mutable protocol members are invariant).
class CountersLike(Protocol):
    @property
    def beats_received(self) -> int: ...
    @property
    def beats_accepted(self) -> int: ...
    @property
    def beats_rejected(self) -> Mapping[str, int]: ...
    @property
    def beats_rate_limited(self) -> int: ...
    @property
    def decode_errors(self) -> Mapping[str, int]: ...
    @property
    def streams_open(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def handshakes_shed(self) -> int: ...
    @property
    def peers_refused(self) -> Mapping[str, int]: ...
    @property
    def peers_disconnected(self) -> Mapping[str, int]: ...


class BusLike(Protocol):
    @property
    def backpressure_seconds(self) -> float: ...
    @property
    def dropped(self) -> Mapping[str, int]: ...


class GcLike(Protocol):
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...

    def cumulative_buckets(self) -> list[tuple[str, int]]: ...


def _counter_by(
    name: str, doc: str, label: str, values: Mapping[str, int], preset: Iterable[str]
) -> CounterMetricFamily:
    fam = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    merged = dict.fromkeys(preset, 0)
    merged.update(values)
    for key in sorted(merged):
        fam.add_metric([key], merged[key])
    return fam


@dataclass(eq=False)
class SelfCollector(Collector):
    """The aggregator's own health, read from the ingest, bus and GC monitor at scrape time.

    The app attaches the sources once they exist; a missing source exports zeros (counters with
    their pre-initialised labels) so that dashboards and `rate()` work from the first scrape.
    `alerts_provider` returns the firing alerts: (alertname, severity) pairs, or objects with
    `alertname` and `severity` attributes.
    """

    peer_id: str = ""
    version: str = __version__
    counters: CountersLike | None = None
    bus: BusLike | None = None
    gc: GcLike | None = None
    alerts_provider: AlertsProvider | None = None
    #: With several workers (aggregator/workers.py): one dict per worker, 0 first, with
    #: `index`, `up`, `connections`, `restarts`. None: this process is the only worker.
    workers_provider: Callable[[], list[dict[str, Any]]] | None = None
    #: With --nats-url: the JetStream export's values (aggregator/scaleout/export.py `stats`).
    nats_provider: Callable[[], Mapping[str, float]] | None = None
    _pinned: threading.local = field(default_factory=threading.local, repr=False)

    def describe(self) -> list[Metric]:
        return []

    def pin(self, frame: SelfFrame | None) -> None:
        """Use `frame` for scrapes in this thread (None: read the sources again)."""
        self._pinned.frame = frame

    def firing_alerts(self) -> list[tuple[str, str]]:
        if self.alerts_provider is None:
            return []
        out: list[tuple[str, str]] = []
        for a in self.alerts_provider():
            if isinstance(a, tuple):
                out.append((str(a[0]), str(a[1])))
            else:
                out.append((str(a.alertname), str(a.severity)))
        return out

    def frame(self) -> SelfFrame:
        """Copy every value out of the live sources (call on the event loop)."""
        c, b, g = self.counters, self.bus, self.gc
        return SelfFrame(
            beats_received=c.beats_received if c else 0,
            beats_accepted=c.beats_accepted if c else 0,
            beats_rate_limited=c.beats_rate_limited if c else 0,
            beats_rejected=dict(c.beats_rejected) if c else {},
            decode_errors=dict(c.decode_errors) if c else {},
            peers_refused=dict(c.peers_refused) if c else {},
            peers_disconnected=dict(c.peers_disconnected) if c else {},
            streams_open=c.streams_open if c else 0,
            connections=c.connections if c else 0,
            handshakes_shed=c.handshakes_shed if c else 0,
            backpressure_seconds=b.backpressure_seconds if b else 0.0,
            bus_dropped=dict(b.dropped) if b else {},
            gc_buckets=g.cumulative_buckets() if g else [("+Inf", 0)],
            gc_sum=g.sum if g else 0.0,
            alerts=self.firing_alerts(),
            workers=self._workers(c),
            worker_processes=self._worker_processes(),
            nats=dict(self.nats_provider()) if self.nats_provider is not None else {},
        )

    def _workers(self, c: CountersLike | None) -> list[tuple[str, bool, int, int]]:
        if self.workers_provider is None:
            return [("0", True, c.connections if c else 0, 0)]
        return [
            (str(w["index"]), bool(w["up"]), int(w["connections"]), int(w["restarts"]))
            for w in self.workers_provider()
        ]

    def _worker_processes(self) -> list[tuple[str, float, float]]:
        """(worker, resident bytes, CPU seconds) of each worker process (`--workers N`);
        without workers, `process_*` describes the one process."""
        if self.workers_provider is None:
            return []
        out = []
        for w in self.workers_provider():
            usage = process_usage(w.get("pid"))
            if usage is not None:
                out.append((str(w["index"]), *usage))
        return out

    def collect(self) -> Iterator[Metric]:
        f = getattr(self._pinned, "frame", None) or self.frame()
        for name, doc, value in (
            ("beats_received", "Beats decoded from streams.", f.beats_received),
            ("beats_accepted", "Beats accepted into the fleet.", f.beats_accepted),
            (
                "beats_rate_limited",
                "Beats dropped by the per-peer rate limit.",
                f.beats_rate_limited,
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        yield _counter_by(
            "beats_rejected",
            "Beats rejected, by reason.",
            "reason",
            f.beats_rejected,
            _REJECT_REASONS,
        )
        yield _counter_by(
            "decode_errors",
            "Streams reset for a framing error, by reason.",
            "reason",
            f.decode_errors,
            _REJECT_REASONS,
        )
        yield _counter_by(
            "peers_refused", "Peers refused, by reason.", "reason", f.peers_refused, REFUSE_REASONS
        )
        yield _counter_by(
            "peers_disconnected",
            "Peers disconnected by us, by reason.",
            "reason",
            f.peers_disconnected,
            DISCONNECT_REASONS,
        )
        yield GaugeMetricFamily(PREFIX + "streams_open", "Open beat streams.", value=f.streams_open)
        yield GaugeMetricFamily(
            PREFIX + "connections", "Open libp2p connections.", value=f.connections
        )
        yield CounterMetricFamily(
            PREFIX + "handshakes_shed",
            "Inbound connections closed unanswered: no handshake slot within the queue wait.",
            value=f.handshakes_shed,
        )
        yield CounterMetricFamily(
            PREFIX + "bus_backpressure_seconds",
            "Time publishers waited on required subscribers.",
            value=f.backpressure_seconds,
        )
        yield _counter_by(
            "bus_dropped",
            "Events dropped for a lagging optional subscriber.",
            "subscriber",
            f.bus_dropped,
            (),
        )
        yield HistogramMetricFamily(
            PREFIX + "gc_pause_seconds",
            "Garbage collector pauses.",
            buckets=f.gc_buckets,
            sum_value=f.gc_sum,
        )
        firing = GaugeMetricFamily(
            PREFIX + "alerts_firing", "Firing alerts.", labels=["alertname", "severity"]
        )
        counts: dict[tuple[str, str], int] = {}
        for key in f.alerts:
            counts[key] = counts.get(key, 0) + 1
        for key in sorted(counts):
            firing.add_metric(list(key), counts[key])
        yield firing
        up = GaugeMetricFamily(
            PREFIX + "worker_up", "Ingest worker linked and listening.", labels=["worker"]
        )
        conns = GaugeMetricFamily(
            PREFIX + "worker_connections",
            "Open libp2p connections, by ingest worker.",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            PREFIX + "worker_restarts",
            "Ingest workers restarted after they died.",
            labels=["worker"],
        )
        for worker, is_up, connections, restarted in f.workers:
            up.add_metric([worker], 1.0 if is_up else 0.0)
            conns.add_metric([worker], connections)
            restarts.add_metric([worker], restarted)
        yield up
        yield conns
        yield restarts
        rss = GaugeMetricFamily(
            PREFIX + "worker_resident_memory_bytes",
            "Resident memory of each ingest worker process (--workers N).",
            labels=["worker"],
        )
        cpu = CounterMetricFamily(
            PREFIX + "worker_cpu_seconds",
            "User and system CPU time of each ingest worker process (--workers N).",
            labels=["worker"],
        )
        for worker, resident, seconds in f.worker_processes:
            rss.add_metric([worker], resident)
            cpu.add_metric([worker], seconds)
        yield rss
        yield cpu
        yield from _nats_families(f.nats)
        info = GaugeMetricFamily(
            PREFIX + "aggregator_info", "This aggregator (always 1).", labels=["peer_id", "version"]
        )
        info.add_metric([self.peer_id, self.version], 1.0)
        yield info
        build = GaugeMetricFamily(
            PREFIX + "build_info", "Build (always 1).", labels=["version", "python"]
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build


@dataclass(frozen=True)
class SelfFrame:
    """The self metrics' values copied at one instant (safe to render in another thread)."""

    beats_received: int
    beats_accepted: int
    beats_rate_limited: int
    beats_rejected: dict[str, int]
    decode_errors: dict[str, int]
    peers_refused: dict[str, int]
    peers_disconnected: dict[str, int]
    streams_open: int
    connections: int
    handshakes_shed: int
    backpressure_seconds: float
    bus_dropped: dict[str, int]
    gc_buckets: list[tuple[str, int]]
    gc_sum: float
    alerts: list[tuple[str, str]]
    #: (worker, up, connections, restarts) per ingest worker.
    workers: list[tuple[str, bool, int, int]] = field(default_factory=list)
    #: (worker, resident bytes, CPU seconds) per worker process, with `--workers N` only.
    worker_processes: list[tuple[str, float, float]] = field(default_factory=list)
    #: The JetStream export's values by name (empty without --nats-url).
    nats: dict[str, float] = field(default_factory=dict)


#: The JetStream export's families: name (after `nats_`), type, help.
_NATS = (
    ("spool_depth", "gauge", "Messages waiting in the spool for a NATS acknowledgement."),
    ("spool_oldest_age_seconds", "gauge", "Age of the oldest message waiting in the spool."),
    ("spool_dropped", "counter", "Messages dropped because the spool was full."),
    ("published", "counter", "Messages NATS acknowledged as stored."),
    ("duplicates", "counter", "Messages NATS acknowledged as duplicates (already stored)."),
    ("publish_errors", "counter", "Publish rounds that left messages unacknowledged."),
    ("connected", "gauge", "1 while NATS acknowledges the export's publishes."),
)


def _nats_families(values: Mapping[str, float]) -> Iterator[Metric]:
    if not values:
        return
    for name, kind, doc in _NATS:
        value = values.get(name + ("_total" if kind == "counter" else ""), 0.0)
        if kind == "counter":
            yield CounterMetricFamily(PREFIX + "nats_" + name, doc, value=value)
        else:
            yield GaugeMetricFamily(PREFIX + "nats_" + name, doc, value=value)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_usage(pid: object) -> tuple[float, float] | None:
    """(resident bytes, user + system CPU seconds) of process `pid` from /proc (Linux), or
    None (no such process, or no /proc). A read of procfs: no disk, microseconds."""
    if not isinstance(pid, int):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # after the command name, which may hold spaces and parentheses: the 3rd field on
    fields = text[text.rfind(b")") + 2 :].split()
    utime, stime, rss = int(fields[11]), int(fields[12]), int(fields[21])
    return float(rss * _PAGE), (utime + stime) / _TICKS
