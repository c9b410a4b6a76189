"""The alerter's leader election and its shared state, over JetStream key-value (trio shell).

`Leader(bridge, me, ttl).run(task_status=...)` drives the pure lease
(aggregator/scaleout/lease.py) against the lease bucket (`NatsSettings.kv_bucket`, entries
expire after `lease_ttl`): read every `poll`, create when absent, renew by revision every
TTL/3, step down at the fence. A stopping leader deletes its key, so another takes over at
once instead of after the TTL.

The alert state lives where the next leader can read it: one document (`ALERT_STATE_KEY`) in
a second bucket without TTL (`<kv_bucket>_state`), in the state db's record format
(aggregator/alerts/state_store.py `AlertState`: the evaluator's export and what each receiver
was last told), JSON compressed with zlib. The leader writes it by revision (a compare and
set: a stale leader's write fails and it steps down) after each evaluation that changed it and
BEFORE the notifications it decided are queued; a new leader reads it before its first
evaluation (aggregator/alerts/service.py). So a handover re-sends nothing the old leader
recorded, and what the old leader had decided but not recorded (it died between the two) is
decided again: at most one evaluation's notifications can repeat, none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from aggregator.scaleout.lease import LEASE_KEY, Holder, Lease, LeaseOp, Role

if TYPE_CHECKING:
    from aggregator.alerts.state_store import AlertState
    from aggregator.scaleout.bridge import NatsBridge

__all__ = [
    "ALERT_STATE_KEY",
    "BucketKv",
    "Kv",
    "Leader",
    "decode_state",
    "encode_state",
    "new_holder",
    "start_leader",
]

log = logging.getLogger(__name__)

ALERT_STATE_KEY = "alert_state"
TRANSITION_SUBJECTS = ["fil.heartbeat.*.event.transition"]
#: Every request to NATS here is bounded by this (seconds).
REQUEST_DEADLINE = 3.0

T = TypeVar("T")


class Kv(Protocol):
    """The key-value half of `aggregator.scaleout.bridge.NatsBridge` (one bucket)."""

    async def kv_create(self, key: str, value: bytes) -> int | None: ...
    async def kv_update(self, key: str, value: bytes, last: int) -> int | None: ...
    async def kv_get(self, key: str) -> tuple[bytes, int] | None: ...
    async def kv_delete(self, key: str) -> None: ...


class BucketKv:
    """`Kv` over one named bucket of a bridge (`kv_*(bucket=...)`: the alert state's)."""

    def __init__(self, bridge: NatsBridge, bucket: str) -> None:
        self.bridge = bridge
        self.bucket = bucket

    async def kv_create(self, key: str, value: bytes) -> int | None:
        return await self.bridge.kv_create(key, value, bucket=self.bucket)

    async def kv_update(self, key: str, value: bytes, last: int) -> int | None:
        return await self.bridge.kv_update(key, value, last, bucket=self.bucket)

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        return await self.bridge.kv_get(key, bucket=self.bucket)

    async def kv_delete(self, key: str) -> None:
        await self.bridge.kv_delete(key, bucket=self.bucket)


def new_holder(name: str, origin: str) -> Holder:
    """This run of this aggregator as a lease holder."""
    return Holder(name, origin, secrets.token_hex(8))


def encode_state(state: AlertState, by: str) -> bytes:
    doc = {"v": 1, "by": by, "evaluator": state.evaluator, "notified": state.notified}
    return zlib.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), 6)


def decode_state(data: bytes) -> tuple[AlertState, str] | None:
    """The state and who wrote it; None for a document this version cannot read."""
    from aggregator.alerts.state_store import AlertState

    try:
        doc = json.loads(zlib.decompress(data))
        if doc.get("v") != 1:
            return None
        evaluator = doc["evaluator"]
        notified = {
            str(r): {str(k): float(at) for k, at in alerts.items()}
            for r, alerts in doc["notified"].items()
        }
        return AlertState(evaluator, notified), str(doc.get("by", ""))
    except (zlib.error, ValueError, KeyError, TypeError, AttributeError):
        return None


class _Unavailable(Exception):
    """Raised by `_call` for any failure of one request (translated `NatsUnavailable` or
    its deadline)."""


