"""The alerter's lease (aggregator/scaleout/lease.py) and its shell (leader.py) on trio's fake
clock, over an in-memory key-value bucket with the server's rules: create only if absent,
update only at the last revision, entries gone `ttl` after their write."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from aggregator.alerts.state_store import AlertState
from aggregator.scaleout.bridge import NatsUnavailable
from aggregator.scaleout.leader import Leader, decode_state, encode_state
from aggregator.scaleout.lease import LEASE_KEY, Holder, Lease, LeaseOp, Role

TTL = 9.0
ME = Holder("a", "a+peerA", "run1")
OTHER = Holder("b", "b+peerB", "run2")


class Bucket:
    """JetStream KV semantics that matter to the lease, on trio's clock."""

    def __init__(self, ttl: float | None = TTL) -> None:
        self.ttl = ttl
        self.entries: dict[str, tuple[bytes, int, float]] = {}
        self.seq = 0

    def _live(self, key: str) -> tuple[bytes, int, float] | None:
        e = self.entries.get(key)
        if e is not None and self.ttl is not None and trio.current_time() >= e[2] + self.ttl:
            del self.entries[key]
            return None
        return e

    def _put(self, key: str, value: bytes) -> int:
        self.seq += 1
        self.entries[key] = (value, self.seq, trio.current_time())
        return self.seq


class Client:
    """One aggregator's connection to `Bucket`; `down` makes every request fail."""

    def __init__(self, bucket: Bucket, latency: float = 0.01) -> None:
        self.bucket = bucket
        self.latency = latency
        self.down = False

    async def _rtt(self) -> None:
        if self.down:
            raise NatsUnavailable("kv", "down")
        await trio.sleep(self.latency)

    async def kv_create(self, key: str, value: bytes) -> int | None:
        await self._rtt()
        if self.bucket._live(key) is not None:
            return None
        return self.bucket._put(key, value)

    async def kv_update(self, key: str, value: bytes, last: int) -> int | None:
        await self._rtt()
        e = self.bucket._live(key)
        if e is None or e[1] != last:
            return None
        return self.bucket._put(key, value)

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        await self._rtt()
        e = self.bucket._live(key)
        return None if e is None else (e[0], e[1])

    async def kv_delete(self, key: str) -> None:
        await self._rtt()
        self.bucket.entries.pop(key, None)


# -- the pure state machine ------------------------------------------------------------------


def test_create_if_absent_then_renew_every_third_of_the_ttl() -> None:
    lease = Lease(ME, TTL)
    assert lease.step(0.0) is LeaseOp.READ
    assert lease.on_read(None, None, 0.0) is LeaseOp.CREATE
    lease.on_created(7, sent_at=0.0, now=0.05)
    assert lease.role is Role.LEADER and lease.revision == 7
    assert lease.may_send(0.05)
    assert lease.step(1.0) is LeaseOp.WAIT
    assert lease.step(3.0) is LeaseOp.RENEW
    lease.on_renewed(8, sent_at=3.0, now=3.1)
    assert lease.valid_until == 12.0
    assert lease.next_at == 6.0


def test_a_key_held_by_another_is_left_alone() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    assert lease.on_read(OTHER.encode(), 3, 0.0) is LeaseOp.WAIT
    assert lease.leader == OTHER
    assert not lease.may_send(0.0)
    assert lease.next_at == 1.0  # polls every second (ttl/3 when shorter)


def test_losing_the_race_to_create() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    lease.on_read(None, None, 0.0)
    lease.on_created(None, 0.0, 0.01)
    assert lease.role is Role.FOLLOWER and lease.step(0.01) is LeaseOp.READ


def test_fencing_a_leader_that_cannot_renew_stops_before_the_lease_can_expire() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    lease.on_read(None, None, 0.0)
    lease.on_created(1, 0.0, 0.0)
    for t in (3.0, 4.0, 5.0, 6.0, 7.0):
        lease.step(t)
        lease.on_unavailable(t)
    assert lease.may_send(7.9)
    # margin = min(1, ttl/10) = 0.9: no send from 8.1 on, though the key lives until >= 9.
    assert not lease.may_send(8.1)
    assert lease.step(8.1) is LeaseOp.READ
    assert lease.role is Role.FOLLOWER and lease.lost == 1


def test_a_renewal_refused_by_revision_steps_down_at_once() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    lease.on_read(None, None, 0.0)
    lease.on_created(1, 0.0, 0.0)
    assert lease.step(3.0) is LeaseOp.RENEW
    lease.on_renewed(None, 3.0, 3.01)
    assert not lease.may_send(3.01) and lease.role is Role.FOLLOWER


