"""The built-in alert evaluator (pure): pending → firing after `for`, resend, hold-down, resolve;
the same names, severities, thresholds and `for` durations as grafana/prometheus/rules.yml."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from aggregator.alerts.model import ALERT_ESCALATIONS
from aggregator.alerts.rules import (
    ALERT_SEVERITIES,
    TEST_ALERT_NAME,
    AlertEvaluator,
    AlertPolicy,
    TransitionKind,
    alerting_settings,
    test_alert,
)
from aggregator.fleet import Fleet, FleetSnapshot, NetworkView, NodeState, NodeView
from heartbeat.common.durations import parse_duration
from heartbeat.errors import ConfigError
from heartbeat.protocol.wire import Beat

RULES = Path(__file__).resolve().parent.parent / "grafana" / "prometheus" / "rules.yml"
# About the aggregator's own processes: Prometheus sees them from outside, the built-in
# alerter (inside the process that would be down or crash-looping) cannot.
PROMETHEUS_ONLY = {
    "FilHeartbeatAggregatorDown",
    "FilHeartbeatBeatsRejected",
    "FilHeartbeatWorkerDown",
    "FilHeartbeatWorkerRestarting",
    # the agents' own /metrics: the aggregator does not scrape them
    "FilAgentDown",
    "FilAgentSourceDown",
}
STEP = 5.0  # evaluation interval of the scenarios

FIRED, RESEND, RESOLVED = TransitionKind.FIRED, TransitionKind.RESEND, TransitionKind.RESOLVED


def node(now: float, **kw: Any) -> NodeView:
    base: dict[str, Any] = dict(
        peer_id="12D3KooWAlpha",
        nickname="alpha",
        miner_address="f01234",
        network_key="bafygenesis",
        network="mainnet",
        state=NodeState.IN_CONSENSUS,
        up=True,
        connected=True,
        remote_address="/ip4/10.0.0.1/tcp/1",
        head="{bafyhead}",
        head_cids=("bafyhead",),
        head_hash=1,
        height=1000,
        head_timestamp=None,
        head_age_seconds=None,
        lag_epochs=0,
        syncing=False,
        version="1",
        first_seen=0.0,
        last_beat=now,
        beats_received=1,
        beat_period=3.0,
        beat_timeout=10.0,
        head_changed_at=now,
        height_changed_at=now,
    )
    base.update(kw)
    return NodeView(**base)


def network(nodes: tuple[NodeView, ...], **kw: Any) -> NetworkView:
    up = sum(1 for n in nodes if n.up)
    base: dict[str, Any] = dict(
        key="bafygenesis",
        name="mainnet",
        height=1000,
        expected_height=1000,
        genesis_timestamp=0,
        block_delay=30.0,
        consensus_head=frozenset({"bafyhead"}),
        consensus_head_hash=1,
        consensus_votes=up,
        nodes_total=len(nodes),
        nodes_up=up,
        counts=MappingProxyType({}),
        in_consensus=up,
        in_dispute=0,
    )
    base.update(kw)
    return NetworkView(**base)


def snapshot(now: float, nodes: tuple[NodeView, ...], **net: Any) -> FleetSnapshot:
    nets = {"bafygenesis": network(nodes, **net)} if nodes or net else {}
    return FleetSnapshot(now, nodes, MappingProxyType(nets))


Scenario = Callable[[float], FleetSnapshot]


def run(
    scenario: Scenario,
    until: float,
    policy: AlertPolicy | None = None,
    alertname: str | None = None,
) -> list[tuple[float, TransitionKind, str]]:
    """Transitions up to `until`; with `alertname`, those of that alert at its first severity
    (an escalated one, `ALERT_ESCALATIONS`, has its own tests)."""
    evaluator = AlertEvaluator(policy)
    out = []
    t = 0.0
    while t <= until:
        for tr in evaluator.evaluate(scenario(t)):
            if alertname is None or (
                tr.alert.alertname == alertname
                and tr.alert.severity == ALERT_SEVERITIES[alertname].value
            ):
                out.append((t, tr.kind, tr.alert.alertname))
        t += STEP
    return out


# --- scenarios: the condition holds from t=0 until `clear_at` --------------------------------

CLEAR_AT = 1000.0


def _healthy(t: float) -> NodeView:
    return node(t)


def _bad_node(kind: str) -> Scenario:
    def scenario(t: float) -> FleetSnapshot:
        if t >= CLEAR_AT:
            # a healthy node, beating; its head changed recently
            return snapshot(t, (node(t),))
        n = {
            "FilNodeDown": lambda: node(t, up=False, state=NodeState.DOWN, last_beat=t - 20),
            # beats stopped 200 s before t=0 but the node still counts up
            "FilHeartbeatMissing": lambda: node(t, last_beat=-200.0),
            "FilNodeLagging": lambda: node(t, state=NodeState.LAGGING, lag_epochs=6),
            "FilNodeHeadStalled": lambda: node(t, head_changed_at=-301.0),
            "FilNodeForked": lambda: node(t, state=NodeState.FORKED),
            "FilNodeSyncingTooLong": lambda: node(
                t, state=NodeState.SYNCING, syncing=True, lag_epochs=400
            ),
            "FilNodeSourceDown": lambda: _source_down(t),
        }[kind]()
        return snapshot(t, (n,), nodes_up=int(n.up))

    return scenario


def _bad_fleet(kind: str) -> Scenario:
    def scenario(t: float) -> FleetSnapshot:
        bad = t < CLEAR_AT
        height = 1000 + int(t // 30)
        if kind == "FilFleetHeightStalled":
            # stuck at 1000 from t=0; before it the chain moved
            h = 1000 if bad else 1000 + int(t // 30)
            return snapshot(t, (node(t, height=h),), height=h, expected_height=height)
        if kind == "FilFleetBehindExpectedHeight":
            return snapshot(
                t,
                (node(t, height=height),),
                height=height,
                expected_height=height + (12 if bad else 1),
            )
        if kind == "FilFleetShrunk":
            n = node(
                t,
                up=not bad,
                state=NodeState.DOWN if bad else NodeState.IN_CONSENSUS,
                height=height,
            )
            return snapshot(
                t,
                (n,),
                height=None if bad else height,
                expected_height=height,
                nodes_up=int(not bad),
            )
        raise AssertionError(kind)

    return scenario


def _source_down(t: float) -> NodeView:
    """Beating, its Lotus refusing the agent's token; head unchanged for long, height 0."""
    return node(
        t,
        state=NodeState.SOURCE_DOWN,
        lag_epochs=None,
        height=0,
        head="{}",
        head_cids=(),
        head_hash=0,
        head_changed_at=-3000.0,
        source_state="unauthorized",
        source_error="401 Unauthorized from http://127.0.0.1:1234/rpc/v1",
    )


