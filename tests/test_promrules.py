"""The Prometheus rules, their promtool unit tests and the example configs.

`promtool` and `amtool` come from Debian's prometheus and prometheus-alertmanager packages
(`scripts/setup --system` installs them); without them the tool-driven tests skip and
say why, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promservers import require_tools, tool_path

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
RULES = GRAFANA / "prometheus" / "rules.yml"
RULE_TESTS = sorted((GRAFANA / "prometheus" / "tests").glob("*_test.yml"))
RUNBOOK = GRAFANA / "RUNBOOK.md"

PROMTOOL = tool_path("promtool")
AMTOOL = tool_path("amtool")
needs_promtool = pytest.mark.requires_tools("promtool")
needs_amtool = pytest.mark.requires_tools("amtool")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    return [t for path in RULE_TESTS for t in yaml.safe_load(path.read_text())["tests"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _run(str(PROMTOOL), "check", "rules", str(RULES), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool test files found"
    result = _run(str(PROMTOOL), "test", "rules", *map(str, RULE_TESTS), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_broken_threshold(tmp_path: Path) -> None:
    """The unit tests are not vacuous: loosen the lag threshold and they fail."""
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        "fil_heartbeat:node_lag_epochs:fleet >= 5", "fil_heartbeat:node_lag_epochs:fleet >= 3"
    )
    assert broken != RULES.read_text()
    (tmp_path / "rules.yml").write_text(broken)
    test_file = tmp_path / "tests" / "nodes_test.yml"
    shutil.copy(GRAFANA / "prometheus" / "tests" / "nodes_test.yml", test_file)
    result = _run(str(PROMTOOL), "test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode != 0
    assert "FilNodeLagging" in result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_lagging_and_stalled_firing_for_a_source_down_node(
    tmp_path: Path,
) -> None:
    """The source-down case is not vacuous: without the exclusions, lagging and head stalled
    fire for a node whose agent gets no head from its Lotus."""
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    broken = text.replace('state=~"syncing|source_down"', 'state="syncing"').replace(
        """          unless on (peer_id, network)
          (max by (peer_id, network)
            (last_over_time(fil_heartbeat_node_state{state="source_down"}[2m])) == 1)
""",
        "",
    )
    assert broken.count("source_down") == text.count("source_down") - 2
    (tmp_path / "rules.yml").write_text(broken)
    test_file = tmp_path / "tests" / "nodes_test.yml"
    shutil.copy(GRAFANA / "prometheus" / "tests" / "nodes_test.yml", test_file)
    result = _run(str(PROMTOOL), "test", "rules", str(test_file), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "alertname: FilNodeLagging, time: 15m" in out
    assert "alertname: FilNodeHeadStalled, time: 15m" in out


@needs_promtool
def test_scrape_gap_test_fails_without_the_last_sample_reads(tmp_path: Path) -> None:
    """tests/scrape_gap_test.yml is not vacuous: with the series read as they are (no
    `last_over_time`), a firing FilNodeDown resolves in the gap and is pending after it."""
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    plain = re.sub(r"last_over_time\((fil_heartbeat_\w+(?:\{[^}]*\})?)\[2m\]\)", r"\1", text)
    assert "last_over_time(fil_" not in plain
    (tmp_path / "rules.yml").write_text(plain)
    test_file = tmp_path / "tests" / "scrape_gap_test.yml"
    shutil.copy(GRAFANA / "prometheus" / "tests" / "scrape_gap_test.yml", test_file)
    result = _run(str(PROMTOOL), "test", "rules", str(test_file), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "alertname: FilNodeDown, time: 5m30s" in out  # in the gap
    assert "alertname: FilNodeDown, time: 7m" in out  # after it


@needs_promtool
def test_promtool_check_prometheus_config() -> None:
    config = GRAFANA / "prometheus" / "prometheus.yml"
    result = _run(str(PROMTOOL), "check", "config", str(config), cwd=config.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
def test_amtool_check_alertmanager_config() -> None:
    config = GRAFANA / "alertmanager" / "alertmanager.yml"
    result = _run(str(AMTOOL), "check-config", str(config), cwd=config.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_groups_by_alert_and_node() -> None:
    doc = yaml.safe_load((GRAFANA / "alertmanager" / "alertmanager.yml").read_text())
    assert doc["route"]["group_by"] == ["alertname", "peer_id"]
    assert doc["route"]["repeat_interval"]
    hooks = [w for r in doc["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks and all(w["send_resolved"] for w in hooks)


def test_prometheus_config_scrapes_the_aggregator() -> None:
    doc = yaml.safe_load((GRAFANA / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    targets = jobs["fil-heartbeat-aggregator"]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:9082"]
    assert doc["rule_files"] == ["rules.yml"]


def test_every_alert_has_severity_annotations_and_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {
        re.sub(r"[^a-z0-9]", "", line.lstrip("#").strip().lower())
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    alerts = _alert_rules()
    assert len(alerts) >= 11
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        ann = rule["annotations"]
        assert {"summary", "description", "runbook"} <= ann.keys(), name
        # relative, or absolute under the external label runbook_base_url
        base = "{{ with $externalLabels.runbook_base_url }}{{ . }}/{{ end }}"
        assert ann["runbook"] == f"{base}grafana/RUNBOOK.md#{name.lower()}", name
        assert name.lower() in anchors, f"RUNBOOK.md has no section for {name}"


def test_every_alert_has_unit_tests_that_fire_resolve_and_stay_quiet() -> None:
    fired: set[str] = set()
    resolved: set[str] = set()
    quiet_in_null_rounds: set[str] = set()
    for case in _rule_tests():
        by_alert: dict[str, list[tuple[str, bool]]] = {}
        for check in case.get("alert_rule_test", []):
            by_alert.setdefault(check["alertname"], []).append(
                (check["eval_time"], bool(check["exp_alerts"]))
            )
        for name, checks in by_alert.items():
            firing = [f for _, f in checks]
            if any(firing):
                fired.add(name)
                first = firing.index(True)
                if not all(firing[first:]):
                    resolved.add(name)
            if "null round" in case["name"] and not any(firing):
                quiet_in_null_rounds.add(name)
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - resolved == set(), "alerts never shown resolving"
    assert names - quiet_in_null_rounds == set(), "alerts not checked across null rounds"


def test_a_missing_tool_skips_locally_and_fails_under_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="no-such-tool"):
        require_tools("no-such-tool", environ={})
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tools("no-such-tool", environ={"CI": "true"})
    require_tools(environ={"CI": "true"})  # nothing required: nothing missing
