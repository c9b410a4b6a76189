"""The fleet dashboard: states, heights, consensus, lag, head propagation, alerts, the
nodes table, ingest, the agents and the aggregators' ingest workers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, statetimeline
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashgen.agents import fleet_agents
from dashgen.parts import (
    DS,
    NET,
    STATE_COLORS,
    Ids,
    base,
    query,
    stat_panel,
    targets,
    thresholds,
)
from dashgen.table import head_delay, nodes_table


def fleet_overview() -> dash.Dashboard:
    """The fleet at a glance: states, heights, consensus, lag, alerts, ingest and its workers."""
    ids = Ids()
    d = base(
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
        stat_panel(
            ids,
            "Nodes up",
            f"sum(fil_heartbeat:nodes_up:count{{{NET}}})",
            steps=((None, "red"), (1, "green")),
            description="Nodes seen up by at least one aggregator.",
        )
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Nodes known",
            f"sum(fil_heartbeat:nodes_known:count{{{NET}}})",
            steps=((None, "blue"),),
        )
    )
    d = d.with_panel(
        stat_panel(
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
        stat_panel(
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
        stat_panel(
            ids,
            "Alerts firing (Prometheus)",
            'count(ALERTS{alertname=~"Fil.*", alertstate="firing"}) or vector(0)',
            steps=((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        stat_panel(
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
            query(
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
                for state, color in STATE_COLORS.items()
            ]
        )
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        targets(
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
        targets(
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
        .with_target(query(f"fil_heartbeat:node_lag_epochs:fleet{{{NET}}}", "{{nickname}}"))
        .calculate(True)
        .height(8)
        .span(12)
    )
    d = head_delay(d, ids)
    d = d.with_row(dash.Row("Alerts").id(ids()).datasource(DS))
    d = d.with_panel(
        targets(
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
    d = d.with_panel(nodes_table(ids))
    d = d.with_row(dash.Row("Aggregators").id(ids()).datasource(DS))
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
        targets(
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
        targets(
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
        targets(
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
    d = fleet_agents(d, ids)
    return ingest_workers(d, ids)


def ingest_workers(d: dash.Dashboard, ids: Ids) -> dash.Dashboard:
    """The aggregators' ingest workers (`--workers N`; worker 0 only without it)."""
    worker = "{{instance}} worker {{worker}}"
    d = d.with_row(dash.Row("Ingest workers").id(ids()).datasource(DS))
    d = d.with_panel(
        statetimeline.Panel()
        .id(ids())
        .title("Workers up")
        .datasource(DS)
        .description("Linked to worker 0 and listening; down for 2m is FilHeartbeatWorkerDown.")
        .with_target(query("fil_heartbeat_worker_up", worker))
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
        .with_target(query("sum by (instance, worker) (fil_heartbeat_worker_connections)", worker))
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
            query(
                "sum by (instance, worker) (increase(fil_heartbeat_worker_restarts_total[15m]))",
                worker,
            )
        )
        .unit("none")
        .min(0)
        .decimals(0)
        .thresholds(thresholds((None, "green"), (4, "red")))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        targets(
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
