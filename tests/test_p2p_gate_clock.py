"""The handshake gate's timing under trio's fake clock: the queue wait, the first-bytes
deadline, the upgrade timeout's classification, preemption of the address holding most.

The gate wraps a swarm's `upgrade_inbound_raw_conn`; here the swarm is a stand-in whose
upgrade reads the connection and then does what the test says (the real one over real
sockets is tests/test_p2p_gate.py). Every deadline is exact on the fake clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from libp2p.network.exceptions import SwarmException

from heartbeat.net.gate import GateReason, HandshakeGate, gate_inbound_upgrades

pytestmark = [pytest.mark.timeout(30)]


class FakeRaw:
    """A raw inbound connection: `read` returns what the test feeds, when it feeds it."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.closed = False
        self._send, self._receive = trio.open_memory_channel[bytes](10)

    def feed(self, data: bytes) -> None:
        self._send.send_nowait(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self._receive.receive()

    async def close(self) -> None:
        self.closed = True

    def get_remote_address(self) -> tuple[str, int]:
        return (self.ip, 40000)


class FakeSwarm:
    """The swarm's upgrade: read the first bytes, then hold for `hold` seconds (or fail
    with py-libp2p's upgrade-timeout shape when `timeout` is set)."""

    def __init__(self, hold: float = 0.0, timeout: float | None = None) -> None:
        self.hold = hold
        self.timeout = timeout
        self.upgraded: list[str] = []

    async def upgrade_inbound_raw_conn(self, raw: FakeRaw, maddr: Any) -> str:
        await raw.read()
        if self.timeout is not None:
            try:
                with trio.fail_after(self.timeout):
                    await trio.sleep_forever()
            except trio.TooSlowError:  # py-libp2p: SwarmException raised inside the except
                raise SwarmException("upgrade timed out") from None
        await trio.sleep(self.hold)
        self.upgraded.append(raw.ip)
        return f"conn-{raw.ip}"


class FakeHost:
    def __init__(self, swarm: FakeSwarm) -> None:
        self.swarm = swarm

    def get_network(self) -> FakeSwarm:
        return self.swarm


def _gate(swarm: FakeSwarm, concurrent: int, max_wait: float, **kw: Any) -> HandshakeGate:
    return gate_inbound_upgrades(FakeHost(swarm), concurrent, max_wait, **kw)  # type: ignore[arg-type]


async def _attempt(swarm: FakeSwarm, raw: FakeRaw, out: dict[str, Any]) -> None:
    started = trio.current_time()
    try:
        out["conn"] = await swarm.upgrade_inbound_raw_conn(raw, None)
    except SwarmException as exc:
        out["refused"] = str(exc)
    out["after"] = trio.current_time() - started


async def test_a_waiter_is_shed_after_exactly_the_queue_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    swarm = FakeSwarm(hold=100.0)
    gate = _gate(swarm, 1, 5.0)
    busy = FakeRaw("10.0.0.1")
    busy.feed(b"/multistream/1.0.0\n")
    waiter = FakeRaw("10.0.0.1")  # the same address: no preemption, it queues
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_attempt, swarm, busy, {})
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_attempt, swarm, waiter, results)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert results["after"] == pytest.approx(5.0)
    assert "gate_queue_timeout" in results["refused"]
    assert waiter.closed and gate.shed == 1
    assert gate.refused == {GateReason.GATE_QUEUE_TIMEOUT: 1}


async def test_the_first_bytes_deadline_is_exact_and_lifted_by_the_first_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    swarm = FakeSwarm(hold=5.0)  # the upgrade itself may take longer than the deadline
    gate = _gate(swarm, 4, 5.0, first_bytes_timeout=2.0)
    silent, talker = FakeRaw("10.0.0.1"), FakeRaw("10.0.0.2")
    silent_out: dict[str, Any] = {}
    talker_out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_attempt, swarm, silent, silent_out)
        nursery.start_soon(_attempt, swarm, talker, talker_out)
        await trio.sleep(1.9)
        talker.feed(b"/multistream/1.0.0\n")  # just in time
    assert silent_out["after"] == pytest.approx(2.0)
    assert "first_bytes_timeout" in silent_out["refused"] and silent.closed
    assert talker_out["conn"] == "conn-10.0.0.2"
    assert talker_out["after"] == pytest.approx(1.9 + 5.0)  # not cut at 2 s
    assert gate.refused == {GateReason.FIRST_BYTES_TIMEOUT: 1}
    assert gate.upgraded == 1 and gate.in_progress == 0 and gate.waiting == 0


