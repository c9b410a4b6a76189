"""Who gets an inbound handshake slot, who yields, who is refused at accept (pure).

The handshake gate's decisions without trio or libp2p; every method takes `now`.

- `SlotTable`: `concurrent` slots. A connection takes a free slot unless others wait;
  when contended, the address holding the most (slots held + queued) yields first: its
  oldest handshake in progress is preempted for an arrival from an address holding fewer,
  its newest waiter is shed when the queue is full, and a freed slot goes to the waiter
  whose address holds the fewest. A lone address may still use every slot.
- `RefusalWindow`: an address refused more than `limit` times within `window` seconds,
  beyond one refusal for each of its handshakes that succeeded in the same window, is
  closed at accept, before any handshake. The credit keeps a NAT'd fleet whose dialers
  fail now and then from locking itself out (the gate does not even count the failures
  of a contended gate: `heartbeat.net.gate`); an address that only fails is capped after
  `limit`, and one that earns its refusals pays a full handshake for each.
- `LogLimiter`: one log line per (cause, address) per `period`, with the count suppressed.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

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
    """Handshake slots shared fairly between addresses (see the module docstring).

    Every decision is O(log n) in the addresses present: each address keeps its running
    and queued tickets in arrival order, and three sorted indexes (`sortedcontainers`,
    trio's own dependency) name the address holding most among those running, the one
    holding most among those queued, and the queued address holding fewest with its
    oldest waiter, so a queue of thousands in a storm costs no scan per connection.
    """

    concurrent: int
    max_queue: int
    running: dict[int, tuple[str, float]] = field(default_factory=dict)
    queued: dict[int, tuple[str, float]] = field(default_factory=dict)
    _held: Counter[str] = field(default_factory=Counter)
    _running_of: dict[str, OrderedDict[int, float]] = field(default_factory=dict)
    _queued_of: dict[str, OrderedDict[int, float]] = field(default_factory=dict)
    #: (-held, ip) of addresses running / queued: the first is the hog (ties: lowest ip).
    _running_hogs: SortedList = field(default_factory=SortedList)
    _queued_hogs: SortedList = field(default_factory=SortedList)
    #: (held, oldest waiter's arrival, its ticket, ip): the first gets the next free slot.
    _fewest: SortedList = field(default_factory=SortedList)
    _keys: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    def holding(self, ip: str) -> int:
        """Slots held plus connections queued by `ip`."""
        return self._held[ip]

    def _unindex(self, ip: str) -> None:
        keys = self._keys.pop(ip, None)
        if keys is None:
            return
        for index, key in zip(
            (self._running_hogs, self._queued_hogs, self._fewest), keys, strict=True
        ):
            if key is not None:
                index.remove(key)

    def _index(self, ip: str) -> None:
        held = self._held[ip]
        running = self._running_of.get(ip)
        queued = self._queued_of.get(ip)
        r = (-held, ip) if running else None
        q = f = None
        if queued:
            q = (-held, ip)
            ticket, at = next(iter(queued.items()))
            f = (held, at, ticket, ip)
        indexes = (self._running_hogs, self._queued_hogs, self._fewest)
        for index, key in zip(indexes, (r, q, f), strict=True):
            if key is not None:
                index.add(key)
        if r or q:
            self._keys[ip] = (r, q, f)

    def arrive(self, ticket: int, ip: str, now: float) -> Arrival:
        self._unindex(ip)
        self._held[ip] += 1
        if len(self.running) < self.concurrent and not self.queued:
            self.running[ticket] = (ip, now)
            self._running_of.setdefault(ip, OrderedDict())[ticket] = now
            self._index(ip)
            return Arrival(admitted=True)
        self.queued[ticket] = (ip, now)
        self._queued_of.setdefault(ip, OrderedDict())[ticket] = now
        self._index(ip)
        preempt = self._preemptable(ip)
        shed = None
        if len(self.queued) > self.max_queue:
            shed = self._newest_waiter_of_hog()
        return Arrival(admitted=False, preempt=preempt, shed=shed)

    def _preemptable(self, ip: str) -> int | None:
        if not self._running_hogs:
            return None
        hog = self._running_hogs[0][1]
        if hog == ip or self._held[hog] <= self._held[ip]:
            return None
        return next(iter(self._running_of[hog]))  # its oldest handshake in progress

    def _newest_waiter_of_hog(self) -> int | None:
        if not self._queued_hogs:
            return None
        return next(reversed(self._queued_of[self._queued_hogs[0][1]]))

    def _pop(self, of: dict[str, OrderedDict[int, float]], ip: str, ticket: int) -> None:
        tickets = of[ip]
        del tickets[ticket]
        if not tickets:
            del of[ip]

    def leave(self, ticket: int) -> list[int]:
        """`ticket` is done (upgraded, failed, shed or cancelled); the waiters now admitted."""
        if ticket in self.running:
            ip, _ = self.running.pop(ticket)
            of = self._running_of
        elif ticket in self.queued:
            ip, _ = self.queued.pop(ticket)
            of = self._queued_of
        else:
            return []
        self._unindex(ip)
        self._pop(of, ip, ticket)
        self._held[ip] -= 1
        if self._held[ip] <= 0:
            del self._held[ip]
        self._index(ip)
        admitted: list[int] = []
        while len(self.running) < self.concurrent and self.queued:
            # The waiter whose address holds the fewest, oldest first.
            _, at, nxt, nip = self._fewest[0]
            self._unindex(nip)
            self._pop(self._queued_of, nip, nxt)
            self.running[nxt] = self.queued.pop(nxt)
            self._running_of.setdefault(nip, OrderedDict())[nxt] = at
            self._index(nip)
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
