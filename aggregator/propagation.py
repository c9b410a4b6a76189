"""How late nodes learn each head: per-node delay rings, the per-network delay histogram, and
the recent tipsets of each network with who saw them how late.

Pure: no I/O, no clock reads. A node's head delay is HeadSeenAt - HeadTimestamp (when its
agent learned the head minus the head's own timestamp), known only when the beat carries both;
a negative delay (clocks apart) counts as 0.

- `DelayRing`: a node's last `RING_SIZE` distinct heads' delays and their p50/p90, recomputed
  when a head is added (once per head, never per beat).
- `DelayCounter`: the cumulative histogram behind `fil_heartbeat_head_delay_seconds{network}`
  (buckets `HEAD_DELAY_BUCKETS`), observed once per node per new head; `frozen()` gives the
  immutable `DelayHistogram` a snapshot carries.
- `Propagation`: per network key, the last `KEEP_EPOCHS` heights seen (null rounds simply
  absent), for each the head most of its reporters had and, per node, the delay of the first
  head it reported at that height. Bounded: heights beyond `KEEP_EPOCHS` are dropped oldest
  first (with the per-node marks below them), and at most `max_seen` nodes are listed per
  height (the others only counted).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Container

__all__ = [
    "HEAD_DELAY_BUCKETS",
    "KEEP_EPOCHS",
    "RING_SIZE",
    "DelayCounter",
    "DelayHistogram",
    "DelayRing",
    "Propagation",
    "Seen",
    "TipsetSeen",
    "head_delay",
    "percentile",
]

#: Upper bounds (seconds) of the head delay histogram's buckets; +Inf is implied.
HEAD_DELAY_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0)
#: Distinct heads per node whose delay is kept for its percentiles.
RING_SIZE = 32
#: Heights kept per network for /api/v1/propagation.
KEEP_EPOCHS = 60
#: Nodes listed per height (the others are counted in `TipsetSeen.seen_total`).
MAX_SEEN = 2000


def head_delay(head_seen_at_ms: int | None, head_timestamp: int | None) -> float | None:
    """HeadSeenAt (unix ms) - HeadTimestamp (unix s) in seconds, clamped at 0; None unless
    both are known."""
    if head_seen_at_ms is None or head_timestamp is None:
        return None
    delay = head_seen_at_ms / 1000.0 - head_timestamp
    return delay if delay > 0.0 else 0.0


def percentile(ordered: list[float], q: float) -> float:
    """The `q` quantile (0..1) of a sorted, non-empty list, nearest rank."""
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


class DelayRing:
    """A node's recent head delays: the last `size` values, p50 and p90 kept current."""

    __slots__ = ("_next", "_values", "p50", "p90", "size")

    def __init__(self, size: int = RING_SIZE) -> None:
        self.size = size
        self._values: list[float] = []
        self._next = 0
        self.p50: float | None = None
        self.p90: float | None = None

    def __len__(self) -> int:
        return len(self._values)

    def add(self, delay: float) -> None:
        if len(self._values) < self.size:
            self._values.append(delay)
        else:
            self._values[self._next] = delay
            self._next = (self._next + 1) % self.size
        ordered = sorted(self._values)
        self.p50 = percentile(ordered, 0.5)
        self.p90 = percentile(ordered, 0.9)


@dataclass(frozen=True, slots=True)
class DelayHistogram:
    """An immutable histogram: `buckets[i]` = observations <= HEAD_DELAY_BUCKETS[i]
    (cumulative), then `count` (the +Inf bucket) and `total` (the sum)."""

    buckets: tuple[int, ...]
    count: int
    total: float


class DelayCounter:
    """The mutable histogram of one network's head delays."""

    __slots__ = ("_counts", "count", "total")

    def __init__(self) -> None:
        self._counts = [0] * (len(HEAD_DELAY_BUCKETS) + 1)  # per bucket, not cumulative
        self.count = 0
        self.total = 0.0

    def observe(self, delay: float) -> None:
        self._counts[bisect_left(HEAD_DELAY_BUCKETS, delay)] += 1
        self.count += 1
        self.total += delay

    def frozen(self) -> DelayHistogram:
        cumulative: list[int] = []
        running = 0
        for c in self._counts[:-1]:
            running += c
            cumulative.append(running)
        return DelayHistogram(tuple(cumulative), self.count, self.total)


