"""The fleet model: every node the aggregator knows, its state, and consensus per network.

Pure: no I/O, no clock reads; every method takes `now` (unix seconds, the same clock the
metrics export as `_timestamp_seconds`). Nodes are keyed by peer id, never by connection.

States, in order of precedence (the first that applies wins):

1. DOWN: no open connection, or no beat within the node's beat timeout (3x its observed beat
   period, bounded to [10 s, 120 s]; 30 s before a period is known). A peer that connected but
   never sent a beat is not a node yet: it is counted in `FleetSnapshot.pending_peers` only.
   Restored nodes (from the store) are DOWN until they beat again.
2. SOURCE_DOWN: up (beating), but its head source gives no usable head: the last beat's
   SourceState is unreachable, unauthorized or no_head (`Beat.source_down`), or its head is
   empty at height 0 without SourceState ok (older agents). Shown with its `source_error`;
   it never votes, never sets the network height, is never lagging, forked, stalled or in
   consensus, and is not counted in dispute. The next ok beat gives it its normal state.
3. SYNCING: the last beat said Syncing.
4. STALLED: the node's height has not changed for `stall_after` seconds.
5. LAGGING: `network_height - height >= lag_epochs`.
6. FORKED: the node's head shares NO block with the reference head AT ITS OWN HEIGHT, where
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
7. IN_CONSENSUS: everything else that is up.

Per network (keyed by genesis CID, "unknown" when the beat has none; a calibnet node never
counts against mainnet): network height = highest height among up nodes; consensus head =
plurality among up nodes at that height (tie: smallest sorted-CID tuple); in dispute = up nodes
not in consensus (source_down ones aside). Its name: the StateNetworkName most of its up nodes
report, else the built-in name of its genesis, else a short genesis CID (`networks.py`).

Head delays (`aggregator.propagation`): a new head that comes with HeadSeenAt and
HeadTimestamp adds HeadSeenAt - HeadTimestamp to the node's ring (its p50/p90); once the node is
through probation, also to its network's histogram and propagation record.

Probation (`FleetPolicy.probation`, the aggregator's `probation` setting, 1 minute): a new peer
id is on probation until it has beaten for that long AND sent `probation_beats` (3: its first
beat and about two beat periods' worth more). A node on probation is shown at once
(`NodeView.probation`), but it is not persisted (`records`, `export_records` skip it), no alert
is evaluated for it, and it does not vote: it is left out of network heights, reference heads
and network counts (`aggregator.fleet_snapshot`). Once through, a node never goes back on
probation (restored nodes are through). Allowlisted peers (`set_trusted`) skip it.

Admission of a new peer id (at its first connection or beat), in order:
- per remote IP and in total, peers on probation (pending ones included) are bounded
  (`max_probation_per_ip`, `max_probation`); at the bound, a DOWN node on probation (from that
  IP for the per-IP bound) is evicted, the longest-silent first, else the peer is refused;
- at `max_nodes`, a DOWN node on probation is evicted first, then the longest-down node
  (persisted ones are deleted from the store at its next batch); only when every node is up is
  the peer refused (`FleetFull`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aggregator.fleet_admission import Admission
from aggregator.fleet_snapshot import take_snapshot
from aggregator.networks import NetworkRegistry, network_key
from aggregator.nodestate import (
    FleetPolicy,
    FleetSnapshot,
    NetworkView,
    Node,
    NodeRecord,
    NodeState,
    NodeView,
    Pending,
)
from aggregator.propagation import DelayCounter, DelayRing, Propagation, head_delay
from aggregator.scaleout.merge import MergeResult, merge_remote_beat
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.tipset import parse_head

if TYPE_CHECKING:
    from collections.abc import Iterable

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

_OK, _SYNCING = SourceState.OK, SourceState.SYNCING

#: Weight of a new inter-beat interval in the beat period estimate.
PERIOD_EWMA_ALPHA = 0.2


class Fleet(Admission):
    """The set of nodes, updated by the ingest and read through `snapshot(now)`; admission,
    probation bookkeeping and eviction are `aggregator.fleet_admission.Admission`'s."""

    def __init__(self, policy: FleetPolicy | None = None) -> None:
        super().__init__(policy if policy is not None else FleetPolicy())
        self.networks = NetworkRegistry(self.policy.block_delay_default)
        #: Per network key: head delays of nodes through probation (the histogram metric).
        self._delays: dict[str, DelayCounter] = {}
        #: Per network: the recent heights and who saw them how late (/api/v1/propagation).
        self.propagation = Propagation()
        #: This aggregator in `NodeView.held_by` (its stream origin with --nats-url).
        self.origin = ""

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._nodes

    # -- events ---------------------------------------------------------------------------

    def on_connect(self, peer_id: str, remote_addr: str, now: float) -> None:
        """A connection from `peer_id` opened. Counted per connection.

        Raises `FleetFull` for a peer the fleet does not know when it has no room for it.
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
            self._admit(peer_id, remote_addr, now)
            pending = self._pending[peer_id] = Pending(now, remote_addr)
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
                self._leave_probation(peer_id)

    def _new_node(self, peer_id: str, now: float) -> Node:
        pending = self._pending.pop(peer_id, None)
        if pending is None:
            self._admit(peer_id, "", now)
        node = self._nodes[peer_id] = Node(peer_id, now)
        node.graduated = peer_id not in self._probation
        if pending is not None:
            node.first_seen = pending.first_seen
            node.connections = pending.connections
            node.remote_addr = pending.remote_addr
        return node

    def on_beat(self, peer_id: str, beat: Beat, now: float) -> None:
        """Record a validated beat. Raises `FleetFull` for a new peer it has no room for."""
        node = self._nodes.get(peer_id)
        first = node is None
        if node is None:
            node = self._new_node(peer_id, now)
            node.first_beat = now
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
        new_head = False
        if beat.head != node.head_text:
            cids = parse_head(beat.head)
            if cids != node.head_cids:
                new_head = True
                if not first:
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
        source = beat.source_state
        node.source_state = source
        node.source_error = beat.source_error
        node.network_name = beat.network_name
        seen_at = beat.head_seen_at
        node.head_seen_at = None if seen_at is None else seen_at / 1000.0
        # No usable head: the agent says so (`Beat.source_down`, inlined: this is the per-beat
        # path), or (older agents) no head at height 0.
        if source is None or source is _OK:
            down = beat.height == 0 and source is None and not node.head_cids
        else:
            down = source is not _SYNCING or (beat.height == 0 and not node.head_cids)
        node.source_down = down
        node.last_beat = now
        node.last_seen = now
        node.beats += 1
        if (
            not node.graduated
            and node.beats >= policy.probation_beats
            and now - node.first_beat >= policy.probation
        ):
            node.graduated = True
            self._leave_probation(peer_id)
            log.info("node_probation_passed peer_id=%s beats=%d", peer_id, node.beats)
        if down:
            return  # its height says nothing about the network's timing
        if new_head and seen_at is not None:
            self._head_seen(node, seen_at)
        self.networks.observe(node.net_key, beat.height, beat.head_timestamp)

    def _head_seen(self, node: Node, seen_at_ms: int) -> None:
        """A node's new head with its HeadSeenAt: its delay ring, and (once through
        probation) the network's delay histogram and propagation record."""
        delay = head_delay(seen_at_ms, node.head_timestamp)
        if delay is None:
            return
        ring = node.delays
        if ring is None:
            ring = node.delays = DelayRing()
        ring.add(delay)
        node.delay_p50, node.delay_p90 = ring.p50, ring.p90
        if not node.graduated:
            return  # throwaway peer ids never shape the network's figures
        key = node.net_key
        counter = self._delays.get(key)
        if counter is None:
            counter = self._delays[key] = DelayCounter()
        counter.observe(delay)
        self.propagation.observe(
            key,
            node.peer_id,
            node.nickname,
            node.height,
            node.head_cids,
            node.head_timestamp,
            delay,
        )

    def on_remote_beat(self, origin: str, peer_id: str, beat: Beat, at: float) -> MergeResult:
        """A beat another aggregator (`origin`) accepted at `at`, read from the stream: merged
        by `aggregator.scaleout.merge` (newest beat wins; held while any holder beats)."""
        return merge_remote_beat(self, origin, peer_id, beat, at)

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
            node = self._nodes.pop(pid)
            self._leave_probation(pid)
            if node.graduated:
                self._removed.add(pid)
        stale = [pid for pid, p in self._pending.items() if p.first_seen < horizon]
        for pid in stale:
            del self._pending[pid]
            self._leave_probation(pid)
        if gone:
            log.info("nodes_expired count=%d", len(gone))
        # Networks no node is in any more: their histograms and propagation records go too
        # (a peer id switching genesis at every beat must not grow them without bound).
        keys = {n.net_key for n in self._nodes.values()}
        for key in [k for k in self._delays if k not in keys]:
            del self._delays[key]
        self.propagation.retain(keys)
        return gone

    def export_records(self) -> list[NodeRecord]:
        """Every node through probation as a record, sorted by peer id."""
        nodes = self._nodes
        return [nodes[pid].record() for pid in sorted(nodes) if nodes[pid].graduated]

    def records(self, peer_ids: Iterable[str]) -> list[NodeRecord]:
        """Records of the nodes among `peer_ids`, sorted; peers that are not nodes, or are on
        probation, are skipped (a node is written once it is through).

        The persistence writer learns which nodes changed from the bus, not from the fleet.
        """
        nodes = self._nodes
        out = []
        for pid in sorted(peer_ids):
            n = nodes.get(pid)
            if n is not None and n.graduated:
                out.append(n.record())
        return out

    def drain_removed(self) -> list[str]:
        """Persisted peer ids forgotten (expired, evicted) since the last call, sorted."""
        removed = sorted(self._removed)
        self._removed.clear()
        return removed

    def load_records(self, records: Iterable[NodeRecord], now: float) -> int:
        """Add persisted nodes (as DOWN, through probation) that the fleet does not track yet;
        returns how many."""
        added = 0
        for r in records:
            if r.peer_id in self._nodes or r.peer_id in self._pending:
                continue
            if len(self._nodes) + len(self._pending) >= self.policy.max_nodes:
                log.warning("restore_truncated limit=%d", self.policy.max_nodes)
                break
            self._nodes[r.peer_id] = Node.restored(r, now)
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
        """Compute states and per-network consensus at `now` (`aggregator.fleet_snapshot`)."""
        return take_snapshot(
            self.policy,
            self._nodes,
            self.networks,
            len(self._pending),
            now,
            self._delays,
            self.origin,
        )
