"""The generated Grafana dashboards: up to date, valid for Grafana's dashboard model
(schemaVersion 41, through grafana-foundation-sdk's typed classes), wired to a datasource,
valid PromQL over metric names the aggregator and the agent really export, and returning
data from a real Prometheus that scrapes a real aggregator and a real agent.

Grafana itself cannot run here: dashboards are tested as data. The model check decodes each
file into the SDK's typed classes (every panel type and query type known, every value of
the type its field declares) and encodes it back unchanged (no key the model does not know).
PromQL goes through Prometheus's own parser (`promtool check rules` on a generated rules
file holding every panel query, template variables replaced by sample values) and through
a real Prometheus's query API.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import re
import subprocess
import sys
import types
import typing
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
VARIABLES = {
    "$__rate_interval": "1m",
    "$network": "mainnet",
    "$nickname": "alpha",
    "$miner": "f01234",
    "$node": "12D3KooWExample",
    "$agent": "10.0.0.11:9083",
}
#: The Grafana release whose dashboard schema the files follow (grafana/README.md).
SCHEMA_VERSION = 41

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
            out.append((name, f"variable {var['name']}", variable_expr(var["query"])))
    return out


def variable_expr(query: str) -> str:
    """The PromQL of a query variable: `label_values(EXPR, label)` or `query_result(EXPR)`."""
    m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query) or re.fullmatch(
        r"query_result\((.+)\)", query
    )
    assert m, f"unexpected variable query {query!r}"
    return m.group(1)


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


def agent_names() -> set[str]:
    """Sample names in the agent's exposition: its real collector over one beat loop's
    stats, a head source that has a head, and RPC stats with one answered call."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from heartbeat.agent.head import SourceState
    from heartbeat.agent.metrics import make_registry
    from heartbeat.agent.rpcstats import RpcStats

    loop = SimpleNamespace(
        target=SimpleNamespace(addr="/ip4/127.0.0.1/tcp/4001", role="primary"),
        stats=SimpleNamespace(
            connected=True,
            beats_sent=3,
            dial_attempts=1,
            dial_failures=0,
            streams_died_early=0,
            last_success=1000.0,
            extra_beats=1,
        ),
    )
    source = SimpleNamespace(
        status=SimpleNamespace(mode="lotus", reachable=True, state=SourceState.OK),
        latest=SimpleNamespace(height=100, timestamp=990.0),
    )
    rpc = RpcStats()
    rpc.answered("Filecoin.ChainHead", 0.01)
    registry = make_registry([loop], source, rpc)  # type: ignore[list-item]
    return _names_in(generate_latest(registry).decode())


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
    """Every query is about the picked node: its peer id, or its agent (which the `agent`
    variable finds from the node)."""
    model = _dashboards()["node-detail.json"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert {"nickname", "miner", "node", "agent"} <= variables.keys()
    assert "$node" in variables["agent"]["query"]
    queries = [expr for _, expr in gen.panel_queries(model)]
    assert queries and all("$node" in q or "$agent" in q for q in queries)
    assert sum("$agent" in q for q in queries) >= 5


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
    known = _exported_names() | agent_names() | _recording_rule_names() | PROMETHEUS_BUILTINS
    assert "fil_heartbeat_node_beats_total" in known  # the rendering really happened
    assert "fil_heartbeat_agent_lotus_rpc_duration_seconds_bucket" in known
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
    known = exported | agent_names() | _recording_rule_names() | PROMETHEUS_BUILTINS
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


# --- the dashboard model (grafana-foundation-sdk's typed classes) ---------------------------


def _sdk() -> None:
    from grafana_foundation_sdk.cog.plugins import register_default_plugins

    register_default_plugins()  # panel options and query types decode into their classes


def type_errors(value: Any, hint: Any, path: str) -> list[str]:
    """Where `value` is not of the type `hint` (an annotation of the SDK's models) says.

    The SDK's `from_json` keeps raw values (an enum stays its int or string): this walks the
    decoded objects and holds every attribute against its class's annotation.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return []
    if hint is object:  # panel options, custom field config: typed by the panel plugin
        return _object_errors(value, path) if _is_model(value) else []
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return []
        alternatives = [a for a in args if a is not type(None)]
        own = [a for a in alternatives if isinstance(a, type) and type(value) is a]
        if own:  # a decoded object: checked against its own class
            return type_errors(value, own[0], path)
        tries = [type_errors(value, a, path) for a in alternatives]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is none of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} is not a list"]
        return [e for i, v in enumerate(value) for e in type_errors(v, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} is not a dict"]
        return [e for k, v in value.items() for e in type_errors(v, args[1], f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint) or value in {m.value for m in hint}:
            return []
        return [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint in (int, float):
        ok = isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a {hint.__name__}"]
    if isinstance(hint, type) and hint.__module__.startswith(_MODELS) and isinstance(value, dict):
        # kept raw by the SDK's from_json (e.g. a panel's transformations): decode it here
        decoded: Any = hint
        return _object_errors(decoded.from_json(value), path)
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} is not a {hint.__name__}"]
        return _object_errors(value, path) if _is_model(value) else []
    return []


_MODELS = "grafana_foundation_sdk.models."


def _is_model(value: Any) -> bool:
    return type(value).__module__.startswith(_MODELS)


def _object_errors(obj: Any, path: str) -> list[str]:
    hints = typing.get_type_hints(type(obj))
    return [
        e
        for name, hint in hints.items()
        for e in type_errors(getattr(obj, name), hint, path + "." + name)
    ]


def model_errors(doc: dict[str, Any]) -> list[str]:
    """What is wrong with a dashboard's JSON for the SDK's model of schemaVersion 41."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.runtime import UnknownDataquery, panelcfg_config
    from grafana_foundation_sdk.models import dashboard as sdk_model

    _sdk()
    decoded = sdk_model.Dashboard.from_json(doc)
    errors = _object_errors(decoded, "dashboard")
    for panel in decoded.panels or []:
        where = f"panel {panel.title!r}"
        if isinstance(panel, sdk_model.RowPanel):
            continue
        if panelcfg_config(panel.type_val) is None:
            errors.append(f"{where}: panel type {panel.type_val!r} unknown to the SDK")
        errors += [
            f"{where}: a query of no known datasource type"
            for t in panel.targets or []
            if isinstance(t, UnknownDataquery)
        ]
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    # The SDK's decoder gives every panel a `fieldConfig.defaults.custom` (the plugin's
    # defaults when the file has none): not a key of the file, not compared.
    for panel, before in zip(again.get("panels", []), doc.get("panels", []), strict=True):
        if "custom" not in before.get("fieldConfig", {}).get("defaults", {"custom": None}):
            panel["fieldConfig"]["defaults"].pop("custom", None)
    if again != doc:
        errors.append("the typed model does not encode back to the same JSON: " + _diff(doc, again))
    return errors


def _diff(a: Any, b: Any, path: str = "") -> str:
    """The first place two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                return _diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _diff(x, y, f"{path}[{i}]")
    return f"{path or '.'}: {a!r} != {b!r}"


def test_dashboards_are_valid_for_the_sdk_model_of_schema_version_41() -> None:
    import grafana_foundation_sdk.models.dashboard as sdk_model

    default = typing.get_type_hints(sdk_model.Dashboard.__init__)["schema_version"]
    assert default is int
    assert sdk_model.Dashboard().schema_version == SCHEMA_VERSION  # the SDK's own release
    for name, doc in _dashboards().items():
        assert doc["schemaVersion"] == SCHEMA_VERSION, name
        assert model_errors(doc) == [], name


@pytest.mark.parametrize(
    ("where", "change", "expected"),
    [
        ("a key the model has no field for", {"gridPoss": {"h": 1}}, "encode back"),
        ("a title that is a number", {"title": 5}, "is not a str"),
        ("an unknown panel type", {"type": "timeseriess"}, "unknown to the SDK"),
        ("a bad unit type", {"fieldConfig": {"defaults": {"unit": 3}}}, "is not a str"),
    ],
)
def test_model_check_catches_a_broken_panel(
    where: str, change: dict[str, Any], expected: str
) -> None:
    doc = _dashboards()["fleet-overview.json"]
    panel = next(p for p in doc["panels"] if p["type"] == "timeseries")
    for key, value in change.items():
        if key == "fieldConfig":
            panel["fieldConfig"]["defaults"].update(value["defaults"])
        else:
            panel[key] = value
    errors = model_errors(doc)
    assert any(expected in e for e in errors), (where, errors)


def test_model_check_catches_a_bad_enum_value() -> None:
    doc = _dashboards()["node-detail.json"]
    doc["graphTooltip"] = 7  # 0, 1, 2: DashboardCursorSync
    assert any("DashboardCursorSync" in e for e in model_errors(doc))
    doc = _dashboards()["node-detail.json"]
    doc["templating"]["list"][-1]["refresh"] = 9
    assert any("VariableRefresh" in e for e in model_errors(doc))


def test_readme_names_the_schema_version_and_grafana_releases() -> None:
    text = (GRAFANA / "README.md").read_text()
    assert f"schemaVersion {SCHEMA_VERSION}" in text
    assert "Grafana 11.6" in text and "grafana-foundation-sdk" in text


# --- what the dashboards show -------------------------------------------------------------


def _panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in model["panels"] if p.get("title") == title]
    return dict(panel)


def test_node_picker_is_by_nickname_and_miner_then_peer_id() -> None:
    variables = {v["name"]: v for v in _dashboards()["node-detail.json"]["templating"]["list"]}
    names = [v for v in variables]
    assert names.index("nickname") < names.index("miner") < names.index("node")
    assert variables["nickname"]["query"] == (
        'label_values(fil_heartbeat_node_info{network=~"$network"}, nickname)'
    )
    assert "$nickname" in variables["miner"]["query"]
    assert {"$nickname", "$miner"} <= set(re.findall(r"\$\w+", variables["node"]["query"]))
    for name in ("nickname", "miner"):
        v = variables[name]
        assert v["includeAll"] and v["allValue"] == ".*", name
        assert v["current"]["value"] == "$__all", name
    assert variables["agent"]["regex"] == '/instance="([^"]+)"/'


def test_fleet_table_shows_figures_coloured_state_and_links_to_the_node() -> None:
    fleet = _dashboards()["fleet-overview.json"]
    node = _dashboards()["node-detail.json"]
    panel = _panel(fleet, "Nodes")
    exprs = [t["expr"] for t in panel["targets"]]
    assert len(exprs) == len(gen.table.NODE_COLUMNS)
    assert all(t["instant"] and t["format"] == "table" for t in panel["targets"])
    # one row per node: every query keeps the node's labels, nothing else but state/version
    for expr in exprs:
        by = set(re.findall(r"max by \(([^)]*)\)", expr))
        assert by <= {
            "peer_id, nickname, miner, network",
            "peer_id, nickname, miner, network, state",
            "peer_id, nickname, miner, network, version",
        }, expr
    assert [t["id"] for t in panel["transformations"]] == ["merge", "organize"]
    organize = panel["transformations"][1]["options"]
    shown = set(organize["indexByName"]) - set(organize["excludeByName"])
    assert {"Height", "Lag", "Head age", "Last beat", "Head delay", "version", "state"} <= shown
    overrides = {
        o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]
    }
    state = {p["id"]: p["value"] for p in overrides["state"]}
    assert state["custom.cellOptions"] == {"type": "color-background"}
    from aggregator.nodestate import NodeState

    (mapping,) = state["mappings"]
    assert set(mapping["options"]) == {s.value for s in NodeState}
    assert all(o["color"] for o in mapping["options"].values())
    # the link: the node dashboard's uid, its variables, fields that are table columns
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    url = link["url"]
    assert url.startswith(f"/d/{node['uid']}/")
    node_vars = {v["name"] for v in node["templating"]["list"]}
    assert set(re.findall(r"var-(\w+)=", url)) <= node_vars and "var-node=" in url
    fields = set(re.findall(r"__data\.fields\.(\w+)", url))
    assert fields == {"network", "peer_id"} and fields <= set(organize["indexByName"])
    assert "${__url_time_range}" in url and "${datasource:queryparam}" in url


def test_head_delay_heatmap_reads_the_aggregators_histogram() -> None:
    fleet = _dashboards()["fleet-overview.json"]
    heat = _panel(fleet, "Head delay")
    (target,) = heat["targets"]
    assert target["format"] == "heatmap"
    assert "fil_heartbeat_head_delay_seconds_bucket" in target["expr"]
    assert target["expr"].startswith("sum by (le) (increase(")
    assert heat["options"]["calculate"] is False
    assert heat["options"]["yAxis"]["unit"] == "s"
    assert heat["options"]["rowsFrame"]["layout"] == "le"


def test_agent_panels_read_the_agents_own_metrics() -> None:
    fleet = " ".join(e for _, e in gen.panel_queries(_dashboards()["fleet-overview.json"]))
    node = " ".join(e for _, e in gen.panel_queries(_dashboards()["node-detail.json"]))
    for needle in (
        'up{job="fil-heartbeat-agents"',
        "fil_heartbeat_agent_source_state",
        "fil_heartbeat_agent_lotus_rpc_errors_total",
        "fil_heartbeat_agent_lotus_rpc_duration_seconds_bucket",
        "fil_heartbeat_agent_head_age_seconds",
    ):
        assert needle in fleet and needle in node, needle
    assert "fil_heartbeat_agent_head_height" in node
    assert "fil_heartbeat_node_source_state" in node


def test_source_state_numbers_cover_every_state() -> None:
    from heartbeat.protocol.beat import SourceState

    assert {s for s, _ in gen.parts.SOURCE_STATES} == {s.value for s in SourceState}
    expr = gen.parts.source_state_code("m", 'instance="x"', "instance")
    assert expr.startswith('max by (instance) (m{instance="x", state="ok"} or 2 * m{')
    mapping = gen.parts.source_state_mapping().to_json()
    assert {o.text for o in mapping["options"].values()} == {s.value for s in SourceState}