NODE_ALERTS = [
    "FilNodeDown",
    "FilHeartbeatMissing",
    "FilNodeLagging",
    "FilNodeHeadStalled",
    "FilNodeForked",
    "FilNodeSyncingTooLong",
    "FilNodeSourceDown",
]
FLEET_ALERTS = ["FilFleetHeightStalled", "FilFleetBehindExpectedHeight", "FilFleetShrunk"]

#: alertname -> (scenario, when the condition first holds, the `for` duration)
CASES: dict[str, tuple[Scenario, float, float]] = {
    **{name: (_bad_node(name), 0.0, AlertPolicy().for_duration(name)) for name in NODE_ALERTS},
    "FilFleetHeightStalled": (_bad_fleet("FilFleetHeightStalled"), 300.0, 300.0),
    "FilFleetBehindExpectedHeight": (_bad_fleet("FilFleetBehindExpectedHeight"), 0.0, 300.0),
    "FilFleetShrunk": (_bad_fleet("FilFleetShrunk"), 0.0, 120.0),
}


def test_every_built_in_alert_has_a_case() -> None:
    assert set(CASES) == set(ALERT_SEVERITIES)


@pytest.mark.parametrize("alertname", sorted(CASES))
def test_fires_after_for_resends_and_resolves_after_the_hold_down(alertname: str) -> None:
    scenario, active_from, for_ = CASES[alertname]
    policy = AlertPolicy()
    if alertname == "FilNodeSyncingTooLong":
        policy = replace(policy, syncing_for=300.0)
        for_ = 300.0
    events = run(scenario, CLEAR_AT + 200, policy, alertname)
    fired_at = active_from + for_
    resends = [t for t, kind, _ in events if kind is RESEND]
    assert events[0] == (fired_at, FIRED, alertname)
    # every minute while firing, and once more within the hold-down (it is still firing)
    assert resends == [
        fired_at + 60 * i
        for i in range(1, 100)
        if fired_at + 60 * i < CLEAR_AT + policy.keep_firing_for
    ]
    assert events[-1] == (CLEAR_AT + policy.keep_firing_for, RESOLVED, alertname)
    assert len(events) == 2 + len(resends)


