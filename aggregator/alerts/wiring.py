"""Alerting set up from the command line and the configuration: the alerting flags, the
`[alerts]` settings (over an alerts file), the delivery with every receiver, and
`fil-heartbeat-aggregator alert-test` (one test notification to every receiver).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import tomllib
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.alerts.receivers.common import absolute_runbook
from aggregator.alerts.rules import AlertingSettings, alerting_settings, test_alert
from heartbeat.errors import ConfigError

if TYPE_CHECKING:
    from aggregator.alerts.delivery import AlertDelivery, TestResult
    from aggregator.config import AggregatorConfig

__all__ = [
    "add_alert_arguments",
    "alert_test",
    "build_delivery",
    "load_settings",
    "merge_alert_flags",
    "run_alert_test",
]

_ALERTS_FILE = "--alerts-file / FIL_HEARTBEAT_AGGREGATOR_ALERTS_FILE"


def load_settings(
    table: Mapping[str, Any],
    alerts_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AlertingSettings:
    """Settings from the config's `[alerts]` table over those of `alerts_file` (TOML, either
    an `[alerts]` table or top-level keys); `env` resolves the receivers' `*_env` keys.
    Raises `ConfigError`."""
    merged: dict[str, Any] = {}
    if alerts_file is not None:
        try:
            doc = tomllib.loads(alerts_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(_ALERTS_FILE, f"{alerts_file}: {exc}") from exc
        section = doc.get("alerts", doc)
        if not isinstance(section, dict):
            raise ConfigError(_ALERTS_FILE, f"{alerts_file}: [alerts] must be a table")
        merged.update(section)
    merged.update(table)
    return alerting_settings(merged, env)


async def alert_test(
    delivery: AlertDelivery,
    *,
    now: float,
    static_labels: Mapping[str, str] | None = None,
    runbook_base_url: str = "",
    out: Callable[[str], None] = print,
) -> list[TestResult]:
    """Send one test notification to every receiver of `delivery`; print one line each."""
    alert = absolute_runbook(test_alert(now, static_labels), runbook_base_url)
    alert = dataclasses.replace(
        alert,
        annotations={
            **alert.annotations,
            "description": "Sent by `fil-heartbeat-aggregator alert-test`: delivery works.",
        },
    )
    results = await delivery.send_test(alert)
    for r in results:
        out(f"{'ok  ' if r.ok else 'FAIL'} {r.kind:<12} {r.name}: {r.detail}")
    failed = sum(1 for r in results if not r.ok)
    out(f"{len(results) - failed} of {len(results)} receivers took the test notification")
    return results


def add_alert_arguments(parser: argparse.ArgumentParser) -> None:
    """The alerting flags of `fil-heartbeat-aggregator run`."""
    parser.add_argument(
        "--alertmanager-url",
        action="append",
        metavar="URL",
        help="Alertmanager base URL (repeatable: every cluster member)",
    )
    parser.add_argument(
        "--alert-webhook",
        action="append",
        metavar="URL",
        help="POST alerts as JSON to this URL (repeatable)",
    )
    parser.add_argument(
        "--alert-test", action="store_const", const=True, help="send a test alert at start-up"
    )
    parser.add_argument(
        "--alert-set",
        action="append",
        metavar="KEY=VALUE",
        help="an [alerts] setting, e.g. lagging_for=3m or lag_epochs=8",
    )


def merge_alert_flags(flags: MutableMapping[str, Any], file: Mapping[str, Any]) -> None:
    """Move the alerting flags out of `flags` into `flags["alerts"]`, over the file's
    `[alerts]` table (flags win key by key). Raises `ConfigError`."""
    cli: dict[str, Any] = {}
    urls = flags.pop("alertmanager_url", None)
    if urls:
        cli["alertmanager_urls"] = urls
    hooks = flags.pop("alert_webhook", None)
    if hooks:
        cli["webhook_urls"] = hooks
    if flags.pop("alert_test", None):
        cli["send_test_alert"] = True
    for item in flags.pop("alert_set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--alert-set", f"{item!r} is not KEY=VALUE")
        cli[key.strip()] = _flag_value(value.strip())
    if cli:
        base = file.get("alerts", {})
        flags["alerts"] = {**(base if isinstance(base, Mapping) else {}), **cli}


def _flag_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.isdigit():
        return int(text)
    if "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def build_delivery(
    settings: AlertingSettings,
    sender: str,
    generator_url: str = "",
    **options: Any,
) -> AlertDelivery:
    """Every receiver of `settings`: Alertmanager URLs, webhook URLs, `[[alerts.receivers]]`."""
    from aggregator.alerts.delivery import AlertDelivery
    from aggregator.alerts.receivers import build_receivers

    receivers = build_receivers(
        settings.receivers,
        sender=sender,
        generator_url=generator_url,
        same_labels_as_prometheus=settings.same_labels_as_prometheus,
    )
    return AlertDelivery(
        alertmanager_urls=settings.alertmanager_urls,
        webhook_urls=settings.webhook_urls,
        receivers=receivers,
        sender=sender,
        generator_url=generator_url,
        same_labels_as_prometheus=settings.same_labels_as_prometheus,
        **options,
    )


async def run_alert_test(
    config: AggregatorConfig,
    env: Mapping[str, str],
    *,
    out: Callable[[str], None] = print,
    give_up_after: float = 30.0,
) -> int:
    """`fil-heartbeat-aggregator alert-test`: 0 if every receiver took the test notification,
    1 if one did not; no receiver at all is a `ConfigError` (exit 2)."""
    from aggregator.alerts.delivery import RetryPolicy

    settings = load_settings(config.alerts, config.alerts_file, env)
    delivery = build_delivery(settings, config.name, retry=RetryPolicy(give_up_after=give_up_after))
    if not delivery.targets:
        raise ConfigError(
            "alerts.receivers",
            "no alert receiver configured (--alertmanager-url, --alert-webhook, "
            "[[alerts.receivers]])",
        )
    results = await alert_test(
        delivery,
        now=time.time(),
        static_labels={"aggregator": config.name},
        runbook_base_url=config.runbook_base_url,
        out=out,
    )
    return 0 if all(r.ok for r in results) else 1
