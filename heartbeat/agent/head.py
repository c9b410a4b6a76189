"""What a head source knows about the node's chain, and the interface of a head source.

Pure: no trio, no clock reads. The shells in `heartbeat.agent.lotus` and `heartbeat.agent.sources`
implement `HeadSource`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from heartbeat.errors import HeartbeatError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable

__all__ = [
    "ChangeType",
    "Head",
    "HeadSource",
    "HeadSourceError",
    "HeadTracker",
    "NodeBadResponse",
    "NodeRpcError",
    "NodeUnreachable",
    "SourceStatus",
]

ChangeType = Literal["current", "apply", "revert"]


class HeadSourceError(HeartbeatError):
    """The node behind a head source failed; the source keeps its last head."""


class NodeUnreachable(HeadSourceError):
    """No answer: connection refused or reset, TLS or DNS failure, deadline exceeded."""


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


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """The head source's own health, for logs and the agent's metrics."""

    reachable: bool
    mode: str  # e.g. "subscribed", "polling", "static", "simulated", "unreachable"
    last_update: float | None = None  # trio clock time of the last new head
    detail: str = ""


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

    def run(self, *, task_status: Any = ...) -> Awaitable[None]: ...


class HeadTracker:
    """Decides which heads are new, when polling and a subscription feed the same tips.

    Pure. A head is identified by its tipset key (the SET of its CIDs). `offer` accepts
    a head when its key is not among the last `window` accepted keys and its height is
    not below the latest head's: so a late poll answer can neither repeat a tip the
    subscription already reported nor take the head backwards. A real reorg arrives as
    a revert+apply batch through `apply_batch`, which is authoritative: its last apply
    becomes the head even if it is lower or was seen before.

    A lower, unseen head from `offer` is accepted only when the latest head has not
    changed for `rewind_after` seconds (a node that was reset or resynced from a
    snapshot must not freeze the reported head forever).
    """

    def __init__(self, window: int = 64, *, rewind_after: float = 300.0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._rewind_after = rewind_after
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

    def _accept(self, head: Head, now: float) -> bool:
        key = frozenset(head.cids)
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._window:
            self._seen.popitem(last=False)
        self._latest = head
        self._latest_at = now
        return True

    def offer(self, head: Head, now: float) -> bool:
        """Offer a head seen by polling (or a subscription's `current`); True if new."""
        if self.seen(head):
            return False
        latest = self._latest
        if latest is not None and head.height < latest.height:
            assert self._latest_at is not None
            if now - self._latest_at < self._rewind_after:
                return False
        return self._accept(head, now)

    def apply_batch(self, changes: Iterable[tuple[ChangeType, Head]], now: float) -> bool:
        """Apply one ChainNotify batch; True when it yields a new head to report.

        A batch with reverts is a reorg: its last apply is the head, whatever its height.
        A batch without reverts goes through `offer` (a `current`, or plain applies that
        polling may already have reported).
        """
        last: Head | None = None
        reverted = False
        for kind, head in changes:
            if kind == "revert":
                reverted = True
            elif kind in ("apply", "current"):
                last = head
            else:
                raise ValueError(f"unknown change type {kind!r}")
        if last is None:
            return False
        if not reverted:
            return self.offer(last, now)
        latest = self._latest
        if latest is not None and frozenset(latest.cids) == frozenset(last.cids):
            return False
        return self._accept(last, now)
