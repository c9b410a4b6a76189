"""The link between ingest workers and worker 0: messages, presence and counters (pure).

With `workers = N` the aggregator runs N processes on one listen port and one identity
(SO_REUSEPORT: the kernel spreads new connections over them). Worker 0 owns the fleet
model, the node registry, HTTP, /metrics and alerting; workers 1..N-1 only ingest and
forward what their ingest publishes (`PeerConnected`, `PeerDisconnected`,
`BeatAccepted`) over a local stream socket, so worker 0's bus sees every event of the
fleet and consensus is computed over all nodes, exactly as with one process.

Frames: a 4-byte big-endian length, then one CBOR array whose first item names the
message. Worker → worker 0:

- `["hello", index, pid]` (first frame);
- `["events", [event, ...]]`, event = `[0, peer, remote_addr, at]` (connected),
  `[1, peer, at]` (disconnected) or `[2, peer, at, head, height, nickname, miner_address,
  genesis_cid, head_timestamp, syncing, version]` (a validated beat);
- `["counters", {name: int | {label: int}}]`, the worker's `IngestCounters`, every second.

Worker 0 → worker: `["config", {setting: value}]` (the reply to hello: the worker's whole
configuration) and `["evict", peer, reason]` (refuse a peer, e.g. the fleet is full).

Everything here is I/O-free: `aggregator/workers.py` is the trio shell.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import cbor2

from aggregator.counters import IngestCounters
from aggregator.errors import AggregatorError
from aggregator.events import BeatAccepted, Event, PeerConnected, PeerDisconnected
from heartbeat.protocol.beat import Beat, SourceState

__all__ = [
    "MAX_FRAME",
    "FrameDecoder",
    "LinkError",
    "MergedCounters",
    "PeerLedger",
    "counters_from_wire",
    "counters_to_wire",
    "encode_frame",
    "event_from_wire",
    "event_to_wire",
    "worker_zero",
]

#: Largest frame accepted: a batch of ~1,000 beats is ~200 KB.
MAX_FRAME = 8 * 1024 * 1024
_LEN = struct.Struct(">I")
_CONNECTED, _DISCONNECTED, _BEAT = 0, 1, 2


class LinkError(AggregatorError):
    """A malformed frame or message on the worker link (the link is closed)."""


def encode_frame(message: list[Any]) -> bytes:
    body = cbor2.dumps(message)
    if len(body) > MAX_FRAME:
        raise LinkError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental: `feed(bytes)` returns the complete messages so far."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buf += data
        out: list[list[Any]] = []
        while len(self._buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(self._buf)
            if size > self.max_frame:
                raise LinkError(f"frame of {size} bytes exceeds {self.max_frame}")
            end = _LEN.size + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_LEN.size : end])
            del self._buf[:end]
            try:
                message = cbor2.loads(body)
            except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
                raise LinkError(f"undecodable frame: {exc}") from exc
            if not (isinstance(message, list) and message and isinstance(message[0], str)):
                raise LinkError(f"not a message: {type(message).__name__}")
            out.append(message)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


# -- events ----------------------------------------------------------------------------


def event_to_wire(event: Event) -> list[Any]:
    if isinstance(event, BeatAccepted):
        b = event.beat
        return [
            _BEAT,
            event.peer_id,
            event.at,
            b.head,
            b.height,
            b.nickname,
            b.miner_address,
            b.genesis_cid,
            b.head_timestamp,
            b.syncing,
            b.version,
            None if b.source_state is None else b.source_state.value,
            b.source_error,
            b.head_seen_at,
            b.network_name,
        ]
    if isinstance(event, PeerConnected):
        return [_CONNECTED, event.peer_id, event.remote_addr, event.at]
    return [_DISCONNECTED, event.peer_id, event.at]


def _check(value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise LinkError(f"bad {what}: {value!r}")
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_BOOL = (bool, type(None))
_SOURCE_STATES = frozenset(state.value for state in SourceState)


def event_from_wire(item: Any) -> Event:
    """One event of an `events` message; LinkError when its shape is wrong."""
    if not isinstance(item, list) or not item:
        raise LinkError(f"bad event: {item!r}")
    kind, rest = item[0], item[1:]
    if kind == _BEAT and len(rest) == 14:
        peer, at, head, height, nick, miner, genesis, ts, syncing, version = rest[:10]
        state, error, seen, network = rest[10:]
        if state is not None and state not in _SOURCE_STATES:
            raise LinkError(f"bad source_state: {state!r}")
        beat = Beat(
            _check(head, str, "head"),
            _check(height, int, "height"),
            _check(nick, str, "nickname"),
            _check(miner, str, "miner_address"),
            _check(genesis, _OPT_STR, "genesis_cid"),
            _check(ts, _OPT_INT, "head_timestamp"),
            _check(syncing, _OPT_BOOL, "syncing"),
            _check(version, _OPT_STR, "version"),
            None if state is None else SourceState(state),
            _check(error, _OPT_STR, "source_error"),
            _check(seen, _OPT_INT, "head_seen_at"),
            _check(network, _OPT_STR, "network_name"),
        )
        return BeatAccepted(_check(peer, str, "peer"), beat, float(_check(at, (int, float), "at")))
    if kind == _CONNECTED and len(rest) == 3:
        peer, remote, at = rest
        return PeerConnected(
            _check(peer, str, "peer"),
            _check(remote, str, "remote_addr"),
            float(_check(at, (int, float), "at")),
        )
    if kind == _DISCONNECTED and len(rest) == 2:
        peer, at = rest
        return PeerDisconnected(_check(peer, str, "peer"), float(_check(at, (int, float), "at")))
    raise LinkError(f"bad event: {item!r}")


# -- counters --------------------------------------------------------------------------

#: `IngestCounters` fields that are levels, not totals: a dead worker's drop to zero.
_GAUGES = frozenset({"streams_open", "connections"})
_FIELDS = tuple(f.name for f in fields(IngestCounters))


def counters_to_wire(counters: IngestCounters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(counters, name)
        out[name] = dict(value) if isinstance(value, Counter) else value
    return out


def counters_from_wire(data: Any) -> IngestCounters:
    if not isinstance(data, dict):
        raise LinkError(f"bad counters: {type(data).__name__}")
    out = IngestCounters()
    for name in _FIELDS:
        if name not in data:
            continue
        value = data[name]
        if isinstance(getattr(out, name), Counter):
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in value.items()
            ):
                raise LinkError(f"bad counter {name}: {value!r}")
            setattr(out, name, Counter(value))
        else:
            setattr(out, name, _check(value, int, name))
    return out


def _add(into: IngestCounters, other: IngestCounters, *, gauges: bool) -> None:
    for name in _FIELDS:
        if name in _GAUGES and not gauges:
            continue
        mine = getattr(into, name)
        if isinstance(mine, Counter):
            mine.update(getattr(other, name))
        else:
            setattr(into, name, mine + getattr(other, name))


@dataclass
class MergedCounters:
    """Worker 0's own ingest counters plus every worker's last report (the /metrics view).

    Totals stay monotonic across a worker's restart: when a worker's link ends its last
    report is retired into `retired` (its levels, connections and open streams, are not:
    they closed with it), and the restarted worker reports from zero.
    """

    local: IngestCounters
    workers: dict[int, IngestCounters] = field(default_factory=dict)
    retired: IngestCounters = field(default_factory=IngestCounters)

    def update(self, index: int, counters: IngestCounters) -> None:
        self.workers[index] = counters

    def retire(self, index: int) -> None:
        last = self.workers.pop(index, None)
        if last is not None:
            _add(self.retired, last, gauges=False)

    def total(self) -> IngestCounters:
        out = IngestCounters()
        _add(out, self.local, gauges=True)
        _add(out, self.retired, gauges=False)
        for counters in self.workers.values():
            _add(out, counters, gauges=True)
        return out

    def __getattr__(self, name: str) -> Any:
        """Every `IngestCounters` field, summed: the `CountersLike` view that
        aggregator/metrics.py reads (one `total()` per field read; a scrape reads each once)."""
        if name in _FIELDS:
            return getattr(self.total(), name)
        raise AttributeError(name)


def worker_zero(pid: int, counters: IngestCounters | MergedCounters) -> dict[str, Any]:
    """This process's entry in /api/v1/workers (worker 0, with or without workers)."""
    local = counters.local if isinstance(counters, MergedCounters) else counters
    return {
        "index": 0,
        "pid": pid,
        "up": True,
        "restarts": 0,
        "connections": local.connections,
        "beats_accepted": local.beats_accepted,
    }


# -- presence --------------------------------------------------------------------------


@dataclass
class PeerLedger:
    """Which peers each worker has announced as connected and not yet as disconnected.

    When a worker dies its connections are gone but it could not say so: `forget` gives the
    `PeerDisconnected` events to publish in its name, one per connection it held.
    """

    by_worker: dict[int, Counter[str]] = field(default_factory=dict)

    def record(self, index: int, event: Event) -> None:
        if isinstance(event, PeerConnected):
            self.by_worker.setdefault(index, Counter())[event.peer_id] += 1
        elif isinstance(event, PeerDisconnected):
            peers = self.by_worker.get(index)
            if peers is not None and peers[event.peer_id] > 0:
                peers[event.peer_id] -= 1
                if peers[event.peer_id] == 0:
                    del peers[event.peer_id]

    def connected(self, index: int) -> int:
        return sum(self.by_worker.get(index, Counter()).values())

    def forget(self, index: int, at: float) -> Iterator[PeerDisconnected]:
        peers = self.by_worker.pop(index, Counter())
        for peer, count in sorted(peers.items()):
            for _ in range(count):
                yield PeerDisconnected(peer, at)
