"""Slack incoming webhooks: `POST https://hooks.slack.com/services/T…/B…/…` with
`{"text": …, "blocks": [...]}` (Block Kit; `text` is the notification fallback).

Slack answers 200 `ok`; 400 `invalid_payload`, 403/404/410 for a revoked or archived
hook (not retried), 429 with Retry-After (honoured), 5xx (retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.receivers.chat import alert_lines, batch_title, detail_labels, runbook_link
from aggregator.alerts.receivers.common import (
    HookReceiver,
    Notice,
    Request,
    headline,
    truncate,
)

__all__ = ["SLACK_SECTION_LIMIT", "SlackReceiver", "slack_body"]

SLACK_SECTION_LIMIT = 3000  # a section block's text
_MAX_SECTIONS = 20  # of Slack's 50 blocks a message


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(n: Notice) -> str:
    a = n.alert
    text = f"*{_escape(headline(n))}*"
    description = a.annotations.get("description")
    if description:
        text += f"\n{_escape(description)}"
    labels = detail_labels(n)
    if labels:
        text += f"\n`{_escape(labels)}`"
    link = runbook_link(n)
    if link:
        text += f"\n<{link}|Runbook>"
    return truncate(text, SLACK_SECTION_LIMIT)


def slack_body(notices: Sequence[Notice]) -> dict[str, Any]:
    title = batch_title(notices)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(title, 150)}}
    ]
    for n in notices[:_MAX_SECTIONS]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _section(n)}})
    if len(notices) > _MAX_SECTIONS:
        more = f"… and {len(notices) - _MAX_SECTIONS} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    text = title + "\n" + alert_lines(notices, headline, 2000)
    return {"text": text, "blocks": blocks}


@dataclass(frozen=True, slots=True)
class SlackReceiver(HookReceiver):
    kind: str = "slack"

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        return [Request(self.url, slack_body(notices), self.name)]
