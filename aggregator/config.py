"""The aggregator's configuration: one frozen dataclass from flags, env and TOML.

Pure: callers pass the flag values, the environment mapping and the parsed TOML
table; nothing here reads `os.environ` or files. Precedence: flags, then
environment (`FIL_HEARTBEAT_AGGREGATOR_<SETTING>`), then the TOML file, then the
defaults. Every bad value raises one `ConfigError` naming the setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aggregator.config_values import (
    AT_LEAST_ONE,
    PARSERS,
    POSITIVE,
    _bool,
    _duration,
    _float,
    _int,
    _listen,
    _threshold,
    parse_allowlist,
    parse_http_listen,
    validate_listen_multiaddr,
)
from heartbeat.errors import ConfigError, HeartbeatError

__all__ = [
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_LISTEN",
    "ENV_PREFIX",
    "AggregatorConfig",
    "build_config",
    "config_mapping",
    "http_url",
    "parse_allowlist",
    "parse_http_listen",
    "setting_label",
    "validate_listen_multiaddr",
]

ENV_PREFIX = "FIL_HEARTBEAT_AGGREGATOR_"
DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/9081"
DEFAULT_HTTP_LISTEN = "0.0.0.0:9082"
MAX_WORKERS = 64


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the aggregator needs, validated."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    http_host: str = "0.0.0.0"
    http_port: int = 9082
    identity_file: Path = Path("aggregator.key")
    state_db: Path = Path("aggregator.db")
    #: A state db that cannot be opened is moved aside (with its -wal/-shm, a timestamp
    #: suffix) and the aggregator starts empty (aggregator/store.py).
    reset_state: bool = False
    allowlist_file: Path | None = None
    legacy_metrics: bool = False
    #: The aggregator's name (legacy metrics label `aggregator`, alert sender).
    name: str = "aggregator"
    # -- limits --
    max_connections: int = 12_000
    max_connections_per_ip: int = 256
    # The other layers of py-libp2p's limits (see `heartbeat.net.p2p.HostLimits`);
    # None: derived from max_connections by `HostLimits.server`.
    max_streams_total: int | None = None
    max_memory_mb: int | None = None
    max_peers: int | None = None  # peerstore; must exceed max_connections
    max_pending_inbound: int | None = None
    max_connections_per_peer: int | None = None
    #: A connection that waited this long for one of `max_pending_inbound` handshake
    #: slots is closed unanswered (`heartbeat.net.p2p.HandshakeGate`).
    handshake_queue_wait: float = 5.0
    #: An inbound dialer that sends no multistream bytes this long is closed.
    first_bytes_timeout: float = 2.0
    #: The whole inbound upgrade (Noise + Yamux) must finish within this.
    upgrade_timeout: float = 10.0
    #: An IP refused more than `refusal_cap` times per `refusal_window`, beyond its
    #: successful handshakes in the window, is closed at TCP accept (0: no cap).
    refusal_cap: int = 20
    refusal_window: float = 60.0
    max_streams_per_peer: int = 4
    max_beat_size: int = 4096
    max_buffer: int = 65536
    # -- per-peer rate limit --
    rate_limit: float = 2.0  # beats per second
    rate_burst: int = 10
    flood_drops: int = 50  # drops within flood_window that disconnect a peer
    flood_window: float = 60.0
    # -- fleet policy --
    beat_timeout: float = 30.0  # before a peer's period is known
    beat_timeout_min: float = 10.0
    beat_timeout_max: float = 120.0
    lag_threshold: int = 5
    stall_after: float = 300.0
    retention: float = 86_400.0
    max_nodes: int = 20_000
    #: A new peer id is on probation until it has beaten this long (and 3 beats): shown,
    #: not persisted, not alerted on, not voting (aggregator/fleet.py). 0: no probation.
    probation: float = 60.0
    max_probation: int = 1000  # peers on probation at most, in total
    max_probation_per_ip: int = 64  # and per remote IP
    # -- operations --
    reject_log_interval: float = 60.0
    #: The registry's batch period: also what a SIGKILL can lose (docs/ARCHITECTURE.md).
    store_flush_interval: float = 2.0
    #: How long node history (state transitions, epoch heights: uptime) stays in the state
    #: db (aggregator/history_store.py); each node's state at the horizon is kept.
    history_retention: float = 30 * 86_400.0
    expire_interval: float = 60.0
    gc_freeze: bool = True
    gc_threshold: tuple[int, int, int] = (50_000, 50, 100)
    #: Run py-libp2p's stock code when the compat gate refuses the installed version
    #: (README: its inbound limiter then refuses everything after max_connections).
    allow_unpatched_libp2p: bool = False
    #: Ingest processes sharing the listen port and identity (SO_REUSEPORT); worker 0
    #: (this process) owns the fleet, the store, HTTP and alerts (aggregator/workers.py).
    workers: int = 1
    #: A worker that sent nothing (it reports every second) for this long is killed and
    #: restarted: hung, or stopped.
    worker_watchdog: float = 60.0
    #: The status page at `/` (aggregator/statuspage/): private (everything), public (no
    #: remote addresses, IPs or source error texts, in the page and its JSON APIs) or off.
    status_page: str = "private"
    log_format: str = "text"
    log_level: str = "INFO"
    #: The raw `[alerts]` table of the TOML file, for the alerting service.
    alerts: Mapping[str, Any] = field(default_factory=dict)
    #: A separate alert rules/receivers file, if any.
    alerts_file: Path | None = None
    #: Where grafana/RUNBOOK.md is published: alert runbook links become absolute
    #: (base + "/grafana/RUNBOOK.md#alertname"); "" keeps them relative.
    runbook_base_url: str = ""
    # -- NATS JetStream scale-out (aggregator/scaleout/; nothing changes without nats_url) --
    nats_url: tuple[str, ...] = ()
    nats_user: str | None = None
    nats_password_file: Path | None = None
    nats_token_file: Path | None = None
    nats_creds: Path | None = None
    nats_nkey: Path | None = None
    nats_tls_ca: Path | None = None
    nats_stream: str = "FIL_HEARTBEAT"
    nats_replicas: int = 3
    nats_max_age: float = 7 * 86_400.0
    nats_max_bytes: int = 1 << 30
    #: Messages NATS has not acknowledged wait in the state db, at most this many (the
    #: oldest are dropped, and counted, beyond it).
    nats_spool_max: int = 100_000
    #: How far back a (re)started aggregator reads the stream before it reports ready.
    nats_catch_up: float = 600.0
    #: The alerter's leader lease: another aggregator takes over this long after the
    #: leader's last renewal (it renews every third of it).
    nats_lease_ttl: float = 10.0
    #: `tail` only: its durable consumer, the subjects it reads, how far back a new one starts.
    tail_durable: str = "fil-heartbeat-tail"
    tail_subjects: tuple[str, ...] = ("fil.heartbeat.>",)
    tail_since: float | None = None

    @property
    def http_url(self) -> str:
        return http_url(self.http_host, self.http_port)


def http_url(host: str, port: int) -> str:
    """The URL to reach an HTTP listener on `host`: a wildcard becomes loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _normalise_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


