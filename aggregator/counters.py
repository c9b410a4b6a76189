"""The ingest's counters (pure): what /metrics exports about ingest, per process."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["IngestCounters"]


@dataclass
class IngestCounters:
    """The ingest's self metrics; the Prometheus collector reads them at scrape time."""

    beats_received: int = 0
    beats_accepted: int = 0
    beats_rejected: Counter[str] = field(default_factory=Counter)
    beats_rate_limited: int = 0
    decode_errors: Counter[str] = field(default_factory=Counter)
    streams_open: int = 0
    connections: int = 0
    peers_refused: Counter[str] = field(default_factory=Counter)
    peers_disconnected: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    #: Inbound connections closed before their handshake (no slot within the queue wait).
    handshakes_shed: int = 0
