"""The receivers' pure parts: `[[alerts.receivers]]` validation, masking, Retry-After,
which notices each receiver gets (repeat_interval, send_resolved), the API limits, the
reply classification, PagerDuty's keys and severities, absolute runbook links."""

from __future__ import annotations

import html.parser
from pathlib import Path
from typing import Any

import pytest

from aggregator.alerts.delivery import notices_for
from aggregator.alerts.model import Alert, Transition, TransitionKind
from aggregator.alerts.receivers import (
    AlertmanagerReceiver,
    DiscordReceiver,
    PagerDutyReceiver,
    SlackReceiver,
    TelegramReceiver,
    build_receivers,
)
from aggregator.alerts.receivers.alertmanager import alertmanager_payload
from aggregator.alerts.receivers.common import (
    FailureReason,
    Notice,
    NoticeKind,
    Reply,
    absolute_runbook,
    mask_url,
    retry_after_header,
)
from aggregator.alerts.receivers.discord import discord_body
from aggregator.alerts.receivers.pagerduty import dedup_key, pagerduty_event, pd_severity
from aggregator.alerts.receivers.slack import slack_body
from aggregator.alerts.receivers.telegram import telegram_body
from aggregator.alerts.wiring import load_settings
from heartbeat.errors import ConfigError

FIRED, RESEND, RESOLVED = TransitionKind.FIRED, TransitionKind.RESEND, TransitionKind.RESOLVED
TOKEN = "123456:TEST-token_abc"


def _alert(i: int = 0, **labels: str) -> Alert:
    return Alert(
        {
            "alertname": "FilNodeDown",
            "severity": "critical",
            "peer_id": f"12D3KooW{i:04d}",
            "nickname": f"node-{i}",
            "network": "mainnet",
            "aggregator": "agg-a",
            **labels,
        },
        {"summary": f"node-{i} <is> down & out", "runbook": "grafana/RUNBOOK.md#filnodedown"},
        starts_at=1_700_000_000.0,
    )