async def test_an_upgrade_that_times_out_is_counted_as_upgrade_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    swarm = FakeSwarm(timeout=10.0)
    gate = _gate(swarm, 4, 5.0, refusal_cap=1, refusal_window=60.0)
    raw = FakeRaw("10.0.0.3")
    raw.feed(b"/multistream/1.0.0\n")
    out: dict[str, Any] = {}
    await _attempt(swarm, raw, out)
    assert out["after"] == pytest.approx(10.0)
    assert gate.refused == {GateReason.UPGRADE_TIMEOUT: 1}
    # An upgrade timeout is what the dialer did: it counts towards the per-IP cap.
    again = FakeRaw("10.0.0.3")
    await _attempt(swarm, again, out)  # the cap of 1 allows one more refusal...
    third = FakeRaw("10.0.0.3")
    await _attempt(swarm, third, out)  # ...and then closes at accept, at once
    assert gate.refused[GateReason.PER_IP_REFUSAL_CAP] == 1
    assert third.closed and out["after"] == 0


async def test_the_address_holding_most_yields_to_a_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    swarm = FakeSwarm(hold=1.0)
    gate = _gate(swarm, 2, 30.0, first_bytes_timeout=60.0)
    hogs = [FakeRaw("10.0.0.9") for _ in range(2)]  # silent: they would hold for 60 s
    newcomer = FakeRaw("10.0.0.5")
    newcomer.feed(b"/multistream/1.0.0\n")
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for hog in hogs:
            nursery.start_soon(_attempt, swarm, hog, {})
        await trio.testing.wait_all_tasks_blocked()
        assert gate.in_progress == 2
        nursery.start_soon(_attempt, swarm, newcomer, out)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert out["conn"] == "conn-10.0.0.5"
    assert out["after"] == pytest.approx(1.0)  # admitted at once, the upgrade's own second
    assert gate.refused.get(GateReason.GATE_SHED_CONTENDED) == 1
    assert sum(h.closed for h in hogs) == 1  # one hog's slot taken, the other kept


class GivingUpSwarm(FakeSwarm):
    """An upgrade of a connection from `gives_up` times out (a dialer that gave up
    mid-handshake); every other one succeeds after half a second."""

    def __init__(self, gives_up: set[int]) -> None:
        super().__init__(hold=0.5)
        self.gives_up = gives_up

    async def upgrade_inbound_raw_conn(self, raw: FakeRaw, maddr: Any) -> str:
        if id(raw) not in self.gives_up:
            return await super().upgrade_inbound_raw_conn(raw, maddr)
        await raw.read()
        try:
            with trio.fail_after(2.0):
                await trio.sleep_forever()
        except trio.TooSlowError:
            raise SwarmException("upgrade timed out") from None
        raise AssertionError("unreachable")


async def _storm(
    ip: str,
    count: int,
    fail_every: int,
    every: float = 0.1,
    concurrent: int = 64,
    refusal_cap: int = 20,
) -> tuple[HandshakeGate, int]:
    raws = [FakeRaw(ip) for _ in range(count)]
    swarm = GivingUpSwarm({id(r) for i, r in enumerate(raws) if i % fail_every == 0})
    gate = _gate(swarm, concurrent, 1000.0, refusal_cap=refusal_cap, refusal_window=60.0)
    outs = [dict[str, Any]() for _ in raws]
    async with trio.open_nursery() as nursery:
        for raw, out in zip(raws, outs, strict=True):
            raw.feed(b"/multistream/1.0.0\n")
            nursery.start_soon(_attempt, swarm, raw, out)
            await trio.sleep(every)
    return gate, sum("conn" in out for out in outs)


async def test_a_fleet_behind_one_nat_is_never_capped_for_its_failures_in_a_storm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 300 agents behind one address reconnect within 30 s; a third of their handshakes
    # time out, 100 failures against a cap of 20. Each success earns the address one
    # refusal, so it is never closed at accept and every other handshake is served.
    gate, served = await _storm("192.0.2.1", 300, fail_every=3)
    assert gate.refused == {GateReason.UPGRADE_TIMEOUT: 100}
    assert served == 200
    # An address that only fails, one every 1.5 s (each known 2 s later): from the 22nd,
    # 21 failures are known and it is closed at accept.
    capped, served = await _storm("198.51.100.7", 30, fail_every=1, every=1.5)
    assert capped.refused == {GateReason.UPGRADE_TIMEOUT: 22, GateReason.PER_IP_REFUSAL_CAP: 8}
    assert served == 0


async def test_handshakes_given_up_while_the_gate_is_contended_never_count_towards_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One address, one slot; a dialer every second, each giving up mid-handshake after
    # 2 s, so others always queue. That is the server's load, not the dialers' doing:
    # none counts towards the cap (of 5 here), and the address is never closed at accept.
    gate, served = await _storm(
        "192.0.2.9", 15, fail_every=1, every=1.0, concurrent=1, refusal_cap=5
    )
    assert gate.refused == {GateReason.UPGRADE_TIMEOUT: 15}
    assert served == 0
    assert "192.0.2.9" not in gate.window._buckets
    # The same dialers one at a time (never queued): each counts, capped after 5.
    idle, _ = await _storm("192.0.2.9", 15, fail_every=1, every=2.5, refusal_cap=5)
    assert idle.refused == {GateReason.UPGRADE_TIMEOUT: 6, GateReason.PER_IP_REFUSAL_CAP: 9}
