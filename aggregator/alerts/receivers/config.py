"""One `[[alerts.receivers]]` table validated into `ReceiverSettings`.

    [[alerts.receivers]]
    type = "slack"                 # slack | discord | telegram | pagerduty | webhook | alertmanager
    url = "https://hooks.slack.com/services/T…/B…/…"   # or url_file / url_env
    repeat_interval = "4h"         # still firing: notify again this often ("0s": never)
    send_resolved = true
    base_url = "http://127.0.0.1:8080"   # replaces scheme and host (a proxy, a test fake)

    [[alerts.receivers]]
    type = "telegram"
    bot_token_file = "/etc/fil-heartbeat/telegram.token"   # or bot_token / bot_token_env
    chat_id = "-1001234567890"

    [[alerts.receivers]]
    type = "pagerduty"
    routing_key_env = "PD_ROUTING_KEY"   # or routing_key / routing_key_file

A secret comes from exactly one of `<key>`, `<key>_file` (the file's text, stripped) and
`<key>_env` (that environment variable). Errors name `alerts.receivers[N].<key>`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from heartbeat.common.durations import parse_duration
from heartbeat.errors import ConfigError

__all__ = ["RECEIVER_TYPES", "ReceiverSettings", "receiver_settings"]

RECEIVER_TYPES = ("slack", "discord", "telegram", "pagerduty", "webhook", "alertmanager")
_DEFAULT_BASE = {
    "telegram": "https://api.telegram.org",
    "pagerduty": "https://events.pagerduty.com",
}
_TELEGRAM_TOKEN = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """`url`: the full POST URL (Telegram: the API base; PagerDuty: the enqueue URL);
    `secret`: Telegram's bot token or PagerDuty's routing key; `repeat_interval` None: the
    receiver's default."""

    type: str
    url: str = ""
    secret: str = ""
    chat_id: str = ""
    repeat_interval: float | None = None
    send_resolved: bool = True

    def __repr__(self) -> str:  # never a secret in a log or traceback
        return f"ReceiverSettings(type={self.type!r})"


class _Bad(ValueError):
    def __init__(self, key: str, why: str) -> None:
        super().__init__(why)
        self.key = key


def _secret(table: Mapping[str, Any], key: str, env: Mapping[str, str]) -> str:
    given = [k for k in (key, f"{key}_file", f"{key}_env") if k in table]
    if not given:
        raise _Bad(key, f"required (or {key}_file, {key}_env)")
    if len(given) > 1:
        raise _Bad(given[1], f"give only one of {', '.join(given)}")
    which = given[0]
    raw = table[which]
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad(which, "expected a non-empty string")
    if which.endswith("_file"):
        try:
            value = Path(raw).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Bad(which, f"cannot read {raw}: {exc.__class__.__name__}") from exc
        if not value:
            raise _Bad(which, f"{raw} is empty")
        return value
    if which.endswith("_env"):
        value = env.get(raw, "").strip()
        if not value:
            raise _Bad(which, f"environment variable {raw} is not set")
        return value
    return raw.strip()


def _http_url(key: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Bad(key, "not an http(s) URL")  # the URL may be a secret: not echoed
    return url.rstrip("/")


def _rebase(url: str, base: str) -> str:
    b = urlsplit(base)
    u = urlsplit(url)
    path = b.path.rstrip("/") + u.path
    return urlunsplit((b.scheme, b.netloc, path, u.query, ""))


def _duration(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _Bad(key, "expected a duration")
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except (ValueError, TypeError) as exc:
        raise _Bad(key, f"bad duration {value!r}") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise _Bad(key, "expected a non-negative duration")
    return seconds


_KEYS = {
    "slack": {"url"},
    "discord": {"url"},
    "webhook": {"url"},
    "alertmanager": {"url"},
    "telegram": {"bot_token", "chat_id"},
    "pagerduty": {"routing_key"},
}
_COMMON = {"type", "name", "repeat_interval", "send_resolved", "base_url"}


def _allowed(kind: str) -> set[str]:
    out = set(_COMMON)
    for key in _KEYS[kind]:
        out.add(key)
        if key != "chat_id":
            out.update((f"{key}_file", f"{key}_env"))
    return out


def receiver_settings(index: int, table: Any, env: Mapping[str, str]) -> ReceiverSettings:
    """Validate `[[alerts.receivers]]` number `index`; raises `ConfigError`."""
    where = f"alerts.receivers[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(where, "expected a table")
    try:
        return _parse(table, env)
    except _Bad as exc:
        raise ConfigError(f"{where}.{exc.key}", str(exc)) from exc


def _parse(table: Mapping[str, Any], env: Mapping[str, str]) -> ReceiverSettings:
    kind = table.get("type")
    if kind not in RECEIVER_TYPES:
        raise _Bad("type", f"expected one of {', '.join(RECEIVER_TYPES)}")
    for key in table:
        if key not in _allowed(kind):
            raise _Bad(key, f"unknown setting for a {kind} receiver")
    base = table.get("base_url")
    if base is not None:
        if not isinstance(base, str):
            raise _Bad("base_url", "expected a string")
        base = _http_url("base_url", base)
    repeat = (
        _duration("repeat_interval", table["repeat_interval"])
        if "repeat_interval" in table
        else None
    )
    send_resolved = table.get("send_resolved", True)
    if not isinstance(send_resolved, bool):
        raise _Bad("send_resolved", "expected true or false")
    url = secret = chat_id = ""
    if "url" in _KEYS[kind]:
        url = _http_url("url", _secret(table, "url", env))
        if base:
            url = _rebase(url, base)
    elif kind == "telegram":
        secret = _secret(table, "bot_token", env)
        if not _TELEGRAM_TOKEN.match(secret):
            raise _Bad("bot_token", "not a bot token (digits:characters, from @BotFather)")
        raw_chat = table.get("chat_id")
        if (
            isinstance(raw_chat, bool)
            or not isinstance(raw_chat, int | str)
            or not str(raw_chat).strip()
        ):
            raise _Bad("chat_id", "required: a chat id (number) or @channelname")
        chat_id = str(raw_chat).strip()
        url = base or _DEFAULT_BASE["telegram"]
    else:
        secret = _secret(table, "routing_key", env)
        if any(c.isspace() for c in secret):
            raise _Bad("routing_key", "must not contain spaces")
        url = (base or _DEFAULT_BASE["pagerduty"]) + "/v2/enqueue"
    return ReceiverSettings(kind, url, secret, chat_id, repeat, send_resolved)
