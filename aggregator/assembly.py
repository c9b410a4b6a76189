"""What the aggregator is built from its configuration: the fleet policy, py-libp2p's host
limits, the allowlist file, and the dialable addresses it prints at start. Re-exported by
`aggregator.app`; the ingest workers (aggregator/worker.py) build from the same.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from pathlib import Path

from aggregator.config import AggregatorConfig, parse_allowlist, setting_label
from aggregator.fleet import FleetPolicy
from heartbeat.errors import ConfigError
from heartbeat.net import p2p

__all__ = [
    "dialable_multiaddrs",
    "fleet_policy",
    "host_limits",
    "load_allowlist",
    "local_ip_addresses",
]

log = logging.getLogger("aggregator.app")


def fleet_policy(config: AggregatorConfig) -> FleetPolicy:
    return FleetPolicy(
        lag_epochs=config.lag_threshold,
        stall_after=config.stall_after,
        beat_timeout_default=config.beat_timeout,
        beat_timeout_min=config.beat_timeout_min,
        beat_timeout_max=config.beat_timeout_max,
        retention=config.retention,
        max_nodes=config.max_nodes,
        probation=config.probation,
        max_probation=config.max_probation,
        max_probation_per_ip=config.max_probation_per_ip,
    )


def host_limits(config: AggregatorConfig) -> p2p.HostLimits:
    """All four layers of py-libp2p's limits from the config (unset ones derived)."""
    return p2p.HostLimits.server(
        config.max_connections,
        max_streams_total=config.max_streams_total,
        max_memory_mb=config.max_memory_mb,
        max_peers=config.max_peers,
        max_pending_inbound=config.max_pending_inbound,
        max_connections_per_peer=config.max_connections_per_peer,
        handshake_queue_wait=config.handshake_queue_wait,
        first_bytes_timeout=config.first_bytes_timeout,
        upgrade_timeout=config.upgrade_timeout,
        refusal_cap=config.refusal_cap,
        refusal_window=config.refusal_window,
    )


def load_allowlist(path: Path | None) -> frozenset[str] | None:
    """Read and parse the allowlist file (None: everyone is allowed)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
        return parse_allowlist(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(setting_label("allowlist_file"), f"{path}: {exc}") from exc


def local_ip_addresses() -> tuple[list[str], list[str]]:
    """This machine's IPv4 and IPv6 addresses (loopback first), best effort."""
    v4: list[str] = ["127.0.0.1"]
    v6: list[str] = ["::1"]
    candidates: set[tuple[int, str]] = set()
    try:
        for family, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            candidates.add((family, str(sockaddr[0])))
    except OSError as exc:
        log.debug("hostname_lookup_failed err=%r", exc)
    # The address the default route would use (a UDP connect sends nothing).
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                candidates.add((family, str(sock.getsockname()[0])))
        except OSError:
            continue  # no route for this family
    for kind, addr in sorted(candidates):
        if kind == socket.AF_INET and addr not in v4 and not addr.startswith("127."):
            v4.append(addr)
        elif kind == socket.AF_INET6 and addr not in v6 and not addr.startswith("fe80"):
            v6.append(addr.split("%")[0])
    return v4, v6


def dialable_multiaddrs(
    listening: Iterable[str], peer_id: str, v4: Iterable[str], v6: Iterable[str]
) -> list[str]:
    """Full `/…/tcp/N/p2p/<id>` addresses; wildcard listeners expand to `v4`/`v6`."""
    v4, v6 = list(v4), list(v6)
    out: list[str] = []
    for addr in listening:
        parts = addr.split("/")  # ["", "ip4", host, "tcp", port]
        hosts = [parts[2]] if len(parts) > 2 else []
        if addr.startswith("/ip4/0.0.0.0/"):
            hosts = v4
        elif addr.startswith("/ip6/::/"):
            hosts = v6
        for host in hosts:
            full = "/".join([*parts[:2], host, *parts[3:]]) + f"/p2p/{peer_id}"
            if full not in out:
                out.append(full)
    return out
