"""The Lotus head source: ChainHead polling plus a ChainNotify subscription.

Both paths feed one `HeadTracker`, so the subscription gives new heads at once and polling
covers a missed or dead subscription without ever repeating or rewinding a head. Beside
the head it reads, from the full node: SyncState at every poll, StateGetNetworkParams and
ChainGetGenesis once (retried until they succeed); and the miner address from lotus-miner
(`Filecoin.ActorAddress`) once, unless it is given directly (Curio, or no miner API).

A node failure never raises out of `run`: the last head is kept and the failure is logged
with `FailureLog` (WARNING once, DEBUG, an ERROR every `error_every` seconds, INFO on
recovery). With several endpoints, an unreachable one makes the source move to the next.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from heartbeat.agent.head import (
    Head,
    HeadSourceError,
    HeadTracker,
    NodeBadResponse,
    NodeUnreachable,
    SourceStatus,
)
from heartbeat.agent.lotus.client import ActiveSync, LotusClient
from heartbeat.agent.lotus.notify import Changes, chain_notify
from heartbeat.agent.policy import DEFAULT_ERROR_EVERY, FailureLog, jittered, next_deadline
from heartbeat.errors import ConfigError
from heartbeat.protocol.address import AddressError, normalize_miner_address

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from heartbeat.agent.lotus.apiinfo import ApiInfo

__all__ = ["SYNC_ACTIVE_STAGES", "SYNC_MARGIN_EPOCHS", "LotusHeadSource", "is_syncing"]

log = logging.getLogger(__name__)

# Lotus sync stages: 0 idle, 1 headers, 2 persist headers, 3 messages, 4 complete,
# 5 error, 6 fetching messages. Only 1, 2, 3 and 6 are work in progress.
SYNC_ACTIVE_STAGES = frozenset({1, 2, 3, 6})
# Lotus syncs every new tipset through these stages with a target one epoch ahead, so a
# node is only called syncing when a target is at least this far ahead of its head: the
# same distance at which Lotus's /health/readyz reports "not ready".
SYNC_MARGIN_EPOCHS = 5
_RETRY_MAX = 60.0


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


class LotusHeadSource:
    """HeadSource backed by one or more Lotus full-node endpoints (tried in order)."""

    def __init__(
        self,
        full: list[ApiInfo],
        miner: list[ApiInfo] | None = None,
        miner_override: str | None = None,
        poll_period: float = 3.0,
        timeout: float = 5.0,
        *,
        subscribe: bool = True,
        error_every: float = DEFAULT_ERROR_EVERY,
        resubscribe_delay: float = 1.0,
        retry_max: float = _RETRY_MAX,
        clock: Callable[[], float] = trio.current_time,
        rand: Callable[[], float] = random.random,
        logger: logging.Logger = log,
    ) -> None:
        if not full:
            raise ValueError("at least one full-node endpoint is needed")
        self._full = list(full)
        self._miner = list(miner or [])
        self._override: str | None = None
        if miner_override is not None:
            try:
                self._override = normalize_miner_address(miner_override.strip())
            except AddressError as exc:
                raise ConfigError("miner_address", f"{exc}; e.g. f01234") from exc
        self.poll_period = poll_period
        self.timeout = timeout
        self.subscribe = subscribe
        self.resubscribe_delay = resubscribe_delay
        self.retry_max = retry_max
        self._clock = clock
        self._rand = rand
        self._log = logger
        self._tracker = HeadTracker()
        self._node_failures = FailureLog(error_every=error_every)
        self._miner_failures = FailureLog(error_every=error_every)
        self._index = 0
        self._clients: list[LotusClient] = []
        self._miner_clients: list[LotusClient] = []
        self._syncing: bool | None = None
        self._subscribed = False
        self._last_error = ""
        self.genesis_cid: str | None = None
        self.block_delay: float | None = None
        self.genesis_timestamp: int | None = None
        self.network_name: str | None = None
        self.miner_address: str = self._override or ""

    # -- HeadSource ---------------------------------------------------------
    @property
    def latest(self) -> Head | None:
        head = self._tracker.latest
        if head is None:
            return None
        return replace(
            head,
            syncing=self._syncing,
            genesis_cid=self.genesis_cid,
            miner_address=self.miner_address,
        )

    @property
    def status(self) -> SourceStatus:
        last = self._tracker.latest_at
        if self._node_failures.failing:
            return SourceStatus(False, "unreachable", last, self._last_error)
        return SourceStatus(
            True, "subscribed" if self._subscribed else "polling", last, self._full[self._index].url
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._clients = [LotusClient(info, self.timeout) for info in self._full]
        self._miner_clients = [LotusClient(info, self.timeout) for info in self._miner]
        try:
            async with trio.open_nursery() as nursery:
                # first attempts side by side, so one hung call does not delay the others
                async with trio.open_nursery() as first:
                    first.start_soon(self._poll_once)
                    first.start_soon(self._network_once)
                    if self._override is None and self._miner_clients:
                        first.start_soon(self._miner_once)
                task_status.started()
                nursery.start_soon(self._poll_loop)
                if self.genesis_cid is None or self.block_delay is None:
                    nursery.start_soon(self._retry, self._network_once)
                if self._override is None and self._miner_clients and not self.miner_address:
                    nursery.start_soon(self._retry, self._miner_once)
                if self.subscribe:
                    nursery.start_soon(self._notify_loop)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                for client in self._clients + self._miner_clients:
                    await client.aclose()

    # -- polling ------------------------------------------------------------
    @property
    def _client(self) -> LotusClient:
        return self._clients[self._index]

    async def _poll_loop(self) -> None:
        deadline = self._clock()
        while True:
            deadline = next_deadline(deadline, self.poll_period, self._clock())
            await trio.sleep_until(deadline)
            await self._poll_once()

    async def _poll_once(self) -> None:
        client = self._client
        try:
            head = await client.chain_head()
        except HeadSourceError as exc:
            self._node_failed(exc)
            return
        self._node_ok()
        if self._tracker.offer(head, self._clock()):
            self._log.debug("head_new height=%d via=poll", head.height)
        try:
            self._syncing = is_syncing(await client.sync_state(), head.height)
        except NodeUnreachable as exc:
            self._node_failed(exc)
        except HeadSourceError as exc:
            self._syncing = None
            self._log.debug("sync_state_failed url=%s err=%s", client.info.url, exc)

    def _node_failed(self, exc: HeadSourceError) -> None:
        url = self._client.info.url
        self._last_error = str(exc)
        level, message = self._node_failures.on_failure(self._clock(), exc)
        self._log.log(level, "lotus_unreachable url=%s %s", url, message)
        if isinstance(exc, NodeUnreachable) and len(self._clients) > 1:
            self._index = (self._index + 1) % len(self._clients)

    def _node_ok(self) -> None:
        report = self._node_failures.on_success(self._clock())
        if report is not None:
            level, message = report
            self._log.log(level, "lotus_recovered url=%s %s", self._client.info.url, message)

    # -- once-only facts ----------------------------------------------------
    async def _retry(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        delay = min(self.poll_period, self.retry_max)
        while not await attempt():
            await trio.sleep(jittered(delay, 0.2, self._rand()))
            delay = min(delay * 2, self.retry_max)

    async def _network_once(self) -> bool:
        client = self._client
        try:
            if self.block_delay is None:
                params = await client.network_params()
                self.block_delay = params.block_delay
                self.genesis_timestamp = params.genesis_timestamp
                self.network_name = params.network_name
            if self.genesis_cid is None:
                self.genesis_cid = await client.chain_get_genesis()
        except HeadSourceError as exc:
            self._log.debug("network_params_failed url=%s err=%s", client.info.url, exc)
            return False
        self._log.info(
            "lotus_network name=%s genesis=%s block_delay=%s genesis_timestamp=%s",
            self.network_name,
            self.genesis_cid,
            self.block_delay,
            self.genesis_timestamp,
        )
        return True

    async def _miner_once(self) -> bool:
        for client in self._miner_clients:
            try:
                text = await client.actor_address()
                address = normalize_miner_address(text)
            except AddressError as exc:
                error: Exception = NodeBadResponse(f"ActorAddress: {exc}")
            except HeadSourceError as exc:
                error = exc
            else:
                self.miner_address = address
                report = self._miner_failures.on_success(self._clock())
                if report is not None:
                    self._log.log(report[0], "miner_recovered %s", report[1])
                self._log.info("miner_address address=%s", address)
                return True
            level, message = self._miner_failures.on_failure(self._clock(), error)
            self._log.log(level, "miner_unreachable url=%s %s", client.info.url, message)
        return False

    # -- subscription -------------------------------------------------------
    def _on_changes(self, changes: Changes) -> None:
        self._subscribed = True
        if self._tracker.apply_batch(changes, self._clock()):
            head = self._tracker.latest
            assert head is not None
            kinds = ",".join(sorted({kind for kind, _ in changes}))
            self._log.debug("head_new height=%d via=notify changes=%s", head.height, kinds)

    async def _notify_loop(self) -> None:
        delay = self.resubscribe_delay
        reported = False
        while True:
            info = self._full[self._index]
            idle = 10 * self.block_delay if self.block_delay else 300.0
            try:
                await chain_notify(info, self._on_changes, timeout=self.timeout, idle_timeout=idle)
            except HeadSourceError as exc:
                was_subscribed = self._subscribed
                self._subscribed = False
                level = logging.DEBUG if reported and not was_subscribed else logging.INFO
                self._log.log(
                    level, "chain_notify_failed url=%s fallback=polling err=%s", info.url, exc
                )
                reported = True
                delay = self.resubscribe_delay if was_subscribed else min(delay * 2, self.retry_max)
            else:
                self._subscribed = False
                self._log.info("chain_notify_closed url=%s resubscribe=yes", info.url)
                delay = self.resubscribe_delay
                reported = False
            await trio.sleep(jittered(delay, 0.2, self._rand()))