@pytest.mark.parametrize("alertname", sorted(CASES))
def test_does_not_fire_before_for(alertname: str) -> None:
    scenario, active_from, for_ = CASES[alertname]
    assert run(scenario, active_from + for_ - STEP, alertname=alertname) == []


@pytest.mark.parametrize("alertname", NODE_ALERTS)
def test_a_condition_shorter_than_for_sends_nothing(alertname: str) -> None:
    bad = _bad_node(alertname)
    for_ = AlertPolicy().for_duration(alertname)

    def scenario(t: float) -> FleetSnapshot:
        # bad for half the `for`, good for a while, repeatedly
        return bad(t) if (t % (for_ + 60)) < for_ / 2 else snapshot(t, (node(t),))

    assert run(scenario, 4 * for_ + 300, alertname=alertname) == []


def test_flap_within_the_hold_down_is_suppressed() -> None:
    down = _bad_node("FilNodeDown")

    def scenario(t: float) -> FleetSnapshot:
        # down from 0; up again 200..230 (shorter than keep_firing_for); down again after
        return snapshot(t, (node(t),)) if 200 <= t < 230 else down(t)

    events = run(scenario, 400, alertname="FilNodeDown")
    assert events[0] == (60.0, FIRED, "FilNodeDown")
    assert [k for _, k, _ in events[1:]] == [RESEND] * len(events[1:])
    assert [t for t, _, _ in events] == [60.0, 120.0, 180.0, 240.0, 300.0, 360.0]


def test_a_flap_longer_than_the_hold_down_resolves_then_pends_again() -> None:
    down = _bad_node("FilNodeDown")

    def scenario(t: float) -> FleetSnapshot:
        return snapshot(t, (node(t),)) if 200 <= t < 300 else down(t)

    events = run(scenario, 400, alertname="FilNodeDown")
    assert (260.0, RESOLVED, "FilNodeDown") in events
    assert events[-1] == (360.0, FIRED, "FilNodeDown")  # down again at 300, for 1m


def test_keep_firing_for_zero_resolves_at_once() -> None:
    policy = AlertPolicy(keep_firing_for=0.0)
    events = run(_bad_node("FilNodeDown"), CLEAR_AT + 20, policy, "FilNodeDown")
    assert events[-1] == (CLEAR_AT, RESOLVED, "FilNodeDown")


