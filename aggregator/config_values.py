"""The aggregator's setting values: each parser turns text from a flag or a variable, or
a typed TOML value, into a setting's value or raises `ValueError` saying what is wrong
(`aggregator.config` names the flag and the variable). Also the listen-address, HTTP
address and allowlist parsers. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from heartbeat.common.settings import (
    parse_bool,
    parse_choice,
    parse_duration_value,
    parse_float,
    parse_int,
)

__all__ = [
    "AT_LEAST_ONE",
    "MULTIADDR",
    "PARSERS",
    "POSITIVE",
    "parse_allowlist",
    "parse_http_listen",
    "validate_listen_multiaddr",
]

MULTIADDR = re.compile(r"^/(ip4|ip6|dns|dns4|dns6)/([^/]+)/tcp/(\d+)$")
_IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


def validate_listen_multiaddr(addr: str) -> None:
    """A TCP listen multiaddr without /p2p: `/ip4/0.0.0.0/tcp/9081`, `/ip6/::/tcp/9081`."""
    match = MULTIADDR.match(addr)
    if match is None:
        raise ValueError(f"{addr!r} is not a TCP multiaddr like /ip4/0.0.0.0/tcp/9081")
    proto, host, port = match.groups()
    if proto == "ip4":
        ip = _IPV4.match(host)
        if ip is None or any(int(part) > 255 for part in ip.groups()):
            raise ValueError(f"{addr!r}: bad IPv4 address")
    if proto == "ip6" and ":" not in host:
        raise ValueError(f"{addr!r}: bad IPv6 address")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{addr!r}: port out of range")


def parse_http_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)


def parse_allowlist(text: str) -> frozenset[str]:
    """Peer ids, one per line; `#` starts a comment; blank lines are ignored."""
    ids: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if " " in line or not line.isalnum():
            raise ValueError(f"line {number}: {line!r} is not a peer id")
        ids.add(line)
    return frozenset(ids)


# -- value parsers (text from flags/env, or typed values from TOML) -----------


_int = parse_int
_float = parse_float
_duration = parse_duration_value
_bool = parse_bool


def _path(value: Any) -> Path:
    text = str(value).strip()
    if not text:
        raise ValueError("empty path")
    return Path(text).expanduser()


def _opt_path(value: Any) -> Path | None:
    text = str(value).strip()
    return Path(text).expanduser() if text else None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value.strip()


def _base_url(value: Any) -> str:
    text = _str(value).rstrip("/")
    if text and not text.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
    return text


def _listen(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    addrs = tuple(str(a).strip() for a in items if str(a).strip())
    if not addrs:
        raise ValueError("at least one listen multiaddr is required")
    for addr in addrs:
        validate_listen_multiaddr(addr)
    return addrs


def _threshold(value: Any) -> tuple[int, int, int]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    numbers = tuple(_int(v) for v in items)
    if len(numbers) != 3 or any(n < 0 for n in numbers):
        raise ValueError("expected three non-negative integers, e.g. 50000,50,100")
    return (numbers[0], numbers[1], numbers[2])


def _status_page(value: Any) -> str:
    return parse_choice(_str(value), ("private", "public", "off"))


def _log_format(value: Any) -> str:
    return parse_choice(_str(value), ("text", "json"))


def _log_level(value: Any) -> str:
    return parse_choice(_str(value), ("debug", "info", "warning", "error", "critical")).upper()


def _comma_list(value: Any) -> tuple[str, ...]:
    """A repeatable flag's values, each possibly a comma list (as the env variable is)."""
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(part.strip() for v in items for part in str(v).split(",") if part.strip())


def _nats_urls(value: Any) -> tuple[str, ...]:
    urls = _comma_list(value)
    for url in urls:
        if not re.match(r"^(nats|tls|ws|wss)://[^/\s]+$", url):
            raise ValueError(f"{url!r} is not a NATS URL like nats://127.0.0.1:4222")
    return urls


