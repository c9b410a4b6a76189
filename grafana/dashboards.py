"""Generate the fil-heartbeat Grafana dashboards with grafana-foundation-sdk.

    python grafana/dashboards.py            # rewrite grafana/dashboards/*.json
    python grafana/dashboards.py --check    # exit 1 when the committed files differ

Every panel and query uses the `datasource` template variable (file provisioning does not
substitute `${DS_PROMETHEUS}`); its default is the provisioned datasource's fixed uid.
Queries use the aggregator's metrics and the recording rules of prometheus/rules.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prom_model

__all__ = [
    "DATASOURCE_UID",
    "OUT_DIR",
    "fleet_overview",
    "main",
    "node_detail",
    "panel_queries",
    "render_all",
]

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
#: The uid of the provisioned datasource (provisioning/datasources/prometheus.yaml).
DATASOURCE_UID = "fil-heartbeat-prometheus"
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
NET = 'network=~"$network"'
NODE = 'peer_id="$node"'

_STATE_COLORS = {
    "in_consensus": "green",
    "lagging": "yellow",
    "forked": "purple",
    "stalled": "orange",
    "syncing": "blue",
    "down": "red",
    "source_down": "dark-red",
}
#: The head source states (heartbeat.protocol.beat.SourceState) as numbers for state timelines.
_SOURCE_STATES = (
    ("ok", "green"),
    ("syncing", "blue"),
    ("no_head", "orange"),
    ("unauthorized", "red"),
    ("unreachable", "dark-red"),
)
#: Where a node's dashboard is: the fleet table's rows link there.
NODE_DASHBOARD_UID = "fil-heartbeat-node"


class _Ids:
    """Panel ids and query ref ids, deterministic per dashboard."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


def _q(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(prom_model.PromQueryFormat.TABLE)
    return q


def _targets(panel: Any, queries: list[tuple[str, str]]) -> Any:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_q(expr, legend, chr(ord("A") + i)))
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def _datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(model.VariableOption(text="fil-heartbeat Prometheus", value=DATASOURCE_UID))
    )


def _network_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("network")
        .label("Network")
        .datasource(DS)
        .query("label_values(fil_heartbeat_network_height, network)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _base(title: str, uid: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["fil-heartbeat", "filecoin"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(_datasource_variable())
        .with_variable(_network_variable())
    )


