"""Discord webhooks: `POST https://discord.com/api/webhooks/<id>/<token>` with
`{"content": …, "embeds": [...]}`: content at most 2000 characters, at most 10 embeds
(title 256, description 4096, 6000 characters in all), mentions off.

Discord answers 204 (200 with `?wait=true`); 429 with `{"retry_after": seconds, "global":
…}` and a Retry-After header (honoured); other 4xx are not retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.receivers.chat import (
    COLOURS,
    alert_lines,
    batch_title,
    detail_labels,
    runbook_link,
)
from aggregator.alerts.receivers.common import (
    Failure,
    HookReceiver,
    Notice,
    Reply,
    Request,
    classify_status,
    headline,
    rfc3339,
    truncate,
)

__all__ = ["DISCORD_CONTENT_LIMIT", "DiscordReceiver", "discord_body"]

DISCORD_CONTENT_LIMIT = 2000
_MAX_EMBEDS = 10
_EMBED_TOTAL = 6000


def _embed(n: Notice) -> dict[str, Any]:
    a = n.alert
    colour = COLOURS["resolved"] if n.resolved else COLOURS.get(a.severity, COLOURS["info"])
    description = a.annotations.get("description", "")
    labels = detail_labels(n)
    if labels:
        description += f"\n`{labels}`"
    embed: dict[str, Any] = {
        "title": truncate(headline(n), 256),
        "description": truncate(description, 1000),
        "color": colour,
        "timestamp": rfc3339(a.ends_at if n.resolved and a.ends_at else a.starts_at),
    }
    link = runbook_link(n)
    if link:
        embed["url"] = link
    return embed


def discord_body(notices: Sequence[Notice]) -> dict[str, Any]:
    content = batch_title(notices) + "\n" + alert_lines(notices, headline, 1500)
    embeds: list[dict[str, Any]] = []
    total = 0
    for n in notices[:_MAX_EMBEDS]:
        embed = _embed(n)
        size = len(embed["title"]) + len(embed["description"])
        if total + size > _EMBED_TOTAL:
            break
        embeds.append(embed)
        total += size
    return {
        "content": truncate(content, DISCORD_CONTENT_LIMIT),
        "embeds": embeds,
        "allowed_mentions": {"parse": []},
    }


@dataclass(frozen=True, slots=True)
class DiscordReceiver(HookReceiver):
    kind: str = "discord"

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        return [Request(self.url, discord_body(notices), self.name)]

    def check(self, reply: Reply) -> Failure | None:
        failure = classify_status(reply)
        if failure is not None and failure.status == 429:
            body = reply.json()
            after = body.get("retry_after") if isinstance(body, dict) else None
            if isinstance(after, int | float) and not isinstance(after, bool) and after >= 0:
                return Failure(failure.reason, failure.detail, 429, float(after))
        return failure
