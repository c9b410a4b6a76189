"""The fleet families through prometheus_client: the reference for `FleetRenderer`.

Too slow for 10,000 nodes, so /metrics never uses it; tests/test_metrics.py and
`bench/bench_metrics.py` compare the hand-written text with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aggregator.exposition import PREFIX
from aggregator.fleet import NodeState
from aggregator.propagation import HEAD_DELAY_BUCKETS
from heartbeat.protocol.beat import SourceState

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot

__all__ = ["FleetCollector", "render_reference"]

_STATES = tuple(NodeState)
_NODE_LABELS = ("peer_id", "nickname", "miner", "network")

SnapshotProvider = Callable[[], "FleetSnapshot | None"]


def _g(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


class FleetCollector(Collector):
    """The fleet families through prometheus_client: the reference for `FleetRenderer`.

    Not registered by `create_metrics` (too slow for 10,000 nodes); `render_reference` uses it.
    """

    def __init__(
        self, snapshot_provider: SnapshotProvider, *, legacy: bool = False, name: str = "aggregator"
    ) -> None:
        self.snapshot_provider = snapshot_provider
        self.legacy = legacy
        self.name = name  # the legacy families' `aggregator` label

    def describe(self) -> list[Metric]:
        return []  # do not evaluate the provider at registration time

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot_provider()
        if snap is None:
            return
        yield from self._nodes(snap)
        yield from self._networks(snap)
        yield self._head_delays(snap)
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
        probation = _g(
            "node_probation",
            "1 while the node is on probation (not alerted on, not voting).",
            _NODE_LABELS,
        )
        source = _g(
            "node_source_state",
            "1 for the state the node's agent reports of its head source, 0 for the others.",
            (*_NODE_LABELS, "state"),
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
            probation.add_metric(labels, 1.0 if v.probation else 0.0)
            if v.source_state is not None:
                for src in SourceState:
                    source.add_metric([*labels, src.value], 1.0 if v.source_state == src else 0.0)
            info.add_metric([*labels, v.version or "", v.remote_address], 1.0)
        yield from (height, head_ts, last_beat, changed, up, state, lag, syncing, beats, hhash)
        yield probation
        yield source
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

    def _head_delays(self, snap: FleetSnapshot) -> Metric:
        fam = HistogramMetricFamily(
            PREFIX + "head_delay_seconds",
            "How late nodes learned each new head: HeadSeenAt - HeadTimestamp (seconds).",
            labels=["network"],
        )
        for network, h in snap.head_delays.items():
            buckets: list[tuple[str, float]] = [
                (repr(float(le)), float(c))
                for le, c in zip(HEAD_DELAY_BUCKETS, h.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(h.count)))
            fam.add_metric([network], buckets, sum_value=h.total)
        return fam

    def _legacy(self, snap: FleetSnapshot) -> Iterator[Metric]:
        nets = snap.networks.values()
        label = [self.name]
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


def render_reference(
    snapshot: FleetSnapshot | None, *, legacy: bool = False, name: str = "aggregator"
) -> bytes:
    """The fleet families of `snapshot` through prometheus_client (tests, benchmarks)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: snapshot, legacy=legacy, name=name))
    return generate_latest(registry)
