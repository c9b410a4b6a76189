"""The node dashboard: one node (picked by nickname and miner, then peer id) against its
network, and its agent."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, statetimeline, table
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashgen.agents import node_agent
from dashgen.parts import (
    DS,
    NET,
    NODE,
    Ids,
    base,
    pick,
    query,
    source_state_code,
    source_state_timeline,
    stat_panel,
    targets,
)

#: The agent whose target label `nickname` is the picked node's nickname (prometheus.yml:
#: label each agent target with the nickname its agent beats with). A node without a
#: nickname has no agent here: an empty nickname would match every unlabelled target.
AGENT_QUERY = (
    'query_result(max by (instance) (up{job="fil-heartbeat-agents"} * on (nickname) '
    'group_left () max by (nickname) (fil_heartbeat_node_info{peer_id="$node", nickname!=""})))'
)


def node_variables(d: dash.Dashboard) -> dash.Dashboard:
    """Pick a node by nickname and miner (both may stay All), then by peer id, which the
    queries use; `agent` follows the node."""
    info = "fil_heartbeat_node_info"
    return (
        d.with_variable(
            pick(
                "nickname",
                "Nickname",
                f"label_values({info}{{{NET}}}, nickname)",
                include_all=True,
            )
        )
        .with_variable(
            pick(
                "miner",
                "Miner",
                f'label_values({info}{{{NET}, nickname=~"$nickname"}}, miner)',
                include_all=True,
            )
        )
        .with_variable(
            pick(
                "node",
                "Node (peer id)",
                f'label_values({info}{{{NET}, nickname=~"$nickname", miner=~"$miner"}}, peer_id)',
                include_all=False,
            )
        )
        .with_variable(
            pick("agent", "Agent (metrics target)", AGENT_QUERY, include_all=False).regex(
                '/instance="([^"]+)"/'
            )
        )
    )


def node_detail() -> dash.Dashboard:
    """One node (template variable `node`, a peer id) against its network."""
    ids = Ids()
    d = base(
        "fil-heartbeat node",
        "fil-heartbeat-node",
        "One Filecoin node as the fil-heartbeat aggregators see it, and its agent.",
    )
    d = node_variables(d)
    d = d.with_panel(
        stat.Panel()
        .id(ids())
        .title("State")
        .datasource(DS)
        .with_target(
            query(f"max by (state) (fil_heartbeat_node_state{{{NODE}}}) == 1", "{{state}}")
        )
        .text_mode(common.BigValueTextMode.NAME)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .height(4)
        .span(6)
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Lag (epochs)",
            f"max(fil_heartbeat:node_lag_epochs:fleet{{{NODE}}})",
            steps=((None, "green"), (2, "yellow"), (5, "red")),
        ).span(6)
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Head unchanged for",
            f"time() - max(fil_heartbeat_node_head_changed_timestamp_seconds{{{NODE}}})",
            unit="s",
            steps=((None, "green"), (150, "yellow"), (300, "red")),
        ).span(6)
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Last beat",
            f"time() - max(fil_heartbeat_node_last_beat_timestamp_seconds{{{NODE}}})",
            unit="s",
            steps=((None, "green"), (30, "yellow"), (180, "red")),
        ).span(6)
    )
    d = d.with_panel(
        statetimeline.Panel()
        .id(ids())
        .title("Up / down")
        .datasource(DS)
        .with_target(query(f"fil_heartbeat:node_up:max{{{NODE}}}", "{{nickname}}"))
        .mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="down", color="red", index=0),
                        "1": model.ValueMappingResult(text="up", color="green", index=1),
                    }
                )
            ]
        )
        .height(5)
        .span(24)
    )
    d = d.with_panel(
        statetimeline.Panel()
        .id(ids())
        .title("State")
        .datasource(DS)
        .with_target(query(f"max by (state) (fil_heartbeat_node_state{{{NODE}}})", "{{state}}"))
        .mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="-", color="transparent", index=0),
                        "1": model.ValueMappingResult(text="current", color="green", index=1),
                    }
                )
            ]
        )
        .height(7)
        .span(24)
    )
    d = d.with_panel(
        source_state_timeline(
            ids,
            "Head source (as its beats report it)",
            source_state_code("fil_heartbeat_node_source_state", NODE, "peer_id, nickname"),
            "{{nickname}}",
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Height vs network")
            .datasource(DS)
            .unit("none")
            .decimals(0)
            .height(8)
            .span(12),
            [
                (f"max by (nickname) (fil_heartbeat_node_height{{{NODE}}})", "{{nickname}}"),
                (
                    f"fil_heartbeat:network_height:max and on (network) "
                    f"fil_heartbeat:node_up:max{{{NODE}}}",
                    "{{network}} best",
                ),
                (
                    f"fil_heartbeat:network_expected_height:max and on (network) "
                    f"fil_heartbeat:node_up:max{{{NODE}}}",
                    "{{network}} expected",
                ),
                (
                    'max(fil_heartbeat_agent_head_height{instance="$agent"})',
                    "its agent's Lotus",
                ),
            ],
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Lag (epochs)")
            .datasource(DS)
            .unit("none")
            .min(0)
            .height(8)
            .span(12),
            [
                (f"fil_heartbeat:node_lag_epochs:fleet{{{NODE}}}", "fleet"),
                (f"fil_heartbeat_node_lag_epochs{{{NODE}}}", "{{instance}}"),
            ],
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Head age")
            .datasource(DS)
            .unit("s")
            .min(0)
            .height(8)
            .span(12),
            [
                (
                    f"time() - max(fil_heartbeat_node_head_changed_timestamp_seconds{{{NODE}}})",
                    "since the head changed",
                ),
                (
                    f"time() - max(fil_heartbeat_node_head_timestamp_seconds{{{NODE}}})",
                    "tipset age",
                ),
            ],
        )
    )
    d = d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Beats per second")
            .datasource(DS)
            .unit("reqps")
            .min(0)
            .height(8)
            .span(12),
            [
                (
                    f"sum by (instance) (rate(fil_heartbeat_node_beats_total{{{NODE}}}"
                    f"[$__rate_interval]))",
                    "{{instance}}",
                ),
            ],
        )
    )
    d = d.with_panel(
        table.Panel()
        .id(ids())
        .title("Node info")
        .datasource(DS)
        .with_target(query(f"fil_heartbeat_node_info{{{NODE}}}", instant=True))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            )
        )
        .height(6)
        .span(24)
    )
    return node_agent(d, ids)
