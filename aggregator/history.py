"""Node history: state transitions, epoch height samples and uptime arithmetic.

Pure (no I/O, no clock reads; functions take `now`). `HistoryTracker` is fed successive
fleet snapshots (or `(peer_id, state, height, lag, error)` rows) and emits a `Transition` when
a node's state changes and a `HeightSample` once per epoch slot (unix time // 30 s: the
network's block delay, so slots line up with mainnet's epochs) for a node that has a head.
Nodes on probation are not tracked: their history starts when they leave it.

Uptime without scanning: every transition carries the node's running `Totals` (seconds
observed, available, healthy since its history began), so the seconds of any window are
`totals_at(mark at the window's end) - totals_at(mark at its start)`: two look-ups per node.
`available` is up and beating with a working source (state not down/source_down); `healthy`
is in_consensus. The pseudo-state `unknown` covers the aggregator's own down time (written
at start for the gap since its last alive mark): it counts as nothing, so gaps are left out
of the denominators, as is the time before a node's history starts.

Heights are stored per node and hour as a chunk (`ChunkEncoder`): per sample the slot delta,
the height delta (zigzag) and the lag (zigzag + 1, 0 for none) as varints; the shell
compresses a chunk with zlib, so a node advancing one epoch per slot costs a few bytes an hour.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from aggregator.nodestate import FleetSnapshot

__all__ = [
    "EPOCH",
    "HOUR_SLOTS",
    "NOT_AVAILABLE",
    "UNKNOWN",
    "WINDOWS",
    "ChunkEncoder",
    "HeightSample",
    "HistoryTracker",
    "Mark",
    "Observed",
    "Row",
    "Totals",
    "Transition",
    "Uptime",
    "decode_chunk",
    "gaps_between",
    "snapshot_rows",
    "totals_at",
    "uptime",
    "uptime_between",
]

#: Seconds per epoch slot (Filecoin's block delay).
EPOCH = 30
#: Epoch slots per stored height chunk (one hour).
HOUR_SLOTS = 3600 // EPOCH
#: The aggregator's own down time: neither available, healthy nor observed.
UNKNOWN = "unknown"
HEALTHY = "in_consensus"
#: States in which a node is not available (up, beating, with a working source).
NOT_AVAILABLE = frozenset({"down", "source_down", UNKNOWN})
#: States with no meaningful height: no height samples.
_NO_HEIGHT = NOT_AVAILABLE
#: Uptime windows: name -> seconds.
WINDOWS: Mapping[str, int] = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}


class Totals(NamedTuple):
    """Seconds since a node's history began: observed (not in a gap), available, healthy."""

    observed: float = 0.0
    available: float = 0.0
    healthy: float = 0.0


ZERO = Totals()


class Mark(NamedTuple):
    """A node's state from `at` on, and its totals at `at`."""

    at: float
    state: str
    totals: Totals


class Transition(NamedTuple):
    peer_id: str
    at: float
    state: str
    error: str | None
    totals: Totals  # at `at`, before the new state accrues


class HeightSample(NamedTuple):
    peer_id: str
    slot: int  # unix seconds // EPOCH
    height: int
    lag: int | None


class Observed(NamedTuple):
    transitions: list[Transition]
    samples: list[HeightSample]


#: What the tracker reads per node: peer id, state value, height, lag, source error.
Row = tuple[str, str, int, int | None, str | None]


def totals_at(mark: Mark | None, t: float) -> Totals:
    """A node's totals at `t`, given its last mark at or before `t` (None: none yet)."""
    if mark is None:
        return ZERO
    seconds = max(0.0, t - mark.at)
    state, (observed, available, healthy) = mark.state, mark.totals
    if state == UNKNOWN or seconds == 0.0:
        return mark.totals
    if state in NOT_AVAILABLE:
        return Totals(observed + seconds, available, healthy)
    if state == HEALTHY:
        return Totals(observed + seconds, available + seconds, healthy + seconds)
    return Totals(observed + seconds, available + seconds, healthy)


