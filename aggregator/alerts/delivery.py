"""Alert delivery: one queue and one task per receiver (aggregator/alerts/receivers), httpx.

`AlertDelivery.submit(transitions)` never blocks: every target has its own bounded queue
(a batch that does not fit is dropped and counted) drained by its own task, so a dead
receiver delays neither the evaluator, nor the ingest, nor the other receivers.

What each receiver gets of the evaluator's transitions:
- Alertmanager (`POST <url>/api/v2/alerts`, one target per URL: a cluster gets every alert at
  every member, as Prometheus does): every FIRED, RESEND (Alertmanager resolves an alert
  not re-sent within its `resolve_timeout`) and RESOLVED.
- Every other receiver (webhook, Slack, Discord, Telegram, PagerDuty): the page (FIRED), the
  recovery (RESOLVED, unless `send_resolved = false`) and, when the receiver has a
  `repeat_interval`, one reminder per alert that often while it fires (measured from the
  last notification, wall-clock, kept in the state db across restarts by
  aggregator/alerts/state_store.py).

A failed POST (connection error, timeout, 5xx, 429) is retried with exponential backoff and
jitter until `RetryPolicy.give_up_after`; a receiver's Retry-After (or Discord's and
Telegram's `retry_after`) replaces the backoff for that pause. Any other 4xx is not retried
(the payload would be refused again). URLs in logs and labels are masked (`mask_url`).

`DeliveryCollector` (aggregator/alerts/delivery_metrics.py, re-exported) exports each
receiver's counters.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from aggregator.alerts.delivery_metrics import DeliveryCollector
from aggregator.alerts.model import Alert, Transition, TransitionKind
from aggregator.alerts.receivers import AlertmanagerReceiver, Receiver, WebhookReceiver
from aggregator.alerts.receivers.alertmanager import alertmanager_payload
from aggregator.alerts.receivers.common import (
    Failure,
    FailureReason,
    Notice,
    NoticeKind,
    Reply,
    Request,
    RetryPolicy,
    alert_key,
    mask_url,
    rfc3339,
)
from aggregator.alerts.receivers.webhook import webhook_body

__all__ = [
    "AlertDelivery",
    "DeliveryCollector",
    "Failure",
    "FailureReason",
    "RetryPolicy",
    "Target",
    "TestResult",
    "alertmanager_payload",
    "notices_for",
    "receiver_label",
    "rfc3339",
    "webhook_payload",
]

log = logging.getLogger(__name__)

#: A receiver's URL for a label: without user info, query, fragment or secret path parts.
receiver_label = mask_url


def webhook_payload(transitions: Iterable[Transition], sender: str) -> dict[str, Any]:
    """The JSON body of a webhook POST for these transitions."""
    kinds = {
        TransitionKind.FIRED: NoticeKind.FIRING,
        TransitionKind.RESEND: NoticeKind.REMINDER,
        TransitionKind.RESOLVED: NoticeKind.RESOLVED,
    }
    return webhook_body([Notice(kinds[t.kind], t.alert) for t in transitions], sender)


def notices_for(
    receiver: Receiver,
    transitions: Sequence[Transition],
    notified: dict[str, float],
    now: float,
) -> list[Notice]:
    """What `receiver` is told of `transitions` at wall-clock `now` (see the module
    docstring); updates `notified` (alert key -> when last notified)."""
    every_resend = receiver.kind == "alertmanager"
    out = []
    for tr in transitions:
        key = alert_key(tr.alert)
        if tr.kind is TransitionKind.FIRED:
            notified[key] = now
            out.append(Notice(NoticeKind.FIRING, tr.alert))
        elif tr.kind is TransitionKind.RESEND:
            if every_resend:
                out.append(Notice(NoticeKind.REMINDER, tr.alert))
                continue
            if key not in notified:  # a receiver added since it fired: it never heard of it
                notified[key] = now
                out.append(Notice(NoticeKind.FIRING, tr.alert))
            elif receiver.repeat_interval > 0 and now - notified[key] >= receiver.repeat_interval:
                notified[key] = now
                out.append(Notice(NoticeKind.REMINDER, tr.alert))
        else:
            notified.pop(key, None)
            if receiver.send_resolved or every_resend:
                out.append(Notice(NoticeKind.RESOLVED, tr.alert))
    return out


@dataclass
class Target:
    """One receiver, its queue, what it was last told, and its counters."""

    receiver: Receiver
    send: trio.MemorySendChannel[list[Notice]]
    receive: trio.MemoryReceiveChannel[list[Notice]]
    #: alert key -> wall-clock time of the last notification (for `repeat_interval`)
    notified: dict[str, float] = field(default_factory=dict)
    delivered: int = 0
    failed: int = 0  # batches abandoned: retries exhausted, or refused (4xx)
    overflow: int = 0
    retries: int = 0
    fenced: int = 0  # requests not sent: this aggregator was not surely the alert leader
    attempt_failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    last_success: float | None = None  # wall-clock unix seconds

    @property
    def kind(self) -> str:
        return self.receiver.kind

    @property
    def name(self) -> str:
        return self.receiver.name

    @property
    def url(self) -> str:  # masked: what logs show
        return self.receiver.name

    @property
    def queued(self) -> int:
        """Batches waiting in the queue (not counting the one being delivered)."""
        return self.receive.statistics().current_buffer_used


@dataclass(frozen=True, slots=True)
class TestResult:
    """One receiver's answer to `AlertDelivery.send_test`."""

    kind: str
    name: str
    ok: bool
    detail: str

    __test__ = False  # not a pytest test class


