"""The built-in alert evaluator: the alerts of grafana/prometheus/rules.yml over a FleetSnapshot.

Pure: no I/O, no clock reads; `AlertEvaluator.evaluate(snapshot)` uses `snapshot.taken_at`.

Each alert key (alertname + peer_id for node alerts, alertname + network for fleet alerts)
runs a small state machine, as Prometheus does:

    inactive --condition--> pending --held for `for`--> firing (FIRED sent)
    pending  --clear------> inactive (nothing sent)
    firing   --condition--> firing (RESEND every `resend_interval`)
    firing   --clear------> firing, held down: still firing for `keep_firing_for`
    held     --condition--> firing again, nothing sent (the flap is suppressed)
    held     --clear for `keep_firing_for`--> resolved (RESOLVED sent, endsAt = now)

The hold-down is Prometheus's `keep_firing_for`: an alert that clears and comes back within it
sends neither a recovery nor a new page. A node or network that disappears from the snapshot
(expired) clears its conditions.

Thresholds and `for` durations are those of rules.yml (tests/test_alert_rules.py compares
them). FilHeartbeatAggregatorDown and FilHeartbeatBeatsRejected are Prometheus-only: an
aggregator cannot report its own death, and the snapshot holds no ingest counters.

The alert table (severities, `AlertPolicy`, `Alert`, `Transition`) lives in
aggregator/alerts/model.py, the `[alerts]` settings in aggregator/alerts/settings.py; both are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aggregator.alerts.conditions import Condition, human, network_condition, node_conditions
from aggregator.alerts.model import (
    ALERT_SEVERITIES,
    TEST_ALERT_NAME,
    Alert,
    AlertPolicy,
    Phase,
    Severity,
    Transition,
    TransitionKind,
)
from aggregator.alerts.settings import AlertingSettings, alerting_settings
from aggregator.fleet import FleetSnapshot, NetworkView
from heartbeat.version import is_static

__all__ = [
    "ALERT_SEVERITIES",
    "TEST_ALERT_NAME",
    "Alert",
    "AlertEvaluator",
    "AlertPolicy",
    "AlertingSettings",
    "Phase",
    "Severity",
    "Transition",
    "TransitionKind",
    "alerting_settings",
    "test_alert",
]


@dataclass(slots=True)
class _Track:
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    active_since: float
    phase: Phase = Phase.PENDING
    last_sent: float = -math.inf
    clear_since: float | None = None  # hold-down start while firing

    def alert(self, ends_at: float | None = None) -> Alert:
        return Alert(
            dict(self.labels), dict(self.annotations), self.active_since, ends_at, self.value
        )


class AlertEvaluator:
    """The per-key state machines; feed it snapshots in time order."""

    def __init__(
        self, policy: AlertPolicy | None = None, static_labels: Mapping[str, str] | None = None
    ) -> None:
        self.policy = policy if policy is not None else AlertPolicy()
        self.static_labels = dict(static_labels or {})
        self._tracks: dict[tuple[str, str], _Track] = {}
        # per network key: (last height seen, when it last changed)
        self._heights: dict[str, tuple[int, float]] = {}

    # -- conditions --------------------------------------------------------------------------

    def _network_conditions(
        self, n: NetworkView, now: float, static_only: bool = False
    ) -> Iterable[Condition]:
        p = self.policy
        if n.height is not None:
            last = self._heights.get(n.key)
            if last is None or last[0] != n.height:
                self._heights[n.key] = (n.height, now)
            else:
                unchanged = now - last[1]
                if unchanged >= p.fleet_stalled_after and not static_only:
                    yield network_condition(
                        "FilFleetHeightStalled",
                        n,
                        n.height,
                        f"The {n.name} fleet's height has not advanced for {human(unchanged)}",
                        f"The highest height any node of network {n.name} reports "
                        f"({n.height}) has not changed for {human(unchanged)}. Either "
                        "the chain halted or every node is stuck.",
                        p.for_duration("FilFleetHeightStalled"),
                    )
            if n.expected_height is not None:
                behind = n.expected_height - n.height
                if behind >= p.fleet_behind_epochs:
                    yield network_condition(
                        "FilFleetBehindExpectedHeight",
                        n,
                        behind,
                        f"The {n.name} fleet is {behind} epochs behind wall-clock",
                        f"The best height of network {n.name} is {behind} epochs below "
                        "the height expected from genesis time and block delay "
                        f"(threshold {p.fleet_behind_epochs} epochs).",
                        p.for_duration("FilFleetBehindExpectedHeight"),
                    )
        if n.nodes_up < p.fleet_min_up_nodes:
            yield network_condition(
                "FilFleetShrunk",
                n,
                n.nodes_up,
                f"Only {n.nodes_up} nodes up in {n.name}",
                f"{n.nodes_up} nodes of network {n.name} are up, fewer than the "
                f"minimum of {p.fleet_min_up_nodes}.",
                p.for_duration("FilFleetShrunk"),
            )

    def _conditions(self, snapshot: FleetSnapshot) -> dict[tuple[str, str], Condition]:
        now = snapshot.taken_at
        out: dict[tuple[str, str], Condition] = {}
        for v in snapshot.nodes:
            if v.probation:  # a node that never completed probation never alerts
                continue
            for c in node_conditions(self.policy, v, now):
                out[c.key] = c
        # A network whose every node has a static head (a trial) never moves: not a stall.
        moving = {v.network_key for v in snapshot.nodes if not is_static(v.version)}
        for n in snapshot.networks.values():
            for c in self._network_conditions(n, now, n.key not in moving):
                out[c.key] = c
        for key in [k for k in self._heights if k not in snapshot.networks]:
            del self._heights[key]
        disabled = self.policy.disabled
        return {k: c for k, c in out.items() if k[0] not in disabled}

    # -- the state machines ------------------------------------------------------------------

    def evaluate(self, snapshot: FleetSnapshot) -> list[Transition]:
        """Advance every alert to `snapshot.taken_at`; the transitions to deliver, in order."""
        now = snapshot.taken_at
        p = self.policy
        out: list[Transition] = []
        active = self._conditions(snapshot)
        for key, c in active.items():
            track = self._tracks.get(key)
            labels = {**self.static_labels, **c.labels}
            if track is None:
                track = self._tracks[key] = _Track(labels, c.annotations, c.value, now)
            else:
                track.labels, track.annotations, track.value = labels, c.annotations, c.value
                track.clear_since = None
            if track.phase is Phase.PENDING:
                if now - track.active_since >= c.for_:
                    track.phase = Phase.FIRING
                    track.last_sent = now
                    out.append(Transition(TransitionKind.FIRED, track.alert()))
            elif now - track.last_sent >= p.resend_interval:
                track.last_sent = now
                out.append(Transition(TransitionKind.RESEND, track.alert()))
        for key in [k for k in self._tracks if k not in active]:
            track = self._tracks[key]
            if track.phase is Phase.PENDING:
                del self._tracks[key]
                continue
            if track.clear_since is None:
                track.clear_since = now
            if now - track.clear_since >= p.keep_firing_for:
                del self._tracks[key]
                out.append(Transition(TransitionKind.RESOLVED, track.alert(ends_at=now)))
            elif now - track.last_sent >= p.resend_interval:
                track.last_sent = now
                out.append(Transition(TransitionKind.RESEND, track.alert()))
        return out

    def firing(self) -> list[Alert]:
        """Alerts firing now (held-down ones included), sorted by labels."""
        alerts = [t.alert() for t in self._tracks.values() if t.phase is Phase.FIRING]
        return sorted(alerts, key=lambda a: sorted(a.labels.items()))

    def current(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as JSON-ready dicts (for /api/v1/alerts)."""
        out = []
        for t in self._tracks.values():
            out.append(
                {
                    "labels": dict(t.labels),
                    "annotations": dict(t.annotations),
                    "state": t.phase.value,
                    "activeAt": t.active_since,
                    "value": t.value,
                    "keptFiringSince": t.clear_since,
                }
            )
        return sorted(out, key=lambda a: sorted(a["labels"].items()))

    # -- persistence (aggregator/alerts/state_store.py keeps it in the state db) ------------

    def export_state(self) -> dict[str, Any]:
        """Every pending and firing alert and the fleet heights, JSON-ready."""
        tracks = [
            {
                "key": list(key),
                "labels": dict(t.labels),
                "annotations": dict(t.annotations),
                "value": t.value,
                "active_since": t.active_since,
                "phase": t.phase.value,
                "last_sent": t.last_sent if math.isfinite(t.last_sent) else None,
                "clear_since": t.clear_since,
            }
            for key, t in self._tracks.items()
        ]
        heights = {k: [h, at] for k, (h, at) in self._heights.items()}
        return {"tracks": tracks, "heights": heights}

    def restore_state(self, state: Mapping[str, Any]) -> int:
        """Take back what `export_state` gave (after a restart); the alerts restored."""
        for row in state.get("tracks", []):
            last_sent = row["last_sent"]
            key = (str(row["key"][0]), str(row["key"][1]))
            self._tracks[key] = _Track(
                {str(k): str(v) for k, v in row["labels"].items()},
                {str(k): str(v) for k, v in row["annotations"].items()},
                float(row["value"]),
                float(row["active_since"]),
                Phase(row["phase"]),
                -math.inf if last_sent is None else float(last_sent),
                None if row["clear_since"] is None else float(row["clear_since"]),
            )
        for k, (h, at) in state.get("heights", {}).items():
            self._heights[str(k)] = (int(h), float(at))
        return len(state.get("tracks", []))

    @property
    def state_signature(self) -> tuple[Any, ...]:
        """Changes whenever something `export_state` holds changes, but for values and
        texts (a save on every evaluation would follow a counting `value`)."""
        return (
            tuple((k, t.phase, t.last_sent, t.clear_since) for k, t in self._tracks.items()),
            tuple(self._heights.items()),
        )


def test_alert(
    now: float, static_labels: Mapping[str, str] | None = None, duration: float = 600.0
) -> Alert:
    """The start-up test alert: fires now, resolves by itself after `duration`."""
    labels = {
        **(static_labels or {}),
        "alertname": TEST_ALERT_NAME,
        "severity": Severity.INFO.value,
    }
    return Alert(
        labels,
        {
            "summary": "fil-heartbeat alerting test",
            "description": "Sent once at start-up (--alert-test): alert delivery works.",
        },
        now,
        now + duration,
    )


test_alert.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
