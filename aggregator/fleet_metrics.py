"""The per-node and per-network fleet families as exposition text, written by hand.

The production path of /metrics for the fleet; `aggregator/fleet_reference.py` is the same
families through prometheus_client, the reference the tests compare with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aggregator.exposition import PREFIX, _header, _labels, _num, escape_label_value
from aggregator.fleet import NodeState
from aggregator.propagation import HEAD_DELAY_BUCKETS
from heartbeat.protocol.beat import SourceState

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot, NodeView

__all__ = ["FleetRenderer"]

_STATES = tuple(NodeState)

# -- the fleet families, hand-written ----------------------------------------------------------
#
# Why by hand: prometheus_client builds a Metric, a label dict and a Sample tuple per series,
# then escapes and sorts every label set again in every family. At 10,000 nodes (16 series each)
# that took ~1.4 s per scrape, in a worker thread that holds the GIL against the event loop.
# Here a node's label string is escaped once and cached until one of its labels changes, and a
# series is one f-string. Same names, HELP/TYPE lines, labels and values as `FleetCollector`
# (tests/test_metrics.py parses both and compares them).
_N = PREFIX + "node_"
_H_HEIGHT = _header(_N + "height", "gauge", "Height of the node's head tipset (epochs).")
_H_HEAD_TS = _header(_N + "head_timestamp_seconds", "gauge", "Timestamp of the node's head tipset.")
_H_LAST_BEAT = _header(
    _N + "last_beat_timestamp_seconds", "gauge", "When the node's last beat arrived."
)
_H_CHANGED = _header(
    _N + "head_changed_timestamp_seconds", "gauge", "When the node's head last changed."
)
_H_UP = _header(_N + "up", "gauge", "1 when the node is connected and beating in time.")
_H_STATE = _header(_N + "state", "gauge", "1 for the node's current state, 0 for the others.")
_H_LAG = _header(_N + "lag_epochs", "gauge", "Network height minus node height (epochs).")
_H_SYNCING = _header(_N + "syncing", "gauge", "1 when the node reports it is syncing.")
_H_BEATS = _header(_N + "beats", "counter", "Beats received from the node.")
_H_HASH = _header(
    _N + "head_hash", "gauge", "Head CID set hashed to an integer below 2^52 (0: no head)."
)
_H_INFO = _header(_N + "info", "gauge", "Node metadata (always 1).")
_H_PROBATION = _header(
    _N + "probation", "gauge", "1 while the node is on probation (not alerted on, not voting)."
)
_H_SOURCE = _header(
    _N + "source_state",
    "gauge",
    "1 for the state the node's agent reports of its head source, 0 for the others.",
)
_H_DELAY = _header(
    PREFIX + "head_delay_seconds",
    "histogram",
    "How late nodes learned each new head: HeadSeenAt - HeadTimestamp (seconds).",
)
_NETWORK_FAMILIES = (
    ("network_height", "Highest height among up nodes."),
    ("network_expected_height", "Height expected from genesis time and block delay."),
    ("nodes", "Nodes per state."),
    ("nodes_in_consensus", "Up nodes in consensus."),
    ("nodes_in_dispute", "Up nodes not in consensus."),
    ("consensus_head_hash", "Consensus head hashed like node_head_hash (0: none)."),
)
_H_NET = {name: _header(PREFIX + name, "gauge", doc) for name, doc in _NETWORK_FAMILIES}
_LEGACY = (
    ("connected_nodes", "Nodes up (legacy)."),
    ("nodes_in_consensus", "Nodes in consensus (legacy)."),
    ("nodes_in_dispute", "Nodes in dispute (legacy)."),
)
_H_LEGACY = {name: _header(name, "gauge", doc) for name, doc in _LEGACY}
_STATE_SUFFIXES = tuple((s, f',state="{s.value}"}} ') for s in _STATES)
#: Per reported SourceState: the tail of each of the node's source_state lines (label, value).
_SOURCE_TAILS = {
    current.value: tuple(f',state="{s.value}"}} {1 if s is current else 0}\n' for s in SourceState)
    for current in SourceState
}
#: The `le` label values as prometheus_client writes them ("0.5", "1.0", ...).
_LE = tuple(repr(float(b)) for b in HEAD_DELAY_BUCKETS)

#: What a node's cached label strings depend on, besides its peer id.
_LabelKey = tuple[str, str, str, str | None, str]


class FleetRenderer:
    """The fleet families of a snapshot as exposition text, with per-node label strings cached.

    The cache holds the nodes of the last render only (a forgotten node leaves it at the next).
    Safe to call from one worker thread at a time or several: each render reads the previous
    cache and replaces it whole.
    """

    def __init__(self, *, legacy: bool = False, name: str = "aggregator") -> None:
        self.legacy = legacy
        self.name = name  # the legacy families' `aggregator` label
        self._cache: dict[str, tuple[_LabelKey, str, str]] = {}

    def render(self, snap: FleetSnapshot | None) -> str:
        out: list[str] = []
        for _ in self._steps(snap, out, len(snap.nodes) + 1 if snap is not None else 1):
            pass
        return "".join(out)

    async def render_chunked(
        self,
        snap: FleetSnapshot | None,
        checkpoint: Callable[[], Awaitable[object]],
        batch: int = 500,
    ) -> str:
        """`render`, awaiting `checkpoint()` (the event loop's turn) every `batch` nodes."""
        out: list[str] = []
        for _ in self._steps(snap, out, batch):
            await checkpoint()
        return "".join(out)

    def _steps(self, snap: FleetSnapshot | None, out: list[str], batch: int) -> Iterator[None]:
        """Append the exposition to `out`; yield after every `batch` rows of work."""
        if snap is None:
            return
        old = self._cache
        cache: dict[str, tuple[_LabelKey, str, str]] = {}
        rows: list[tuple[str, NodeView]] = []
        infos: list[str] = []
        for i, v in enumerate(snap.nodes, 1):
            key = (v.nickname, v.miner_address, v.network, v.version, v.remote_address)
            entry = old.get(v.peer_id)
            if entry is None or entry[0] != key:
                base = _labels(
                    peer_id=v.peer_id, nickname=v.nickname, miner=v.miner_address, network=v.network
                )
                extra = _labels(version=v.version or "", remote_address=v.remote_address)
                info = base + "," + extra
                entry = (key, "{" + base, f"{_N}info{{{info}}} 1\n")
            cache[v.peer_id] = entry
            rows.append((entry[1], v))
            infos.append(entry[2])
            if i % batch == 0:
                yield
        self._cache = cache

        families: tuple[tuple[str, Callable[[list[tuple[str, NodeView]]], list[str]]], ...] = (
            (_H_HEIGHT, lambda part: [f"{_N}height{b}}} {v.height}\n" for b, v in part]),
            (
                _H_HEAD_TS,
                lambda part: [
                    f"{_N}head_timestamp_seconds{b}}} {_num(v.head_timestamp)}\n"
                    for b, v in part
                    if v.head_timestamp is not None
                ],
            ),
            (
                _H_LAST_BEAT,
                lambda part: [
                    f"{_N}last_beat_timestamp_seconds{b}}} {_num(v.last_beat)}\n" for b, v in part
                ],
            ),
            (
                _H_CHANGED,
                lambda part: [
                    f"{_N}head_changed_timestamp_seconds{b}}} {_num(v.head_changed_at)}\n"
                    for b, v in part
                ],
            ),
            (_H_UP, lambda part: [f"{_N}up{b}}} {1 if v.up else 0}\n" for b, v in part]),
            (
                _H_STATE,
                lambda part: [
                    f"{_N}state{b}{suffix}{1 if v.state is s else 0}\n"
                    for b, v in part
                    for s, suffix in _STATE_SUFFIXES
                ],
            ),
            (
                _H_LAG,
                lambda part: [
                    f"{_N}lag_epochs{b}}} {_num(v.lag_epochs)}\n"
                    for b, v in part
                    if v.lag_epochs is not None
                ],
            ),
            (
                _H_SYNCING,
                lambda part: [f"{_N}syncing{b}}} {1 if v.syncing else 0}\n" for b, v in part],
            ),
            (
                _H_BEATS,
                lambda part: [f"{_N}beats_total{b}}} {_num(v.beats_received)}\n" for b, v in part],
            ),
            (_H_HASH, lambda part: [f"{_N}head_hash{b}}} {_num(v.head_hash)}\n" for b, v in part]),
            (
                _H_PROBATION,
                lambda part: [f"{_N}probation{b}}} {1 if v.probation else 0}\n" for b, v in part],
            ),
            (
                _H_SOURCE,
                lambda part: [
                    f"{_N}source_state{b}{tail}"
                    for b, v in part
                    if v.source_state is not None
                    for tail in _SOURCE_TAILS[v.source_state]
                ],
            ),
        )
        add, extend = out.append, out.extend
        for header, lines in families:
            add(header)
            for start in range(0, len(rows), batch):
                extend(lines(rows[start : start + batch]))
                yield
        add(_H_INFO)
        extend(infos)
        self._networks(snap, out)
        self._head_delays(snap, out)
        if self.legacy:
            self._legacy(snap, out, self.name)

    @staticmethod
    def _networks(snap: FleetSnapshot, out: list[str]) -> None:
        nets = [(f'{{network="{escape_label_value(n.name)}"', n) for n in snap.networks.values()]
        add = out.append
        add(_H_NET["network_height"])
        for b, n in nets:
            if n.height is not None:
                add(f"{PREFIX}network_height{b}}} {_num(n.height)}\n")
        add(_H_NET["network_expected_height"])
        for b, n in nets:
            if n.expected_height is not None:
                add(f"{PREFIX}network_expected_height{b}}} {_num(n.expected_height)}\n")
        add(_H_NET["nodes"])
        for b, n in nets:
            for s, suffix in _STATE_SUFFIXES:
                add(f"{PREFIX}nodes{b}{suffix}{_num(n.counts.get(s, 0))}\n")
        for name, attr in (
            ("nodes_in_consensus", "in_consensus"),
            ("nodes_in_dispute", "in_dispute"),
            ("consensus_head_hash", "consensus_head_hash"),
        ):
            add(_H_NET[name])
            for b, n in nets:
                add(f"{PREFIX}{name}{b}}} {_num(getattr(n, attr))}\n")

    @staticmethod
    def _head_delays(snap: FleetSnapshot, out: list[str]) -> None:
        name = PREFIX + "head_delay_seconds"
        add = out.append
        add(_H_DELAY)
        for network, h in snap.head_delays.items():
            label = f'network="{escape_label_value(network)}"'
            for le, count in zip(_LE, h.buckets, strict=True):
                add(f'{name}_bucket{{le="{le}",{label}}} {_num(count)}\n')
            add(f'{name}_bucket{{le="+Inf",{label}}} {_num(h.count)}\n')
            add(f"{name}_count{{{label}}} {_num(h.count)}\n")
            add(f"{name}_sum{{{label}}} {_num(h.total)}\n")

    @staticmethod
    def _legacy(snap: FleetSnapshot, out: list[str], name_label: str) -> None:
        label = escape_label_value(name_label)
        nets = snap.networks.values()
        for name, value in (
            ("connected_nodes", sum(n.nodes_up for n in nets)),
            ("nodes_in_consensus", sum(n.in_consensus for n in nets)),
            ("nodes_in_dispute", sum(n.in_dispute for n in nets)),
        ):
            out.append(_H_LEGACY[name])
            out.append(f'{name}{{aggregator="{label}"}} {_num(value)}\n')
