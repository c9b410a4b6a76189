"""The delivery counters of every alert receiver, read at scrape time.

`DeliveryCollector(delivery)` exports each receiver's counters (labels `kind` =
alertmanager|webhook|slack|discord|telegram|pagerduty, `receiver` = its masked URL):
`fil_heartbeat_alert_notifications_total` (POSTs accepted),
`..._alert_notification_failures_total{reason}` (failed attempts, retried or not, by
`FailureReason`), `..._alert_notifications_abandoned_total` (batches given up after the
retries or refused with a 4xx), `..._alert_batches_dropped_total` (batches that found the
queue full), `..._alert_queue_depth` (batches waiting) and
`..._alert_last_success_timestamp_seconds` (0 until the first success). The app registers it
on the aggregator's own registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.alerts.receivers.common import FailureReason
from aggregator.metrics import PREFIX

if TYPE_CHECKING:
    from aggregator.alerts.delivery import AlertDelivery, Target

__all__ = ["DeliveryCollector"]

_LABELS = ["kind", "receiver"]


class DeliveryCollector(Collector):
    """Every receiver's delivery counters, read at scrape time (see the module docstring)."""

    def __init__(self, delivery: AlertDelivery) -> None:
        self.delivery = delivery

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration time

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            PREFIX + "alert_notifications",
            "Alert notifications delivered (POSTs answered 2xx).",
            labels=_LABELS,
        )
        failures = CounterMetricFamily(
            PREFIX + "alert_notification_failures",
            "Failed alert notification attempts (each retry counts), by reason.",
            labels=[*_LABELS, "reason"],
        )
        abandoned = CounterMetricFamily(
            PREFIX + "alert_notifications_abandoned",
            "Alert notifications given up after their retries or refused with a 4xx.",
            labels=_LABELS,
        )
        dropped = CounterMetricFamily(
            PREFIX + "alert_batches_dropped",
            "Alert batches dropped because the receiver's queue was full.",
            labels=_LABELS,
        )
        depth = GaugeMetricFamily(
            PREFIX + "alert_queue_depth", "Alert batches waiting for the receiver.", labels=_LABELS
        )
        last = GaugeMetricFamily(
            PREFIX + "alert_last_success_timestamp_seconds",
            "When a notification last reached the receiver (0: never).",
            labels=_LABELS,
        )
        # Two URLs differing only in what the label leaves out are one receiver: summed.
        rows: dict[tuple[str, str], _Row] = {}
        for t in self.delivery.targets:
            rows.setdefault((t.kind, t.name), _Row()).add(t)
        for key, row in rows.items():
            labels = list(key)
            sent.add_metric(labels, row.sent)
            for reason, count in row.failures.items():
                failures.add_metric([*labels, reason.value], count)
            abandoned.add_metric(labels, row.abandoned)
            dropped.add_metric(labels, row.dropped)
            depth.add_metric(labels, row.depth)
            last.add_metric(labels, row.last_success)
        yield from (sent, failures, abandoned, dropped, depth, last)


@dataclass
class _Row:
    """One receiver's values for a scrape."""

    sent: int = 0
    failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    abandoned: int = 0
    dropped: int = 0
    depth: int = 0
    last_success: float = 0.0

    def add(self, t: Target) -> None:
        self.sent += t.delivered
        for reason, count in t.attempt_failures.items():
            self.failures[reason] += count
        self.abandoned += t.failed
        self.dropped += t.overflow
        self.depth += t.queued
        self.last_success = max(self.last_success, t.last_success or 0.0)
