"""Alertmanager's v2 API: `POST <url>/api/v2/alerts`, one target per cluster member.

Firing alerts carry no `endsAt` and are sent again at every resend (Alertmanager resolves an
alert not re-sent within its `resolve_timeout`); a resolved alert carries `endsAt`.

With `same_labels_as_prometheus` (the default) the alert's labels are exactly those the
shipped Prometheus rules give it (the `aggregator` label moves to an annotation), so that
Alertmanager takes the built-in alert and Prometheus's for one alert and notifies once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.model import Alert
from aggregator.alerts.receivers.common import (
    AGGREGATOR_LABEL,
    Failure,
    Notice,
    Reply,
    Request,
    UrlReceiver,
    classify_status,
    rfc3339,
    visible_labels,
)

__all__ = ["AlertmanagerReceiver", "alertmanager_payload"]


def alertmanager_payload(
    alerts: Iterable[Alert], generator_url: str = "", *, same_labels_as_prometheus: bool = False
) -> list[dict[str, Any]]:
    """The JSON body of `POST /api/v2/alerts`."""
    out = []
    for a in alerts:
        annotations = dict(a.annotations)
        if same_labels_as_prometheus:
            labels = visible_labels(a, (AGGREGATOR_LABEL,))
            if a.labels.get(AGGREGATOR_LABEL):
                annotations[AGGREGATOR_LABEL] = a.labels[AGGREGATOR_LABEL]
        else:
            labels = visible_labels(a)
        item: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(a.starts_at),
        }
        if a.ends_at is not None:
            item["endsAt"] = rfc3339(a.ends_at)
        if generator_url:
            item["generatorURL"] = generator_url
        out.append(item)
    return out


@dataclass(frozen=True, slots=True)
class AlertmanagerReceiver(UrlReceiver):
    url: str
    generator_url: str = ""
    same_labels_as_prometheus: bool = True
    kind: str = "alertmanager"
    repeat_interval: float = 0.0  # every resend goes out anyway: Alertmanager needs them
    send_resolved: bool = True

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        body = alertmanager_payload(
            (n.alert for n in notices),
            self.generator_url,
            same_labels_as_prometheus=self.same_labels_as_prometheus,
        )
        return [Request(f"{self.url}/api/v2/alerts", body, self.name)]

    def check(self, reply: Reply) -> Failure | None:
        return classify_status(reply)