def _stat(
    ids: _Ids,
    title: str,
    expr: str,
    *,
    unit: str = "none",
    legend: str = "",
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    description: str = "",
) -> stat.Panel:
    panel = stat.Panel().id(ids()).title(title).datasource(DS)
    if description:
        panel = panel.description(description)
    return (
        panel.with_target(_q(expr, legend))
        .unit(unit)
        .thresholds(_thresholds(*steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .height(4)
        .span(4)
    )


def fleet_overview() -> dash.Dashboard:
    """The fleet at a glance: states, heights, consensus, lag, alerts, ingest and its workers."""
    ids = _Ids()
    d = _base(
        "fil-heartbeat fleet",
        "fil-heartbeat-fleet",
        "Filecoin nodes reporting to the fil-heartbeat aggregators, deduplicated across "
        "aggregators by the recording rules of grafana/prometheus/rules.yml.",
    )
    d = d.link(
        dash.DashboardLink("Node detail")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags(["fil-heartbeat"])
        .include_vars(True)
        .keep_time(True)
        .as_dropdown(True)
    )
    d = d.with_row(dash.Row("Fleet").id(ids()).datasource(DS))
    d = d.with_panel(
        _stat(
            ids,
            "Nodes up",
            f"sum(fil_heartbeat:nodes_up:count{{{NET}}})",
            steps=((None, "red"), (1, "green")),
            description="Nodes seen up by at least one aggregator.",
        )
    )
    d = d.with_panel(
        _stat(
            ids,
            "Nodes known",
            f"sum(fil_heartbeat:nodes_known:count{{{NET}}})",
            steps=((None, "blue"),),
        )
    )
    d = d.with_panel(
        _stat(
            ids,
            "Consensus share",
            f"sum(fil_heartbeat:nodes_in_consensus:count{{{NET}}})"
            f" / sum(fil_heartbeat:nodes_up:count{{{NET}}})",
            unit="percentunit",
            steps=((None, "red"), (0.66, "yellow"), (0.9, "green")),
            description="Up nodes holding the plurality head.",
        )
    )
    d = d.with_panel(
        _stat(
            ids,
            "Epochs behind expected",
            f"max(fil_heartbeat:network_expected_height:max{{{NET}}}"
            f" - on (network) fil_heartbeat:network_height:max{{{NET}}})",
            steps=((None, "green"), (3, "yellow"), (10, "red")),
            description="Expected height (genesis time, block delay) minus the best height. "
            "A null round adds 1 for one epoch.",
        )
    )
    d = d.with_panel(
        _stat(
            ids,
            "Alerts firing (Prometheus)",
            'count(ALERTS{alertname=~"Fil.*", alertstate="firing"}) or vector(0)',
            steps=((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        _stat(
            ids,
            "Alerts firing (built-in)",
            "sum(fil_heartbeat_alerts_firing) or vector(0)",
            steps=((None, "green"), (1, "red")),
            description="Alerts of the aggregators' built-in alerter.",
        )
    )
    d = d.with_panel(
        ts.Panel()
        .id(ids())
        .title("Nodes by state")
        .datasource(DS)
        .with_target(
            _q(
                f"sum by (state) (max by (network, state) (fil_heartbeat_nodes{{{NET}}}))",
                "{{state}}",
            )
        )
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(60)
        .line_width(1)
        .min(0)
        .unit("none")
        .overrides(
            [
                dash.DashboardFieldConfigSourceOverrides()
                .matcher(model.MatcherConfig(id_val="byName", options=state))
                .properties(
                    [
                        model.DynamicConfigValue(
                            id_val="color", value={"mode": "fixed", "fixedColor": color}
                        )
                    ]
                )
                for state, color in _STATE_COLORS.items()
            ]
        )
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Network height vs expected height")
            .datasource(DS)
            .unit("none")
            .decimals(0)
            .height(8)
            .span(12),
            [
                (f"fil_heartbeat:network_height:max{{{NET}}}", "{{network}} height"),
                (f"fil_heartbeat:network_expected_height:max{{{NET}}}", "{{network}} expected"),
            ],
        )
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Consensus share")
            .datasource(DS)
            .unit("percentunit")
            .min(0)
            .max(1)
            .height(8)
            .span(12),
            [
                (f"fil_heartbeat:consensus_share:ratio{{{NET}}}", "{{network}}"),
            ],
        )
    )
    d = d.with_panel(
        heatmap.Panel()
        .id(ids())
        .title("Lag behind the fleet (epochs)")
        .datasource(DS)
        .description("Distribution of the nodes' lag; 5 epochs or more is FilNodeLagging.")
        .with_target(_q(f"fil_heartbeat:node_lag_epochs:fleet{{{NET}}}", "{{nickname}}"))
        .calculate(True)
        .height(8)
        .span(12)
    )
    d = _head_delay(d, ids)
    d = d.with_row(dash.Row("Alerts").id(ids()).datasource(DS))
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Alerts firing")
            .datasource(DS)
            .unit("none")
            .min(0)
            .height(8)
            .span(24),
            [
                (
                    "sum by (alertname, severity) "
                    '(ALERTS{alertname=~"Fil.*", alertstate="firing"})',
                    "{{alertname}} ({{severity}})",
                ),
                (
                    "sum by (alertname, severity) (fil_heartbeat_alerts_firing)",
                    "built-in {{alertname}} ({{severity}})",
                ),
            ],
        )
    )
    d = d.with_panel(_nodes_table(ids))
    d = d.with_row(dash.Row("Aggregators").id(ids()).datasource(DS))
    d = d.with_panel(
        _targets(
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
                    "sum by (instance) "
                    "(rate(fil_heartbeat_beats_received_total[$__rate_interval]))",
                    "{{instance}} received",
                ),
                (
                    "sum by (instance) "
                    "(rate(fil_heartbeat_beats_accepted_total[$__rate_interval]))",
                    "{{instance}} accepted",
                ),
            ],
        )
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Rejected beats by reason")
            .datasource(DS)
            .unit("reqps")
            .min(0)
            .height(8)
            .span(12),
            [
                (
                    "sum by (reason) (rate(fil_heartbeat_beats_rejected_total[$__rate_interval]))",
                    "{{reason}}",
                ),
                (
                    "sum by (reason) (rate(fil_heartbeat_decode_errors_total[$__rate_interval]))",
                    "stream reset: {{reason}}",
                ),
                (
                    "sum(rate(fil_heartbeat_beats_rate_limited_total[$__rate_interval]))",
                    "rate limited",
                ),
            ],
        )
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Connections and streams")
            .datasource(DS)
            .unit("none")
            .min(0)
            .height(8)
            .span(12),
            [
                ("sum by (instance) (fil_heartbeat_connections)", "{{instance}} connections"),
                ("sum by (instance) (fil_heartbeat_streams_open)", "{{instance}} streams"),
            ],
        )
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Aggregator up")
            .datasource(DS)
            .unit("none")
            .min(0)
            .max(1)
            .height(8)
            .span(12),
            [('up{job="fil-heartbeat-aggregator"}', "{{instance}}")],
        )
    )
    d = _fleet_agents(d, ids)
    return _ingest_workers(d, ids)


