"""What a head source knows about the node's chain, and the interface of a head source.

Pure: no trio, no clock reads. The shells in `heartbeat.lotus` and `heartbeat.sources`
implement `HeadSource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["Head", "HeadSource", "SourceStatus"]


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
