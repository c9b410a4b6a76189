"""The alert table: every alert's severity, the thresholds and `for` durations, and the values
the evaluator (aggregator/alerts/rules.py) produces: `Alert` and its `Transition`s.

Pure, like the evaluator: no I/O, no clock reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ALERT_ESCALATIONS",
    "ALERT_SEVERITIES",
    "TEST_ALERT_NAME",
    "Alert",
    "AlertPolicy",
    "Phase",
    "Severity",
    "Transition",
    "TransitionKind",
]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


#: Every alert the evaluator raises and its severity (as in rules.yml).
ALERT_SEVERITIES: Mapping[str, Severity] = {
    "FilNodeDown": Severity.CRITICAL,
    "FilHeartbeatMissing": Severity.WARNING,
    "FilNodeLagging": Severity.WARNING,
    "FilNodeHeadStalled": Severity.CRITICAL,
    "FilNodeForked": Severity.CRITICAL,
    "FilNodeSyncingTooLong": Severity.WARNING,
    "FilNodeSourceDown": Severity.WARNING,
    "FilFleetHeightStalled": Severity.CRITICAL,
    "FilFleetBehindExpectedHeight": Severity.WARNING,
    "FilFleetShrunk": Severity.CRITICAL,
}
#: Alerts that escalate: while the condition holds for the longer `for`
#: (`AlertPolicy.for_duration(name, severity)`), a second alert of the same name with this
#: severity fires beside the first (two rules of one name in rules.yml).
ALERT_ESCALATIONS: Mapping[str, Severity] = {"FilNodeSourceDown": Severity.CRITICAL}
TEST_ALERT_NAME = "FilHeartbeatTestAlert"


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds (seconds, epochs, nodes) and `for` durations; defaults = rules.yml."""

    node_down_for: float = 60.0
    heartbeat_missing_after: float = 180.0
    heartbeat_missing_for: float = 60.0
    lag_epochs: int = 5
    lagging_for: float = 120.0
    head_stalled_after: float = 300.0
    head_stalled_for: float = 60.0
    forked_for: float = 300.0
    syncing_for: float = 1800.0
    source_down_for: float = 60.0
    source_down_critical_for: float = 600.0
    fleet_stalled_after: float = 300.0
    fleet_stalled_for: float = 300.0
    fleet_behind_epochs: int = 10
    fleet_behind_for: float = 300.0
    fleet_min_up_nodes: int = 1
    fleet_shrunk_for: float = 120.0
    #: Flap suppression: a cleared alert keeps firing this long before it resolves.
    keep_firing_for: float = 60.0
    #: Firing alerts are sent again this often (Alertmanager forgets them otherwise).
    resend_interval: float = 60.0
    #: Alert names not to evaluate.
    disabled: frozenset[str] = frozenset()

    def for_duration(self, alertname: str, severity: str | None = None) -> float:
        """The `for` of an alert; `severity`: of an escalated one (`ALERT_ESCALATIONS`)."""
        if severity is not None and severity == ALERT_ESCALATIONS.get(alertname):
            return {"FilNodeSourceDown": self.source_down_critical_for}[alertname]
        return {
            "FilNodeDown": self.node_down_for,
            "FilHeartbeatMissing": self.heartbeat_missing_for,
            "FilNodeLagging": self.lagging_for,
            "FilNodeHeadStalled": self.head_stalled_for,
            "FilNodeForked": self.forked_for,
            "FilNodeSyncingTooLong": self.syncing_for,
            "FilNodeSourceDown": self.source_down_for,
            "FilFleetHeightStalled": self.fleet_stalled_for,
            "FilFleetBehindExpectedHeight": self.fleet_behind_for,
            "FilFleetShrunk": self.fleet_shrunk_for,
        }.get(alertname, 0.0)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert instance; `labels` include alertname and severity."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # when the condition became true (Prometheus's activeAt)
    ends_at: float | None = None  # set once resolved
    value: float = 0.0

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


class TransitionKind(StrEnum):
    FIRED = "fired"
    RESEND = "resend"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    alert: Alert


class Phase(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
