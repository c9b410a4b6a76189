"""The network layer's errors: what the agent and the aggregator see of libp2p.

py-libp2p raises its own types (and trio's, Noise's, protobuf's, the socket's); the
network layer translates them here, at one boundary (`raise DialFailed(...) from exc`),
so that no libp2p type reaches the programs above it.
"""

from __future__ import annotations

from heartbeat.errors import HeartbeatError

__all__ = ["UNPATCHED_HINT", "CompatError", "DialFailed", "NetError", "StreamLost"]


class NetError(HeartbeatError):
    """Root of the network layer's errors."""


class DialFailed(NetError):
    """A connection could not be opened or upgraded (dial, Noise, Yamux, negotiation)."""


class StreamLost(NetError):
    """A stream ended under its user: closed, reset, or its connection dropped."""


class CompatError(NetError):
    """The installed libp2p (or noiseprotocol) is not the one the compat fixes were
    written for; `what` names the distribution or the library file."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.message = message


#: What the programs add to a `CompatError`'s one stderr line.
UNPATCHED_HINT = (
    " (refusing to start; --allow-unpatched-libp2p runs py-libp2p's stock code, which "
    "refuses every new connection after max_connections ever accepted)"
)
