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
"""

from __future__ import annotations

import logging
import math
import platform
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aggregator.fleet import NodeState
from heartbeat.protocol.wire import RejectReason
from heartbeat.version import __version__

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot, NodeView

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

log = logging.getLogger(__name__)

PREFIX = "fil_heartbeat_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Reasons the ingest refuses a peer with; pre-initialised (others appear when first used).
REFUSE_REASONS = ("fleet_full", "not_allowed", "too_many_connections_per_ip", "too_many_streams")
#: Reasons the ingest disconnects a peer with; pre-initialised likewise.
DISCONNECT_REASONS = ("flooding", "read_timeout")

_REJECT_REASONS = tuple(r.value for r in RejectReason)
_STATES = tuple(NodeState)
_NODE_LABELS = ("peer_id", "nickname", "miner", "network")

SnapshotProvider = Callable[[], "FleetSnapshot | None"]
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


def _g(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


class FleetCollector(Collector):
    """The fleet families through prometheus_client: the reference for `FleetRenderer`.

    Not registered by `create_metrics` (too slow for 10,000 nodes); `render_reference` uses it.
    """

    def __init__(self, snapshot_provider: SnapshotProvider, *, legacy: bool = False) -> None:
        self.snapshot_provider = snapshot_provider
        self.legacy = legacy

    def describe(self) -> list[Metric]:
        return []  # do not evaluate the provider at registration time

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot_provider()
        if snap is None:
            return
        yield from self._nodes(snap)
        yield from self._networks(snap)
        if self.legacy:
            yield from self._legacy(snap)

    def _nodes(self, snap: FleetSnapshot) -> Iterator[Metric]:
        height = _g("node_height", "Height of the node's head tipset (epochs).", _NODE_LABELS)
        head_ts = _g(
            "node_head_timestamp_seconds", "Timestamp of the node's head tipset.", _NODE_LABELS
        )
        last_beat = _g(
            "node_last_beat_timestamp_seconds", "When the node's last beat arrived.", _NODE_LABELS
        )
        changed = _g(
            "node_head_changed_timestamp_seconds",
            "When the node's head last changed.",
            _NODE_LABELS,
        )
        up = _g("node_up", "1 when the node is connected and beating in time.", _NODE_LABELS)
        state = _g(
            "node_state",
            "1 for the node's current state, 0 for the others.",
            (*_NODE_LABELS, "state"),
        )
        lag = _g("node_lag_epochs", "Network height minus node height (epochs).", _NODE_LABELS)
        syncing = _g("node_syncing", "1 when the node reports it is syncing.", _NODE_LABELS)
        beats = CounterMetricFamily(
            PREFIX + "node_beats", "Beats received from the node.", labels=list(_NODE_LABELS)
        )
        hhash = _g(
            "node_head_hash",
            "Head CID set hashed to an integer below 2^52 (0: no head).",
            _NODE_LABELS,
        )
        info = _g(
            "node_info", "Node metadata (always 1).", (*_NODE_LABELS, "version", "remote_address")
        )
        for v in snap.nodes:
            labels = [v.peer_id, v.nickname, v.miner_address, v.network]
            height.add_metric(labels, v.height)
            if v.head_timestamp is not None:
                head_ts.add_metric(labels, v.head_timestamp)
            last_beat.add_metric(labels, v.last_beat)
            changed.add_metric(labels, v.head_changed_at)
            up.add_metric(labels, 1.0 if v.up else 0.0)
            for s in _STATES:
                state.add_metric([*labels, s.value], 1.0 if v.state is s else 0.0)
            if v.lag_epochs is not None:
                lag.add_metric(labels, v.lag_epochs)
            syncing.add_metric(labels, 1.0 if v.syncing else 0.0)
            beats.add_metric(labels, v.beats_received)
            hhash.add_metric(labels, v.head_hash)
            info.add_metric([*labels, v.version or "", v.remote_address], 1.0)
        yield from (height, head_ts, last_beat, changed, up, state, lag, syncing, beats, hhash)
        yield info

    def _networks(self, snap: FleetSnapshot) -> Iterator[Metric]:
        height = _g("network_height", "Highest height among up nodes.", ["network"])
        expected = _g(
            "network_expected_height",
            "Height expected from genesis time and block delay.",
            ["network"],
        )
        nodes = _g("nodes", "Nodes per state.", ["network", "state"])
        in_cons = _g("nodes_in_consensus", "Up nodes in consensus.", ["network"])
        dispute = _g("nodes_in_dispute", "Up nodes not in consensus.", ["network"])
        chash = _g(
            "consensus_head_hash",
            "Consensus head hashed like node_head_hash (0: none).",
            ["network"],
        )
        for net in snap.networks.values():
            label = [net.name]
            if net.height is not None:
                height.add_metric(label, net.height)
            if net.expected_height is not None:
                expected.add_metric(label, net.expected_height)
            for s in _STATES:
                nodes.add_metric([net.name, s.value], net.counts.get(s, 0))
            in_cons.add_metric(label, net.in_consensus)
            dispute.add_metric(label, net.in_dispute)
            chash.add_metric(label, net.consensus_head_hash)
        yield from (height, expected, nodes, in_cons, dispute, chash)

    def _legacy(self, snap: FleetSnapshot) -> Iterator[Metric]:
        nets = snap.networks.values()
        label = ["aggregator"]
        for name, doc, value in (
            ("connected_nodes", "Nodes up (legacy).", sum(n.nodes_up for n in nets)),
            (
                "nodes_in_consensus",
                "Nodes in consensus (legacy).",
                sum(n.in_consensus for n in nets),
            ),
            ("nodes_in_dispute", "Nodes in dispute (legacy).", sum(n.in_dispute for n in nets)),
        ):
            fam = GaugeMetricFamily(name, doc, labels=["aggregator"])
            fam.add_metric(label, value)
            yield fam


# -- the fleet families, hand-written ----------------------------------------------------------
#
# Why by hand: prometheus_client builds a Metric, a label dict and a Sample tuple per series,
# then escapes and sorts every label set again in every family. At 10,000 nodes (16 series each)
# that took ~1.4 s per scrape, in a worker thread that holds the GIL against the event loop.
# Here a node's label string is escaped once and cached until one of its labels changes, and a
# series is one f-string. Same names, HELP/TYPE lines, labels and values as `FleetCollector`
# (tests/test_metrics.py parses both and compares them).


def escape_label_value(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote, line feed escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(value: float) -> str:
    """A sample value: integers without a fraction, other floats in their shortest exact form."""
    if type(value) is int:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2.0**53:
        return str(int(value))
    return repr(value)


def _header(name: str, kind: str, doc: str) -> str:
    # prometheus_client names a counter's HELP/TYPE lines after its `_total` sample: do the same
    shown = name + "_total" if kind == "counter" else name
    return f"# HELP {shown} {_escape_help(doc)}\n# TYPE {shown} {kind}\n"


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())


_N = PREFIX + "node_"
_H_HEIGHT = _header(_N + "height", "gauge", "Height of the node's head tipset (epochs).")
_H_HEAD_TS = _header(_N + "head_timestamp_seconds", "gauge", "Timestamp of the node's head tipset.")
_H_LAST_BEAT = _header(
    _N + "last_beat_timestamp_seconds", "gauge", "When the node's last beat arrived."
)
_H_CHANGED = _header(
    _N + "head_changed_timestamp_seconds", "gauge", "When the node's head last changed."
)
_H_UP = _header(_N + "up", "gauge", "1 when the node is connected and beating in time.")
_H_STATE = _header(_N + "state", "gauge", "1 for the node's current state, 0 for the others.")
_H_LAG = _header(_N + "lag_epochs", "gauge", "Network height minus node height (epochs).")
_H_SYNCING = _header(_N + "syncing", "gauge", "1 when the node reports it is syncing.")
_H_BEATS = _header(_N + "beats", "counter", "Beats received from the node.")
_H_HASH = _header(
    _N + "head_hash", "gauge", "Head CID set hashed to an integer below 2^52 (0: no head)."
)
_H_INFO = _header(_N + "info", "gauge", "Node metadata (always 1).")
_NETWORK_FAMILIES = (
    ("network_height", "Highest height among up nodes."),
    ("network_expected_height", "Height expected from genesis time and block delay."),
    ("nodes", "Nodes per state."),
    ("nodes_in_consensus", "Up nodes in consensus."),
    ("nodes_in_dispute", "Up nodes not in consensus."),
    ("consensus_head_hash", "Consensus head hashed like node_head_hash (0: none)."),
)
_H_NET = {name: _header(PREFIX + name, "gauge", doc) for name, doc in _NETWORK_FAMILIES}
_LEGACY = (
    ("connected_nodes", "Nodes up (legacy)."),
    ("nodes_in_consensus", "Nodes in consensus (legacy)."),
    ("nodes_in_dispute", "Nodes in dispute (legacy)."),
)
_H_LEGACY = {name: _header(name, "gauge", doc) for name, doc in _LEGACY}
_STATE_SUFFIXES = tuple((s, f',state="{s.value}"}} ') for s in _STATES)

#: What a node's cached label strings depend on, besides its peer id.
_LabelKey = tuple[str, str, str, str | None, str]


class FleetRenderer:
    """The fleet families of a snapshot as exposition text, with per-node label strings cached.

    The cache holds the nodes of the last render only (a forgotten node leaves it at the next).
    Safe to call from one worker thread at a time or several: each render reads the previous
    cache and replaces it whole.
    """

    def __init__(self, *, legacy: bool = False) -> None:
        self.legacy = legacy
        self._cache: dict[str, tuple[_LabelKey, str, str]] = {}

    def render(self, snap: FleetSnapshot | None) -> str:
        out: list[str] = []
        for _ in self._steps(snap, out, len(snap.nodes) + 1 if snap is not None else 1):
            pass
        return "".join(out)

    async def render_chunked(
        self,
        snap: FleetSnapshot | None,
        checkpoint: Callable[[], Awaitable[object]],
        batch: int = 500,
    ) -> str:
        """`render`, awaiting `checkpoint()` (the event loop's turn) every `batch` nodes."""
        out: list[str] = []
        for _ in self._steps(snap, out, batch):
            await checkpoint()
        return "".join(out)

    def _steps(self, snap: FleetSnapshot | None, out: list[str], batch: int) -> Iterator[None]:
        """Append the exposition to `out`; yield after every `batch` rows of work."""
        if snap is None:
            return
        old = self._cache
        cache: dict[str, tuple[_LabelKey, str, str]] = {}
        rows: list[tuple[str, NodeView]] = []
        infos: list[str] = []
        for i, v in enumerate(snap.nodes, 1):
            key = (v.nickname, v.miner_address, v.network, v.version, v.remote_address)
            entry = old.get(v.peer_id)
            if entry is None or entry[0] != key:
                base = _labels(
                    peer_id=v.peer_id, nickname=v.nickname, miner=v.miner_address, network=v.network
                )
                extra = _labels(version=v.version or "", remote_address=v.remote_address)
                info = base + "," + extra
                entry = (key, "{" + base, f"{_N}info{{{info}}} 1\n")
            cache[v.peer_id] = entry
            rows.append((entry[1], v))
            infos.append(entry[2])
            if i % batch == 0:
                yield
        self._cache = cache

        families: tuple[tuple[str, Callable[[list[tuple[str, NodeView]]], list[str]]], ...] = (
            (_H_HEIGHT, lambda part: [f"{_N}height{b}}} {v.height}\n" for b, v in part]),
            (
                _H_HEAD_TS,
                lambda part: [
                    f"{_N}head_timestamp_seconds{b}}} {_num(v.head_timestamp)}\n"
                    for b, v in part
                    if v.head_timestamp is not None
                ],
            ),
            (
                _H_LAST_BEAT,
                lambda part: [
                    f"{_N}last_beat_timestamp_seconds{b}}} {_num(v.last_beat)}\n" for b, v in part
                ],
            ),
            (
                _H_CHANGED,
                lambda part: [
                    f"{_N}head_changed_timestamp_seconds{b}}} {_num(v.head_changed_at)}\n"
                    for b, v in part
                ],
            ),
            (_H_UP, lambda part: [f"{_N}up{b}}} {1 if v.up else 0}\n" for b, v in part]),
            (
                _H_STATE,
                lambda part: [
                    f"{_N}state{b}{suffix}{1 if v.state is s else 0}\n"
                    for b, v in part
                    for s, suffix in _STATE_SUFFIXES
                ],
            ),
            (
                _H_LAG,
                lambda part: [
                    f"{_N}lag_epochs{b}}} {_num(v.lag_epochs)}\n"
                    for b, v in part
                    if v.lag_epochs is not None
                ],
            ),
            (
                _H_SYNCING,
                lambda part: [f"{_N}syncing{b}}} {1 if v.syncing else 0}\n" for b, v in part],
            ),
            (
                _H_BEATS,
                lambda part: [f"{_N}beats_total{b}}} {_num(v.beats_received)}\n" for b, v in part],
            ),
            (_H_HASH, lambda part: [f"{_N}head_hash{b}}} {_num(v.head_hash)}\n" for b, v in part]),
        )
        add, extend = out.append, out.extend
        for header, lines in families:
            add(header)
            for start in range(0, len(rows), batch):
                extend(lines(rows[start : start + batch]))
                yield
        add(_H_INFO)
        extend(infos)
        self._networks(snap, out)
        if self.legacy:
            self._legacy(snap, out)

    @staticmethod
    def _networks(snap: FleetSnapshot, out: list[str]) -> None:
        nets = [(f'{{network="{escape_label_value(n.name)}"', n) for n in snap.networks.values()]
        add = out.append
        add(_H_NET["network_height"])
        for b, n in nets:
            if n.height is not None:
                add(f"{PREFIX}network_height{b}}} {_num(n.height)}\n")
        add(_H_NET["network_expected_height"])
        for b, n in nets:
            if n.expected_height is not None:
                add(f"{PREFIX}network_expected_height{b}}} {_num(n.expected_height)}\n")
        add(_H_NET["nodes"])
        for b, n in nets:
            for s, suffix in _STATE_SUFFIXES:
                add(f"{PREFIX}nodes{b}{suffix}{_num(n.counts.get(s, 0))}\n")
        for name, attr in (
            ("nodes_in_consensus", "in_consensus"),
            ("nodes_in_dispute", "in_dispute"),
            ("consensus_head_hash", "consensus_head_hash"),
        ):
            add(_H_NET[name])
            for b, n in nets:
                add(f"{PREFIX}{name}{b}}} {_num(getattr(n, attr))}\n")

    @staticmethod
    def _legacy(snap: FleetSnapshot, out: list[str]) -> None:
        nets = snap.networks.values()
        for name, value in (
            ("connected_nodes", sum(n.nodes_up for n in nets)),
            ("nodes_in_consensus", sum(n.in_consensus for n in nets)),
            ("nodes_in_dispute", sum(n.in_dispute for n in nets)),
        ):
            out.append(_H_LEGACY[name])
            out.append(f'{name}{{aggregator="aggregator"}} {_num(value)}\n')


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
        )

    def _workers(self, c: CountersLike | None) -> list[tuple[str, bool, int, int]]:
        if self.workers_provider is None:
            return [("0", True, c.connections if c else 0, 0)]
        return [
            (str(w["index"]), bool(w["up"]), int(w["connections"]), int(w["restarts"]))
            for w in self.workers_provider()
        ]

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
    peer_id: str = "",
    version: str = __version__,
) -> AggregatorMetrics:
    """The fleet renderer and a fresh registry holding the self collector."""
    registry = CollectorRegistry(auto_describe=False)
    own = SelfCollector(peer_id=peer_id, version=version)
    registry.register(own)
    return AggregatorMetrics(registry, FleetRenderer(legacy=legacy), own, snapshot_provider)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (0.0.4) of `registry`."""
    return generate_latest(registry)


def render_reference(snapshot: FleetSnapshot | None, *, legacy: bool = False) -> bytes:
    """The fleet families of `snapshot` through prometheus_client (tests, benchmarks)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: snapshot, legacy=legacy))
    return generate_latest(registry)
