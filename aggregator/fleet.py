"""The fleet model: every node the aggregator knows, its state, and consensus per network.

Pure: no I/O, no clock reads; every method takes `now` (unix seconds, the same clock the
metrics export as `_timestamp_seconds`). Nodes are keyed by peer id, never by connection.

States, in order of precedence (the first that applies wins):

1. DOWN: no open connection, or no beat within the node's beat timeout (3x its observed beat
   period, bounded to [10 s, 120 s]; 30 s before a period is known). A peer that connected but
   never sent a beat is not a node yet: it is counted in `FleetSnapshot.pending_peers` only.
   Restored nodes (from the store) are DOWN until they beat again.
2. SYNCING: the last beat said Syncing.
3. STALLED: the node's height has not changed for `stall_after` seconds.
4. LAGGING: `network_height - height >= lag_epochs`.
5. FORKED: the node's head shares NO block with the reference head AT ITS OWN HEIGHT, where
   its height is the network's top height or at most `fork_window_epochs` (2) below it. Heads
   are only ever compared at one height: a node one epoch behind legitimately has another
   tipset (its head is the parent of the top), and a beat carries no parents. The reference:
   - at the top height: the consensus head (plurality of up nodes there, deterministic
     tie-break);
   - below it: the head of a strict MAJORITY of the up nodes at that height, and only when at
     least `fork_min_votes` (2) nodes back it. A lone trailing node, a 1-1 split or a three-way
     split has no reference there, so nobody is forked on a guess; the node is in consensus.
   Two tipsets at one height that share a block have the same parents (all blocks of a tipset
   do), so a node that merely saw fewer or more blocks of the same epoch is not forked. A null
   round (nobody can be at height + 1) only means fewer nodes share a height. Nodes further
   below (but less than `lag_epochs`) are not compared and count as in consensus.
6. IN_CONSENSUS: everything else that is up.

Per network (keyed by genesis CID, "unknown" when the beat has none; a calibnet node never
counts against mainnet): network height = highest height among up nodes; consensus head =
plurality among up nodes at that height (tie: smallest sorted-CID tuple); in dispute = up nodes
not in consensus.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from aggregator.consensus import NO_HEAD_HASH, head_hash, plurality
from aggregator.errors import FleetFull
from aggregator.networks import NetworkRegistry, network_key, network_name
from heartbeat.protocol.tipset import HeadParseError, parse_head

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aggregator.networks import NetworkInfo
    from heartbeat.protocol.wire import Beat

__all__ = [
    "Fleet",
    "FleetPolicy",
    "FleetSnapshot",
    "NetworkView",
    "NodeRecord",
    "NodeState",
    "NodeView",
]

log = logging.getLogger(__name__)

#: Weight of a new inter-beat interval in the beat period estimate.
PERIOD_EWMA_ALPHA = 0.2


class NodeState(StrEnum):
    """A node's state; the values are Prometheus label values."""

    IN_CONSENSUS = "in_consensus"
    LAGGING = "lagging"
    FORKED = "forked"
    STALLED = "stalled"
    SYNCING = "syncing"
    DOWN = "down"


_ALL_STATES = tuple(NodeState)


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
    in_dispute: int  # up nodes not in consensus


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """An immutable picture of the fleet; `nodes` sorted by peer id."""

    taken_at: float
    nodes: tuple[NodeView, ...]
    networks: Mapping[str, NetworkView]
    pending_peers: int = 0  # connected peers that have not sent a beat yet
    _index: Mapping[str, NodeView] = field(default_factory=dict, repr=False, compare=False)

    def node(self, peer_id: str) -> NodeView | None:
        return self._index.get(peer_id)