def _settings(*receivers: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return load_settings({"receivers": list(receivers)}, None, env)


# --- [[alerts.receivers]] --------------------------------------------------------------------


def test_every_receiver_type_builds(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = _settings(
        {"type": "slack", "url": "https://hooks.slack.com/services/T1/B1/abc"},
        {"type": "discord", "url_env": "HOOK", "repeat_interval": "30m"},
        {"type": "telegram", "bot_token_file": str(tmp_path / "token"), "chat_id": -100123},
        {"type": "pagerduty", "routing_key": "abc123", "repeat_interval": 0},
        {"type": "webhook", "url": "http://127.0.0.1:9/hook", "send_resolved": False},
        {"type": "alertmanager", "url": "http://127.0.0.1:9093/"},
        env={"HOOK": "https://discord.com/api/webhooks/1/tok"},
    )
    slack, discord, telegram, pd, hook, am = build_receivers(settings.receivers, sender="agg")
    assert isinstance(slack, SlackReceiver) and slack.repeat_interval == 4 * 3600
    assert isinstance(discord, DiscordReceiver) and discord.repeat_interval == 1800
    assert discord.url == "https://discord.com/api/webhooks/1/tok"
    assert isinstance(telegram, TelegramReceiver)
    assert telegram.url == f"https://api.telegram.org/bot{TOKEN}/sendMessage"
    assert telegram.chat_id == "-100123"
    assert isinstance(pd, PagerDutyReceiver) and pd.repeat_interval == 0
    assert pd.url == "https://events.pagerduty.com/v2/enqueue"
    assert hook.send_resolved is False
    assert isinstance(am, AlertmanagerReceiver) and am.url == "http://127.0.0.1:9093"
    assert TOKEN not in repr(settings.receivers)


def test_base_url_replaces_scheme_and_host() -> None:
    settings = _settings(
        {
            "type": "slack",
            "url": "https://hooks.slack.com/services/T1/B1/abc",
            "base_url": "http://127.0.0.1:8080",
        },
        {"type": "telegram", "bot_token": TOKEN, "chat_id": "@ops", "base_url": "http://x:1/"},
        {"type": "pagerduty", "routing_key": "k", "base_url": "http://127.0.0.1:9"},
    )
    slack, telegram, pd = build_receivers(settings.receivers)
    assert isinstance(slack, SlackReceiver) and isinstance(telegram, TelegramReceiver)
    assert slack.url == "http://127.0.0.1:8080/services/T1/B1/abc"
    assert telegram.url == f"http://x:1/bot{TOKEN}/sendMessage"
    assert isinstance(pd, PagerDutyReceiver) and pd.url == "http://127.0.0.1:9/v2/enqueue"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"type": "sms"}, "alerts.receivers[0].type"),
        ({"type": "slack"}, "alerts.receivers[0].url"),
        ({"type": "slack", "url": "ftp://x"}, "alerts.receivers[0].url"),
        ({"type": "slack", "url": "https://a/b", "url_env": "X"}, "alerts.receivers[0].url_env"),
        ({"type": "slack", "url_env": "NOT_SET"}, "alerts.receivers[0].url_env"),
        ({"type": "slack", "url_file": "/nonexistent/x"}, "alerts.receivers[0].url_file"),
        ({"type": "slack", "url": "https://a/b", "chat_id": 1}, "alerts.receivers[0].chat_id"),
        ({"type": "telegram", "bot_token": TOKEN}, "alerts.receivers[0].chat_id"),
        ({"type": "telegram", "bot_token": "nope", "chat_id": 1}, "alerts.receivers[0].bot_token"),
        ({"type": "pagerduty"}, "alerts.receivers[0].routing_key"),
        (
            {"type": "pagerduty", "routing_key": "k", "repeat_interval": "soon"},
            "alerts.receivers[0].repeat_interval",
        ),
        (
            {"type": "discord", "url": "https://a/b", "send_resolved": "yes"},
            "alerts.receivers[0].send_resolved",
        ),
    ],
)
def test_a_bad_receiver_setting_names_its_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(table)
    assert info.value.setting == key


def test_a_secret_is_never_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        _settings({"type": "slack", "url": "hxxps://hooks.slack.com/services/T/B/SECRETPART"})
    assert "SECRETPART" not in str(info.value)


def test_receivers_must_be_a_list_of_tables() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.receivers"):
        load_settings({"receivers": "slack"})
    with pytest.raises(ConfigError, match=r"alerts\.alertmanager_labels"):
        load_settings({"alertmanager_labels": "both"})
    assert load_settings({"alertmanager_labels": "aggregator"}).same_labels_as_prometheus is False
    assert load_settings({}).same_labels_as_prometheus is True


