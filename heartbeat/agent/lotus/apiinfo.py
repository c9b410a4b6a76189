"""Parse the ecosystem's `FULLNODE_API_INFO` / `MINER_API_INFO` values.

Pure. A value is one or more comma-separated endpoints, each `TOKEN:ADDRESS` or a bare
`ADDRESS`; the token split follows current Lotus: when the text does not start with `/`,
it is split at the first `:` unless that colon begins `://`. ADDRESS is a multiaddr
(`/ip4|/ip6|/dns4|/dns6|/dns/HOST/tcp/PORT[/http|/https|/ws|/wss|/tls[/http|/ws]]`) or a
URL (`http`, `https`, `ws`, `wss`). Full nodes are reached at `/rpc/v1`, lotus-miner at
`/rpc/v0` (the only version it serves).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from heartbeat.errors import ConfigError

__all__ = ["ApiInfo", "parse_api_info"]

_FULL_EXAMPLE = "e.g. TOKEN:/ip4/127.0.0.1/tcp/1234/http or https://lotus.example:1234"
_MINER_EXAMPLE = "e.g. TOKEN:/ip4/127.0.0.1/tcp/2345/http"

_HOST_PROTOCOLS = ("ip4", "ip6", "dns4", "dns6", "dns")
# trailing multiaddr protocols after /tcp/PORT -> TLS or not
_TRANSPORTS: dict[tuple[str, ...], bool] = {
    (): False,
    ("http",): False,
    ("ws",): False,
    ("https",): True,
    ("wss",): True,
    ("tls",): True,
    ("tls", "http"): True,
    ("tls", "ws"): True,
}


@dataclass(frozen=True, slots=True)
class ApiInfo:
    """One reachable Lotus API endpoint."""

    url: str  # http(s)://host:port/rpc/vN, for JSON-RPC over HTTP
    ws_url: str  # ws(s)://host:port/rpc/vN, for ChainNotify
    token: str | None = None  # sent as "Authorization: Bearer TOKEN"

    def __repr__(self) -> str:  # never print the token
        token = "set" if self.token else "none"
        return f"ApiInfo(url={self.url!r}, token={token})"


class _Bad(ValueError):
    pass


def _split_token(item: str) -> tuple[str | None, str]:
    if item.startswith("/"):
        return None, item
    colon = item.find(":")
    if colon < 0 or item[colon + 1 : colon + 3] == "//":
        return None, item
    token = item[:colon].strip()
    return (token or None), item[colon + 1 :].strip()


def _from_multiaddr(addr: str) -> tuple[bool, str]:
    """(tls, host:port) of a multiaddr."""
    parts = addr.split("/")
    if parts[0] != "" or len(parts) < 5:
        raise _Bad(f"multiaddr {addr!r} is too short")
    proto, host, tcp, port = parts[1:5]
    rest = tuple(p for p in parts[5:] if p != "")
    if proto not in _HOST_PROTOCOLS:
        raise _Bad(f"multiaddr {addr!r}: unsupported protocol /{proto}")
    if tcp != "tcp":
        raise _Bad(f"multiaddr {addr!r}: expected /tcp/PORT after the host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _Bad(f"multiaddr {addr!r}: bad port {port!r}")
    if not host:
        raise _Bad(f"multiaddr {addr!r}: empty host")
    try:
        if proto == "ip4":
            ipaddress.IPv4Address(host)
        elif proto == "ip6":
            host = f"[{ipaddress.IPv6Address(host)}]"
    except ValueError as exc:
        raise _Bad(f"multiaddr {addr!r}: bad address {host!r}") from exc
    if rest not in _TRANSPORTS:
        raise _Bad(f"multiaddr {addr!r}: unsupported transport /{'/'.join(rest)}")
    return _TRANSPORTS[rest], f"{host}:{int(port)}"


def _parse_one(item: str, *, miner: bool) -> ApiInfo:
    token, addr = _split_token(item)
    if not addr:
        raise _Bad("no address after the token")
    version = "v0" if miner else "v1"
    if addr.startswith("/"):
        tls, hostport = _from_multiaddr(addr)
        path = f"/rpc/{version}"
    else:
        try:
            split = urlsplit(addr)
            split.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise _Bad(f"bad URL {addr!r}") from exc
        if split.scheme not in ("http", "https", "ws", "wss") or not split.hostname:
            raise _Bad(f"{addr!r} is neither a multiaddr nor an http(s)/ws(s) URL")
        tls = split.scheme in ("https", "wss")
        hostport = split.netloc
        path = split.path.rstrip("/")
        if not path.endswith(("/rpc/v0", "/rpc/v1")):
            path = f"{path}/rpc/{version}"
    http_scheme, ws_scheme = ("https", "wss") if tls else ("http", "ws")
    return ApiInfo(
        url=urlunsplit((http_scheme, hostport, path, "", "")),
        ws_url=urlunsplit((ws_scheme, hostport, path, "", "")),
        token=token,
    )


def parse_api_info(value: str, *, setting: str, miner: bool = False) -> list[ApiInfo]:
    """Parse an API info value into its endpoints, in the given order.

    Raises `ConfigError(setting, ...)` naming the setting, with an example of a good value.
    """
    example = _MINER_EXAMPLE if miner else _FULL_EXAMPLE
    text = value.strip()
    if not text:
        raise ConfigError(setting, f"empty value; expected {example}")
    result: list[ApiInfo] = []
    for n, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise ConfigError(setting, f"endpoint {n} is empty; expected {example}")
        try:
            result.append(_parse_one(item, miner=miner))
        except _Bad as exc:
            raise ConfigError(setting, f"endpoint {n}: {exc}; expected {example}") from None
    return result
