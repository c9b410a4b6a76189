"""The aggregator's built-in alerting.

`rules` (pure) evaluates the alerts of grafana/prometheus/rules.yml over fleet snapshots;
`delivery` (httpx) sends them to Alertmanager and webhooks; `service` (trio) runs both.
This package imports nothing on its own, so that `aggregator.alerts.rules` stays pure.
"""

from __future__ import annotations

__all__: list[str] = []
