"""The Lotus head source: ChainHead polling plus a ChainNotify subscription.

Both paths feed one `HeadTracker`: the subscription gives new heads at once, polling covers
a missed or dead subscription, and the reported head is the node's head as it is (it goes
back when the node does). Beside the head: SyncState at every poll, StateGetNetworkParams
and ChainGetGenesis once (retried until they succeed), StateNetworkName once per
(re)connection, and the miner address from lotus-miner (`Filecoin.ActorAddress`) once,
unless it is given directly (Curio, or no miner API); the bookkeeping is `NetworkFacts`'.

The source says what is wrong (`status.state`, `status.error`; `heartbeat.agent.health`):
a failed poll is classified at once, a call unanswered after `stall_after` seconds makes
the state unreachable before its deadline, a lost subscription triggers a poll at once.
Listeners (`on_change`) hear of every change of the head or the state (extra beats).

A node failure never raises out of `run`: the last head is kept and the failure is logged
with `FailureLog` (WARNING once, DEBUG, an ERROR every `error_every` seconds, INFO on
recovery). With several endpoints, an unreachable one makes the source move to the next.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import trio

from heartbeat.agent.head import (
    ChangeListeners,
    Head,
    HeadSourceError,
    HeadTracker,
    NodeUnauthorized,
    NodeUnreachable,
    SourceState,
    SourceStatus,
)
from heartbeat.agent.health import Failure, classify, kind_of, source_state
from heartbeat.agent.lotus.client import LotusClient
from heartbeat.agent.lotus.facts import (
    SYNC_ACTIVE_STAGES,
    SYNC_MARGIN_EPOCHS,
    NetworkFacts,
    is_syncing,
)
from heartbeat.agent.lotus.notify import Changes, chain_notify
from heartbeat.agent.policy import DEFAULT_ERROR_EVERY, FailureLog, jittered, next_deadline
from heartbeat.agent.rpcstats import RpcStats

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from heartbeat.agent.lotus.apiinfo import ApiInfo

__all__ = ["SYNC_ACTIVE_STAGES", "SYNC_MARGIN_EPOCHS", "LotusHeadSource", "is_syncing"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_MAX = 60.0
#: A ChainHead answers in milliseconds; one unanswered this long means the node is hung.
DEFAULT_STALL_AFTER = 1.5
_DOWN_STATES = (SourceState.UNREACHABLE, SourceState.UNAUTHORIZED)


class LotusHeadSource(NetworkFacts):
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
        stall_after: float | None = None,
        setting: str = "FULLNODE_API_INFO",
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        client_factory: Callable[[ApiInfo, float, RpcStats], LotusClient] = LotusClient,
        notify: Callable[..., Awaitable[None]] = chain_notify,
        rand: Callable[[], float] = random.random,
        logger: logging.Logger = log,
    ) -> None:
        if not full:
            raise ValueError("at least one full-node endpoint is needed")
        super().__init__(miner_override)
        self._full = list(full)
        self._miner = list(miner or [])
        self.poll_period = poll_period
        self.timeout = timeout
        self.stall_after = min(timeout, DEFAULT_STALL_AFTER) if stall_after is None else stall_after
        self.subscribe = subscribe
        self.resubscribe_delay = resubscribe_delay
        self.retry_max = retry_max
        self.setting = setting
        self.rpc_stats = RpcStats()
        self._new_client = client_factory  # tests pass fakes (trio's fake clock, no sockets)
        self._notify = notify
        self._clock = clock
        self._wall_clock = wall_clock
        self._rand = rand
        self._log = logger
        self._tracker = HeadTracker()
        self._node_failures = FailureLog(error_every=error_every)
        self._miner_failures = FailureLog(error_every=error_every)
        self._listeners = ChangeListeners()
        self._index = 0
        self._clients: list[LotusClient] = []
        self._miner_clients: list[LotusClient] = []
        self._syncing: bool | None = None
        self._subscribed = False
        self._last_error = ""
        self._failure: Failure | None = None
        self._stalled: str | None = None
        self._seen_at: int | None = None
        self._reported: object = None
        self._poll_soon = trio.Event()
        self._first_news = trio.Event()

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
            seen_at=self._seen_at,
        )

    @property
    def status(self) -> SourceStatus:
        last = self._tracker.latest_at
        state, error = source_state(
            failure=self._failure,
            stalled=self._stalled,
            has_head=self._tracker.latest is not None,
            syncing=self._syncing,
        )
        reachable = state not in _DOWN_STATES
        mode = ("subscribed" if self._subscribed else "polling") if reachable else "unreachable"
        detail = self._full[self._index].url if reachable else (error or self._last_error)
        return SourceStatus(reachable, mode, last, detail, state, error, self.network_name)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)

    def _changed(self) -> None:
        """Tell the listeners when what a beat says has changed."""
        head = self._tracker.latest
        status = self.status
        now = (
            head.cids if head is not None else None,
            status.state,
            status.error,
            status.network_name,
            self._syncing,
            self.genesis_cid,
            self.miner_address,
        )
        if now != self._reported:
            self._reported = now
            self._listeners.fire()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        new = self._new_client
        self._clients = [new(info, self.timeout, self.rpc_stats) for info in self._full]
        self._miner_clients = [new(info, self.timeout, self.rpc_stats) for info in self._miner]
        try:
            async with trio.open_nursery() as nursery:
                first_done = trio.Event()
                nursery.start_soon(self._first_attempts, nursery, first_done)
                nursery.start_soon(self._name_loop)
                # A hung node must not hold the agent's first beats back: they say so
                # (`_first_news` is set by the first attempts or by a stalled call).
                with trio.move_on_after(2 * self.stall_after):
                    await self._first_news.wait()
                task_status.started()
                nursery.start_soon(self._poll_loop, first_done)
                if self.subscribe:
                    nursery.start_soon(self._notify_loop)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                for client in self._clients + self._miner_clients:
                    await client.aclose()

    async def _first_attempts(self, nursery: trio.Nursery, done: trio.Event) -> None:
        # side by side, so one hung call does not delay the others
        async with trio.open_nursery() as first:
            first.start_soon(self._poll_once)
            first.start_soon(self._network_once)
            if self.wants_miner:
                first.start_soon(self._miner_once)
        done.set()
        self._first_news.set()
        if self.genesis_cid is None or self.block_delay is None:
            nursery.start_soon(self._retry, self._network_once)
        if self.wants_miner and not self.miner_address:
            nursery.start_soon(self._retry, self._miner_once)

    @property
    def wants_miner(self) -> bool:
        """The miner address is to be read from lotus-miner (not given, an API is set)."""
        return self._override is None and bool(self._miner)

    # -- polling ------------------------------------------------------------
    @property
    def _client(self) -> LotusClient:
        return self._clients[self._index]

    async def _poll_loop(self, first_done: trio.Event) -> None:
        await first_done.wait()
        deadline = next_deadline(self._clock(), self.poll_period, self._clock())
        while True:
            with trio.move_on_at(deadline) as timer:
                await self._poll_soon.wait()
            self._poll_soon = trio.Event()
            await self._poll_once()
            if timer.cancelled_caught:  # on the grid; an early poll keeps the next tick
                deadline = next_deadline(deadline, self.poll_period, self._clock())

    async def _watched(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`; while it has waited longer than `stall_after`, the state is
        unreachable (a hung node is reported before the call's own deadline)."""
        done = trio.Event()
        outcome: list[T] = []
        failure: list[HeadSourceError] = []

        async def watchdog() -> None:
            with trio.move_on_after(self.stall_after):
                await done.wait()
                return
            self._stalled = f"unreachable: {what}: no answer within {self.stall_after:g}s"
            self._first_news.set()
            self._changed()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            try:
                outcome.append(await call())
            except HeadSourceError as exc:  # carried out, not raised through the nursery
                failure.append(exc)
            finally:
                done.set()
                self._stalled = None
        if failure:
            raise failure[0]
        return outcome[0]

    async def _poll_once(self) -> None:
        client = self._client
        asked = self._clock()
        try:
            head = await self._watched("ChainHead", client.chain_head)
        except HeadSourceError as exc:
            self._node_failed(exc)
            return
        self._node_ok()
        if self._tracker.offer(head, self._clock(), asked_at=asked):
            self._new_head(head, "poll")
        try:
            self._syncing = is_syncing(await client.sync_state(), head.height)
        except NodeUnreachable as exc:
            self._node_failed(exc)
        except HeadSourceError as exc:
            self._syncing = None
            self._log.debug("sync_state_failed url=%s err=%s", client.info.url, exc)
        self._changed()

    def _new_head(self, head: Head, via: str) -> None:
        self._seen_at = int(self._wall_clock() * 1000)
        self._log.debug("head_new height=%d via=%s", head.height, via)

    def _node_failed(self, exc: HeadSourceError) -> None:
        url = self._client.info.url
        self._failure = classify(exc, setting=self.setting)
        self._last_error = self._failure.text
        level, message = self._node_failures.on_failure(self._clock(), exc)
        event = "lotus_unauthorized" if isinstance(exc, NodeUnauthorized) else "lotus_unreachable"
        self._log.log(level, "%s url=%s %s", event, url, message)
        if isinstance(exc, NodeUnreachable) and len(self._clients) > 1:
            self._index = (self._index + 1) % len(self._clients)
        self._changed()

    def _node_ok(self) -> None:
        self._failure = None
        report = self._node_failures.on_success(self._clock())
        if report is not None:
            level, message = report
            self._log.log(level, "lotus_recovered url=%s %s", self._client.info.url, message)
            self.reconnected()

    # -- once-only facts (the calls; the bookkeeping is NetworkFacts') --------
    async def _retry(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        delay = min(self.poll_period, self.retry_max)
        while not await attempt():
            await trio.sleep(jittered(delay, 0.2, self._rand()))
            delay = min(delay * 2, self.retry_max)

    async def _name_loop(self) -> None:
        """StateNetworkName once per (re)connection; retried with backoff until it answers."""
        delay = min(self.poll_period, self.retry_max)
        while True:
            connection = self.connection
            if self.name_fetched_for == connection or self._failure is not None:
                await self.wait_reconnected()
                continue
            client = self._client
            try:
                name = await client.state_network_name()
            except HeadSourceError as exc:
                self._log.debug("network_name_failed url=%s err=%s", client.info.url, exc)
                await trio.sleep(jittered(delay, 0.2, self._rand()))
                delay = min(delay * 2, self.retry_max)
                continue
            delay = min(self.poll_period, self.retry_max)
            if self.got_network_name(name, connection):
                self._log.info("lotus_network_name name=%s url=%s", name, client.info.url)
                self._changed()

    async def _network_once(self) -> bool:
        client = self._client
        try:
            if self.block_delay is None:
                self.got_params(await client.network_params())
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
        self._changed()
        return True

    async def _miner_once(self) -> bool:
        for client in self._miner_clients:
            try:
                address = self.parse_miner(await client.actor_address())
            except HeadSourceError as exc:
                error = exc
            else:
                self.miner_address = address
                report = self._miner_failures.on_success(self._clock())
                if report is not None:
                    self._log.log(report[0], "miner_recovered %s", report[1])
                self._log.info("miner_address address=%s", address)
                self._changed()
                return True
            level, message = self._miner_failures.on_failure(self._clock(), error)
            if isinstance(error, NodeUnauthorized):
                hint = classify(error, setting="MINER_API_INFO").text
                message = f"{message} hint={hint!r}"
            self._log.log(level, "miner_unreachable url=%s %s", client.info.url, message)
        return False

    # -- subscription -------------------------------------------------------
    def _on_changes(self, changes: Changes) -> None:
        self._subscribed = True
        if self._failure is not None and self._failure.state in _DOWN_STATES:
            self._node_ok()  # it answers (a fixed token, a node back): say so at once
        if self._tracker.apply_batch(changes, self._clock()):
            head = self._tracker.latest
            assert head is not None
            kinds = ",".join(sorted({kind for kind, _ in changes}))
            self._new_head(head, f"notify changes={kinds}")
        self._changed()

    async def _notify_loop(self) -> None:
        delay = self.resubscribe_delay
        reported = False
        while True:
            info = self._full[self._index]
            idle = 10 * self.block_delay if self.block_delay else 300.0
            try:
                await self._notify(info, self._on_changes, timeout=self.timeout, idle_timeout=idle)
            except HeadSourceError as exc:
                self.rpc_stats.failed(kind_of(exc))
                was_subscribed = self._subscribed
                self._subscribed = False
                if was_subscribed:
                    self._poll_soon.set()  # the subscription is lost: is the node?
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
