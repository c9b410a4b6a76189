"""What every receiver shares: the notice it renders, the request it makes, the failure it
classifies, the backoff it follows, and the masking that keeps secrets out of logs.

Pure: no I/O. A receiver turns a batch of `Notice`s into `Request`s and classifies each
`Reply`; aggregator/alerts/delivery.py sends them (httpx) and retries.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from aggregator.alerts.model import Alert

__all__ = [
    "AGGREGATOR_LABEL",
    "Failure",
    "FailureReason",
    "HookReceiver",
    "Notice",
    "NoticeKind",
    "Receiver",
    "Reply",
    "Request",
    "RetryPolicy",
    "UrlReceiver",
    "absolute_runbook",
    "alert_key",
    "classify_status",
    "mask_url",
    "retry_after_header",
    "rfc3339",
    "visible_labels",
]

#: The built-in alerter's own static label (which aggregator raised the alert).
AGGREGATOR_LABEL = "aggregator"


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: `2024-05-01T12:00:00.000Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NoticeKind(StrEnum):
    """What a notification says about its alert."""

    FIRING = "firing"  # the alert started firing
    REMINDER = "reminder"  # still firing (a receiver's repeat_interval, or Alertmanager's resend)
    RESOLVED = "resolved"
    TEST = "test"  # `fil-heartbeat-aggregator alert-test`


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    alert: Alert

    @property
    def resolved(self) -> bool:
        return self.kind is NoticeKind.RESOLVED


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP POST of a JSON body; `url` may hold a secret, `shown` never does."""

    url: str
    body: Any
    shown: str


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back, as much as classification needs."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


class FailureReason(StrEnum):
    """Why one POST failed; the values are the `reason` label."""

    HTTP_3XX = "http_3xx"  # a redirect: not followed
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECTION_ERROR = "connection_error"  # no usable answer: refused, reset, unreachable...
    TIMEOUT = "timeout"  # no answer within `RetryPolicy.attempt_timeout`
    REFUSED = "refused"  # a 2xx whose body says the API refused it (Telegram's ok=false)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed POST: its reason, the HTTP status if any, a text for logs, and how long the
    receiver asked us to wait (Retry-After, Discord's and Telegram's retry_after)."""

    reason: FailureReason
    detail: str
    status: int | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        if self.reason is FailureReason.REFUSED:
            return self.retry_after is not None
        return self.reason is not FailureReason.HTTP_4XX or self.status == 429


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; each attempt under its own deadline. A receiver's
    `retry_after` replaces the backoff for that pause (capped at `max_retry_after`)."""

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2  # ± fraction of the delay
    attempt_timeout: float = 10.0
    give_up_after: float = 600.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay, self.initial * self.factor ** (attempt - 1))
        return float(base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0)))

    def pause(self, attempt: int, failure: Failure, rng: random.Random) -> float:
        if failure.retry_after is not None:
            return min(self.max_retry_after, max(0.0, failure.retry_after))
        return self.delay(attempt, rng)


def classify_status(reply: Reply) -> Failure | None:
    """None for a 2xx; else the failure by status, with Retry-After when the receiver set it."""
    status = reply.status
    if status < 300:
        return None
    reason = (
        FailureReason.HTTP_3XX
        if status < 400
        else FailureReason.HTTP_4XX
        if status < 500
        else FailureReason.HTTP_5XX
    )
    return Failure(reason, f"status={status}", status, retry_after_header(reply.headers))


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """Retry-After as seconds: delta-seconds (fractions accepted) or an HTTP date (taken
    relative to the reply's own Date header, so no clock is read)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            then = parsedate_to_datetime(value)
            now = parsedate_to_datetime(lowered["date"])
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        seconds = (then - now).total_seconds()
    return seconds if seconds >= 0 else None


_SECRET_PATH = re.compile(r"/bot[^/]+")


def mask_url(url: str) -> str:
    """A URL fit for logs and labels: no user info, query or fragment; Telegram's
    `/bot<token>` shown as `/bot***`, and the secret tail of Slack's and Discord's webhook
    paths (everything after the first two path segments) as `***`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    path = _SECRET_PATH.sub("/bot***", parts.path)
    segments = path.split("/")
    if "hooks.slack.com" in host or "/services/" in path:
        path = "/".join(segments[:3] + (["***"] if len(segments) > 3 else []))
    elif "/webhooks/" in path:
        at = segments.index("webhooks")
        path = "/".join(segments[: at + 2] + (["***"] if len(segments) > at + 2 else []))
    return urlunsplit((parts.scheme, host, path, "", ""))


