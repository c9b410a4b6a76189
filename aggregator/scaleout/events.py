"""The fleet's events on the stream: node transitions and alert firing / resolved (pure,
but for `follow_leader`'s wait).

Every aggregator computes the merged fleet's node transitions; only the lease's leader
(aggregator/scaleout/leader.py) publishes them, so each appears on the stream once:

- Leader: each transition is offered to the export at once.
- Follower: it keeps its own of the last `HELD_WINDOW` seconds. When it becomes the leader
  it reads each node's last transition state stored since (`read_published`, the shell's)
  and offers, per node, those after its own to that state (the old leader's last ones it
  may not have stored: a kill, a partition); any the old leader did store that slip
  through are dropped by the server, since a transition's msg id is
  what every aggregator computes for the same change: `transition:<peer>:<state>:<last beat
  ms>` (schema.transition_msg_id; the last beat's `at` travels in the stream).
- No lease (a `Leader` never started, unit tests): every transition is offered.

Alert events are the alerter's, which runs on the leader only.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aggregator.scaleout import schema

if TYPE_CHECKING:
    from aggregator.alerts.model import Transition as AlertTransition
    from aggregator.history import Transition as NodeTransition

__all__ = ["HELD_WINDOW", "FleetEvents", "Row", "alert_key"]

log = logging.getLogger(__name__)

Row = tuple[str, str, bytes, float]  # subject, msg id, payload, at
#: How long a follower keeps its own node transitions for a handover (seconds): more than a
#: lease's TTL and poll (the old leader's last unstored ones), well inside the stream's
#: 2-minute duplicate window (those it did store are dropped by id).
HELD_WINDOW = 60.0


def _never() -> bool:
    return False


def alert_key(labels: Mapping[str, str]) -> str:
    """A stable short fingerprint of an alert's labels (its events' msg-id key)."""
    text = "\x1f".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FleetEvents:
    """Transitions and alert events as stream rows, offered to the export (`offer`)."""

    def __init__(
        self,
        origin: str,
        offer: Callable[[Row], None],
        node_of: Callable[[str], tuple[str | None, float | None]],
        wall_clock: Callable[[], float],
        bound: int = 100_000,
    ) -> None:
        self.origin = origin
        self.offer = offer
        #: a peer's network key and its last beat's `at` (None, None: not a node now)
        self.node_of = node_of
        self.wall_clock = wall_clock
        self.bound = bound
        #: Whether this aggregator publishes node transitions now (the lease's leader:
        #: `follow_leader`); None, no lease: it always does.
        self.leading: Callable[[], bool] | None = None
        #: A follower's own transitions of the last `held_window` s (see the module doc):
        #: (peer id, state, row).
        self.held: deque[tuple[str, str, Row]] = deque()
        self.held_window = HELD_WINDOW
        self.released = 0

    def node_transitions(self, transitions: Iterable[NodeTransition]) -> None:
        """The history tracker's hook: each node state change as a `transition` event."""
        rows: list[tuple[str, str, Row]] = []
        for t in transitions:
            network, last_beat = self.node_of(t.peer_id)
            basis = last_beat if last_beat is not None else t.at
            rows.append(
                (
                    t.peer_id,
                    t.state,
                    (
                        schema.event_subject(network, "transition"),
                        schema.transition_msg_id(t.peer_id, t.state, basis),
                        schema.encode_event(
                            self.origin,
                            "transition",
                            t.at,
                            {"peer_id": t.peer_id, "state": t.state, "error": t.error},
                        ),
                        t.at,
                    ),
                )
            )
        leading = self.leading
        if leading is None or leading():
            self.release_held()
            for _peer, _state, row in rows:
                self.offer(row)
            return
        held = self.held
        held.extend(rows)
        horizon = self.wall_clock() - self.held_window
        while held and (held[0][2][3] < horizon or len(held) > self.bound):
            held.popleft()

    def release_held(self, published: Mapping[str, str] | None = None) -> int:
        """Offer the held transitions of the last `held_window` s (this aggregator leads now).
        `published`: each peer's last transition state on the stream, read when it became
        the leader: a peer's held transitions up to the last one to that state were the old
        leader's too and are not offered. The rest that the old leader did store are
        dropped by the server (the same msg id)."""
        if not self.held:
            return 0
        held, self.held = self.held, deque()
        horizon = self.wall_clock() - self.held_window
        fresh = [(peer, state, row) for peer, state, row in held if row[3] >= horizon]
        start: dict[str, int] = {}  # per peer: the index its first unpublished one follows
        if published:
            for i, (peer, state, _row) in enumerate(fresh):
                if published.get(peer) == state:
                    start[peer] = i
        released = 0
        for i, (peer, _state, row) in enumerate(fresh):
            if i > start.get(peer, -1):
                self.offer(row)
                released += 1
        self.released += released
        if released:
            log.info("nats_transitions_released count=%d", released)
        return released

    async def follow_leader(
        self,
        leader: Any,
        read_published: Callable[[float], Awaitable[Mapping[str, str] | None]] | None = None,
    ) -> None:
        """Publish node transitions while `leader` (a `Leader`) leads, and release the held
        ones each time it becomes the leader (its `changed` event). `read_published(since)`:
        each peer's last transition state stored on the stream since then (None: unknown)."""
        self.leading = _never  # until the first look at the lease below
        while True:
            changed = leader.changed
            if leader.is_leader():
                published = None
                if self.held and read_published is not None:
                    # new transitions are held meanwhile, and released with the others
                    self.leading = _never
                    published = await read_published(self.wall_clock() - self.held_window)
                    if not leader.is_leader():
                        continue
                self.leading = leader.is_leader
                self.release_held(published)
            else:
                self.leading = leader.is_leader
            await changed.wait()

    def alert_transitions(self, transitions: Iterable[AlertTransition]) -> None:
        """The alerter's hook: `alert_firing` / `alert_resolved` (re-sends are not events)."""
        for tr in transitions:
            kind = {"fired": "alert_firing", "resolved": "alert_resolved"}.get(str(tr.kind))
            if kind is None:
                continue
            alert = tr.alert
            at = alert.ends_at if kind == "alert_resolved" and alert.ends_at else alert.starts_at
            key = alert_key(alert.labels)
            fields = {
                "alertname": alert.alertname,
                "severity": alert.severity,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "starts_at": alert.starts_at,
                "ends_at": alert.ends_at,
                "fingerprint": key,
            }
            self.offer(
                (
                    schema.event_subject(alert.labels.get("network"), kind),
                    schema.event_msg_id(kind, key, at),
                    schema.encode_event(self.origin, kind, at, fields),
                    at,
                )
            )