def _value_map(*entries: tuple[str, str, str]) -> model.ValueMap:
    """(value, text, colour) rows of one value mapping."""
    return model.ValueMap(
        options={
            value: model.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, text, color) in enumerate(entries)
        }
    )


def _source_state_code(metric: str, selector: str, by: str) -> str:
    """The one series of `metric{state=...}` that is 1, as the number of its state
    (1 ok .. 5 unreachable, `_SOURCE_STATES`): a state timeline can show one row."""
    sel = f"{selector}, " if selector else ""
    parts = [
        (f"{i} * " if i > 1 else "") + f'{metric}{{{sel}state="{state}"}}'
        for i, (state, _) in enumerate(_SOURCE_STATES, 1)
    ]
    return f"max by ({by}) (" + " or ".join(parts) + ")"


def _source_state_mapping() -> model.ValueMap:
    return _value_map(*((str(i), s, c) for i, (s, c) in enumerate(_SOURCE_STATES, 1)))


def _source_state_timeline(ids: _Ids, title: str, expr: str, legend: str) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .id(ids())
        .title(title)
        .datasource(DS)
        .with_target(_q(expr, legend))
        .mappings([_source_state_mapping()])
        .height(6)
        .span(24)
    )


_NODE_LABELS = "peer_id, nickname, miner, network"
#: The fleet table's columns after the label columns: (name, PromQL, unit); the state and
#: version queries carry their value in a label, their numeric value is hidden.
_BY_NODE = f"max by ({_NODE_LABELS})"
_NODE_COLUMNS = (
    ("state", f"max by ({_NODE_LABELS}, state) (fil_heartbeat_node_state{{{NET}}} == 1)", ""),
    ("Height", f"{_BY_NODE} (fil_heartbeat_node_height{{{NET}}})", "none"),
    ("Lag", f"{_BY_NODE} (fil_heartbeat:node_lag_epochs:fleet{{{NET}}})", "none"),
    (
        "Head age",
        f"time() - {_BY_NODE} (fil_heartbeat_node_head_timestamp_seconds{{{NET}}})",
        "s",
    ),
    (
        "Last beat",
        f"time() - {_BY_NODE} (fil_heartbeat_node_last_beat_timestamp_seconds{{{NET}}})",
        "s",
    ),
    (
        "Head delay",
        f"{_BY_NODE} (fil_heartbeat_node_head_changed_timestamp_seconds{{{NET}}})"
        f" - {_BY_NODE} (fil_heartbeat_node_head_timestamp_seconds{{{NET}}})",
        "s",
    ),
    ("version", f"max by ({_NODE_LABELS}, version) (fil_heartbeat_node_info{{{NET}}})", ""),
)
#: A fleet table row -> that node on the node dashboard (same datasource and time range).
NODE_LINK = (
    f"/d/{NODE_DASHBOARD_UID}/{NODE_DASHBOARD_UID}?${{datasource:queryparam}}"
    "&var-network=${__data.fields.network}&var-nickname=$__all&var-miner=$__all"
    "&var-node=${__data.fields.peer_id}&${__url_time_range}"
)