class Uptime(NamedTuple):
    available: float | None  # fraction of the observed seconds; None: nothing observed
    healthy: float | None
    observed_seconds: float
    excluded_seconds: float  # the rest of the window: aggregator gaps, before history

    def as_json(self) -> dict[str, float | None]:
        """Fractions to 6 decimals (0.0001 %: 2.6 s of 30 days), whole seconds: short floats
        serialise fast, and every node in `/api/v1/nodes` carries three of these."""
        a, h = self.available, self.healthy
        return {
            "available": None if a is None else round(a, 6),
            "healthy": None if h is None else round(h, 6),
            "excluded_seconds": round(self.excluded_seconds),
        }


def uptime(start: Mark | None, start_at: float, end: Mark | None, end_at: float) -> Uptime:
    """Uptime over [start_at, end_at] from the node's last marks at or before each edge."""
    return uptime_between(totals_at(start, start_at), totals_at(end, end_at), end_at - start_at)


def uptime_between(a: Totals, b: Totals, span: float) -> Uptime:
    """Uptime over a window `span` seconds long, from the totals at its start and end."""
    observed = b.observed - a.observed
    span = max(0.0, span)
    if observed <= 0.0:
        return Uptime(None, None, 0.0, span)
    return Uptime(
        min(1.0, max(0.0, (b.available - a.available) / observed)),
        min(1.0, max(0.0, (b.healthy - a.healthy) / observed)),
        observed,
        max(0.0, span - observed),
    )