class _Node:
    """Mutable per-node state inside the fleet."""

    __slots__ = (
        "beats",
        "connections",
        "first_seen",
        "genesis_cid",
        "head_changed_at",
        "head_cids",
        "head_hash",
        "head_sorted",
        "head_text",
        "head_timestamp",
        "height",
        "height_changed_at",
        "last_beat",
        "last_seen",
        "miner",
        "net_key",
        "nickname",
        "peer_id",
        "period",
        "remote_addr",
        "session_last_beat",
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
        self.last_beat = now
        self.last_seen = now  # last beat or disconnect: what retention counts from
        self.beats = 0
        self.connections = 0
        self.remote_addr = ""
        self.period: float | None = None
        self.session_last_beat: float | None = None  # last beat on the current connection
        self.head_changed_at = now
        self.height_changed_at = now

    def set_head(self, text: str, cids: frozenset[str]) -> None:
        self.head_text = text
        if cids != self.head_cids:
            self.head_cids = cids
            self.head_sorted = tuple(sorted(cids))
            self.head_hash = head_hash(cids)


class _Pending:
    __slots__ = ("connections", "first_seen", "remote_addr")

    def __init__(self, now: float, remote_addr: str) -> None:
        self.connections = 0
        self.first_seen = now
        self.remote_addr = remote_addr


class Fleet:
    """The set of nodes, updated by the ingest and read through `snapshot(now)`."""

    def __init__(self, policy: FleetPolicy | None = None) -> None:
        self.policy = policy if policy is not None else FleetPolicy()
        self.networks = NetworkRegistry(self.policy.block_delay_default)
        self._nodes: dict[str, _Node] = {}
        self._pending: dict[str, _Pending] = {}
        self._removed: set[str] = set()

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._nodes

    # -- events ---------------------------------------------------------------------------

    def _check_capacity(self, peer_id: str) -> None:
        if len(self._nodes) + len(self._pending) >= self.policy.max_nodes:
            raise FleetFull(peer_id, self.policy.max_nodes)

    def on_connect(self, peer_id: str, remote_addr: str, now: float) -> None:
        """A connection from `peer_id` opened. Counted per connection.

        Raises `FleetFull` for a peer the fleet does not know when it is at capacity.
        """
        node = self._nodes.get(peer_id)
        if node is not None:
            if node.connections == 0:
                node.session_last_beat = None
            node.connections += 1
            if remote_addr:
                node.remote_addr = remote_addr
            return
        pending = self._pending.get(peer_id)
        if pending is None:
            self._check_capacity(peer_id)
            pending = self._pending[peer_id] = _Pending(now, remote_addr)
        pending.connections += 1
        if remote_addr:
            pending.remote_addr = remote_addr

    def on_disconnect(self, peer_id: str, now: float) -> None:
        """A connection from `peer_id` closed (unknown peers are ignored)."""
        node = self._nodes.get(peer_id)
        if node is not None:
            node.connections = max(0, node.connections - 1)
            if node.connections == 0:
                node.session_last_beat = None
                node.last_seen = max(node.last_seen, now)
            return
        pending = self._pending.get(peer_id)
        if pending is not None:
            pending.connections -= 1
            if pending.connections <= 0:
                del self._pending[peer_id]

    def on_beat(self, peer_id: str, beat: Beat, now: float) -> None:
        """Record a validated beat. Raises `FleetFull` for a new peer when at capacity."""
        node = self._nodes.get(peer_id)
        if node is None:
            pending = self._pending.pop(peer_id, None)
            if pending is None:
                self._check_capacity(peer_id)
            node = self._nodes[peer_id] = _Node(peer_id, now)
            if pending is not None:
                node.first_seen = pending.first_seen
                node.connections = pending.connections
                node.remote_addr = pending.remote_addr
            first = True
        else:
            first = False
        policy = self.policy
        last = node.session_last_beat
        if last is not None:
            interval = now - last
            if 0.0 < interval <= policy.beat_timeout_max:
                period = node.period
                node.period = (
                    interval if period is None else period + PERIOD_EWMA_ALPHA * (interval - period)
                )
        node.session_last_beat = now
        if beat.head != node.head_text:
            cids = parse_head(beat.head)
            if cids != node.head_cids and not first:
                node.head_changed_at = now
            node.set_head(beat.head, cids)
        if beat.height != node.height and not first:
            node.height_changed_at = now
        node.height = beat.height
        node.nickname = beat.nickname
        node.miner = beat.miner_address
        node.head_timestamp = beat.head_timestamp
        if beat.genesis_cid != node.genesis_cid:
            node.genesis_cid = beat.genesis_cid
            node.net_key = network_key(beat.genesis_cid)
        node.syncing = beat.syncing
        node.version = beat.version
        node.last_beat = now
        node.last_seen = now
        node.beats += 1
        self.networks.observe(node.net_key, beat.height, beat.head_timestamp)

    def beat_timeout(self, peer_id: str) -> float:
        """The silence after which `peer_id` counts as DOWN (the default for unknown peers)."""
        node = self._nodes.get(peer_id)
        return self.policy.beat_timeout(node.period if node is not None else None)

    def register_network(self, key: str, genesis_timestamp: int | None, block_delay: float) -> None:
        """Set a network's timing from an authoritative source (see `networks.py`)."""
        self.networks.register(key, genesis_timestamp, block_delay)

    def network_info(self, key: str) -> NetworkInfo:
        return self.networks.get(key)

    # -- retention and persistence ---------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Forget nodes silent (no beat, no disconnect) for longer than the retention."""
        horizon = now - self.policy.retention
        gone = sorted(pid for pid, n in self._nodes.items() if n.last_seen < horizon)
        for pid in gone:
            del self._nodes[pid]
            self._removed.add(pid)
        stale = [pid for pid, p in self._pending.items() if p.first_seen < horizon]
        for pid in stale:
            del self._pending[pid]
        if gone:
            log.info("nodes_expired count=%d", len(gone))
        return gone

    @staticmethod
    def _record(n: _Node) -> NodeRecord:
        return NodeRecord(
            peer_id=n.peer_id,
            nickname=n.nickname,
            miner_address=n.miner,
            head=n.head_text,
            height=n.height,
            head_timestamp=n.head_timestamp,
            genesis_cid=n.genesis_cid,
            syncing=n.syncing,
            version=n.version,
            first_seen=n.first_seen,
            last_beat=n.last_beat,
            beats_received=n.beats,
            remote_address=n.remote_addr,
            beat_period=n.period,
            head_changed_at=n.head_changed_at,
            height_changed_at=n.height_changed_at,
        )

    def export_records(self) -> list[NodeRecord]:
        """Every node as a record, sorted by peer id."""
        return [self._record(self._nodes[pid]) for pid in sorted(self._nodes)]

    def records(self, peer_ids: Iterable[str]) -> list[NodeRecord]:
        """Records of the nodes among `peer_ids`, sorted (peers that are not nodes are skipped).

        The persistence writer learns which nodes changed from the bus, not from the fleet.
        """
        nodes = self._nodes
        return [self._record(nodes[pid]) for pid in sorted(peer_ids) if pid in nodes]

    def drain_removed(self) -> list[str]:
        """Peer ids forgotten (`expire`) since the last call, sorted."""
        removed = sorted(self._removed)
        self._removed.clear()
        return removed

    def load_records(self, records: Iterable[NodeRecord], now: float) -> int:
        """Add persisted nodes (as DOWN) that the fleet does not track yet; returns how many."""
        added = 0
        for r in records:
            if r.peer_id in self._nodes or r.peer_id in self._pending:
                continue
            if len(self._nodes) + len(self._pending) >= self.policy.max_nodes:
                log.warning("restore_truncated limit=%d", self.policy.max_nodes)
                break
            n = _Node(r.peer_id, r.first_seen)
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
            self._nodes[r.peer_id] = n
            added += 1
        return added

    @classmethod
    def restore(
        cls, records: Iterable[NodeRecord], policy: FleetPolicy | None = None, now: float = 0.0
    ) -> Fleet:
        """A fleet holding the persisted nodes, all DOWN until they beat again."""
        fleet = cls(policy)
        fleet.load_records(records, now)
        return fleet

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self, now: float) -> FleetSnapshot:
        """Compute states and per-network consensus at `now`."""
        policy = self.policy
        window = policy.fork_window_epochs
        nodes = self._nodes
        up: dict[str, bool] = {}
        timeouts: dict[str, float] = {}
        by_net: dict[str, list[_Node]] = defaultdict(list)
        top: dict[str, int] = {}
        for pid, n in nodes.items():
            timeout = policy.beat_timeout(n.period)
            timeouts[pid] = timeout
            is_up = n.connections > 0 and n.beats > 0 and now - n.last_beat <= timeout
            up[pid] = is_up
            by_net[n.net_key].append(n)
            if is_up and n.height > top.get(n.net_key, -1):
                top[n.net_key] = n.height

        # reference heads: per network, per height within the fork window of the top
        reference: dict[tuple[str, int], frozenset[str] | None] = {}
        votes: dict[str, int] = {}
        for key, members in by_net.items():
            t = top.get(key)
            if t is None:
                continue
            heads: dict[int, list[frozenset[str]]] = defaultdict(list)
            for n in members:
                if up[n.peer_id] and t - n.height <= window:
                    heads[n.height].append(n.head_cids)
            for h, hs in heads.items():
                if h == t:
                    winner, count = plurality(hs)
                    reference[(key, h)] = winner
                    votes[key] = count
                else:
                    reference[(key, h)] = _majority(hs, policy.fork_min_votes)

        lag_epochs = policy.lag_epochs
        stall_after = policy.stall_after
        views: list[NodeView] = []
        append = views.append
        state_counts: dict[str, dict[NodeState, int]] = {}
        for pid in sorted(nodes):
            n = nodes[pid]
            key = n.net_key
            t = top.get(key)
            lag = None if t is None else t - n.height
            if not up[pid]:
                state = NodeState.DOWN
            elif n.syncing:
                state = NodeState.SYNCING
            elif now - n.height_changed_at >= stall_after:
                state = NodeState.STALLED
            elif lag is not None and lag >= lag_epochs:
                state = NodeState.LAGGING
            elif (
                lag is not None
                and lag <= window
                and _forked(n.head_cids, reference.get((key, n.height)))
            ):
                state = NodeState.FORKED
            else:
                state = NodeState.IN_CONSENSUS
            counts = state_counts.get(key)
            if counts is None:
                counts = state_counts[key] = dict.fromkeys(_ALL_STATES, 0)
            counts[state] += 1
            append(
                NodeView(
                    pid,
                    n.nickname,
                    n.miner,
                    key,
                    network_name(key),
                    state,
                    up[pid],
                    n.connections > 0,
                    n.remote_addr,
                    n.head_text,
                    n.head_sorted,
                    n.head_hash,
                    n.height,
                    n.head_timestamp,
                    None if n.head_timestamp is None else now - n.head_timestamp,
                    lag,
                    n.syncing,
                    n.version,
                    n.first_seen,
                    n.last_beat,
                    n.beats,
                    n.period,
                    timeouts[pid],
                    n.head_changed_at,
                    n.height_changed_at,
                )
            )

        networks: dict[str, NetworkView] = {}
        for key, counts in state_counts.items():
            info = self.networks.get(key)
            t = top.get(key)
            consensus = reference.get((key, t)) if t is not None else None
            nodes_up = sum(v for s, v in counts.items() if s is not NodeState.DOWN)
            in_consensus = counts[NodeState.IN_CONSENSUS]
            networks[key] = NetworkView(
                key=key,
                name=info.name,
                height=t,
                expected_height=info.expected_height(now),
                genesis_timestamp=info.genesis_timestamp,
                block_delay=info.block_delay,
                consensus_head=consensus,
                consensus_head_hash=head_hash(consensus),
                consensus_votes=votes.get(key, 0),
                nodes_total=sum(counts.values()),
                nodes_up=nodes_up,
                counts=MappingProxyType(counts),
                in_consensus=in_consensus,
                in_dispute=nodes_up - in_consensus,
            )
        node_views = tuple(views)
        return FleetSnapshot(
            taken_at=now,
            nodes=node_views,
            networks=MappingProxyType(networks),
            pending_peers=len(self._pending),
            _index={v.peer_id: v for v in node_views},
        )


def _majority(heads: list[frozenset[str]], min_votes: int) -> frozenset[str] | None:
    """The head held by more than half of `heads` (empty heads ignored) and by at least
    `min_votes` of them; None when there is no such head."""
    counts = Counter(h for h in heads if h)
    if not counts:
        return None
    winner, count = counts.most_common(1)[0]
    if count < min_votes or 2 * count <= sum(counts.values()):
        return None
    return winner


def _forked(head: frozenset[str], reference: frozenset[str] | None) -> bool:
    """Forked when the head shares no block with the reference head at the same height."""
    if reference is None or not head:
        return False
    return head.isdisjoint(reference)
