"""Refusals counted by reason (pure): what the network layer turned away, and why.

One counter, shared by every part that refuses a peer (the Yamux limits here, the
handshake gate): each adds its reasons as `RefusalReason`-like strings, and the
aggregator exports them as `fil_heartbeat_refusals_total{reason=...}`. The reasons are a
closed set chosen by the code, never by the peer, so the label stays bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["REFUSALS", "RefusalCounter", "RefusalReason"]


class RefusalReason(StrEnum):
    """Why a connection or stream was refused; the value is the Prometheus label."""

    #: A Yamux stream over `max_inbound_streams_per_conn` (reset at once).
    YAMUX_STREAM_CAP = "yamux_stream_cap"
    #: Yamux pings over the per-connection budget (pong not sent).
    YAMUX_PING_BUDGET = "yamux_ping_budget"
    #: A connection closed for exceeding its ping budget by far.
    YAMUX_PING_FLOOD = "yamux_ping_flood"


@dataclass
class RefusalCounter:
    """Refusals so far, by reason (a string: other parts add their own reasons)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str | RefusalReason, n: int = 1) -> None:
        self.counts[reason.value if isinstance(reason, RefusalReason) else reason] += n

    def __getitem__(self, reason: str | RefusalReason) -> int:
        return self.counts[reason.value if isinstance(reason, RefusalReason) else reason]

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self.counts.items()))


#: The process's refusals (the network layer is process-wide, as py-libp2p is).
REFUSALS = RefusalCounter()
