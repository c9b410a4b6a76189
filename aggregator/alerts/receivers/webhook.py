"""A generic JSON webhook: `POST <url>` with `{"version": "1", "sender": NAME, "alerts":
[...]}`, `status` "firing"/"resolved" per alert (a reminder or test is "firing", its
`kind` says which)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.receivers.common import (
    Failure,
    Notice,
    Reply,
    Request,
    UrlReceiver,
    classify_status,
    rfc3339,
    visible_labels,
)

__all__ = ["WebhookReceiver", "webhook_body"]


def webhook_body(notices: Sequence[Notice], sender: str) -> dict[str, Any]:
    alerts = []
    for n in notices:
        a = n.alert
        alerts.append(
            {
                "status": "resolved" if n.resolved else "firing",
                "kind": n.kind.value,
                "labels": visible_labels(a),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at) if a.ends_at is not None else None,
            }
        )
    return {"version": "1", "sender": sender, "alerts": alerts}


@dataclass(frozen=True, slots=True)
class WebhookReceiver(UrlReceiver):
    url: str
    sender: str = "aggregator"
    repeat_interval: float = 0.0
    send_resolved: bool = True
    kind: str = "webhook"

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        return [Request(self.url, webhook_body(notices, self.sender), self.name)]

    def check(self, reply: Reply) -> Failure | None:
        return classify_status(reply)