def _override(name: str, **props: Any) -> dash.DashboardFieldConfigSourceOverrides:
    return (
        dash.DashboardFieldConfigSourceOverrides()
        .matcher(model.MatcherConfig(id_val="byName", options=name))
        .properties([model.DynamicConfigValue(id_val=k, value=v) for k, v in props.items()])
    )


def _nodes_table(ids: _Ids) -> table.Panel:
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
    for i, (_, expr, _) in enumerate(_NODE_COLUMNS):
        panel = panel.with_target(_q(expr, ref=chr(ord("A") + i), instant=True))
    ref = {name: f"Value #{chr(ord('A') + i)}" for i, (name, _, _) in enumerate(_NODE_COLUMNS)}
    order = ["nickname", "miner", *(n for n, _, _ in _NODE_COLUMNS), "network", "peer_id"]
    panel = panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        model.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True, ref["state"]: True, ref["version"]: True},
                "renameByName": {
                    ref[n]: n
                    for n, _, unit in _NODE_COLUMNS
                    if unit  # the figures
                },
                "indexByName": {name: i for i, name in enumerate(order)},
            },
        )
    )
    props: dict[str, dict[str, Any]] = {
        name: {"unit": unit, "decimals": 0 if unit == "none" else 1}
        for name, _, unit in _NODE_COLUMNS
        if unit
    }
    props["state"] = {
        "custom.cellOptions": {"type": "color-background"},
        "mappings": [_value_map(*((s, s, c) for s, c in _STATE_COLORS.items())).to_json()],
    }
    for name, steps in (
        ("Lag", ((None, "green"), (2, "yellow"), (5, "red"))),
        ("Last beat", ((None, "green"), (30, "yellow"), (180, "red"))),
    ):
        props[name]["custom.cellOptions"] = {"type": "color-text"}
        props[name]["thresholds"] = _thresholds(*steps).build().to_json()
    overrides: list[cogbuilder.Builder[model.DashboardFieldConfigSourceOverrides]] = [
        _override(name, **p) for name, p in props.items()
    ]
    return (
        panel.overrides(overrides)
        .data_links([dash.DashboardLink("Node dashboard").url(NODE_LINK)])
        .height(10)
        .span(24)
    )


