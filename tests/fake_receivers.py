"""Local fakes of the third-party notification APIs: Slack, Discord, Telegram, PagerDuty.

Each is an ASGI app (served by hypercorn on 127.0.0.1, port 0, through `serving`) that
checks a request against the API's documented shape and answers as the API does:

- Slack incoming webhook `POST /services/T…/B…/…`: JSON with a non-empty `text` and, if
  present, `blocks` (at most 50, each with a `type`; section text at most 3000 characters).
  200 `ok`; a bad payload 400 `invalid_payload`.
- Discord webhook `POST /api/webhooks/<id>/<token>`: `content` (at most 2000 characters)
  or `embeds` (at most 10; title 256, description 4096). 204; a bad body 400 with
  `{"code": 50006, "message": …}`.
- Telegram `POST /bot<token>/sendMessage`: `chat_id`, `text` (1 to 4096 characters),
  `parse_mode` HTML with only Telegram's tags, balanced. `{"ok": true, "result": {...}}`;
  a wrong token 401 `{"ok": false, "error_code": 401, "description": "Unauthorized"}`.
- PagerDuty `POST /v2/enqueue`: `routing_key`, `event_action` trigger|acknowledge|resolve,
  `dedup_key` (required but for trigger); a trigger's `payload` with summary (≤ 1024),
  source, severity critical|error|warning|info. 202 `{"status": "success", "message":
  "Event processed", "dedup_key": …}`; invalid 400 `{"status": "invalid event", …}`.

`fail(status, retry_after=None)` scripts the next replies: 429 answers as each API does
(Slack: Retry-After header; Discord: JSON `retry_after` and the header; Telegram: 429
`parameters.retry_after`; PagerDuty: 429 without a body), other statuses with an empty
body. `accepted` holds the bodies answered with success, `rejected` the shape errors found
(a test asserts it stays empty), `times` the trio time of every request.
"""

from __future__ import annotations

import html.parser
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from heartbeat.common.asgi import lifespan

__all__ = [
    "FakeAlertmanager",
    "FakeApi",
    "FakeDiscord",
    "FakePagerDuty",
    "FakeSlack",
    "FakeTelegram",
    "serving",
]

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class FakeApi:
    """The common part: recording, scripted failures, the ASGI plumbing."""

    scripted: list[tuple[int, float | None]] = field(default_factory=list)
    accepted: list[Any] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def fail(self, status: int, retry_after: float | None = None, times: int = 1) -> None:
        self.scripted.extend([(status, retry_after)] * times)

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.times.append(trio.current_time())
        path = scope["path"]
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append((path, body))
        status, headers, out = self._answer(scope["method"], path, body)
        self.changed.set()
        self.changed = trio.Event()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": out})

    def _answer(self, method: str, path: str, body: Any) -> Reply:
        if method != "POST":
            return 405, {}, b""
        problems = self.check(path, body)
        if problems:
            self.rejected.extend(problems)
            return self.invalid(problems)
        if self.scripted:
            status, retry_after = self.scripted.pop(0)
            if status == 429:
                return self.throttled(retry_after)
            return status, {}, b""
        self.accepted.append(body)
        return self.success(body)

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while len(self.accepted) < count:
                await self.changed.wait()

    # -- per API ---------------------------------------------------------------------------

    def check(self, path: str, body: Any) -> list[str]:
        raise NotImplementedError

    def invalid(self, problems: list[str]) -> Reply:
        return 400, {}, b""

    def throttled(self, retry_after: float | None) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": _seconds(retry_after)}
        return 429, headers, b""

    def success(self, body: Any) -> Reply:
        return 200, {}, b""


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(doc).encode()


@dataclass
class FakeSlack(FakeApi):
    PATH = re.compile(r"^/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+$")

    def check(self, path: str, body: Any) -> list[str]:
        if not self.PATH.match(path):
            return [f"slack: no such hook {path}"]
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            return ["slack: text missing"]
        out = []
        blocks = body.get("blocks", [])
        if not isinstance(blocks, list) or len(blocks) > 50:
            return ["slack: blocks must be a list of at most 50"]
        for block in blocks:
            if not isinstance(block, dict) or "type" not in block:
                out.append("slack: a block without type")
            elif block["type"] == "section" and len(block["text"]["text"]) > 3000:
                out.append("slack: section text over 3000")
            elif block["type"] == "header" and len(block["text"]["text"]) > 150:
                out.append("slack: header over 150")
        return out

    def invalid(self, problems: list[str]) -> Reply:
        return 400, {"content-type": "text/html"}, b"invalid_payload"

    def success(self, body: Any) -> Reply:
        return 200, {"content-type": "text/html"}, b"ok"


@dataclass
class FakeDiscord(FakeApi):
    PATH = re.compile(r"^/api/webhooks/[0-9]+/[A-Za-z0-9_-]+$")

    def check(self, path: str, body: Any) -> list[str]:
        if not self.PATH.match(path):
            return [f"discord: unknown webhook {path}"]
        if not isinstance(body, dict):
            return ["discord: not an object"]
        content, embeds = body.get("content", ""), body.get("embeds", [])
        out = []
        if not content and not embeds:
            out.append("discord: empty message")
        if len(content) > 2000:
            out.append("discord: content over 2000")
        if len(embeds) > 10:
            out.append("discord: over 10 embeds")
        total = 0
        for e in embeds:
            title, description = e.get("title", ""), e.get("description", "")
            total += len(title) + len(description)
            if len(title) > 256 or len(description) > 4096:
                out.append("discord: embed title/description too long")
            if "color" in e and not (isinstance(e["color"], int) and 0 <= e["color"] <= 0xFFFFFF):
                out.append("discord: bad color")
        if total > 6000:
            out.append("discord: embeds over 6000 characters")
        return out

    def invalid(self, problems: list[str]) -> Reply:
        return _json(400, {"code": 50006, "message": "Cannot send an empty message"})

    def throttled(self, retry_after: float | None) -> Reply:
        after = 1.0 if retry_after is None else retry_after
        doc = {"message": "You are being rate limited.", "retry_after": after, "global": False}
        return _json(429, doc, {"Retry-After": str(max(1, round(after)))})

    def success(self, body: Any) -> Reply:
        return 204, {}, b""


