"""The fleet model's types: states, policy, the persisted record, the snapshot views, and the
mutable per-node state (`Node`, `Pending`) that `aggregator.fleet` keeps.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from aggregator.consensus import NO_HEAD_HASH, head_hash
from aggregator.networks import network_key
from heartbeat.protocol.tipset import HeadParseError, parse_head

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aggregator.propagation import DelayHistogram, DelayRing

__all__ = [
    "ALL_STATES",
    "FleetPolicy",
    "FleetSnapshot",
    "NetworkView",
    "Node",
    "NodeRecord",
    "NodeState",
    "NodeView",
    "Pending",
    "remote_host",
]

log = logging.getLogger("aggregator.fleet")


class NodeState(StrEnum):
    """A node's state; the values are Prometheus label values."""

    IN_CONSENSUS = "in_consensus"
    LAGGING = "lagging"
    FORKED = "forked"
    STALLED = "stalled"
    SYNCING = "syncing"
    DOWN = "down"
    #: Beating, but its head source (Lotus) gives no usable head: the agent says so
    #: (`Beat.source_down`), or the beat has no head at height 0 without an ok source.
    SOURCE_DOWN = "source_down"


ALL_STATES = tuple(NodeState)


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    """Thresholds of the fleet model (see the module doc for how each is used)."""

    lag_epochs: int = 5
    stall_after: float = 300.0
    beat_timeout_default: float = 30.0
    beat_timeout_factor: float = 3.0
    beat_timeout_min: float = 10.0
    beat_timeout_max: float = 120.0
    fork_window_epochs: int = 2
    fork_min_votes: int = 2
    retention: float = 86400.0
    max_nodes: int = 20000
    block_delay_default: float = 30.0
    #: How long a new peer id must keep beating before it counts (0: no probation). The
    #: aggregator's setting defaults to 1 minute; the pure model's to none.
    probation: float = 0.0
    #: Beats a node must also have sent to leave probation: its first and two more, i.e.
    #: about two beat periods' worth.
    probation_beats: int = 3
    #: Peers on probation (connected without a beat yet, or beating but not through
    #: probation) at most, in total and per remote IP.
    max_probation: int = 1000
    max_probation_per_ip: int = 64

    def beat_timeout(self, period: float | None) -> float:
        """How long a node may stay silent before it is DOWN, given its observed beat period."""
        if period is None:
            return self.beat_timeout_default
        timeout = self.beat_timeout_factor * period
        return min(self.beat_timeout_max, max(self.beat_timeout_min, timeout))


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What the store persists about a node (times are unix seconds)."""

    peer_id: str
    nickname: str
    miner_address: str
    head: str
    height: int
    head_timestamp: int | None
    genesis_cid: str | None
    syncing: bool | None
    version: str | None
    first_seen: float
    last_beat: float
    beats_received: int
    remote_address: str
    beat_period: float | None
    head_changed_at: float
    height_changed_at: float


class NodeView(NamedTuple):
    """One node as seen at snapshot time.

    A NamedTuple rather than a frozen dataclass: snapshots build 10,000 of these per scrape and
    a tuple is built about eight times faster. `_asdict()` gives the JSON shape.
    """

    peer_id: str
    nickname: str
    miner_address: str
    network_key: str
    network: str
    state: NodeState
    up: bool
    connected: bool
    remote_address: str
    head: str
    head_cids: tuple[str, ...]  # sorted
    head_hash: int
    height: int
    head_timestamp: int | None
    head_age_seconds: float | None
    lag_epochs: int | None  # network height - height; None when the network has no up node
    syncing: bool | None
    version: str | None
    first_seen: float
    last_beat: float
    beats_received: int
    beat_period: float | None
    beat_timeout: float
    head_changed_at: float
    height_changed_at: float
    #: Not through probation yet: shown, but not persisted, not alerted on, not voting.
    probation: bool = False
    #: What the agent says of its head source (`SourceState` value; None from older agents).
    source_state: str | None = None
    source_error: str | None = None
    head_seen_at: float | None = None  # unix seconds when the agent learned its head
    #: Over the node's recent distinct heads: HeadSeenAt - HeadTimestamp (seconds, >= 0).
    head_delay_p50: float | None = None
    head_delay_p90: float | None = None
    #: The aggregators holding its connection now (origins, sorted; this one's included when
    #: it has one). Without a stream (no --nats-url) this aggregator's name or nothing.
    held_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkView:
    """One network (genesis) as seen at snapshot time."""

    key: str
    name: str
    height: int | None  # highest height among up nodes
    expected_height: int | None
    genesis_timestamp: int | None
    block_delay: float
    consensus_head: frozenset[str] | None
    consensus_head_hash: int
    consensus_votes: int  # up nodes at the top height with the consensus head
    nodes_total: int
    nodes_up: int
    counts: Mapping[NodeState, int]  # every state present, zeros included
    in_consensus: int
    in_dispute: int  # up nodes not in consensus (source_down ones excluded: no head to judge)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """An immutable picture of the fleet; `nodes` sorted by peer id."""

    taken_at: float
    nodes: tuple[NodeView, ...]
    networks: Mapping[str, NetworkView]
    pending_peers: int = 0  # connected peers that have not sent a beat yet
    probation_nodes: int = 0  # nodes in `nodes` still on probation (not in `networks`)
    #: Per network key: the head delays observed so far (`fil_heartbeat_head_delay_seconds`).
    head_delays: Mapping[str, DelayHistogram] = field(default_factory=dict)
    _index: Mapping[str, NodeView] = field(default_factory=dict, repr=False, compare=False)

    def node(self, peer_id: str) -> NodeView | None:
        return self._index.get(peer_id)


class Node:
    """Mutable per-node state inside the fleet."""

    __slots__ = (
        "beats",
        "connections",
        "delay_p50",
        "delay_p90",
        "delays",
        "first_beat",
        "first_seen",
        "genesis_cid",
        "graduated",
        "head_changed_at",
        "head_cids",
        "head_hash",
        "head_seen_at",
        "head_sorted",
        "head_text",
        "head_timestamp",
        "height",
        "height_changed_at",
        "last_beat",
        "last_seen",
        "miner",
        "net_key",
        "network_name",
        "nickname",
        "peer_id",
        "period",
        "remote",
        "remote_addr",
        "session_last_beat",
        "source_down",
        "source_error",
        "source_state",
        "syncing",
        "version",
    )

    def __init__(self, peer_id: str, now: float) -> None:
        self.peer_id = peer_id
        self.nickname = ""
        self.miner = ""
        self.head_text = ""
        self.head_cids: frozenset[str] = frozenset()
        self.head_sorted: tuple[str, ...] = ()
        self.head_hash = NO_HEAD_HASH
        self.height = 0
        self.head_timestamp: int | None = None
        self.genesis_cid: str | None = None
        self.net_key = network_key(None)
        self.syncing: bool | None = None
        self.version: str | None = None
        self.first_seen = now
        self.first_beat = now  # when probation started counting
        self.last_beat = now
        self.last_seen = now  # last beat or disconnect: what retention counts from
        self.beats = 0
        self.connections = 0
        self.remote_addr = ""
        #: Other aggregators holding this node (origin -> their last beat's time, unix s);
        #: None while none has (aggregator/scaleout/merge.py).
        self.remote: dict[str, float] | None = None
        self.period: float | None = None
        self.session_last_beat: float | None = None  # last beat on the current connection
        self.head_changed_at = now
        self.height_changed_at = now
        self.graduated = False  # through probation (or never on it)
        self.source_state: str | None = None
        self.source_error: str | None = None
        self.source_down = False  # no usable head from its source: NodeState.SOURCE_DOWN
        self.head_seen_at: float | None = None  # unix seconds
        self.network_name: str | None = None  # StateNetworkName as the node reports it
        self.delays: DelayRing | None = None  # created with the first known delay
        self.delay_p50: float | None = None  # the ring's, copied for the snapshot's loop
        self.delay_p90: float | None = None

    def record(self) -> NodeRecord:
        return NodeRecord(
            peer_id=self.peer_id,
            nickname=self.nickname,
            miner_address=self.miner,
            head=self.head_text,
            height=self.height,
            head_timestamp=self.head_timestamp,
            genesis_cid=self.genesis_cid,
            syncing=self.syncing,
            version=self.version,
            first_seen=self.first_seen,
            last_beat=self.last_beat,
            beats_received=self.beats,
            remote_address=self.remote_addr,
            beat_period=self.period,
            head_changed_at=self.head_changed_at,
            height_changed_at=self.height_changed_at,
        )

    @classmethod
    def restored(cls, r: NodeRecord, now: float) -> Node:
        """A persisted node: through probation, DOWN until it beats again."""
        n = cls(r.peer_id, r.first_seen)
        n.graduated = True
        n.nickname = r.nickname
        n.miner = r.miner_address
        try:
            cids = parse_head(r.head) if r.head else frozenset()
        except HeadParseError:
            log.warning("restore_bad_head peer_id=%s", r.peer_id)
            cids = frozenset()
        n.set_head(r.head, cids)
        n.height = r.height
        n.head_timestamp = r.head_timestamp
        n.genesis_cid = r.genesis_cid
        n.net_key = network_key(r.genesis_cid)
        n.syncing = r.syncing
        n.version = r.version
        n.last_beat = r.last_beat
        n.last_seen = min(r.last_beat, now)
        n.beats = r.beats_received
        n.remote_addr = r.remote_address
        n.period = r.beat_period
        n.head_changed_at = r.head_changed_at
        n.height_changed_at = r.height_changed_at
        return n

    def set_head(self, text: str, cids: frozenset[str]) -> None:
        self.head_text = text
        if cids != self.head_cids:
            self.head_cids = cids
            self.head_sorted = tuple(sorted(cids))
            self.head_hash = head_hash(cids)


class Pending:
    """A connected peer that has not sent a beat yet."""

    __slots__ = ("connections", "first_seen", "remote_addr")

    def __init__(self, now: float, remote_addr: str) -> None:
        self.connections = 0
        self.first_seen = now
        self.remote_addr = remote_addr


def remote_host(remote_addr: str) -> str:
    """The host a peer came from: the ingest gives the IP itself; a multiaddr
    (`/ip4/10.0.0.1/tcp/4001`) gives its address part; "" when unknown."""
    if not remote_addr.startswith("/"):
        return remote_addr
    parts = remote_addr.split("/")
    return parts[2] if len(parts) > 2 else ""
