"""What a head source knows about the node's chain, and the interface of a head source.

Pure: no trio, no clock reads. The shells in `heartbeat.agent.lotus` and `heartbeat.agent.sources`
implement `HeadSource`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from heartbeat.errors import HeartbeatError
from heartbeat.protocol.beat import SourceState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = [
    "ChangeListeners",
    "ChangeType",
    "Head",
    "HeadSource",
    "HeadSourceError",
    "HeadTracker",
    "NodeBadResponse",
    "NodeRpcError",
    "NodeTimeout",
    "NodeUnauthorized",
    "NodeUnreachable",
    "SourceState",
    "SourceStatus",
]

ChangeType = Literal["current", "apply", "revert"]


class HeadSourceError(HeartbeatError):
    """The node behind a head source failed; the source keeps its last head."""


class NodeUnreachable(HeadSourceError):
    """No answer: connection refused or reset, TLS or DNS failure, deadline exceeded."""


class NodeTimeout(NodeUnreachable):
    """No answer within the deadline (the node may be hung rather than gone)."""


class NodeUnauthorized(HeadSourceError):
    """HTTP 401/403: the token is missing, wrong, or lacks the permission."""

    def __init__(self, method: str, status: int) -> None:
        super().__init__(f"{method}: http {status}")
        self.method = method
        self.status = status


class NodeRpcError(HeadSourceError):
    """The node answered with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: rpc error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class NodeBadResponse(HeadSourceError):
    """The node answered something that is not the documented shape."""


@dataclass(frozen=True, slots=True)
class Head:
    """The node's current head, as a beat reports it."""

    cids: tuple[str, ...]  # tipset key, ChainHead order
    height: int
    timestamp: int | None = None  # smallest block Timestamp of the tipset (unix s)
    syncing: bool | None = None
    genesis_cid: str | None = None
    miner_address: str = ""  # normalised; "" = no miner
    seen_at: int | None = None  # wall-clock unix ms when the agent first saw this head


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """The head source's own health: for the beat (state, error, network), logs and metrics."""

    reachable: bool
    mode: str  # e.g. "subscribed", "polling", "static", "simulated", "unreachable"
    last_update: float | None = None  # trio clock time of the last new head
    detail: str = ""
    state: SourceState = SourceState.OK  # the beat's SourceState
    error: str | None = None  # the beat's SourceError (short, printable); None when ok
    network_name: str | None = None  # the beat's StateNetworkName, once the node said it


class ChangeListeners:
    """Callbacks a head source calls when what a beat would say changes (head or state).

    Pure and synchronous: a listener must not block (a beat loop just sets an event).
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def fire(self) -> None:
        for listener in self._listeners:
            listener()


class HeadSource(Protocol):
    """A long-running task that keeps `latest` up to date.

    `run` is started with `nursery.start(source.run)` and calls
    `task_status.started()` once it has tried to get the first head (whether or
    not it succeeded); it runs until cancelled and never raises for node
    failures (it logs them with the escalation policy and keeps the last head).
    """

    @property
    def latest(self) -> Head | None: ...

    @property
    def status(self) -> SourceStatus: ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (synchronously) whenever the head or the source state changes."""

    def run(self, *, task_status: Any = ...) -> Awaitable[None]: ...


class HeadTracker:
    """Decides which heads are new, when polling and a subscription feed the same tips.

    Pure. A head is identified by its tipset key (the SET of its CIDs). The tracker reports
    the node's head as it is, not the highest ever seen: a node that restarted, or a
    failover to a node a few epochs behind, takes the reported head backwards at once.

    What the node says about its head *now* is authoritative: a poll answer to a question
    asked after the latest head was accepted, a subscription's `current`, and a reorg
    (revert+apply batch). It becomes the head whenever its key differs from the latest,
    even when it is lower or was seen before.

    What may be older news is not: a poll answer to a question asked before the latest head
    arrived (it raced the subscription), and plain applies of a subscription (they may lag
    a poll). Those are accepted only when their key is not among the last `window` accepted
    keys and their height is not below the latest head's.
    """

    def __init__(self, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._seen: OrderedDict[frozenset[str], None] = OrderedDict()
        self._latest: Head | None = None
        self._latest_at: float | None = None

    @property
    def latest(self) -> Head | None:
        """The newest accepted head, or None before the first."""
        return self._latest

    @property
    def latest_at(self) -> float | None:
        """When the latest head was accepted (the caller's clock)."""
        return self._latest_at

    def seen(self, head: Head) -> bool:
        """True when this tipset is among the recently accepted ones."""
        return frozenset(head.cids) in self._seen

    def _is_latest(self, head: Head) -> bool:
        return self._latest is not None and frozenset(self._latest.cids) == frozenset(head.cids)

    def _accept(self, head: Head, now: float) -> bool:
        key = frozenset(head.cids)
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._window:
            self._seen.popitem(last=False)
        self._latest = head
        self._latest_at = now
        return True

    def _offer_news(self, head: Head, now: float) -> bool:
        """A head that may be older news than the latest: only forward and unseen."""
        latest = self._latest
        if self.seen(head) or (latest is not None and head.height < latest.height):
            return False
        return self._accept(head, now)

    def offer(self, head: Head, now: float, *, asked_at: float | None = None) -> bool:
        """Offer the node's current head (a poll answer, a subscription's `current`).

        `asked_at` is when the question was asked (the caller's clock); None means now.
        True when the head is new (the reported head changed).
        """
        if self._is_latest(head):
            return False
        if asked_at is not None and self._latest_at is not None and asked_at < self._latest_at:
            return self._offer_news(head, now)
        return self._accept(head, now)

    def apply_batch(self, changes: Iterable[tuple[ChangeType, Head]], now: float) -> bool:
        """Apply one ChainNotify batch; True when it yields a new head to report.

        A batch with reverts is a reorg, and a `current` is the node's head now: both
        are authoritative. Plain applies (which polling may already have reported, or
        passed) only move the head forward to a tip not seen recently.
        """
        last: Head | None = None
        reverted = False
        current = False
        for kind, head in changes:
            if kind == "revert":
                reverted = True
            elif kind in ("apply", "current"):
                last = head
                current = current or kind == "current"
            else:
                raise ValueError(f"unknown change type {kind!r}")
        if last is None:
            return False
        if reverted or current:
            return self.offer(last, now)
        return self._offer_news(last, now)