class _TelegramHtml(html.parser.HTMLParser):
    ALLOWED = frozenset(
        "b strong i em u ins s strike del a code pre tg-spoiler span blockquote".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.ALLOWED:
            self.errors.append(f"telegram: unsupported tag <{tag}>")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"telegram: unbalanced </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text += data


@dataclass
class FakeTelegram(FakeApi):
    token: str = "123456:TEST-token_abc"
    sent: int = 0

    def check(self, path: str, body: Any) -> list[str]:
        if path != f"/bot{self.token}/sendMessage":
            return ["telegram: unauthorized"]
        if not isinstance(body, dict) or "chat_id" not in body:
            return ["telegram: chat_id missing"]
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return ["telegram: text is empty"]
        out = []
        if body.get("parse_mode") not in (None, "HTML", "MarkdownV2", "Markdown"):
            out.append("telegram: bad parse_mode")
        if body.get("parse_mode") == "HTML":
            parser = _TelegramHtml()
            parser.feed(text)
            parser.close()
            out += parser.errors + ([] if not parser.stack else ["telegram: unclosed tags"])
            if len(parser.text) > 4096:
                out.append("telegram: text over 4096 after entities parsing")
        elif len(text) > 4096:
            out.append("telegram: text over 4096")
        return out

    def invalid(self, problems: list[str]) -> Reply:
        if problems == ["telegram: unauthorized"]:
            return _json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        doc = {"ok": False, "error_code": 400, "description": "Bad Request: " + problems[0]}
        return _json(400, doc)

    def throttled(self, retry_after: float | None) -> Reply:
        after = 1 if retry_after is None else retry_after
        doc = {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {after}",
            "parameters": {"retry_after": after},
        }
        return _json(429, doc)

    def success(self, body: Any) -> Reply:
        self.sent += 1
        result = {
            "message_id": self.sent,
            "chat": {"id": body["chat_id"], "type": "group"},
            "date": 1_700_000_000,
            "text": body["text"],
        }
        return _json(200, {"ok": True, "result": result})


@dataclass
class FakePagerDuty(FakeApi):
    SEVERITIES = ("critical", "error", "warning", "info")

    def check(self, path: str, body: Any) -> list[str]:
        if path != "/v2/enqueue":
            return [f"pagerduty: no such endpoint {path}"]
        if not isinstance(body, dict):
            return ["pagerduty: not an object"]
        out = []
        if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
            out.append("pagerduty: routing_key missing")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            out.append("pagerduty: bad event_action")
        dedup = body.get("dedup_key")
        if action != "trigger" and not dedup:
            out.append("pagerduty: dedup_key required to acknowledge or resolve")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            out.append("pagerduty: dedup_key must be a string of at most 255")
        if action == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                return [*out, "pagerduty: payload missing"]
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary or len(summary) > 1024:
                out.append("pagerduty: summary missing or over 1024")
            if not payload.get("source"):
                out.append("pagerduty: source missing")
            if payload.get("severity") not in self.SEVERITIES:
                out.append("pagerduty: bad severity")
            for link in body.get("links", []):
                if not isinstance(link, dict) or not link.get("href"):
                    out.append("pagerduty: a link without href")
        return out

    def invalid(self, problems: list[str]) -> Reply:
        doc = {"status": "invalid event", "message": "Event object is invalid", "errors": problems}
        return _json(400, doc)

    def throttled(self, retry_after: float | None) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": _seconds(retry_after)}
        return 429, headers, b""

    def success(self, body: Any) -> Reply:
        dedup = body.get("dedup_key") or "generated-dedup-key"
        doc = {"status": "success", "message": "Event processed", "dedup_key": dedup}
        return _json(202, doc)


@dataclass
class FakeAlertmanager(FakeApi):
    """`POST /api/v2/alerts`: a list of alerts, each with labels (alertname among them) and
    an RFC 3339 startsAt; 200 with an empty body, as Alertmanager answers."""

    def check(self, path: str, body: Any) -> list[str]:
        if path != "/api/v2/alerts":
            return [f"alertmanager: no such endpoint {path}"]
        if not isinstance(body, list) or not body:
            return ["alertmanager: expected a non-empty list of alerts"]
        out = []
        for alert in body:
            if not isinstance(alert.get("labels"), dict) or "alertname" not in alert["labels"]:
                out.append("alertmanager: alert without alertname")
            if not str(alert.get("startsAt", "")).endswith("Z"):
                out.append("alertmanager: startsAt is not RFC 3339 UTC")
        return out


@asynccontextmanager
async def serving(*apps: FakeApi) -> AsyncIterator[list[str]]:
    """Serve each fake on its own 127.0.0.1 port; yields their base URLs."""
    async with trio.open_nursery() as nursery:
        urls = []
        for app in apps:
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            binds = await nursery.start(
                lambda task_status, app=app, config=config: serve(
                    app,
                    config,
                    task_status=task_status,
                )
            )
            urls.append(binds[0].replace("0.0.0.0", "127.0.0.1"))
        yield urls
        nursery.cancel_scope.cancel()
