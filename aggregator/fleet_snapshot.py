"""The fleet snapshot: node states and per-network consensus at one instant.

Pure (no I/O, no clock reads): `take_snapshot` reads the fleet's nodes at `now` in named
steps: liveness, reference heads, node states, network views. The rules are in the module doc
of `aggregator.fleet`. Nodes on probation are shown with their state but do not vote: they are
left out of the network heights, the reference heads and the network counts, so a flood of
throwaway peer ids cannot move consensus or the fleet's up/down figures. Nodes whose source is
down (`Node.source_down`) are up but have no usable head: they neither vote nor set a height.

Network names (`_names`): per key, the StateNetworkName most of its up voting nodes report (its
down ones when no up one does), else `networks.network_name`; two keys that would share a name
get their short genesis CID appended, so a `network` label never means two networks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from types import MappingProxyType
from typing import TYPE_CHECKING

from aggregator.consensus import head_hash, plurality
from aggregator.networks import UNKNOWN_NETWORK, display_name, network_name, short_cid
from aggregator.nodestate import ALL_STATES, FleetSnapshot, NetworkView, NodeState, NodeView
from aggregator.scaleout.merge import held_by, held_remotely

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aggregator.networks import NetworkRegistry
    from aggregator.nodestate import FleetPolicy, Node
    from aggregator.propagation import DelayCounter, DelayHistogram

__all__ = ["take_snapshot"]

#: (network key, height) -> the reference head there (None: no reference).
_Reference = dict[tuple[str, int], frozenset[str] | None]


def take_snapshot(
    policy: FleetPolicy,
    nodes: Mapping[str, Node],
    networks: NetworkRegistry,
    pending: int,
    now: float,
    delays: Mapping[str, DelayCounter] | None = None,
    origin: str = "",
) -> FleetSnapshot:
    """Compute states and per-network consensus at `now`; `delays`: the head delay histogram
    per network key; `origin`: this aggregator in `NodeView.held_by`."""
    up, timeouts, by_net, top, reported = _liveness(policy, nodes, now)
    names = _names(nodes, reported)
    reference, votes = _reference_heads(policy, by_net, up, top)
    views, state_counts = _node_views(
        policy, nodes, up, timeouts, top, reference, names, now, origin
    )
    node_views = tuple(views)
    head_delays: dict[str, DelayHistogram] = {}
    for key, counter in (delays or {}).items():
        head_delays[names.get(key) or network_name(key)] = counter.frozen()
    return FleetSnapshot(
        taken_at=now,
        nodes=node_views,
        networks=MappingProxyType(
            _network_views(networks, state_counts, top, reference, votes, names, now)
        ),
        pending_peers=pending,
        probation_nodes=sum(1 for v in node_views if v.probation),
        _index={v.peer_id: v for v in node_views},
        head_delays=MappingProxyType(head_delays),
    )


#: Per network key: reported network name -> how many nodes report it.
_Reported = dict[str, dict[str, int]]


def _liveness(
    policy: FleetPolicy, nodes: Mapping[str, Node], now: float
) -> tuple[dict[str, bool], dict[str, float], dict[str, list[Node]], dict[str, int], _Reported]:
    """Per node: up and its beat timeout; per network: its voting members, top height and the
    names its voting nodes report."""
    up: dict[str, bool] = {}
    timeouts: dict[str, float] = {}
    by_net: dict[str, list[Node]] = defaultdict(list)
    top: dict[str, int] = {}
    reported: _Reported = {}
    for pid, n in nodes.items():
        timeout = policy.beat_timeout(n.period)
        timeouts[pid] = timeout
        # Held by a connection here, or by another aggregator whose beats still come
        # (aggregator/scaleout/merge.py), and beating within its timeout.
        is_up = (
            n.beats > 0
            and now - n.last_beat <= timeout
            and (n.connections > 0 or (n.remote is not None and held_remotely(n, timeout, now)))
        )
        up[pid] = is_up
        if not n.graduated:
            continue
        key = n.net_key
        name = n.network_name
        if name is not None and is_up:
            per_key = reported.get(key)
            if per_key is None:
                reported[key] = {name: 1}
            else:
                per_key[name] = per_key.get(name, 0) + 1
        if n.source_down:
            continue  # up or not, no head to vote with
        by_net[key].append(n)
        if is_up and n.height > top.get(key, -1):
            top[key] = n.height
    return up, timeouts, by_net, top, reported


def _names(nodes: Mapping[str, Node], up_reported: _Reported) -> dict[str, str]:
    """The display name of every network key the nodes are in (see the module doc)."""
    keys = {n.net_key for n in nodes.values()}
    keys.discard(UNKNOWN_NETWORK)  # genesis-less nodes of any network: no name to trust
    quiet = keys - up_reported.keys()
    down_reported: _Reported = {}
    if quiet:  # no up node names these: what their down ones said (a second pass, rare)
        for n in nodes.values():
            name = n.network_name
            if name is not None and n.graduated and n.net_key in quiet:
                per_key = down_reported.setdefault(n.net_key, {})
                per_key[name] = per_key.get(name, 0) + 1
    names = {UNKNOWN_NETWORK: network_name(UNKNOWN_NETWORK)}
    for key in keys:
        tallies = up_reported.get(key) or down_reported.get(key)
        best = None
        if tallies:
            # the most nodes, then the smallest name: deterministic
            best = min(tallies.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        names[key] = display_name(key, best)
    seen: dict[str, list[str]] = defaultdict(list)
    for key, name in names.items():
        seen[name].append(key)
    for name, sharing in seen.items():
        if len(sharing) > 1:
            for key in sharing:
                if key != UNKNOWN_NETWORK and name != network_name(key):
                    names[key] = f"{name} ({short_cid(key)})"
    return names


def _reference_heads(
    policy: FleetPolicy,
    by_net: Mapping[str, list[Node]],
    up: Mapping[str, bool],
    top: Mapping[str, int],
) -> tuple[_Reference, dict[str, int]]:
    """Reference heads per network and height within the fork window of the top; the votes
    for the consensus head at the top."""
    window = policy.fork_window_epochs
    reference: _Reference = {}
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
    return reference, votes


def _state(
    policy: FleetPolicy,
    n: Node,
    is_up: bool,
    lag: int | None,
    reference: _Reference,
    now: float,
) -> NodeState:
    if not is_up:
        return NodeState.DOWN
    if n.source_down:
        return NodeState.SOURCE_DOWN
    if n.syncing:
        return NodeState.SYNCING
    if now - n.height_changed_at >= policy.stall_after:
        return NodeState.STALLED
    if lag is not None and lag >= policy.lag_epochs:
        return NodeState.LAGGING
    if (
        lag is not None
        and lag <= policy.fork_window_epochs
        and _forked(n.head_cids, reference.get((n.net_key, n.height)))
    ):
        return NodeState.FORKED
    return NodeState.IN_CONSENSUS


def _node_views(
    policy: FleetPolicy,
    nodes: Mapping[str, Node],
    up: Mapping[str, bool],
    timeouts: Mapping[str, float],
    top: Mapping[str, int],
    reference: _Reference,
    names: Mapping[str, str],
    now: float,
    origin: str = "",
) -> tuple[list[NodeView], dict[str, dict[NodeState, int]]]:
    """One view per node, sorted by peer id; state counts per network (voting nodes only)."""
    here = (origin,) if origin else ()
    views: list[NodeView] = []
    append = views.append
    new_view = tuple.__new__
    state_counts: dict[str, dict[NodeState, int]] = {}
    for pid in sorted(nodes):
        n = nodes[pid]
        key = n.net_key
        t = top.get(key)
        lag = None if t is None or n.source_down else t - n.height
        state = _state(policy, n, up[pid], lag, reference, now)
        if n.graduated:
            counts = state_counts.get(key)
            if counts is None:
                counts = state_counts[key] = dict.fromkeys(ALL_STATES, 0)
            counts[state] += 1
        # tuple.__new__ directly: NodeView's generated __new__ is one Python call more per
        # node, a tenth of this loop at 10,000 nodes. The order is NodeView's field order.
        append(
            new_view(
                NodeView,
                (
                    pid,
                    n.nickname,
                    n.miner,
                    key,
                    names[key],
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
                    not n.graduated,
                    n.source_state,
                    n.source_error,
                    n.head_seen_at,
                    n.delay_p50,
                    n.delay_p90,
                    (here if n.connections > 0 else ())
                    if n.remote is None
                    else held_by(n, origin, timeouts[pid], now),
                ),
            )
        )
    return views, state_counts


def _network_views(
    networks: NetworkRegistry,
    state_counts: Mapping[str, dict[NodeState, int]],
    top: Mapping[str, int],
    reference: _Reference,
    votes: Mapping[str, int],
    names: Mapping[str, str],
    now: float,
) -> dict[str, NetworkView]:
    out: dict[str, NetworkView] = {}
    for key, counts in state_counts.items():
        info = networks.get(key)
        t = top.get(key)
        consensus = reference.get((key, t)) if t is not None else None
        nodes_up = sum(v for s, v in counts.items() if s is not NodeState.DOWN)
        in_consensus = counts[NodeState.IN_CONSENSUS]
        out[key] = NetworkView(
            key=key,
            name=names.get(key) or info.name,
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
            in_dispute=nodes_up - in_consensus - counts[NodeState.SOURCE_DOWN],
        )
    return out


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
