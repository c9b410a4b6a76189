"""The dashboards' queries against a real Prometheus that scrapes a real aggregator and a real
agent: FakeLotus -> the agent (run_agent, Lotus head source, --metrics-listen) -> libp2p ->
the aggregator (run_aggregator); Prometheus (Debian's) scrapes the aggregator's /metrics as
job fil-heartbeat-aggregator and the agent's as job fil-heartbeat-agents with the `nickname`
target label that prometheus.yml asks for, and evaluates rules.yml.

Every panel query and every variable query of both dashboards must be accepted by the
query API; the key panels and the variables must return data for that node and its agent.
Grafana's own variables are replaced as Grafana would: `$__rate_interval` by a window that
holds several scrapes, the template variables by what their queries return here.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import eventually
from tests.promservers import HTTP_NOT_YET, RULES, Server, free_port, prometheus
from tests.test_dashboards import _dashboards, gen, variable_expr

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.requires_tools("prometheus"),
]

NICKNAME = "lotus-sp"
RATE_WINDOW = "15s"  # 15 scrapes at 1 s
#: Panels that must show something for one healthy node and its agent (title -> dashboard).
KEY_PANELS = {
    "fleet-overview.json": {
        "Nodes up",
        "Nodes known",
        "Consensus share",
        "Epochs behind expected",
        "Nodes by state",
        "Network height vs expected height",
        "Lag behind the fleet (epochs)",
        "Head delay",
        "Head delay percentiles",
        "Nodes",
        "Beats per second",
        "Aggregator up",
        "Agents scraped",
        "Agents not answering",
        "Agents without a head",
        "Head source of each agent",
        "Lotus RPC errors by kind",
        "Lotus RPC latency p90 by method",
        "Head age at each agent",
        "Workers up",
    },
    "node-detail.json": {
        "State",
        "Lag (epochs)",
        "Head unchanged for",
        "Last beat",
        "Up / down",
        "Head source (as its beats report it)",
        "Height vs network",
        "Head age",
        "Beats per second",
        "Node info",
        "Agent scraped",
        "Head source (the agent's own view)",
        "Lotus RPC errors by kind",
        "Lotus RPC latency by method",
        "Head age at the agent",
        "Beats sent per target",
    },
}


def _substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


async def _query(client: httpx.AsyncClient, server: Server, expr: str) -> list[dict[str, Any]]:
    reply = await client.get(f"{server.url}/api/v1/query", params={"query": expr})
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    assert isinstance(result, list), (expr, body)  # an instant vector (scalars: none here)
    return result


async def _label_values(
    client: httpx.AsyncClient, server: Server, label: str, match: str
) -> list[str]:
    """What Grafana's `label_values(match, label)` asks Prometheus."""
    reply = await client.get(f"{server.url}/api/v1/label/{label}/values", params={"match[]": match})
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", (match, body)
    return list(body["data"])


def _has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


async def _advance(fake: Any) -> None:
    """A new head every second: new heads make head delays, beats and height changes."""
    while True:
        await trio.sleep(1)
        fake.advance()


@contextlib.asynccontextmanager
async def _prometheus(tmp_path: Path, agg_http: str, agent_metrics: str) -> Any:
    """Prometheus started and stopped off the event loop (its start-up poll blocks)."""
    stack = contextlib.ExitStack()
    agents_job = {
        "job_name": "fil-heartbeat-agents",
        "static_configs": [{"targets": [agent_metrics], "labels": {"nickname": NICKNAME}}],
    }
    server = await trio.to_thread.run_sync(
        stack.enter_context,
        prometheus(
            tmp_path,
            targets=[agg_http],
            rule_files=[RULES],
            extra_scrape_configs=[agents_job],
        ),
    )
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stack.close)


