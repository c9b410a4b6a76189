"""The generated Grafana dashboards: up to date, wired to a datasource, valid PromQL over
metric names the aggregator really exports.

Grafana itself cannot run here: dashboards are tested as data. PromQL goes through
Prometheus's own parser (`promtool check rules` on a generated rules file holding every
panel query, template variables replaced by sample values).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.promservers import tool_path

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RULES = GRAFANA / "prometheus" / "rules.yml"
PROMTOOL = tool_path("promtool")

#: Series Prometheus itself makes; dashboards may use them beside the aggregator's.
PROMETHEUS_BUILTINS = {"up", "ALERTS"}
#: Sample values for the template variables.
VARIABLES = {"$__rate_interval": "1m", "$network": "mainnet", "$node": "12D3KooWExample"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fil_heartbeat_dashboards", GRAFANA / "dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def _all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, where, PromQL) for every panel query and every query variable."""
    out = []
    for name, model in _dashboards().items():
        out += [(name, title, expr) for title, expr in gen.panel_queries(model)]
        for var in model["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
            assert m, f"{name}: variable {var['name']}: unexpected query {var['query']!r}"
            out.append((name, f"variable {var['name']}", m.group(1)))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_.:])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def _recording_rule_names() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def _names_in(text: str) -> set[str]:
    """Series names in an exposition text, from samples and from family types (a family
    without samples, e.g. no alert firing, still names its series)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count"),
    }
    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {s.name for s in fam.samples}
        names |= {fam.name + suffix for suffix in suffixes.get(fam.type, ("",))}
    return names


def _sample_fleet_beats(fleet: Any, now: float) -> None:
    from heartbeat.protocol.wire import Beat

    fleet.on_connect("12D3KooWExample", "/ip4/127.0.0.1/tcp/4001", now)
    for i in range(3):
        fleet.on_beat(
            "12D3KooWExample",
            Beat(
                head="{bafy2bzacea" + "abc"[i] * 20 + "}",
                height=100 + i,
                nickname="alpha",
                miner_address="f01234",
                genesis_cid=None,
                head_timestamp=int(now) - 10 + i,
                syncing=False,
                version="test",
            ),
            now + i,
        )


def _exported_names() -> set[str]:
    """Sample names in the aggregator's exposition, rendered over a sample fleet."""
    from aggregator.fleet import Fleet
    from aggregator.metrics import create_metrics

    fleet = Fleet()
    _sample_fleet_beats(fleet, 1000.0)
    snap = fleet.snapshot(1010.0)
    metrics = create_metrics(lambda: snap, peer_id="12D3KooWAggregator")
    metrics.set_alerts_provider(lambda: [("FilNodeDown", "critical")])
    return _names_in(metrics.render().decode())


# --- tests --------------------------------------------------------------------------------


def test_committed_dashboards_match_the_generator() -> None:
    rendered = gen.render_all()
    assert set(rendered) == {"fleet-overview.json", "node-detail.json"}
    for name, text in rendered.items():
        committed = (DASHBOARDS / name).read_bytes()
        assert committed == text.encode(), f"{name} is stale: run python grafana/dashboards.py"


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "node-detail.json").write_text("{}")
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


def test_every_panel_and_query_has_the_datasource_variable() -> None:
    for name, model in _dashboards().items():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        assert ds["current"]["value"] == gen.DATASOURCE_UID
        assert "__inputs" not in model and "${DS_PROMETHEUS}" not in json.dumps(model)
        assert model["panels"], name
        for panel in model["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                name,
                panel["title"],
            )
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", (name, panel["title"])
                assert target["refId"], (name, panel["title"])
            if panel["type"] != "row":
                assert panel.get("targets"), (name, panel["title"])
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_provisioned_datasource_uid_is_the_dashboards_default() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = doc["datasources"]
    assert source["uid"] == gen.DATASOURCE_UID and source["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/fil-heartbeat.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"


def test_node_dashboard_is_templated_by_node() -> None:
    model = _dashboards()["node-detail.json"]
    assert "node" in {v["name"] for v in model["templating"]["list"]}
    queries = [expr for _, expr in gen.panel_queries(model)]
    assert queries and all("$node" in q for q in queries)


def test_fleet_dashboard_covers_the_required_views() -> None:
    queries = " ".join(expr for _, expr in gen.panel_queries(_dashboards()["fleet-overview.json"]))
    for needle in (
        "fil_heartbeat_nodes",
        "fil_heartbeat:network_expected_height:max",
        "fil_heartbeat:consensus_share:ratio",
        "fil_heartbeat:node_lag_epochs:fleet",
        "ALERTS",
        "fil_heartbeat_alerts_firing",
        "fil_heartbeat_beats_received_total",
        "fil_heartbeat_beats_rejected_total",
    ):
        assert needle in queries, needle


def test_metric_name_extraction() -> None:
    assert metric_names(
        'sum by (reason) (rate(fil_heartbeat_beats_rejected_total{a="b c"}[5m])) / 1e3'
    ) == {"fil_heartbeat_beats_rejected_total"}
    assert metric_names(
        "fil_heartbeat:network_height:max and on (network) fil_heartbeat:node_up:max"
        '{peer_id="x"} or vector(0)'
    ) == {"fil_heartbeat:network_height:max", "fil_heartbeat:node_up:max"}
    assert metric_names('count_values by (n) ("head_hash", x_y) offset 5m') == {"x_y"}


def test_every_query_uses_only_known_metric_names() -> None:
    known = _exported_names() | _recording_rule_names() | PROMETHEUS_BUILTINS
    assert "fil_heartbeat_node_beats_total" in known  # the rendering really happened
    assert not _unknown_names(known), sorted(_unknown_names(known))
    # and the check is real: a made-up name is caught
    assert _unknown_names(known - {"fil_heartbeat_nodes"})


def _unknown_names(known: set[str]) -> set[tuple[str, str, str]]:
    return {
        (name, where, metric)
        for name, where, expr in _all_queries()
        for metric in metric_names(_substitute(expr))
        if metric not in known
    }


@pytest.mark.integration
async def test_every_query_uses_only_names_a_running_aggregator_exports(tmp_path: Path) -> None:
    """Scrape the real app (aggregator/app.py) over HTTP, one node injected."""
    import httpx
    import trio

    from aggregator.app import Aggregator, run_aggregator
    from aggregator.config import build_config

    config = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(tmp_path / "agg.key"),
            "state_db": str(tmp_path / "agg.db"),
            "gc_freeze": False,
        }
    )
    ready: list[Aggregator] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_aggregator(
                config, handle_signals=False, on_ready=ready.append, task_status=task_status
            )
        )
        agg = ready[0]
        _sample_fleet_beats(agg.fleet, agg.wall_clock())
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{agg.http_url}/metrics", timeout=10)).text
        nursery.cancel_scope.cancel()
    exported = _names_in(text)
    assert "fil_heartbeat_node_height" in exported and "fil_heartbeat_alerts_firing" in exported
    known = exported | _recording_rule_names() | PROMETHEUS_BUILTINS
    assert not _unknown_names(known), sorted(_unknown_names(known))


@pytest.mark.requires_tools("promtool")
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    queries = _all_queries()
    rules = []
    for i, (_, _, expr) in enumerate(queries):
        expr = _substitute(expr)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard_query_{i}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


@pytest.mark.requires_tools("promtool")
def test_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    """The parser check is real: a syntax error fails it."""
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {"name": "x", "rules": [{"record": "bad", "expr": "sum by (a (rate(x[1m]))"}]}
                ]
            }
        )
    )
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
