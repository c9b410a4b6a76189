"""Admission to the fleet: probation bookkeeping and eviction (the rules are in the module doc
of `aggregator.fleet`, whose `Fleet` extends `Admission`).

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from aggregator.errors import FleetFull
from aggregator.nodestate import remote_host

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aggregator.nodestate import FleetPolicy, Node, Pending

__all__ = ["Admission"]

log = logging.getLogger("aggregator.fleet")


class Admission:
    """The fleet's nodes and pending peers, who is on probation, and how room is made."""

    def __init__(self, policy: FleetPolicy) -> None:
        self.policy = policy
        self._nodes: dict[str, Node] = {}
        self._pending: dict[str, Pending] = {}
        self._removed: set[str] = set()
        #: Peers on probation (pending or not through it) -> the remote host they came from.
        self._probation: dict[str, str] = {}
        self._probation_by_host: Counter[str] = Counter()
        self._trusted: frozenset[str] = frozenset()
        self.evicted = 0  # nodes evicted to admit new peers, since start

    def set_trusted(self, peer_ids: Iterable[str] | None) -> None:
        """Peers that skip probation (the allowlist; None: nobody)."""
        self._trusted = frozenset(peer_ids or ())

    def on_probation(self, peer_id: str) -> bool:
        return peer_id in self._probation

    def _admit(self, peer_id: str, remote_addr: str, now: float) -> bool:
        """Make room for a new peer or raise `FleetFull`; True when it starts on probation."""
        policy = self.policy
        probation = policy.probation > 0 and peer_id not in self._trusted
        if probation:
            host = remote_host(remote_addr)
            if (
                host
                and self._probation_by_host[host] >= policy.max_probation_per_ip
                and not self._evict(now, probation_only=True, host=host)
            ):
                raise FleetFull(peer_id, policy.max_probation_per_ip)
            if len(self._probation) >= policy.max_probation and not self._evict(
                now, probation_only=True
            ):
                raise FleetFull(peer_id, policy.max_probation)
        if len(self._nodes) + len(self._pending) >= policy.max_nodes and not self._evict(
            now, probation_only=False
        ):
            raise FleetFull(peer_id, policy.max_nodes)
        if probation:
            self._enter_probation(peer_id, remote_addr)
        return probation

    def _enter_probation(self, peer_id: str, remote_addr: str) -> None:
        host = remote_host(remote_addr)
        self._probation[peer_id] = host
        self._probation_by_host[host] += 1

    def _leave_probation(self, peer_id: str) -> None:
        host = self._probation.pop(peer_id, None)
        if host is not None:
            left = self._probation_by_host[host] - 1
            if left > 0:
                self._probation_by_host[host] = left
            else:
                del self._probation_by_host[host]

    def _down_since(self, n: Node, now: float) -> float | None:
        """When `n` went DOWN (None: it is up)."""
        silent_at = n.last_beat + self.policy.beat_timeout(n.period)
        if n.connections > 0 and now <= silent_at:
            return None
        return min(n.last_seen, silent_at)

    def _evict(self, now: float, *, probation_only: bool, host: str | None = None) -> bool:
        """Forget one DOWN node to make room: on probation first (from `host` if given), then
        (unless `probation_only`) the longest-down one. False when there is none."""
        best: tuple[int, float, str] | None = None
        for pid, n in self._nodes.items():
            on_probation = not n.graduated
            if probation_only and not on_probation:
                continue
            if host is not None and self._probation.get(pid) != host:
                continue
            since = self._down_since(n, now)
            if since is None:
                continue
            rank = (0 if on_probation else 1, since, pid)
            if best is None or rank < best:
                best = rank
        if best is None:
            return False
        _, _, pid = best
        node = self._nodes.pop(pid)
        self._leave_probation(pid)
        if node.graduated:
            self._removed.add(pid)
        self.evicted += 1
        log.info("node_evicted peer_id=%s probation=%s", pid, not node.graduated)
        return True
