"""Who gets an inbound handshake slot, who yields, who is refused at accept (pure).

The handshake gate's decisions without trio or libp2p; every method takes `now`.

- `SlotTable`: `concurrent` slots. A connection takes a free slot unless others wait;
  when contended, the address holding the most (slots held + queued) yields first: its
  oldest handshake in progress is preempted for an arrival from an address holding fewer,
  its newest waiter is shed when the queue is full, and a freed slot goes to the waiter
  whose address holds the fewest. A lone address may still use every slot.
- `RefusalWindow`: an address refused more than `limit` times within `window` seconds,
  beyond one refusal for each of its handshakes that succeeded in the same window, is
  closed at accept, before any handshake. The credit keeps a NAT'd fleet reconnecting
  through a saturated gate (its dialers give up mid-handshake, counted as failures of
  the one address) from locking itself out; an address that only fails is capped after
  `limit`, and one that earns its refusals pays a full handshake for each.
- `LogLimiter`: one log line per (cause, address) per `period`, with the count suppressed.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["Arrival", "LogLimiter", "RefusalWindow", "SlotTable"]


@dataclass(frozen=True)
class Arrival:
    """What to do with a new connection: run now (`admitted`) or wait; and the tickets
    to drop for it (`preempt`: a running handshake to cancel, `shed`: a waiter to close)."""

    admitted: bool
    preempt: int | None = None
    shed: int | None = None


@dataclass
class SlotTable:
    """Handshake slots shared fairly between addresses (see the module docstring)."""

    concurrent: int
    max_queue: int
    running: dict[int, tuple[str, float]] = field(default_factory=dict)
    queued: dict[int, tuple[str, float]] = field(default_factory=dict)
    _held: Counter[str] = field(default_factory=Counter)

    def holding(self, ip: str) -> int:
        """Slots held plus connections queued by `ip`."""
        return self._held[ip]

    def arrive(self, ticket: int, ip: str, now: float) -> Arrival:
        self._held[ip] += 1
        if len(self.running) < self.concurrent and not self.queued:
            self.running[ticket] = (ip, now)
            return Arrival(admitted=True)
        self.queued[ticket] = (ip, now)
        preempt = self._preemptable(ip)
        shed = None
        if len(self.queued) > self.max_queue:
            shed = self._newest_waiter_of_hog()
        return Arrival(admitted=False, preempt=preempt, shed=shed)

    def _hog(self, among: dict[int, tuple[str, float]]) -> str | None:
        ips = {ip for ip, _ in among.values()}
        return max(sorted(ips), key=lambda ip: self._held[ip], default=None)

    def _preemptable(self, ip: str) -> int | None:
        hog = self._hog(self.running)
        if hog is None or hog == ip or self._held[hog] <= self._held[ip]:
            return None
        return min(
            (t for t, (i, _) in self.running.items() if i == hog),
            key=lambda t: self.running[t][1],
        )

    def _newest_waiter_of_hog(self) -> int | None:
        hog = self._hog(self.queued)
        if hog is None:
            return None
        return max(
            (t for t, (i, _) in self.queued.items() if i == hog),
            key=lambda t: (self.queued[t][1], t),
        )

    def leave(self, ticket: int) -> list[int]:
        """`ticket` is done (upgraded, failed, shed or cancelled); the waiters now admitted."""
        entry = self.running.pop(ticket, None) or self.queued.pop(ticket, None)
        if entry is None:
            return []
        self._held[entry[0]] -= 1
        if self._held[entry[0]] <= 0:
            del self._held[entry[0]]
        admitted: list[int] = []
        while len(self.running) < self.concurrent and self.queued:
            # The waiter whose address holds the fewest, oldest first.
            nxt = min(
                self.queued,
                key=lambda t: (self._held[self.queued[t][0]], self.queued[t][1], t),
            )
            self.running[nxt] = self.queued.pop(nxt)
            admitted.append(nxt)
        return admitted


@dataclass
class RefusalWindow:
    """Refusals and upgrades per address in a sliding window (see the module docstring).

    Each address keeps at most `_BUCKETS` + 1 counters of `window / _BUCKETS` seconds, so
    the window is exact to within one bucket and an address's memory does not grow with
    its rate; at most `max_addresses` are kept, the least recently seen dropped first.
    """

    limit: int
    window: float
    max_addresses: int = 65_536
    _buckets: OrderedDict[str, deque[list[float]]] = field(default_factory=OrderedDict)

    def _counts(self, ip: str, now: float) -> deque[list[float]] | None:
        buckets = self._buckets.get(ip)
        if buckets is None:
            return None
        while buckets and buckets[0][0] <= now - self.window:
            buckets.popleft()
        if not buckets:
            del self._buckets[ip]
            return None
        return buckets

    def _add(self, ip: str, now: float, slot: int) -> None:
        buckets = self._counts(ip, now)
        if buckets is None:
            buckets = self._buckets[ip] = deque()
            if len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
        width = self.window / _BUCKETS
        start = now - now % width if width > 0 else now
        if not buckets or buckets[-1][0] != start:
            buckets.append([start, 0.0, 0.0])
        buckets[-1][slot] += 1

    def refused(self, ip: str, now: float, *, after_upgrade: bool = False) -> None:
        """One refusal of `ip`; `after_upgrade`: of a connection whose handshake already
        succeeded (a peer not on the allowlist), whose credit it takes back."""
        self._add(ip, now, 1)
        if after_upgrade:
            for bucket in reversed(self._buckets[ip]):
                if bucket[2] > 0:
                    bucket[2] -= 1
                    break

    def upgraded(self, ip: str, now: float) -> None:
        """A handshake from `ip` succeeded: it earns the address one more refusal."""
        self._add(ip, now, 2)

    def capped(self, ip: str, now: float) -> bool:
        if self.limit <= 0:
            return False
        buckets = self._counts(ip, now)
        if buckets is None:
            return False
        refused = sum(b[1] for b in buckets)
        upgraded = sum(b[2] for b in buckets)
        return refused > self.limit + upgraded


_BUCKETS = 12


@dataclass
class LogLimiter:
    """One line per key per `period`; `allow` returns how many were suppressed, or None."""

    period: float = 60.0
    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)

    def allow(self, cause: str, ip: str, now: float) -> int | None:
        key = (cause, ip)
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] += 1
            return None
        if len(self._last) > 4096:
            self._last = {k: t for k, t in self._last.items() if now - t < self.period}
        self._last[key] = now
        return self._suppressed.pop(key, 0)
