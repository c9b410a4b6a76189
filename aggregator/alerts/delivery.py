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
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from aggregator.alerts.rules import Alert, Transition, TransitionKind

__all__ = [
    "AlertDelivery",
    "RetryPolicy",
    "Target",
    "alertmanager_payload",
    "rfc3339",
    "webhook_payload",
]

log = logging.getLogger(__name__)


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.000Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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
        alerts.append({
            "status": "resolved" if tr.kind is TransitionKind.RESOLVED else "firing",
            "labels": _labels(a),
            "annotations": dict(a.annotations),
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(a.ends_at) if a.ends_at is not None else None,
        })
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


@dataclass
class Target:
    """One receiver, its queue and its counters."""

    kind: str  # "alertmanager" or "webhook"
    url: str
    send: trio.MemorySendChannel[list[Transition]]
    receive: trio.MemoryReceiveChannel[list[Transition]]
    delivered: int = 0
    failed: int = 0
    overflow: int = 0
    retries: int = 0

    @property
    def post_url(self) -> str:
        return f"{self.url}/api/v2/alerts" if self.kind == "alertmanager" else self.url


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
    ) -> None:
        self.sender = sender
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
                log.warning("alert_queue_full target=%s dropped=%d total_dropped=%d",
                            target.url, len(wanted), target.overflow)

    def _body(self, target: Target, batch: list[Transition]) -> Any:
        if target.kind == "alertmanager":
            return alertmanager_payload((t.alert for t in batch), self.generator_url)
        return webhook_payload(batch, self.sender)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Drain every receiver's queue until cancelled."""
        timeout = httpx.Timeout(self.retry.attempt_timeout)
        async with httpx.AsyncClient(transport=self.transport, timeout=timeout) as client, \
                trio.open_nursery() as nursery:
            for target in self.targets:
                nursery.start_soon(self._drain, client, target)
            task_status.started()

    async def _drain(self, client: httpx.AsyncClient, target: Target) -> None:
        async for batch in target.receive:
            await self._deliver(client, target, batch)

    async def _deliver(self, client: httpx.AsyncClient, target: Target,
                       batch: list[Transition]) -> None:
        body = self._body(target, batch)
        give_up_at = trio.current_time() + self.retry.give_up_after
        attempt = 0
        while True:
            attempt += 1
            error = await self._post(client, target, body)
            if error is None:
                target.delivered += 1
                if attempt > 1:
                    log.info("alert_delivered target=%s attempts=%d", target.url, attempt)
                return
            if error.startswith("status=4") and error != "status=429":
                target.failed += 1
                log.error("alert_refused target=%s %s alerts=%d", target.url, error, len(batch))
                return
            delay = self.retry.delay(attempt, self.rng)
            if trio.current_time() + delay > give_up_at:
                target.failed += 1
                log.error("alert_delivery_gave_up target=%s attempts=%d err=%s alerts=%d",
                          target.url, attempt, error, len(batch))
                return
            target.retries += 1
            log.warning("alert_delivery_failed target=%s attempt=%d err=%s retry_in=%.1fs",
                        target.url, attempt, error, delay)
            await trio.sleep(delay)

    async def _post(self, client: httpx.AsyncClient, target: Target, body: Any) -> str | None:
        """None on success, else a short description of the failure."""
        try:
            with trio.fail_after(self.retry.attempt_timeout):
                response = await client.post(target.post_url, json=body)
        except trio.TooSlowError:
            return "timeout"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code >= 300:
            return f"status={response.status_code}"
        return None