# --- masking, Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://hooks.slack.com/services/T1/B2/secret",
            "https://hooks.slack.com/services/T1/***",
        ),
        (
            "https://discord.com/api/webhooks/123/tok-en",
            "https://discord.com/api/webhooks/123/***",
        ),
        (
            f"https://api.telegram.org/bot{TOKEN}/sendMessage",
            "https://api.telegram.org/bot***/sendMessage",
        ),
        ("https://u:p@am.example:9093/x?token=1#f", "https://am.example:9093/x"),
        ("https://events.pagerduty.com/v2/enqueue", "https://events.pagerduty.com/v2/enqueue"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            30.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, None),  # no Date to measure from
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-1"}, None),
        ({}, None),
    ],
)
def test_retry_after_header(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_header(headers) == seconds


# --- which notices a receiver gets -----------------------------------------------------------


def test_repeat_interval_reminds_from_the_last_notification() -> None:
    slack = SlackReceiver("https://hooks.slack.com/services/T/B/x", repeat_interval=3600)
    notified: dict[str, float] = {}
    a = _alert()
    assert [n.kind for n in notices_for(slack, [Transition(FIRED, a)], notified, 0)] == [
        NoticeKind.FIRING
    ]
    assert notices_for(slack, [Transition(RESEND, a)], notified, 3599) == []
    assert [n.kind for n in notices_for(slack, [Transition(RESEND, a)], notified, 3600)] == [
        NoticeKind.REMINDER
    ]
    assert notices_for(slack, [Transition(RESEND, a)], notified, 7199) == []
    resolved = notices_for(slack, [Transition(RESOLVED, a)], notified, 7200)
    assert [n.kind for n in resolved] == [NoticeKind.RESOLVED] and notified == {}


def test_alertmanager_gets_every_resend_and_a_new_receiver_hears_of_a_firing_alert() -> None:
    am = AlertmanagerReceiver("http://am:9093")
    pd = PagerDutyReceiver("k", send_resolved=False)
    a = _alert()
    assert [n.kind for n in notices_for(am, [Transition(RESEND, a)], {}, 5)] == [
        NoticeKind.REMINDER
    ]
    notified: dict[str, float] = {}  # never told: it is paged now
    assert [n.kind for n in notices_for(pd, [Transition(RESEND, a)], notified, 5)] == [
        NoticeKind.FIRING
    ]
    assert notices_for(pd, [Transition(RESOLVED, a)], notified, 9) == []  # send_resolved off


# --- the APIs' limits ------------------------------------------------------------------------


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ok = True

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.ok = self.ok and bool(self.stack) and self.stack.pop() == tag


def test_many_alerts_stay_within_every_limit() -> None:
    notices = [Notice(NoticeKind.FIRING, _alert(i, nickname="n" * 300)) for i in range(300)]
    d = discord_body(notices)
    assert len(d["content"]) <= 2000 and len(d["embeds"]) <= 10
    assert sum(len(e["title"]) + len(e["description"]) for e in d["embeds"]) <= 6000
    t = telegram_body("-1", notices)
    assert len(t["text"]) <= 4096
    tags = _Tags()
    tags.feed(t["text"])
    assert tags.ok and tags.stack == []
    assert "more" in t["text"]
    s = slack_body(notices)
    assert len(s["blocks"]) <= 50 and all(
        len(b["text"]["text"]) <= 3000 for b in s["blocks"] if b["type"] == "section"
    )


def test_text_is_escaped_for_each_markup() -> None:
    n = [Notice(NoticeKind.FIRING, _alert())]
    assert "&lt;is&gt; down &amp; out" in telegram_body("1", n)["text"]
    assert "&lt;is&gt; down &amp; out" in slack_body(n)["blocks"][1]["text"]["text"]
    assert discord_body(n)["allowed_mentions"] == {"parse": []}


# --- reply classification --------------------------------------------------------------------


def test_telegram_replies() -> None:
    tg = TelegramReceiver(TOKEN, "1")
    assert tg.check(Reply(200, {}, b'{"ok": true, "result": {}}')) is None
    refused = tg.check(Reply(200, {}, b'{"ok": false, "error_code": 400}'))
    assert refused is not None and refused.reason is FailureReason.REFUSED
    assert not refused.retryable
    flood = tg.check(
        Reply(429, {}, b'{"ok": false, "error_code": 429, "parameters": {"retry_after": 7}}')
    )
    assert flood is not None and flood.retryable and flood.retry_after == 7.0
    unauthorized = tg.check(Reply(401, {}, b'{"ok": false, "error_code": 401}'))
    assert unauthorized is not None and not unauthorized.retryable


def test_discord_and_pagerduty_replies() -> None:
    dc = DiscordReceiver("https://discord.com/api/webhooks/1/t")
    assert dc.check(Reply(204, {}, b"")) is None
    limited = dc.check(Reply(429, {"Retry-After": "2"}, b'{"retry_after": 1.25, "global": false}'))
    assert limited is not None and limited.retry_after == 1.25
    pd = PagerDutyReceiver("k")
    assert pd.check(Reply(202, {}, b'{"status": "success", "dedup_key": "x"}')) is None
    bad = pd.check(Reply(400, {}, b'{"status": "invalid event"}'))
    assert bad is not None and not bad.retryable
    throttled = pd.check(Reply(429, {}, b""))
    assert throttled is not None and throttled.retryable and throttled.retry_after is None


# --- PagerDuty, runbooks, Alertmanager labels -------------------------------------------------


def test_pagerduty_keys_and_severities() -> None:
    a, b = _alert(), _alert(aggregator="agg-b")
    key = dedup_key(Notice(NoticeKind.FIRING, a))
    assert key == dedup_key(Notice(NoticeKind.RESOLVED, b))  # stable, whichever aggregator
    assert key != dedup_key(Notice(NoticeKind.FIRING, _alert(1)))
    assert len(key) <= 255
    assert [pd_severity(s) for s in ("critical", "warning", "info", "", "page")] == [
        "critical",
        "warning",
        "info",
        "error",
        "error",
    ]
    resolve = pagerduty_event("k", Notice(NoticeKind.RESOLVED, a))
    assert resolve == {"routing_key": "k", "event_action": "resolve", "dedup_key": key}
    trigger = pagerduty_event("k", Notice(NoticeKind.FIRING, a))
    assert "links" not in trigger  # a relative runbook is no link


def test_absolute_runbook() -> None:
    a = _alert()
    assert absolute_runbook(a, "") is a
    b = absolute_runbook(a, "https://git.example/fil-heartbeat/blob/main/")
    assert b.annotations["runbook"] == (
        "https://git.example/fil-heartbeat/blob/main/grafana/RUNBOOK.md#filnodedown"
    )
    assert absolute_runbook(b, "https://elsewhere") is b


def test_alertmanager_labels_match_the_prometheus_rules() -> None:
    (same,) = alertmanager_payload([_alert(miner="")], same_labels_as_prometheus=True)
    assert same["labels"] == {
        "alertname": "FilNodeDown",
        "severity": "critical",
        "peer_id": "12D3KooW0000",
        "nickname": "node-0",
        "network": "mainnet",
    }
    assert same["annotations"]["aggregator"] == "agg-a"
    (kept,) = alertmanager_payload([_alert()], same_labels_as_prometheus=False)
    assert kept["labels"]["aggregator"] == "agg-a"


# --- --runbook-base-url -------------------------------------------------------------------------


def test_runbook_base_url_from_flag_env_and_toml(tmp_path: Path) -> None:
    from aggregator.__main__ import parse_args

    _, config = parse_args(["run", "--runbook-base-url", "https://git.example/fh/"], env={})
    assert config.runbook_base_url == "https://git.example/fh"
    env = {"FIL_HEARTBEAT_AGGREGATOR_RUNBOOK_BASE_URL": "https://env.example/x"}
    assert parse_args(["run"], env=env)[1].runbook_base_url == "https://env.example/x"
    toml = tmp_path / "a.toml"
    toml.write_text('runbook_base_url = "https://toml.example"\n')
    assert parse_args(["run", "--config", str(toml)], env={})[1].runbook_base_url == (
        "https://toml.example"
    )
    assert parse_args(["run"], env={})[1].runbook_base_url == ""
    with pytest.raises(ConfigError) as info:
        parse_args(["run", "--runbook-base-url", "git.example/fh"], env={})
    assert info.value.setting == "--runbook-base-url / FIL_HEARTBEAT_AGGREGATOR_RUNBOOK_BASE_URL"


def test_a_receivers_env_secret_is_checked_at_parse_time(tmp_path: Path) -> None:
    from aggregator.__main__ import parse_args

    toml = tmp_path / "a.toml"
    toml.write_text('[alerts]\n[[alerts.receivers]]\ntype = "pagerduty"\nrouting_key_env = "PD"\n')
    with pytest.raises(ConfigError) as info:
        parse_args(["run", "--config", str(toml)], env={})
    assert info.value.setting == "alerts.receivers[0].routing_key_env"
    _, config = parse_args(["run", "--config", str(toml)], env={"PD": "key"})
    assert config.alerts["receivers"][0]["routing_key_env"] == "PD"
