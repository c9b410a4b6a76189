"""Beat targets: validated `/…/tcp/<port>/p2p/<peer-id>` multiaddrs.

Pure: parses text by hand (no libp2p, no network, no DNS lookups). The libp2p
shell turns a validated `Target.addr` into something dialable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import base58

from heartbeat.errors import ConfigError

__all__ = [
    "EXAMPLE_TARGET",
    "Target",
    "parse_peer_id",
    "parse_target",
]

EXAMPLE_TARGET = (
    "/ip4/203.0.113.7/tcp/9081/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
)

_HOST_PROTOCOLS = ("ip4", "ip6", "dns4", "dns6", "dns")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Multihash codes a peer id may use: identity (inlined Ed25519 keys) and sha2-256.
_MULTIHASH_IDENTITY = 0x00
_MULTIHASH_SHA256 = 0x12


@dataclass(frozen=True, slots=True)
class Target:
    """One aggregator the agent beats to, each with its own independent loop."""

    addr: str  # normalised multiaddr text, always with /p2p/
    peer_id: str
    host: str
    port: int
    beat_period: float = 3.0
    reconnect_period: float = 10.0
    role: str = "primary"  # "primary" or "alerts"; a bounded metrics label

    @property
    def name(self) -> str:
        """A short, log-friendly name: role and address."""
        return f"{self.role}:{self.addr}"


def parse_peer_id(text: str) -> str | None:
    """Return `text` if it is a base58btc peer id (multihash), else None."""
    if not text or len(text) > 128:
        return None
    try:
        raw = base58.b58decode(text)
    except ValueError:
        return None
    if len(raw) < 2 or raw[0] not in (_MULTIHASH_IDENTITY, _MULTIHASH_SHA256):
        return None
    if raw[0] == _MULTIHASH_SHA256 and raw[1] != 32:
        return None
    if raw[1] != len(raw) - 2:
        return None
    return text


def _valid_dns(name: str) -> bool:
    if len(name) > 253:
        return False
    labels = name.rstrip(".").split(".")
    return all(_DNS_LABEL.match(label) for label in labels)


def _valid_host(proto: str, value: str) -> bool:
    if proto == "ip4":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return False
        return True
    if proto == "ip6":
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return False
        return True
    return _valid_dns(value)


def parse_target(text: str, *, setting: str = "--target / FIL_HEARTBEAT_TARGETS") -> Target:
    """Validate one target multiaddr; `ConfigError(setting, …)` with an example otherwise."""

    def bad(why: str) -> ConfigError:
        return ConfigError(setting, f"{why} in {text!r}; expected e.g. {EXAMPLE_TARGET}")

    stripped = text.strip()
    if not stripped.startswith("/"):
        raise bad("a multiaddr must start with '/'")
    parts = stripped.split("/")[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if len(parts) != 6:
        if len(parts) == 4 and parts[2] == "tcp":
            raise bad("missing /p2p/<peer-id>")
        raise bad("expected /<ip4|ip6|dns4|dns6|dns>/<host>/tcp/<port>/p2p/<peer-id>")
    proto, host, transport, port_text, p2p, peer = parts
    if proto not in _HOST_PROTOCOLS:
        raise bad(f"unsupported protocol /{proto}")
    if not _valid_host(proto, host):
        raise bad(f"invalid /{proto} host {host!r}")
    if transport != "tcp":
        raise bad(f"unsupported transport /{transport} (only /tcp)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"invalid tcp port {port_text!r}")
    if p2p not in ("p2p", "ipfs"):
        raise bad(f"expected /p2p/<peer-id>, found /{p2p}")
    if parse_peer_id(peer) is None:
        raise bad(f"invalid peer id {peer!r}")
    port = int(port_text)
    return Target(
        addr=f"/{proto}/{host}/tcp/{port}/p2p/{peer}",
        peer_id=peer,
        host=host,
        port=port,
    )
