"""The built-in alerter's settings: the `[alerts]` table validated into `AlertingSettings`.

Receivers are `[[alerts.receivers]]` tables (aggregator.alerts.receivers.config.py parses
them into `ReceiverSettings`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aggregator.alerts.model import ALERT_SEVERITIES, AlertPolicy
from aggregator.alerts.receivers.config import ReceiverSettings, receiver_settings
from heartbeat.common.durations import parse_duration
from heartbeat.errors import ConfigError

__all__ = ["AlertingSettings", "ReceiverSettings", "alerting_settings"]


@dataclass(frozen=True, slots=True)
class AlertingSettings:
    """Where and how the built-in alerter delivers (from the `[alerts]` table and flags)."""

    #: Evaluate at all (the evaluator also feeds /api/v1/alerts and `alerts_firing`).
    enabled: bool = True
    alertmanager_urls: tuple[str, ...] = ()
    webhook_urls: tuple[str, ...] = ()
    send_test_alert: bool = False
    evaluation_interval: float = 5.0
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    #: The `[[alerts.receivers]]` tables (Slack, Discord, Telegram, PagerDuty, webhook,
    #: Alertmanager), validated, secrets read.
    receivers: tuple[ReceiverSettings, ...] = ()
    #: Alerts sent to Alertmanager carry the labels the shipped Prometheus rules give them
    #: (the `aggregator` label becomes an annotation): Alertmanager merges the two into one
    #: notification. `alertmanager_labels = "aggregator"` keeps the label (two alerts).
    same_labels_as_prometheus: bool = True

    @property
    def has_receivers(self) -> bool:
        return bool(self.alertmanager_urls or self.webhook_urls or self.receivers)


def _urls(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    urls = tuple(str(u).strip().rstrip("/") for u in items if str(u).strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
    return urls


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = parse_duration(value)
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a non-negative duration")
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected an integer")
    number = int(value)
    if number < 0:
        raise ValueError("expected a non-negative integer")
    return number


def alerting_settings(
    table: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> AlertingSettings:
    """Validate the `[alerts]` table. Keys: `enabled`, `alertmanager_urls`, `webhook_urls`,
    `send_test_alert`, `evaluation_interval`, `disabled`, `receivers` (a list of tables),
    `alertmanager_labels` ("prometheus" or "aggregator") and every `AlertPolicy` field
    (durations as numbers or Go strings: `for` durations are `*_for`). One bad key raises a
    `ConfigError` naming `alerts.<key>` (`alerts.receivers[N].<key>`). `env` resolves a
    receiver's `*_env` keys."""
    policy_fields = {f.name: f for f in fields(AlertPolicy)}
    policy: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in table.items():
        try:
            if key == "receivers":
                items = [value] if isinstance(value, Mapping) else value
                if not isinstance(items, list):
                    raise ValueError("expected a list of tables ([[alerts.receivers]])")
                settings["receivers"] = tuple(
                    receiver_settings(i, item, env or {}) for i, item in enumerate(items)
                )
            elif key == "alertmanager_labels":
                if value not in ("prometheus", "aggregator"):
                    raise ValueError('expected "prometheus" or "aggregator"')
                settings["same_labels_as_prometheus"] = value == "prometheus"
            elif key in ("alertmanager_urls", "alertmanager_url"):
                settings["alertmanager_urls"] = _urls(value)
            elif key in ("webhook_urls", "webhook_url"):
                settings["webhook_urls"] = _urls(value)
            elif key in ("send_test_alert", "enabled"):
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                settings[key] = value
            elif key == "evaluation_interval":
                interval = _seconds(value)
                if interval <= 0:
                    raise ValueError("must be positive")
                settings["evaluation_interval"] = interval
            elif key == "disabled":
                names = frozenset([value] if isinstance(value, str) else value)
                unknown = names - set(ALERT_SEVERITIES)
                if unknown:
                    raise ValueError(f"unknown alerts {sorted(unknown)}")
                policy["disabled"] = names
            elif key in policy_fields:
                kind = policy_fields[key].type
                policy[key] = _count(value) if kind == "int" else _seconds(value)
            else:
                raise ValueError("unknown setting")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"alerts.{key}", str(exc)) from exc
    return AlertingSettings(policy=AlertPolicy(**policy), **settings)
