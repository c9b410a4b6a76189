"""Counts of the agent's Lotus calls: failures by kind, latency by method. Pure.

The Lotus client records into one `RpcStats`; the metrics collector reads it at scrape
time. Both label sets are bounded: `ErrorKind` for failures, `METHODS` (anything else is
"other") for latency.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from heartbeat.agent.health import ErrorKind

__all__ = ["LATENCY_BUCKETS", "METHODS", "Latency", "RpcStats", "method_label"]

#: Upper bounds (seconds) of the latency histogram; +Inf is implied.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = (
    "ChainHead",
    "ChainNotify",
    "SyncState",
    "StateNetworkName",
    "StateGetNetworkParams",
    "ChainGetGenesis",
    "ActorAddress",
)


def method_label(method: str) -> str:
    """`Filecoin.ChainHead` -> `ChainHead`; unknown methods -> `other`."""
    name = method.removeprefix("Filecoin.")
    return name if name in METHODS else "other"


@dataclass(slots=True)
class Latency:
    """One histogram: per-bucket (non-cumulative) counts, the last slot for +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus exposes them, +Inf last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class RpcStats:
    """Failures by kind (every kind always present) and latency by method."""

    errors: dict[ErrorKind, int] = field(default_factory=lambda: dict.fromkeys(ErrorKind, 0))
    latency: dict[str, Latency] = field(default_factory=dict)

    def failed(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1

    def answered(self, method: str, seconds: float) -> None:
        """A call that got an HTTP answer (success or JSON-RPC error) after `seconds`."""
        label = method_label(method)
        hist = self.latency.get(label)
        if hist is None:
            hist = self.latency[label] = Latency()
        hist.observe(seconds)
