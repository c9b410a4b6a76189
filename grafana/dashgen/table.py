"""The fleet dashboard's nodes table and head-propagation row."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, table
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prom_model

from dashgen.parts import (
    DS,
    NET,
    NODE_DASHBOARD_UID,
    STATE_COLORS,
    Ids,
    override,
    query,
    targets,
    thresholds,
    value_map,
)

NODE_LABELS = "peer_id, nickname, miner, network"
#: The fleet table's columns after the label columns: (name, PromQL, unit); the state and
#: version queries carry their value in a label, their numeric value is hidden.
BY_NODE = f"max by ({NODE_LABELS})"
NODE_COLUMNS = (
    ("state", f"max by ({NODE_LABELS}, state) (fil_heartbeat_node_state{{{NET}}} == 1)", ""),
    ("Height", f"{BY_NODE} (fil_heartbeat_node_height{{{NET}}})", "none"),
    ("Lag", f"{BY_NODE} (fil_heartbeat:node_lag_epochs:fleet{{{NET}}})", "none"),
    (
        "Head age",
        f"time() - {BY_NODE} (fil_heartbeat_node_head_timestamp_seconds{{{NET}}})",
        "s",
    ),
    (
        "Last beat",
        f"time() - {BY_NODE} (fil_heartbeat_node_last_beat_timestamp_seconds{{{NET}}})",
        "s",
    ),
    (
        "Head delay",
        f"{BY_NODE} (fil_heartbeat_node_head_changed_timestamp_seconds{{{NET}}})"
        f" - {BY_NODE} (fil_heartbeat_node_head_timestamp_seconds{{{NET}}})",
        "s",
    ),
    ("version", f"max by ({NODE_LABELS}, version) (fil_heartbeat_node_info{{{NET}}})", ""),
)
#: A fleet table row -> that node on the node dashboard (same datasource and time range).
NODE_LINK = (
    f"/d/{NODE_DASHBOARD_UID}/{NODE_DASHBOARD_UID}?${{datasource:queryparam}}"
    "&var-network=${__data.fields.network}&var-nickname=$__all&var-miner=$__all"
    "&var-node=${__data.fields.peer_id}&${__url_time_range}"
)


def nodes_table(ids: Ids) -> table.Panel:
    """One row per node: labels, coloured state, figures, version; a click opens the node."""
    panel = (
        table.Panel()
        .id(ids())
        .title("Nodes")
        .description(
            "Head age: seconds since the head tipset's timestamp. Head delay: how late the "
            "node's current head reached it (the aggregator saw it change, minus the tipset's "
            "timestamp). Click a row for the node's dashboard."
        )
        .datasource(DS)
    )
    for i, (_, expr, _) in enumerate(NODE_COLUMNS):
        panel = panel.with_target(query(expr, ref=chr(ord("A") + i), instant=True))
    ref = {name: f"Value #{chr(ord('A') + i)}" for i, (name, _, _) in enumerate(NODE_COLUMNS)}
    order = ["nickname", "miner", *(n for n, _, _ in NODE_COLUMNS), "network", "peer_id"]
    panel = panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        model.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True, ref["state"]: True, ref["version"]: True},
                "renameByName": {
                    ref[n]: n
                    for n, _, unit in NODE_COLUMNS
                    if unit  # the figures
                },
                "indexByName": {name: i for i, name in enumerate(order)},
            },
        )
    )
    props: dict[str, dict[str, Any]] = {
        name: {"unit": unit, "decimals": 0 if unit == "none" else 1}
        for name, _, unit in NODE_COLUMNS
        if unit
    }
    props["state"] = {
        "custom.cellOptions": {"type": "color-background"},
        "mappings": [value_map(*((s, s, c) for s, c in STATE_COLORS.items())).to_json()],
    }
    for name, steps in (
        ("Lag", ((None, "green"), (2, "yellow"), (5, "red"))),
        ("Last beat", ((None, "green"), (30, "yellow"), (180, "red"))),
    ):
        props[name]["custom.cellOptions"] = {"type": "color-text"}
        props[name]["thresholds"] = thresholds(*steps).build().to_json()
    overrides: list[cogbuilder.Builder[model.DashboardFieldConfigSourceOverrides]] = [
        override(name, **p) for name, p in props.items()
    ]
    return (
        panel.overrides(overrides)
        .data_links([dash.DashboardLink("Node dashboard").url(NODE_LINK)])
        .height(10)
        .span(24)
    )


def head_delay(d: dash.Dashboard, ids: Ids) -> dash.Dashboard:
    """How late nodes learn each new head: the aggregator's head_delay_seconds histogram."""
    rate = f"rate(fil_heartbeat_head_delay_seconds_bucket{{{NET}}}[$__rate_interval])"
    d = d.with_row(dash.Row("Head propagation").id(ids()).datasource(DS))
    d = d.with_panel(
        heatmap.Panel()
        .id(ids())
        .title("Head delay")
        .description(
            "HeadSeenAt - HeadTimestamp of every node for every new head: when each agent "
            "learned the head, after the tipset's timestamp."
        )
        .datasource(DS)
        .with_target(
            query(
                f"sum by (le) (increase(fil_heartbeat_head_delay_seconds_bucket{{{NET}}}"
                f"[$__rate_interval]))",
                "{{le}}",
            ).format(prom_model.PromQueryFormat.HEATMAP)
        )
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
        )
        .height(8)
        .span(12)
    )
    return d.with_panel(
        targets(
            ts.Panel()
            .id(ids())
            .title("Head delay percentiles")
            .datasource(DS)
            .unit("s")
            .min(0)
            .height(8)
            .span(12),
            [
                (
                    f"histogram_quantile({q}, sum by (network, le) ({rate}))",
                    f"{{{{network}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
        )
    )