def gaps_between(runs: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The aggregator's down time between runs `(started, alive_until)`, in start order."""
    out: list[tuple[float, float]] = []
    previous: float | None = None
    for started, alive_until in sorted(runs):
        if previous is not None and started > previous:
            out.append((previous, started))
        previous = alive_until if previous is None else max(previous, alive_until)
    return out


def snapshot_rows(snap: FleetSnapshot) -> Iterator[Row]:
    """The tracker's rows of a snapshot: nodes through probation only."""
    for v in snap.nodes:
        if not v.probation:
            yield v.peer_id, v.state.value, v.height, v.lag_epochs, v.source_error


class HistoryTracker:
    """Detects transitions and samples heights, given successive observations of the fleet.

    `seed(marks)` starts from the stored last marks (after a restart: `unknown` for the gap),
    so a node whose state is unchanged since is not reported again. A peer missing from an
    observation (expired from the fleet) keeps its mark: its totals go on from it when it
    comes back, so the time away counts in its last state (down). `forget` drops marks whose
    history was pruned away.
    """

    def __init__(self) -> None:
        self._marks: dict[str, Mark] = {}
        self._slots: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def seed(self, marks: Mapping[str, Mark]) -> None:
        self._marks.update(marks)

    def mark(self, peer_id: str) -> Mark | None:
        return self._marks.get(peer_id)

    @property
    def marks(self) -> Mapping[str, Mark]:
        return self._marks

    def observe_snapshot(self, snap: FleetSnapshot) -> Observed:
        """`observe` over a snapshot's nodes through probation (the loop inlined: at 10,000
        nodes a second, building a row per node cost as much as the rest)."""
        marks, slots = self._marks, self._slots
        transitions: list[Transition] = []
        samples: list[HeightSample] = []
        now = snap.taken_at
        slot = int(now // EPOCH)
        for v in snap.nodes:
            if v.probation:
                continue
            peer_id, state = v.peer_id, v.state
            mark = marks.get(peer_id)
            if mark is None or mark.state != state:
                totals = totals_at(mark, now)
                marks[peer_id] = Mark(now, state.value, totals)
                transitions.append(Transition(peer_id, now, state.value, v.source_error, totals))
            if state not in _NO_HEIGHT and slots.get(peer_id, -1) < slot:
                slots[peer_id] = slot
                samples.append(HeightSample(peer_id, slot, v.height, v.lag_epochs))
        return Observed(transitions, samples)

    def observe(self, rows: Iterable[Row], now: float) -> Observed:
        marks, slots = self._marks, self._slots
        transitions: list[Transition] = []
        samples: list[HeightSample] = []
        slot = int(now // EPOCH)
        for peer_id, state, height, lag, error in rows:
            mark = marks.get(peer_id)
            if mark is None or mark.state != state:
                totals = totals_at(mark, now)
                marks[peer_id] = Mark(now, state, totals)
                transitions.append(Transition(peer_id, now, state, error, totals))
            if state not in _NO_HEIGHT and slots.get(peer_id, -1) < slot:
                slots[peer_id] = slot
                samples.append(HeightSample(peer_id, slot, height, lag))
        return Observed(transitions, samples)

    def forget(self, peer_ids: Iterable[str]) -> None:
        for peer_id in peer_ids:
            self._marks.pop(peer_id, None)
            self._slots.pop(peer_id, None)

    def gap_transitions(self, at: float) -> list[Transition]:
        """`unknown` from `at` (the last alive mark of the previous run) for every seeded
        node whose last state is known; the marks move on to it."""
        out: list[Transition] = []
        for peer_id, mark in self._marks.items():
            if mark.state != UNKNOWN and mark.at <= at:
                totals = totals_at(mark, at)
                self._marks[peer_id] = Mark(at, UNKNOWN, totals)
                out.append(Transition(peer_id, at, UNKNOWN, None, totals))
        return out


# -- height chunks -----------------------------------------------------------------------


def _varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


_LOW = bytes(range(0x80))


def _unzigzag(n: int) -> int:
    return n >> 1 if not n & 1 else -((n + 1) >> 1)


class ChunkEncoder:
    """One node's height samples of one hour (`hour` = slot // HOUR_SLOTS), appended in order."""

    __slots__ = ("_height", "_slot", "hour", "raw")

    def __init__(self, hour: int) -> None:
        self.hour = hour
        self.raw = bytearray()
        self._slot = hour * HOUR_SLOTS - 1
        self._height = 0

    @classmethod
    def resume(cls, hour: int, raw: bytes) -> ChunkEncoder:
        enc = cls(hour)
        for slot, height, _ in decode_chunk(hour, raw):
            enc._slot, enc._height = slot, height
        enc.raw = bytearray(raw)
        return enc

    def add(self, slot: int, height: int, lag: int | None) -> bool:
        """Append a sample; False (ignored) if it is not after the last one in this hour."""
        if slot <= self._slot or slot // HOUR_SLOTS != self.hour:
            return False
        _varint(self.raw, slot - self._slot)
        _varint(self.raw, _zigzag(height - self._height))
        _varint(self.raw, 0 if lag is None else _zigzag(lag) + 1)
        self._slot, self._height = slot, height
        return True


def decode_chunk(hour: int, raw: bytes) -> list[tuple[int, int, int | None]]:
    """The `(slot, height, lag)` samples of a chunk; a truncated tail is dropped."""
    values: list[int] = []
    n = shift = 0
    # Most varints are one byte: only the part up to the last multi-byte one is walked here.
    end = len(raw.rstrip(_LOW))
    head = raw[: end + 1] if end else b""
    for byte in head:
        n |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        values.append(n)
        n = shift = 0
    if not shift:  # the head ended on a whole varint
        values.extend(raw[end + 1 :] if end else raw)
    out: list[tuple[int, int, int | None]] = []
    slot, height = hour * HOUR_SLOTS - 1, 0
    for i in range(0, len(values) - 2, 3):
        slot += values[i]
        height += _unzigzag(values[i + 1])
        lag = values[i + 2]
        out.append((slot, height, None if lag == 0 else _unzigzag(lag - 1)))
    return out
