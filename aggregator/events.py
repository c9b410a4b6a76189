"""What ingest publishes on the bus (pure: frozen dataclasses, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heartbeat.protocol.wire import Beat

__all__ = ["BeatAccepted", "Event", "PeerConnected", "PeerDisconnected"]


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A peer opened its first heartbeat stream."""

    peer_id: str
    remote_addr: str
    at: float  # wall-clock unix seconds


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """A peer's last heartbeat stream ended."""

    peer_id: str
    at: float


@dataclass(frozen=True, slots=True)
class BeatAccepted:
    """A validated beat passed the rate limit."""

    peer_id: str
    beat: Beat
    at: float


Event = PeerConnected | PeerDisconnected | BeatAccepted
