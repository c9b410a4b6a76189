"""Alert delivery: Alertmanager's v2 API and a generic JSON webhook, over httpx.

`AlertDelivery.submit(transitions)` never blocks: every target has its own bounded queue
(a batch that does not fit is dropped and counted) drained by its own task, so a dead
receiver delays neither the evaluator, nor the ingest, nor the other receivers.

- Alertmanager (`POST <url>/api/v2/alerts`, one target per URL: a cluster gets every alert at
  every member, as Prometheus does). Firing alerts carry no `endsAt` and are sent again
  every `resend_interval` by the evaluator (Alertmanager resolves an alert not re-sent within
  its `resolve_timeout`); a resolved alert carries `endsAt`. Times are RFC 3339 (UTC).
- Webhook (`POST <url>`): `{"version": "1", "sender": NAME, "alerts": [...]}` with
  `status` "firing"/"resolved" per alert, for FIRED and RESOLVED transitions only (a chat
  channel wants the page and the recovery, not a reminder every minute).

A failed POST (connection error, timeout, 5xx, 429) is retried with exponential backoff and
jitter until `RetryPolicy.give_up_after`; any other 4xx is not retried (the payload would be
refused again).

`DeliveryCollector(delivery)` exports each receiver's counters (labels `kind` =
alertmanager|webhook, `receiver` = its URL without user info, query or fragment):
`fil_heartbeat_alert_notifications_total` (POSTs answered 2xx),
`..._alert_notification_failures_total{reason}` (failed attempts, retried or not, by
`FailureReason`), `..._alert_notifications_abandoned_total` (batches given up after the
retries or refused with a 4xx), `..._alert_batches_dropped_total` (batches that found the
queue full), `..._alert_queue_depth` (batches waiting) and
`..._alert_last_success_timestamp_seconds` (0 until the first success). The app registers it
on the aggregator's own registry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.alerts.rules import Alert, Transition, TransitionKind
from aggregator.metrics import PREFIX

__all__ = [
    "AlertDelivery",
    "DeliveryCollector",
    "Failure",
    "FailureReason",
    "RetryPolicy",
    "Target",
    "alertmanager_payload",
    "receiver_label",
    "rfc3339",
    "webhook_payload",
]

log = logging.getLogger(__name__)


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.000Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _labels(alert: Alert) -> dict[str, str]:
    return {k: v for k, v in alert.labels.items() if v != ""}


def alertmanager_payload(alerts: Iterable[Alert], generator_url: str = "") -> list[dict[str, Any]]:
    """The JSON body of `POST /api/v2/alerts`."""
    out = []
    for a in alerts:
        item: dict[str, Any] = {
            "labels": _labels(a),
            "annotations": dict(a.annotations),
            "startsAt": rfc3339(a.starts_at),
        }
        if a.ends_at is not None:
            item["endsAt"] = rfc3339(a.ends_at)
        if generator_url:
            item["generatorURL"] = generator_url
        out.append(item)
    return out


def webhook_payload(transitions: Iterable[Transition], sender: str) -> dict[str, Any]:
    """The JSON body of a webhook POST."""
    alerts = []
    for tr in transitions:
        a = tr.alert
        alerts.append(
            {
                "status": "resolved" if tr.kind is TransitionKind.RESOLVED else "firing",
                "labels": _labels(a),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at) if a.ends_at is not None else None,
            }
        )
    return {"version": "1", "sender": sender, "alerts": alerts}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; each attempt under its own deadline."""

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2  # ± fraction of the delay
    attempt_timeout: float = 10.0
    give_up_after: float = 600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay, self.initial * self.factor ** (attempt - 1))
        return float(base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0)))