def _subjects(value: Any) -> tuple[str, ...]:
    subjects = _comma_list(value)
    for subject in subjects:
        if not re.match(r"^[A-Za-z0-9_\-*>]+(\.[A-Za-z0-9_\-*>]+)*$", subject):
            raise ValueError(f"{subject!r} is not a NATS subject like fil.heartbeat.*.beat.*")
    if not subjects:
        raise ValueError("at least one subject")
    return subjects


def _consumer_name(value: Any) -> str:
    text = _str(value)
    if not re.match(r"^[A-Za-z0-9_-]+$", text):
        raise ValueError("letters, digits, _ and - only")
    return text


def _opt_str(value: Any) -> str | None:
    return _str(value) or None


def _alerts(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table")
    return dict(value)


#: Every setting's parser (the http_listen pair is parsed by build_config itself).
PARSERS: dict[str, Callable[[Any], Any]] = {
    "listen": _listen,
    "identity_file": _path,
    "state_db": _path,
    "reset_state": _bool,
    "allowlist_file": _opt_path,
    "legacy_metrics": _bool,
    "name": _str,
    "max_connections": _int,
    "max_connections_per_ip": _int,
    "max_streams_total": _int,
    "max_memory_mb": _int,
    "max_peers": _int,
    "max_pending_inbound": _int,
    "max_connections_per_peer": _int,
    "handshake_queue_wait": _duration,
    "first_bytes_timeout": _duration,
    "upgrade_timeout": _duration,
    "refusal_cap": _int,
    "refusal_window": _duration,
    "max_streams_per_peer": _int,
    "max_beat_size": _int,
    "max_buffer": _int,
    "rate_limit": _float,
    "rate_burst": _int,
    "flood_drops": _int,
    "flood_window": _duration,
    "beat_timeout": _duration,
    "beat_timeout_min": _duration,
    "beat_timeout_max": _duration,
    "lag_threshold": _int,
    "stall_after": _duration,
    "retention": _duration,
    "max_nodes": _int,
    "probation": _duration,
    "max_probation": _int,
    "max_probation_per_ip": _int,
    "reject_log_interval": _duration,
    "store_flush_interval": _duration,
    "history_retention": _duration,
    "expire_interval": _duration,
    "gc_freeze": _bool,
    "gc_threshold": _threshold,
    "allow_unpatched_libp2p": _bool,
    "workers": _int,
    "worker_watchdog": _duration,
    "status_page": _status_page,
    "log_format": _log_format,
    "log_level": _log_level,
    "alerts": _alerts,
    "alerts_file": _opt_path,
    "runbook_base_url": _base_url,
    "nats_url": _nats_urls,
    "nats_user": _opt_str,
    "nats_password_file": _opt_path,
    "nats_token_file": _opt_path,
    "nats_creds": _opt_path,
    "nats_nkey": _opt_path,
    "nats_tls_ca": _opt_path,
    "nats_stream": _str,
    "nats_replicas": _int,
    "nats_max_age": _duration,
    "nats_max_bytes": _int,
    "nats_spool_max": _int,
    "nats_catch_up": _duration,
    "nats_lease_ttl": _duration,
    "tail_durable": _consumer_name,
    "tail_subjects": _subjects,
    "tail_since": _duration,
}

#: Settings that must be strictly positive / at least 1.
POSITIVE = {
    "rate_limit",
    "flood_window",
    "beat_timeout",
    "beat_timeout_min",
    "beat_timeout_max",
    "stall_after",
    "retention",
    "store_flush_interval",
    "history_retention",
    "expire_interval",
    "handshake_queue_wait",
    "first_bytes_timeout",
    "upgrade_timeout",
    "refusal_window",
    "worker_watchdog",
    "nats_max_age",
    "nats_catch_up",
    "nats_lease_ttl",
    "tail_since",
}
AT_LEAST_ONE = {
    "max_connections",
    "max_connections_per_ip",
    "max_streams_per_peer",
    "max_beat_size",
    "max_streams_total",
    "max_memory_mb",
    "max_peers",
    "max_pending_inbound",
    "max_connections_per_peer",
    "max_buffer",
    "rate_burst",
    "flood_drops",
    "lag_threshold",
    "max_nodes",
    "max_probation",
    "max_probation_per_ip",
    "nats_replicas",
    "nats_max_bytes",
    "nats_spool_max",
}