@dataclass(frozen=True, slots=True)
class Seen:
    peer_id: str
    nickname: str
    delay: float  # seconds


@dataclass(frozen=True, slots=True)
class TipsetSeen:
    """One height of one network: its head (the one most reporters had), timestamp, who saw
    it how late (earliest first)."""

    height: int
    timestamp: int | None
    head: tuple[str, ...]  # sorted CIDs
    seen: tuple[Seen, ...]
    seen_total: int

    def as_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "timestamp": self.timestamp,
            "head": list(self.head),
            "seen": [
                {"peer_id": s.peer_id, "nickname": s.nickname, "delay": s.delay} for s in self.seen
            ],
            "seen_total": self.seen_total,
        }


class _Height:
    __slots__ = ("heads", "seen", "seen_total", "timestamp")

    def __init__(self, timestamp: int | None) -> None:
        self.timestamp = timestamp
        self.heads: Counter[frozenset[str]] = Counter()
        self.seen: dict[str, Seen] = {}
        self.seen_total = 0


class _Network:
    __slots__ = ("heights", "reported")

    def __init__(self) -> None:
        self.heights: dict[int, _Height] = {}
        self.reported: dict[str, int] = {}  # peer id -> last height it reported here


class Propagation:
    """Per network: the last `keep` heights and who saw each how late (see the module doc)."""

    __slots__ = ("_networks", "keep", "max_seen")

    def __init__(self, keep: int = KEEP_EPOCHS, max_seen: int = MAX_SEEN) -> None:
        self.keep = keep
        self.max_seen = max_seen
        self._networks: dict[str, _Network] = {}

    def observe(
        self,
        network: str,
        peer_id: str,
        nickname: str,
        height: int,
        head: frozenset[str],
        head_timestamp: int | None,
        delay: float | None,
    ) -> None:
        """One node's beat: counted the first time it reports `height` with a delay."""
        if delay is None or not head:
            return
        net = self._networks.get(network)
        if net is None:
            net = self._networks[network] = _Network()
        if net.reported.get(peer_id) == height:
            return  # the per-beat fast path: nothing new from this node
        net.reported[peer_id] = height
        heights = net.heights
        entry = heights.get(height)
        if entry is None:
            if len(heights) >= self.keep:
                lowest = min(heights)
                if height < lowest:
                    return
                del heights[lowest]
                floor = min(heights) if heights else height
                stale = [p for p, h in net.reported.items() if h < floor]
                for p in stale:
                    del net.reported[p]
            entry = heights[height] = _Height(head_timestamp)
        if peer_id in entry.seen:
            return
        entry.heads[head] += 1
        entry.seen_total += 1
        if entry.timestamp is None:
            entry.timestamp = head_timestamp
        if len(entry.seen) < self.max_seen:
            entry.seen[peer_id] = Seen(peer_id, nickname, delay)

    def retain(self, keys: Container[str]) -> None:
        """Forget the networks not in `keys`."""
        for key in [k for k in self._networks if k not in keys]:
            del self._networks[key]

    def networks(self) -> list[str]:
        return sorted(self._networks)

    def tipsets(self, network: str, epochs: int = 30) -> list[TipsetSeen]:
        """The newest `epochs` heights of `network`, newest first ([] for an unknown one)."""
        net = self._networks.get(network)
        if net is None or epochs <= 0:
            return []
        out = []
        for height in sorted(net.heights, reverse=True)[:epochs]:
            e = net.heights[height]
            head = min(e.heads.items(), key=lambda kv: (-kv[1], sorted(kv[0])))[0]
            seen = sorted(e.seen.values(), key=lambda s: (s.delay, s.peer_id))
            out.append(
                TipsetSeen(height, e.timestamp, tuple(sorted(head)), tuple(seen), e.seen_total)
            )
        return out