def test_alert_content_names_the_node_and_the_figure() -> None:
    evaluator = AlertEvaluator(static_labels={"aggregator": "agg-a"})
    scenario = _bad_node("FilNodeLagging")
    fired = [tr for t in range(0, 200, 5) for tr in evaluator.evaluate(scenario(float(t)))]
    (first, *_) = fired
    alert = first.alert
    assert dict(alert.labels) == {
        "alertname": "FilNodeLagging",
        "severity": "warning",
        "aggregator": "agg-a",
        "peer_id": "12D3KooWAlpha",
        "nickname": "alpha",
        "miner": "f01234",
        "network": "mainnet",
    }
    assert alert.annotations["summary"] == "Node alpha is 6 epochs behind"
    assert "12D3KooWAlpha" in alert.annotations["description"]
    assert "f01234" in alert.annotations["description"]
    assert alert.annotations["runbook"] == "grafana/RUNBOOK.md#filnodelagging"
    assert alert.starts_at == 0.0 and alert.ends_at is None and alert.value == 6
    assert [(a.alertname, a.severity) for a in evaluator.firing()] == [
        ("FilNodeLagging", "warning")
    ]
    (current,) = evaluator.current()
    assert current["state"] == "firing" and current["activeAt"] == 0.0


def test_no_miner_label_for_a_node_without_miner_and_pending_is_listed() -> None:
    evaluator = AlertEvaluator()
    n = node(0.0, miner_address="", up=False, state=NodeState.DOWN)
    assert evaluator.evaluate(snapshot(0.0, (n,))) == []
    (current,) = [a for a in evaluator.current() if a["labels"]["alertname"] == "FilNodeDown"]
    assert current["state"] == "pending" and "miner" not in current["labels"]
    assert "no miner" in current["annotations"]["description"]
    assert evaluator.firing() == []


def test_a_node_that_disappears_resolves_after_the_hold_down() -> None:
    down = _bad_node("FilNodeDown")

    def scenario(t: float) -> FleetSnapshot:
        return down(t) if t < 300 else snapshot(t, ())

    events = run(scenario, 500, alertname="FilNodeDown")
    assert events[-1] == (360.0, RESOLVED, "FilNodeDown")


def test_disabled_alerts_are_not_evaluated() -> None:
    policy = AlertPolicy(disabled=frozenset({"FilNodeDown"}))
    assert run(_bad_node("FilNodeDown"), 300, policy, "FilNodeDown") == []


def test_lagging_is_not_raised_for_a_syncing_node() -> None:
    def scenario(t: float) -> FleetSnapshot:
        return snapshot(t, (node(t, state=NodeState.SYNCING, syncing=True, lag_epochs=50),))

    assert run(scenario, 600, alertname="FilNodeLagging") == []