async def test_every_query_runs_and_key_panels_have_data(tmp_path: Path) -> None:
    from heartbeat.agent.cli import run_agent
    from heartbeat.agent.config import build_config
    from heartbeat.agent.loop import Agent
    from tests.fakelotus import FakeLotus
    from tests.test_aggregator_e2e import make_config, running

    stop = trio.Event()
    agent_metrics = f"127.0.0.1:{free_port()}"
    async with (
        running(make_config(tmp_path)) as agg,
        httpx.AsyncClient(timeout=10) as client,
        trio.open_nursery() as nursery,
    ):
        fake = FakeLotus(token="secret", height=300)
        await fake.start(nursery)
        env = {"FULLNODE_API_INFO": f"secret:/ip4/127.0.0.1/tcp/{fake.port}/http"}
        flags = {
            "targets": [agg.multiaddrs[0]],
            "nickname": NICKNAME,
            "beat_period": "500ms",
            "reconnect_period": "1s",
            "metrics_listen": agent_metrics,
        }
        config = build_config(flags, env, default_identity_file=tmp_path / "agent.key")

        async def start_agent(*, task_status: trio.TaskStatus[Agent]) -> None:
            await run_agent(config, shutdown=stop.wait, task_status=task_status)

        await nursery.start(start_agent)
        nursery.start_soon(_advance, fake)
        async with _prometheus(
            tmp_path, agg.http_url.removeprefix("http://"), agent_metrics
        ) as prom:

            async def ready() -> bool:
                try:
                    scrapes = await _query(
                        client, prom, f"min(count_over_time(up[{RATE_WINDOW}]) and up == 1)"
                    )
                    node_up = await _query(client, prom, "fil_heartbeat:node_up:max == 1")
                except HTTP_NOT_YET:
                    return False
                jobs = await _query(client, prom, "count by (job) (up == 1)")
                return (
                    len(jobs) == 2
                    and bool(node_up)
                    and bool(scrapes)
                    and float(scrapes[0]["value"][1]) >= 10
                )

            await eventually(ready, timeout=60, interval=0.5)
            values = await _variables(client, prom)
            assert values["$nickname"] == NICKNAME and values["$agent"] == agent_metrics
            empty = await _run_all_queries(client, prom, values)
            rows = await _table_rows(client, prom, values)
        stop.set()
        nursery.cancel_scope.cancel()
    # Grafana's merge joins the table's queries on their common columns: one row, the node
    (row,) = rows
    assert row["nickname"] == NICKNAME and row["peer_id"] == values["$node"]
    missing = {(name, title, expr) for name, title, expr in empty if title in KEY_PANELS[name]}
    assert not missing, sorted(missing)
    # and the list means something: every key panel exists, the rest are few
    for name, model in _dashboards().items():
        titles = {title for title, _ in gen.panel_queries(model)}
        assert KEY_PANELS[name] <= titles, KEY_PANELS[name] - titles
    assert {title for _, title, _ in empty} <= {"Alerts firing", "Rejected beats by reason"}


async def _variables(client: httpx.AsyncClient, prom: Server) -> dict[str, str]:
    """Each template variable of the node dashboard resolved as Grafana would, in order
    (a variable's query may use the ones before it)."""
    values = {"$__rate_interval": RATE_WINDOW, "$network": ".*", "$nickname": ".*", "$miner": ".*"}
    model = _dashboards()["node-detail.json"]
    picked: dict[str, str] = {}
    for var in model["templating"]["list"]:
        if var["type"] != "query":
            continue
        expr = _substitute(variable_expr(var["query"]), values)
        if var["query"].startswith("label_values("):
            label = var["query"].rsplit(",", 1)[1].strip(" )")
            options = await _label_values(client, prom, label, expr)
        else:  # query_result(...) and a regex: the first capture group of each series
            regex = var["regex"].strip("/")
            options = []
            for series in await _query(client, prom, expr):
                text = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items()))
                m = re.search(regex, text + "}")
                if m:
                    options.append(m.group(1))
        if var["name"] == "miner":  # this agent beats without a miner: only All is offered
            assert options == [], options
            continue
        assert options, f"variable {var['name']}: no options from {expr!r}"
        if var["name"] == "nickname":
            assert NICKNAME in options
            picked["$nickname"] = NICKNAME
            values["$nickname"] = NICKNAME  # the operator picks the node by its nickname
        elif var["name"] == "network":
            picked["$network"] = options[0]
        else:
            (only,) = options  # one node, one agent: exactly one option
            picked[f"${var['name']}"] = only
            values[f"${var['name']}"] = only
    return {**values, **picked}


async def _run_all_queries(
    client: httpx.AsyncClient, prom: Server, values: dict[str, str]
) -> set[tuple[str, str, str]]:
    """Run every panel query; return the (dashboard, panel, query) that came back empty or
    only NaN. Fails at once on a query the API refuses."""
    empty = set()
    for name, model in _dashboards().items():
        for title, expr in gen.panel_queries(model):
            result = await _query(client, prom, _substitute(expr, values))
            if not _has_finite_value(result):
                empty.add((name, title, expr))
    return empty


async def _table_rows(
    client: httpx.AsyncClient, prom: Server, values: dict[str, str]
) -> list[dict[str, str]]:
    """The fleet table's label columns over all its queries, the state and version columns
    aside: what its merge transformation keys rows on."""
    panel = next(p for p in _dashboards()["fleet-overview.json"]["panels"] if p["title"] == "Nodes")
    keys: list[dict[str, str]] = []
    for target in panel["targets"]:
        for series in await _query(client, prom, _substitute(target["expr"], values)):
            key = {k: v for k, v in series["metric"].items() if k not in ("state", "version")}
            if key not in keys:
                keys.append(key)
    return keys
