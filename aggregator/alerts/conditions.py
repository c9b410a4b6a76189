"""The node alerts' conditions: which alerts a node's view calls for right now.

Pure: `node_conditions(policy, view, now)` yields one `Condition` per alert the node meets
(FilNodeDown, FilHeartbeatMissing, FilNodeLagging, FilNodeHeadStalled, FilNodeForked,
FilNodeSyncingTooLong, FilNodeSourceDown with its escalation); the evaluator in
aggregator/alerts/rules.py runs their state machines. Labels and annotations match
grafana/prometheus/rules.yml.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aggregator.alerts.model import ALERT_ESCALATIONS, ALERT_SEVERITIES, AlertPolicy, Severity
from aggregator.fleet import NetworkView, NodeState, NodeView
from heartbeat.common.durations import format_duration
from heartbeat.version import is_static

__all__ = [
    "Condition",
    "alert_annotations",
    "human",
    "network_condition",
    "node_conditions",
    "source_down_conditions",
]


@dataclass(frozen=True, slots=True)
class Condition:
    key: tuple[str, str]  # (alertname, peer id or network key; "/<severity>" if escalated)
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    for_: float  # how long the condition must hold before the alert fires


def _miner(v: NodeView) -> str:
    return f"miner {v.miner_address}" if v.miner_address else "no miner"


def _who(v: NodeView) -> str:
    return f"{v.nickname} ({_miner(v)}, peer {v.peer_id}, network {v.network})"


def human(seconds: float) -> str:
    return format_duration(float(round(seconds)))


def _node(
    name: str,
    v: NodeView,
    value: float,
    summary: str,
    description: str,
    for_: float,
    severity: Severity | None = None,
) -> Condition:
    labels = {
        "alertname": name,
        "severity": (severity or ALERT_SEVERITIES[name]).value,
        "peer_id": v.peer_id,
        "nickname": v.nickname,
        "network": v.network,
    }
    if v.miner_address:
        labels["miner"] = v.miner_address
    subject = v.peer_id if severity is None else f"{v.peer_id}/{severity.value}"
    texts = alert_annotations(name, summary, description)
    return Condition((name, subject), labels, texts, value, for_)


def network_condition(
    name: str, n: NetworkView, value: float, summary: str, description: str, for_: float
) -> Condition:
    labels = {"alertname": name, "severity": ALERT_SEVERITIES[name].value, "network": n.name}
    return Condition(
        (name, n.key), labels, alert_annotations(name, summary, description), value, for_
    )


def alert_annotations(name: str, summary: str, description: str) -> dict[str, str]:
    return {
        "summary": summary,
        "description": description,
        "runbook": f"grafana/RUNBOOK.md#{name.lower()}",
    }


def node_conditions(p: AlertPolicy, v: NodeView, now: float) -> Iterable[Condition]:
    if not v.up:
        yield _node(
            "FilNodeDown",
            v,
            0.0,
            f"Filecoin node {v.nickname} is down",
            f"No aggregator sees node {_who(v)} up: its heartbeat stream is closed or timed out.",
            p.for_duration("FilNodeDown"),
        )
    silent = now - v.last_beat
    if silent > p.heartbeat_missing_after:
        yield _node(
            "FilHeartbeatMissing",
            v,
            silent,
            f"No heartbeat from {v.nickname} for {human(silent)}",
            f"The last beat of node {_who(v)} arrived {human(silent)} ago "
            f"(threshold {human(p.heartbeat_missing_after)}).",
            p.for_duration("FilHeartbeatMissing"),
        )
    if not v.up:
        return
    if (
        v.lag_epochs is not None
        and v.lag_epochs >= p.lag_epochs
        and v.state is not NodeState.SYNCING
    ):
        yield _node(
            "FilNodeLagging",
            v,
            v.lag_epochs,
            f"Node {v.nickname} is {v.lag_epochs} epochs behind",
            f"Node {v.nickname} ({_miner(v)}, peer {v.peer_id}) is {v.lag_epochs} "
            f"epochs behind the {v.network} fleet (threshold {p.lag_epochs} epochs "
            f"for {human(p.lagging_for)}).",
            p.for_duration("FilNodeLagging"),
        )
    if v.state is NodeState.SOURCE_DOWN:
        yield from source_down_conditions(p, v, now)
        return  # no usable head: lagging and stalled say nothing about it
    unchanged = now - v.head_changed_at
    if unchanged > p.head_stalled_after and not is_static(v.version):  # static: by design
        yield _node(
            "FilNodeHeadStalled",
            v,
            unchanged,
            f"Head of {v.nickname} unchanged for {human(unchanged)}",
            f"Node {_who(v)} still beats but its head has not changed for "
            f"{human(unchanged)} (threshold {human(p.head_stalled_after)}).",
            p.for_duration("FilNodeHeadStalled"),
        )
    if v.state is NodeState.FORKED:
        yield _node(
            "FilNodeForked",
            v,
            1.0,
            f"Node {v.nickname} is on a fork",
            f"Node {_who(v)} has been on a head that differs from the fleet's "
            f"consensus at the same height for {human(p.forked_for)}.",
            p.for_duration("FilNodeForked"),
        )
    if v.state is NodeState.SYNCING:
        yield _node(
            "FilNodeSyncingTooLong",
            v,
            1.0,
            f"Node {v.nickname} has been syncing for {human(p.syncing_for)}",
            f"Node {_who(v)} has reported syncing for more than {human(p.syncing_for)}.",
            p.for_duration("FilNodeSyncingTooLong"),
        )


def source_down_conditions(p: AlertPolicy, v: NodeView, now: float) -> Iterable[Condition]:
    """FilNodeSourceDown: warning after `source_down_for`, and beside it critical after
    `source_down_critical_for` (two rules of one name in rules.yml)."""
    state = v.source_state or "no head"
    error = f": {v.source_error}" if v.source_error else ""
    summary = f"The agent of {v.nickname} gets no head from its Lotus"
    description = (
        f"Node {_who(v)} still beats, but its agent reports that its Lotus API gives no "
        f"usable head ({state}{error})."
    )
    name = "FilNodeSourceDown"
    yield _node(name, v, 1.0, summary, description, p.for_duration(name))
    critical = ALERT_ESCALATIONS[name]
    yield _node(name, v, 1.0, summary, description, p.for_duration(name, critical), critical)