class AlertDelivery:
    """Queues and delivery tasks for every receiver; start `run` in a nursery."""

    def __init__(
        self,
        *,
        alertmanager_urls: Sequence[str] = (),
        webhook_urls: Sequence[str] = (),
        receivers: Sequence[Receiver] = (),
        sender: str = "aggregator",
        generator_url: str = "",
        same_labels_as_prometheus: bool = True,
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
        #: Checked before every request (None: always): the leader lease's fence.
        self.send_allowed: Callable[[], bool] | None = None
        every: list[Receiver] = [
            AlertmanagerReceiver(url.rstrip("/"), generator_url, same_labels_as_prometheus)
            for url in alertmanager_urls
        ]
        every += [WebhookReceiver(url.rstrip("/"), sender) for url in webhook_urls]
        for receiver in [*every, *receivers]:
            send, receive = trio.open_memory_channel[list[Notice]](queue_size)
            self.targets.append(Target(receiver, send, receive))

    # -- what was notified, for the state db ---------------------------------------------------

    def notified_state(self) -> dict[str, dict[str, float]]:
        """receiver ident -> alert key -> when last notified (a copy)."""
        return {t.receiver.ident: dict(t.notified) for t in self.targets}

    def restore_notified(self, state: Mapping[str, Mapping[str, float]]) -> None:
        for t in self.targets:
            t.notified.update(state.get(t.receiver.ident, {}))

    # -- the queues ----------------------------------------------------------------------------

    def submit(self, transitions: Sequence[Transition]) -> None:
        """Queue a batch for every receiver; never blocks (a full queue drops and counts)."""
        self.enqueue(self.prepare(transitions))

    def prepare(self, transitions: Sequence[Transition]) -> list[tuple[Target, list[Notice]]]:
        """What each receiver is to be told (its `notified` updated), not queued yet: with
        several aggregators the leader records the state before it queues (`enqueue`)."""
        if not transitions:
            return []
        now = self.wall_clock()
        out = []
        for target in self.targets:
            notices = notices_for(target.receiver, transitions, target.notified, now)
            if notices:
                out.append((target, notices))
        return out

    def enqueue(self, prepared: Sequence[tuple[Target, list[Notice]]]) -> None:
        """Queue what `prepare` decided; never blocks (a full queue drops and counts)."""
        for target, notices in prepared:
            try:
                target.send.send_nowait(notices)
            except trio.WouldBlock:
                target.overflow += 1
                log.warning(
                    "alert_queue_full target=%s dropped=%d total_dropped=%d",
                    target.name,
                    len(notices),
                    target.overflow,
                )

    def submit_test(self, alert: Alert) -> None:
        """Queue one test notification of `alert` for every receiver (`--alert-test`)."""
        for target in self.targets:
            try:
                target.send.send_nowait([Notice(NoticeKind.TEST, alert)])
            except trio.WouldBlock:
                target.overflow += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain every receiver's queue until cancelled."""
        async with self._client() as client, trio.open_nursery() as nursery:
            for target in self.targets:
                nursery.start_soon(self._drain, client, target)
            task_status.started()

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        timeout = httpx.Timeout(self.retry.attempt_timeout)
        with _masked_httpx_log():
            async with httpx.AsyncClient(transport=self.transport, timeout=timeout) as client:
                yield client

    async def send_test(self, alert: Alert) -> list[TestResult]:
        """Deliver one test notification of `alert` to every receiver at once (retries
        included, `RetryPolicy.give_up_after` at most), outside the queues."""
        results: dict[int, TestResult] = {}

        async def one(i: int, target: Target) -> None:
            failure = await self._deliver(client, target, [Notice(NoticeKind.TEST, alert)])
            detail = "delivered" if failure is None else failure.detail
            results[i] = TestResult(target.kind, target.name, failure is None, detail)

        async with self._client() as client, trio.open_nursery() as nursery:
            for i, target in enumerate(self.targets):
                nursery.start_soon(one, i, target)
        return [results[i] for i in range(len(self.targets))]

    async def _drain(self, client: httpx.AsyncClient, target: Target) -> None:
        async for batch in target.receive:
            await self._deliver(client, target, batch)

    async def _deliver(
        self, client: httpx.AsyncClient, target: Target, batch: list[Notice]
    ) -> Failure | None:
        """Every request of the batch in turn; the last failure, or None if all went."""
        last: Failure | None = None
        for request in target.receiver.requests(batch):
            failure = await self._send(client, target, request, len(batch))
            if failure is not None:
                last = failure
        return last

    async def _send(
        self, client: httpx.AsyncClient, target: Target, request: Request, alerts: int
    ) -> Failure | None:
        give_up_at = trio.current_time() + self.retry.give_up_after
        attempt = 0
        while True:
            attempt += 1
            if self.send_allowed is not None and not self.send_allowed():
                # The fence (aggregator/scaleout/leader.py): not surely the leader any more.
                target.fenced += 1
                log.warning("alert_send_fenced target=%s alerts=%d", target.name, alerts)
                return Failure(FailureReason.REFUSED, "not the alert leader")
            failure = await self._post(client, target, request)
            if failure is None:
                target.delivered += 1
                target.last_success = self.wall_clock()
                if attempt > 1:
                    log.info("alert_delivered target=%s attempts=%d", target.name, attempt)
                return None
            target.attempt_failures[failure.reason] += 1
            if not failure.retryable:
                target.failed += 1
                log.error(
                    "alert_refused target=%s %s alerts=%d", target.name, failure.detail, alerts
                )
                return failure
            delay = self.retry.pause(attempt, failure, self.rng)
            if trio.current_time() + delay > give_up_at:
                target.failed += 1
                log.error(
                    "alert_delivery_gave_up target=%s attempts=%d err=%s alerts=%d",
                    target.name,
                    attempt,
                    failure.detail,
                    alerts,
                )
                return failure
            target.retries += 1
            log.warning(
                "alert_delivery_failed target=%s attempt=%d err=%s retry_in=%.1fs",
                target.name,
                attempt,
                failure.detail,
                delay,
            )
            await trio.sleep(delay)

    async def _post(
        self, client: httpx.AsyncClient, target: Target, request: Request
    ) -> Failure | None:
        """None on success, else what went wrong (classified by type and status, never
        text). An exception's text may quote the URL, and the URL hold a secret: masked."""
        try:
            with trio.fail_after(self.retry.attempt_timeout):
                response = await client.post(request.url, json=request.body)
        except trio.TooSlowError:
            return Failure(FailureReason.TIMEOUT, "timeout")
        except httpx.TimeoutException as exc:
            return Failure(FailureReason.TIMEOUT, _said(exc, request))
        except httpx.HTTPError as exc:
            return Failure(FailureReason.CONNECTION_ERROR, _said(exc, request))
        reply = Reply(response.status_code, dict(response.headers), response.content)
        return target.receiver.check(reply)


class _MaskUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: a Telegram token, a Slack or Discord
    hook's secret path. This filter masks URLs in its records (`mask_url`)."""

    def __init__(self) -> None:
        super().__init__()
        self.users = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_url(str(a)) if isinstance(a, httpx.URL) or _is_url(a) else a
                for a in record.args
            )
        return True


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


_MASK = _MaskUrls()


@contextlib.contextmanager
def _masked_httpx_log() -> Iterator[None]:
    """The filter on the `httpx` logger while a delivery client is open (counted: the
    delivery tasks and `send_test` may overlap), removed after the last."""
    logger = logging.getLogger("httpx")
    _MASK.users += 1
    logger.addFilter(_MASK)
    try:
        yield
    finally:
        _MASK.users -= 1
        if _MASK.users == 0:
            logger.removeFilter(_MASK)


def _said(exc: Exception, request: Request) -> str:
    return f"{type(exc).__name__}: {exc}".replace(request.url, request.shown)