def _beat(height: int, i: int) -> Beat:
    cid = "bafy2bzacea" + "".join("abcdefghijklmnopqrstuvwxyz"[(i // 26**k) % 26] for k in range(4))
    return Beat(
        head="{" + cid + "x" * 12 + "}",
        height=height,
        nickname=f"n{i}",
        miner_address="f01234",
        genesis_cid=None,
        head_timestamp=None,
        syncing=False,
        version="1",
    )


def test_null_rounds_raise_no_alert_on_a_real_fleet() -> None:
    """Three nodes beat every 3 s for 40 minutes through null rounds (the height jumps by 2
    and by 4), one node seeing each head a few seconds late: no alert at all."""
    fleet = Fleet()
    peers = ["12D3KooWA", "12D3KooWB", "12D3KooWC"]
    for p in peers:
        fleet.on_connect(p, "", 0.0)
    null_epochs = {11, 40, 41, 42}
    evaluator = AlertEvaluator()
    transitions = []
    t = 0.0
    while t <= 2400:
        epoch = int(t // 30)
        height = max(e for e in range(epoch + 1) if e not in null_epochs) + 1000
        for i, p in enumerate(peers):
            seen = (
                height
                if i < 2 or t % 30 >= 6
                else max(e for e in range(max(epoch, 1)) if e not in null_epochs) + 1000
            )
            fleet.on_beat(p, _beat(seen, seen), t)
        if t % 5 == 0:
            transitions += evaluator.evaluate(fleet.snapshot(t))
        t += 3.0
    assert transitions == []
    assert evaluator.current() == []
    final = fleet.snapshot(t)
    assert [n.up for n in final.nodes] == [True, True, True]
    assert final.networks["unknown"].height == 2400 // 30 + 1000


def test_start_up_test_alert() -> None:
    alert = test_alert(1000.0, {"aggregator": "agg-a"})
    assert alert.alertname == TEST_ALERT_NAME and alert.severity == "info"
    assert alert.labels["aggregator"] == "agg-a"
    assert alert.starts_at == 1000.0 and alert.ends_at == 1600.0


# --- parity with rules.yml ----------------------------------------------------------------


def _rules_by_severity() -> dict[tuple[str, str], dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    by_severity = {(r["alert"], r["labels"]["severity"]): r for r in rules}
    assert len(by_severity) == len(rules), "two rules of one name and one severity"
    return by_severity


def _rules() -> dict[str, dict[str, Any]]:
    """One rule per alert name: the first (an escalated alert's lower severity)."""
    out: dict[str, dict[str, Any]] = {}
    for (name, _), rule in _rules_by_severity().items():
        out.setdefault(name, rule)
    return out


def test_same_alerts_and_severities_as_rules_yml() -> None:
    rules = {k: r for k, r in _rules_by_severity().items() if k[0] not in PROMETHEUS_ONLY}
    built_in = {(n, s.value) for n, s in ALERT_SEVERITIES.items()}
    built_in |= {(n, s.value) for n, s in ALERT_ESCALATIONS.items()}
    assert set(rules) == built_in
    for name, severity in ALERT_SEVERITIES.items():
        assert _rules()[name]["labels"]["severity"] == severity.value, name


def test_same_for_durations_as_rules_yml() -> None:
    policy = AlertPolicy()
    rules = _rules_by_severity()
    for name, severity in ALERT_SEVERITIES.items():
        assert policy.for_duration(name) == parse_duration(rules[(name, severity)]["for"]), name
    for name, severity in ALERT_ESCALATIONS.items():
        expected = parse_duration(rules[(name, severity)]["for"])
        assert policy.for_duration(name, severity) == expected, name
    # the two FilNodeSourceDown rules differ only in `for` and severity
    warning = rules[("FilNodeSourceDown", "warning")]
    critical = rules[("FilNodeSourceDown", "critical")]
    assert (warning["expr"], warning["annotations"]) == (critical["expr"], critical["annotations"])


def _number_after(expr: str, op: str) -> float:
    m = re.search(re.escape(op) + r"\s*(\d+(?:\.\d+)?)", expr)
    assert m, (expr, op)
    return float(m.group(1))


def test_same_thresholds_as_rules_yml() -> None:
    rules, p = _rules(), AlertPolicy()
    assert _number_after(rules["FilHeartbeatMissing"]["expr"], ">") == p.heartbeat_missing_after
    assert _number_after(rules["FilNodeLagging"]["expr"], ">=") == p.lag_epochs
    assert _number_after(rules["FilNodeHeadStalled"]["expr"], ">") == p.head_stalled_after
    assert (
        _number_after(rules["FilFleetBehindExpectedHeight"]["expr"], ">=") == p.fleet_behind_epochs
    )
    window = re.search(r"\[(\w+)\]", rules["FilFleetHeightStalled"]["expr"])
    assert window and parse_duration(window.group(1)) == p.fleet_stalled_after
    doc = yaml.safe_load(RULES.read_text())
    default = next(
        r
        for g in doc["groups"]
        for r in g["rules"]
        if r.get("record") == "fil_heartbeat:fleet_min_up_nodes:default"
    )
    assert default["expr"] == f"vector({p.fleet_min_up_nodes})"


# --- settings -----------------------------------------------------------------------------


def test_settings_from_the_alerts_table() -> None:
    s = alerting_settings(
        {
            "alertmanager_urls": ["http://127.0.0.1:9093/", "http://127.0.0.1:9094"],
            "webhook_url": "https://hooks.example/x",
            "send_test_alert": True,
            "evaluation_interval": "2s",
            "lag_epochs": 7,
            "lagging_for": "3m",
            "keep_firing_for": 30,
            "disabled": ["FilNodeForked"],
        }
    )
    assert s.alertmanager_urls == ("http://127.0.0.1:9093", "http://127.0.0.1:9094")
    assert s.webhook_urls == ("https://hooks.example/x",)
    assert s.send_test_alert and s.has_receivers and s.evaluation_interval == 2.0
    assert s.enabled
    assert s.policy.lag_epochs == 7 and s.policy.lagging_for == 180.0
    assert s.policy.keep_firing_for == 30.0
    assert s.policy.disabled == frozenset({"FilNodeForked"})
    assert not alerting_settings({}).has_receivers
    assert not alerting_settings({"enabled": False}).enabled


@pytest.mark.parametrize(
    ("table", "setting"),
    [
        ({"alertmanager_urls": ["ftp://x"]}, "alerts.alertmanager_urls"),
        ({"lag_epochs": -1}, "alerts.lag_epochs"),
        ({"lag_epochs": True}, "alerts.lag_epochs"),
        ({"lagging_for": "soon"}, "alerts.lagging_for"),
        ({"evaluation_interval": 0}, "alerts.evaluation_interval"),
        ({"disabled": ["NoSuchAlert"]}, "alerts.disabled"),
        ({"send_test_alert": "yes"}, "alerts.send_test_alert"),
        ({"colour": "red"}, "alerts.colour"),
    ],
)
def test_bad_settings_name_the_setting(table: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        alerting_settings(table)
    assert info.value.setting == setting


def test_no_alert_for_a_node_that_never_completed_probation() -> None:
    """A junk id beats once and goes down: shown, never alerted on; a node through probation
    that goes down the same way does alert."""
    from aggregator.fleet import FleetPolicy

    fleet = Fleet(FleetPolicy(probation=60.0))
    fleet.set_trusted(["12D3KooWKnown"])
    for p in ("12D3KooWKnown", "12D3KooWJunk"):
        fleet.on_connect(p, "/ip4/10.0.0.1/tcp/1", 0.0)
        fleet.on_beat(p, _beat(1000, 1), 0.0)
    fleet.on_disconnect("12D3KooWJunk", 1.0)
    fleet.on_disconnect("12D3KooWKnown", 1.0)
    evaluator = AlertEvaluator()
    fired: set[tuple[str, str]] = set()
    for t in range(0, 3600, 15):
        evaluator.evaluate(fleet.snapshot(float(t)))
        fired |= {(a.alertname, a.labels.get("peer_id", "")) for a in evaluator.firing()}
    assert ("FilNodeDown", "12D3KooWKnown") in fired
    assert not {f for f in fired if f[1] == "12D3KooWJunk"}
    junk = fleet.snapshot(3600.0).node("12D3KooWJunk")
    assert junk is not None and junk.probation and junk.state is NodeState.DOWN


# --- FilNodeSourceDown: two severities, and the alerts it silences ---------------------------


def _source_down_then_ok(t: float) -> FleetSnapshot:
    n = _source_down(t) if t < CLEAR_AT else node(t)
    height = 1000 + int(t // 30)  # the network moves on: no fleet alert
    return snapshot(t, (n,), height=height, expected_height=height)


def test_source_down_warns_after_1m_and_is_critical_after_10m() -> None:
    evaluator = AlertEvaluator()
    events: list[tuple[float, TransitionKind, str]] = []
    t = 0.0
    while t <= CLEAR_AT + 200:
        for tr in evaluator.evaluate(_source_down_then_ok(t)):
            assert tr.alert.alertname == "FilNodeSourceDown", tr
            if tr.kind is not RESEND:
                events.append((t, tr.kind, tr.alert.severity))
        t += STEP
    assert events == [
        (60.0, FIRED, "warning"),
        (600.0, FIRED, "critical"),
        (CLEAR_AT + 60, RESOLVED, "warning"),
        (CLEAR_AT + 60, RESOLVED, "critical"),
    ]


def test_source_down_alert_names_the_source_error_and_silences_stall_and_lag() -> None:
    evaluator = AlertEvaluator()
    for t in range(0, 700, 5):
        for tr in evaluator.evaluate(_source_down_then_ok(float(t))):
            assert tr.alert.alertname == "FilNodeSourceDown"
    firing = evaluator.firing()
    assert [(a.alertname, a.severity) for a in firing] == [
        ("FilNodeSourceDown", "critical"),
        ("FilNodeSourceDown", "warning"),
    ]
    alert = firing[0]
    assert alert.labels["peer_id"] == "12D3KooWAlpha" and alert.labels["miner"] == "f01234"
    assert alert.annotations["summary"] == "The agent of alpha gets no head from its Lotus"
    assert (
        "unauthorized: 401 Unauthorized from http://127.0.0.1:1234"
        in (alert.annotations["description"])
    )
    assert alert.annotations["runbook"] == "grafana/RUNBOOK.md#filnodesourcedown"


def test_source_down_escalation_can_be_tuned_and_the_alert_disabled() -> None:
    policy = AlertPolicy(source_down_for=0.0, source_down_critical_for=30.0)
    evaluator = AlertEvaluator(policy)
    fired = [
        (float(t), tr.alert.severity)
        for t in range(0, 60, 5)
        for tr in evaluator.evaluate(_source_down_then_ok(float(t)))
        if tr.kind is FIRED
    ]
    assert fired == [(0.0, "warning"), (30.0, "critical")]
    settings = alerting_settings(
        {"source_down_critical_for": "15m", "disabled": ["FilNodeSourceDown"]}
    )
    assert settings.policy.source_down_critical_for == 900.0
    evaluator = AlertEvaluator(settings.policy)
    for t in range(0, 900, 5):
        assert evaluator.evaluate(_source_down_then_ok(float(t))) == []


def _health_beat(height: int, i: int, source: str) -> Beat:
    from heartbeat.protocol.beat import SourceState

    ok = source == "ok"
    base = _beat(height, i)
    return replace(
        base,
        head=base.head if ok else "{}",
        height=height if ok else 0,
        source_state=SourceState(source),
        source_error=None if ok else "401 Unauthorized",
    )


def test_a_real_fleet_node_whose_lotus_refuses_the_token() -> None:
    """Two nodes beat every 3 s; from t=60 to t=1500 one agent's Lotus answers 401. Only
    FilNodeSourceDown fires (warning, then critical); nothing else, and it resolves."""
    fleet = Fleet()
    peers = ["12D3KooWA", "12D3KooWB"]
    for p in peers:
        fleet.on_connect(p, "", 0.0)
    evaluator = AlertEvaluator()
    seen: list[tuple[float, TransitionKind, str, str]] = []
    t = 0.0
    while t <= 1800:
        height = 1000 + int(t // 30)
        for p in peers:
            source = "unauthorized" if p == peers[1] and 60 <= t < 1500 else "ok"
            fleet.on_beat(p, _health_beat(height, height, source), t)
        if t % 5 == 0:
            for tr in evaluator.evaluate(fleet.snapshot(t)):
                if tr.kind is not RESEND:
                    seen.append((t, tr.kind, tr.alert.alertname, tr.alert.severity))
        t += 3.0
    assert seen == [
        (120.0, FIRED, "FilNodeSourceDown", "warning"),
        (660.0, FIRED, "FilNodeSourceDown", "critical"),
        (1560.0, RESOLVED, "FilNodeSourceDown", "warning"),
        (1560.0, RESOLVED, "FilNodeSourceDown", "critical"),
    ]
