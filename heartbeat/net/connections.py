"""Connection and stream helpers over a running host: peer ids, remote IPs, closing,
counting, listen addresses, connection events. py-libp2p never applies its per-peer limits
and offers no per-IP view: the aggregator's ingest counts connections and streams itself
through these. Failures of a connection already gone are not errors (`quietly`).
`heartbeat.net.p2p` re-exports every name.
"""

from __future__ import annotations

from typing import Any

from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from heartbeat.net.libp2p_errors import quietly

__all__ = [
    "close_connection",
    "close_peer",
    "conn_peer_id",
    "conn_remote_ip",
    "connection_count",
    "listen_multiaddrs",
    "set_stream_handlers",
    "stream_peer_id",
    "stream_remote_ip",
    "watch_connections",
]

# py-libp2p never applies its per-peer limits and offers no per-IP view: the
# ingest counts connections and streams itself through these.


def stream_peer_id(stream: INetStream) -> str:
    """The remote peer id (base58) of a stream."""
    return stream.muxed_conn.peer_id.to_base58()


def stream_remote_ip(stream: INetStream) -> str | None:
    """The remote IP address of a stream's connection, if known."""
    try:
        remote = stream.get_remote_address()
    except (AttributeError, OSError):
        return None
    return str(remote[0]) if remote else None


def conn_peer_id(conn: Any) -> str:
    """The remote peer id (base58) of a connection (`INetConn`)."""
    return str(conn.muxed_conn.peer_id.to_base58())


def conn_remote_ip(conn: Any) -> str | None:
    """The remote IP address of a connection (`INetConn`), if known."""
    for addr in conn.get_transport_addresses():
        for proto in ("ip4", "ip6"):
            try:
                return str(addr.value_for_protocol(proto))
            except LookupError:  # multiaddr's ProtocolLookupError: not this family
                continue
    remote = getattr(conn.muxed_conn, "get_remote_address", lambda: None)()
    return str(remote[0]) if remote else None


async def close_connection(conn: Any) -> None:
    """Close one connection (`INetConn`) and every stream on it; one already gone is fine."""
    await quietly("close_connection", conn.close)


async def close_peer(host: IHost, peer_id: str) -> None:
    """Close every connection to `peer_id`; connections already gone are fine."""
    await quietly("close_peer", lambda: host.get_network().close_peer(ID.from_base58(peer_id)))


def connection_count(host: IHost) -> int:
    return int(host.get_network().get_total_connections())


def listen_multiaddrs(host: IHost) -> list[str]:
    """The addresses the host really listens on (ports resolved), without /p2p."""
    out: list[str] = []
    for listener in host.get_network().listeners.values():
        out.extend(str(addr) for addr in listener.get_addrs())
    return out


def set_stream_handlers(host: IHost, protocols: list[str], handler: Any) -> None:
    """Register `handler` (an async callable taking a stream) for every protocol id."""
    for protocol in protocols:
        host.set_stream_handler(TProtocol(protocol), handler)


def watch_connections(host: IHost, on_connected: Any, on_disconnected: Any) -> None:
    """Call `await on_connected(conn)` / `await on_disconnected(conn)` on connection events.

    The callbacks run inside the swarm's event path: they must be quick and must
    not raise (py-libp2p isolates notifee errors, but only by logging them).
    """
    from libp2p.abc import INotifee

    class _Watcher(INotifee):
        async def opened_stream(self, network: Any, stream: Any) -> None:
            return None

        async def closed_stream(self, network: Any, stream: Any) -> None:
            return None

        async def connected(self, network: Any, conn: Any) -> None:
            await on_connected(conn)

        async def disconnected(self, network: Any, conn: Any) -> None:
            await on_disconnected(conn)

        async def listen(self, network: Any, multiaddr: Any) -> None:
            return None

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            return None

    host.get_network().register_notifee(_Watcher())