class FailureReason(StrEnum):
    """Why one POST failed; the values are the `reason` label."""

    HTTP_3XX = "http_3xx"  # a redirect: not followed
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECTION_ERROR = "connection_error"  # no usable answer: refused, reset, unreachable...
    TIMEOUT = "timeout"  # no answer within `RetryPolicy.attempt_timeout`


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed POST: its reason, the HTTP status if there was one, and a text for logs."""

    reason: FailureReason
    detail: str
    status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.reason is not FailureReason.HTTP_4XX or self.status == 429


@dataclass
class Target:
    """One receiver, its queue and its counters."""

    kind: str  # "alertmanager" or "webhook"
    url: str
    send: trio.MemorySendChannel[list[Transition]]
    receive: trio.MemoryReceiveChannel[list[Transition]]
    delivered: int = 0
    failed: int = 0  # batches abandoned: retries exhausted, or refused (4xx)
    overflow: int = 0
    retries: int = 0
    attempt_failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    last_success: float | None = None  # wall-clock unix seconds

    @property
    def post_url(self) -> str:
        return f"{self.url}/api/v2/alerts" if self.kind == "alertmanager" else self.url

    @property
    def queued(self) -> int:
        """Batches waiting in the queue (not counting the one being delivered)."""
        return self.receive.statistics().current_buffer_used


class AlertDelivery:
    """Queues and delivery tasks for every receiver; start `run` in a nursery."""

    def __init__(
        self,
        *,
        alertmanager_urls: Sequence[str] = (),
        webhook_urls: Sequence[str] = (),
        sender: str = "aggregator",
        generator_url: str = "",
        retry: RetryPolicy | None = None,
        queue_size: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sender = sender
        self.wall_clock = wall_clock
        self.generator_url = generator_url
        self.retry = retry if retry is not None else RetryPolicy()
        self.transport = transport
        self.rng = rng if rng is not None else random.Random()
        self.targets: list[Target] = []
        for kind, urls in (("alertmanager", alertmanager_urls), ("webhook", webhook_urls)):
            for url in urls:
                send, receive = trio.open_memory_channel[list[Transition]](queue_size)
                self.targets.append(Target(kind, url.rstrip("/"), send, receive))

    def submit(self, transitions: Sequence[Transition]) -> None:
        """Queue a batch for every receiver; never blocks (a full queue drops and counts)."""
        if not transitions:
            return
        batch = list(transitions)
        for target in self.targets:
            if target.kind == "webhook":
                wanted = [t for t in batch if t.kind is not TransitionKind.RESEND]
                if not wanted:
                    continue
            else:
                wanted = batch
            try:
                target.send.send_nowait(wanted)
            except trio.WouldBlock:
                target.overflow += 1
                log.warning(
                    "alert_queue_full target=%s dropped=%d total_dropped=%d",
                    target.url,
                    len(wanted),
                    target.overflow,
                )

    def _body(self, target: Target, batch: list[Transition]) -> Any:
        if target.kind == "alertmanager":
            return alertmanager_payload((t.alert for t in batch), self.generator_url)
        return webhook_payload(batch, self.sender)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain every receiver's queue until cancelled."""
        timeout = httpx.Timeout(self.retry.attempt_timeout)
        async with (
            httpx.AsyncClient(transport=self.transport, timeout=timeout) as client,
            trio.open_nursery() as nursery,
        ):
            for target in self.targets:
                nursery.start_soon(self._drain, client, target)
            task_status.started()

    async def _drain(self, client: httpx.AsyncClient, target: Target) -> None:
        async for batch in target.receive:
            await self._deliver(client, target, batch)

    async def _deliver(
        self, client: httpx.AsyncClient, target: Target, batch: list[Transition]
    ) -> None:
        body = self._body(target, batch)
        give_up_at = trio.current_time() + self.retry.give_up_after
        attempt = 0
        while True:
            attempt += 1
            failure = await self._post(client, target, body)
            if failure is None:
                target.delivered += 1
                target.last_success = self.wall_clock()
                if attempt > 1:
                    log.info("alert_delivered target=%s attempts=%d", target.url, attempt)
                return
            target.attempt_failures[failure.reason] += 1
            if not failure.retryable:
                target.failed += 1
                log.error(
                    "alert_refused target=%s %s alerts=%d", target.url, failure.detail, len(batch)
                )
                return
            delay = self.retry.delay(attempt, self.rng)
            if trio.current_time() + delay > give_up_at:
                target.failed += 1
                log.error(
                    "alert_delivery_gave_up target=%s attempts=%d err=%s alerts=%d",
                    target.url,
                    attempt,
                    failure.detail,
                    len(batch),
                )
                return
            target.retries += 1
            log.warning(
                "alert_delivery_failed target=%s attempt=%d err=%s retry_in=%.1fs",
                target.url,
                attempt,
                failure.detail,
                delay,
            )
            await trio.sleep(delay)

    async def _post(self, client: httpx.AsyncClient, target: Target, body: Any) -> Failure | None:
        """None on success, else what went wrong (classified by type and status, never text)."""
        try:
            with trio.fail_after(self.retry.attempt_timeout):
                response = await client.post(target.post_url, json=body)
        except trio.TooSlowError:
            return Failure(FailureReason.TIMEOUT, "timeout")
        except httpx.TimeoutException as exc:
            return Failure(FailureReason.TIMEOUT, f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            return Failure(FailureReason.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if status >= 300:
            reason = (
                FailureReason.HTTP_3XX
                if status < 400
                else FailureReason.HTTP_4XX
                if status < 500
                else FailureReason.HTTP_5XX
            )
            return Failure(reason, f"status={status}", status)
        return None


def receiver_label(url: str) -> str:
    """A receiver's URL for a label: without user info (a password), query or fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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
            rows.setdefault((t.kind, receiver_label(t.url)), _Row()).add(t)
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
