"""Merging the beats other aggregators accepted into this aggregator's fleet (one fleet over
several aggregators, docs/HA.md).

Pure: no I/O, no clock reads. `merge_remote_beat(fleet, origin, peer_id, beat, at)` is what
`Fleet.on_remote_beat` does with one beat read from the stream (`fil.heartbeat.*.beat.>`),
`at` being the time (unix s) its origin accepted it. The rules:

- **One node per peer id.** A node connected to two aggregators (an agent with two targets)
  is one node: the newest beat wins (a beat older than, or as old as, the node's last beat
  only marks its origin as a holder), whichever aggregator accepted it.
- **Held while any aggregator holds it.** Each origin that delivered a beat is a *remote
  holder* of the node (`Node.remote`: origin -> its last beat time). A remote holder counts
  while its last beat is within the node's beat timeout; it expires when its beats stop
  (the stream carries no disconnects). The node is up when it has a local connection or a
  live remote holder, and its newest beat is within the timeout (`held_remotely`).
- **Redeliveries are dropped.** At-least-once delivery may repeat a beat: one from an origin
  no newer than that origin's last is a duplicate (`MergeResult.DUPLICATE`).
- **Period.** A node held here keeps the period its own connection measures; one held only
  elsewhere measures it between its origin's consecutive beats, so its timeout is its own.
- Admission and probation apply as to a local beat (a new peer id from the stream may be
  refused with `FleetFull`, and is on probation for as long as a local one would be).
- The aggregator's own origin is skipped by the consumer (`RemoteMerger`): its own beats are
  in the fleet already, and after a restart its old connections are gone.

Clocks: `at` is the origin's wall clock; aggregators are expected to keep NTP time (a skew
shifts a remote-only node's timeout by as much).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import TYPE_CHECKING

from aggregator.errors import FleetFull

if TYPE_CHECKING:
    from aggregator.fleet import Fleet
    from aggregator.nodestate import Node
    from heartbeat.protocol.beat import Beat

__all__ = [
    "MergeResult",
    "MergeStats",
    "RemoteMerger",
    "held_by",
    "held_remotely",
    "merge_remote_beat",
]

log = logging.getLogger(__name__)


class MergeResult(StrEnum):
    """What became of one remote beat; the values are metric labels."""

    APPLIED = "applied"  # the node's newest beat now
    STALE = "stale"  # older than the node's last beat: its origin marked as a holder only
    DUPLICATE = "duplicate"  # no newer than its origin's last beat (a redelivery)
    OWN = "own"  # this aggregator's own beat
    REFUSED = "refused"  # a new peer id the fleet had no room for


def merge_remote_beat(
    fleet: Fleet, origin: str, peer_id: str, beat: Beat, at: float
) -> MergeResult:
    """Merge one beat accepted by `origin` at `at` into `fleet` (see the module doc)."""
    nodes = fleet._nodes  # the fleet's own merge path
    node = nodes.get(peer_id)
    if node is not None:
        holders = node.remote
        prev = None if holders is None else holders.get(origin)
        if prev is not None and at <= prev:
            return MergeResult.DUPLICATE
        if holders is None:
            holders = node.remote = {}
        holders[origin] = at
        if node.beats > 0 and at <= node.last_beat:
            return MergeResult.STALE
        # Fleet.on_beat measures the period from `session_last_beat`: a node held here keeps
        # its own connection's measure; one held only elsewhere measures between this origin's
        # beats. The connection's own value is put back afterwards.
        saved = node.session_last_beat
        node.session_last_beat = None if node.connections > 0 else prev
        try:
            fleet.on_beat(peer_id, beat, at)
        finally:
            node.session_last_beat = saved
        return MergeResult.APPLIED
    try:
        fleet.on_beat(peer_id, beat, at)
    except FleetFull:
        return MergeResult.REFUSED
    node = nodes[peer_id]
    node.remote = {origin: at}
    node.session_last_beat = None  # no local connection
    return MergeResult.APPLIED


def held_remotely(node: Node, timeout: float, now: float) -> bool:
    """Whether a remote holder's last beat is within `timeout` of `now`."""
    holders = node.remote
    if not holders:
        return False
    horizon = now - timeout
    for at in holders.values():  # one or two holders: a plain loop beats any()
        if at >= horizon:
            return True
    return False


def held_by(node: Node, origin: str, timeout: float, now: float) -> tuple[str, ...]:
    """Who holds the node's connection now: this aggregator (`origin`, when it has a
    connection) and every live remote holder, sorted."""
    holders = node.remote
    local = node.connections > 0 and bool(origin)
    if not holders:
        return (origin,) if local else ()
    horizon = now - timeout
    if len(holders) == 1 and not local:  # the common case: one other aggregator
        for o, at in holders.items():
            return (o,) if at >= horizon else ()
    out = [o for o, at in holders.items() if at >= horizon]
    if local and origin not in out:
        out.append(origin)
    out.sort()
    return tuple(out)


class MergeStats:
    """Counts of merged beats by result (metrics), the newest `at` merged, and how many
    remote beats arrived in total."""

    __slots__ = ("counts", "newest_at")

    def __init__(self) -> None:
        self.counts: dict[MergeResult, int] = dict.fromkeys(MergeResult, 0)
        self.newest_at = 0.0


class RemoteMerger:
    """The consumer's pure side: skip this aggregator's own origin, merge the rest, count."""

    def __init__(self, fleet: Fleet, origin: str) -> None:
        self.fleet = fleet
        self.origin = origin
        self.stats = MergeStats()

    def skipped_own(self, count: int, at: float) -> None:
        """`count` of this aggregator's own beats dropped before decoding, the last at `at`."""
        stats = self.stats
        stats.counts[MergeResult.OWN] += count
        if at > stats.newest_at:
            stats.newest_at = at

    def merge(self, origin: str, peer_id: str, beat: Beat, at: float) -> MergeResult:
        if origin == self.origin:
            result = MergeResult.OWN
        else:
            result = self.fleet.on_remote_beat(origin, peer_id, beat, at)
            if result is MergeResult.REFUSED:
                log.debug("remote_beat_refused origin=%s peer_id=%s", origin, peer_id)
        stats = self.stats
        stats.counts[result] += 1
        if at > stats.newest_at:
            stats.newest_at = at
        return result
