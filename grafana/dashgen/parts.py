"""The pieces every fil-heartbeat dashboard is built from: the datasource and template
variables, query and panel helpers, value mappings, the source-state encoding."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

#: The uid of the provisioned datasource (provisioning/datasources/prometheus.yaml).
DATASOURCE_UID = "fil-heartbeat-prometheus"
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
NET = 'network=~"$network"'
NODE = 'peer_id="$node"'

STATE_COLORS = {
    "in_consensus": "green",
    "lagging": "yellow",
    "forked": "purple",
    "stalled": "orange",
    "syncing": "blue",
    "down": "red",
    "source_down": "dark-red",
}
#: The head source states (heartbeat.protocol.beat.SourceState) as numbers for state timelines.
SOURCE_STATES = (
    ("ok", "green"),
    ("syncing", "blue"),
    ("no_head", "orange"),
    ("unauthorized", "red"),
    ("unreachable", "dark-red"),
)
#: Where a node's dashboard is: the fleet table's rows link there.
NODE_DASHBOARD_UID = "fil-heartbeat-node"


class Ids:
    """Panel ids and query ref ids, deterministic per dashboard."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


def query(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(prom_model.PromQueryFormat.TABLE)
    return q


def targets(panel: Any, queries: list[tuple[str, str]]) -> Any:
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i)))
    return panel


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(model.VariableOption(text="fil-heartbeat Prometheus", value=DATASOURCE_UID))
    )


def network_variable() -> dash.QueryVariable:
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


def base(title: str, uid: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["fil-heartbeat", "filecoin"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(network_variable())
    )


def stat_panel(
    ids: Ids,
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
        panel.with_target(query(expr, legend))
        .unit(unit)
        .thresholds(thresholds(*steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .height(4)
        .span(4)
    )


def value_map(*entries: tuple[str, str, str]) -> model.ValueMap:
    """(value, text, colour) rows of one value mapping."""
    return model.ValueMap(
        options={
            value: model.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, text, color) in enumerate(entries)
        }
    )


def source_state_code(metric: str, selector: str, by: str) -> str:
    """The one series of `metric{state=...}` that is 1, as the number of its state
    (1 ok .. 5 unreachable, `SOURCE_STATES`): a state timeline can show one row."""
    sel = f"{selector}, " if selector else ""
    parts = [
        (f"{i} * " if i > 1 else "") + f'{metric}{{{sel}state="{state}"}}'
        for i, (state, _) in enumerate(SOURCE_STATES, 1)
    ]
    return f"max by ({by}) (" + " or ".join(parts) + ")"


def source_state_mapping() -> model.ValueMap:
    return value_map(*((str(i), s, c) for i, (s, c) in enumerate(SOURCE_STATES, 1)))


def source_state_timeline(ids: Ids, title: str, expr: str, legend: str) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .id(ids())
        .title(title)
        .datasource(DS)
        .with_target(query(expr, legend))
        .mappings([source_state_mapping()])
        .height(6)
        .span(24)
    )


def override(name: str, **props: Any) -> dash.DashboardFieldConfigSourceOverrides:
    return (
        dash.DashboardFieldConfigSourceOverrides()
        .matcher(model.MatcherConfig(id_val="byName", options=name))
        .properties([model.DynamicConfigValue(id_val=k, value=v) for k, v in props.items()])
    )


def pick(name: str, label: str, query: str, *, include_all: bool) -> dash.QueryVariable:
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


AGENTS_UP = 'up{job="fil-heartbeat-agents"}'
AGENT_DOWN_STATES = 'state=~"unreachable|unauthorized|no_head"'
