"""PagerDuty Events API v2: `POST https://events.pagerduty.com/v2/enqueue`, one event per
alert.

A firing alert is `event_action: trigger` with `payload` (summary ≤ 1024 characters,
source, severity critical|error|warning|info, timestamp, class, custom_details) and the
runbook in `links`; a resolved one is `event_action: resolve`. The `dedup_key` is stable
per alert (a hash of its labels, without `aggregator`), so a reminder or a second aggregator
updates the same PagerDuty alert. PagerDuty answers 202 `{"status": "success",
"dedup_key": …}`; 400 invalid event (not retried), 429 throttled and 5xx (retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.receivers.chat import runbook_link
from aggregator.alerts.receivers.common import (
    Failure,
    FailureReason,
    Notice,
    NoticeKind,
    Reply,
    Request,
    alert_key,
    classify_status,
    headline,
    ident_of,
    mask_url,
    rfc3339,
    truncate,
    visible_labels,
)

__all__ = ["PAGERDUTY_EVENTS_URL", "PagerDutyReceiver", "pagerduty_event", "pd_severity"]

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def pd_severity(severity: str) -> str:
    """Our severities are PagerDuty's; anything else is `error`."""
    return _SEVERITIES.get(severity, "error")


def dedup_key(notice: Notice) -> str:
    return "fil-heartbeat/" + alert_key(notice.alert)


def _source(notice: Notice) -> str:
    labels = notice.alert.labels
    if labels.get("nickname"):
        return f"{labels['nickname']} ({labels.get('network', '')})"
    if labels.get("network"):
        return f"network {labels['network']}"
    return labels.get("aggregator") or "fil-heartbeat"


def pagerduty_event(routing_key: str, notice: Notice, client_url: str = "") -> dict[str, Any]:
    a = notice.alert
    if notice.resolved:
        return {
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(notice),
        }
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(notice),
        "payload": {
            "summary": truncate(headline(notice), 1024),
            "source": _source(notice),
            "severity": pd_severity(a.severity),
            "timestamp": rfc3339(a.starts_at),
            "component": a.labels.get("peer_id") or a.labels.get("network", ""),
            "group": a.labels.get("network", ""),
            "class": a.alertname,
            "custom_details": {
                "labels": visible_labels(a),
                "annotations": dict(a.annotations),
                "notice": notice.kind.value,
            },
        },
        "client": "fil-heartbeat",
    }
    if client_url:
        event["client_url"] = client_url
    link = runbook_link(notice)
    if link:
        event["links"] = [{"href": link, "text": "Runbook"}]
    return event


@dataclass(frozen=True, slots=True)
class PagerDutyReceiver:
    routing_key: str
    url: str = PAGERDUTY_EVENTS_URL
    client_url: str = ""
    #: PagerDuty keeps an alert open until resolved: no reminders unless asked.
    repeat_interval: float = 0.0
    send_resolved: bool = True
    kind: str = "pagerduty"

    @property
    def name(self) -> str:
        return mask_url(self.url)

    @property
    def ident(self) -> str:
        return ident_of(self.kind, self.url, self.routing_key)

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        out = []
        for n in notices:
            out.append(
                Request(self.url, pagerduty_event(self.routing_key, n, self.client_url), self.name)
            )
            if n.kind is NoticeKind.TEST:  # a test must not leave an incident open
                resolve = Notice(NoticeKind.RESOLVED, n.alert)
                out.append(Request(self.url, pagerduty_event(self.routing_key, resolve), self.name))
        return out

    def check(self, reply: Reply) -> Failure | None:
        failure = classify_status(reply)
        if failure is not None:
            return failure
        body = reply.json()
        if not (isinstance(body, dict) and body.get("status") == "success"):
            return Failure(
                FailureReason.REFUSED, f"status={reply.status} not success", reply.status
            )
        return None