class Leader:
    """One aggregator's side of the election, and the shared alert state."""

    def __init__(
        self,
        lease_kv: Kv,
        state_kv: Kv | None,
        me: Holder,
        ttl: float,
        *,
        poll: float | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.lease_kv = lease_kv
        self.state_kv = state_kv
        self.lease = Lease(me, ttl, poll=poll)
        self.clock = clock
        self._state_revision: int | None = None
        self.changed = trio.Event()  # set (and replaced) at every change of role
        self.state_saves = 0
        self.state_save_failures = 0
        self.fenced_sends = 0  # notifications refused because the lease was not sure

    # -- what the rest of the aggregator reads -------------------------------------------------

    @property
    def me(self) -> Holder:
        return self.lease.me

    @property
    def term(self) -> int:
        """Changes each time this aggregator becomes leader."""
        return self.lease.terms

    def is_leader(self) -> bool:
        return self.lease.may_send(self.clock())

    def may_send(self) -> bool:
        """The fence: checked before every notification."""
        ok = self.lease.may_send(self.clock())
        if not ok:
            self.fenced_sends += 1
        return ok

    def leader_name(self) -> str | None:
        """The leader's aggregator name as last seen (None: nobody known)."""
        holder = self.lease.leader
        return None if holder is None else holder.name

    # -- the lease loop --------------------------------------------------------------------------

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        from aggregator.scaleout.bridge import NatsUnavailable

        try:
            with trio.fail_after(REQUEST_DEADLINE):
                return await fn()
        except (NatsUnavailable, trio.TooSlowError) as exc:
            log.debug("lease_request_failed op=%s err=%s", op, exc)
            raise _Unavailable(op) from exc

    async def step(self) -> None:
        """One round of the lease's state machine (the loop calls it; tests too)."""
        lease, kv = self.lease, self.lease_kv
        was = lease.role
        now = self.clock()
        op = lease.step(now)
        try:
            if op is LeaseOp.RENEW:
                last = lease.revision
                assert last is not None
                sent = self.clock()
                rev = await self._call(
                    "renew", lambda: kv.kv_update(LEASE_KEY, lease.me.encode(), last)
                )
                lease.on_renewed(rev, sent, self.clock())
            elif op is LeaseOp.READ:
                got = await self._call("read", lambda: kv.kv_get(LEASE_KEY))
                value, revision = got if got is not None else (None, None)
                nxt = lease.on_read(value, revision, self.clock())
                sent = self.clock()
                if nxt is LeaseOp.CREATE:
                    rev = await self._call(
                        "create", lambda: kv.kv_create(LEASE_KEY, lease.me.encode())
                    )
                    lease.on_created(rev, sent, self.clock())
                elif nxt is LeaseOp.CLAIM:
                    claim = lease.claim_revision
                    assert claim is not None
                    rev = await self._call(
                        "claim", lambda: kv.kv_update(LEASE_KEY, lease.me.encode(), claim)
                    )
                    lease.on_created(rev, sent, self.clock())
        except _Unavailable:
            lease.on_unavailable(self.clock())
        if lease.role is not was:
            log.info(
                "alert_leader_changed role=%s holder=%s term=%d",
                lease.role.value,
                lease.me.name,
                lease.terms,
            )
            self.changed.set()
            self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Leader] = trio.TASK_STATUS_IGNORED) -> None:
        """The election until cancelled; a leader deletes its key on the way out."""
        task_status.started(self)
        try:
            while True:
                await self.step()
                # Wake at the lease's next deadline or its fence, whichever comes first.
                lease = self.lease
                wake = lease.next_at
                if lease.role is Role.LEADER:
                    wake = min(wake, lease.valid_until - lease.margin)
                await trio.sleep_until(max(wake, trio.current_time()))
        finally:
            await self._resign()

    async def _resign(self) -> None:
        was_leader = self.lease.may_send(self.clock())
        self.lease.on_stop()
        if not was_leader:
            return
        with trio.CancelScope(shield=True):
            try:
                await self._call("release", lambda: self.lease_kv.kv_delete(LEASE_KEY))
                log.info("lease_released holder=%s", self.me.name)
            except (_Unavailable, asyncio.CancelledError):
                # NATS gone, or the bridge's loop closing at the same shutdown: the lease
                # then expires after its TTL instead.
                log.warning("lease_release_failed (it expires after the ttl)")

    # -- the shared alert state ------------------------------------------------------------------

    async def load_state(self) -> AlertState | None:
        """The alert state the last leader wrote (None: none, unreadable or unavailable)."""
        if self.state_kv is None:
            return None
        kv = self.state_kv
        try:
            got = await self._call("state_get", lambda: kv.kv_get(ALERT_STATE_KEY))
        except _Unavailable:
            log.error("alert_state_kv_load_failed")
            return None
        if got is None:
            self._state_revision = None
            return None
        data, revision = got
        self._state_revision = revision
        decoded = decode_state(data)
        if decoded is None:
            log.error("alert_state_kv_unreadable revision=%d", revision)
            return None
        state, by = decoded
        log.info("alert_state_kv_loaded by=%s revision=%d", by, revision)
        return state

    async def save_state(self, state: AlertState) -> bool:
        """Write the alert state by revision. True: deliver what was decided (saved, or NATS
        did not answer while our lease holds); False: do not (our lease is not sure, or
        another aggregator wrote the state since we read it: we step down)."""
        if self.state_kv is None:
            return self.may_send()
        kv = self.state_kv
        data = encode_state(state, self.me.origin)
        last = self._state_revision
        try:
            if last is None:
                rev = await self._call("state_create", lambda: kv.kv_create(ALERT_STATE_KEY, data))
            else:
                rev = await self._call(
                    "state_update", lambda: kv.kv_update(ALERT_STATE_KEY, data, last)
                )
        except _Unavailable:
            # Still the leader: deliver (the state goes with the next save). Dying before
            # it may repeat this evaluation's notifications at the next leader; never lose them.
            self.state_save_failures += 1
            log.error("alert_state_kv_save_failed")
            return self.may_send()
        if rev is None:
            self.state_save_failures += 1
            log.warning("alert_state_kv_conflict holder=%s", self.me.name)
            self.lease.on_stop()  # someone else is writing it: we are not the leader
            self.lease.next_at = self.clock()
            self.changed.set()
            self.changed = trio.Event()
            return False
        self._state_revision = rev
        self.state_saves += 1
        return self.may_send()


