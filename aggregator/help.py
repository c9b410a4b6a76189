"""What `fil-heartbeat-aggregator --help` says of every setting: meaning, default, the
variable and the TOML key. One table keyed by the setting; the variable is always
`FIL_HEARTBEAT_AGGREGATOR_<KEY>` and the default comes from `AggregatorConfig` unless the
table says otherwise. `tests/test_cli_help.py` checks every flag is here.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from aggregator.alerts.model import AlertPolicy
from aggregator.config import ENV_PREFIX, AggregatorConfig
from heartbeat.common.cli import SettingHelp
from heartbeat.common.durations import format_duration

__all__ = ["ALERT_SET_KEYS", "MEANINGS", "setting_help"]

#: The `[alerts]` keys `--alert-set KEY=VALUE` takes (besides receivers, set in TOML).
ALERT_SET_KEYS = (
    "enabled",
    "evaluation_interval",
    "disabled",
    "alertmanager_labels",
    *(f.name for f in fields(AlertPolicy) if f.name != "disabled"),
)

#: Meaning, and the default when `AggregatorConfig`'s is not what to show.
MEANINGS: dict[str, tuple[str, str | None]] = {
    "config": ("TOML file with any of these settings (flat, or under [aggregator])", "none"),
    "identity_file": ("the aggregator's Ed25519 key (its peer id); created 0600 if missing", None),
    "listen": ("libp2p listen multiaddr (repeatable)", "/ip4/0.0.0.0/tcp/9081"),
    "http_listen": ("HOST:PORT of /metrics, the API and the status page", "0.0.0.0:9082"),
    "state_db": ("SQLite file: node registry, history, alert state", None),
    "reset_state": ("move an unreadable state db aside (timestamped) and start empty", "off"),
    "allowlist_file": ("peer ids allowed to beat, one per line; reloaded on SIGHUP", "anyone"),
    "legacy_metrics": ("also export go-filecoin's unprefixed gauges", "off"),
    "name": ("this aggregator's name: legacy metrics label, alert sender", None),
    "status_page": (
        "the status page at /: private (everything), public (no remote addresses, IPs or "
        "source error texts, in the page and its JSON) or off",
        None,
    ),
    "max_connections": ("libp2p connections held at most", None),
    "max_connections_per_ip": ("connections from one IP at most", None),
    "max_streams_total": ("streams on the host", "4 x --max-connections"),
    "max_memory_mb": ("libp2p resource manager memory", "max(512, --max-connections / 4)"),
    "max_peers": ("peerstore size; must exceed --max-connections", "2 x --max-connections + 64"),
    "max_pending_inbound": ("inbound handshakes at once (the handshake gate's slots)", "64"),
    "handshake_queue_wait": ("close a connection that waited this long for a handshake slot", None),
    "first_bytes_timeout": ("close an inbound dialer that sends nothing this long", None),
    "upgrade_timeout": ("the inbound Noise + Yamux upgrade's deadline", None),
    "refusal_cap": (
        "close at accept an IP refused N times per window more than it upgraded; 0: off",
        None,
    ),
    "refusal_window": ("the window of --refusal-cap", None),
    "max_connections_per_peer": ("connections from one peer id at most", "2"),
    "max_streams_per_peer": ("heartbeat streams from one peer id at most", None),
    "max_beat_size": ("largest beat accepted, bytes", None),
    "rate_limit": ("beats per second per peer (token bucket)", None),
    "rate_burst": ("the token bucket's burst, beats", None),
    "flood_drops": ("rate-limited beats within --flood-window that disconnect a peer", None),
    "flood_window": ("the window of --flood-drops", None),
    "beat_timeout": ("silence before a node is down, until its beat period is known", None),
    "beat_timeout_min": ("down after at least this much silence (3 x its period)", None),
    "beat_timeout_max": ("down after at most this much silence", None),
    "lag_threshold": ("epochs behind the network's height before a node is lagging", None),
    "stall_after": ("a node whose height has not moved this long is stalled", None),
    "retention": ("a node down this long is forgotten", None),
    "history_retention": ("how long node history (transitions, heights, uptime) is kept", None),
    "max_nodes": ("nodes tracked at most; a full registry evicts long-down nodes first", None),
    "probation": ("a new peer id counts (persisted, alerted, voting) once it beat this long", None),
    "max_probation": ("peers on probation at most", None),
    "max_probation_per_ip": ("peers on probation from one IP at most", None),
    "gc_threshold": ("Python's gc thresholds G0,G1,G2", "50000,50,100"),
    "gc_freeze": ("do not move start-up objects out of the gc's reach (gc.freeze)", "freeze"),
    "allow_unpatched_libp2p": (
        "run py-libp2p's stock code on a version the fixes were not written for (it refuses "
        "every connection after --max-connections ever accepted)",
        "off",
    ),
    "workers": ("ingest processes sharing the port and the identity", None),
    "worker_watchdog": ("kill and restart a worker silent this long", None),
    "alerts_file": ("TOML file holding the [alerts] table", "none"),
    "runbook_base_url": (
        "where grafana/RUNBOOK.md is published: alert runbook links become absolute",
        "relative links",
    ),
    "nats_url": (
        "NATS server URL (repeatable, or a comma list: every cluster member); turns on the "
        "JetStream export, the merged fleet and the leader-elected alerter",
        "none: off",
    ),
    "nats_user": ("NATS user name (with --nats-password-file)", "none"),
    "nats_password_file": ("file holding the NATS password", "none"),
    "nats_token_file": ("file holding a NATS auth token", "none"),
    "nats_creds": ("NATS credentials file (JWT and nkey seed, .creds)", "none"),
    "nats_nkey": ("NATS nkey seed file", "none"),
    "nats_tls_ca": ("CA bundle to verify the NATS servers' TLS certificates", "system CAs"),
    "nats_stream": ("the JetStream stream of beats and events (created when absent)", None),
    "nats_replicas": ("the stream's replicas when created (at most the cluster's size)", None),
    "nats_max_age": ("the stream drops messages older than this", "7d"),
    "nats_max_bytes": ("the stream drops its oldest messages beyond this size, bytes", "1 GiB"),
    "nats_spool_max": (
        "messages NATS has not acknowledged kept in the state db; beyond, the oldest drop",
        None,
    ),
    "nats_catch_up": ("how far back a started aggregator reads the stream before ready", "10m"),
    "nats_lease_ttl": (
        "the alerter's leader lease: another aggregator takes over this long after the "
        "leader's last renewal",
        "10s",
    ),
    "tail_durable": ("tail: the durable consumer's name (its position survives restarts)", None),
    "tail_subjects": (
        "tail: subjects to read (repeatable or comma list), e.g. fil.heartbeat.*.beat.*",
        None,
    ),
    "tail_since": (
        "tail: a new consumer starts this far back (default: the stream's start)",
        "all",
    ),
    "log_format": ("log line format: text or json", None),
    "log_level": ("least severe level logged: DEBUG, INFO, WARNING, ERROR", None),
}

#: The alerting flags: TOML keys of the [alerts] table, no variable of their own.
ALERT_FLAGS: dict[str, tuple[str, str | None, str]] = {
    "alertmanager_url": (
        "Alertmanager base URL (repeatable: every cluster member)",
        "none",
        "[alerts] alertmanager_urls",
    ),
    "alert_webhook": (
        "POST alerts as JSON to this URL (repeatable)",
        "none",
        "[alerts] webhook_urls",
    ),
    "alert_test": (
        "send one test alert to every receiver at start-up",
        "off",
        "[alerts] send_test_alert",
    ),
    "alert_set": (
        "an [alerts] setting as KEY=VALUE (repeatable); keys: " + ", ".join(ALERT_SET_KEYS),
        None,
        "[alerts] KEY",
    ),
}


def _default(key: str, state_dir: Path | None) -> str | None:
    if key in ("identity_file", "state_db") and state_dir is not None:
        return str(state_dir / ("aggregator.key" if key == "identity_file" else "aggregator.db"))
    for f in fields(AggregatorConfig):
        if f.name != key:
            continue
        value = f.default if f.default is not MISSING else None
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and (key.endswith(("timeout", "wait")) or key in _TIMES):
            return format_duration(value)
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return None if value is None else str(value)
    return None


_TIMES = frozenset(
    {
        "stall_after",
        "retention",
        "history_retention",
        "probation",
        "worker_watchdog",
        "beat_timeout_min",
        "beat_timeout_max",
        "flood_window",
        "refusal_window",
    }
)


def setting_help(state_dir: Path | None = None) -> dict[str, SettingHelp]:
    """The help of every setting and alerting flag (`state_dir`: where default files go)."""
    out: dict[str, SettingHelp] = {}
    for key, (meaning, shown) in MEANINGS.items():
        default = shown if shown is not None else _default(key, state_dir)
        env = "FIL_HEARTBEAT_AGGREGATOR_CONFIG" if key == "config" else f"{ENV_PREFIX}{key.upper()}"
        out[key] = SettingHelp(meaning, default, env, None if key == "config" else key)
    for key, (meaning, shown, toml) in ALERT_FLAGS.items():
        out[key] = SettingHelp(meaning, shown, None, toml)
    return out
