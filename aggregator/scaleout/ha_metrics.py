"""The scale-out's own metrics (with --nats-url): who sends the alerts, what the merge did, and
who holds each node's connection.

- `fil_heartbeat_alert_leader{aggregator}`: 1 while this aggregator holds the alerter's lease
  (and may send), else 0.
- `fil_heartbeat_nats_merged_beats_total{result}`: remote beats by what became of them
  (`MergeResult`: applied, stale, duplicate, own, refused).
- `fil_heartbeat_nats_catch_up_seconds`: how long the start-up catch-up took (absent until done).
- `fil_heartbeat_nats_merge_stream_reads_total`: reads of the stream's newest beat per node
  (the catch-up, then one after each time the live subscription may have missed a beat: a
  lost connection); `fil_heartbeat_nats_merge_errors_total`: the merge consumer's failures.
- `fil_heartbeat_node_holder{peer_id, holder}`: 1 for every aggregator (its `--name`) holding
  the node's connection now, as this aggregator's merged fleet sees it. Every aggregator
  exports the whole merged fleet, so scraping two exports each node's figures twice (once per
  `instance`): the shipped rules (grafana/prometheus/rules.yml) take one value per node with
  `max by (peer_id, ...)`, and `fil_heartbeat:node_holders:count` counts the distinct holders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aggregator.exposition import PREFIX
from aggregator.scaleout.merge import MergeResult, held_by

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from aggregator.fleet import Fleet

__all__ = ["HaCollector", "origin_name"]


def origin_name(origin: str) -> str:
    """The aggregator's name in a stream origin (`<name>/<peer id>`)."""
    return origin.rsplit("/", 1)[0] if "/" in origin else origin


class HaCollector(Collector):
    """Reads the leader, the merge consumer and the fleet at scrape time (on the event loop)."""

    def __init__(
        self, name: str, fleet: Fleet, wall_clock: Any, merge: Any = None, leader: Any = None
    ) -> None:
        self.name = name
        self.fleet = fleet
        self.wall_clock = wall_clock
        self.merge = merge  # aggregator.scaleout.merge_consumer.MergeConsumer
        self.leader = leader  # aggregator.scaleout.leader.Leader

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            PREFIX + "alert_leader",
            "1 while this aggregator holds the alerter's lease (sends the alerts).",
            labels=["aggregator"],
        )
        if self.leader is not None:
            leader.add_metric([self.name], 1.0 if self.leader.is_leader() else 0.0)
        yield leader
        merged = CounterMetricFamily(
            PREFIX + "nats_merged_beats",
            "Beats read from the stream, by what the merge did with them.",
            labels=["result"],
        )
        counts = self.merge.merger.stats.counts if self.merge is not None else {}
        for result in MergeResult:
            merged.add_metric([result.value], counts.get(result, 0))
        yield merged
        if self.merge is not None and self.merge.catch_up_seconds is not None:
            yield GaugeMetricFamily(
                PREFIX + "nats_catch_up_seconds",
                "How long the start-up catch-up from the stream took.",
                value=self.merge.catch_up_seconds,
            )
        if self.merge is not None:
            yield CounterMetricFamily(
                PREFIX + "nats_merge_stream_reads",
                "Reads of the stream's newest beat per node (catch-up, then after a loss).",
                value=self.merge.resyncs,
            )
            yield CounterMetricFamily(
                PREFIX + "nats_merge_errors",
                "Failures of the merge consumer (NATS unavailable, the live reader lost).",
                value=self.merge.consumer_errors,
            )
        yield self._holders()

    def _holders(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            PREFIX + "node_holder",
            "1 for each aggregator holding the node's connection now (the merged fleet).",
            labels=["peer_id", "holder"],
        )
        fleet = self.fleet
        now = self.wall_clock()
        policy = fleet.policy
        origin = fleet.origin
        for pid, node in sorted(fleet._nodes.items()):
            if node.connections == 0 and node.remote is None:
                continue
            for holder in held_by(node, origin, policy.beat_timeout(node.period), now):
                family.add_metric([pid, origin_name(holder)], 1.0)
        return family