async def start_leader(agg: Any, nursery: trio.Nursery) -> Leader:
    """The aggregator's wiring (aggregator/scaleout/merge_consumer.py `start_merge`, then
    the alerting service gets the same one): the lease in the bridge's lease bucket, the
    alert state in `<kv_bucket>_state`; the export publishes node transitions while it leads."""
    if agg.alert_leader is not None:
        existing: Leader = agg.alert_leader
        return existing
    settings = agg.nats.settings
    leader = Leader(
        agg.nats,
        BucketKv(agg.nats, f"{settings.kv_bucket}_state"),
        new_holder(agg.config.name, agg.nats_export.origin),
        settings.lease_ttl,
    )
    agg.alert_leader = leader
    if agg.ha_metrics is not None:
        agg.ha_metrics.leader = leader
    await nursery.start(leader.run)
    if agg.nats_export is not None:
        bridge = agg.nats

        async def read_published(since: float) -> dict[str, str] | None:
            return await published_transitions(bridge, since)

        nursery.start_soon(agg.nats_export.follow_leader, leader, read_published)
    return leader


async def published_transitions(bridge: NatsBridge, since: float) -> dict[str, str] | None:
    """Each peer's last transition state stored on the stream since `since` (unix s), read by
    a new leader before it releases its held ones; None when NATS did not answer in time."""
    from aggregator.scaleout import schema
    from aggregator.scaleout.bridge import NatsUnavailable

    last: dict[str, str] = {}
    try:
        with trio.fail_after(REQUEST_DEADLINE * 2):
            stream = bridge.poll(TRANSITION_SUBJECTS, deliver_since=since, interval=0.05)
            async with contextlib.aclosing(stream) as batches:
                while True:
                    # the stream's backlog comes at once; nothing within a moment: all read
                    with trio.move_on_after(0.5) as idle:
                        msgs = await batches.__anext__()
                    if idle.cancelled_caught:
                        return last
                    for msg in msgs:
                        try:
                            event = schema.decode(msg.data)
                        except schema.StreamDecodeError:
                            continue
                        if isinstance(event, schema.StreamEvent):
                            peer, state = event.fields.get("peer_id"), event.fields.get("state")
                            if isinstance(peer, str) and isinstance(state, str):
                                last[peer] = state
    except (NatsUnavailable, trio.TooSlowError, StopAsyncIteration) as exc:
        log.warning("transitions_read_failed err=%s (held ones released by msg id)", exc)
        return None