#: Flags not spelt `--<key-with-dashes>`.
_FLAGS = {
    "allowlist_file": "--allowlist",
    "gc_freeze": "--no-gc-freeze",
    "alerts": "--alert-set",
    "tail_durable": "--durable",
    "tail_subjects": "--subjects",
    "tail_since": "--since",
}
#: An example value per parser, for error messages.
_EXAMPLES: dict[Callable[[Any], Any], str] = {
    _int: "100",
    _float: "2.5",
    _duration: "30s, 1m30s",
    _bool: "true or false",
    _listen: "/ip4/0.0.0.0/tcp/9081",
    _threshold: "50000,50,100",
}


def setting_label(key: str) -> str:
    """How the user spells a setting: its flag and its variable (and the TOML key)."""
    flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
    return f"{flag} / {ENV_PREFIX}{key.upper()}"


def _bad_value(key: str, raw: object, origin: str, exc: Exception) -> ConfigError:
    example = _EXAMPLES.get(PARSERS.get(key))  # type: ignore[arg-type]
    hint = f"; e.g. {example}" if example else ""
    return ConfigError(setting_label(key), f"bad value {raw!r} (from {origin}): {exc}{hint}")


def _unknown(key: str, origin: str, known: set[str]) -> ConfigError:
    from heartbeat.common.cli import closest

    if origin == "env":
        name = f"{ENV_PREFIX}{key.upper()}"
        guess = closest(name, {f"{ENV_PREFIX}{k.upper()}" for k in known})
    else:
        name, guess = key, closest(key, known)
    hint = f"; did you mean {guess}?" if guess else ""
    return ConfigError(name, f"unknown setting (from {origin}){hint}")


