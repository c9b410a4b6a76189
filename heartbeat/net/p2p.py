"""The libp2p shell: the only module that imports py-libp2p.

Everything the agent and the aggregator need from py-libp2p 0.8.1 goes through
here, with its traps disarmed (docs/ARCHITECTURE.md and the measured limits):
Noise + Yamux only, all four layers of limits set explicitly, a peerstore large
enough that the host's own key is never evicted, and the `libp2p` logger's
propagation restored by the programs' `__main__` (see `restore_libp2p_logging`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamError, StreamReset
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStore
from libp2p.rcmgr import ResourceLimits, new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from heartbeat.net.connections import (
    close_connection,
    close_peer,
    conn_peer_id,
    conn_remote_ip,
    connection_count,
    listen_multiaddrs,
    set_stream_handlers,
    stream_peer_id,
    stream_remote_ip,
    watch_connections,
)
from heartbeat.net.gate import HandshakeGate, gate_inbound_upgrades, handshake_gate
from heartbeat.net.identity import (
    IdentityFileRefused,
    load_or_create_identity,
    new_identity,
    peer_id_of,
)
from heartbeat.net.libp2p_errors import LIBP2P_ERRORS, StreamClosed

__all__ = [
    "LIBP2P_ERRORS",
    "HandshakeGate",
    "HostLimits",
    "IHost",
    "INetStream",
    "IdentityFileRefused",
    "KeyPair",
    "PeerInfo",
    "StreamClosed",
    "StreamEOF",
    "StreamError",
    "StreamReset",
    "build_host",
    "close_connection",
    "close_peer",
    "conn_peer_id",
    "conn_remote_ip",
    "connection_count",
    "gate_inbound_upgrades",
    "handshake_gate",
    "listen_multiaddrs",
    "load_or_create_identity",
    "new_identity",
    "peer_id_of",
    "peer_info_from_multiaddr",
    "restore_libp2p_logging",
    "running_host",
    "set_stream_handlers",
    "stream_peer_id",
    "stream_remote_ip",
    "watch_connections",
]

#: Inbound handshakes at once by default: CPU-bound on a LAN (~30 ms each on one core), so
#: more only adds latency; on a WAN each also waits ~1 s of round trips, so 64 at once still
#: allows ~60 new connections/s per process.
DEFAULT_PENDING_INBOUND = 64


@dataclass(frozen=True)
class HostLimits:
    """All four layers of py-libp2p's limits, in one place (pylibp2p.md).

    1. `ConnectionConfig`: `max_connections` (also the high watermark) and
       `max_connections_per_peer`;
    2. the resource manager's `ResourceLimits`: `max_connections`, `max_streams`,
       `max_memory_mb`;
    3. its `ConnectionLimits`: `max_pending_inbound`, the established caps
       (`max_connections`) and `max_connections_per_peer`;
    4. the `PeerStore`: `max_peers` (records: twice as many).

    The defaults suit an agent (a handful of outbound connections). A server
    passes `HostLimits.server(n, ...)`, which derives what it is not given.
    """

    max_connections: int = 64
    max_streams: int = 256
    max_memory_mb: int = 128
    max_peers: int = 256
    #: Inbound handshakes (Noise, Yamux, registration) in progress at once (None: 64),
    #: enforced by `gate_inbound_upgrades` (py-libp2p 0.8.1 does not enforce its own).
    max_pending_inbound: int | None = None
    #: A connection waiting longer than this for a handshake slot is closed unanswered.
    handshake_queue_wait: float = 5.0
    #: An inbound dialer silent this long (no multistream bytes) is closed, its slot freed.
    first_bytes_timeout: float = 2.0
    #: An IP refused more than this many times per `refusal_window` is closed at accept.
    refusal_cap: int = 20
    refusal_window: float = 60.0
    #: Outbound dials: one connection per peer avoids py-libp2p's fixed 250 ms
    #: wait on every dial.
    max_connections_per_peer: int = 1
    dial_timeout: float = 10.0
    upgrade_timeout: float = 10.0
    negotiate_timeout: int = 10
    #: The resource manager's per-peer connection rate limit.
    connections_per_peer_per_sec: float = 10.0
    #: Per-connection Yamux limits (`heartbeat.net.compat.yamux_limits`): inbound
    #: streams open at once (negotiating ones included; the excess is reset), pongs
    #: per second and burst, and the multistream deadline of an inbound stream.
    max_inbound_streams_per_conn: int = 8
    ping_rate: float = 10.0
    ping_burst: int = 20
    inbound_negotiate_timeout: float = 5.0

    @property
    def pending_inbound(self) -> int:
        if self.max_pending_inbound is not None:
            return self.max_pending_inbound
        return DEFAULT_PENDING_INBOUND

    @classmethod
    def server(
        cls,
        max_connections: int = 12_000,
        *,
        max_streams_total: int | None = None,
        max_memory_mb: int | None = None,
        max_peers: int | None = None,
        max_pending_inbound: int | None = None,
        max_connections_per_peer: int | None = None,
        handshake_queue_wait: float = 5.0,
        first_bytes_timeout: float = 2.0,
        upgrade_timeout: float = 10.0,
        refusal_cap: int = 20,
        refusal_window: float = 60.0,
    ) -> HostLimits:
        """A server's limits; each one left as None is derived from `max_connections`."""
        # ~70 KB per held connection (measured) plus head-room for stream buffers.
        memory = max_memory_mb if max_memory_mb is not None else max(512, max_connections // 4)
        return cls(
            max_connections=max_connections,
            max_streams=max_streams_total if max_streams_total is not None else max_connections * 4,
            max_memory_mb=memory,
            # The host's own key must never be evicted from the peerstore.
            max_peers=max_peers if max_peers is not None else max_connections * 2 + 64,
            max_pending_inbound=max_pending_inbound,
            max_connections_per_peer=max_connections_per_peer
            if max_connections_per_peer is not None
            else 2,
            connections_per_peer_per_sec=100.0,
            handshake_queue_wait=handshake_queue_wait,
            first_bytes_timeout=first_bytes_timeout,
            upgrade_timeout=upgrade_timeout,
            refusal_cap=refusal_cap,
            refusal_window=refusal_window,
        )


def peer_info_from_multiaddr(addr: str) -> PeerInfo:
    """A dialable PeerInfo from a `/…/p2p/<id>` multiaddr (validated by the caller)."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    text = addr.replace("/ipfs/", "/p2p/")
    return info_from_p2p_addr(multiaddr.Multiaddr(text))


def build_host(
    key_pair: KeyPair, limits: HostLimits | None = None, *, identify_peers: bool = True
) -> IHost:
    """A host speaking Noise + Yamux only, with every limit set explicitly.

    `identify_peers=False`: never run identify towards the remote peers (see
    `_disable_outbound_identify`); the host still answers their identify requests.
    """
    limits = limits or HostLimits()
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    connection_config = ConnectionConfig(
        max_connections=limits.max_connections,
        max_connections_per_peer=limits.max_connections_per_peer,
        high_watermark=limits.max_connections,
        # The auto-connector re-dials known peers below the low watermark; a
        # server must never dial its clients, and an agent dials by itself.
        low_watermark=0,
        min_connections=0,
        dial_timeout=limits.dial_timeout,
        inbound_upgrade_timeout=limits.upgrade_timeout,
        outbound_upgrade_timeout=limits.upgrade_timeout,
        # A stream opened to us that has not chosen its protocol by then is reset.
        inbound_stream_protocol_negotiation_timeout=limits.inbound_negotiate_timeout,
    )
    resource_manager = new_resource_manager(
        limits=ResourceLimits(
            max_connections=limits.max_connections,
            max_memory_mb=limits.max_memory_mb,
            max_streams=limits.max_streams,
        ),
        connection_limits=ConnectionLimits(
            max_pending_inbound=limits.pending_inbound,
            max_established_inbound=limits.max_connections,
            max_established_outbound=limits.max_connections,
            max_established_total=limits.max_connections,
            max_established_per_peer=max(limits.max_connections_per_peer, 1),
        ),
        enable_metrics=False,
    )
    rm: Any = resource_manager
    if hasattr(rm, "connections_per_peer_per_sec"):
        rm.connections_per_peer_per_sec = limits.connections_per_peer_per_sec
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): _muxer_class(limits)},
        peerstore_opt=PeerStore(max_peers=limits.max_peers, max_records=limits.max_peers * 2),
        connection_config=connection_config,
        resource_manager=resource_manager,
        enable_metrics=False,
        enable_mDNS=False,
        enable_upnp=False,
        negotiate_timeout=limits.negotiate_timeout,
    )
    _disable_auto_connector(host)
    gate_inbound_upgrades(
        host,
        limits.pending_inbound,
        limits.handshake_queue_wait,
        first_bytes_timeout=limits.first_bytes_timeout,
        refusal_cap=limits.refusal_cap,
        refusal_window=limits.refusal_window,
    )
    if not identify_peers:
        _disable_outbound_identify(host)
    return host


def _muxer_class(limits: HostLimits) -> type[Yamux]:
    """`HeartbeatYamux` with `limits`' per-connection caps (process-wide: py-libp2p 0.8.1
    builds its Yamux class by name, `heartbeat.net.compat.yamux_muxer`)."""
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux, YamuxLimits
    from heartbeat.net.refusals import REFUSALS

    HeartbeatYamux.configure(
        YamuxLimits(
            max_inbound_streams_per_conn=limits.max_inbound_streams_per_conn,
            ping_rate=limits.ping_rate,
            ping_burst=limits.ping_burst,
        ),
        REFUSALS.add,
    )
    return HeartbeatYamux


def _disable_outbound_identify(host: IHost) -> None:
    """Do not identify remote peers on connect (py-libp2p 0.8.1 does on every connection).

    Neither side of a heartbeat needs the other's protocols or listen addresses: the
    agent dials a known multiaddr and opens a known protocol, the aggregator only reads.
    On the aggregator each identify is a stream, a multistream negotiation, a protobuf
    and peerstore records per accepted connection (docs/CAPACITY.md, section 1). The
    host's identify handler stays: remote peers may still identify us.
    """
    if not (hasattr(host, "_schedule_identify") and hasattr(host, "_on_notifee_connected")):
        logging.getLogger(__name__).warning("identify_not_disabled reason=unknown_host_internals")
        return

    def _schedule_identify(peer_id: Any, *, reason: str = "") -> None:
        return None

    async def _on_connected(conn: Any) -> None:
        return None

    host_any: Any = host
    host_any._schedule_identify = _schedule_identify
    host_any._on_notifee_connected = _on_connected


def _disable_auto_connector(host: IHost) -> None:
    """Stop the swarm's auto-connector from dialing peers out of the peerstore.

    A low watermark of 0 is not enough in 0.8.1: the connector aims at the
    midpoint of the watermarks, so a server would dial back (up to thousands of)
    agents' ephemeral addresses after every disconnect.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        return

    async def _never() -> None:
        return None

    connector.maybe_connect = _never


@asynccontextmanager
async def running_host(
    key_pair: KeyPair,
    listen: list[str] | None = None,
    limits: HostLimits | None = None,
    *,
    identify_peers: bool = True,
) -> AsyncIterator[IHost]:
    """Run a host (listening on `listen`, if any) for the duration of the block."""
    host = build_host(key_pair, limits, identify_peers=identify_peers)
    addrs = [multiaddr.Multiaddr(a) for a in (listen or [])]
    async with host.run(listen_addrs=addrs):
        try:
            yield host
        finally:
            # Leaving `host.run` stops the swarm by cancellation, which also aborts
            # the clean-up that closes the TCP listener: a leaked listener on a
            # SO_REUSEPORT port keeps accepting (and dropping) dials meant for a
            # restarted server. Close the host first, shielded, under a deadline.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await host.close()


def restore_libp2p_logging() -> None:
    """`import libp2p` turns off propagation of its logger; programs turn it back on."""
    logging.getLogger("libp2p").propagate = True