def test_an_answer_that_comes_too_late_is_not_acted_on() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    lease.on_read(None, None, 0.0)
    lease.on_created(1, sent_at=0.0, now=8.5)  # a stall of 8.5 s while the request ran
    assert not lease.may_send(8.5) and lease.role is Role.FOLLOWER


def test_its_own_key_is_reclaimed_by_revision() -> None:
    lease = Lease(ME, TTL)
    lease.step(0.0)
    assert lease.on_read(ME.encode(), 5, 0.0) is LeaseOp.CLAIM
    assert lease.claim_revision == 5
    lease.on_created(6, 0.0, 0.0)
    assert lease.is_leader


def test_holder_round_trip_and_garbage() -> None:
    assert Holder.decode(ME.encode()) == ME
    assert Holder.decode(b"\xff") is None
    assert Holder.decode(b'{"name": "x"}') is None
    with pytest.raises(ValueError):
        Lease(ME, 0)


def test_alert_state_document_round_trip() -> None:
    state = AlertState(
        {"tracks": [{"key": ["FilNodeDown", "p"]}], "heights": {}}, {"r": {"k": 1.5}}
    )
    back = decode_state(encode_state(state, "a+peerA"))
    assert back is not None
    assert back[0] == state and back[1] == "a+peerA"
    assert decode_state(b"not zlib") is None


# -- the shell, two aggregators on one bucket ------------------------------------------------


async def _watch(leaders: list[Leader], log: list[tuple[float, tuple[bool, ...]]]) -> None:
    """Sample who may send every 50 ms of fake time."""
    while True:
        log.append((trio.current_time(), tuple(ld.is_leader() for ld in leaders)))
        await trio.sleep(0.05)


async def test_one_leader_and_a_takeover_within_ttl_when_it_vanishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = Bucket()
    ca, cb = Client(bucket), Client(bucket)
    a = Leader(ca, None, ME, TTL)
    b = Leader(cb, None, OTHER, TTL)
    samples: list[tuple[float, tuple[bool, ...]]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, [a, b], samples)
        await nursery.start(a.run)
        await trio.sleep(0.5)
        await nursery.start(b.run)
        await trio.sleep(30)
        assert a.is_leader() and not b.is_leader()
        assert b.leader_name() == "a" and a.leader_name() == "a"
        # a is cut off (its process hangs, its network is gone): no renewal, no delete.
        ca.down = True
        cut = trio.current_time()
        await trio.sleep(TTL + 2.5)
        assert b.is_leader() and not a.is_leader()
        assert b.leader_name() == "b"
        nursery.cancel_scope.cancel()
    # never two leaders at once, and b took over within ttl + one poll of a's last renewal
    assert not any(all(s) for _, s in samples)
    took_over = next(t for t, s in samples if s[1])
    assert took_over - cut <= TTL + 1.0 + 0.2
    # a stopped sending before b started
    a_last = max(t for t, s in samples if s[0])
    assert a_last < took_over


async def test_a_stopping_leader_hands_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = Bucket()
    a = Leader(Client(bucket), None, ME, TTL)
    b = Leader(Client(bucket), None, OTHER, TTL)
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as a_scope:
            async with trio.open_nursery() as inner:
                await inner.start(a.run)
                await trio.sleep(0.5)
                await outer.start(b.run)
                await trio.sleep(5)
                assert not b.is_leader()
                # b saw a leading: now a stops cleanly (deletes its key)
                a_scope.cancel()
        stopped = trio.current_time()
        assert LEASE_KEY not in bucket.entries or bucket.entries[LEASE_KEY][0] != ME.encode()
        while not b.is_leader():
            await trio.sleep(0.05)
        assert trio.current_time() - stopped <= 1.2  # one poll, not a ttl
        outer.cancel_scope.cancel()


async def test_the_shared_state_is_written_by_revision_and_fences_a_stale_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    leases, states = Bucket(), Bucket(ttl=None)
    a = Leader(Client(leases), Client(states), ME, TTL)
    b = Leader(Client(leases), Client(states), OTHER, TTL)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await trio.sleep(0.5)
        assert a.is_leader()
        assert await a.load_state() is None
        st = AlertState({"tracks": [], "heights": {"n": [1, 2.0]}}, {})
        assert await a.save_state(st)
        # b loads what a wrote and writes after it: a's next write is refused, a steps down
        loaded = await b.load_state()
        assert loaded == st
        b.lease.role, b.lease.valid_until = Role.LEADER, math.inf  # as if b had won
        assert await b.save_state(st)
        assert not await a.save_state(st)
        assert not a.is_leader()
        nursery.cancel_scope.cancel()
