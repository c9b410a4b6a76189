"""Telegram bots: `POST <base>/bot<token>/sendMessage` with `{"chat_id": …, "text": …,
"parse_mode": "HTML"}` (text at most 4096 characters; `<`, `>` and `&` escaped).

Telegram answers `{"ok": true, "result": {...}}`; a refusal is `{"ok": false, "error_code":
N, "description": …}`, a flood limit 429 with `"parameters": {"retry_after": seconds}`
(honoured). The token is part of the URL: logs and labels show `/bot***`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.receivers.chat import alert_lines, batch_title, detail_labels, runbook_link
from aggregator.alerts.receivers.common import (
    Failure,
    FailureReason,
    Notice,
    Reply,
    Request,
    classify_status,
    headline,
    ident_of,
    mask_url,
    truncate,
)

__all__ = ["TELEGRAM_API", "TELEGRAM_TEXT_LIMIT", "TelegramReceiver", "telegram_body"]

TELEGRAM_API = "https://api.telegram.org"
TELEGRAM_TEXT_LIMIT = 4096


def _block(n: Notice) -> str:
    a = n.alert
    text = f"<b>{html.escape(headline(n), quote=False)}</b>"
    description = a.annotations.get("description")
    if description:
        text += "\n" + html.escape(description, quote=False)
    labels = detail_labels(n)
    if labels:
        text += f"\n<code>{html.escape(labels, quote=False)}</code>"
    link = runbook_link(n)
    if link:
        text += f'\n<a href="{html.escape(link)}">Runbook</a>'
    return text


def telegram_body(chat_id: str, notices: Sequence[Notice]) -> dict[str, Any]:
    title = f"<b>{html.escape(batch_title(notices), quote=False)}</b>"
    # Each block is cut whole (never inside a tag), so the HTML stays well-formed.
    text = title + "\n\n" + alert_lines(notices, _block, TELEGRAM_TEXT_LIMIT - len(title) - 2)
    return {
        "chat_id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id,
        "text": text if len(text) <= TELEGRAM_TEXT_LIMIT else truncate(title, 4000),
        "parse_mode": "HTML",
        "disable_web_page_preview": True,
    }


@dataclass(frozen=True, slots=True)
class TelegramReceiver:
    bot_token: str
    chat_id: str
    base_url: str = TELEGRAM_API
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    kind: str = "telegram"

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/bot{self.bot_token}/sendMessage"

    @property
    def name(self) -> str:
        return f"{mask_url(self.url)}?chat_id={self.chat_id}"

    @property
    def ident(self) -> str:
        return ident_of(self.kind, self.bot_token, self.chat_id)

    def requests(self, notices: Sequence[Notice]) -> list[Request]:
        return [Request(self.url, telegram_body(self.chat_id, notices), self.name)]

    def check(self, reply: Reply) -> Failure | None:
        body = reply.json()
        failure = classify_status(reply)
        if isinstance(body, dict) and body.get("ok") is not True:
            params = body.get("parameters")
            after = params.get("retry_after") if isinstance(params, dict) else None
            retry_after = float(after) if isinstance(after, int | float) else None
            detail = f"status={reply.status} error_code={body.get('error_code')}"
            if failure is None:  # a 200 saying ok=false: refused, unless asked to wait
                return Failure(FailureReason.REFUSED, detail, reply.status, retry_after)
            return Failure(failure.reason, detail, failure.status, retry_after)
        if failure is None and not (isinstance(body, dict) and body.get("ok") is True):
            return Failure(FailureReason.REFUSED, "not a Telegram reply", reply.status)
        return failure