def _head_delay(d: dash.Dashboard, ids: _Ids) -> dash.Dashboard:
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
            _q(
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
        _targets(
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


_AGENTS_UP = 'up{job="fil-heartbeat-agents"}'
_AGENT_DOWN_STATES = 'state=~"unreachable|unauthorized|no_head"'


def _fleet_agents(d: dash.Dashboard, ids: _Ids) -> dash.Dashboard:
    """Every agent from its own /metrics (job fil-heartbeat-agents, `--metrics-listen`)."""
    agent = "{{nickname}} {{instance}}"
    d = d.with_row(dash.Row("Agents").id(ids()).datasource(DS))
    d = d.with_panel(
        _stat(
            ids,
            "Agents scraped",
            f"sum({_AGENTS_UP}) or vector(0)",
            steps=((None, "blue"),),
            description="Agents Prometheus scrapes (job fil-heartbeat-agents).",
        ).span(8)
    )
    d = d.with_panel(
        _stat(
            ids,
            "Agents not answering",
            f"count({_AGENTS_UP} == 0) or vector(0)",
            steps=((None, "green"), (1, "red")),
            description="Down for 5m is FilAgentDown.",
        ).span(8)
    )
    d = d.with_panel(
        _stat(
            ids,
            "Agents without a head",
            "count(max without (state) "
            f"(fil_heartbeat_agent_source_state{{{_AGENT_DOWN_STATES}}}) == 1) or vector(0)",
            steps=((None, "green"), (1, "red")),
            description="Lotus unreachable, refusing the token or without a head; "
            "5m is FilAgentSourceDown.",
        ).span(8)
    )
    d = d.with_panel(
        _source_state_timeline(
            ids,
            "Head source of each agent",
            _source_state_code("fil_heartbeat_agent_source_state", "", "instance, nickname"),
            agent,
        )
    )
    d = d.with_panel(
        _targets(
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
        _targets(
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
        _targets(
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


def _ingest_workers(d: dash.Dashboard, ids: _Ids) -> dash.Dashboard:
    """The aggregators' ingest workers (`--workers N`; worker 0 only without it)."""
    worker = "{{instance}} worker {{worker}}"
    d = d.with_row(dash.Row("Ingest workers").id(ids()).datasource(DS))
    d = d.with_panel(
        statetimeline.Panel()
        .id(ids())
        .title("Workers up")
        .datasource(DS)
        .description("Linked to worker 0 and listening; down for 2m is FilHeartbeatWorkerDown.")
        .with_target(_q("fil_heartbeat_worker_up", worker))
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
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        ts.Panel()
        .id(ids())
        .title("Connections per worker")
        .datasource(DS)
        .description(
            "Open libp2p connections; the kernel spreads new ones over the workers that listen."
        )
        .with_target(_q("sum by (instance, worker) (fil_heartbeat_worker_connections)", worker))
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(60)
        .line_width(1)
        .min(0)
        .unit("none")
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        ts.Panel()
        .id(ids())
        .title("Worker restarts in 15m")
        .datasource(DS)
        .description("4 or more is FilHeartbeatWorkerRestarting (a crash loop).")
        .with_target(
            _q(
                "sum by (instance, worker) (increase(fil_heartbeat_worker_restarts_total[15m]))",
                worker,
            )
        )
        .unit("none")
        .min(0)
        .decimals(0)
        .thresholds(_thresholds((None, "green"), (4, "red")))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        _targets(
            ts.Panel()
            .id(ids())
            .title("Connection imbalance")
            .datasource(DS)
            .description(
                "Busiest worker's connections over the mean of the workers that are "
                "up: 1 is even, N all on one of N workers."
            )
            .unit("none")
            .min(1)
            .height(8)
            .span(12),
            [("fil_heartbeat:worker_connections:max_over_avg", "{{instance}}")],
        )
    )
    return d


def _pick(name: str, label: str, query: str, *, include_all: bool) -> dash.QueryVariable:
    v = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if include_all:
        v = (
            v.include_all(True)
            .all_value(".*")
            .current(model.VariableOption(text="All", value="$__all"))
        )
    return v


#: The agent whose target label `nickname` is the picked node's nickname (prometheus.yml:
#: label each agent target with the nickname its agent beats with). A node without a
#: nickname has no agent here: an empty nickname would match every unlabelled target.
AGENT_QUERY = (
    'query_result(max by (instance) (up{job="fil-heartbeat-agents"} * on (nickname) '
    'group_left () max by (nickname) (fil_heartbeat_node_info{peer_id="$node", nickname!=""})))'
)


def _node_variables(d: dash.Dashboard) -> dash.Dashboard:
    """Pick a node by nickname and miner (both may stay All), then by peer id, which the
    queries use; `agent` follows the node."""
    info = "fil_heartbeat_node_info"
    return (
        d.with_variable(
            _pick(
                "nickname",
                "Nickname",
                f"label_values({info}{{{NET}}}, nickname)",
                include_all=True,
            )
        )
        .with_variable(
            _pick(
                "miner",
                "Miner",
                f'label_values({info}{{{NET}, nickname=~"$nickname"}}, miner)',
                include_all=True,
            )
        )
        .with_variable(
            _pick(
                "node",
                "Node (peer id)",
                f'label_values({info}{{{NET}, nickname=~"$nickname", miner=~"$miner"}}, peer_id)',
                include_all=False,
            )
        )
        .with_variable(
            _pick("agent", "Agent (metrics target)", AGENT_QUERY, include_all=False).regex(
                '/instance="([^"]+)"/'
            )
        )
    )


def _node_agent(d: dash.Dashboard, ids: _Ids) -> dash.Dashboard:
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
        .with_target(_q(f'up{{job="fil-heartbeat-agents", {agent}}}'))
        .mappings([_value_map(("0", "down", "red"), ("1", "up", "green"))])
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .height(6)
        .span(4)
    )
    d = d.with_panel(
        _source_state_timeline(
            ids,
            "Head source (the agent's own view)",
            _source_state_code("fil_heartbeat_agent_source_state", agent, "instance"),
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
            _targets(
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


def node_detail() -> dash.Dashboard:
    """One node (template variable `node`, a peer id) against its network."""
    ids = _Ids()
    d = _base(
        "fil-heartbeat node",
        "fil-heartbeat-node",
        "One Filecoin node as the fil-heartbeat aggregators see it, and its agent.",
    )
    d = _node_variables(d)
    d = d.with_panel(
        stat.Panel()
        .id(ids())
        .title("State")
        .datasource(DS)
        .with_target(_q(f"max by (state) (fil_heartbeat_node_state{{{NODE}}}) == 1", "{{state}}"))
        .text_mode(common.BigValueTextMode.NAME)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .height(4)
        .span(6)
    )
    d = d.with_panel(
        _stat(
            ids,
            "Lag (epochs)",
            f"max(fil_heartbeat:node_lag_epochs:fleet{{{NODE}}})",
            steps=((None, "green"), (2, "yellow"), (5, "red")),
        ).span(6)
    )
    d = d.with_panel(
        _stat(
            ids,
            "Head unchanged for",
            f"time() - max(fil_heartbeat_node_head_changed_timestamp_seconds{{{NODE}}})",
            unit="s",
            steps=((None, "green"), (150, "yellow"), (300, "red")),
        ).span(6)
    )
    d = d.with_panel(
        _stat(
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
        .with_target(_q(f"fil_heartbeat:node_up:max{{{NODE}}}", "{{nickname}}"))
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
        .with_target(_q(f"max by (state) (fil_heartbeat_node_state{{{NODE}}})", "{{state}}"))
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
        _source_state_timeline(
            ids,
            "Head source (as its beats report it)",
            _source_state_code("fil_heartbeat_node_source_state", NODE, "peer_id, nickname"),
            "{{nickname}}",
        )
    )
    d = d.with_panel(
        _targets(
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
        _targets(
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
        _targets(
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
        _targets(
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
        .with_target(_q(f"fil_heartbeat_node_info{{{NODE}}}", instant=True))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            )
        )
        .height(6)
        .span(24)
    )
    return _node_agent(d, ids)


def _to_json(builder: cogbuilder.Builder[Any]) -> str:
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        "fleet-overview.json": _to_json(fleet_overview()),
        "node-detail.json": _to_json(node_detail()),
    }


def panel_queries(model_json: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel in a dashboard."""
    out: list[tuple[str, str]] = []
    for panel in model_json.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(
            f"out of date: {', '.join(stale)} (run python grafana/dashboards.py)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