def build_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: Mapping[str, Any] | None = None,
    *,
    state_dir: Path | None = None,
    origins: dict[str, str] | None = None,
) -> AggregatorConfig:
    """Merge flags > env > TOML > defaults and validate; `state_dir` holds default files.
    `origins`, when given, is filled with where each set value came from."""
    flags = flags or {}
    env = env or {}
    file = {_normalise_key(k): v for k, v in (file or {}).items()}
    values: dict[str, Any] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = [
        ("file", file),
        (
            "env",
            {
                _normalise_key(k[len(ENV_PREFIX) :]): v
                for k, v in env.items()
                if k.startswith(ENV_PREFIX)
            },
        ),
        ("flag", {_normalise_key(k): v for k, v in flags.items() if v is not None}),
    ]
    known = set(PARSERS) | {"http_listen"}
    for origin, source in sources:
        for key, raw in source.items():
            if key not in known:
                if origin == "flag":
                    continue  # CLI-only options (subcommand, config path, ...)
                raise _unknown(key, origin, known)
            if key == "http_listen":
                try:
                    values["http_host"], values["http_port"] = parse_http_listen(str(raw))
                except ValueError as exc:
                    raise _bad_value("http_listen", raw, origin, exc) from exc
                if origins is not None:
                    origins["http_listen"] = origin
                continue
            try:
                values[key] = PARSERS[key](raw)
            except (ValueError, TypeError, HeartbeatError) as exc:
                raise _bad_value(key, raw, origin, exc) from exc
            if origins is not None:
                origins[key] = origin
    if state_dir is not None:
        values.setdefault("identity_file", state_dir / "aggregator.key")
        values.setdefault("state_db", state_dir / "aggregator.db")
    for key in POSITIVE:
        if key in values and values[key] <= 0:
            raise ConfigError(setting_label(key), "must be greater than zero; e.g. 30s or 10")
    for key in AT_LEAST_ONE:
        if key in values and values[key] < 1:
            raise ConfigError(setting_label(key), "must be at least 1")
    config = AggregatorConfig(**values)
    if config.beat_timeout_min > config.beat_timeout_max:
        raise ConfigError(setting_label("beat_timeout_min"), "must not exceed --beat-timeout-max")
    if config.max_beat_size > config.max_buffer:
        raise ConfigError(setting_label("max_beat_size"), "must not exceed --max-buffer")
    if config.max_peers is not None and config.max_peers <= config.max_connections:
        # py-libp2p's peerstore evicts the host's own key first when full.
        raise ConfigError(setting_label("max_peers"), "must exceed --max-connections")
    if not 1 <= config.workers <= MAX_WORKERS:
        raise ConfigError(setting_label("workers"), f"must be between 1 and {MAX_WORKERS}")
    if not config.name:
        raise ConfigError(setting_label("name"), "must not be empty; e.g. aggregator")
    if not re.match(r"^[A-Za-z0-9_-]+$", config.nats_stream):
        raise ConfigError(setting_label("nats_stream"), "letters, digits, _ and - only")
    return config


def config_fields() -> list[str]:
    """Every setting name (for documentation and `--help`)."""
    return [f.name for f in fields(AggregatorConfig)]


def config_mapping(
    config: AggregatorConfig, *, exclude: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`config` as TOML-typed values: `build_config(file=config_mapping(c)) == c`.

    How worker 0 hands its configuration to the other workers (aggregator/workers.py).
    """
    out: dict[str, Any] = {}
    for f in fields(AggregatorConfig):
        if f.name in exclude or f.name in ("http_host", "http_port"):
            continue
        value = getattr(config, f.name)
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    if "http_listen" not in exclude:
        host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
        out["http_listen"] = f"{host}:{config.http_port}"
    return out
