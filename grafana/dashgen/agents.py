"""Panels over the agents' own /metrics (job fil-heartbeat-agents, agent flag
--metrics-listen): every agent on the fleet dashboard, the node's agent on the node's."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.models import common

from dashgen.parts import (
    AGENT_DOWN_STATES,
    AGENTS_UP,
    DS,
    Ids,
    query,
    source_state_code,
    source_state_timeline,
    stat_panel,
    targets,
    value_map,
)


def fleet_agents(d: dash.Dashboard, ids: Ids) -> dash.Dashboard:
    """Every agent from its own /metrics (job fil-heartbeat-agents, `--metrics-listen`)."""
    agent = "{{nickname}} {{instance}}"
    d = d.with_row(dash.Row("Agents").id(ids()).datasource(DS))
    d = d.with_panel(
        stat_panel(
            ids,
            "Agents scraped",
            f"sum({AGENTS_UP}) or vector(0)",
            steps=((None, "blue"),),
            description="Agents Prometheus scrapes (job fil-heartbeat-agents).",
        ).span(8)
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Agents not answering",
            f"count({AGENTS_UP} == 0) or vector(0)",
            steps=((None, "green"), (1, "red")),
            description="Down for 5m is FilAgentDown.",
        ).span(8)
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Agents without a head",
            "count(max without (state) "
            f"(fil_heartbeat_agent_source_state{{{AGENT_DOWN_STATES}}}) == 1) or vector(0)",
            steps=((None, "green"), (1, "red")),
            description="Lotus unreachable, refusing the token or without a head; "
            "5m is FilAgentSourceDown.",
        ).span(8)
    )
    d = d.with_panel(
        source_state_timeline(
            ids,
            "Head source of each agent",
            source_state_code("fil_heartbeat_agent_source_state", "", "instance, nickname"),
            agent,
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Lotus RPC errors by kind")
            .datasource(DS)
            .unit("reqps")
            .min(0)
            .height(8)
            .span(8),
            [
                (
                    "sum by (kind) "
                    "(rate(fil_heartbeat_agent_lotus_rpc_errors_total[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Lotus RPC latency p90 by method")
            .datasource(DS)
            .unit("s")
            .min(0)
            .height(8)
            .span(8),
            [
                (
                    "histogram_quantile(0.9, sum by (method, le) "
                    "(rate(fil_heartbeat_agent_lotus_rpc_duration_seconds_bucket"
                    "[$__rate_interval])))",
                    "{{method}}",
                )
            ],
        )
    )
    return d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Head age at each agent")
            .datasource(DS)
            .description("Seconds since the timestamp of the head the agent's Lotus gave it.")
            .unit("s")
            .min(0)
            .height(8)
            .span(8),
            [("fil_heartbeat_agent_head_age_seconds", agent)],
        )
    )


def node_agent(d: dash.Dashboard, ids: Ids) -> dash.Dashboard:
    """The node's agent from its own /metrics (variable `agent`)."""
    agent = 'instance="$agent"'
    d = d.with_row(dash.Row("Agent ($agent)").id(ids()).datasource(DS))
    d = d.with_panel(
        stat.Panel()
        .id(ids())
        .title("Agent scraped")
        .datasource(DS)
        .description(
            "Prometheus reaches the agent's --metrics-listen (job fil-heartbeat-agents). No "
            "agent listed: label its target with the node's nickname (prometheus.yml)."
        )
        .with_target(query(f'up{{job="fil-heartbeat-agents", {agent}}}'))
        .mappings([value_map(("0", "down", "red"), ("1", "up", "green"))])
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .height(6)
        .span(4)
    )
    d = d.with_panel(
        source_state_timeline(
            ids,
            "Head source (the agent's own view)",
            source_state_code("fil_heartbeat_agent_source_state", agent, "instance"),
            "{{instance}}",
        ).span(20)
    )
    rate = "[$__rate_interval]"
    panels: list[tuple[str, str, list[tuple[str, str]]]] = [
        (
            "Lotus RPC errors by kind",
            "reqps",
            [
                (
                    f"sum by (kind) (rate(fil_heartbeat_agent_lotus_rpc_errors_total{{{agent}}}"
                    f"{rate}))",
                    "{{kind}}",
                )
            ],
        ),
        (
            "Lotus RPC latency by method",
            "s",
            [
                (
                    f"histogram_quantile({q}, sum by (method, le) "
                    f"(rate(fil_heartbeat_agent_lotus_rpc_duration_seconds_bucket{{{agent}}}"
                    f"{rate})))",
                    f"{{{{method}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
        ),
        (
            "Head age at the agent",
            "s",
            [(f"fil_heartbeat_agent_head_age_seconds{{{agent}}}", "head age")],
        ),
        (
            "Beats sent per target",
            "reqps",
            [
                (
                    f"sum by (target) (rate(fil_heartbeat_agent_beats_sent_total{{{agent}}}"
                    f"{rate}))",
                    "{{target}}",
                )
            ],
        ),
    ]
    for title, unit, queries in panels:
        d = d.with_panel(
            targets(
                ts.Panel()
                .id(ids())
                .title(title)
                .datasource(DS)
                .unit(unit)
                .min(0)
                .height(8)
                .span(12),
                queries,
            )
        )
    return d
