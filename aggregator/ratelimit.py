"""Per-peer rate limiting and log limiting for the ingest handler.

Pure: no trio, no clock reads; every call takes `now` (seconds, any monotonic
origin). The ingest shell owns one `PeerRateLimiter` and one `LogLimiter`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

__all__ = ["LogLimiter", "PeerRateLimiter", "RateDecision", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: `rate` tokens per second, holding at most `burst`.

    Starts full, so a peer may send `burst` beats at once after connecting.
    """

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens if available; False means the event is over the limit."""
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class RateDecision(Enum):
    ACCEPT = "accept"
    DROP = "drop"
    #: The peer keeps flooding: the caller disconnects it.
    DISCONNECT = "disconnect"


@dataclass(slots=True)
class _PeerState:
    bucket: TokenBucket
    #: Times of recent drops; created at the first drop (an empty deque is ~0.7 KB, one
    #: per connected peer, and most peers never exceed their rate).
    drops: deque[float] | None = None


class PeerRateLimiter:
    """One token bucket per peer, plus flood detection.

    A beat over the limit is dropped; a peer with more than `flood_drops` drops
    within `flood_window` seconds is to be disconnected.
    """

    def __init__(
        self, rate: float, burst: int, *, flood_drops: int = 50, flood_window: float = 60.0
    ) -> None:
        if flood_drops < 1 or flood_window <= 0:
            raise ValueError("flood_drops must be >= 1 and flood_window > 0")
        TokenBucket(rate, burst)  # validates rate and burst once, up front
        self.rate = rate
        self.burst = burst
        self.flood_drops = flood_drops
        self.flood_window = flood_window
        self._peers: dict[str, _PeerState] = {}

    def check(self, peer: str, now: float) -> RateDecision:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(TokenBucket(self.rate, self.burst))
        if state.bucket.allow(now):
            return RateDecision.ACCEPT
        drops = state.drops
        if drops is None:
            drops = state.drops = deque()
        drops.append(now)
        while drops and drops[0] <= now - self.flood_window:
            drops.popleft()
        if len(drops) > self.flood_drops:
            drops.clear()
            return RateDecision.DISCONNECT
        return RateDecision.DROP

    def forget(self, peer: str) -> None:
        """Drop the peer's state (its last stream ended)."""
        self._peers.pop(peer, None)

    def __len__(self) -> int:
        return len(self._peers)


class LogLimiter:
    """Allows one log line per key per `interval` seconds; memory stays bounded."""

    def __init__(self, interval: float, *, max_keys: int = 100_000) -> None:
        if interval < 0:
            raise ValueError("interval must be >= 0")
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        #: How many lines were held back per key since its last logged line.
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._prune(now)
        self._last[key] = now
        return True

    def take_suppressed(self, key: str) -> int:
        """How many lines were held back for `key` (and reset the count)."""
        return self.suppressed.pop(key, 0)

    def _prune(self, now: float) -> None:
        expired = [k for k, t in self._last.items() if now - t >= self.interval]
        for key in expired:
            del self._last[key]
            self.suppressed.pop(key, None)
        if len(self._last) >= self.max_keys:
            # Everything is recent: forget the oldest half rather than grow.
            for key in sorted(self._last, key=self._last.__getitem__)[: self.max_keys // 2]:
                del self._last[key]
                self.suppressed.pop(key, None)