def visible_labels(alert: Alert, drop: Iterable[str] = ()) -> dict[str, str]:
    dropped = set(drop)
    return {k: v for k, v in alert.labels.items() if v != "" and k not in dropped}


def alert_key(alert: Alert) -> str:
    """A stable identity of an alert across restarts and aggregators: a hash of its labels
    without the `aggregator` label (two aggregators raising one alert share it)."""
    labels = sorted(visible_labels(alert, (AGGREGATOR_LABEL,)).items())
    digest = hashlib.sha256(json.dumps(labels, separators=(",", ":")).encode()).hexdigest()
    return f"{alert.alertname}/{digest[:20]}"


class Receiver(Protocol):
    """One notification target.

    `kind` is the `kind` metrics label; `name` its `receiver` label (masked, no secret);
    `ident` a stable id for the state db (a hash, no secret). `repeat_interval` is how
    often a still-firing alert is notified again (0: never; Alertmanager: every resend).
    """

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def ident(self) -> str: ...

    @property
    def repeat_interval(self) -> float: ...

    @property
    def send_resolved(self) -> bool: ...

    def requests(self, notices: Sequence[Notice]) -> list[Request]: ...

    def check(self, reply: Reply) -> Failure | None: ...


def ident_of(kind: str, *secret_parts: str) -> str:
    digest = hashlib.sha256("\x00".join((kind, *secret_parts)).encode()).hexdigest()
    return f"{kind}:{digest[:16]}"


@dataclass(frozen=True, slots=True)
class Rendered:
    """Text pieces every chat receiver uses."""

    title: str
    lines: list[str] = field(default_factory=list)


def headline(notice: Notice) -> str:
    a = notice.alert
    summary = a.annotations.get("summary") or a.alertname
    marks = {
        NoticeKind.FIRING: "FIRING",
        NoticeKind.REMINDER: "STILL FIRING",
        NoticeKind.RESOLVED: "RESOLVED",
        NoticeKind.TEST: "TEST",
    }
    severity = f" {a.severity}" if a.severity else ""
    return f"[{marks[notice.kind]}{severity}] {a.alertname}: {summary}"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def absolute_runbook(alert: Alert, base_url: str) -> Alert:
    """`alert` with its relative `runbook` annotation (grafana/RUNBOOK.md#…) made absolute:
    `base_url` + "/" + the path. Unchanged without a base or for an absolute runbook."""
    runbook = alert.annotations.get("runbook", "")
    if not base_url or not runbook or runbook.startswith(("http://", "https://")):
        return alert
    annotations = {**alert.annotations, "runbook": f"{base_url.rstrip('/')}/{runbook.lstrip('/')}"}
    return replace(alert, annotations=annotations)


class UrlReceiver:
    """A receiver reached by one secret URL: its name is the masked URL, its identity the
    URL's hash (a mixin of the receiver dataclasses, which declare `url` and `kind`)."""

    __slots__ = ()
    url: str
    kind: str

    @property
    def name(self) -> str:
        return mask_url(self.url)

    @property
    def ident(self) -> str:
        return ident_of(self.kind, self.url)


@dataclass(frozen=True, slots=True)
class HookReceiver(UrlReceiver):
    """A chat service reached by one secret webhook URL (Slack, Discord); subclasses build
    the body and may read more of a reply."""

    url: str
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    kind: str = "webhook"

    def check(self, reply: Reply) -> Failure | None:
        return classify_status(reply)
