"""The agent's real `Connector`: a target's name resolved at every dial, then a heartbeat
stream opened by the network layer (`heartbeat.net.streams`, which raises only `DialFailed`
and `StreamLost`). `heartbeat.agent.loop` re-exports `Libp2pConnector`.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from heartbeat.agent.loop import BeatStream
from heartbeat.agent.targets import Target
from heartbeat.net.errors import DialFailed
from heartbeat.net.streams import StreamDialer
from heartbeat.protocol.wire import PROTOCOL_ID

__all__ = ["Libp2pConnector", "resolve_target"]


async def resolve_target(target: Target) -> str:
    """The target's multiaddr with a `/dns*` host resolved to an `/ip4` or `/ip6` one.

    py-libp2p 0.8.1's TCP transport does not dial `/dns4/…` addresses, so the agent
    resolves the name itself, at every dial (the aggregator's address may change),
    under the caller's dial deadline.
    """
    kind = target.addr.split("/", 2)[1]
    if not kind.startswith("dns"):
        return target.addr
    family = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(kind, socket.AF_UNSPEC)
    try:
        infos = await trio.socket.getaddrinfo(
            target.host, target.port, family=family, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise DialFailed(f"dns_failed:{target.host}:{exc}") from exc
    if not infos:
        raise DialFailed(f"dns_failed:{target.host}:no_address")
    # Prefer IPv4 when the name has both and the target said /dns: loopback and
    # dual-stack set-ups are far more common than IPv6-only aggregators.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    ip = str(infos[0][4][0])
    proto = "ip4" if infos[0][0] == socket.AF_INET else "ip6"
    return f"/{proto}/{ip}/tcp/{target.port}/p2p/{target.peer_id}"


class Libp2pConnector:
    """Dials targets over a running libp2p host and opens heartbeat streams.

    The network layer (`heartbeat.net.streams`) does the dialing and translates py-libp2p's
    errors into `DialFailed` / `StreamLost`; this adds the agent's name resolution.
    """

    def __init__(self, host: Any, protocol: str = PROTOCOL_ID) -> None:
        self._dialer = StreamDialer(host, protocol)

    async def connect(self, target: Target) -> BeatStream:
        return await self._dialer.open(await resolve_target(target))
