"""The agents' health in Prometheus: the fil-heartbeat-agents scrape job of the shipped
prometheus.yml (static example and file_sd), and the FilAgentDown / FilAgentSourceDown rules
of rules.yml under their promtool unit tests (grafana/prometheus/tests/agents_test.yml).

Every promtool run is Debian's real promtool; the mutation tests show that the unit tests
fail when a rule is loosened.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promservers import tool_path

PROM_DIR = Path(__file__).resolve().parent.parent / "grafana" / "prometheus"
RULES = PROM_DIR / "rules.yml"
CONFIG = PROM_DIR / "prometheus.yml"
AGENT_TESTS = PROM_DIR / "tests" / "agents_test.yml"
PROMTOOL = tool_path("promtool")
needs_promtool = pytest.mark.requires_tools("promtool")

SOURCE_DOWN_EXPR = (
    "max without (state) "
    '(fil_heartbeat_agent_source_state{state=~"unreachable|unauthorized|no_head"}) == 1'
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _agent_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    (group,) = [g for g in doc["groups"] if g["name"] == "fil_heartbeat_agents"]
    return {r["alert"]: r for r in group["rules"]}


def _agents_job() -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    return dict(jobs["fil-heartbeat-agents"])


def _run_with(tmp_path: Path, rules_text: str) -> subprocess.CompletedProcess[str]:
    """The agents' unit tests against a modified copy of rules.yml."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yml").write_text(rules_text)
    shutil.copy(AGENT_TESTS, tmp_path / "tests" / AGENT_TESTS.name)
    return _promtool("test", "rules", f"tests/{AGENT_TESTS.name}", cwd=tmp_path)


# --- the rules ----------------------------------------------------------------------------


def test_agent_rules_read_the_agents_own_metrics() -> None:
    rules = _agent_rules()
    assert set(rules) == {"FilAgentDown", "FilAgentSourceDown"}
    assert rules["FilAgentDown"]["expr"].strip() == 'up{job="fil-heartbeat-agents"} == 0'
    assert rules["FilAgentDown"]["for"] == "5m"
    assert rules["FilAgentSourceDown"]["expr"].strip() == SOURCE_DOWN_EXPR
    for name, rule in rules.items():
        assert rule["labels"]["severity"] == "warning", name
        assert rule["annotations"]["runbook"].endswith(f"grafana/RUNBOOK.md#{name.lower()}")


def test_source_down_states_are_the_agents_source_states_but_ok_and_syncing() -> None:
    from heartbeat.agent.head import SourceState

    states = {s.value for s in SourceState}
    down = {"unreachable", "unauthorized", "no_head"}
    assert down <= states and states - down == {"ok", "syncing"}


@needs_promtool
def test_agent_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", f"tests/{AGENT_TESTS.name}", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_unit_tests_catch_syncing_counted_as_down(tmp_path: Path) -> None:
    text = RULES.read_text()
    broken = text.replace(
        "unreachable|unauthorized|no_head", "unreachable|unauthorized|no_head|syncing"
    )
    assert broken != text
    result = _run_with(tmp_path, broken)
    assert result.returncode != 0
    assert "agent source down is quiet while syncing" in result.stdout + result.stderr


@needs_promtool
def test_unit_tests_catch_a_state_switch_restarting_the_pending_time(tmp_path: Path) -> None:
    """Without `max without (state)` each down state is its own alert: unreachable for
    150 s, then unauthorized, never 5m in one state, so the alert would not fire."""
    text = RULES.read_text()
    assert text.count("max without (state)\n") == 1
    broken = text.replace("max without (state)\n", "")
    assert broken != text
    result = _run_with(tmp_path, broken)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "alertname: FilAgentSourceDown, time: 7m30s" in out


@needs_promtool
def test_unit_tests_catch_a_shorter_agent_down_delay(tmp_path: Path) -> None:
    text = RULES.read_text()
    old = 'expr: up{job="fil-heartbeat-agents"} == 0\n        for: 5m'
    assert old in text
    broken = text.replace(old, old.replace("5m", "2m"))
    result = _run_with(tmp_path, broken)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "agent down is quiet through a restart shorter than 5m" in out


# --- the scrape job -----------------------------------------------------------------------


def test_prometheus_config_scrapes_the_agents_statically_and_from_files() -> None:
    job = _agents_job()
    (static,) = job["static_configs"]
    assert static["targets"] == ["127.0.0.1:9083"] and static["labels"]["nickname"]
    (file_sd,) = job["file_sd_configs"]
    assert file_sd["files"] == ["agents.d/*.yml"]
    matched = sorted(PROM_DIR.glob(file_sd["files"][0]))
    assert [p.name for p in matched] == ["example.yml"]
    groups = yaml.safe_load(matched[0].read_text())
    assert groups and all(g["targets"] and g["labels"]["nickname"] for g in groups)
    for group in groups:
        for target in group["targets"]:
            host, _, port = target.rpartition(":")
            assert host and port.isdigit(), target


@needs_promtool
def test_promtool_checks_the_shipped_config_and_its_file_sd_targets(tmp_path: Path) -> None:
    """promtool check config reads the agents.d files too: a bad one fails it."""
    ok = _promtool("check", "config", CONFIG.name, cwd=PROM_DIR)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "agents.d").mkdir()
    (tmp_path / "agents.d" / "bad.yml").write_text(
        yaml.safe_dump([{"targets": ["10.0.0.1:9083"], "labels": {"1nickname": "x"}}])
    )
    bad = _promtool("check", "config", CONFIG.name, cwd=tmp_path)
    assert bad.returncode != 0
    assert "agents.d/*.yml" in bad.stdout + bad.stderr
