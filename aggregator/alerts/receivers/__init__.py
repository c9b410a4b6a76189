"""Notification targets of the built-in alerter, one module per API.

`alertmanager` (v2 API), `webhook` (generic JSON), `slack` (incoming webhook), `discord`
(webhook), `telegram` (bot sendMessage), `pagerduty` (Events API v2). `config` validates a
`[[alerts.receivers]]` table; `common` holds what they share (notices, requests, failure
classification, backoff, masking), `chat` the text the chat receivers show. Each receiver is
pure: it renders requests and classifies replies; aggregator/alerts/delivery.py sends,
retries and counts. `build_receivers` makes them from the validated settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from aggregator.alerts.receivers.alertmanager import AlertmanagerReceiver
from aggregator.alerts.receivers.common import Receiver
from aggregator.alerts.receivers.discord import DiscordReceiver
from aggregator.alerts.receivers.pagerduty import PagerDutyReceiver
from aggregator.alerts.receivers.slack import SlackReceiver
from aggregator.alerts.receivers.telegram import TelegramReceiver
from aggregator.alerts.receivers.webhook import WebhookReceiver

if TYPE_CHECKING:
    from aggregator.alerts.receivers.config import ReceiverSettings

__all__ = [
    "AlertmanagerReceiver",
    "DiscordReceiver",
    "PagerDutyReceiver",
    "Receiver",
    "SlackReceiver",
    "TelegramReceiver",
    "WebhookReceiver",
    "build_receiver",
    "build_receivers",
]


def build_receiver(
    s: ReceiverSettings,
    *,
    sender: str = "aggregator",
    generator_url: str = "",
    same_labels_as_prometheus: bool = True,
) -> Receiver:
    receiver: Receiver
    if s.type == "slack":
        receiver = SlackReceiver(s.url, send_resolved=s.send_resolved)
    elif s.type == "discord":
        receiver = DiscordReceiver(s.url, send_resolved=s.send_resolved)
    elif s.type == "telegram":
        receiver = TelegramReceiver(s.secret, s.chat_id, s.url, send_resolved=s.send_resolved)
    elif s.type == "pagerduty":
        receiver = PagerDutyReceiver(s.secret, s.url, generator_url, send_resolved=s.send_resolved)
    elif s.type == "webhook":
        receiver = WebhookReceiver(s.url, sender, send_resolved=s.send_resolved)
    else:
        return AlertmanagerReceiver(s.url, generator_url, same_labels_as_prometheus)
    if s.repeat_interval is not None:
        receiver = replace(receiver, repeat_interval=s.repeat_interval)
    return receiver


def build_receivers(
    settings: Iterable[ReceiverSettings],
    *,
    sender: str = "aggregator",
    generator_url: str = "",
    same_labels_as_prometheus: bool = True,
) -> list[Receiver]:
    return [
        build_receiver(
            s,
            sender=sender,
            generator_url=generator_url,
            same_labels_as_prometheus=same_labels_as_prometheus,
        )
        for s in settings
    ]
