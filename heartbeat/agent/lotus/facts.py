"""What the Lotus head source knows about its network besides the head.

The bookkeeping half of `LotusHeadSource` (its base class): genesis, timing and name of
the network, the miner address, and the count of (re)connections to the node that makes
StateNetworkName be asked again after each outage or failover; and the rule that says a
node is syncing (`is_syncing`). The calls themselves are the source's.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from heartbeat.agent.head import NodeBadResponse
from heartbeat.agent.lotus.client import ActiveSync, NetworkParams
from heartbeat.errors import ConfigError
from heartbeat.protocol.address import AddressError, normalize_miner_address

__all__ = ["SYNC_ACTIVE_STAGES", "SYNC_MARGIN_EPOCHS", "NetworkFacts", "is_syncing"]

# Lotus sync stages: 0 idle, 1 headers, 2 persist headers, 3 messages, 4 complete,
# 5 error, 6 fetching messages. Only 1, 2, 3 and 6 are work in progress.
SYNC_ACTIVE_STAGES = frozenset({1, 2, 3, 6})
# Lotus syncs every new tipset through these stages with a target one epoch ahead, so a
# node is only called syncing when a target is at least this far ahead of its head: the
# same distance at which Lotus's /health/readyz reports "not ready".
SYNC_MARGIN_EPOCHS = 5


def is_syncing(
    syncs: Sequence[ActiveSync], head_height: int, margin: int = SYNC_MARGIN_EPOCHS
) -> bool:
    """True when an active sync (stage 1, 2, 3 or 6) targets a height at least
    `margin` epochs above the head: the node is catching up, not following the chain."""
    return any(
        s.stage in SYNC_ACTIVE_STAGES
        and s.target_height is not None
        and s.target_height - head_height >= margin
        for s in syncs
    )


class NetworkFacts:
    """Network facts, the miner address and the connection count of one Lotus source."""

    def __init__(self, miner_override: str | None) -> None:
        self._override: str | None = None
        if miner_override is not None:
            try:
                self._override = normalize_miner_address(miner_override.strip())
            except AddressError as exc:
                raise ConfigError("miner_address", f"{exc}; e.g. f01234") from exc
        self.genesis_cid: str | None = None
        self.block_delay: float | None = None
        self.genesis_timestamp: int | None = None
        self.network_name: str | None = None
        self.miner_address: str = self._override or ""
        #: (Re)connections to the node so far; the first one is 0.
        self.connection = 0
        #: The connection StateNetworkName last answered on (-1: never).
        self.name_fetched_for = -1
        self._reconnected = trio.Event()

    def got_params(self, params: NetworkParams) -> None:
        self.block_delay = params.block_delay
        self.genesis_timestamp = params.genesis_timestamp
        if self.network_name is None and params.network_name:
            self.network_name = params.network_name

    def got_network_name(self, name: str, connection: int) -> bool:
        """Record StateNetworkName's answer on `connection`; True if the name changed."""
        self.name_fetched_for = connection
        changed = name != self.network_name
        self.network_name = name
        return changed

    def reconnected(self) -> None:
        """The node answers again after an outage (or another endpoint does)."""
        self.connection += 1
        self._reconnected.set()
        self._reconnected = trio.Event()

    async def wait_reconnected(self) -> None:
        await self._reconnected.wait()

    @staticmethod
    def parse_miner(text: str) -> str:
        """ActorAddress's answer, normalised; a bad one is a bad response."""
        try:
            return normalize_miner_address(text)
        except AddressError as exc:
            raise NodeBadResponse(f"ActorAddress: {exc}") from exc
